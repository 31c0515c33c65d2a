"""The 11 basic colour terms (Berlin & Kay) used by the fashion catalog and by colour evaluation.

This module is the single definition of the palette: the dataset builder tints garments with
these anchors and ``prodimg.metrics`` measures generated garments against them.
"""

from __future__ import annotations

# sRGB anchors, 0..255. Order defines the ClassLabel ids of the ``color`` column.
BASIC_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 28),
    "white": (244, 244, 244),
    "gray": (128, 128, 128),
    "red": (200, 30, 35),
    "orange": (240, 130, 20),
    "yellow": (240, 210, 40),
    "green": (40, 150, 60),
    "blue": (40, 80, 200),
    "purple": (120, 50, 160),
    "pink": (240, 130, 180),
    "brown": (120, 75, 40),
}

COLOR_NAMES: list[str] = list(BASIC_COLORS)
