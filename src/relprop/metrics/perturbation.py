"""Perturbation metrics: how the model's score changes when pixels are removed or inserted by rank.

* :func:`region_perturbation` - MoRF / LeRF / random region perturbation (Samek et al. 2017 [Samek2017-Perturbation]) with
  removal by the image minimum (Nam, Choi and Lee [Nam-RAP-Journal] Table I), zero (Nam et al. 2020 [Nam2020-RAP] Fig. 7), mean, blur, uniform
  noise, any fixed value or substrate, or random shuffling of the selected pixels (Nam, Choi and Lee [Nam-RAP-Journal]
  Table I, in parentheses); per-step scores, accuracy and AOPC.
* :func:`blurred_insertion` - MoRF insertion of original pixels into a Gaussian-blurred image in 1%
  steps up to 20% (Nam et al. [Nam-Hedge], Fig. 9).
* :func:`rise_deletion` / :func:`rise_insertion` - RISE's causal deletion and insertion curves and
  their AUC (Petsiuk et al. 2018 [Petsiuk2018-RISE], official ``evaluation.py``).

Every perturbed copy is built from the *original* image (removal values never drift), and copies of
all samples and steps are pushed through the model together in chunks of ``internal_batch_size``:
``B * S`` forward passes for ``S`` steps (plus ``B`` for the clean prediction of insertion curves
when no targets are given). When a step changes only a small region (``patch_size > 1``, one region
per step) and the model is a traceable ``nn.Module``, the steps of each sample are instead evaluated
one after another and each recomputes only the windows of the feature maps that its region reaches
(``incremental``, :mod:`relprop.metrics.incremental`): same curves, a fraction of the arithmetic.
Run the model in ``eval()`` mode; it is called under ``torch.no_grad()``.

Ranking and ties: regions are ranked with a stable sort, so among regions of equal score the one
with the smaller row-major index comes first, in MoRF (descending) and LeRF (ascending) order alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (as_seeds, as_tensor, check_counts, check_finite, check_images, check_maps,
                      check_target_range, check_targets, stable_order)
from .aggregate import CurveAggregate, aggregate_curves
from .incremental import IncrementalForward
from .inference import eager_module
from .registry import Records, as_floats, register

__all__ = ["PerturbationCurves", "region_perturbation", "blurred_insertion", "rise_deletion",
           "rise_insertion", "aopc", "trapezoid_auc", "gaussian_blur", "gaussian_kernel",
           "region_ids", "model_scores", "PAPER_000_LERF_COUNTS", "PAPER_001_POSITIVE_COUNTS",
           "PAPER_001_NEGATIVE_COUNTS", "PAPER_002_INSERTION_FRACTIONS"]

#: Nam, Choi and Lee [Nam-RAP-Journal], Table I, positive removal: pixels removed in MoRF order (add H*W for "All")
PAPER_001_POSITIVE_COUNTS = (0, 250, 500, 1000, 2000, 4000)
#: Nam, Choi and Lee [Nam-RAP-Journal], Table I, negative removal: pixels removed in LeRF order (add H*W for "All")
PAPER_001_NEGATIVE_COUNTS = (0, 2000, 4000, 6000, 8000, 10000)
#: Nam et al. 2020 [Nam2020-RAP], Fig. 7: 100 pixels per step in LeRF order, 4,000 in all, set to zero
PAPER_000_LERF_COUNTS = tuple(range(0, 4001, 100))
#: Nam et al. [Nam-Hedge], Fig. 9: 1% .. 20% of the pixels in 1% steps
PAPER_002_INSERTION_FRACTIONS = tuple(round(0.01 * i, 2) for i in range(1, 21))

SCORES = ("logit", "softmax", "log_softmax")
ORDERS = ("morf", "lerf", "random")
REMOVALS = ("min", "zero", "mean", "blur", "noise", "shuffle")


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerturbationCurves:
    """Per-sample curves of a perturbation experiment.

    ``counts`` (S,): regions (pixels when ``patch_size=1``) requested at each step, starting at 0;
    ``n_perturbed`` (B, S): pixels actually changed (removed or inserted), which is smaller than
    requested when fewer regions are eligible (``restrict``) or the image is exhausted;
    ``scores`` (B, S): the target's score (``score_kind``) on the perturbed input; ``correct`` (B, S):
    whether the model's top-1 equals the target; ``targets`` (B,); ``predicted`` (B,): the top-1
    class on the clean image (None when it was not computed); ``mode``: ``"deletion"`` (step 0 is
    the clean image) or ``"insertion"`` (step 0 is the substrate).
    """

    counts: Tensor
    n_perturbed: Tensor
    scores: Tensor
    correct: Tensor
    targets: Tensor
    predicted: Optional[Tensor]
    score_kind: str
    mode: str

    def drop(self) -> Tensor:
        """(B, S) ``f(x^(0)) - f(x^(k))``: the score drop relative to step 0."""
        return self.scores[:, :1] - self.scores

    def aopc(self) -> Tensor:
        """(B,) AOPC terms (Samek et al. [Samek2017-Perturbation]): mean over k = 0..L of ``f(x^(0)) - f(x^(k))``.

        Average over samples (e.g. with :func:`relprop.metrics.aggregate.aggregate`) for the data-set
        AOPC. Higher is better for MoRF, lower for LeRF.
        """
        return aopc(self.scores)

    def auc(self) -> Tensor:
        """(B,) trapezoidal area under the score curve with the steps spread evenly over [0, 1]
        (RISE's AUC)."""
        return trapezoid_auc(self.scores)

    def accuracy(self) -> Tensor:
        """(S,) fraction of samples whose top-1 equals the target, per step."""
        return self.correct.to(torch.float64).mean(0)

    def mean_curve(self) -> CurveAggregate:
        """NaN-aware mean/std of the score curves over samples."""
        return aggregate_curves(self.scores)


def aopc(scores) -> Tensor:
    """(B,) ``1/(L+1) * sum_{k=0..L} (f(x^(0)) - f(x^(k)))`` from (B, L+1) score curves (step 0 =
    unperturbed), as in Samek et al. 2017 [Samek2017-Perturbation] (Eq. 12 there)."""
    s = as_tensor(scores, "scores")
    if s.dim() != 2 or s.shape[1] < 1:
        raise ValueError(f"scores must be (B, L+1), got {tuple(s.shape)}")
    return (s[:, :1] - s).mean(1)


def trapezoid_auc(scores) -> Tensor:
    """(B,) trapezoid area of (B, S) curves on x evenly spaced over [0, 1]: RISE's
    ``(sum(s) - (s_0 + s_n) / 2) / n`` with ``n = S - 1``."""
    s = as_tensor(scores, "scores")
    if s.dim() != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must be (B, S) with S >= 2, got {tuple(s.shape)}")
    return ((s[:, 1:] + s[:, :-1]) / 2).sum(1) / (s.shape[1] - 1)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def gaussian_kernel(kernel_size: int = 11, sigma: float = 5.0, kind: str = "gaussian",
                    dtype=torch.float64) -> Tensor:
    """1-D Gaussian kernel of odd length ``kernel_size``, normalised to sum 1.

    ``kind="gaussian"``: samples of ``exp(-x^2 / (2 sigma^2))``. ``kind="rise"``: RISE's ``gkern``,
    i.e. ``scipy.ndimage.gaussian_filter`` (truncate 4, mode ``"reflect"``) applied to a centred delta
    in a ``kernel_size`` array, whose tails fold back into the window.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if kind == "gaussian":
        x = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        return (k / k.sum()).to(dtype)
    if kind == "rise":
        radius = int(4.0 * sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        w = torch.exp(-0.5 * (x / sigma) ** 2)
        w = w / w.sum()
        n, c = kernel_size, kernel_size // 2
        k = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            for o, wo in zip(range(-radius, radius + 1), w.tolist()):
                j = (i + o) % (2 * n)  # scipy "reflect": d c b a | a b c d | d c b a
                j = 2 * n - 1 - j if j >= n else j
                if j == c:
                    k[i] += wo
        return k.to(dtype)
    raise ValueError(f"kind must be 'gaussian' or 'rise', got {kind!r}")


def gaussian_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0,
                  padding: str = "reflect", kind: str = "gaussian") -> Tensor:
    """Separable per-channel Gaussian blur of (B, C, H, W) images.

    ``padding``: ``"reflect"`` (default; no dark border), ``"replicate"`` or ``"zeros"`` (RISE's
    ``conv2d(padding=klen // 2)``, which darkens borders toward 0).
    """
    if padding not in ("reflect", "replicate", "zeros"):
        raise ValueError(f"padding must be 'reflect', 'replicate' or 'zeros', got {padding!r}")
    x = images
    b, c, h, w = x.shape
    k = gaussian_kernel(kernel_size, sigma, kind, dtype=x.dtype).to(x.device)
    p = kernel_size // 2
    if padding == "reflect" and (p >= h or p >= w):
        raise ValueError(f"reflect padding of {p} needs images larger than {p} pixels, got {h}x{w}")
    y = x.reshape(b * c, 1, h, w)
    mode = "constant" if padding == "zeros" else padding
    y = F.pad(y, (p, p, p, p), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def region_ids(height: int, width: int, patch_size: int) -> tuple[Tensor, int, int]:
    """Non-overlapping ``patch_size`` grid: (H*W,) region id of every pixel, number of regions, grid
    width. Like Quantus, an image whose size is not a multiple of the patch size is padded
    symmetrically (``floor`` of the padding before, ``ceil`` after), so border regions are partial;
    region ids are row-major over the grid."""
    ids, n, grid = grid_region_ids((height, width), patch_size)
    return ids, n, grid[-1]


def grid_region_ids(shape: Sequence[int], patch_size: int) -> tuple[Tensor, int, tuple[int, ...]]:
    """:func:`region_ids` for any number of spatial dimensions: (H*W,) ids of ``patch_size`` squares,
    or (D*H*W,) ids of ``patch_size`` cubes for a (D, H, W) volume (the same symmetric padding per
    axis, ids row-major over the grid); returns the ids, the number of regions and the grid shape."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")

    def pad_before(n: int) -> int:
        r = n % patch_size
        return 0 if r == 0 else (patch_size - r) // 2

    grid = tuple(-(-(n + pad_before(n)) // patch_size) for n in shape)
    ids = torch.zeros((), dtype=torch.long)
    for axis, (n, g) in enumerate(zip(shape, grid)):
        cell = (torch.arange(n) + pad_before(n)) // patch_size
        ids = ids[..., None] * g + cell.view((1,) * axis + (n,))
    return ids.flatten(), math.prod(grid), grid


def model_scores(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """Pick the target's score from (N, K) logits: ``logit``, ``softmax`` or ``log_softmax``."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return (N, classes) logits, got shape {tuple(logits.shape)}")
    check_target_range(targets, logits.shape[1])
    if score == "softmax":
        logits = logits.softmax(-1)
    elif score == "log_softmax":
        logits = logits.log_softmax(-1)
    elif score != "logit":
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return logits.gather(1, targets[:, None])[:, 0]


def check_perturbation_inputs(images, maps, targets, volumes: bool = False) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """The shared input check of every perturbation metric: finite float images (B, C, H, W), finite
    maps (B, H, W) of the same batch and size, targets None or (B,) integer class indices (their range
    is checked against the model's outputs in :func:`model_scores`). ``volumes=True`` also accepts
    (B, C, D, H, W) volumes with (B, D, H, W) maps."""
    x = check_images(images, volumes=volumes)
    m = check_maps(maps, volumes=volumes).to(x.device)
    if m.shape[0] != x.shape[0] or m.shape[1:] != x.shape[2:]:
        want = "(B, D, H, W)" if x.dim() == 5 else "(B, H, W)"
        raise ValueError(f"maps {tuple(m.shape)} must be {want} matching images {tuple(x.shape)}")
    return x, m, check_targets(targets, x.shape[0], x.device)


def _substrate(x: Tensor, removal, seeds: list[int], blur: dict, noise_range) -> Tensor:
    """The values that replace removed pixels, (B, C, H, W), computed from the original images;
    (B, C, D, H, W) for volumes, where a removal tensor has shape (), (C,) or (B, C) and ``"blur"`` is
    refused (the Gaussian blur here is 2-D)."""
    if x.dim() == 5:
        if removal == "blur":
            raise ValueError("removal 'blur' has no 3-D form here (a 2-D Gaussian blur); on volumes use "
                             "'min', 'zero', 'mean', 'noise', 'shuffle', a number or a (C,) / (B, C) tensor")
        if isinstance(removal, Tensor) and removal.dim() > 2:
            raise ValueError(f"a removal tensor for volumes must have shape (), (C,) or (B, C), got "
                             f"{tuple(removal.shape)}")
        flat = x.flatten(3)  # (B, C, D, H*W): every rule below works per channel over all voxels
        return _substrate(flat, removal, seeds, blur, noise_range).view_as(x)
    b, c, h, w = x.shape
    if isinstance(removal, Tensor):
        v = check_finite(removal.to(device=x.device, dtype=x.dtype), "removal values")
        shapes = {(c,): (1, c, 1, 1), (b, c): (b, c, 1, 1), (c, h, w): (1, c, h, w),
                  (b, c, h, w): (b, c, h, w), (): (1, 1, 1, 1)}
        if tuple(v.shape) not in shapes:
            raise ValueError(f"a removal tensor must have shape (), (C,), (B, C), (C, H, W) or "
                             f"(B, C, H, W) for images {tuple(x.shape)}, got {tuple(v.shape)}")
        return v.reshape(shapes[tuple(v.shape)]).expand(b, c, h, w)
    if isinstance(removal, (int, float)) and not isinstance(removal, bool):
        if not torch.isfinite(torch.tensor(float(removal))):
            raise ValueError(f"removal must be a finite number, got {removal!r}")
        return torch.full((1, 1, 1, 1), float(removal), dtype=x.dtype, device=x.device).expand_as(x)
    if removal == "zero":
        return torch.zeros((1, 1, 1, 1), dtype=x.dtype, device=x.device).expand_as(x)
    if removal == "min":
        return x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    if removal == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if removal == "blur":
        return gaussian_blur(x, **blur)
    if removal == "noise":
        out = torch.empty_like(x)
        for i, s in enumerate(seeds):
            g = torch.Generator().manual_seed(s)
            u = torch.rand((c, h, w), generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
            if noise_range is None:
                lo, hi = x[i].min(), x[i].max()
            else:
                lo, hi = float(noise_range[0]), float(noise_range[1])
            out[i] = lo + (hi - lo) * u
        return out
    raise ValueError(f"removal must be one of {REMOVALS}, a number or a tensor, got {removal!r}")


def _pixel_ranks(maps: Tensor, patch_size: int, order: str, restrict: Optional[str],
                 region_score: str, seeds: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel region rank (B, H*W), eligible regions per sample (B,), cumulative pixel counts of
    the ranked regions (B, R + 1)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if restrict not in (None, "positive", "negative"):
        raise ValueError(f"restrict must be None, 'positive' or 'negative', got {restrict!r}")
    if region_score not in ("sum", "mean"):
        raise ValueError(f"region_score must be 'sum' or 'mean', got {region_score!r}")
    b = maps.shape[0]
    dev = maps.device
    ids, nreg, _ = grid_region_ids(tuple(maps.shape[1:]), patch_size)
    ids = ids.to(dev)
    flat = maps.flatten(1)
    sizes = torch.zeros(nreg, dtype=torch.long, device=dev).index_add_(0, ids, torch.ones_like(ids))
    if patch_size == 1:
        scores = flat
    else:
        scores = torch.zeros(b, nreg, dtype=flat.dtype, device=dev).index_add_(1, ids, flat)
        if region_score == "mean":
            scores = scores / sizes.to(flat.dtype)
    if order == "random":
        ordr = torch.stack([torch.randperm(nreg, generator=torch.Generator().manual_seed(s))
                            for s in seeds]).to(dev) if b else torch.zeros(0, nreg, dtype=torch.long)
    else:
        ordr = stable_order(scores, descending=(order == "morf"))
    if restrict is None:
        eligible = torch.ones_like(scores, dtype=torch.bool)
    else:
        eligible = scores > 0 if restrict == "positive" else scores < 0
        # move eligible regions to the front, keeping their relative order
        first = stable_order((~eligible.gather(1, ordr)).to(torch.int8), descending=False)
        ordr = ordr.gather(1, first)
    n_eligible = eligible.sum(1)
    rank = torch.empty_like(ordr)
    rank.scatter_(1, ordr, torch.arange(nreg, device=dev).expand_as(ordr).contiguous())
    pixel_rank = rank.gather(1, ids.expand(b, -1))
    csum = torch.zeros(b, nreg + 1, dtype=torch.long, device=dev)
    csum[:, 1:] = sizes[ordr].cumsum(1)
    return pixel_rank, n_eligible, csum


def repeated_steps(k: Tensor, n_perturbed: Tensor, shuffle: bool) -> Tensor:
    """(B, S) whether copy (b, s) equals copy (b, s - 1) to the bit, so that its forward pass can be
    skipped: the same number of regions (the eligible ones ran out, e.g. Table I's "All" step or a map
    without negative relevance under ``restrict="negative"``); when shuffling, only where neither
    copy changes a pixel (a fresh permutation per step moves the pixels anew otherwise)."""
    same = torch.zeros_like(k, dtype=torch.bool)
    same[:, 1:] = k[:, 1:] == k[:, :-1]
    if shuffle:
        same[:, 1:] &= (n_perturbed[:, 1:] < 2) & (n_perturbed[:, :-1] < 2)
    return same


@torch.no_grad()
def _run(model: Callable, base: Tensor, fill: Optional[Tensor], pixel_rank: Tensor, k: Tensor,
         targets: Optional[Tensor], score: str, internal_batch_size: int,
         shuffle_seeds: Optional[list[int]], clean: Optional[Tensor], step0_is_clean: bool,
         repeated: Optional[Tensor] = None):
    """Evaluate every (sample, step) copy; returns scores (B, S), correct (B, S), targets,
    predicted-on-clean (or None).

    Copy (b, s) is ``base[b]`` with pixels of rank < k[b, s] replaced by ``fill[b]`` (or, when
    ``shuffle_seeds`` is given, with those pixels' values permuted among themselves). Where
    ``repeated`` (B, S) is true (:func:`repeated_steps`), copy (b, s) equals copy (b, s - 1) and takes
    its results without a forward pass.
    """
    b, c = base.shape[:2]
    spatial = tuple(base.shape[2:])
    s_steps = k.shape[1]
    dev = base.device
    scores = torch.empty(b, s_steps, dtype=torch.float64, device=dev)
    correct = torch.empty(b, s_steps, dtype=torch.bool, device=dev)
    done = torch.zeros(b, s_steps, dtype=torch.bool)
    predicted = None

    def forward(x: Tensor) -> Tensor:
        out = model(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError("the model must return a (N, classes) tensor of logits")
        return out

    if fill is not None:
        # keep expanded (stride-0) dimensions of size 1, so that building a chunk never materialises a
        # full-size copy of a constant or per-sample fill value; torch.where broadcasts it
        fill = fill[tuple(slice(0, 1) if st == 0 and n > 1 else slice(None)
                          for n, st in zip(fill.shape, fill.stride()))]

    def build(bs: Tensor, ss: Tensor) -> Tensor:
        kk = k[bs, ss]
        sel = pixel_rank[bs] < kk[:, None]
        if shuffle_seeds is None:
            f = fill if fill.shape[0] == 1 else fill[bs]
            return torch.where(sel.view(-1, 1, *spatial), f, base[bs])
        x = base[bs].clone()
        for i in range(bs.shape[0]):
            idx = torch.nonzero(sel[i]).flatten()
            if idx.numel() < 2:
                continue
            g = torch.Generator().manual_seed((shuffle_seeds[int(bs[i])] * 1_000_003 + int(ss[i])) % (2 ** 63))
            perm = torch.randperm(idx.numel(), generator=g).to(dev)
            xi = x[i].view(c, -1)
            xi[:, idx] = base[bs[i]].view(c, -1)[:, idx[perm]]
        return x

    def record(bs: Tensor, ss: Tensor, logits: Tensor) -> None:
        t = targets[bs]
        scores[bs, ss] = model_scores(logits, t, score).to(torch.float64)
        correct[bs, ss] = logits.argmax(1) == t
        done[bs.cpu(), ss.cpu()] = True

    chunk = internal_batch_size
    # 1. clean predictions: step 0 of a deletion curve is the clean image (no extra pass); an
    #    insertion curve needs them only when targets are None (then ``clean`` is given).
    if step0_is_clean or clean is not None:
        logits0 = []
        for start in range(0, b, chunk):
            bs = torch.arange(start, min(start + chunk, b), device=dev)
            x = build(bs, torch.zeros_like(bs)) if step0_is_clean else clean[bs]
            logits0.append(forward(x))
        logits0 = torch.cat(logits0) if logits0 else torch.zeros(0, 1, device=dev)
        predicted = logits0.argmax(1)
        if targets is None:
            targets = predicted
        if step0_is_clean:
            bs = torch.arange(b, device=dev)
            record(bs, torch.zeros_like(bs), logits0)
    if targets is None:
        raise ValueError("targets are required")  # pragma: no cover - guarded by the callers
    # 2. all remaining copies, in chunks; a repeated copy takes the results of the step before it.
    skip = torch.zeros_like(done) if repeated is None else repeated.cpu().clone()
    skip[:, 0] = False
    todo = torch.nonzero(~(done | skip)).to(dev)
    for start in range(0, todo.shape[0], chunk):
        bs, ss = todo[start:start + chunk, 0], todo[start:start + chunk, 1]
        record(bs, ss, forward(build(bs, ss)))
    for j in range(1, s_steps):
        rows = torch.nonzero(skip[:, j]).flatten().to(dev)
        if rows.numel():
            scores[rows, j] = scores[rows, j - 1]
            correct[rows, j] = correct[rows, j - 1]
    return scores, correct, targets, predicted


#: kept feature maps of the incremental evaluation, at most this many bytes per group of samples
INCREMENTAL_MEMORY = 2 * 1024 ** 3

#: incremental evaluation updates a feature map window by window where a step reaches at most this
#: fraction of it (``IncrementalForward(max_fraction=...)``): on the CPU, resnet50 at 224 px with 8 x 8
#: patches, 0.9 took 6.6 s of CPU time where 0.5 took 7.0 s (8 images, 15 steps, one thread)
INCREMENTAL_FRACTION = 0.9


def _step_boxes(pixel_rank: Tensor, previous: Tensor, current: Tensor, h: int, w: int):
    """Pixels that change between two steps, (B, H, W), and their bounding boxes (None: no change)."""
    sel = (pixel_rank >= previous[:, None]) & (pixel_rank < current[:, None])
    sel = sel.view(-1, h, w)
    rows, cols = sel.any(2), sel.any(1)
    any_row = rows.any(1)
    r0 = rows.to(torch.int8).argmax(1)
    r1 = h - rows.flip(1).to(torch.int8).argmax(1)
    c0 = cols.to(torch.int8).argmax(1)
    c1 = w - cols.flip(1).to(torch.int8).argmax(1)
    boxes = [None if not a else (int(q0), int(q1), int(p0), int(p1))
             for a, q0, q1, p0, p1 in zip(any_row.tolist(), r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist())]
    return sel, boxes


def incremental_by_default(device: Union[str, torch.device]) -> bool:
    """Whether ``incremental=None`` may choose incremental evaluation for images on ``device``: on the
    CPU only (elsewhere large batches are cheap, and incremental evaluation's many small operations
    per sample, node and step are not)."""
    return torch.device(device).type == "cpu"


def _incremental_evaluator(model, base: Tensor, pixel_rank: Tensor, k: Tensor, steps: Tensor,
                           incremental: Optional[bool], shuffle: bool):
    """An :class:`IncrementalForward` for this experiment, or None for plain batched passes.

    ``incremental=None`` (automatic) uses it when the images are on the CPU, the model is a traceable
    ``nn.Module``, a typical step changes at most a quarter of the image and at least one convolution
    gains; ``True`` insists (and raises when that is impossible), ``False`` never uses it. On other
    devices the automatic choice is the batched path: there the forward passes of large batches are
    cheap, while incremental evaluation launches a few small operations per sample, node and step."""
    if incremental is False or (incremental is None and not incremental_by_default(base.device)):
        return None
    model = eager_module(model)
    why = None
    if base.dim() == 5:
        why = "it recomputes windows of 2-D feature maps, and these are volumes"
    elif shuffle:
        why = "shuffling changes every selected pixel at every step"
    elif not isinstance(model, torch.nn.Module):
        why = "the model is not an nn.Module"
    if why is not None:
        if incremental:
            raise ValueError(f"incremental evaluation is impossible here: {why}")
        return None
    b, _, h, w = base.shape
    sample = slice(0, min(b, 16))  # the sizes of a typical step, from up to 16 samples
    sizes = []
    for j in range(1, steps.numel()):
        _, boxes = _step_boxes(pixel_rank[sample], k[sample, steps[j - 1]], k[sample, steps[j]], h, w)
        sizes += [(q[1] - q[0], q[3] - q[2]) for q in boxes if q is not None]
    if sizes:
        size_t = torch.tensor(sizes, dtype=torch.float64)
        box = tuple(int(v) for v in torch.quantile(size_t, 0.9, dim=0).ceil().tolist())
    else:
        box = (1, 1)
    if incremental is None and box[0] * box[1] > 0.25 * h * w:
        return None
    try:
        evaluator = IncrementalForward(model, box, max_fraction=INCREMENTAL_FRACTION)
        evaluator.reset(base[:1])
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
        if incremental:
            raise ValueError(f"incremental evaluation is impossible here: the model cannot be traced "
                             f"with torch.fx ({type(exc).__name__}: {exc})") from exc
        return None
    convs = [n for n in evaluator.windowed if n.op == "call_module"
             and isinstance(evaluator.modules[n.target], torch.nn.Conv2d)]
    if not convs:
        if incremental:
            raise ValueError(f"incremental evaluation is impossible here: a typical step changes a "
                             f"{box[0]} x {box[1]} pixel box, which reaches more than "
                             f"{INCREMENTAL_FRACTION:.0%} of every "
                             f"convolution's feature map (or the model has no windowed convolution)")
        return None
    return evaluator


@torch.no_grad()
def _run_incremental(evaluator, base: Tensor, fill: Tensor, pixel_rank: Tensor, k: Tensor, steps: Tensor,
                     targets: Optional[Tensor], score: str, internal_batch_size: int,
                     clean: Optional[Tensor], step0_is_clean: bool):
    """:func:`_run` with every sample's steps evaluated in ``steps`` order (non-decreasing ``k``), each
    step recomputing only what changed since the previous one (:mod:`.incremental`)."""
    b, _, h, w = base.shape
    dev = base.device
    scores = torch.empty(b, k.shape[1], dtype=torch.float64, device=dev)
    correct = torch.empty(b, k.shape[1], dtype=torch.bool, device=dev)
    predicted = None
    if clean is not None:
        predicted = forward_in_chunks(evaluator.graph_module, b, lambda idx: clean[idx], internal_batch_size,
                                      dev).argmax(1)
        if targets is None:
            targets = predicted
    elif step0_is_clean:
        predicted = torch.empty(b, dtype=torch.long, device=dev)
    per_sample = sum(v.numel() * v.element_size() for n, v in evaluator.values.items()
                     if n in evaluator.windowed) or 1
    group = max(1, min(internal_batch_size, INCREMENTAL_MEMORY // per_sample))
    out_targets = torch.empty(b, dtype=torch.long, device=dev)
    for g0 in range(0, b, group):
        gs = torch.arange(g0, min(g0 + group, b), device=dev)
        rank = pixel_rank[gs]
        f = fill if fill.shape[0] == 1 else fill[gs]
        kk = k[gs]
        state = torch.where((rank < kk[:, steps[0]][:, None]).view(-1, 1, h, w), f, base[gs])
        logits = evaluator.reset(state)
        for j in range(steps.numel()):
            s = steps[j]
            if j > 0:
                sel, boxes = _step_boxes(rank, kk[:, steps[j - 1]], kk[:, s], h, w)
                if any(q is not None for q in boxes):
                    state = torch.where(sel[:, None], f, state)
                    logits = evaluator.step(state, boxes)
            if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != gs.shape[0]:
                raise ValueError("the model must return a (N, classes) tensor of logits")
            if j == 0:  # steps[0] has k = 0: the clean image of a deletion curve
                if step0_is_clean and clean is None:
                    predicted[gs] = logits.argmax(1)
                t = targets[gs] if targets is not None else logits.argmax(1)
                out_targets[gs] = t
            scores[gs, s] = model_scores(logits, t, score).to(torch.float64)
            correct[gs, s] = logits.argmax(1) == t
    if targets is None and not step0_is_clean:
        raise ValueError("targets are required")  # pragma: no cover - guarded by the callers
    return scores, correct, out_targets, predicted


def _curves(model, x, m, targets, *, counts, order, restrict, patch_size, region_score, seeds,
            base, fill, shuffle, score, internal_batch_size, mode, clean=None,
            incremental: Optional[bool] = None) -> PerturbationCurves:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    chunk = chunk_size(internal_batch_size, x)
    counts_t = torch.as_tensor(counts, dtype=torch.long)  # checked by the callers
    if counts_t[0] != 0:
        counts_t = torch.cat([torch.zeros(1, dtype=torch.long), counts_t])
    pixel_rank, n_eligible, csum = _pixel_ranks(m, patch_size, order, restrict, region_score, seeds)
    k = torch.minimum(counts_t.to(x.device)[None, :], n_eligible[:, None])  # (B, S) regions
    n_perturbed = csum.gather(1, k)
    steps = torch.sort(counts_t, stable=True).indices  # k is non-decreasing along this order
    evaluator = _incremental_evaluator(model, base, pixel_rank, k, steps, incremental, shuffle)
    if evaluator is not None:
        group = chunk_size(internal_batch_size, x, cpu_max=DEFAULT_CHUNK)  # per-step overhead: larger groups
        scores, correct, targets, predicted = _run_incremental(
            evaluator, base, fill, pixel_rank, k, steps, targets, score, group, clean,
            mode == "deletion")
    else:
        scores, correct, targets, predicted = _run(
            model, base, fill, pixel_rank, k, targets, score, chunk,
            seeds if shuffle else None, clean, mode == "deletion",
            repeated_steps(k, n_perturbed, shuffle))
    return PerturbationCurves(counts_t, n_perturbed, scores, correct, targets, predicted, score, mode)


# --------------------------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------------------------


def region_perturbation(model: Callable, images, maps, targets=None, *, counts: Sequence[int],
                        order: str = "morf", removal: Union[str, float, Tensor] = "min",
                        patch_size: int = 1, restrict: Optional[str] = None,
                        region_score: str = "sum", score: str = "logit",
                        seed: Union[int, Sequence[int]] = 0, blur_kernel_size: int = 11,
                        blur_sigma: float = 5.0, blur_padding: str = "reflect",
                        noise_range: Optional[tuple[float, float]] = None,
                        internal_batch_size: Optional[int] = None,
                        incremental: Optional[bool] = None) -> PerturbationCurves:
    """Region perturbation curves (Samek et al. 2017 [Samek2017-Perturbation]; Nam, Choi and Lee [Nam-RAP-Journal] Table I; Nam et al. 2020 [Nam2020-RAP] Fig. 7).

    ``images`` (B, C, H, W), ``maps`` (B, H, W), ``targets`` (B,) class indices (None: the class
    predicted on the clean image); or (B, C, D, H, W) volumes with (B, D, H, W) maps, where the regions
    are ``patch_size`` cubes of voxels (removal ``"blur"`` has no 3-D form there). The map is cut into a non-overlapping ``patch_size`` grid (1 =
    single pixels, as in [Nam2020-RAP] and [Nam-RAP-Journal]), regions are scored by the ``region_score`` (sum or mean)
    of the map and ranked: ``order="morf"`` descending, ``"lerf"`` ascending (ties: smaller row-major
    region index first), ``"random"`` a seeded permutation. ``restrict="positive"`` only perturbs
    regions with positive score (Nam, Choi and Lee [Nam-RAP-Journal] "positive removal", with MoRF), ``"negative"`` only
    negative ones (Nam, Choi and Lee [Nam-RAP-Journal] "negative removal", with LeRF: most negative first); the number perturbed
    is capped by the eligible count (``n_perturbed``), so ``counts=[..., H*W]`` gives Table I's "All".

    ``counts``: regions perturbed at each evaluated step, strictly increasing non-negative ints (0 is
    prepended if missing; unsorted or repeated counts are refused: step 0 must be the clean image
    for AOPC); the perturbation is cumulative (step k contains the first ``counts[k]`` regions).
    Images and maps must be finite; targets must lie in ``[0, classes)``. Removal values, all computed from
    the original image: ``"min"`` (the image minimum over all channels: Nam, Choi and Lee [Nam-RAP-Journal] and Quantus
    "black"), ``"zero"`` (Nam et al. 2020 [Nam2020-RAP]), ``"mean"`` (per-channel image mean), ``"blur"`` (Gaussian blur,
    ``blur_*``), ``"noise"`` (uniform noise in ``noise_range``, default the image's [min, max], drawn
    once per image from its seed), a number, or a tensor of shape (C,), (B, C), (C, H, W) or
    (B, C, H, W) (e.g. a data-set mean); ``"shuffle"`` permutes the positions of the selected pixels
    among themselves, all channels of a pixel moving together (Nam, Choi and Lee [Nam-RAP-Journal], in parentheses), with a
    fresh permutation per step drawn from ``(seed, step)``.

    ``seed``: an int (every sample uses it) or one int per sample; results do not depend on
    ``internal_batch_size`` or on how samples are batched. ``score``: ``"logit"`` (Nam, Choi and Lee's [Nam-RAP-Journal]
    prediction score), ``"softmax"`` or ``"log_softmax"``. Accuracy is top-1 == target.

    ``incremental``: evaluate each sample's steps one after another and recompute only the part of
    every feature map that the step's change reaches (:mod:`relprop.metrics.incremental`; the same
    curves up to float round-off). ``None`` (default) does so on the CPU when the model is a
    traceable ``nn.Module`` and a typical step changes a small region (``patch_size > 1``, one
    region per step); ``False`` pushes all copies through the model in chunks of
    ``internal_batch_size`` (the automatic choice on a GPU).
    """
    x, m, targets = check_perturbation_inputs(images, maps, targets, volumes=True)
    counts = check_counts(counts)
    seeds = as_seeds(seed, x.shape[0])
    shuffle = removal == "shuffle" if isinstance(removal, str) else False
    blur = dict(kernel_size=blur_kernel_size, sigma=blur_sigma, padding=blur_padding)
    fill = None if shuffle else _substrate(x, removal, seeds, blur, noise_range)
    return _curves(model, x, m, targets, counts=counts, order=order, restrict=restrict,
                   patch_size=patch_size, region_score=region_score, seeds=seeds, base=x, fill=fill,
                   shuffle=shuffle, score=score, internal_batch_size=internal_batch_size,
                   mode="deletion", incremental=incremental)


def curve_records(curves: PerturbationCurves, scalar: Tensor) -> Records:
    """Per pair: ``{"scores": curve, "correct": top-1 == target per step}`` with ``scalar`` (B,)."""
    scores, s = as_floats(curves.scores), as_floats(scalar)
    correct = curves.correct.to(torch.int64).cpu().tolist()
    return [(s[i], {"scores": scores[i], "correct": correct[i]}) for i in range(len(s))]


def _aopc_records(curves: PerturbationCurves) -> Records:
    return curve_records(curves, curves.aopc())


def _auc_records(curves: PerturbationCurves) -> Records:
    return curve_records(curves, curves.auc())


def _removal_axis(options: dict, side: int) -> tuple[list, str]:
    """Regions removed at each step of :func:`region_perturbation` (step 0 prepended)."""
    counts = [int(c) for c in options["counts"]]
    if not counts or counts[0] != 0:
        counts = [0] + counts
    unit = "pixels" if int(options.get("patch_size", 1)) == 1 else "regions"
    return counts, f"{unit} removed"


#: the runner's AOPC: the whole curve stored, per-pair seeds, Samek's 100 steps unless given
_AOPC = dict(call=region_perturbation, inputs=("model", "images", "maps", "targets"), seeded=True,
             defaults={"counts": tuple(range(0, 101))}, result=_aopc_records, x_axis=_removal_axis)


@register("aopc_morf", volumes=True, higher_is_better=True,
          source="Samek et al. 2017 [Samek2017-Perturbation] AOPC; MoRF removal of [Nam-RAP-Journal] Table I",
          category="perturbation", fixed={"order": "morf"}, **_AOPC)
def aopc_morf(model, images, maps, targets=None, **kwargs) -> Tensor:
    """(B,) AOPC of a MoRF :func:`region_perturbation` curve (keyword arguments passed on; Samek's
    setup: ``patch_size=9, counts=range(101), removal="noise"``). Higher is better."""
    kwargs.setdefault("counts", range(0, 101))
    return region_perturbation(model, images, maps, targets, order="morf", **kwargs).aopc()


@register("aopc_lerf", volumes=True, higher_is_better=False,
          source="Samek et al. 2017 [Samek2017-Perturbation] AOPC; LeRF removal of [Nam2020-RAP] Fig. 7",
          category="perturbation", fixed={"order": "lerf"}, **_AOPC)
def aopc_lerf(model, images, maps, targets=None, **kwargs) -> Tensor:
    """(B,) AOPC of a LeRF :func:`region_perturbation` curve. Lower is better."""
    kwargs.setdefault("counts", range(0, 101))
    return region_perturbation(model, images, maps, targets, order="lerf", **kwargs).aopc()


def _insertion_axis(options: dict, side: int) -> tuple[list, str]:
    """Fraction of the regions inserted at each step of :func:`blurred_insertion` (step 0 prepended)."""
    fr = [float(f) for f in options.get("fractions", PAPER_002_INSERTION_FRACTIONS)]
    _, nreg, _ = region_ids(side, side, int(options.get("patch_size", 1)))
    counts = [int(math.floor(f * nreg + 0.5)) for f in fr]
    if not counts or counts[0] != 0:
        counts = [0] + counts  # step 0 (the blurred image) is prepended by the metric
    return [c / nreg for c in counts], "fraction inserted"


@register("blurred_insertion", higher_is_better=True,
          source="[Nam-Hedge] Fig. 9 (MoRF insertion into a blurred image)",
          category="perturbation", inputs=("model", "images", "maps", "targets"), result=_auc_records,
          x_axis=_insertion_axis)
def blurred_insertion(model: Callable, images, maps, targets=None, *,
                      fractions: Sequence[float] = PAPER_002_INSERTION_FRACTIONS,
                      patch_size: int = 1, kernel_size: int = 11, sigma: float = 5.0,
                      padding: str = "reflect", score: str = "logit",
                      internal_batch_size: Optional[int] = None,
                      incremental: Optional[bool] = None) -> PerturbationCurves:
    """MoRF insertion into a Gaussian-blurred image (Nam et al. [Nam-Hedge], Fig. 9).

    Step 0 is the blurred image; step i pastes back the original values of the top
    ``round(fractions[i] * H * W)`` pixels (MoRF order of the signed map; with ``patch_size > 1``
    the fraction is of regions). Nam et al. [Nam-Hedge] report accuracy (``.accuracy()``), 1%..20% in 1% steps;
    it gives no blur parameters, so the default is RISE's size (11, sigma 5) with reflect padding.
    Higher is better. ``targets=None`` uses the class predicted on the clean image (B extra passes).
    ``incremental``: as in :func:`region_perturbation`.
    """
    x, m, targets = check_perturbation_inputs(images, maps, targets)
    f = torch.as_tensor(list(fractions), dtype=torch.float64)
    if f.dim() != 1 or f.numel() == 0 or not ((f >= 0) & (f <= 1)).all():
        raise ValueError(f"fractions must lie in [0, 1], got {list(fractions)}")
    if (f[1:] <= f[:-1]).any():
        raise ValueError(f"fractions must be strictly increasing (cumulative steps), got {list(fractions)}")
    _, nreg, _ = region_ids(x.shape[2], x.shape[3], patch_size)
    counts = torch.floor(f * nreg + 0.5).long().tolist()
    blurred = gaussian_blur(x, kernel_size, sigma, padding)
    return _curves(model, x, m, targets, counts=counts, order="morf", restrict=None,
                   patch_size=patch_size, region_score="sum", seeds=[0] * x.shape[0], base=blurred,
                   fill=x, shuffle=False, score=score, internal_batch_size=internal_batch_size,
                   mode="insertion", clean=x if targets is None else None, incremental=incremental)


def _rise_counts(n_pixels: int, step: int) -> list[int]:
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    n = -(-n_pixels // step)
    return [min(i * step, n_pixels) for i in range(n + 1)]


def rise_deletion(model: Callable, images, maps, targets=None, *, step: int = 224,
                  substrate: Union[str, float, Tensor] = "zero", score: str = "softmax",
                  internal_batch_size: Optional[int] = None, incremental: Optional[bool] = None) -> PerturbationCurves:
    """RISE deletion curve (Petsiuk et al. 2018 [Petsiuk2018-RISE], ``CausalMetric('del')``): pixels in descending map
    order are set to the substrate (default 0, i.e. the mean colour in normalised space), ``step`` per
    step, ``n = ceil(H*W / step)`` steps, ``n + 1`` scores including the clean image and the end
    state. Score: softmax of the class predicted on the clean image (``targets=None``). AUC via
    ``.auc()``; lower is better. Ties: row-major (RISE's flipped argsort puts later pixels first).
    ``incremental``: as in :func:`region_perturbation`."""
    x, m, targets = check_perturbation_inputs(images, maps, targets)
    counts = _rise_counts(x.shape[2] * x.shape[3], step)
    fill = _substrate(x, substrate, [0] * x.shape[0], {}, None)
    return _curves(model, x, m, targets, counts=counts, order="morf", restrict=None, patch_size=1,
                   region_score="sum", seeds=[0] * x.shape[0], base=x, fill=fill, shuffle=False,
                   score=score, internal_batch_size=internal_batch_size, mode="deletion",
                   incremental=incremental)


def rise_insertion(model: Callable, images, maps, targets=None, *, step: int = 224,
                   substrate: Optional[Tensor] = None, score: str = "softmax",
                   internal_batch_size: Optional[int] = None, incremental: Optional[bool] = None) -> PerturbationCurves:
    """RISE insertion curve (``CausalMetric('ins')``): starts from the substrate (default: RISE's
    blur, ``gkern(11, 5)`` with zero padding) and inserts original pixels in descending map order,
    ``step`` per step. Score: softmax of the class predicted on the clean image. AUC via
    ``.auc()``; higher is better. ``incremental``: as in :func:`region_perturbation`."""
    x, m, targets = check_perturbation_inputs(images, maps, targets)
    counts = _rise_counts(x.shape[2] * x.shape[3], step)
    if substrate is None:
        base = gaussian_blur(x, 11, 5.0, padding="zeros", kind="rise")
    else:
        base = _substrate(x, substrate, [0] * x.shape[0], {}, None)
    return _curves(model, x, m, targets, counts=counts, order="morf", restrict=None, patch_size=1,
                   region_score="sum", seeds=[0] * x.shape[0], base=base, fill=x, shuffle=False,
                   score=score, internal_batch_size=internal_batch_size, mode="insertion",
                   clean=x if targets is None else None, incremental=incremental)


def _rise_axis(kind: str) -> Callable[[dict, int], tuple[list, str]]:
    def axis(options: dict, side: int) -> tuple[list, str]:
        n = side * side
        return [c / n for c in _rise_counts(n, int(options.get("step", 224)))], f"fraction {kind}"
    return axis


register("rise_deletion_auc", higher_is_better=False,
         source="RISE (Petsiuk et al. 2018 [Petsiuk2018-RISE]) evaluation.py, deletion AUC", category="perturbation",
         fn=lambda model, images, maps, targets=None, **kw: rise_deletion(
             model, images, maps, targets, **kw).auc(),
         call=rise_deletion, inputs=("model", "images", "maps", "targets"), result=_auc_records,
         x_axis=_rise_axis("deleted"))
register("rise_insertion_auc", higher_is_better=True,
         source="RISE (Petsiuk et al. 2018 [Petsiuk2018-RISE]) evaluation.py, insertion AUC", category="perturbation",
         fn=lambda model, images, maps, targets=None, **kw: rise_insertion(
             model, images, maps, targets, **kw).auc(),
         call=rise_insertion, inputs=("model", "images", "maps", "targets"), result=_auc_records,
         x_axis=_rise_axis("inserted"))


#: the default chunk on the CPU holds about this many pixels (8 images of 224 x 224): per image, forward
#: passes of larger chunks are slower there (resnet50: 50 ms at 8, 77 ms at 64; vgg16 146 vs 221 ms)
CPU_CHUNK_PIXELS = 8 * 224 * 224
#: the default chunk on other devices
DEFAULT_CHUNK = 64
#: the largest default chunk on the CPU: forward passes of small images in chunks of 16 beat chunks of
#: 64 there (64 x 64 shapes models: 1,740 vs 1,280 images/s for shapes_vgg, 1,420 vs 970 for shapes_resnet)
CPU_MAX_CHUNK = 16


def chunk_size(internal_batch_size: Optional[int], images: Tensor, cpu_max: int = CPU_MAX_CHUNK) -> int:
    """``internal_batch_size``, checked; ``None``: the default for ``images`` (B, C, H, W) (or
    (B, C, D, H, W), counting voxels): on the CPU :data:`CPU_CHUNK_PIXELS` pixels' worth of images (1 to ``cpu_max``), elsewhere
    :data:`DEFAULT_CHUNK`."""
    if internal_batch_size is None:
        if images.device.type != "cpu":
            return DEFAULT_CHUNK
        return max(1, min(cpu_max, CPU_CHUNK_PIXELS // max(1, math.prod(images.shape[2:]))))
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}")
    return internal_batch_size


@torch.no_grad()
def forward_in_chunks(model: Callable, n: int, build: Callable[[Tensor], Tensor],
                      internal_batch_size: int, device) -> Tensor:
    """Logits of ``n`` inputs built by ``build(indices)`` in chunks of ``internal_batch_size`` (a value
    checked by :func:`chunk_size`)."""
    outs = []
    for start in range(0, n, internal_batch_size):
        idx = torch.arange(start, min(start + internal_batch_size, n), device=device)
        x = build(idx)
        out = model(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError("the model must return a (N, classes) tensor of logits")
        outs.append(out)
    if not outs:
        return torch.zeros(0, 0, device=device)
    return torch.cat(outs)
