"""Several targets per sample in one call: ``target`` as K class indices per sample.

A list of class lists (the same number K for every sample) or a (B, K) integer tensor asks for K
maps per sample, returned shaped (B, K, *x.shape[1:]). :func:`class_targets` checks it into a
:class:`ClassTargets`. A method declared with ``multi_target=True`` explains all of them at once:
:func:`expand_targets` repeats its forward pass once per target (no layer is evaluated again) and
flattens the targets to one class per row, so that one backward pass serves every target; the
other methods are called once per target column (:func:`by_columns`).

Where the rows of every target would make a feature map larger than
:data:`relprop.propagate.PASS_BYTES`, the backward pass takes the targets in groups
(:func:`relprop.propagate.targets_per_pass`), still over the one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .attribution.method import Attribution
    from .propagate import ForwardCache, Propagator

Tensor = torch.Tensor


@dataclass(frozen=True)
class ClassTargets:
    """K class indices per sample: ``classes`` is a (B, K) long tensor, K >= 1."""

    classes: Tensor

    @property
    def count(self) -> int:
        """K, the number of targets per sample."""
        return int(self.classes.shape[1])

    def column(self, k: int) -> Tensor:
        """The k-th target of every sample, (B,)."""
        return self.classes[:, k]

    def flat(self) -> Tensor:
        """One class per row of the repeated batch, (B * K,): sample b's target k at row ``b * K + k``."""
        return self.classes.reshape(-1)

    def unflatten(self, t: Tensor) -> Tensor:
        """(B * K, ...) rows of the repeated batch as (B, K, ...)."""
        return t.reshape(self.classes.shape[0], self.count, *t.shape[1:])


def is_multi_target(target: Any) -> bool:
    """Whether ``target`` asks for several classes per sample: a 2-d integer tensor or array, or a
    sequence of class lists."""
    if isinstance(target, ClassTargets):
        return True
    if isinstance(target, (torch.Tensor, np.ndarray)):
        return target.ndim == 2
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        return any(_is_row(t) for t in target)
    return False


def _is_row(t: Any) -> bool:
    return isinstance(t, (torch.Tensor, np.ndarray)) or (isinstance(t, Sequence) and not isinstance(t, (str, bytes)))


def class_targets(target: Any, batch: int) -> ClassTargets:
    """``target`` (K classes per sample: a list of class lists or a (B, K) integer tensor) checked for
    a batch of ``batch`` samples. Class ranges are checked against the model output later."""
    if isinstance(target, ClassTargets):
        classes = target.classes
    elif isinstance(target, (torch.Tensor, np.ndarray)):
        classes = torch.as_tensor(target)
    else:
        rows = list(target)
        if not all(_is_row(t) for t in rows):
            raise ValueError("target mixes class indices and class lists: give one list of classes per sample "
                             "(e.g. [[3, 5], [1, 2]]) or one class per sample (e.g. [3, 1])")
        rows = [list(torch.as_tensor(r).reshape(-1).tolist()) if isinstance(r, (torch.Tensor, np.ndarray))
                else list(r) for r in rows]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            raise ValueError(f"target gives different numbers of classes per sample ({lengths}): every sample "
                             "needs the same number K of classes")
        for r in rows:
            for c in r:
                if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                    raise ValueError(f"target must hold integer class indices, got {type(c).__name__} {c!r}")
        classes = torch.tensor(rows, dtype=torch.long).reshape(len(rows), lengths[0] if lengths else 0)
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {classes.dtype}")
    if classes.dim() != 2:
        raise ValueError(f"several targets per sample need a (batch, K) target, got shape {tuple(classes.shape)}")
    if classes.shape[0] != batch:
        raise ValueError(f"target has {classes.shape[0]} rows of classes for a batch of {batch}")
    if classes.shape[1] == 0:
        raise ValueError("target gives no class per sample (K = 0): give at least one class per sample")
    return ClassTargets(classes.long())


def expand_targets(propagator: Propagator, cache: ForwardCache, target: Any) -> tuple[ForwardCache, Any]:
    """For :class:`ClassTargets`: the forward pass repeated once per target
    (:meth:`~relprop.propagate.Propagator.repeat`) and the class of each of its rows; any other
    target, unchanged with the cache."""
    if not isinstance(target, ClassTargets):
        return cache, target
    return propagator.repeat(cache, target.count), target.flat().to(cache.outputs[0].device)


def collect(attribution: Attribution, targets: ClassTargets, method: str) -> Attribution:
    """The relevance and records of a repeated batch (B * K rows) shaped (B, K, ...)."""
    from .attribution.method import Attribution

    rows = targets.classes.shape[0] * targets.count
    for name, t in [("relevance", attribution.relevance), *attribution.recorded.items()]:
        if t.dim() == 0 or t.shape[0] != rows:
            raise TypeError(f"method {method!r} returned {name} of shape {tuple(t.shape)} for {rows} rows "
                            f"(batch {targets.classes.shape[0]} x {targets.count} targets)")
    return Attribution(targets.unflatten(attribution.relevance),
                       {k: targets.unflatten(v) for k, v in attribution.recorded.items()})


def by_columns(explain: Callable[[Tensor], Attribution], targets: ClassTargets) -> Attribution:
    """One call of ``explain`` per target column, stacked to (B, K, ...)."""
    from .attribution.method import Attribution

    results = [explain(targets.column(k)) for k in range(targets.count)]
    recorded = {name: torch.stack([r.recorded[name] for r in results], 1) for name in results[0].recorded}
    return Attribution(torch.stack([r.relevance for r in results], 1), recorded)


__all__ = ["ClassTargets", "by_columns", "class_targets", "collect", "expand_targets", "is_multi_target"]
