"""The metrics an evaluation can compute, wired to :mod:`relprop.metrics` with the inputs each needs.

Every metric is computed for a batch of explained (sample, class) pairs from one method's maps
(relevance summed over channels, at the model's input resolution) and yields, per pair, a headline
``scalar`` and the exact ``value`` stored as JSON:

* map and mask metrics (pointing game, mu, mu_w, outside-inside ratios, segmentation scores, ...):
  the per-sample value; vector-valued ones (energy-based pointing game over energy levels, top-K
  distances) store the vector and its mean as the scalar;
* perturbation metrics store ``{"scores": curve, "correct": top-1 == target per step}`` and the
  AOPC (``aopc_morf``, ``aopc_lerf``) or the trapezoid AUC of the scores (``blurred_insertion``,
  ``rise_deletion_auc``, ``rise_insertion_auc``) as the scalar;
* ``segmentation_counts`` stores the per-image counts ``{"correct", "pixels", "intersection_bg",
  "union_bg", "intersection_fg", "union_fg"}`` (summed over a data set they give paper 000's pooled
  pixel accuracy and mIoU) and the per-image pixel accuracy as the scalar;
* ``maximal_patch_masking`` stores the change per patch size (paper 004, Fig. 11);
* ``object_context_occlusion`` does not depend on the explanation: it is computed once per pair and
  stored under the method ``-``;
* ``target_score`` (the model's logit of the explained class, which tells whether the model
  predicts it) does not depend on the explanation either and is stored under ``-``;
* ``cascading_randomisation`` re-explains with the method after each randomised layer and stores the
  per-layer similarities; its scalar is the rank correlation of |R| after the last layer.

Random choices (noise, shuffling, random patch location) are seeded per pair from the sample key and
the class, so values do not depend on batching or on how the data are sharded.
"""

from __future__ import annotations

import inspect
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import metrics as M
from ..metrics.perturbation import _rise_counts, region_ids
from .store import variant_key

__all__ = ["NO_METHOD", "PairBatch", "MetricSpec", "metric_spec", "metric_names", "pair_seed"]

#: the method key of metrics that do not depend on an explanation
NO_METHOD = "-"


@dataclass
class PairBatch:
    """A batch of explained (sample, class) pairs on one device.

    ``images`` (N, C, S, S) model inputs; ``masks`` (N, S, S) bool, the class's objects (or the
    foreground); ``targets`` (N,) class indices; ``seeds``: one int per pair; ``model``: in eval mode;
    ``explain``: ``(model, images, targets) -> (N, S, S)`` maps of the method being evaluated.
    """

    images: Tensor
    masks: Tensor
    targets: Tensor
    seeds: list[int]
    model: nn.Module
    explain: Optional[Callable[[nn.Module, Tensor, Tensor], Tensor]] = None


Compute = Callable[[PairBatch, Optional[Tensor], dict], list[tuple[float, Any]]]


@dataclass(frozen=True)
class MetricSpec:
    """A metric variant: ``name`` + ``options``, its storage ``key``, what it needs and its x axis."""

    name: str
    options: dict
    key: str
    needs_mask: bool
    needs_map: bool
    higher_is_better: Optional[bool]
    category: str
    compute: Compute = field(repr=False)
    x: Optional[list] = None
    x_label: Optional[str] = None

    def as_row(self) -> dict:
        return dict(key=self.key, name=self.name, options=self.options,
                    higher_is_better=self.higher_is_better, category=self.category, x=self.x,
                    x_label=self.x_label)


def pair_seed(sample_key: str, target: int, base: int = 0) -> int:
    """A seed for one (sample, class) pair that depends on nothing else (CRC-32 of key, class, base)."""
    return zlib.crc32(f"{sample_key}\x00{int(target)}\x00{int(base)}".encode()) & 0x7FFFFFFF


def _floats(t: Tensor) -> list:
    return t.detach().to(torch.float64).cpu().tolist()


def _scalars(values: Tensor) -> list[tuple[float, Any]]:
    v = _floats(values)
    return [(x, x) for x in v]


def _vectors(values: Tensor) -> list[tuple[float, Any]]:
    """Rows of a (N, K) tensor; the scalar is the row mean (NaN if any entry is NaN)."""
    rows = _floats(values)
    return [(math.fsum(r) / len(r) if r and not any(math.isnan(x) for x in r) else math.nan, r)
            for r in rows]


def _curves(curves: M.PerturbationCurves, scalar: Tensor) -> list[tuple[float, Any]]:
    scores, correct, s = _floats(curves.scores), curves.correct.to(torch.int64).cpu().tolist(), _floats(scalar)
    return [(s[i], {"scores": scores[i], "correct": correct[i]}) for i in range(len(s))]


def _seeds(batch: PairBatch, options: dict) -> list[int]:
    base = options.get("seed", 0)
    if not isinstance(base, int):
        raise ValueError(f"seed must be an int, got {base!r}")
    return [zlib.crc32(f"{s}\x00{base}".encode()) & 0x7FFFFFFF for s in batch.seeds]


