"""Heatmaps for relevance maps: colour mapping, overlays and method grids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

ArrayLike = Any  # torch.Tensor or numpy array
ImageLike = Union[Image.Image, np.ndarray]
PathType = Union[str, PathLike]

_TILE_INCH = 1.3
_FONT_SIZE = 6


def _to_numpy(relevance: ArrayLike) -> np.ndarray:
    """Detach a tensor (or take an array) and return a float64 numpy array."""
    if hasattr(relevance, "detach"):
        relevance = relevance.detach().to("cpu").double().numpy()
    return np.asarray(relevance, dtype=np.float64)


def relevance_map(relevance: ArrayLike) -> np.ndarray:
    """Return a (H, W) float map; (C, H, W) input is summed over channels.

    A leading batch axis of size one, (1, C, H, W), is dropped as well.
    """
    arr = _to_numpy(relevance)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr.sum(axis=0)
    if arr.ndim != 2:
        raise ValueError(
            f"relevance must be shaped (H, W) or (C, H, W), got shape {tuple(arr.shape)}"
        )
    if np.isnan(arr).any():
        raise ValueError(f"relevance map of shape {tuple(arr.shape)} contains NaN")
    return arr


def _scale(values: np.ndarray, percentile: float) -> float:
    """Percentile of ``values`` with a fallback to the maximum; 0.0 if all zero."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0
    scale = float(np.percentile(finite, percentile))
    if scale <= 0.0:
        scale = float(finite.max())
    return max(scale, 0.0)


def _normalise(rmap: np.ndarray, symmetric: bool, clip_percentile: float) -> np.ndarray:
    """Map relevance to [0, 1]; with ``symmetric`` zero lands exactly at 0.5."""
    if symmetric:
        scale = _scale(np.abs(rmap), clip_percentile)
        if scale == 0.0:
            return np.full(rmap.shape, 0.5)
        return (np.clip(rmap / scale, -1.0, 1.0) + 1.0) / 2.0
    finite = rmap[np.isfinite(rmap)]
    if finite.size == 0:
        return np.full(rmap.shape, 0.5)
    low = float(np.percentile(finite, 100.0 - clip_percentile))
    high = float(np.percentile(finite, clip_percentile))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.full(rmap.shape, 0.5)
    return np.clip((rmap - low) / (high - low), 0.0, 1.0)


#: how a map is shown (a method's ``display``, relprop.attribution.method.DISPLAYS)
DISPLAYS = ("signed", "positive", "absolute")


def display_map(rmap: np.ndarray, display: str = "signed") -> np.ndarray:
    """The (H, W) map as a method is meant to be shown: ``"signed"`` as is, ``"positive"`` its
    positive part, ``"absolute"`` its magnitude (the channel sum is taken before, by
    :func:`relevance_map`)."""
    if display not in DISPLAYS:
        raise ValueError(f"display must be one of {DISPLAYS}, got {display!r}")
    if display == "positive":
        return np.clip(rmap, 0.0, None)
    if display == "absolute":
        return np.abs(rmap)
    return rmap


def heatmap_rgb(
    relevance: ArrayLike,
    *,
    cmap: str = "seismic",
    symmetric: bool = True,
    clip_percentile: float = 99.5,
    display: str = "signed",
) -> np.ndarray:
    """Colour a relevance map as an (H, W, 3) uint8 image.

    With the default ``seismic`` colour map positive relevance is red, negative
    relevance blue and zero white. The colour scale is symmetric around zero and
    saturates at the ``clip_percentile`` of ``|R|``. ``display`` (:func:`display_map`):
    ``"positive"`` and ``"absolute"`` maps run from white (0) to red.
    """
    from matplotlib import colormaps

    if not 0.0 < clip_percentile <= 100.0:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    rmap = display_map(relevance_map(relevance), display)
    values = _normalise(rmap, symmetric, clip_percentile)
    # An odd number of colours puts zero exactly on the colour map's centre.
    rgba = colormaps[cmap].resampled(257)(values)
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _to_pil(image: ImageLike) -> Image.Image:
    """Return ``image`` as an RGB PIL image (arrays may be uint8 or floats in [0, 1])."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float64) * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255)
        arr = (arr + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be shaped (H, W) or (H, W, 3), got shape {arr.shape}")
    return Image.fromarray(arr).convert("RGB")


def fit_image(image: ImageLike, size: tuple[int, int]) -> Image.Image:
    """Centre-crop ``image`` to the aspect ratio of ``size`` = (H, W) and resize to it."""
    height, width = size
    return ImageOps.fit(_to_pil(image), (width, height), Image.BILINEAR)


def overlay_rgb(
    image: ImageLike, relevance: ArrayLike, alpha: float = 0.6, **heatmap_kwargs: Any
) -> np.ndarray:
    """Blend the heatmap of ``relevance`` over a greyscale copy of ``image``.

    The image is centre-cropped to the aspect ratio of the relevance map and
    resized to its size; returns (H, W, 3) uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = heatmap_rgb(relevance, **heatmap_kwargs).astype(np.float64)
    height, width = heat.shape[:2]
    grey = fit_image(image, (height, width)).convert("L")
    background = np.repeat(np.asarray(grey, dtype=np.float64)[..., None], 3, axis=2)
    blended = alpha * heat + (1.0 - alpha) * background
    return (np.clip(blended, 0, 255) + 0.5).astype(np.uint8)


