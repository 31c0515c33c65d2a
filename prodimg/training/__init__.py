"""Training building blocks shared by the training scripts.

Generic (reused by any script): ``args`` (diffusers' flag names), ``checkpointing`` (atomic,
resumable, pruned checkpoints), ``state`` (pickle-free state files), ``precision`` (autocast, loss
scaling, the non-finite guard), ``sampler`` (resumable data order), ``tracking`` (TensorBoard,
progress bar, images/s), ``hub`` (model card, upload). GAN-specific: ``augment`` (DiffAugment),
``losses``, ``validation``, ``gan`` (the trainer behind ``train_scripts/train_product_gan.py``).
Submodules are imported on use, so ``import prodimg.training`` stays light.
"""

__all__ = ["train_product_gan"]


def train_product_gan(**kwargs):
    """See :func:`prodimg.training.gan.train_product_gan`."""
    from .gan import train_product_gan as _train

    return _train(**kwargs)
