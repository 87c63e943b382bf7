"""``shapes``: synthetic scenes with exact ground truth, generated in code (nothing is stored or downloaded).

Each image shows one to three objects out of ten classes that differ only by their *shape*
(:data:`SHAPE_CLASSES`); colour, size, rotation, position and textured fill are random, and the
background carries clutter (colour gradients, smooth noise, line segments, irregular blobs, pixel
noise) that is not a class shape. Every object has an exact mask (the same pixel-centre rasterisation
that paints it, no anti-aliasing) and its box is the mask's bounding box.

Variants (registered names):

* ``shapes``: multi-label, like Pascal VOC: 1..3 objects, classes may repeat, ``labels`` is the sorted
  set of classes present.
* ``shapes-single``: single-label, like ImageNet: exactly one object per image.

Guarantees: objects lie entirely inside the image and never touch (masks are at least
:data:`MIN_GAP` pixels apart, so masks are disjoint and nothing is occluded); clutter lies *under*
the objects. Every sample is a pure function of ``(variant, split, difficult, seed, index)``: each
index has its own random stream, so the order or number of workers does not matter. The splits use
different streams; sizes are drawn as fractions of ``size`` so that other resolutions show the same
kind of scene.

The "difficult" subset (``difficult=True``, ``shapes`` only) follows the difficult set of the
pointing game (Zhang et al., excitation backprop [Zhang2016-EB]; Nam et al. [Nam-Hedge], Table 1, "DIF"): every image holds a
*small* object (``objects[0]``, box side at most :data:`SMALL_MAX` of the image side, so well under a
quarter of the image) right next to a larger *distractor* of another class (``objects[1]``; the masks
are between :data:`MIN_GAP` and :data:`NEAR_GAP` pixels apart). ``Object.difficult`` keeps its VOC
meaning ("hard to recognise, may be left out of scoring") and is always ``False`` here, so the
pointing-game protocol scores every object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy.ndimage import binary_fill_holes

from .base import Object, Sample
from .registry import register_dataset

__all__ = ["MIN_GAP", "NEAR_GAP", "SHAPE_CLASSES", "SMALL_MAX", "ShapesDataset", "shape_mask", "mask_gap"]

#: Class names, indexed like the model outputs.
SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "ring", "square", "diamond", "triangle", "hexagon", "star", "cross", "crescent", "heart",
)
#: Smallest distance (pixels, between pixel centres) between the masks of two objects.
MIN_GAP = 2.0
#: Largest mask distance (pixels) between the small object and its distractor in the difficult subset.
NEAR_GAP = 5.0
#: Largest box side of the small object in the difficult subset, as a fraction of the image side.
SMALL_MAX = 0.25

_SPLITS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_COUNT = {"train": 20000, "val": 2000, "test": 2000}
# object radius (half the diameter of the enclosing circle) as a fraction of the image side
_RADIUS = (0.10, 0.22)
_SMALL_RADIUS = (0.075, 0.10)
_DISTRACTOR_RADIUS = (0.16, 0.22)
# rotation range in degrees; square and diamond stay near upright so that a rotated square is never
# a diamond (a rhombus with axes 0.55 : 1)
_ROTATION = {"square": 15.0, "diamond": 15.0, "heart": 20.0}


# ----------------------------------------------------------------------------------------------------
# geometry: every shape fits in the unit disk of its local frame (u right, v up)

def _polygon(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(u.shape, dtype=bool)
    x0, y0 = verts[:, 0], verts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        crosses = (b > v) != (d > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = a + (v - b) * (c - a) / (d - b)
        inside ^= crosses & (u < xcross)
    return inside


def _regular(n: int, radius: float = 1.0, start: float = 90.0) -> np.ndarray:
    t = np.deg2rad(start + 360.0 * np.arange(n) / n)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


_TRIANGLE = _regular(3)
_HEXAGON = _regular(6, start=0.0)
_STAR = np.stack([_regular(5), _regular(5, 0.42, 90.0 + 36.0)], axis=1).reshape(10, 2)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0; its smallest enclosing circle has radius 1.25 around (0, 0.25)
    x, y = u * 1.26, v * 1.26 + 0.25
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.58 ** 2),
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,
    "diamond": lambda u, v: np.abs(u) / 0.55 + np.abs(v) <= 1.0,
    "triangle": lambda u, v: _polygon(u, v, _TRIANGLE),
    "hexagon": lambda u, v: _polygon(u, v, _HEXAGON),
    "star": lambda u, v: _polygon(u, v, _STAR),
    "cross": lambda u, v: ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.94)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 0.94)),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8 ** 2),
    "heart": _heart,
}


def shape_mask(label: int, size: int | tuple[int, int], cx: float, cy: float, radius: float,
               angle: float = 0.0) -> np.ndarray:
    """Rasterise one shape: True where the pixel centre ``(x + 0.5, y + 0.5)`` lies inside it.

    ``label`` indexes :data:`SHAPE_CLASSES`; ``(cx, cy)`` is the centre in pixels, ``radius`` the radius
    of the enclosing circle in pixels, ``angle`` a counter-clockwise rotation in degrees.
    """
    if not 0 <= label < len(SHAPE_CLASSES):
        raise ValueError(f"shape label {label} out of range 0..{len(SHAPE_CLASSES) - 1}")
    if radius <= 0:
        raise ValueError(f"shape radius must be positive, got {radius}")
    h, w = (size, size) if isinstance(size, int) else size
    mask = np.zeros((h, w), dtype=bool)
    x0, x1 = max(0, int(math.floor(cx - radius - 1))), min(w, int(math.ceil(cx + radius + 1)))
    y0, y1 = max(0, int(math.floor(cy - radius - 1))), min(h, int(math.ceil(cy + radius + 1)))
    if x0 >= x1 or y0 >= y1:
        return mask
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / radius
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / radius
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # image y points down, the local v axis up
    u = c * dx - s * dy
    v = -s * dx - c * dy
    mask[y0:y1, x0:x1] = _SHAPES[SHAPE_CLASSES[label]](u, v)
    return mask


def mask_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest Euclidean distance between a pixel of mask ``a`` and a pixel of mask ``b`` (inf if one is empty)."""
    pa, pb = np.argwhere(a).astype(np.float64), np.argwhere(b).astype(np.float64)
    if len(pa) == 0 or len(pb) == 0:
        return math.inf
    d2 = ((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.min()))


