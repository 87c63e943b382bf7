"""``nodules3d``: synthetic 32^3 "CT" cubes with or without a lung nodule, generated in code.

A stand-in for the LUNA 2016 nodule candidates of the RAP journal version (Nam, Choi and Lee [Nam-RAP-Journal],
3-D CT application): no CT data is stored or downloaded. Every cube holds textured tissue (smooth
3-D noise) crossed by vessel-like tubes (random smooth 3-D curves with a radius). In the positive
class (label 1) a nodule is added: a sphere or a lobulated union of spheres of random size,
contrast and position. Both classes may carry a *mimic*, a bright structure that is not a nodule:
a crossing of two thick tubes, or a blob stretched along a vessel (an ellipsoid with axis ratio >= 2.5
lying along the vessel's direction); every negative cube has one, half of the positive cubes too.
So brightness alone does not separate the classes: a model has to use shape.

Ground truth: the exact voxel mask of the nodule (voxel centres inside the nodule, the same test that
paints it; empty for negatives). Every sample is a pure function of ``(split, seed, index)``; labels
are balanced exactly within every pair of indices ``(2k, 2k + 1)``, so any contiguous range of even
length holds as many positives as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import zoom

from .base import Object, Sample
from .registry import register_dataset

__all__ = ["NODULE_CLASSES", "NoduleSample", "Nodules3DDataset", "VOLUME_SIZE", "nodule_mask"]

#: Class names, indexed like the model outputs.
NODULE_CLASSES: tuple[str, ...] = ("no nodule", "nodule")
#: Cube side in voxels.
VOLUME_SIZE = 32

_SPLITS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_COUNT = {"train": 4000, "val": 500, "test": 1000}
_NODULE_RADIUS = (3.0, 6.0)
_TISSUE = (0.15, 0.3)  # mean tissue intensity
_VESSEL = (0.45, 0.75)
_NODULE = (0.5, 0.85)


@dataclass
class NoduleSample(Sample):
    """A :class:`Sample` whose ``image`` is the centre axial slice (for display) and which carries the
    cube: ``volume`` (1, D, H, W) float32 and ``mask`` (D, H, W) bool (the nodule's voxels)."""

    volume: np.ndarray = field(default_factory=lambda: np.zeros((1, 0, 0, 0), np.float32))
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), bool))


def _grid(size: int) -> np.ndarray:
    """(3, D, H, W) voxel-centre coordinates (z, y, x)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.stack(np.meshgrid(c, c, c, indexing="ij"))


def nodule_mask(size: int, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Voxels (D, H, W) whose centre lies in the union of spheres ``centres`` (K, 3) (z, y, x) / ``radii`` (K,)."""
    g = _grid(size)
    mask = np.zeros((size,) * 3, dtype=bool)
    for c, r in zip(np.atleast_2d(centres), np.atleast_1d(radii)):
        mask |= ((g - np.asarray(c, np.float32)[:, None, None, None]) ** 2).sum(0) <= r * r
    return mask


def _curve(rng: np.random.Generator, size: int, n: int = 17) -> np.ndarray:
    """(n, 3) points of a smooth random curve crossing the cube (a cubic Bezier through it)."""
    p0, p3 = rng.uniform(-0.1, 1.1, (2, 3)) * size
    p1, p2 = rng.uniform(0.15, 0.85, (2, 3)) * size
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t * t * p2 + t ** 3 * p3


