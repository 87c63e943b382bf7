"""Open image files so that a missing, truncated or undecodable file becomes a :class:`CorruptSampleError`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .base import CorruptSampleError

__all__ = ["open_rgb", "read_index_png"]

_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open_loaded(path: Path) -> Image.Image:
    if not path.is_file():
        raise CorruptSampleError(str(path), "file is missing")
    try:
        with Image.open(path) as img:
            img.load()  # decodes every byte: a truncated file fails here, not later
            return img.copy()
    except _DECODE_ERRORS as err:
        raise CorruptSampleError(str(path), f"cannot decode image ({type(err).__name__}: {err})") from None


def open_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as a fully decoded RGB PIL image (grey, palette and CMYK are converted)."""
    img = _open_loaded(Path(path))
    return img if img.mode == "RGB" else img.convert("RGB")


def read_index_png(path: str | Path) -> np.ndarray:
    """The raw indices of a palette (mode ``P``) or greyscale (``L``) PNG as an (H, W) uint8 array.

    Pascal VOC stores class and instance segmentations this way: the palette colours are for display,
    the indices are the labels. Any other mode is reported as corrupt.
    """
    path = Path(path)
    img = _open_loaded(path)
    if img.mode not in ("P", "L"):
        raise CorruptSampleError(str(path), f"expected a palette or greyscale index PNG, got mode {img.mode!r}")
    return np.asarray(img, dtype=np.uint8).copy()
