"""NaN-aware aggregation of per-sample metric values, reporting how many samples counted.

Per-sample metrics return NaN where a value is undefined (empty mask, zero denominator, constant
map, ...). Aggregating with a plain mean would let one NaN poison the result (Quantus aggregates
with ``np.mean``) or, worse, silently count it as 0. Every function here skips NaN and reports the
number of values that counted (``count``) next to the number given (``total``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ._common import as_tensor, check_include

__all__ = ["Aggregate", "CurveAggregate", "ClassAggregate", "BinnedAggregate", "aggregate",
           "aggregate_curves", "per_class_mean", "binned_mean"]


@dataclass(frozen=True)
class Aggregate:
    """NaN-aware summary of per-sample values.

    ``count``: finite values that were averaged; ``total``: values passed after the ``include``
    filter; ``undefined``: ``total - count`` (NaN values); ``excluded``: values dropped by
    ``include``. ``mean`` and ``std`` are NaN when ``count == 0`` (std also when ``count <= ddof``).
    """

    mean: float
    std: float
    count: int
    total: int
    excluded: int = 0

    @property
    def undefined(self) -> int:
        return self.total - self.count

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.count}/{self.total})"


@dataclass(frozen=True)
class CurveAggregate:
    """NaN-aware mean/std of curves (N, S) over samples, per step: tensors of shape (S,)."""

    mean: Tensor
    std: Tensor
    count: Tensor
    total: int
    excluded: int = 0


@dataclass(frozen=True)
class ClassAggregate:
    """Per-class means and their macro average.

    ``per_class``: (K,) class means (NaN for a class without valid samples unless
    ``empty_class="zero"``); ``counts``: (K,) valid samples per class; ``macro``: mean of the class
    means over the ``classes_counted`` classes that entered it.
    """

    macro: float
    per_class: Tensor
    counts: Tensor
    classes_counted: int
    total: int
    excluded: int = 0


@dataclass(frozen=True)
class BinnedAggregate:
    """Means of values binned by a covariate ``x`` (e.g. mu as a function of box size).

    ``edges``: (bins+1,) bin edges; bin ``i`` is ``[edges[i], edges[i+1])`` and the last bin is closed.
    ``mean``/``std``/``count``: (bins,) over the finite values in each bin; ``outside``: samples whose
    ``x`` fell outside the range (not counted).
    """

    edges: Tensor
    mean: Tensor
    std: Tensor
    count: Tensor
    outside: int

    @property
    def centers(self) -> Tensor:
        return 0.5 * (self.edges[1:] + self.edges[:-1])


def _values(values, name: str = "values") -> Tensor:
    v = as_tensor(values, name)
    if not v.is_floating_point():
        v = v.to(torch.float64)
    return v


def _filter(v: Tensor, include) -> tuple[Tensor, int]:
    inc = check_include(include, v.shape[0], v.device)
    if inc is None:
        return v, 0
    return v[inc], int((~inc).sum())


def aggregate(values, include=None, ddof: int = 0) -> Aggregate:
    """NaN-aware mean and standard deviation of per-sample values (1-D), with counts.

    ``include``: optional (N,) boolean mask of the samples that take part (e.g. a "difficult"
    subset, or boxes covering at most 25% of the image); excluded samples are reported separately
    from undefined (NaN) ones. ``ddof``: delta degrees of freedom of the std (0: population std).
    """
    v = _values(values)
    if v.dim() != 1:
        raise ValueError(f"values must be 1-D (N,), got shape {tuple(v.shape)}; use aggregate_curves")
    v, excluded = _filter(v, include)
    finite = v[~torch.isnan(v)].to(torch.float64)
    n = int(finite.numel())
    mean = float(finite.mean()) if n else math.nan
    std = float(((finite - mean) ** 2).sum() / (n - ddof)) ** 0.5 if n > ddof else math.nan
    return Aggregate(mean, std, n, int(v.numel()), excluded)


def aggregate_curves(values, include=None, ddof: int = 0) -> CurveAggregate:
    """NaN-aware mean/std over samples (dim 0) of curves ``(N, S)``, with per-step counts."""
    v = _values(values)
    if v.dim() != 2:
        raise ValueError(f"values must be 2-D (N, S), got shape {tuple(v.shape)}")
    v, excluded = _filter(v, include)
    v = v.to(torch.float64)
    ok = ~torch.isnan(v)
    count = ok.sum(0)
    s = torch.where(ok, v, torch.zeros((), dtype=v.dtype)).sum(0)
    mean = s / count  # NaN where count == 0
    dev = torch.where(ok, (v - mean) ** 2, torch.zeros((), dtype=v.dtype)).sum(0)
    denom = (count - ddof).to(v.dtype)
    std = torch.where(denom > 0, (dev / denom.clamp(min=1)).sqrt(), torch.full_like(mean, math.nan))
    return CurveAggregate(mean, std, count, int(v.shape[0]), excluded)


def per_class_mean(values, classes, num_classes: Optional[int] = None, include=None,
                   empty_class: str = "nan") -> ClassAggregate:
    """Per-class NaN-aware means and their macro (unweighted) mean.

    This is how the pointing game is reported (TorchRay, EBP): the accuracy of each class, then the
    mean over classes. ``values``: (N,) per (image, class) pair; ``classes``: (N,) integer class ids.

    ``empty_class``: ``"nan"`` (default) - a class with no valid sample has a NaN mean and is left
    out of the macro mean (``classes_counted`` says how many entered); ``"zero"`` - TorchRay's
    behaviour: such a class scores 0 and is still averaged (its denominator is clamped to 1).
    """
    if empty_class not in ("nan", "zero"):
        raise ValueError(f"empty_class must be 'nan' or 'zero', got {empty_class!r}")
    v = _values(values).to(torch.float64)
    c = as_tensor(classes, "classes")
    if v.dim() != 1 or c.shape != v.shape:
        raise ValueError(f"values {tuple(v.shape)} and classes {tuple(c.shape)} must both be (N,)")
    if c.is_floating_point() or c.dtype == torch.bool:
        raise ValueError("classes must be an integer tensor")
    c = c.to(device=v.device, dtype=torch.long)
    inc = check_include(include, v.shape[0], v.device)
    excluded = 0
    if inc is not None:
        v, c, excluded = v[inc], c[inc], int((~inc).sum())
    if c.numel() and int(c.min()) < 0:
        raise ValueError("classes must be non-negative")
    k = num_classes if num_classes is not None else (int(c.max()) + 1 if c.numel() else 0)
    if c.numel() and int(c.max()) >= k:
        raise ValueError(f"class id {int(c.max())} out of range for num_classes={k}")
    ok = ~torch.isnan(v)
    sums = torch.zeros(k, dtype=torch.float64, device=v.device).index_add_(0, c[ok], v[ok])
    counts = torch.zeros(k, dtype=torch.long, device=v.device).index_add_(
        0, c[ok], torch.ones_like(c[ok]))
    if empty_class == "zero":
        per_class = sums / counts.clamp(min=1)
        used = torch.ones(k, dtype=torch.bool, device=v.device)
    else:
        per_class = sums / counts  # 0/0 -> NaN
        used = counts > 0
    n_used = int(used.sum())
    macro = float(per_class[used].mean()) if n_used else math.nan
    return ClassAggregate(macro, per_class, counts, n_used, int(v.numel()), excluded)


def binned_mean(values, x, bins: int = 100, range: tuple[float, float] = (0.0, 1.0),
                include=None) -> BinnedAggregate:
    """NaN-aware mean of ``values`` in ``bins`` equal-width bins of the covariate ``x``.

    Used for mu as a function of the relative box size (paper 003, Fig. 3: 100 uniform bins).
    Bin ``i`` holds ``edges[i] <= x < edges[i+1]``; the last bin also holds ``x == range[1]``.
    """
    v = _values(values).to(torch.float64)
    xs = _values(x, "x").to(torch.float64).to(v.device)
    if v.dim() != 1 or xs.shape != v.shape:
        raise ValueError(f"values {tuple(v.shape)} and x {tuple(xs.shape)} must both be (N,)")
    lo, hi = float(range[0]), float(range[1])
    if not hi > lo or bins < 1:
        raise ValueError("need range[1] > range[0] and bins >= 1")
    inc = check_include(include, v.shape[0], v.device)
    if inc is not None:
        v, xs = v[inc], xs[inc]
    inside = (xs >= lo) & (xs <= hi)
    outside = int((~inside).sum())
    v, xs = v[inside], xs[inside]
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64, device=v.device)
    idx = (torch.bucketize(xs, edges, right=True) - 1).clamp(0, bins - 1)
    ok = ~torch.isnan(v)
    idx, v = idx[ok], v[ok]
    count = torch.zeros(bins, dtype=torch.long, device=v.device).index_add_(0, idx, torch.ones_like(idx))
    s = torch.zeros(bins, dtype=torch.float64, device=v.device).index_add_(0, idx, v)
    mean = s / count
    dev = torch.zeros(bins, dtype=torch.float64, device=v.device).index_add_(0, idx, (v - mean[idx]) ** 2)
    std = (dev / count).sqrt()
    return BinnedAggregate(edges, mean, std, count, outside)