def _keep_out(mask: np.ndarray) -> np.ndarray:
    """Where no other object may have a pixel: the mask with its holes (a ring's inside) filled, grown by MIN_GAP."""
    return _dilate(binary_fill_holes(mask), MIN_GAP)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean distance ``radius`` (exclusive) of ``mask``."""
    r = int(math.ceil(radius))
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx < radius * radius]
    h, w = mask.shape
    padded = np.zeros((h + 2 * r, w + 2 * r), dtype=bool)
    out = np.zeros_like(mask)
    padded[r:r + h, r:r + w] = mask
    for dy, dx in offsets:
        out |= padded[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


# ----------------------------------------------------------------------------------------------------
# painting

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :].repeat(size, 0), c[:, None].repeat(size, 1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Bilinearly upsampled random grid, values in [0, 1], shape (size, size, channels)."""
    small = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    img = Image.fromarray(small if channels == 3 else small[..., 0])
    big = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return big.reshape(size, size, channels)


def _texture(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Fill pattern in [0, 1] over the given pixel coordinates: solid, stripes, checks, dots, ramp or noise."""
    kind = int(rng.integers(6))
    period = float(rng.uniform(3.0, 6.0))
    a = float(rng.uniform(0.0, math.pi))
    if kind == 0:
        return np.zeros(xs.shape, np.float32)
    if kind == 1:
        return (np.sin(2 * math.pi * (xs * math.cos(a) + ys * math.sin(a)) / period) > 0).astype(np.float32)
    if kind == 2:
        return ((np.floor(xs / period * 1.5) + np.floor(ys / period * 1.5)) % 2).astype(np.float32)
    if kind == 3:
        fx, fy = np.mod(xs, period) - period / 2, np.mod(ys, period) - period / 2
        return (fx * fx + fy * fy < (period / 3.2) ** 2).astype(np.float32)
    if kind == 4:
        return np.clip(((xs - cx) * math.cos(a) + (ys - cy) * math.sin(a)) / (2 * r) + 0.5, 0, 1).astype(np.float32)
    return rng.random(xs.shape).astype(np.float32)


def _background(rng: np.random.Generator, size: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Background: flat, gradient or smooth noise, then line segments and irregular blobs (never class shapes)."""
    c1, c2 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        img = np.broadcast_to(c1, (size, size, 3)).copy()
    elif kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        t = ((xs - size / 2) * math.cos(a) + (ys - size / 2) * math.sin(a)) / size + 0.5
        img = c1 + np.clip(t, 0, 1)[..., None] * (c2 - c1)
    else:
        img = c1 + (_smooth_noise(rng, size, int(rng.integers(3, 7)), 1) * 0.8) * (c2 - c1)
    for _ in range(int(rng.integers(0, 5))):  # line segments
        p = rng.uniform(0, size, 2)
        q = p + rng.uniform(-0.7, 0.7, 2) * size
        width = float(rng.uniform(0.6, 1.6))
        d = q - p
        t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        dist2 = (xs - p[0] - t * d[0]) ** 2 + (ys - p[1] - t * d[1]) ** 2
        img[dist2 <= width * width] = rng.random(3)
    for _ in range(int(rng.integers(0, 3))):  # blobs: thresholded sums of offset Gaussians
        centre = rng.uniform(0, size, 2)
        field = np.zeros((size, size), np.float32)
        for _ in range(4):
            m = centre + rng.normal(0, 0.08 * size, 2)
            s = rng.uniform(0.02, 0.045) * size
            field += np.exp(-((xs - m[0]) ** 2 + (ys - m[1]) ** 2) / (2 * s * s))
        img[field > field.max() * rng.uniform(0.3, 0.5)] = rng.random(3) * 0.8 + 0.1
    return img


@dataclass
class _Placed:
    label: int
    mask: np.ndarray


def _place(rng: np.random.Generator, size: int, label: int, radius: float, taken: np.ndarray,
           near: np.ndarray | None = None, tries: int = 60) -> np.ndarray | None:
    """Find a position for the shape inside the image, at least MIN_GAP from ``taken``.

    With ``near`` (a mask), the shape is put along a random direction from it, as close as MIN_GAP allows.
    """
    for _ in range(tries):
        angle = float(rng.uniform(-1, 1)) * _ROTATION.get(SHAPE_CLASSES[label], 180.0)
        lo, hi = radius + 1.0, size - radius - 1.0
        if hi <= lo:
            return None
        if near is None:
            cx, cy = rng.uniform(lo, hi, 2)
            mask = shape_mask(label, size, cx, cy, radius, angle)
            if not (mask & taken).any() and mask.any():
                return mask
            continue
        ys, xs = np.nonzero(near)
        ox, oy = xs.mean() + 0.5, ys.mean() + 0.5
        phi = rng.uniform(0, 2 * math.pi)
        for step in np.arange(0.0, size, 0.5):
            cx, cy = ox + step * math.cos(phi), oy + step * math.sin(phi)
            if not (lo <= cx <= hi and lo <= cy <= hi):
                break
            mask = shape_mask(label, size, cx, cy, radius, angle)
            if mask.any() and not (mask & taken).any():
                if mask_gap(mask, near) <= NEAR_GAP:
                    return mask
                break
    return None


# ----------------------------------------------------------------------------------------------------
# the data set

class ShapesDataset:
    """Synthetic shape scenes (see the module docstring); ``dataset[i]`` is a :class:`Sample`.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent random streams).
        size: image side in pixels (>= 32).
        count: number of samples (default 20000 / 2000 / 2000 for train / val / test).
        seed: base seed (non-negative int); the same ``(split, index, seed)`` gives the same image.
        single: one object per image (the ``shapes-single`` variant) instead of 1..3.
        difficult: the difficult subset (a small object next to a distractor of another class);
            multi-label only.
    """

    class_names: tuple[str, ...] = SHAPE_CLASSES

    def __init__(self, split: str = "test", size: int = 64, count: int | None = None, seed: int = 0,
                 single: bool = False, difficult: bool = False) -> None:
        if split not in _SPLITS:
            raise ValueError(f"shapes: unknown split {split!r}; choose one of {', '.join(_SPLITS)}")
        if not isinstance(size, (int, np.integer)) or size < 32:
            raise ValueError(f"shapes: size must be an int >= 32 pixels, got {size!r}")
        if count is not None and (not isinstance(count, (int, np.integer)) or count < 0):
            raise ValueError(f"shapes: count must be a non-negative int, got {count!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"shapes: seed must be a non-negative int, got {seed!r}")
        if single and difficult:
            raise ValueError("shapes: the difficult subset needs two labelled objects; it exists for the "
                             "multi-label variant 'shapes' only, not 'shapes-single'")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.single, self.difficult = bool(single), bool(difficult)
        self.count = _DEFAULT_COUNT[split] if count is None else int(count)
        self.name = "shapes-single" if single else "shapes"
        self._xs, self._ys = _grid(self.size)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (f"ShapesDataset(name={self.name!r}, split={self.split!r}, size={self.size}, count={self.count}, "
                f"seed={self.seed}, difficult={self.difficult})")

    def _rng(self, index: int) -> np.random.Generator:
        entropy = [0x5AA9E5, self.seed, _SPLITS[self.split], int(self.single), int(self.difficult), index]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def render(self, index: int) -> tuple[np.ndarray, list[_Placed]]:
        """The image as (H, W, 3) uint8 and its objects (label, mask), without building a :class:`Sample`."""
        if not 0 <= index < self.count:
            raise IndexError(f"shapes: index {index} out of range for {self.count} samples")
        rng = self._rng(index)
        s = self.size
        img = _background(rng, s, self._xs, self._ys)
        taken = np.zeros((s, s), dtype=bool)
        placed: list[_Placed] = []
        n_classes = len(SHAPE_CLASSES)
        if self.difficult:
            small, big = (int(c) for c in rng.choice(n_classes, 2, replace=False))
            for _ in range(100):  # fresh draws until the pair fits (rarely more than once)
                big_mask = _place(rng, s, big, rng.uniform(*_DISTRACTOR_RADIUS) * s, taken)
                small_mask = None if big_mask is None else _place(
                    rng, s, small, rng.uniform(*_SMALL_RADIUS) * s, _keep_out(big_mask), near=big_mask)
                if small_mask is not None:
                    break
            else:
                raise RuntimeError(f"shapes: no room for a difficult pair at size {s} (index {index})")
            placed = [_Placed(small, small_mask), _Placed(big, big_mask)]
        else:
            n = 1 if self.single else int(rng.integers(1, 4))
            for _ in range(n):
                label = int(rng.integers(n_classes))
                mask = _place(rng, s, label, rng.uniform(*_RADIUS) * s, taken)
                if mask is None and not placed:  # the first object always fits; try smaller ones
                    while mask is None:
                        mask = _place(rng, s, label, rng.uniform(_RADIUS[0], _RADIUS[0] * 1.5) * s, taken)
                if mask is not None:
                    placed.append(_Placed(label, mask))
                    taken |= _keep_out(mask)
        for obj in placed:
            self._paint(rng, img, obj.mask)
        img += rng.normal(0, rng.uniform(0, 0.05), img.shape).astype(np.float32)
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), placed

    def _paint(self, rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> None:
        """Fill ``mask`` with a textured colour that stands out from the background under it."""
        under = img[mask].mean(0)
        for _ in range(20):
            c1 = rng.random(3).astype(np.float32)
            c2 = np.clip(c1 + rng.uniform(-0.35, 0.35, 3), 0, 1).astype(np.float32)
            if np.linalg.norm((c1 + c2) / 2 - under) >= 0.4:
                break
        ys, xs = np.nonzero(mask)
        fx, fy = xs + 0.5, ys + 0.5
        t = _texture(rng, fx.astype(np.float32), fy.astype(np.float32), float(fx.mean()), float(fy.mean()),
                     float(np.sqrt(mask.sum() / math.pi)))
        img[ys, xs] = c1 + t[:, None] * (c2 - c1)

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, (np.integer,)):
            index = int(index)
        if not isinstance(index, int):
            raise TypeError(f"shapes: index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.count
        pixels, placed = self.render(index)
        objects = [Object(label=o.label, box=_box(o.mask), mask=o.mask) for o in placed]
        key = f"{self.name}{'-difficult' if self.difficult else ''}/{self.split}/{self.seed}/{index:06d}"
        return Sample(key=key, image=Image.fromarray(pixels, "RGB"),
                      labels=sorted({o.label for o in placed}), objects=objects)

    def arrays(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[start, stop)`` as (N, H, W, 3) uint8 and their multi-hot labels (N, C) float32."""
        stop = self.count if stop is None else stop
        n = max(0, stop - start)
        images = np.empty((n, self.size, self.size, 3), dtype=np.uint8)
        targets = np.zeros((n, len(SHAPE_CLASSES)), dtype=np.float32)
        for k in range(n):
            images[k], placed = self.render(start + k)
            for o in placed:
                targets[k, o.label] = 1.0
        return images, targets


@register_dataset("shapes", "synthetic multi-label shape scenes (1-3 objects, exact masks), generated in code")
def _build_shapes(root: Any = None, split: str = "test", **options: Any) -> ShapesDataset:
    """``root`` is ignored: the scenes are generated, nothing is read from disk."""
    return ShapesDataset(split=split, single=False, **options)


@register_dataset("shapes-single", "synthetic single-label shape images (one object, exact mask), generated in code")
def _build_shapes_single(root: Any = None, split: str = "test", **options: Any) -> ShapesDataset:
    """``root`` is ignored: the scenes are generated, nothing is read from disk."""
    if options.pop("single", True) is not True:
        raise ValueError("shapes-single: single=False is the 'shapes' data set")
    return ShapesDataset(split=split, single=True, **options)
