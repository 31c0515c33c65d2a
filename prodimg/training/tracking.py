"""Logging for training scripts: Python logging, accelerate trackers (TensorBoard), progress bar, images/s."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import PIL.Image


def setup_logging(accelerator) -> None:
    """INFO on the main process, warnings only elsewhere (also for datasets/transformers/diffusers)."""
    import datasets
    import diffusers
    import transformers

    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    # A no-op when the host (e.g. pytest, a notebook) already configured logging.
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=level
    )
    for lib in (datasets, transformers, diffusers):
        lib.utils.logging.set_verbosity_warning()
    logging.getLogger("prodimg").setLevel(level)


def init_trackers(accelerator, project_name: str, config: dict[str, Any]) -> None:
    """``accelerator.init_trackers`` with a config reduced to what TensorBoard hparams accept."""
    clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
    accelerator.init_trackers(project_name, config=clean)


def log_image(accelerator, tag: str, image: PIL.Image.Image, step: int) -> None:
    """Log one RGB image to every tracker that takes images (TensorBoard: ``add_images``)."""
    array = np.asarray(image.convert("RGB"))[None]  # (1, H, W, 3) uint8
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: array}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            try:
                tracker.log_images({tag: [image]}, step=step)
            except Exception as err:  # noqa: BLE001 - a tracker that cannot log images must not stop training
                logging.getLogger(__name__).warning(f"{tracker.name} could not log {tag!r}: {err}")


def progress_bar(accelerator, total: int, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )


class Throughput:
    """Images per second over the steps since the last :meth:`rate` call (wall clock)."""

    def __init__(self):
        self._t = time.perf_counter()
        self._images = 0

    def add(self, images: int) -> None:
        self._images += images

    def rate(self) -> float:
        now = time.perf_counter()
        value = self._images / max(now - self._t, 1e-9)
        self._t, self._images = now, 0
        return value
