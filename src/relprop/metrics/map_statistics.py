"""Descriptive statistics of attribution maps: properties that explain why a method scores as it does.

Localisation metrics reward maps that are silent outside the objects and penalise negative evidence
inside them; these statistics measure those properties directly, per map, so that a ranking can be
traced to them (docs/results.md uses them to explain the papers' orderings that the reproduction
reverses). None has a preferred direction; both take (B, D, H, W) volumes as well (the same formulas over voxels).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._common import check_maps, check_pair
from .registry import register

__all__ = ["silent_background", "negative_share", "SILENCE"]

#: a pixel is silent when its |R| is at most this fraction of the map's largest |R|
SILENCE = 1e-6


@register("silent_background", volumes=True, higher_is_better=None, category="descriptive",
          source="descriptive; the background term of the outside-inside ratios, [Nam2020-RAP] Eq. 11 and [Nam-Hedge] Eq. 14")
def silent_background(maps, masks, *, floor: float = SILENCE, resize: Optional[str] = None) -> Tensor:
    """(B,) share of the pixels outside each mask whose ``|R| <= floor * max |R|`` of that map: the
    part of the background that a map leaves exactly (or numerically) at zero, as rectified or
    class-contrastive maps do. An all-zero map is silent everywhere (1). NaN when the mask covers the
    whole image (no background)."""
    if not floor >= 0:
        raise ValueError(f"floor must be >= 0, got {floor!r}")
    r, m = check_pair(maps, masks, resize, volumes=True)
    a = r.abs().flatten(1).to(torch.float64)
    outside = ~m.flatten(1)
    peak = a.amax(1, keepdim=True)
    silent = (a <= floor * peak) & outside
    n_out = outside.sum(1)
    out = silent.sum(1).to(torch.float64) / n_out.clamp(min=1)
    return torch.where(n_out > 0, out, torch.full_like(out, float("nan")))


@register("negative_share", volumes=True, higher_is_better=None, category="descriptive", inputs=("maps",),
          source="descriptive; the negative relevance that [Nam2020-RAP] Eq. 11 (ALL) counts")
def negative_share(maps) -> Tensor:
    """(B,) ``sum(max(-R, 0)) / sum(|R|)`` of each map: 0 for a non-negative map, 1 for a
    non-positive one; NaN for an all-zero map."""
    r = check_maps(maps, volumes=True).flatten(1).to(torch.float64)
    total = r.abs().sum(1)
    neg = (-r).clamp(min=0).sum(1)
    return torch.where(total > 0, neg / total.clamp(min=torch.finfo(torch.float64).tiny),
                       torch.full_like(total, float("nan")))
