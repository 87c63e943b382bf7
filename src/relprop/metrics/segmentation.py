"""Segmentation metrics of thresholded attribution maps against foreground masks.

Protocol of Nam et al. 2020 [Nam2020-RAP] (pixel accuracy and mIoU of thresholded maps: mean threshold for positive
maps, zero for signed maps) as implemented in Chefer et al.'s [Chefer2021-Transformer] ``imagenet_seg_eval.py``: per-image
thresholding, pixel accuracy as a micro average over the data set, IoU of background and foreground
with intersections and unions accumulated over the whole data set (:class:`SegmentationAccumulator`),
and "mAP" as the mean per-image average precision of the stacked two-channel problem
(:func:`stacked_average_precision`, used by Nam et al. [Nam-Hedge], Table 3). :func:`foreground_average_precision`
is the plain per-image AP of the map against the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor

from ._common import (apply_sign, as_tensor, check_maps, check_masks, check_pair, check_sign, is_constant,
                      stable_order)
from .registry import Records, register

__all__ = ["threshold_maps", "threshold_values", "otsu_thresholds", "percentile_thresholds",
           "pixel_accuracy", "image_iou", "segmentation_counts", "pooled_segmentation", "average_precision", "stacked_average_precision",
           "foreground_average_precision", "SegmentationAccumulator", "SegmentationResult", "minmax_normalise"]

Threshold = Union[str, float, tuple[str, float]]
THRESHOLDS = ("mean", "zero", "median", "otsu")


def minmax_normalise(maps: Tensor, constant_map: str = "nan") -> Tensor:
    """Per-sample min-max normalisation to [0, 1] of (B, H, W) maps.

    A constant map has no normalisation: ``constant_map="nan"`` gives NaN, ``"zero"`` gives 0
    (what Chefer et al.'s [Chefer2021-Transformer] code ends up with after replacing NaN by 0).
    """
    if constant_map not in ("nan", "zero"):
        raise ValueError(f"constant_map must be 'nan' or 'zero', got {constant_map!r}")
    flat = maps.flatten(1)
    lo = flat.amin(1)[:, None, None]
    span = flat.amax(1)[:, None, None] - lo
    out = (maps - lo) / span
    const = (span == 0).expand_as(maps)
    out = torch.where(const, torch.full_like(out, math.nan if constant_map == "nan" else 0.0), out)
    return out


def percentile_thresholds(maps: Tensor, q: float) -> Tensor:
    """(B,) ``q``-th percentile of each (B, H, W) map, linear interpolation between order statistics
    (``numpy.percentile``'s default method, including its interpolation formula)."""
    if not 0.0 <= float(q) <= 100.0:
        raise ValueError(f"a percentile must lie in [0, 100], got {q}")
    v = torch.sort(maps.flatten(1).to(torch.float64), dim=1).values
    n = v.shape[1]
    pos = float(q) / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    t = pos - lo
    a, b = v[:, lo], v[:, hi]
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t  # numpy's _lerp


def otsu_thresholds(maps: Tensor, nbins: int = 256) -> Tensor:
    """(B,) Otsu threshold of each (B, H, W) map, as ``skimage.filters.threshold_otsu`` on a float64
    image: a ``nbins`` histogram over ``[min, max]`` (numpy's bin edges), the bin centre that maximises
    the between-class variance (first maximum). A constant map returns its value."""
    if nbins < 2:
        raise ValueError(f"nbins must be >= 2, got {nbins}")
    r = maps.flatten(1).to(torch.float64)
    lo, hi = r.amin(1, keepdim=True), r.amax(1, keepdim=True)
    step = (hi - lo) / nbins
    edges = lo + torch.arange(nbins + 1, dtype=torch.float64, device=r.device) * step
    edges[:, -1:] = hi  # numpy.linspace sets the last edge to the stop value
    idx = (torch.searchsorted(edges, r, right=True) - 1).clamp(0, nbins - 1)
    counts = torch.zeros(r.shape[0], nbins, dtype=torch.float64, device=r.device).scatter_add_(
        1, idx, torch.ones_like(r))
    centers = (edges[:, :-1] + edges[:, 1:]) / 2
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    m1 = (counts * centers).cumsum(1) / w1
    m2 = ((counts * centers).flip(1).cumsum(1) / w2.flip(1)).flip(1)
    var12 = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    thr = centers.gather(1, var12.argmax(1, keepdim=True))[:, 0]
    return torch.where(hi[:, 0] > lo[:, 0], thr, lo[:, 0])


def threshold_values(maps: Tensor, threshold: Threshold) -> Tensor:
    """(B,) thresholds in the units of the (already sign-transformed) maps; see :func:`threshold_maps`.

    A numeric threshold ``t`` on the min-max normalised map is returned as ``min + t * (max - min)``.
    """
    flat = maps.flatten(1)
    if isinstance(threshold, str):
        if threshold == "mean":
            return flat.mean(1)
        if threshold == "zero":
            return torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        if threshold == "median":
            return flat.median(1).values
        if threshold == "otsu":
            return otsu_thresholds(maps).to(flat.dtype)
    elif isinstance(threshold, tuple) and len(threshold) == 2 and threshold[0] == "percentile":
        return percentile_thresholds(maps, threshold[1]).to(flat.dtype)
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"a numeric threshold applies to the min-max normalised map and must be "
                             f"in [0, 1], got {threshold}")
        lo = flat.amin(1)
        return lo + float(threshold) * (flat.amax(1) - lo)
    raise ValueError(f"threshold must be one of {THRESHOLDS}, ('percentile', q) or a float in [0, 1], "
                     f"got {threshold!r}")


def threshold_maps(maps, threshold: Threshold = "mean", *, sign: str = "signed") -> tuple[Tensor, Tensor]:
    """Binary foreground predictions from maps; returns ``(pred (B, H, W) bool, constant (B,) bool)``.

    Foreground is ``R > t`` with the per-image threshold ``t`` given by ``threshold``:
      * ``"mean"`` - the mean of R (Nam et al. 2020 [Nam2020-RAP] for positive maps; identical to Chefer's
        ``R_hat > mean(R_hat)`` on the min-max normalised map, since min-max normalisation is
        monotone and affine);
      * ``"zero"`` - 0 (Nam et al. 2020 [Nam2020-RAP] for maps with positive and negative relevance);
      * ``"median"`` - the lower median; ``("percentile", q)`` - the q-th percentile (numpy's linear
        interpolation); Nam et al. 2020 [Nam2020-RAP] report that their results hold for percentiles and the median;
      * ``"otsu"`` - Otsu's threshold (256-bin histogram, as ``skimage.filters.threshold_otsu``);
      * a float ``t`` in [0, 1] - ``R_hat > t`` on the per-image min-max normalised map.

    ``sign`` transforms the map first (e.g. ``"positive"`` to threshold R+). A constant map predicts
    background everywhere (as in Chefer's code), except with ``"zero"`` where ``R > 0`` is defined;
    ``constant`` flags those samples so callers can count or skip them.
    """
    check_sign(sign)
    r = apply_sign(check_maps(maps), sign)
    const = is_constant(r)
    thr = threshold_values(r, threshold)  # also validates the option
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        # compare on the normalised map itself, so that t = 0 and t = 1 behave exactly
        pred = minmax_normalise(r, "zero") > float(threshold)
    else:
        pred = r > thr[:, None, None]
    if threshold != "zero":
        pred = pred & ~const[:, None, None]
    return pred, const


def _preds(maps, masks, threshold, sign, resize):
    maps, masks = check_pair(maps, masks, resize)
    pred, const = threshold_maps(maps, threshold, sign=sign)
    return pred, masks, const


@register("pixel_accuracy", higher_is_better=True,
          source="[Nam2020-RAP] Table 1 (PIX ACC); Chefer et al. [Chefer2021-Transformer] imagenet_seg_eval.py",
          category="segmentation")
def pixel_accuracy(maps, masks, *, threshold: Threshold = "mean", sign: str = "signed",
                   resize: Optional[str] = None) -> Tensor:
    """Per-image pixel accuracy of the thresholded map (fraction of pixels classified correctly).

    The data-set figure of Nam et al. 2020 [Nam2020-RAP] is the micro average (all pixels pooled); use
    :class:`SegmentationAccumulator` for it. Always defined (every pixel is labelled).
    """
    pred, masks, _ = _preds(maps, masks, threshold, sign, resize)
    return (pred == masks).flatten(1).to(torch.float64).mean(1)


def _inter_union(pred: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2) intersections and unions for classes (background, foreground)."""
    p, m = pred.flatten(1), masks.flatten(1)
    inter = torch.stack([(~p & ~m).sum(1), (p & m).sum(1)], 1)
    union = torch.stack([(~p | ~m).sum(1), (p | m).sum(1)], 1)
    return inter, union


@register("image_iou", higher_is_better=True,
          source="per-image variant of [Nam2020-RAP] Table 1 (mIOU)", category="segmentation")
def image_iou(maps, masks, *, threshold: Threshold = "mean", sign: str = "signed",
              resize: Optional[str] = None) -> Tensor:
    """Per-image mean of the background and foreground IoU (a per-image variant; the paper's mIoU
    accumulates over the data set, see :class:`SegmentationAccumulator`). A class with an empty
    union is left out of the mean; NaN if both are empty (impossible for a non-empty image)."""
    pred, masks, _ = _preds(maps, masks, threshold, sign, resize)
    inter, union = _inter_union(pred, masks)
    iou = inter.to(torch.float64) / union.to(torch.float64)
    return torch.nanmean(iou, dim=1)


#: the columns of :func:`segmentation_counts`
COUNT_FIELDS = ("correct", "pixels", "intersection_bg", "union_bg", "intersection_fg", "union_fg")


def _count_records(counts: Tensor) -> Records:
    """Per image: the counts by name; the scalar is the pixel accuracy (correct / pixels)."""
    return [(r[0] / r[1] if r[1] else math.nan, {k: int(v) for k, v in zip(COUNT_FIELDS, r)})
            for r in counts.cpu().tolist()]


@register("segmentation_counts", higher_is_better=None,
          source="counts of [Nam2020-RAP] Table 1 (PIX ACC, mIOU pooled over the data set); "
                 "Chefer et al. [Chefer2021-Transformer] imagenet_seg_eval.py",
          category="segmentation", result=_count_records)
def segmentation_counts(maps, masks, *, threshold: Threshold = "mean", sign: str = "signed",
                        resize: Optional[str] = None) -> Tensor:
    """(B, 6) int64 per-image counts of the thresholded map against the mask, columns
    :data:`COUNT_FIELDS`: correct pixels, pixels, background intersection and union, foreground
    intersection and union.

    Summed over a data set they give Nam et al.'s [Nam2020-RAP] figures (:func:`pooled_segmentation`): pixel
    accuracy = correct / pixels and mIoU = the mean over background and foreground of
    intersection / union, exactly as :class:`SegmentationAccumulator` with
    ``constant_map="background"``.
    """
    pred, masks, _ = _preds(maps, masks, threshold, sign, resize)
    inter, union = _inter_union(pred, masks)
    correct = (pred == masks).flatten(1).sum(1)
    pixels = torch.full_like(correct, masks[0].numel() if masks.shape[0] else 0)
    return torch.stack([correct, pixels, inter[:, 0], union[:, 0], inter[:, 1], union[:, 1]], 1).to(torch.int64)


def pooled_segmentation(counts) -> tuple[float, float, tuple[float, float]]:
    """``(pixel_accuracy, miou, (iou_bg, iou_fg))`` of (N, 6) :func:`segmentation_counts` rows summed
    over the rows (the data set); NaN where a denominator is zero (no rows, an empty union)."""
    c = torch.as_tensor(counts, dtype=torch.float64).reshape(-1, len(COUNT_FIELDS)).sum(0).tolist()
    correct, pixels, ib, ub, i_f, uf = c
    nan = math.nan
    pix = correct / pixels if pixels > 0 else nan
    iou = (ib / ub if ub > 0 else nan, i_f / uf if uf > 0 else nan)
    return pix, (iou[0] + iou[1]) / 2, iou


def average_precision(scores, targets) -> Tensor:
    """Per-row average precision, identical to ``sklearn.metrics.average_precision_score``.

    ``scores`` (B, N) float, ``targets`` (B, N) binary. ``AP = sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds (tied scores share one threshold, so the result does not depend on the
    order of ties). NaN for a row without positives (sklearn warns and returns a meaningless value).
    """
    s = as_tensor(scores, "scores")
    t = check_masks(as_tensor(targets, "targets")[None], "targets")[0]  # (B, N) -> rank 3
    if s.dim() != 2 or t.shape != s.shape:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(t.shape)} must both be (B, N)")
    if not s.is_floating_point():
        s = s.to(torch.float64)
    b, n = s.shape
    out = torch.full((b,), math.nan, dtype=torch.float64, device=s.device)
    if n == 0 or b == 0:
        return out
    order = stable_order(s, descending=True)
    ss = s.gather(1, order)
    tt = t.to(s.device).gather(1, order).to(torch.float64)
    tp = tt.cumsum(1)
    npos = tp[:, -1]
    is_end = torch.ones_like(ss, dtype=torch.bool)
    is_end[:, :-1] = ss[:, 1:] != ss[:, :-1]
    tp_end = torch.where(is_end, tp, torch.zeros_like(tp))
    prev = torch.zeros_like(tp)
    prev[:, 1:] = torch.cummax(tp_end, dim=1).values[:, :-1]
    precision = tp / torch.arange(1, n + 1, device=s.device, dtype=torch.float64)
    contrib = torch.where(is_end, (tp - prev) * precision, torch.zeros_like(tp)).sum(1)
    ok = npos > 0
    out[ok] = contrib[ok] / npos[ok]
    return out


@register("stacked_map", higher_is_better=True,
          source="[Nam-Hedge] Table 3 (mAP); Chefer et al. [Chefer2021-Transformer] get_ap_scores",
          category="segmentation")
def stacked_average_precision(maps, masks, *, constant_map: str = "nan", sign: str = "signed",
                              resize: Optional[str] = None) -> Tensor:
    """Per-image AP of the stacked two-channel problem (the "mAP" of Chefer et al.'s [Chefer2021-Transformer] code).

    With ``R_hat`` the min-max normalised map, the scores ``[1 - R_hat, R_hat]`` are ranked against
    the one-hot targets ``[1 - S, S]`` (2*H*W entries, :func:`average_precision`); the data-set "mAP"
    is the mean of these per-image values. This is neither a foreground AP nor the mean of a
    foreground and a background AP. NaN for a constant map, unless ``constant_map="zero"`` (Chefer's
    NaN -> 0). Defined for empty and whole-image masks (one channel then has all positives).
    """
    maps, masks = check_pair(maps, masks, resize)
    r = minmax_normalise(apply_sign(maps, sign), constant_map).flatten(1)
    m = masks.flatten(1)
    scores = torch.cat([1 - r, r], dim=1)
    targets = torch.cat([~m, m], dim=1)
    out = average_precision(torch.nan_to_num(scores, nan=0.0), targets)
    out[torch.isnan(r).any(1)] = float("nan")
    return out


@register("foreground_ap", higher_is_better=True,
          source="plain per-image average precision of the map against the mask (the unstacked "
                 "variant of [Nam-Hedge] Table 3 mAP)",
          category="segmentation")
def foreground_average_precision(maps, masks, *, sign: str = "signed",
                                 resize: Optional[str] = None) -> Tensor:
    """Per-image AP of the map's values as foreground scores against the mask.

    NaN for an empty mask (no positives). A constant map gives the foreground rate (one threshold).
    """
    maps, masks = check_pair(maps, masks, resize)
    return average_precision(apply_sign(maps, sign).flatten(1), masks.flatten(1))


@dataclass(frozen=True)
class SegmentationResult:
    """Data-set results of :class:`SegmentationAccumulator`.

    ``pixel_accuracy``: correct pixels / all pixels (micro); ``iou``: (background, foreground) IoU from
    accumulated intersections and unions; ``miou``: their mean (NaN if either union is empty);
    ``mean_ap``: NaN-aware mean of per-image stacked APs (``ap_count`` images counted);
    ``n_samples``: images counted; ``n_constant``: of those, images with a constant map (predicted
    all background); ``n_skipped``: images skipped because their map was constant
    (``constant_map="skip"``).
    """

    pixel_accuracy: float
    miou: float
    iou: tuple[float, float]
    mean_ap: float
    ap_count: int
    n_samples: int
    n_constant: int
    n_skipped: int


@dataclass
class SegmentationAccumulator:
    """Accumulates pixel accuracy, mIoU and stacked mAP over a data set (Nam et al. 2020 [Nam2020-RAP] / Chefer et al. [Chefer2021-Transformer]).

    ``threshold``, ``sign``: see :func:`threshold_maps`. ``constant_map``: ``"background"`` (default,
    Chefer's behaviour: a constant map predicts background and counts) or ``"skip"`` (the image is
    left out and counted in ``n_skipped``). Stacked APs of constant maps are NaN and not averaged
    (``ap_count``). Call :meth:`update` per batch and :meth:`compute` at the end.
    """

    threshold: Threshold = "mean"
    sign: str = "signed"
    constant_map: str = "background"
    resize: Optional[str] = None
    with_ap: bool = True
    _correct: int = field(default=0, init=False)
    _pixels: int = field(default=0, init=False)
    _inter: Optional[Tensor] = field(default=None, init=False)
    _union: Optional[Tensor] = field(default=None, init=False)
    _ap_sum: float = field(default=0.0, init=False)
    _ap_count: int = field(default=0, init=False)
    _n: int = field(default=0, init=False)
    _n_constant: int = field(default=0, init=False)
    _n_skipped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.constant_map not in ("background", "skip"):
            raise ValueError(f"constant_map must be 'background' or 'skip', got {self.constant_map!r}")
        check_sign(self.sign)
        self.reset()

    def reset(self) -> None:
        self._correct = self._pixels = 0
        self._inter = torch.zeros(2, dtype=torch.long)
        self._union = torch.zeros(2, dtype=torch.long)
        self._ap_sum, self._ap_count = 0.0, 0
        self._n = self._n_constant = self._n_skipped = 0

    def update(self, maps, masks) -> None:
        maps, masks = check_pair(maps, masks, self.resize)
        pred, const = threshold_maps(maps, self.threshold, sign=self.sign)
        keep = torch.ones_like(const) if self.constant_map == "background" else ~const
        self._n_skipped += int((~keep).sum())
        pred, masks, maps, const = pred[keep], masks[keep], maps[keep], const[keep]
        self._n += int(pred.shape[0])
        self._n_constant += int(const.sum())
        self._correct += int((pred == masks).sum())
        self._pixels += int(masks.numel())
        inter, union = _inter_union(pred, masks)
        self._inter += inter.sum(0).cpu()
        self._union += union.sum(0).cpu()
        if self.with_ap and pred.shape[0]:
            ap = stacked_average_precision(maps, masks, sign=self.sign)
            ok = ~torch.isnan(ap)
            self._ap_sum += float(ap[ok].sum())
            self._ap_count += int(ok.sum())

    def compute(self) -> SegmentationResult:
        nan = math.nan
        pix = self._correct / self._pixels if self._pixels else nan
        iou = tuple(float(i) / float(u) if u > 0 else nan
                    for i, u in zip(self._inter.tolist(), self._union.tolist()))
        miou = (iou[0] + iou[1]) / 2  # NaN propagates if a class has an empty union
        ap = self._ap_sum / self._ap_count if self._ap_count else nan
        return SegmentationResult(pix, miou, iou, ap, self._ap_count, self._n, self._n_constant,
                                  self._n_skipped)
