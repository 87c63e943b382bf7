"""COCO mask encodings, decoded without pycocotools: run-length encodings (RLE) and polygons.

An RLE lists alternating run lengths of 0s and 1s, starting with 0s, over the mask flattened in
column-major (Fortran) order. The JSON stores it either *uncompressed* (``counts`` a list of ints, used
for crowd annotations) or *compressed* (``counts`` a string: each count, from the fourth on as the
difference to the count two before, written 5 bits per character, least significant first, bit 6 set
when more characters follow, the last character sign-extended from bit 5, every character offset by 48).
Polygons are rasterised exactly as pycocotools' ``rleFrPoly`` does: the outline is traced on a 5x
upsampled grid and each pixel column is filled between the crossings of the outline with it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["decode_rle", "encode_rle_string", "rle_counts_from_string", "mask_to_rle_counts",
           "polygon_to_mask", "segmentation_to_mask"]


def rle_counts_from_string(s: str) -> list[int]:
    """Decode a compressed RLE ``counts`` string into the list of run lengths (pycocotools ``rleFrString``)."""
    counts: list[int] = []
    p = 0
    n = len(s)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError(f"compressed RLE string ends inside a count (at character {p})")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE string has an invalid character {s[p]!r} at {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign extension of the last 5-bit group
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle_string(counts: Sequence[int]) -> str:
    """Encode run lengths as a compressed RLE string (pycocotools ``rleToString``)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode_rle(counts: Sequence[int] | str, height: int, width: int) -> np.ndarray:
    """The (height, width) bool mask of an RLE given as a counts list or a compressed string."""
    runs = rle_counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(c < 0 for c in runs):
        raise ValueError("RLE has a negative run length")
    total = sum(runs)
    if total != height * width:
        raise ValueError(f"RLE covers {total} pixels, the mask has {height} x {width} = {height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T.copy()


def mask_to_rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool (H, W) mask in column-major order, starting with a run of 0s."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return [int(r) for r in runs]


def polygon_to_mask(xy: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterise one polygon ``[x1, y1, x2, y2, ...]`` (pixel coordinates) like pycocotools ``rleFrPoly``."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1)
    if pts.size < 6 or pts.size % 2:
        raise ValueError(f"a polygon needs at least 3 (x, y) vertices, got {pts.size} numbers")
    if not np.all(np.isfinite(pts)):
        raise ValueError("polygon has a non-finite coordinate")
    h, w = int(height), int(width)
    scale = 5.0
    # (int)(scale * v + .5) in C truncates toward zero
    x = np.trunc(scale * pts[0::2] + 0.5).astype(np.int64)
    y = np.trunc(scale * pts[1::2] + 0.5).astype(np.int64)
    x = np.append(x, x[0])
    y = np.append(y, y[0])
    us, vs = [], []
    for j in range(len(x) - 1):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            d = np.arange(dx + 1)
            t = dx - d if flip else d
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            d = np.arange(dy + 1)
            t = dy - d if flip else d
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u = np.concatenate(us)
    v = np.concatenate(vs)
    # points where the traced outline crosses into a new upsampled column, downsampled to pixel columns
    j = np.flatnonzero(u[1:] != u[:-1]) + 1
    xd = np.where(u[j] < u[j - 1], u[j], u[j] - 1).astype(np.float64)
    xd = (xd + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = np.where(v[j] < v[j - 1], v[j], v[j - 1]).astype(np.float64)
    yd = (yd + 0.5) / scale - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    a = (xd[keep].astype(np.int64) * h + yd[keep].astype(np.int64)).tolist()
    a.append(h * w)
    a.sort()
    diffs = np.diff(np.asarray([0] + a)).tolist()
    runs = [diffs[0]]
    i = 1
    while i < len(diffs):
        if diffs[i] > 0:
            runs.append(diffs[i])
            i += 1
        else:  # two crossings on one pixel cancel: merge the following run into the previous one
            i += 1
            if i < len(diffs):
                runs[-1] += diffs[i]
                i += 1
    return decode_rle(runs, h, w)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The mask of a COCO ``segmentation`` field: a list of polygons (united), or an RLE dict.

    Raises ValueError naming what is wrong (e.g. an RLE whose ``size`` differs from the image).
    """
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("segmentation is an empty list of polygons")
        mask = np.zeros((height, width), dtype=bool)
        for poly in segmentation:
            if not isinstance(poly, (list, tuple)) or not all(isinstance(c, (int, float)) for c in poly):
                raise ValueError("a polygon must be a flat list of numbers [x1, y1, x2, y2, ...]")
            mask |= polygon_to_mask(poly, height, width)
        return mask
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise ValueError(f"RLE has no valid 'size' [height, width]: {size!r}")
        if [int(size[0]), int(size[1])] != [int(height), int(width)]:
            raise ValueError(f"RLE of size {list(size)} for an image of {[height, width]} (height, width)")
        if isinstance(counts, str):
            return decode_rle(counts, height, width)
        if isinstance(counts, list) and all(isinstance(c, int) for c in counts):
            return decode_rle(counts, height, width)
        raise ValueError("RLE 'counts' must be a string (compressed) or a list of ints (uncompressed)")
    raise ValueError(f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}")