def _with(options: dict, **defaults: Any) -> dict:
    out = dict(defaults)
    out.update(options)
    return out


def _tupled(options: dict) -> dict:
    """JSON lists become tuples (sequence options, ``("percentile", q)`` thresholds)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


# ------------------------------------------------------------------------------------------------
# adapters


def _map_mask(fn: Callable) -> Compute:
    return lambda b, maps, o: _scalars(fn(maps, b.masks, **_tupled(o)))


def _map_only(fn: Callable) -> Compute:
    return lambda b, maps, o: _scalars(fn(maps, **_tupled(o)))


def _energy(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    return _vectors(M.energy_pointing_game(maps, b.masks, **_tupled(o)))


def _topk(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    return _vectors(M.topk_distance(maps, **_tupled(o)))


def _aopc(order: str) -> Compute:
    def compute(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
        opts = _tupled(_with(o, counts=tuple(range(0, 101))))
        opts["seed"] = _seeds(b, o)
        curves = M.region_perturbation(b.model, b.images, maps, b.targets, order=order, **opts)
        return _curves(curves, curves.aopc())
    return compute


def _blurred(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    curves = M.blurred_insertion(b.model, b.images, maps, b.targets, **_tupled(o))
    return _curves(curves, curves.auc())


def _rise(kind: str) -> Compute:
    fn = M.rise_deletion if kind == "deletion" else M.rise_insertion

    def compute(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
        curves = fn(b.model, b.images, maps, b.targets, **_tupled(o))
        return _curves(curves, curves.auc())
    return compute


def _patch(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    opts = _tupled(o)
    opts["seed"] = _seeds(b, o)
    res = M.maximal_patch_masking(b.model, b.images, maps, b.targets, **opts)
    rows = _vectors(res.change)
    clean, nopos = _floats(res.clean), res.no_positive.cpu().tolist()
    return [(s, {"change": v, "clean": clean[i], "no_positive": bool(nopos[i])})
            for i, (s, v) in enumerate(rows)]


def _seg_counts(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    rows = M.segmentation_counts(maps, b.masks, **_tupled(o)).cpu().tolist()
    fields = M.segmentation.COUNT_FIELDS
    return [(r[0] / r[1] if r[1] else math.nan, {k: int(v) for k, v in zip(fields, r)}) for r in rows]


def _occlusion(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    out = M.object_context_occlusion(b.model, b.images, b.masks, b.targets, **_tupled(o))
    rows = _floats(out)
    # scalar: object minus context; negative when occluding the object hurts more (paper 003, Fig. 2)
    return [(r[0] - r[1], {"object": r[0], "context": r[1]}) for r in rows]


def _target_score(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    return _scalars(M.target_score(b.model, b.images, b.targets, **o))


def _randomisation(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
    if b.explain is None:
        raise ValueError("cascading_randomisation needs the method's explain function")
    res = M.cascading_randomisation(b.model, b.images, b.targets, b.explain, **_tupled(o))
    sa, sg, ss = _floats(res.spearman_abs), _floats(res.spearman), _floats(res.ssim)
    out = []
    for i in range(len(sa)):
        last = sa[i][-1] if sa[i] else math.nan
        out.append((last, {"layers": list(res.layers), "spearman_abs": sa[i], "spearman": sg[i],
                           "ssim": ss[i]}))
    return out


@dataclass(frozen=True)
class _Wiring:
    compute: Compute
    needs_mask: bool
    needs_map: bool = True
    accepts: Optional[Callable] = None  # the function whose keyword arguments are the options
    fixed: tuple[str, ...] = ()  # options the runner sets itself


_WIRING: dict[str, _Wiring] = {
    "pointing_game": _Wiring(_map_mask(M.pointing_game), True),
    "energy_pointing_game": _Wiring(_energy, True, accepts=M.energy_pointing_game, fixed=("return_counts",)),
    "outside_inside_ratio": _Wiring(_map_mask(M.outside_inside_ratio), True),
    "normalised_outside_inside_ratio": _Wiring(_map_mask(M.normalised_outside_inside_ratio), True),
    "mu": _Wiring(_map_mask(M.inside_total_ratio), True),
    "mu_w": _Wiring(_map_mask(M.weighted_inside_total_ratio), True),
    "positive_ratio": _Wiring(_map_only(M.positive_ratio), False),
    "top_k_intersection": _Wiring(_map_mask(M.top_k_intersection), True),
    "relevance_rank_accuracy": _Wiring(_map_mask(M.relevance_rank_accuracy), True),
    "relevance_mass_accuracy": _Wiring(_map_mask(M.relevance_mass_accuracy), True),
    "pixel_accuracy": _Wiring(_map_mask(M.pixel_accuracy), True),
    "image_iou": _Wiring(_map_mask(M.image_iou), True),
    "segmentation_counts": _Wiring(_seg_counts, True, accepts=M.segmentation_counts),
    "stacked_map": _Wiring(_map_mask(M.stacked_average_precision), True),
    "foreground_ap": _Wiring(_map_mask(M.foreground_average_precision), True),
    "topk_distance": _Wiring(_topk, False, accepts=M.topk_distance),
    "aopc_morf": _Wiring(_aopc("morf"), False, accepts=M.region_perturbation, fixed=("order",)),
    "aopc_lerf": _Wiring(_aopc("lerf"), False, accepts=M.region_perturbation, fixed=("order",)),
    "blurred_insertion": _Wiring(_blurred, False, accepts=M.blurred_insertion),
    "rise_deletion_auc": _Wiring(_rise("deletion"), False, accepts=M.rise_deletion),
    "rise_insertion_auc": _Wiring(_rise("insertion"), False, accepts=M.rise_insertion),
    "maximal_patch_masking": _Wiring(_patch, False, accepts=M.maximal_patch_masking),
    "object_context_occlusion": _Wiring(_occlusion, True, needs_map=False,
                                        accepts=M.object_context_occlusion),
    "target_score": _Wiring(_target_score, False, needs_map=False, accepts=M.target_score),
    "cascading_randomisation": _Wiring(_randomisation, False, accepts=M.cascading_randomisation,
                                       fixed=("return_maps",)),
}

#: the metrics computed when none are named: cheap map metrics and one perturbation curve
DEFAULT_METRICS = ("pointing_game", "energy_pointing_game", "mu", "mu_w", "outside_inside_ratio",
                   "positive_ratio", "aopc_morf")


def metric_names() -> list[str]:
    """Names the runner can compute (every entry of :data:`relprop.metrics.METRICS`)."""
    return sorted(_WIRING)


def _keywords(fn: Callable) -> set[str]:
    params = list(inspect.signature(fn).parameters.values())
    return {p.name for p in params if p.default is not p.empty or p.kind is p.KEYWORD_ONLY}


def _x_axis(name: str, options: dict, size: int) -> tuple[Optional[list], Optional[str]]:
    """The x axis of a vector- or curve-valued metric for ``size`` x ``size`` inputs."""
    sig = lambda fn, arg: inspect.signature(fn).parameters[arg].default  # noqa: E731
    if name == "energy_pointing_game":
        return list(options.get("energies", sig(M.energy_pointing_game, "energies"))), "energy"
    if name == "topk_distance":
        return list(options.get("ks", sig(M.topk_distance, "ks"))), "K"
    if name in ("aopc_morf", "aopc_lerf"):
        counts = [int(c) for c in options.get("counts", range(0, 101))]
        if not counts or counts[0] != 0:
            counts = [0] + counts
        unit = "pixels" if int(options.get("patch_size", 1)) == 1 else "regions"
        return counts, f"{unit} removed"
    if name == "blurred_insertion":
        fr = [float(f) for f in options.get("fractions", sig(M.blurred_insertion, "fractions"))]
        _, nreg, _ = region_ids(size, size, int(options.get("patch_size", 1)))
        counts = [int(math.floor(f * nreg + 0.5)) for f in fr]
        if not counts or counts[0] != 0:
            counts = [0] + counts  # step 0 (the blurred image) is prepended by the metric
        return [c / nreg for c in counts], "fraction inserted"
    if name in ("rise_deletion_auc", "rise_insertion_auc"):
        step = int(options.get("step", 224))
        n = size * size
        return [c / n for c in _rise_counts(n, step)], ("fraction deleted" if "deletion" in name
                                                        else "fraction inserted")
    if name == "maximal_patch_masking":
        return [int(p) for p in options.get("patch_sizes", sig(M.maximal_patch_masking, "patch_sizes"))], \
            "patch size"
    return None, None


def metric_spec(name: str, options: Optional[dict] = None, size: int = 224) -> MetricSpec:
    """The metric ``name`` with ``options`` (keyword arguments of its :mod:`relprop.metrics` function)."""
    options = dict(options or {})
    if name not in _WIRING:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(metric_names())}")
    wiring = _WIRING[name]
    info = M.METRICS[name]
    allowed = _keywords(wiring.accepts or info.fn) - set(wiring.fixed) - {"targets", "explain"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"metric {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(sorted(allowed)) or 'none'}")
    x, x_label = _x_axis(name, options, size)
    return MetricSpec(name=name, options=options, key=variant_key(name, options),
                      needs_mask=wiring.needs_mask, needs_map=wiring.needs_map,
                      higher_is_better=info.higher_is_better, category=info.category,
                      compute=wiring.compute, x=x, x_label=x_label)


def check_metric_specs(specs: Sequence[MetricSpec]) -> None:
    keys = [s.key for s in specs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"metric(s) named twice: {', '.join(dup)}")
