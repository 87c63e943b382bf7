"""NaN-aware aggregation of per-sample metric values, reporting how many samples counted.

Per-sample metrics return NaN where a value is undefined (empty mask, zero denominator, constant
map, ...). Aggregating with a plain mean would let one NaN poison the result (Quantus aggregates
with ``np.mean``) or, worse, silently count it as 0. Every function here skips NaN and reports the
number of values that counted (``count``) next to the number given (``total``).

Uncertainty (:func:`bootstrap_interval`, :func:`paired_bootstrap`, :func:`paired_test`,
:func:`holm`): percentile bootstrap intervals over images (Efron & Tibshirani 1993 [Efron1993-Bootstrap]), resampled
jointly for methods evaluated on the same images, paired permutation tests of the difference
between two methods, and the Holm (1979) step-down correction over a family of tests. Each works
on :class:`Sums`: per image (group) sums and counts of the finite values, so that a statistic is a
ratio of sums (a mean over pairs, a per-class macro mean, a mean curve, pooled counts) and
resampling images is a matrix product with a ``(resamples, images)`` weight matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import torch
from torch import Tensor

from ._common import as_tensor, check_include

__all__ = ["Aggregate", "CurveAggregate", "ClassAggregate", "BinnedAggregate", "aggregate",
           "aggregate_curves", "per_class_mean", "binned_mean", "Sums", "sums_by_group", "Interval",
           "PairedBootstrap", "PairedTest", "bootstrap_interval", "bootstrap_sums", "paired_bootstrap",
           "paired_test", "permutation_test", "holm", "resample_weights", "CONFIDENCE", "RESAMPLES",
           "EXACT_LIMIT", "CHUNK"]

#: defaults of the intervals and tests
CONFIDENCE = 0.95
RESAMPLES = 10_000
#: a permutation test enumerates all 2**n swaps when at most this many images differ
EXACT_LIMIT = 12


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

    Used for mu as a function of the relative box size (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Fig. 3: 100 uniform bins).
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



# ------------------------------------------------------------------------------------------------
# uncertainty: bootstrap intervals, paired permutation tests, Holm's correction


@dataclass(frozen=True)
class Sums:
    """Per-group sums and counts of finite values: ``sums`` and ``counts`` are ``(G, F)``.

    A group is an image (its pairs of (image, class) are resampled together); ``F`` features are
    averaged separately then together: the statistic is the mean over features of
    ``sums.sum(0) / counts.sum(0)`` (features without any value skipped). ``F = 1``: the mean over
    pairs; features = classes: the per-class macro mean; features = curve steps: the mean of the
    mean curve; ``sums`` = correct pixels, ``counts`` = pixels: pooled pixel accuracy.
    """

    sums: Tensor
    counts: Tensor

    def __post_init__(self) -> None:
        if self.sums.dim() != 2 or self.sums.shape != self.counts.shape:
            raise ValueError(f"sums {tuple(self.sums.shape)} and counts {tuple(self.counts.shape)} "
                             "must both be (groups, features)")
        object.__setattr__(self, "sums", self.sums.to(torch.float64))
        object.__setattr__(self, "counts", self.counts.to(torch.float64))

    @property
    def groups(self) -> int:
        return int(self.sums.shape[0])

    @property
    def n(self) -> int:
        """Groups (images) with at least one value."""
        return int((self.counts.sum(1) > 0).sum())

    def statistic(self, weights: Optional[Tensor] = None) -> Tensor:
        """The statistic under group ``weights`` ``(B, G)`` (resampling counts): ``(B,)``; without
        weights the plain estimate, shape ``(1,)``."""
        w = torch.ones(1, self.groups, dtype=torch.float64) if weights is None else weights
        ratio = (w @ self.sums) / (w @ self.counts)  # (B, F); 0/0 -> NaN
        return ratio.nanmean(1)

    def estimate(self) -> float:
        return float(self.statistic()[0])


def sums_by_group(values, groups: Optional[Sequence[Hashable]] = None,
                  features: Optional[Sequence[Hashable]] = None, group_index: Optional[dict] = None,
                  feature_index: Optional[dict] = None) -> Sums:
    """:class:`Sums` of per-pair ``values`` (N,) grouped by ``groups`` (N hashable image ids; default:
    each value its own group) and ``features`` (N hashable ids, e.g. classes; default: one feature).
    NaN values are skipped. ``group_index`` / ``feature_index`` (id -> row / column) fix the layout,
    so that several methods share rows (paired resampling); ids missing from them raise KeyError."""
    v = _values(values).to(torch.float64).cpu()
    if v.dim() != 1:
        raise ValueError(f"values must be 1-D (N,), got shape {tuple(v.shape)}")
    n = v.shape[0]
    groups = list(range(n)) if groups is None else list(groups)
    features = [0] * n if features is None else list(features)
    if len(groups) != n or len(features) != n:
        raise ValueError(f"values ({n}), groups ({len(groups)}) and features ({len(features)}) differ in length")
    gi = group_index if group_index is not None else {g: i for i, g in enumerate(dict.fromkeys(groups))}
    fi = feature_index if feature_index is not None else {f: i for i, f in enumerate(dict.fromkeys(features))}
    rows = torch.tensor([gi[g] for g in groups], dtype=torch.long)
    cols = torch.tensor([fi[f] for f in features], dtype=torch.long)
    ok = ~torch.isnan(v)
    flat = rows[ok] * max(len(fi), 1) + cols[ok]
    size = len(gi) * max(len(fi), 1)
    sums = torch.zeros(size, dtype=torch.float64).index_add_(0, flat, v[ok])
    counts = torch.zeros(size, dtype=torch.float64).index_add_(0, flat, torch.ones_like(v[ok]))
    shape = (len(gi), max(len(fi), 1))
    return Sums(sums.view(shape), counts.view(shape))


#: at most this many resample-by-group entries are held at once (resamples are drawn in chunks)
CHUNK = 20_000_000


def _chunks(groups: int, resamples: int) -> list[int]:
    size = max(1, CHUNK // max(groups, 1))
    return [min(size, resamples - start) for start in range(0, resamples, size)]


def _weight_chunks(groups: int, resamples: int, seed: int):
    """Bootstrap weights in chunks of rows, drawn from one private generator (see :func:`resample_weights`)."""
    gen = torch.Generator().manual_seed(int(seed))
    for rows in _chunks(groups, resamples):
        idx = torch.randint(groups, (rows, groups), generator=gen) if groups else \
            torch.zeros(rows, 0, dtype=torch.long)
        yield torch.zeros(rows, groups, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(rows, groups, dtype=torch.float64))


def resample_weights(groups: int, resamples: int = RESAMPLES, seed: int = 0) -> Tensor:
    """``(resamples, groups)`` float64 counts of each group in bootstrap resamples of the groups
    (Efron & Tibshirani 1993 [Efron1993-Bootstrap]): each row draws ``groups`` groups with replacement. Deterministic for
    a ``seed`` (a private torch generator; the global RNG is untouched). Drawn in chunks of at most
    :data:`CHUNK` entries, as :func:`bootstrap_sums` uses them (memory stays bounded for large data sets)."""
    return torch.cat(list(_weight_chunks(groups, resamples, seed)), 0)


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval: ``estimate`` (on the data), ``low``, ``high``; ``n``: groups
    (images) with a value. All NaN when ``n == 0``; ``low == high == estimate`` when ``n == 1``."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}] (n={self.n})"


def _percentile(replicates: Tensor, estimate: float, n: int, confidence: float) -> Interval:
    """The percentile interval (Efron & Tibshirani 1993 [Efron1993-Bootstrap], Sec. 13.3) of bootstrap ``replicates``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    r = replicates[~torch.isnan(replicates)]
    if n == 0 or math.isnan(estimate) or r.numel() == 0:
        return Interval(estimate, math.nan, math.nan, n, confidence)
    alpha = (1 - confidence) / 2
    q = torch.quantile(r, torch.tensor([alpha, 1 - alpha], dtype=r.dtype))
    return Interval(estimate, float(q[0]), float(q[1]), n, confidence)


