"""Evaluation of text-to-product-image pipelines: the judges and the ``prodimg eval`` run.

- :mod:`.clip`: loading/saving a CLIP judge (any ``CLIPModel``: Hub id, folder, ``train_clip.py`` output).
- :mod:`.classifier`: the attribute classifier (category, pattern) shipped in
  ``prodimg/assets/attribute_classifier`` and its training (``train_scripts/train_attribute_classifier.py``).
- :mod:`.evaluate`: generate images for a dataset split's captions and compute the metrics of
  :mod:`prodimg.metrics` into a JSON report (``prodimg eval``).

Submodules are imported on use, so ``import prodimg.evaluation`` stays light.
"""
