"""Reading Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files, MIT licence)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where ``apt-get install dataset-fashion-mnist`` puts the IDX files."""

FASHION_MNIST_ENV = "PRODIMG_FASHION_MNIST_DIR"
"""Environment variable that overrides :data:`FASHION_MNIST_DIR`."""

DEBIAN_PACKAGE = "dataset-fashion-mnist"
INSTALL_COMMAND = f"sudo apt-get update && sudo apt-get install -y {DEBIAN_PACKAGE}"

# Fashion-MNIST label order (0..9), as published by Zalando Research.
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def fashion_mnist_dir(source_dir: str | os.PathLike | None = None) -> Path:
    if source_dir is not None:
        return Path(source_dir)
    return Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DIR))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def missing_files(source_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the IDX files that are not present (empty when the data is installed)."""
    directory = fashion_mnist_dir(source_dir)
    return [stem + ".gz" for pair in _FILES.values() for stem in pair if _find(directory, stem) is None]


def is_available(source_dir: str | os.PathLike | None = None) -> bool:
    return not missing_files(source_dir)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) of unsigned bytes into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: expected unsigned-byte IDX data (type 0x08), got 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise ValueError(
            f"{path} is truncated: header says {shape} ({expected} bytes), found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    split: str, source_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 28, 28), labels uint8 (N,))`` for ``split`` in {"train", "test"}.

    Raises ``FileNotFoundError`` naming the Debian package and its install command when the files
    are missing.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    directory = fashion_mnist_dir(source_dir)
    missing = missing_files(directory)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}). It comes from the Debian "
            f"package '{DEBIAN_PACKAGE}'; install it with: {INSTALL_COMMAND} "
            f"(or point {FASHION_MNIST_ENV} / --source_dir at a folder with the IDX files)."
        )
    image_stem, label_stem = _FILES[split]
    images = read_idx(_find(directory, image_stem))
    labels = read_idx(_find(directory, label_stem))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{image_stem}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{label_stem}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.max(initial=0) > 9:
        raise ValueError(f"{label_stem}: labels must be 0..9, found {int(labels.max())}")
    return images, labels