def save_heatmap(
    path: PathType, relevance: ArrayLike, image: ImageLike | None = None, **kw: Any
) -> Path:
    """Write the heatmap (or its overlay on ``image``) to ``path`` as PNG."""
    rgb = heatmap_rgb(relevance, **kw) if image is None else overlay_rgb(image, relevance, **kw)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out, format="PNG")
    return out


def _method_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Method names over all rows, in order of first appearance."""
    names: list[str] = []
    for row in rows:
        for name in row.get("maps", {}):
            if name not in names:
                names.append(name)
    return names


def _hide_axes(ax: Any) -> None:
    """Remove ticks and frame from an image tile."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def method_grid(
    rows: Sequence[Mapping[str, Any]], out_path: PathType, *, title: str | None = None,
    columns: int | None = None, displays: Mapping[str, str] | None = None,
) -> Path:
    """Write a PNG grid: one block per image, the photo first, then one heatmap per method.

    Each row is ``{"image": ..., "label": str, "maps": {method: relevance}}``. Without ``columns``
    a block is one line and the method names title the first line's tiles; with ``columns`` the
    methods wrap after ``columns`` tiles (a block of several lines, every tile titled by its method).
    Missing maps leave an empty tile. ``displays`` maps a method name to how its maps are shown
    (:func:`display_map`; default ``"signed"``), e.g. ``{m: relprop.get_method(m).display}``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("method_grid needs at least one row")
    if columns is not None and columns < 1:
        raise ValueError(f"method_grid: columns must be >= 1, got {columns}")
    methods = _method_columns(rows)
    per_line = min(columns or len(methods), len(methods)) or 1
    lines = -(-len(methods) // per_line) if methods else 1
    n_rows, n_cols = len(rows) * lines, 1 + per_line
    top = 0.35 if title else 0.0
    label_space = 0.12 * n_rows if lines > 1 else 0.0
    width = max(n_cols * _TILE_INCH, 0.08 * len(title) + 0.5 if title else 0.0)
    fig = Figure(figsize=(width, n_rows * _TILE_INCH + 0.25 + top + label_space), dpi=100, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(rows):
        first = r * lines
        photo = axes[first][0]
        maps = row.get("maps", {})
        shape = relevance_map(next(iter(maps.values()))).shape if maps else None
        picture = _to_pil(row["image"]) if shape is None else fit_image(row["image"], shape)
        photo.imshow(picture)
        photo.set_title(str(row.get("label", "")), fontsize=_FONT_SIZE, wrap=True)
        _hide_axes(photo)
        for line in range(1, lines):
            axes[first + line][0].axis("off")
        for k, name in enumerate(methods):
            ax = axes[first + k // per_line][1 + k % per_line]
            _hide_axes(ax)
            if r == 0 or lines > 1:
                ax.set_title(name, fontsize=_FONT_SIZE, fontweight="bold")
            if name in maps:
                ax.imshow(heatmap_rgb(maps[name], display=(displays or {}).get(name, "signed")))
            else:
                ax.axis("off")
        for k in range(len(methods), lines * per_line):
            axes[first + k // per_line][1 + k % per_line].axis("off")
    if title:
        fig.suptitle(title, fontsize=_FONT_SIZE + 3)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


_FIGURES = ("Grid", "Heatmap", "Overlay")


def __getattr__(name: str) -> Any:
    """``Grid``, ``Heatmap`` and ``Overlay`` (notebook objects with a PNG representation) from :mod:`relprop.figures`."""
    if name in _FIGURES:
        from . import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
