"""Slices of volumetric explanations, as in Fig. 8 of the RAP journal version (Nam, Choi and Lee [Nam-RAP-Journal]):
for a CT cube, one axial slice of the input and of the positive and negative parts of its relevance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["VolumeRow", "save_volume_slices"]


@dataclass
class VolumeRow:
    """One row of the figure: ``volume`` and ``relevance`` (D, H, W), the axial slice to show (default the
    centre, ``D // 2``), a title and an optional mask (D, H, W) whose outline is drawn on every panel."""

    volume: Any
    relevance: Any
    title: str = ""
    slice: int | None = None
    mask: Any = None


def _array(t: Any, name: str) -> np.ndarray:
    a = np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=np.float64)
    a = a.reshape(a.shape[-3:]) if a.ndim > 3 and int(np.prod(a.shape[:-3])) == 1 else a
    if a.ndim != 3:
        raise ValueError(f"{name} must be a (D, H, W) volume (or (1, D, H, W)), got shape {a.shape}")
    return a


def save_volume_slices(path: str | Path, rows: Sequence[VolumeRow], dpi: int = 120) -> Path:
    """Write a PNG with one row per volume: input slice (grey), positive relevance (red) and negative
    relevance (blue) of that slice, each relevance panel scaled by the largest |relevance| of the volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("save_volume_slices needs at least one row")
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.3 * len(rows)), squeeze=False)
    for ax, row in zip(axes, rows):
        vol, rel = _array(row.volume, "volume"), _array(row.relevance, "relevance")
        if vol.shape != rel.shape:
            raise ValueError(f"volume {vol.shape} and relevance {rel.shape} differ in shape")
        k = vol.shape[0] // 2 if row.slice is None else int(row.slice)
        if not 0 <= k < vol.shape[0]:
            raise ValueError(f"slice {k} outside the volume's {vol.shape[0]} slices")
        scale = float(np.abs(rel).max()) or 1.0
        ax[0].imshow(vol[k], cmap="gray")
        ax[1].imshow(np.clip(rel[k], 0, None) / scale, cmap="Reds", vmin=0, vmax=1)
        ax[2].imshow(np.clip(-rel[k], 0, None) / scale, cmap="Blues", vmin=0, vmax=1)
        for a, label in zip(ax, ("input", "positive", "negative")):
            if row.mask is not None and np.asarray(row.mask)[k].any():
                a.contour(np.asarray(row.mask)[k], levels=[0.5], colors="lime", linewidths=0.7)
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(f"{row.title}\n{label} (slice {k})" if label == "input" and row.title else f"{label}",
                        fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
