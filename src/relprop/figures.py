"""Figures that show in notebooks: a map, an overlay and a grid of images x methods with a colour bar.

Every object has ``_repr_png_`` (Jupyter shows it inline) and ``save(path)``. Options:
``cmap`` (a matplotlib colour map; default ``seismic`` for signed maps, ``Reds`` for positive ones),
``norm`` (``"symmetric"``: zero is the colour map's centre, red = positive, blue = negative relevance;
``"positive"``: negative relevance is dropped and zero is white), ``clip_percentile`` (the colour
saturates at this percentile of ``|R|``) and ``alpha`` (overlay strength).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .viz import ArrayLike, ImageLike, PathType, _hide_axes, _scale, _to_pil, fit_image, relevance_map

__all__ = ["Grid", "Heatmap", "Overlay", "NORMS"]

NORMS = ("symmetric", "positive")
_DEFAULT_CMAP = {"symmetric": "seismic", "positive": "Reds"}


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def normalised(relevance: ArrayLike, norm: str = "symmetric", clip_percentile: float = 99.5) -> np.ndarray:
    """The (H, W) map scaled to [-1, 1] (``symmetric``) or [0, 1] (``positive``), saturating at the percentile."""
    _check_norm(norm)
    if not 0.0 < clip_percentile <= 100.0:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    rmap = relevance_map(relevance)
    if norm == "positive":
        rmap = np.maximum(rmap, 0.0)
    scale = _scale(np.abs(rmap), clip_percentile)
    if scale == 0.0:
        return np.zeros(rmap.shape)
    return np.clip(rmap / scale, -1.0, 1.0)


def colour(values: np.ndarray, norm: str, cmap: str | None) -> np.ndarray:
    """(H, W, 3) uint8 colours of ``normalised`` values."""
    from matplotlib import colormaps

    unit = (values + 1.0) / 2.0 if norm == "symmetric" else values
    rgba = colormaps[cmap or _DEFAULT_CMAP[norm]].resampled(257)(unit)
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


class _Png:
    """Mixin: ``_repr_png_`` and ``save`` from a ``figure()`` method."""

    def figure(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png")
        return buffer.getvalue()

    def save(self, path: PathType) -> Path:
        """Write the PNG to ``path`` (parent folders are created)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self._repr_png_())
        return out


class Heatmap(_Png):
    """One relevance map, coloured. ``rgb()`` is the bare (H, W, 3) image; the PNG adds a colour bar."""

    def __init__(self, relevance: ArrayLike, *, cmap: str | None = None, norm: str = "symmetric",
                 clip_percentile: float = 99.5, title: str | None = None):
        self.norm = _check_norm(norm)
        self.relevance = relevance_map(relevance)
        self.values = normalised(self.relevance, norm, clip_percentile)
        self.cmap, self.clip_percentile, self.title = cmap, clip_percentile, title

    def rgb(self) -> np.ndarray:
        return colour(self.values, self.norm, self.cmap)

    def figure(self) -> Any:
        return Grid([None], {self.title or "": [self.relevance]}, panels=("map",), cmap=self.cmap, norm=self.norm,
                    clip_percentile=self.clip_percentile).figure()


class Overlay(Heatmap):
    """A relevance map blended over a greyscale copy of ``image`` (cropped and resized to the map)."""

    def __init__(self, image: ImageLike, relevance: ArrayLike, *, alpha: float = 0.6, **kw: Any):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__(relevance, **kw)
        self.image, self.alpha = image, alpha

    def rgb(self) -> np.ndarray:
        heat = super().rgb().astype(np.float64)
        grey = fit_image(self.image, heat.shape[:2]).convert("L")
        background = np.repeat(np.asarray(grey, dtype=np.float64)[..., None], 3, axis=2)
        blended = self.alpha * heat + (1.0 - self.alpha) * background
        return (np.clip(blended, 0, 255) + 0.5).astype(np.uint8)

    def figure(self) -> Any:
        return Grid([self.image], {self.title or "": [self.relevance]}, panels=("overlay",), cmap=self.cmap,
                    norm=self.norm,
                    clip_percentile=self.clip_percentile, alpha=self.alpha).figure()


PANELS = ("image", "map", "overlay")


