"""Model parameter randomisation sanity check (Adebayo et al. 2018 [Adebayo2018-Sanity]; Nam et al. [Nam-Hedge], Sec. 5.2.2, Fig. 6).

Layers are randomised cumulatively from the output towards the input ("cascading", Nam et al. [Nam-Hedge]:
"gradual initialization ... from end to beginning layer") in *execution* order (recorded with
forward hooks, not ``named_modules`` definition order as in Quantus ``MPRT``), each with its own
seed (``seed + execution index``; Quantus reuses one seed, so same-shaped layers get identical
weights). After each step the maps are recomputed and compared with the original maps per sample:
Spearman rank correlation of ``|R|`` and of ``R``, and SSIM of per-sample min-max normalised maps.
An explanation that passes the check changes (similarities fall) as layers are randomised.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_maps
from .registry import Records, as_floats, register

__all__ = ["spearman", "ssim", "execution_order", "RandomisationResult", "cascading_randomisation"]


def _average_ranks(x: Tensor) -> Tensor:
    """(B, N) ranks (0-based) with ties given their average rank (scipy ``rankdata('average')`` - 1)."""
    b, n = x.shape
    sv, order = torch.sort(x, dim=1, stable=True)
    start = torch.ones_like(sv, dtype=torch.bool)
    start[:, 1:] = sv[:, 1:] != sv[:, :-1]
    gid = start.cumsum(1) - 1 + (torch.arange(b, device=x.device) * n)[:, None]
    pos = torch.arange(n, device=x.device, dtype=torch.float64).expand(b, n)
    sums = torch.zeros(b * n, dtype=torch.float64, device=x.device).index_add_(0, gid.flatten(), pos.flatten())
    cnt = torch.zeros(b * n, dtype=torch.float64, device=x.device).index_add_(
        0, gid.flatten(), torch.ones(b * n, dtype=torch.float64, device=x.device))
    avg = (sums / cnt.clamp(min=1))[gid]
    ranks = torch.empty_like(avg)
    ranks.scatter_(1, order, avg)
    return ranks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    out = (a * b).sum(1) / den
    out[den == 0] = float("nan")
    return out


def spearman(a, b) -> Tensor:
    """(B,) Spearman rank correlation between maps ``a`` and ``b`` (B, H, W) (average ranks for ties,
    as scipy); NaN when either map is constant."""
    a, b = check_maps(a, "a"), check_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps a {tuple(a.shape)} and b {tuple(b.shape)} differ in shape")
    return _pearson(_average_ranks(a.flatten(1)), _average_ranks(b.flatten(1)))


def ssim(a, b, *, win_size: int = 7, data_range: Optional[float] = 1.0, normalise: bool = True) -> Tensor:
    """(B,) mean SSIM between maps ``a`` and ``b`` (B, H, W), as ``skimage.metrics.structural_similarity``
    with its defaults (7x7 uniform window, sample covariance, K1 0.01, K2 0.03, mean over the
    interior where the window fits).

    ``normalise=True`` (default) min-max normalises every map to [0, 1] first (per sample, unlike
    Quantus's data-set-wide normalisation) with ``data_range=1``; a constant map then gives NaN.
    ``data_range=None`` uses the joint value range of each pair (Quantus).
    """
    a, b = check_maps(a, "a").to(torch.float64), check_maps(b, "b").to(torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps a {tuple(a.shape)} and b {tuple(b.shape)} differ in shape")
    bsz, h, w = a.shape
    if win_size % 2 == 0 or win_size > min(h, w):
        raise ValueError(f"win_size must be odd and at most the map size {h}x{w}, got {win_size}")
    bad = torch.zeros(bsz, dtype=torch.bool, device=a.device)
    if normalise:
        def mm(x: Tensor) -> tuple[Tensor, Tensor]:
            lo = x.flatten(1).amin(1)[:, None, None]
            span = x.flatten(1).amax(1)[:, None, None] - lo
            return (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), span.flatten() == 0
        a, ca = mm(a)
        b, cb = mm(b)
        bad = ca | cb
    if data_range is None:
        rng = torch.maximum(a.flatten(1).amax(1), b.flatten(1).amax(1)) - torch.minimum(
            a.flatten(1).amin(1), b.flatten(1).amin(1))
        rng = rng[:, None, None]
    else:
        rng = torch.full((bsz, 1, 1), float(data_range), dtype=a.dtype, device=a.device)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

    def filt(x: Tensor) -> Tensor:
        return F.avg_pool2d(x[:, None], win_size, stride=1)[:, 0]

    npx = win_size * win_size
    cov = npx / (npx - 1)
    ux, uy = filt(a), filt(b)
    vx = cov * (filt(a * a) - ux * ux)
    vy = cov * (filt(b * b) - uy * uy)
    vxy = cov * (filt(a * b) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(1)
    out[bad] = float("nan")
    return out


def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def execution_order(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the modules owning parameters, in the order they first run in a forward pass."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[str] = []
    hooks = []

    def hook(mod, _inp, _out):
        n = names[mod]
        if n not in seen:
            seen.append(n)

    for n, m in model.named_modules():
        if _own_params(m):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _randomise(module: nn.Module, seed: int, init: str, std: float) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if init == "default":
            if not hasattr(module, "reset_parameters"):
                raise ValueError(f"{type(module).__name__} has no reset_parameters(); use init='normal'")
            module.reset_parameters()
        else:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


@dataclass(frozen=True)
class RandomisationResult:
    """``layers``: randomised layer names in cascade order; ``spearman_abs``, ``spearman``, ``ssim``:
    (B, L) similarities of the maps after randomising layers[0..l] with the original maps;
    ``maps``: the maps after each step (L, B, H, W) when requested."""

    layers: list[str]
    spearman_abs: Tensor
    spearman: Tensor
    ssim: Tensor
    original: Tensor
    maps: Optional[Tensor] = field(default=None)


def _similarity_records(res: RandomisationResult) -> Records:
    """Per pair: the similarities per layer; the scalar is the rank correlation of |R| after the last layer."""
    sa, sg, ss = as_floats(res.spearman_abs), as_floats(res.spearman), as_floats(res.ssim)
    out = []
    for i in range(len(sa)):
        last = sa[i][-1] if sa[i] else math.nan
        out.append((last, {"layers": list(res.layers), "spearman_abs": sa[i], "spearman": sg[i],
                           "ssim": ss[i]}))
    return out


@register("cascading_randomisation", higher_is_better=False,
          source="[Nam-Hedge] Sec. 5.2.2, Fig. 6; Adebayo et al. 2018 [Adebayo2018-Sanity]", category="sanity",
          inputs=("model", "images", "targets", "explain"), fixed={"return_maps": False},
          result=_similarity_records)
def cascading_randomisation(model: nn.Module, images: Tensor, targets,
                            explain: Callable[[nn.Module, Tensor, Tensor], Tensor], *,
                            order: str = "top_down", independent: bool = False,
                            layers: Optional[Sequence[str]] = None, seed: int = 0,
                            init: str = "default", std: float = 0.01, ssim_win_size: int = 7,
                            return_maps: bool = False) -> RandomisationResult:
    """Cascading (or independent) parameter randomisation; similarities per layer and sample.

    ``explain(model, images, targets)`` must return (B, H, W) maps (e.g. ``lambda m, x, t:
    relprop.explain(m, x, t, method=...).sum(1)``). The model is deep-copied and left untouched.
    ``order``: ``"top_down"`` (output to input, the paper) or ``"bottom_up"``; ``independent=True``
    restores the original weights before each layer. ``layers`` restricts the set (names from
    :func:`execution_order`). ``init``: ``"default"`` (the module's ``reset_parameters()`` - for
    BatchNorm that sets weight 1, bias 0 and resets the running statistics) or ``"normal"``
    (``N(0, std)`` for every own parameter, running statistics untouched). Layer ``i`` in execution
    order uses seed ``seed + i``. ``ssim_win_size``: the SSIM window (odd, at most the map size).
    Lower similarity after randomisation is the desired outcome.
    """
    if order not in ("top_down", "bottom_up"):
        raise ValueError(f"order must be 'top_down' or 'bottom_up', got {order!r}")
    if init not in ("default", "normal"):
        raise ValueError(f"init must be 'default' or 'normal', got {init!r}")
    work = copy.deepcopy(model)
    exec_names = execution_order(work, images)
    index = {n: i for i, n in enumerate(exec_names)}
    if layers is not None:
        unknown = [n for n in layers if n not in index]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; known: {exec_names}")
        chosen = sorted(layers, key=index.__getitem__)
    else:
        chosen = list(exec_names)
    if order == "top_down":
        chosen = chosen[::-1]
    mods = dict(work.named_modules())
    original = check_maps(explain(work, images, targets)).detach()
    h, w = original.shape[1:]
    if ssim_win_size < 1 or ssim_win_size % 2 == 0 or ssim_win_size > min(h, w):
        raise ValueError(f"ssim_win_size must be odd and at most the map size {h}x{w}, got {ssim_win_size}; "
                         "pass a smaller ssim_win_size")
    state = copy.deepcopy(work.state_dict())
    sa, sg, ss, all_maps = [], [], [], []
    for name in chosen:
        if independent:
            work.load_state_dict(state)
        _randomise(mods[name], seed + index[name], init, std)
        maps = check_maps(explain(work, images, targets)).detach()
        sa.append(spearman(original.abs(), maps.abs()))
        sg.append(spearman(original, maps))
        ss.append(ssim(original, maps, win_size=ssim_win_size))
        if return_maps:
            all_maps.append(maps)

    def stack(v: list) -> Tensor:
        return torch.stack(v, 1) if v else torch.zeros(original.shape[0], 0)

    return RandomisationResult(chosen, stack(sa), stack(sg), stack(ss), original,
                               torch.stack(all_maps) if return_maps and all_maps else None)