def _tube_distance(g: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance (D, H, W) from every voxel centre to the polyline ``points``."""
    v = g.reshape(3, -1).T  # (N, 3)
    best = np.full(v.shape[0], np.inf, np.float32)
    for a, b in zip(points[:-1], points[1:]):
        d = b - a
        t = np.clip(((v - a) @ d) / max(float(d @ d), 1e-9), 0.0, 1.0)
        best = np.minimum(best, (((v - a) - t[:, None] * d) ** 2).sum(1))
    return np.sqrt(best).reshape(g.shape[1:])


def _ellipsoid(g: np.ndarray, centre: np.ndarray, axis: np.ndarray, long: float, short: float) -> np.ndarray:
    """Voxels inside an ellipsoid of revolution: semi-axis ``long`` along unit ``axis``, ``short`` across."""
    d = g - centre[:, None, None, None]
    along = np.tensordot(axis, d, axes=1)
    across2 = (d ** 2).sum(0) - along ** 2
    return (along / long) ** 2 + across2 / short ** 2 <= 1.0


class Nodules3DDataset:
    """Synthetic nodule cubes (see the module docstring); ``dataset[i]`` is a :class:`NoduleSample`.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent random streams).
        count: number of samples (default 4000 / 500 / 1000).
        seed: base seed (non-negative int).
    """

    class_names: tuple[str, ...] = NODULE_CLASSES
    name = "nodules3d"

    def __init__(self, split: str = "test", count: int | None = None, seed: int = 0) -> None:
        if split not in _SPLITS:
            raise ValueError(f"nodules3d: unknown split {split!r}; choose one of {', '.join(_SPLITS)}")
        if count is not None and (not isinstance(count, (int, np.integer)) or count < 0):
            raise ValueError(f"nodules3d: count must be a non-negative int, got {count!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"nodules3d: seed must be a non-negative int, got {seed!r}")
        self.split, self.seed, self.size = split, int(seed), VOLUME_SIZE
        self.count = _DEFAULT_COUNT[split] if count is None else int(count)
        self._g = _grid(self.size)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"Nodules3DDataset(split={self.split!r}, count={self.count}, seed={self.seed})"

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([0x10D01E, self.seed, _SPLITS[self.split], *key]))

    def label(self, index: int) -> int:
        """The class of ``index``: one positive and one negative in every pair ``(2k, 2k + 1)``."""
        flip = int(self._rng(index // 2, 1).integers(2))
        return (index % 2) ^ flip

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The cube (D, H, W) float32, the nodule mask (D, H, W) bool and the label."""
        if not 0 <= index < self.count:
            raise IndexError(f"nodules3d: index {index} out of range for {self.count} samples")
        rng, g, s = self._rng(index, 0), self._g, self.size
        label = self.label(index)
        tissue = float(rng.uniform(*_TISSUE))
        cells = int(rng.integers(3, 6))
        noise = zoom(rng.random((cells,) * 3), s / cells, order=1, mode="nearest")[:s, :s, :s]
        vol = (tissue + (noise - 0.5) * rng.uniform(0.1, 0.25)).astype(np.float32)
        vessels = [_curve(rng, s) for _ in range(int(rng.integers(2, 5)))]
        for pts in vessels:
            vol[_tube_distance(g, pts) <= rng.uniform(0.7, 1.8)] = rng.uniform(*_VESSEL)
        if label == 0 or rng.random() < 0.5:
            self._mimic(rng, vol, vessels)
        mask = np.zeros((s,) * 3, dtype=bool)
        if label == 1:
            r = float(rng.uniform(*_NODULE_RADIUS))
            centre = rng.uniform(r + 1.5, s - r - 1.5, 3)
            if rng.random() < 0.5:  # spherical
                centres, radii = centre[None], np.array([r])
            else:  # lobulated: a core and 2-4 lobes on its surface
                k = int(rng.integers(2, 5))
                dirs = rng.normal(size=(k, 3))
                dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
                centres = np.concatenate([centre[None], centre + dirs * r * rng.uniform(0.45, 0.7, (k, 1))])
                radii = np.concatenate([[r * 0.8], r * rng.uniform(0.4, 0.6, k)])
            mask = nodule_mask(s, centres, radii)
            vol[mask] = rng.uniform(*_NODULE) + (rng.random(int(mask.sum())) - 0.5) * 0.1
        vol += rng.normal(0, rng.uniform(0.01, 0.04), vol.shape).astype(np.float32)
        return vol, mask, label

    def _mimic(self, rng: np.random.Generator, vol: np.ndarray, vessels: list[np.ndarray]) -> None:
        """Paint a non-nodule bright structure: a crossing of two thick tubes or a blob along a vessel."""
        g, s = self._g, self.size
        value = rng.uniform(*_NODULE)
        if rng.random() < 0.5:  # two thick tubes crossing at a point inside the cube
            p = rng.uniform(8, s - 8, 3)
            for _ in range(2):
                d = rng.normal(size=3)
                d /= np.linalg.norm(d)
                pts = p + np.linspace(-s, s, 9)[:, None] * d
                vol[_tube_distance(g, pts) <= rng.uniform(1.5, 2.2)] = value
        else:  # an elongated blob lying along a vessel
            pts = vessels[int(rng.integers(len(vessels)))]
            inside = [i for i in range(1, len(pts) - 1) if (pts[i] > 5).all() and (pts[i] < s - 5).all()]
            i = int(rng.choice(inside)) if inside else len(pts) // 2
            axis = pts[i + 1] - pts[i - 1]
            axis /= max(float(np.linalg.norm(axis)), 1e-9)
            short = rng.uniform(1.5, 2.2)
            vol[_ellipsoid(g, pts[i].astype(np.float32), axis, short * rng.uniform(2.5, 4.0), short)] = value

    def __getitem__(self, index: int) -> NoduleSample:
        if isinstance(index, np.integer):
            index = int(index)
        if not isinstance(index, int):
            raise TypeError(f"nodules3d: index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.count
        vol, mask, label = self.render(index)
        c = self.size // 2
        pixels = (np.clip(vol[c], 0, 1) * 255 + 0.5).astype(np.uint8)
        objects = []
        if label == 1:
            zs, ys, xs = np.nonzero(mask)
            objects = [Object(label=1, box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                              mask=mask[c].copy())]
        return NoduleSample(key=f"nodules3d/{self.split}/{self.seed}/{index:06d}",
                            image=Image.fromarray(pixels, "L").convert("RGB"), labels=[label], objects=objects,
                            volume=vol[None], mask=mask)

    def arrays(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cubes ``[start, stop)`` as (N, 1, D, H, W) float32, labels (N,) int64 and masks (N, D, H, W) bool."""
        stop = self.count if stop is None else stop
        n = max(0, stop - start)
        vols = np.empty((n, 1) + (self.size,) * 3, np.float32)
        masks = np.zeros((n,) + (self.size,) * 3, bool)
        labels = np.zeros(n, np.int64)
        for k in range(n):
            vols[k, 0], masks[k], labels[k] = self.render(start + k)
        return vols, labels, masks


@register_dataset("nodules3d", "synthetic 32^3 CT-like cubes with or without a lung nodule (exact voxel masks), "
                  "generated in code")
def _build_nodules3d(root: Any = None, split: str = "test", **options: Any) -> Nodules3DDataset:
    """``root`` is ignored: the cubes are generated, nothing is read from disk."""
    return Nodules3DDataset(split=split, **options)
