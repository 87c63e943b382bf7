"""The metrics an evaluation can compute: every metric of :data:`relprop.metrics.METRICS`, computed
from the :class:`~relprop.metrics.Wiring` it was registered with (the inputs it needs, the function
called, how its result is stored); nothing here names a metric except :data:`DEFAULT_METRICS`.

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
  "union_bg", "intersection_fg", "union_fg"}`` (summed over a data set they give Nam et al.'s [Nam2020-RAP] pooled
  pixel accuracy and mIoU) and the per-image pixel accuracy as the scalar;
* ``maximal_patch_masking`` stores the change per patch size (Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 11);
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

import difflib
import inspect
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from torch import Tensor, nn

from .. import metrics as M
from .store import variant_key

__all__ = ["NO_METHOD", "PairBatch", "MetricSpec", "metric_spec", "metric_names", "pair_seed"]

#: the method key of metrics that do not depend on an explanation
NO_METHOD = "-"


@dataclass
class PairBatch:
    """A batch of explained (sample, class) pairs on one device.

    ``images`` (N, C, S, S) model inputs; ``masks`` (N, S, S) bool, the class's objects (or the
    foreground); ``targets`` (N,) class indices; ``seeds``: one int per pair; ``model``: in eval mode;
    ``explain``: ``(model, images, targets) -> (N, S, S)`` maps of the method being evaluated;
    ``forward``: the model's logits for metrics that only run it forward (perturbation curves, patch
    masking, occlusion; default ``model``), e.g. a frozen copy (:mod:`relprop.metrics.inference`).
    """

    images: Tensor
    masks: Tensor
    targets: Tensor
    seeds: list[int]
    model: nn.Module
    explain: Optional[Callable[[nn.Module, Tensor, Tensor], Tensor]] = None
    forward: Optional[Callable[[Tensor], Tensor]] = None


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


def _seeds(batch: PairBatch, options: dict) -> list[int]:
    base = options.get("seed", 0)
    if not isinstance(base, int):
        raise ValueError(f"seed must be an int, got {base!r}")
    return [zlib.crc32(f"{s}\x00{base}".encode()) & 0x7FFFFFFF for s in batch.seeds]


def _tupled(options: dict) -> dict:
    """JSON lists become tuples (sequence options, ``("percentile", q)`` thresholds)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _compute(info: M.MetricInfo) -> Compute:
    """The runner's computation of a registered metric, from its :class:`~relprop.metrics.Wiring`."""
    wiring = info.wiring
    fn = wiring.call or info.fn
    forward_only = "explain" not in wiring.inputs  # a metric that explains again needs the module

    def compute(b: PairBatch, maps: Optional[Tensor], o: dict) -> list[tuple[float, Any]]:
        args = []
        for name in wiring.inputs:
            if name == "model" and forward_only and b.forward is not None:
                value = b.forward
            else:
                value = maps if name == "maps" else getattr(b, name)
            if name == "explain" and value is None:
                raise ValueError(f"{info.name} needs the method's explain function")
            args.append(value)
        opts = _tupled(dict(wiring.defaults, **o))
        if wiring.seeded:
            opts["seed"] = _seeds(b, o)
        return wiring.result(fn(*args, **opts, **wiring.fixed))
    return compute


#: the metrics computed when none are named: cheap map metrics and one perturbation curve
DEFAULT_METRICS = ("pointing_game", "energy_pointing_game", "mu", "mu_w", "outside_inside_ratio",
                   "positive_ratio", "aopc_morf")


def metric_names() -> list[str]:
    """Names the runner can compute (every entry of :data:`relprop.metrics.METRICS`)."""
    return sorted(M.METRICS)


def _options(info: M.MetricInfo) -> set[str]:
    """The options of a metric: keyword arguments of the function called, less its inputs and the
    arguments the runner sets."""
    wiring = info.wiring
    params = list(inspect.signature(wiring.call or info.fn).parameters.values())
    inputs = {p.name for p in params[:len(wiring.inputs)]}
    named = {p.name for p in params if p.default is not p.empty or p.kind is p.KEYWORD_ONLY}
    return named - inputs - set(wiring.fixed)


def metric_spec(name: str, options: Optional[dict] = None, size: int = 224) -> MetricSpec:
    """The metric ``name`` with ``options`` (keyword arguments of its :mod:`relprop.metrics` function)."""
    options = dict(options or {})
    if name not in M.METRICS:
        close = difflib.get_close_matches(name, metric_names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown metric {name!r}{hint}; known: {', '.join(metric_names())}")
    info = M.METRICS[name]
    wiring = info.wiring
    allowed = _options(info)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"metric {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(sorted(allowed)) or 'none'}")
    x, x_label = wiring.x_axis(dict(wiring.defaults, **options), size) if wiring.x_axis else (None, None)
    return MetricSpec(name=name, options=options, key=variant_key(name, options),
                      needs_mask="masks" in wiring.inputs,
                      needs_map="maps" in wiring.inputs or "explain" in wiring.inputs,
                      higher_is_better=info.higher_is_better, category=info.category,
                      compute=_compute(info), x=x, x_label=x_label)


def check_metric_specs(specs: Sequence[MetricSpec]) -> None:
    keys = [s.key for s in specs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"metric(s) named twice: {', '.join(dup)}")