@dataclass(frozen=True)
class PairedBootstrap:
    """Intervals of several statistics from the same resampled images. ``replicates``: ``(B, M)``
    bootstrap values of the ``M`` statistics (row ``b`` resamples the same images for all)."""

    intervals: list[Interval]
    replicates: Tensor
    confidence: float = CONFIDENCE

    def difference(self, i: int, j: int) -> Interval:
        """Paired interval of statistic ``i`` minus statistic ``j``."""
        a, b = self.intervals[i], self.intervals[j]
        both = min(a.n, b.n)
        return _percentile(self.replicates[:, i] - self.replicates[:, j], a.estimate - b.estimate, both,
                           self.confidence)


def bootstrap_sums(samples: Sequence[Sums], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = 0) -> PairedBootstrap:
    """Percentile bootstrap intervals of the statistics of ``samples`` (all with the same groups in
    the same rows), resampling the groups once for all of them: the intervals of differences are
    paired (Efron & Tibshirani 1993 [Efron1993-Bootstrap], Sec. 13.3 and Ch. 6)."""
    if not samples:
        return PairedBootstrap([], torch.zeros(resamples, 0, dtype=torch.float64), confidence)
    g = samples[0].groups
    if any(s.groups != g for s in samples):
        raise ValueError("paired samples must have the same groups (rows)")
    reps = torch.cat([torch.stack([s.statistic(w) for s in samples], 1)
                      for w in _weight_chunks(g, resamples, seed)], 0)
    return PairedBootstrap([_percentile(reps[:, k], s.estimate(), s.n, confidence)
                            for k, s in enumerate(samples)], reps, confidence)


