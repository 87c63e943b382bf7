"""Localisation metrics: how well an attribution map falls on the annotated object.

All functions take ``maps`` (B, H, W) and binary ``masks`` (B, H, W) (a box union or a segmentation
of the explained class) and return per-sample values, NaN where undefined. Citations in brackets are keys of
``docs/references.md``; see ``docs/metrics.md`` for the differences from the anchor
implementations (TorchRay, Quantus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (apply_sign, as_tensor, check_include, check_masks, check_maps, check_pair, check_sign,
                      first_argmax, is_constant, stable_order)
from .aggregate import Aggregate, BinnedAggregate, aggregate, binned_mean
from .registry import register, vector_records

__all__ = [
    "max_points", "pointing_hits", "pointing_game", "energy_pointing_game", "outside_inside_ratio",
    "normalised_outside_inside_ratio", "inside_total_ratio", "weighted_inside_total_ratio",
    "box_fraction", "positive_ratio", "InsideTotalSummary", "inside_total_summary",
    "top_k_intersection", "relevance_rank_accuracy", "relevance_mass_accuracy",
]

_PG_SOURCE = ("TorchRay PointingGame protocol (benchmark/pointing_game.py); pointing game of "
              "[Nam-Hedge] Table 1")


def _flat(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    return maps.flatten(1), masks.flatten(1)


def max_points(maps, sign: str = "signed") -> Tensor:
    """(B, 2) long ``(row, col)`` of the first maximum of each map in row-major order; (B, 3)
    ``(slice, row, col)`` for (B, D, H, W) volumes.

    This is TorchRay's point extraction (``torch.argmax`` of the flattened map): among tied maxima the
    top-most, then left-most pixel wins.
    """
    return first_argmax(apply_sign(check_maps(maps, volumes=True), sign))


def _within(d2: Tensor, tolerance: int, strict: bool) -> Tensor:
    # tolerance 0 means: the point itself must lie on the mask.
    if tolerance == 0:
        return d2 == 0
    return d2 < tolerance ** 2 if strict else d2 <= tolerance ** 2


def _check_tolerance(tolerance) -> int:
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int (pixels), got {tolerance!r}")
    return tolerance


def pointing_hits(points, masks, *, tolerance: int = 15, strict: bool = True) -> Tensor:
    """Hit test of given points against masks: 1.0 hit, 0.0 miss, NaN for an empty mask.

    ``points``: (B, 2) integer ``(row, col)``. A hit means some mask pixel lies within
    ``tolerance`` pixels of the point: Euclidean distance ``< tolerance`` (``strict=True``, TorchRay's
    code) or ``<= tolerance`` (``strict=False``, TorchRay's docs and EBP's original script);
    ``tolerance=0`` means the point itself must be on the mask. Use this for baselines such as
    TorchRay's "center" point.

    Volumes: (B, D, H, W) masks take (B, 3) ``(slice, row, col)`` points and the tolerance is a ball.
    """
    tolerance = _check_tolerance(tolerance)
    masks = check_masks(masks, volumes=True)
    pts = as_tensor(points, "points")
    b, dims = masks.shape[0], tuple(masks.shape[1:])
    if pts.shape != (b, len(dims)):
        raise ValueError(f"points must have shape ({b}, {len(dims)}) to match masks {tuple(masks.shape)}, "
                         f"got {tuple(pts.shape)}")
    pts = pts.to(device=masks.device, dtype=torch.long)
    if ((pts < 0) | (pts >= torch.tensor(dims, device=masks.device)[None])).any():
        raise ValueError(f"points must lie inside the {'x'.join(map(str, dims))} "
                         f"{'image' if len(dims) == 2 else 'volume'}")
    d2 = torch.zeros((b,) + dims, dtype=torch.long, device=masks.device)
    for axis, n in enumerate(dims):
        shape = [1] * (len(dims) + 1)
        shape[axis + 1] = n
        d2 = d2 + (torch.arange(n, device=masks.device).view(shape)
                   - pts[:, axis].view([b] + [1] * len(dims))) ** 2
    hit = (_within(d2, tolerance, strict) & masks).flatten(1).any(1)
    out = hit.to(torch.float32)
    out[~masks.flatten(1).any(1)] = float("nan")
    return out


def _dilate(masks: Tensor, tolerance: int, strict: bool) -> Tensor:
    """Pixels within the tolerance disk (ball for volumes) of any mask pixel (same rule as :func:`pointing_hits`)."""
    if tolerance == 0:
        return masks
    r = tolerance - 1 if strict else tolerance
    off = torch.arange(-r, r + 1, device=masks.device)
    if masks.dim() == 4:
        ball = _within(off[:, None, None] ** 2 + off[None, :, None] ** 2 + off[None, None, :] ** 2, tolerance, strict)
        out = F.conv3d(masks[:, None].to(torch.float32), ball.to(torch.float32)[None, None], padding=r)[:, 0]
        return out > 0.5
    disk = _within(off[:, None] ** 2 + off[None, :] ** 2, tolerance, strict).to(torch.float32)
    out = F.conv2d(masks[:, None].to(torch.float32), disk[None, None], padding=r)[:, 0]
    return out > 0.5


@register("pointing_game", volumes=True, higher_is_better=True, source=_PG_SOURCE, category="localisation")
def pointing_game(maps, masks, *, tolerance: int = 15, strict: bool = True, ties: str = "first",
                  sign: str = "signed", constant_map: str = "nan", resize: Optional[str] = None) -> Tensor:
    """Pointing game (Zhang et al. 2016 [Zhang2016-EB]) with TorchRay's protocol; per sample 1.0 hit / 0.0 miss / NaN.

    The point is the maximum of the (sign-transformed) map. ``ties="first"`` (default, TorchRay):
    the first maximum in row-major order; ``ties="any"`` (Quantus): a hit if *any* tied maximum
    hits. A hit means a mask pixel within ``tolerance`` pixels (default 15, strict ``<``; see
    :func:`pointing_hits`). ``tolerance=0, ties="any"`` is Quantus's ``PointingGame``.

    NaN (undefined, not a hit): empty mask; a constant map (after the sign transform, so also a map
    without positive values under ``sign="positive"``) unless ``constant_map="first"``, which
    points at pixel (0, 0) like TorchRay's ``argmax``. TorchRay computes the game at the original
    image resolution: pass the masks at that resolution and ``resize="map"``.

    Volumes: (B, D, H, W) maps and masks play the game in 3-D (the tolerance is a ball of voxels).

    Report per-class accuracies and their macro mean with
    :func:`relprop.metrics.aggregate.per_class_mean`; "difficult" subsets and the choice of the
    explained classes (predicted "P" or all labels "L", Nam et al. [Nam-Hedge] Table 1) are data concerns: pass
    one (map, mask) pair per explained (image, class) and select samples with ``include=``.
    """
    if ties not in ("first", "any"):
        raise ValueError(f"ties must be 'first' or 'any', got {ties!r}")
    if constant_map not in ("nan", "first"):
        raise ValueError(f"constant_map must be 'nan' or 'first', got {constant_map!r}")
    tolerance = _check_tolerance(tolerance)
    maps, masks = check_pair(maps, masks, resize, volumes=True)
    r = apply_sign(maps, sign)
    if ties == "first":
        out = pointing_hits(first_argmax(r), masks, tolerance=tolerance, strict=strict)
    else:
        ismax = r == r.flatten(1).amax(1).view([-1] + [1] * (r.dim() - 1))
        hit = (ismax & _dilate(masks, tolerance, strict)).flatten(1).any(1)
        out = hit.to(torch.float32)
        out[~masks.flatten(1).any(1)] = float("nan")
    if constant_map == "nan":
        out[is_constant(r)] = float("nan")
    return out


DEFAULT_ENERGIES = tuple(round(0.1 * i, 1) for i in range(1, 11))


@register("energy_pointing_game", volumes=True, higher_is_better=True,
          source="[Iwana2019-SGLRP] Eq. 11-12, Fig. 13", category="localisation",
          result=vector_records, fixed={"return_counts": False},
          x_axis=lambda options, side: (list(options.get("energies", DEFAULT_ENERGIES)), "energy"))
def energy_pointing_game(maps, masks, energies: Sequence[float] = DEFAULT_ENERGIES, *,
                         sign: str = "positive", resize: Optional[str] = None,
                         return_counts: bool = False):
    """Energy-based pointing game of Iwana et al. 2019 [Iwana2019-SGLRP] (Eq. 11-12): (B, len(energies)) pointing accuracies.

    For an energy level ``E`` in (0, 1], the threshold ``tau`` is chosen so that
    ``E = #(R >= tau) / #(R > 0)`` (Eq. 12): ``k = ceil(E * #(R > 0))`` and ``tau`` is the k-th largest
    positive value. Every positive pixel with ``R >= tau`` is a Hit inside the mask and a Miss outside;
    the accuracy is ``#Hits / (#Hits + #Misses)`` (Eq. 11). Pixels tied at ``tau`` are all counted
    (threshold semantics, so no tie rule is needed); ``E = 1`` counts every positive pixel.

    NaN: empty mask, or no positive relevance. ``return_counts=True`` also returns the (B, E) hit and
    selected-pixel counts, for a pooled (micro) accuracy over a data set.

    Note: the "energy-based pointing game" of Score-CAM (relevance *mass* inside the box over the
    total positive mass) is :func:`inside_total_ratio` with a box mask. Accepts (B, D, H, W) volumes
    (voxels instead of pixels).
    """
    maps, masks = check_pair(maps, masks, resize, volumes=True)
    r, m = _flat(apply_sign(maps, sign), masks)
    e = torch.as_tensor(list(energies), dtype=torch.float64)
    if e.dim() != 1 or e.numel() == 0 or not ((e > 0) & (e <= 1)).all():
        raise ValueError(f"energies must be fractions in (0, 1], got {list(energies)}")
    b, n = r.shape
    pos = r > 0
    npos = pos.sum(1)
    vals = torch.sort(r, dim=1, descending=True).values
    k = torch.ceil(e[None, :].to(r.device) * npos[:, None].to(torch.float64) - 1e-9).long()
    k = k.clamp(min=1, max=n)
    tau = vals.gather(1, k - 1)  # (B, E)
    sel = (r[:, None, :] >= tau[:, :, None]) & pos[:, None, :]
    hits = (sel & m[:, None, :]).sum(-1)
    total = sel.sum(-1)
    acc = hits.to(torch.float64) / total.to(torch.float64)
    undefined = (npos == 0) | ~m.any(1)
    acc[undefined] = float("nan")
    if return_counts:
        hits = hits.clone()
        total = total.clone()
        hits[undefined] = 0
        total[undefined] = 0
        return acc, hits, total
    return acc


def _inside_outside_means(t: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    mf = m.to(t.dtype)
    nin = mf.sum(1)
    nout = m.shape[1] - nin
    mean_in = (t * mf).sum(1) / nin
    mean_out = (t * (1 - mf)).sum(1) / nout
    return mean_in, mean_out


@register("outside_inside_ratio", volumes=True, higher_is_better=False,
          source="[Nam2020-RAP] Eq. 11 (signed, 'ALL'); Lapuschkin et al. 2016 [Lapuschkin2016-Fisher] ('POS')",
          category="localisation")
def outside_inside_ratio(maps, masks, *, sign: str = "signed", resize: Optional[str] = None) -> Tensor:
    """Outside-inside relevance ratio (Lapuschkin et al. 2016 [Lapuschkin2016-Fisher]) and its signed extension (Nam et al. 2020 [Nam2020-RAP]).

    ``sign="signed"`` is Nam et al. 2020 [Nam2020-RAP], Eq. 11 (Table 1 "ALL")::

        mu = (mean_out R+ + mean_in |R-|) / (mean_in R+ + mean_out |R-|)

    with ``R+ = max(R, 0)`` and ``|R-| = max(-R, 0)`` (the *magnitude* of the negative part: the text
    says mu increases when negative relevance lies inside the box, which needs magnitudes). For a map
    without negative values it equals the original ratio. Any other sign option gives the original
    form ``mean_out T(R) / mean_in T(R)`` of the transformed map: ``"positive"`` is Table 1 "POS".
    Lower is better.

    NaN: empty mask, mask covering the whole image (no outside), denominator 0 (e.g. no positive
    relevance inside under ``"positive"``). Accepts (B, D, H, W) volumes (voxels instead of pixels).
    """
    check_sign(sign)
    maps, masks = check_pair(maps, masks, resize, volumes=True)
    r, m = _flat(maps, masks)
    if sign == "signed":
        pin, pout = _inside_outside_means(r.clamp(min=0), m)
        nin, nout = _inside_outside_means((-r).clamp(min=0), m)
        num, den = pout + nin, pin + nout
    else:
        den, num = _inside_outside_means(apply_sign(r, sign), m)
    out = num / den
    nmask = m.sum(1)
    out[(nmask == 0) | (nmask == m.shape[1]) | ~(den > 0)] = float("nan")
    return out


@register("normalised_outside_inside_ratio", volumes=True, higher_is_better=False,
          source="[Nam-Hedge] Eq. 14, Table 3", category="localisation")
def normalised_outside_inside_ratio(maps, masks, *, resize: Optional[str] = None) -> Tensor:
    """Normalised outside-inside ratio of Nam et al. [Nam-Hedge] (Eq. 14): ``mean_out N(R) / mean_in N(R)``.

    ``N`` maps each map to [0, 1] by per-sample min-max normalisation ("normalization in the scope of
    [0, 1]"), so negative relevance counts as low rather than being discarded. Lower is better.
    NaN: empty or whole-image mask, constant map (N undefined), ``mean_in N = 0``.
    """
    maps, masks = check_pair(maps, masks, resize, volumes=True)
    r, m = _flat(maps, masks)
    lo = r.amin(1, keepdim=True)
    span = r.amax(1, keepdim=True) - lo
    nrm = (r - lo) / torch.where(span > 0, span, torch.ones_like(span))
    mean_in, mean_out = _inside_outside_means(nrm, m)
    out = mean_out / mean_in
    nmask = m.sum(1)
    out[(nmask == 0) | (nmask == m.shape[1]) | (span[:, 0] == 0) | ~(mean_in > 0)] = float("nan")
    return out


def _mu(maps, masks, sign: str, resize) -> tuple[Tensor, Tensor, int]:
    check_sign(sign)
    maps, masks = check_pair(maps, masks, resize, volumes=True)
    t, m = _flat(apply_sign(maps, sign), masks)
    rin = (t * m.to(t.dtype)).sum(1)
    rtot = t.sum(1)
    mu = rin / rtot
    nin = m.sum(1)
    mu[(nin == 0) | (rtot == 0)] = float("nan")
    return mu, nin, m.shape[1]


@register("mu", volumes=True, higher_is_better=True, source="[Kohlbrenner2020-LRP] Eq. 5 (mu)",
          category="localisation")
def inside_total_ratio(maps, masks, *, sign: str = "positive", resize: Optional[str] = None) -> Tensor:
    """Inside-total relevance ratio ``mu = R_in / R_tot`` (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 5). Higher is better.

    ``R_in``: positive relevance inside the mask, ``R_tot``: positive relevance in the image (the
    paper's definition, ``sign="positive"``; other sign options transform the map first). Unlike
    Quantus ``AttributionLocalisation`` there is no ``1e-9`` in the denominator and the default is
    R+ rather than |R|. NaN: empty mask, zero total relevance (e.g. an all-negative map). A mask
    covering the whole image gives 1. Accepts (B, D, H, W) volumes (voxels instead of pixels).
    """
    return _mu(maps, masks, sign, resize)[0]


@register("mu_w", volumes=True, higher_is_better=True,
          source="[Kohlbrenner2020-LRP] Eq. 5 (mu_w = mu * S_tot / S_in)", category="localisation")
def weighted_inside_total_ratio(maps, masks, *, sign: str = "positive",
                                resize: Optional[str] = None) -> Tensor:
    """Size-weighted inside-total ratio ``mu_w = mu * S_tot / S_in`` (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 5).

    ``S_tot``: image size in pixels, ``S_in``: mask size. A uniform map scores 1 (chance level);
    small objects are emphasised. (Quantus's ``weighted=True`` multiplies by the *inverse* of this
    weight, with a wrong image size; it is not reproduced.) Higher is better. NaN as :func:`inside_total_ratio`.
    Accepts (B, D, H, W) volumes (``S_tot``, ``S_in`` in voxels).
    """
    mu, nin, n = _mu(maps, masks, sign, resize)
    return mu * (n / nin.to(mu.dtype))


def box_fraction(masks) -> Tensor:
    """(B,) fraction of the image covered by each mask (``S_in / S_tot``), float64."""
    m = check_masks(masks)
    return m.flatten(1).sum(1).to(torch.float64) / (m.shape[1] * m.shape[2])


@register("positive_ratio", volumes=True, higher_is_better=None,
          source="[Nam-Hedge] Table 1 (PR)", category="localisation", inputs=("maps",))
def positive_ratio(maps) -> Tensor:
    """Positive ratio PR (Nam et al. [Nam-Hedge], Table 1): fraction of pixels with ``R > 0``.

    Descriptive (no preferred direction in general; Nam et al. [Nam-Hedge] present a low PR together with a high
    pointing accuracy as concentrated evidence). Always defined; an all-zero map gives 0. Accepts
    (B, D, H, W) volumes (fraction of voxels).
    """
    r = check_maps(maps, volumes=True).flatten(1)
    return (r > 0).to(torch.float64).mean(1)


@dataclass(frozen=True)
class InsideTotalSummary:
    """Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP] Table I / Fig. 3 in one object: aggregates of mu, mu_w, mu on small boxes, and mu
    binned by relative box size; plus the per-sample tensors they came from."""

    mu: Aggregate
    mu_w: Aggregate
    mu_le_025: Aggregate
    mu_le_05: Aggregate
    by_box_size: BinnedAggregate
    per_sample_mu: Tensor
    per_sample_mu_w: Tensor
    fraction: Tensor


def inside_total_summary(maps, masks, *, sign: str = "positive", resize: Optional[str] = None,
                         bins: int = 100, include=None) -> InsideTotalSummary:
    """mu, mu_w, mu_{<=0.25}, mu_{<=0.5} and mu by box size (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 5, Table I, Fig. 3).

    ``mu_le_025`` averages mu over samples whose mask covers at most 25% of the image (``<=``);
    ``mu_le_05`` likewise for 50%. ``by_box_size`` bins mu over ``bins`` equal intervals of the box
    fraction in [0, 1]. ``include`` restricts all aggregates to a subset of samples.
    """
    maps_c, masks_c = check_pair(maps, masks, resize)
    mu = inside_total_ratio(maps_c, masks_c, sign=sign)
    mu_w = weighted_inside_total_ratio(maps_c, masks_c, sign=sign)
    frac = box_fraction(masks_c).to(mu.device)
    inc = check_include(include, frac.shape[0], mu.device)
    if inc is None:
        inc = torch.ones_like(frac, dtype=torch.bool)
    return InsideTotalSummary(
        mu=aggregate(mu, include=inc), mu_w=aggregate(mu_w, include=inc),
        mu_le_025=aggregate(mu, include=inc & (frac <= 0.25)),
        mu_le_05=aggregate(mu, include=inc & (frac <= 0.5)),
        by_box_size=binned_mean(mu, frac, bins=bins, include=inc),
        per_sample_mu=mu, per_sample_mu_w=mu_w, fraction=frac)


# ---- metrics with a Quantus equivalent (for cross-checks and completeness) ------------------


def _ranks_desc(r: Tensor) -> Tensor:
    """(B, N) rank of every pixel in descending order (stable: row-major index breaks ties)."""
    order = stable_order(r, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(r.shape[1], device=r.device).expand_as(order))
    return ranks


@register("top_k_intersection", volumes=True, higher_is_better=True,
          source="Quantus TopKIntersection (Theiner et al. 2022 [Theiner2022-TKI])", category="localisation")
def top_k_intersection(maps, masks, k: int = 1000, *, concept_influence: bool = False,
                       sign: str = "signed", resize: Optional[str] = None) -> Tensor:
    """Fraction of the ``k`` highest-ranked pixels (voxels, for volumes) that lie in the mask (``k`` capped at H*W).

    ``concept_influence`` multiplies by ``H*W / |S|``. Stable ranking (row-major tie rule). NaN for an
    empty mask. Equals Quantus ``TopKIntersection`` for maps without ties.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    maps, masks = check_pair(maps, masks, resize, volumes=True)
    r, m = _flat(apply_sign(maps, sign), masks)
    keff = min(int(k), r.shape[1])
    inside = (_ranks_desc(r) < keff) & m
    out = inside.sum(1).to(torch.float64) / keff
    nin = m.sum(1)
    if concept_influence:
        out = out * r.shape[1] / nin.to(torch.float64)
    out[nin == 0] = float("nan")
    return out


@register("relevance_rank_accuracy", volumes=True, higher_is_better=True,
          source="Quantus RelevanceRankAccuracy (Arras et al. 2022 [Arras2022-CLEVRXAI])", category="localisation")
def relevance_rank_accuracy(maps, masks, *, sign: str = "signed", resize: Optional[str] = None) -> Tensor:
    """Fraction of the ``K = |S|`` highest-ranked pixels that lie in the mask. NaN for an empty mask."""
    maps, masks = check_pair(maps, masks, resize, volumes=True)
    r, m = _flat(apply_sign(maps, sign), masks)
    nin = m.sum(1)
    inside = (_ranks_desc(r) < nin[:, None]) & m
    out = inside.sum(1).to(torch.float64) / nin.to(torch.float64)
    out[nin == 0] = float("nan")
    return out


@register("relevance_mass_accuracy", volumes=True, higher_is_better=True,
          source="Quantus RelevanceMassAccuracy (Arras et al. 2022 [Arras2022-CLEVRXAI])", category="localisation")
def relevance_mass_accuracy(maps, masks, *, sign: str = "signed", resize: Optional[str] = None) -> Tensor:
    """``sum(S * R) / sum(R)`` of the sign-transformed map (Quantus default: signed); accepts (B, D, H, W) volumes.

    With ``sign="positive"`` it equals :func:`inside_total_ratio`. NaN: empty mask, zero total
    (Quantus returns inf/NaN there).
    """
    return _mu(maps, masks, sign, resize)[0]
