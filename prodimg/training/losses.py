"""GAN losses for the denoising-pair discriminator: non-saturating softplus, R1, matching-aware term; and
:func:`gather_batch`, the global batch of a contrastive loss's negatives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softplus(-D(real))`` and ``softplus(D(fake))`` (the logistic / non-saturating GAN loss), in fp32."""
    return F.softplus(-real_logits.float()).mean(), F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-D(G(z)))``."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor, scaler=None) -> torch.Tensor:
    """``E ||d D(real) / d real||^2`` (Mescheder et al., 2018), differentiable (``create_graph``).

    With an fp16 ``GradScaler`` the gradient is taken of the scaled output and unscaled afterwards
    (the PyTorch AMP recipe for gradient penalties), so small gradients do not underflow.
    """
    out = real_logits.float().sum()
    if scaler is not None:
        out = scaler.scale(out)
    (grad,) = torch.autograd.grad(out, real_inputs, create_graph=True)
    grad = grad.float()
    if scaler is not None:
        grad = grad / scaler.get_scale()
    return grad.square().flatten(1).sum(1).mean()


def mismatched_captions(
    texts: Sequence[str], dropped: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the index of another sample whose caption differs: ``(index, valid)``.

    A shift by a random offset pairs every sample with a different one; pairs whose captions are
    the same text, or where either side had its condition dropped, are marked invalid (a real image
    with an identical caption is not a mismatch).
    """
    n = len(texts)
    if n < 2:
        return torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    offset = int(
        torch.randint(1, n, (1,), generator=generator, device=generator.device if generator else None)
    )
    index = (torch.arange(n) + offset) % n
    dropped = dropped.cpu().bool()
    valid = torch.tensor([texts[i] != texts[j] for i, j in enumerate(index.tolist())], dtype=torch.bool)
    valid &= ~dropped & ~dropped[index]
    return index, valid


def matching_loss(mismatch_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``softplus(D(real image, wrong caption))`` averaged over the valid pairs (real + wrong text = fake)."""
    valid = valid.to(mismatch_logits.device)
    per = F.softplus(mismatch_logits.float())
    return (per * valid).sum() / valid.sum().clamp(min=1)


def diversity_floor_loss(
    x: torch.Tensor, x2: torch.Tensor, ref: torch.Tensor, ref2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mean(relu(d_ref - d))``: the generator is penalised for being less varied than a reference, never more.

    ``d`` is the per-sample mean absolute difference between two generator outputs ``x`` and ``x2`` for the
    same condition (two draws of its noise inputs); ``d_ref`` the same for the reference generator's outputs
    ``ref`` and ``ref2`` on the same two draws. A mode-seeking term (MSGAN, Mao et al., 2019) that takes its
    target from the reference instead of maximising the distance, so it stays well defined where the outputs
    should agree (a denoiser at small t). Returns ``(loss, d.mean(), d_ref.mean())``, in fp32.
    """
    if not x.shape == x2.shape == ref.shape == ref2.shape:
        raise ValueError(f"diversity_floor_loss: shapes differ: {x.shape}, {x2.shape}, {ref.shape}, {ref2.shape}")
    d = (x.float() - x2.float()).abs().flatten(1).mean(1)
    d_ref = (ref.float() - ref2.float()).abs().flatten(1).mean(1).detach()
    return F.relu(d_ref - d).mean(), d.mean(), d_ref.mean()


class _AllGather(torch.autograd.Function):
    """All processes' ``x`` concatenated along dim 0; backward: the sum over processes of the gradient of
    this process's slice (an all-reduce, which every backend has, then the slice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), len(x)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_batch(*tensors: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """This process's rank and each of ``tensors`` concatenated along dim 0 over all processes, in rank
    order, with gradients (the gradient of a gathered slice flows back, summed over processes, to the
    process that owns it). In one process (or without ``torch.distributed``): ``(0, tensors)``. Every
    process must call it with the same shapes, as
    :class:`~prodimg.training.sampler.ResumableBatchSampler`'s equal per-process batches give.

    A contrastive loss takes its negatives from the gathered batch, so ``N`` processes of batch ``B``
    score each row against ``N * B`` candidates, as one process with the whole batch would.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return 0, list(tensors)
    return dist.get_rank(), [_AllGather.apply(t) for t in tensors]