class Grid(_Png):
    """Images x methods with a colour bar that says what the colours mean.

    ``maps`` is ``{method: [relevance per image]}`` (a ``None`` entry leaves an empty tile).
    ``layout="rows"`` (default): one row per (image, method) holding the ``panels`` side by side
    (image, map, overlay); ``layout="table"``: one row per image, its picture then one tile per
    method (the ``panels`` entry ``"map"`` or ``"overlay"`` picks which). ``labels`` title the
    images (e.g. ``"tabby p=0.62"``).
    """

    def __init__(self, images: Sequence[ImageLike | None], maps: Mapping[str, Sequence[Any]], *,
                 labels: Sequence[str] | None = None, panels: Sequence[str] = PANELS, layout: str = "rows",
                 cmap: str | None = None, norm: str = "symmetric", clip_percentile: float = 99.5,
                 alpha: float = 0.6, colorbar: bool = True, title: str | None = None):
        if not images:
            raise ValueError("Grid needs at least one image")
        if layout not in ("rows", "table"):
            raise ValueError(f"layout must be 'rows' or 'table', got {layout!r}")
        unknown = [p for p in panels if p not in PANELS]
        if unknown or not panels:
            raise ValueError(f"panels must be some of {', '.join(PANELS)}, got {list(panels)}")
        for method, per_image in maps.items():
            if len(per_image) != len(images):
                raise ValueError(f"method {method!r} has {len(per_image)} maps for {len(images)} images")
        self.images, self.maps = list(images), dict(maps)
        self.labels = list(labels) if labels is not None else [""] * len(self.images)
        self.panels, self.layout, self.title = tuple(panels), layout, title
        self.norm = _check_norm(norm)
        self.cmap, self.clip_percentile, self.alpha, self.colorbar = cmap, clip_percentile, alpha, colorbar

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of image tiles."""
        if self.layout == "rows":
            return len(self.images) * max(len(self.maps), 1), len(self.panels)
        return len(self.images), 1 + len(self.maps)

    def _tile(self, image: Any, relevance: Any, panel: str) -> np.ndarray:
        options = dict(cmap=self.cmap, norm=self.norm, clip_percentile=self.clip_percentile)
        if panel == "map":
            return Heatmap(relevance, **options).rgb()
        return Overlay(image, relevance, alpha=self.alpha, **options).rgb()

    def _picture(self, image: Any, like: Any) -> Any:
        return _to_pil(image) if like is None else fit_image(image, relevance_map(like).shape)

    def figure(self) -> Any:
        """The matplotlib figure (not attached to pyplot)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows, cols = self.shape
        tile = 2.0 if self.layout == "rows" else 1.6
        extra = 1.1 if self.colorbar else 0.0
        fig = Figure(figsize=(cols * tile + extra, rows * (tile + 0.3) + (0.4 if self.title else 0.0)), dpi=100,
                     layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False)
        methods = list(self.maps) or [""]
        for i, image in enumerate(self.images):
            for m, method in enumerate(methods):
                relevance = self.maps[method][i] if self.maps else None
                if self.layout == "rows":
                    row = axes[i * len(methods) + m]
                    for ax, panel in zip(row, self.panels):
                        self._draw(ax, image, relevance, panel, self._panel_title(panel, i, method))
                else:
                    if m == 0:
                        self._draw(axes[i][0], image, relevance, "image", self.labels[i])
                    panel = "overlay" if "overlay" in self.panels and image is not None else "map"
                    self._draw(axes[i][1 + m], image, relevance, panel, method if i == 0 else "")
        if self.colorbar:
            self._add_colorbar(fig, axes)
        if self.title:
            fig.suptitle(self.title, fontsize=11)
        return fig

    def _panel_title(self, panel: str, index: int, method: str) -> str:
        if panel == "image":
            return self.labels[index]
        return method if panel == "map" else f"{method} on the image".strip()

    def _draw(self, ax: Any, image: Any, relevance: Any, panel: str, title: str) -> None:
        _hide_axes(ax)
        if panel == "image":
            if image is None:
                ax.axis("off")
                return
            ax.imshow(self._picture(image, relevance))
        elif relevance is None or (panel == "overlay" and image is None):
            ax.axis("off")
            return
        else:
            ax.imshow(self._tile(image, relevance, panel))
        if title:
            ax.set_title(title, fontsize=8, wrap=True)

    def _add_colorbar(self, fig: Any, axes: Any) -> None:
        from matplotlib import colormaps
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cmap = colormaps[self.cmap or _DEFAULT_CMAP[self.norm]]
        if self.norm == "symmetric":
            mappable = ScalarMappable(Normalize(-1.0, 1.0), cmap)
            ticks, names = [-1.0, 0.0, 1.0], ["against\nthe class", "0", "for\nthe class"]
        else:
            mappable = ScalarMappable(Normalize(0.0, 1.0), cmap)
            ticks, names = [0.0, 1.0], ["0", "for\nthe class"]
        bar = fig.colorbar(mappable, ax=axes.ravel().tolist(), ticks=ticks, shrink=min(0.9, 3.0 / axes.shape[0] + 0.3),
                           aspect=25)
        bar.ax.set_yticklabels(names, fontsize=8)
        bar.set_label(f"relevance, per map\n/ {self.clip_percentile:g}th percentile of |R|", fontsize=7)
