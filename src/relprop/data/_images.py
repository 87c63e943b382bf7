"""Open image files so that a missing, truncated or undecodable file becomes a :class:`CorruptSampleError`.

:func:`open_rgb` is the one function that turns an image file into the 8-bit RGB picture a model sees; the
command line and every data set loader use it, and :func:`to_rgb8` (its conversion) is also applied by
:class:`relprop.models.Preprocess`. Pixels are scaled, never clipped, to 8 bit:

* 16-bit images (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) are divided by 65535;
* 32-bit integer images (mode ``I``, how PIL stores 16-bit PNG and TIFF samples) must hold values in
  0..65535 and are scaled like 16-bit ones; other values are refused (their range is unknown);
* float images (mode ``F``) must hold finite values in [0, 1] and are multiplied by 255; other values are
  refused rather than guessed (min-max scaling would change the picture from image to image);
* 48-bit RGB PNG and TIFF are reduced to their high bytes by PIL itself; every other mode (grey, palette,
  CMYK, with alpha) goes through PIL's ``convert("RGB")``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .base import CorruptSampleError

__all__ = ["open_rgb", "read_index_png", "to_rgb8"]

_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_MAX16 = 65535


def _open_loaded(path: Path) -> Image.Image:
    if not path.is_file():
        raise CorruptSampleError(str(path), "file is missing")
    try:
        with Image.open(path) as img:
            img.load()  # decodes every byte: a truncated file fails here, not later
            return img.copy()
    except Image.DecompressionBombError as err:
        raise CorruptSampleError(str(path), f"refused as a possible decompression bomb ({err})") from None
    except _DECODE_ERRORS as err:
        raise CorruptSampleError(str(path), f"cannot decode image ({type(err).__name__}: {err})") from None


def _grey_to_rgb8(values: np.ndarray, scale: float) -> Image.Image:
    """An RGB image of the grey ``values`` multiplied by ``scale`` and rounded to 0..255."""
    grey = np.clip(np.round(values.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _describe(values: np.ndarray) -> str:
    """``"span 0..1000"``, or ``"include NaN or inf"`` for non-finite values."""
    if not np.isfinite(values).all():
        return "include NaN or inf"
    return f"span {values.min():g}..{values.max():g}"


def to_rgb8(img: Image.Image, where: str = "image") -> Image.Image:
    """``img`` as an 8-bit RGB image, scaled by its type's range (see the module); ``where`` names it in errors.

    Raises:
        CorruptSampleError: a 32-bit integer image outside 0..65535, or a float image outside [0, 1].
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        return _grey_to_rgb8(np.asarray(img), 255 / _MAX16)
    if img.mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > _MAX16):
            raise CorruptSampleError(where, f"32-bit integer pixels span {values.min()}..{values.max()}; relprop "
                                            "reads integer images of up to 16 bit (0..65535): convert it to 8 bit")
        return _grey_to_rgb8(values, 255 / _MAX16)
    if img.mode == "F":
        values = np.asarray(img)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise CorruptSampleError(where, f"float pixels {_describe(values)}; relprop reads float images with "
                                            "values in [0, 1] only: scale it to [0, 1] or convert it to 8 bit")
        return _grey_to_rgb8(values, 255)
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as a fully decoded 8-bit RGB PIL image (see the module for the scaling)."""
    path = Path(path)
    return to_rgb8(_open_loaded(path), str(path))


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