def bootstrap_interval(values, groups: Optional[Sequence[Hashable]] = None, confidence: float = CONFIDENCE,
                       resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval (Efron & Tibshirani 1993 [Efron1993-Bootstrap], Sec. 13.3) of the NaN-aware mean of
    ``values`` (N,). ``groups``: image ids: pairs of one image are resampled together (cluster
    bootstrap); default: each value is its own image. NaN values are skipped (``n`` counts the
    images with a finite value). The percentile interval, not BCa: it is transformation-respecting,
    needs no jackknife, and its slight under-coverage at small n is documented in docs/metrics.md.
    Deterministic for a ``seed``; 10,000 resamples of 500 values take a few tens of milliseconds."""
    return bootstrap_sums([sums_by_group(values, groups)], confidence, resamples, seed).intervals[0]


def _columns(values) -> list[Tensor]:
    if isinstance(values, dict):
        return [_values(v).to(torch.float64) for v in values.values()]
    v = _values(values).to(torch.float64)
    if v.dim() != 2:
        raise ValueError(f"values must be (N, M) (one column per method), got shape {tuple(v.shape)}")
    return list(v.unbind(1))


def paired_bootstrap(values, groups: Optional[Sequence[Hashable]] = None, confidence: float = CONFIDENCE,
                     resamples: int = RESAMPLES, seed: int = 0) -> PairedBootstrap:
    """Paired percentile intervals of the NaN-aware means of several methods on shared samples.

    ``values``: ``(N, M)`` (row = a sample, column = a method) or a dict of ``(N,)`` columns;
    ``groups``: image id per row (default: each row its own image). The images are resampled once
    and the same resamples apply to every method, so :meth:`PairedBootstrap.difference` gives the
    interval of a difference of two methods that shares their image-to-image variation."""
    cols = _columns(values)
    n = cols[0].shape[0] if cols else 0
    if any(c.shape != (n,) for c in cols):
        raise ValueError("every column must be (N,)")
    g = list(range(n)) if groups is None else list(groups)
    index = {k: i for i, k in enumerate(dict.fromkeys(g))}
    return bootstrap_sums([sums_by_group(c, g, group_index=index) for c in cols], confidence, resamples, seed)


@dataclass(frozen=True)
class PairedTest:
    """A paired two-sided test of ``a`` against ``b``: ``difference`` = statistic(a) - statistic(b)
    on the data, ``p_value``, ``n`` groups (images) that took part, ``exact``: all swaps enumerated."""

    difference: float
    p_value: float
    n: int
    exact: bool


def _stat_rows(s: Sums) -> Tensor:
    """The statistic of each row of ``s`` (rows are already weighted sums): ``(B,)``."""
    return (s.sums / s.counts).nanmean(1)


def permutation_test(a: Sums, b: Sums, resamples: int = RESAMPLES, seed: int = 0) -> PairedTest:
    """Paired permutation test of statistic(a) = statistic(b) (Fisher 1935; Good 2005, Ch. 3).

    Under the null hypothesis the two methods are exchangeable within each image: their values of
    an image may be swapped. The test statistic ``|statistic(a) - statistic(b)|`` is recomputed
    with the methods swapped in random subsets of the images (for a mean over one value per image:
    the sign-flip test of the mean difference). Images where both methods have identical sums and
    counts cannot change it and are left out of the swaps; with at most :data:`EXACT_LIMIT` images
    left, all ``2**n`` swaps are enumerated (exact p-value), otherwise ``resamples`` random swaps
    give ``p = (1 + #{|T*| >= |T|}) / (resamples + 1)`` (Phipson & Smyth 2010), never 0. The
    smallest attainable exact p is ``2 / 2**n``: fewer than 6 differing images cannot reach 5%.
    ``n``: images where at least one method has a value. No differing image: p = 1."""
    if a.sums.shape != b.sums.shape:
        raise ValueError(f"paired samples differ in shape: {tuple(a.sums.shape)} vs {tuple(b.sums.shape)}")
    observed = a.estimate() - b.estimate()
    n = int(((a.counts.sum(1) + b.counts.sum(1)) > 0).sum())
    differ = ((a.sums != b.sums) | (a.counts != b.counts)).any(1)
    k = int(differ.sum())
    if k == 0 or math.isnan(observed):
        return PairedTest(observed, 1.0, n, True)
    fixed_a = Sums(a.sums[~differ].sum(0, keepdim=True), a.counts[~differ].sum(0, keepdim=True))
    fixed_b = Sums(b.sums[~differ].sum(0, keepdim=True), b.counts[~differ].sum(0, keepdim=True))
    da, db = Sums(a.sums[differ], a.counts[differ]), Sums(b.sums[differ], b.counts[differ])
    exact = k <= EXACT_LIMIT
    total = 2 ** k if exact else resamples
    gen = torch.Generator().manual_seed(int(seed))
    tol = 1e-9 * max(abs(observed), 1e-300) + 1e-12
    hits, start = 0, 0
    for rows in _chunks(k, total):
        if exact:
            codes = torch.arange(start, start + rows, dtype=torch.long)
            flips = ((codes[:, None] >> torch.arange(k)) & 1).to(torch.float64)
        else:
            flips = torch.randint(2, (rows, k), generator=gen).to(torch.float64)
        start += rows
        keep = 1 - flips
        sa = Sums(keep @ da.sums + flips @ db.sums + fixed_a.sums,
                  keep @ da.counts + flips @ db.counts + fixed_a.counts)
        sb = Sums(keep @ db.sums + flips @ da.sums + fixed_b.sums,
                  keep @ db.counts + flips @ da.counts + fixed_b.counts)
        t = (_stat_rows(sa) - _stat_rows(sb)).abs()
        t = torch.where(torch.isnan(t), torch.zeros_like(t), t)
        hits += int((t >= abs(observed) - tol).sum())
    p = hits / total if exact else (1 + hits) / (total + 1)
    return PairedTest(observed, min(1.0, p), n, exact)


def paired_test(a, b, groups: Optional[Sequence[Hashable]] = None, resamples: int = RESAMPLES,
                seed: int = 0) -> PairedTest:
    """Two-sided paired permutation test of the mean difference of two methods on shared samples.

    ``a``, ``b``: (N,) values of the two methods on the same N samples; ``groups``: image id per
    sample (pairs of one image are swapped together; default: each sample its own image). Pairs
    where either value is NaN are dropped (``n`` counts the images left). Sign-flip permutation
    (see :func:`permutation_test`) rather than Wilcoxon's signed-rank test (1945): it tests the
    mean that the tables report (not a pseudo-median), is exact under symmetric differences, needs
    no correction for ties or zero differences (a zero difference contributes nothing whatever its
    sign; binary metrics such as pointing hits are all ties), and swaps whole images."""
    va, vb = _values(a, "a").to(torch.float64).cpu(), _values(b, "b").to(torch.float64).cpu()
    if va.dim() != 1 or va.shape != vb.shape:
        raise ValueError(f"a {tuple(va.shape)} and b {tuple(vb.shape)} must both be (N,)")
    g = list(range(va.shape[0])) if groups is None else list(groups)
    if len(g) != va.shape[0]:
        raise ValueError(f"groups ({len(g)}) and values ({va.shape[0]}) differ in length")
    keep = (~torch.isnan(va) & ~torch.isnan(vb)).tolist()
    g = [x for x, k in zip(g, keep) if k]
    mask = torch.tensor(keep, dtype=torch.bool)
    index = {k: i for i, k in enumerate(dict.fromkeys(g))}
    return permutation_test(sums_by_group(va[mask], g, group_index=index),
                            sums_by_group(vb[mask], g, group_index=index), resamples, seed)


def holm(p_values) -> Tensor:
    """Holm's (1979) step-down adjusted p-values: sort ascending, ``p_(i) * (m - i + 1)`` (i from 1),
    made non-decreasing and capped at 1. Rejecting where the adjusted p <= alpha controls the
    family-wise error rate at alpha. NaN p-values are left out of the family and stay NaN."""
    p = _values(p_values, "p_values").to(torch.float64).cpu().flatten()
    out = torch.full_like(p, math.nan)
    ok = ~torch.isnan(p)
    q = p[ok]
    m = q.numel()
    if m == 0:
        return out
    order = torch.argsort(q, stable=True)
    scaled = q[order] * torch.arange(m, 0, -1, dtype=torch.float64)
    adjusted = torch.cummax(scaled, 0).values.clamp(max=1.0)
    res = torch.empty_like(q)
    res[order] = adjusted
    out[ok] = res
    return out
