"""Shared validation, sign handling and ranking for :mod:`relprop.metrics` (the registry: :mod:`.registry`).

Conventions used by every metric (see ``docs/metrics.md``):

* attribution maps are float tensors shaped ``(B, H, W)`` (channels already reduced, see
  :func:`reduce_channels`); masks are ``(B, H, W)`` and binary (bool, or numbers that are all 0 or 1);
* maps containing NaN or infinity, masks that are not binary, wrong ranks and maps and masks of
  different sizes raise :class:`ValueError`; so do non-finite images, targets that are not integer
  class indices or lie outside ``[0, classes)``, and perturbation counts that are not increasing
  non-negative ints (:func:`check_images`, :func:`check_targets`, :func:`check_target_range`,
  :func:`check_counts`: one check per kind of input, shared by every metric); a size mismatch can instead be resolved explicitly with
  ``resize="map"`` (the map is resized bilinearly to the mask, TorchRay's protocol) or
  ``resize="mask"`` (the mask is resized with nearest-neighbour sampling to the map);
* per-sample results are returned as ``(B,)`` (or ``(B, K)``) float tensors with NaN where the value
  is undefined (empty mask, zero denominator, constant map, ...), never a silent 0 or a hit;
* rankings use a stable sort: among equal values the pixel with the smaller row-major index
  (``i * W + j``) comes first, for descending (MoRF) and ascending (LeRF) orders alike.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

SIGNS = ("positive", "absolute", "signed", "negative")
RESIZES = (None, "map", "mask")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def as_tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception as exc:  # pragma: no cover - depends on the foreign object
        raise ValueError(f"{name} must be a tensor or array, got {type(x).__name__}") from exc


def check_finite(t: Tensor, name: str) -> Tensor:
    """Raise ValueError naming ``name`` and the first samples (dim 0) holding NaN or infinity."""
    if not t.is_floating_point() or t.numel() == 0:
        return t
    bad = ~torch.isfinite(t).reshape(t.shape[0], -1).all(1) if t.dim() else ~torch.isfinite(t).reshape(1)
    if bad.any():
        idx = torch.nonzero(bad).flatten().tolist()
        kind = "NaN" if torch.isnan(t).any() else "infinite values"
        where = f" (samples {idx[:10]}{'...' if len(idx) > 10 else ''})" if t.dim() > 1 else ""
        raise ValueError(f"{name} contain {kind}{where}")
    return t


def check_images(images, name: str = "images", volumes: bool = False) -> Tensor:
    """Validate images: a finite floating-point ``(B, C, H, W)`` tensor (or ``(B, C, D, H, W)``
    volumes with ``volumes=True``)."""
    x = as_tensor(images, name)
    if x.dim() != 4 and not (volumes and x.dim() == 5):
        want = "(B, C, H, W) or (B, C, D, H, W)" if volumes else "(B, C, H, W)"
        raise ValueError(f"{name} must have shape {want}, got {_shape(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return check_finite(x, name)


def check_targets(targets, batch: int, device=None) -> Optional[Tensor]:
    """Validate class indices: None, an int, or ``(batch,)`` integers; returns a long tensor.

    The range is checked against the model's outputs by :func:`check_target_range`.
    """
    if targets is None:
        return None
    expected = f"targets must be integer class indices (an int, or one int per sample: {batch})"
    if isinstance(targets, (str, bytes, float, bool)):
        raise ValueError(f"{expected}, got {type(targets).__name__} {targets!r}")
    if isinstance(targets, (list, tuple)) and not targets:
        targets = torch.zeros(0, dtype=torch.long)  # an empty list (an empty batch) has no dtype
    try:
        t = torch.as_tensor(targets)
    except Exception:  # noqa: BLE001 - strings in a list, ragged lists, foreign objects
        raise ValueError(f"{expected}, got {type(targets).__name__} {targets!r:.80}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{expected}, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{expected}, got shape {_shape(t)}")
    return t.to(device=device, dtype=torch.long)


def check_target_range(targets: Tensor, classes: int) -> Tensor:
    """Raise ValueError unless every target lies in ``[0, classes)`` (the model's outputs)."""
    bad = (targets < 0) | (targets >= classes)
    if bad.any():
        raise ValueError(f"targets must lie in [0, {classes}) for a model with {classes} outputs, "
                         f"got {targets[bad][:5].tolist()}")
    return targets


def check_counts(counts, name: str = "counts") -> list[int]:
    """Validate perturbation steps: a non-empty, strictly increasing sequence of non-negative ints.

    Counts above the number of regions are allowed (they perturb every eligible region: "All").
    """
    values = list(counts.flatten().tolist() if isinstance(counts, Tensor) else counts)
    if not values:
        raise ValueError(f"{name} must hold at least one step, got {values}")
    if any(isinstance(c, bool) or not isinstance(c, int) and not (hasattr(c, "__index__")) for c in values):
        raise ValueError(f"{name} must be integers, got {values}")
    values = [int(c) for c in values]
    if min(values) < 0:
        raise ValueError(f"{name} must be non-negative, got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing (cumulative steps, no repeats), got {values}")
    return values


def _check_rank(t: Tensor, name: str, volumes: bool, hint: str = "") -> None:
    if t.dim() == 3 or (volumes and t.dim() == 4):
        return
    want = "(B, H, W) (rank 3) or (B, D, H, W) (rank 4)" if volumes else "(B, H, W) (rank 3)"
    raise ValueError(f"{name} must have shape {want}, got shape {_shape(t)} (rank {t.dim()}){hint}")


def check_maps(maps, name: str = "maps", volumes: bool = False) -> Tensor:
    """Validate attribution maps: rank 3 ``(B, H, W)`` (or rank 4 ``(B, D, H, W)`` with ``volumes=True``),
    finite; returns a float tensor.

    Half precision is promoted to float32; integer maps to float32; float64 stays float64.
    """
    maps = as_tensor(maps, name)
    _check_rank(maps, name, volumes, "; reduce channels first with relprop.metrics.reduce_channels")
    if any(n == 0 for n in maps.shape[1:]):
        raise ValueError(f"{name} have an empty spatial size {_shape(maps)}")
    if maps.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {maps.dtype}")
    if maps.dtype == torch.bool or not maps.is_floating_point():
        maps = maps.to(torch.float32)
    elif maps.dtype in (torch.float16, torch.bfloat16):
        maps = maps.to(torch.float32)
    return check_finite(maps, name)


def check_masks(masks, name: str = "masks", volumes: bool = False) -> Tensor:
    """Validate masks: rank 3 ``(B, H, W)`` (or rank 4 ``(B, D, H, W)`` with ``volumes=True``), binary;
    returns a bool tensor."""
    masks = as_tensor(masks, name)
    _check_rank(masks, name, volumes)
    if masks.is_complex():
        raise ValueError(f"{name} must be binary (0/1 or bool), got dtype {masks.dtype}")
    if masks.dtype == torch.bool:
        return masks
    if masks.is_floating_point() and torch.isnan(masks).any():
        raise ValueError(f"{name} contain NaN")
    nonbinary = (masks != 0) & (masks != 1)
    if nonbinary.any():
        vals = torch.unique(masks[nonbinary])[:5].tolist()
        raise ValueError(f"{name} must be binary (0/1 or bool); found values such as {vals}")
    return masks != 0


def resize_maps(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize of ``(B, H, W)`` maps (``align_corners=False``, as TorchRay); trilinear for
    ``(B, D, H, W)`` volumes and a 3-tuple ``size``."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    mode = "trilinear" if len(size) == 3 else "bilinear"
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def resize_masks(masks: Tensor, size: tuple[int, ...]) -> Tensor:
    """Nearest-neighbour resize of ``(B, H, W)`` (or ``(B, D, H, W)``) bool masks (torch ``"nearest"`` sampling)."""
    if tuple(masks.shape[1:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


def check_pair(maps, masks, resize: Optional[str] = None, volumes: bool = False) -> tuple[Tensor, Tensor]:
    """Validate a map/mask pair and bring them to a common resolution.

    ``resize=None`` requires equal shapes; ``"map"`` resizes the maps to the masks' size
    (bilinear), ``"mask"`` resizes the masks to the maps' size (nearest). ``volumes=True`` also
    accepts ``(B, D, H, W)`` maps and masks (of the same rank; trilinear / nearest resizing).
    """
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    maps = check_maps(maps, volumes=volumes)
    masks = check_masks(masks, volumes=volumes)
    if any(n == 0 for n in masks.shape[1:]):
        raise ValueError(f"masks have an empty spatial size {_shape(masks)}")
    if maps.dim() != masks.dim():
        raise ValueError(f"maps {_shape(maps)} (rank {maps.dim()}) and masks {_shape(masks)} (rank {masks.dim()}) "
                         "differ in rank: give both as (B, H, W) (rank 3) images or both as (B, D, H, W) "
                         "(rank 4) volumes; reduce channels first with relprop.metrics.reduce_channels")
    if maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps {_shape(maps)} and masks {_shape(masks)} have different batch sizes")
    if maps.shape[1:] != masks.shape[1:]:
        if resize is None:
            raise ValueError(
                f"maps {_shape(maps)} and masks {_shape(masks)} differ in size; pass resize='map' "
                "(resize the maps to the masks) or resize='mask' (resize the masks to the maps)")
        if resize == "map":
            maps = resize_maps(maps, tuple(masks.shape[1:]))
        else:
            masks = resize_masks(masks, tuple(maps.shape[1:]))
    masks = masks.to(maps.device)
    return maps, masks


def check_sign(sign: str) -> str:
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    return sign


def apply_sign(maps: Tensor, sign: str) -> Tensor:
    """Apply a sign option to maps.

    ``positive``: ``max(R, 0)``; ``absolute``: ``|R|``; ``signed``: ``R`` unchanged;
    ``negative``: ``max(-R, 0)`` (the magnitude of the negative part, so larger = more negative).
    """
    check_sign(sign)
    if sign == "positive":
        return maps.clamp(min=0)
    if sign == "absolute":
        return maps.abs()
    if sign == "negative":
        return (-maps).clamp(min=0)
    return maps


def reduce_channels(attributions, how: str = "sum") -> Tensor:
    """Reduce ``(B, C, H, W)`` attributions to ``(B, H, W)`` maps (``how`` in sum / mean / abs-sum)."""
    a = as_tensor(attributions, "attributions")
    if a.dim() != 4:
        raise ValueError(f"attributions must have shape (B, C, H, W), got {_shape(a)}")
    if how == "sum":
        return a.sum(1)
    if how == "mean":
        return a.mean(1)
    if how == "abs-sum":
        return a.abs().sum(1)
    raise ValueError(f"how must be 'sum', 'mean' or 'abs-sum', got {how!r}")


def nan_like(shape, ref: Tensor) -> Tensor:
    return torch.full(shape, float("nan"), dtype=ref.dtype, device=ref.device)


def is_constant(maps: Tensor) -> Tensor:
    """(B,) bool: the map has a single value everywhere."""
    flat = maps.flatten(1)
    return flat.amax(1) == flat.amin(1)


def first_argmax(maps: Tensor) -> Tensor:
    """(B, 2) long (row, col) of the first maximum in row-major order (ties go to the top-left);
    (B, 3) (slice, row, col) for (B, D, H, W) volumes."""
    flat = maps.flatten(1)
    idx = torch.argmax(flat, dim=1)  # documented to return the first maximal index
    coords = []
    for n in reversed(maps.shape[1:]):
        coords.append(idx % n)
        idx = idx // n
    return torch.stack(coords[::-1], dim=1)


def stable_order(values: Tensor, descending: bool) -> Tensor:
    """Indices sorting ``values`` (B, N) along dim 1; ties keep the smaller (row-major) index first."""
    return torch.sort(values, dim=1, descending=descending, stable=True).indices


def as_seeds(seed: Union[int, Sequence[int], Tensor], batch: int) -> list[int]:
    """Per-sample seeds: an int gives every sample the same seed; a sequence gives one per sample."""
    if isinstance(seed, Tensor):
        seed = seed.flatten().tolist()
    if isinstance(seed, (int,)) and not isinstance(seed, bool):
        return [int(seed)] * batch
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"seed must be an int or one seed per sample ({batch}), got {len(seeds)}")
    return seeds


def check_include(include, batch: int, device) -> Optional[Tensor]:
    if include is None:
        return None
    inc = as_tensor(include, "include")
    if inc.dim() != 1 or inc.shape[0] != batch:
        raise ValueError(f"include must have shape ({batch},), got {_shape(inc)}")
    return check_masks(inc[None, None], "include")[0, 0].to(device)
