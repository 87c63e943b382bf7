"""LRP rules for affine layers, checked against an independent dense-matrix reference (float64).

Every layer (linear or convolution of any dimension, with stride, padding, dilation, groups and
depthwise groups, with and without bias) is turned into its dense matrix ``M`` (output x input,
per sample) by differentiating the *torch module* itself, and its bias vector ``b`` is the
module's output at ``x = 0``. The rules are then written in plain matrix form on ``M``, ``x``,
``b`` and ``R``; nothing in the reference comes from :mod:`relprop` (neither ``Affine.apply`` nor
``Affine.transpose`` nor the rule code), so a wrong map, transpose, bias convention or
stabiliser in the code under test shows up as a mismatch.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

from relprop.ops import Affine
from relprop.rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, WSquare, ZBox, ZPlus, ZRule

from dense_reference import dense  # noqa: E402

DT = torch.float64
BATCH = 2
TOL = {"rtol": 1e-10, "atol": 1e-10}
#: default stabiliser of every rule except Epsilon (and zennit's)
STAB = 1e-6


# -- layers --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    name: str
    make: Callable[[bool], nn.Module]
    in_shape: tuple[int, ...]


LAYERS = [
    LayerCase("linear", lambda bias: nn.Linear(7, 5, bias=bias), (7,)),
    LayerCase("conv1d-s2-p1-g2", lambda bias: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias),
              (4, 9)),
    LayerCase("conv1d-depthwise-d2-p2", lambda bias: nn.Conv1d(4, 8, 3, padding=2, dilation=2, groups=4,
                                                                bias=bias), (4, 8)),
    LayerCase("conv2d-s2-p1-g2", lambda bias: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias),
              (4, 5, 5)),
    LayerCase("conv2d-aniso-s12-p10-d21",
              lambda bias: nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), bias=bias),
              (4, 5, 5)),
    LayerCase("conv2d-patches-k2", lambda bias: nn.Conv2d(3, 5, 2, stride=2, bias=bias), (3, 6, 4)),
    LayerCase("conv2d-patches-k3-uncovered", lambda bias: nn.Conv2d(2, 4, (3, 2), stride=(3, 2), bias=bias),
              (2, 7, 5)),
    LayerCase("conv2d-depthwise-p1", lambda bias: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=bias), (4, 5, 5)),
    LayerCase("conv2d-same-d2", lambda bias: nn.Conv2d(4, 6, 3, padding="same", dilation=2, bias=bias),
              (4, 5, 5)),
    LayerCase("conv3d-s2-p1", lambda bias: nn.Conv3d(2, 4, 3, stride=2, padding=1, bias=bias), (2, 4, 4, 4)),
    LayerCase("conv3d-d2-p1-g2", lambda bias: nn.Conv3d(2, 4, 2, padding=1, dilation=2, groups=2, bias=bias),
              (2, 4, 4, 4)),
    LayerCase("conv3d-depthwise-s2", lambda bias: nn.Conv3d(2, 4, 3, stride=(2, 1, 2), padding=(1, 0, 1),
                                                             groups=2, bias=bias), (2, 4, 4, 4)),
]
LAYER_BY_NAME = {case.name: case for case in LAYERS}
LAYER_PARAMS = [pytest.param(case.name, bias, id=f"{case.name}-{'bias' if bias else 'nobias'}")
                for case in LAYERS for bias in (True, False)]


def _seed(*parts: object) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(repr(parts))) % (2 ** 31)


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """float64 copy with N(0, 0.5^2) parameters (deterministic, independent of the global RNG)."""
    module = module.to(DT)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=DT))
    return module


@functools.lru_cache(maxsize=None)
def layer_setup(name: str, bias: bool):
    """Module (float64, random parameters), its dense matrix, bias vector and connectivity."""
    case = LAYER_BY_NAME[name]
    module = _randomize(case.make(bias), _seed(name, bias)).eval()
    m, b = dense(module, case.in_shape)
    ones = copy.deepcopy(module)
    with torch.no_grad():
        ones.weight.fill_(1.0)
    ones.bias = None
    conn, _ = dense(ones, case.in_shape)
    assert set(conn.unique().tolist()) <= {0.0, 1.0}
    return module, m, b, conn


# -- the reference rules, in matrix form on one sample ---------------------------------------------
# M: (O, I), x: (I,), b: (O,), R: (O,). Contribution matrices are indexed [j, i] (output, input);
# R_in_i = sum_j C[j, i] * s_j is ``C.T @ s``.
def stab(d: torch.Tensor, eps: float) -> torch.Tensor:
    """``d + eps * sgn(d)`` with ``sgn(0) = +1``."""
    sgn = torch.where(d >= 0, torch.ones_like(d), -torch.ones_like(d))
    return d + eps * sgn


def ref_epsilon(eps: float):
    def rule(M, x, b, R, conn, low, high):
        z = M @ x + b
        C = M * x[None, :]
        if eps == 0:  # LRP-0 with 0/0 := 0
            nz = z != 0
            s = torch.where(nz, R / torch.where(nz, z, torch.ones_like(z)), torch.zeros_like(z))
        else:
            s = R / stab(z, eps)
        return C.T @ s
    return rule


def ref_alpha_beta(alpha: float, beta: float):
    def rule(M, x, b, R, conn, low, high):
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        Mp, Mn = M.clamp(min=0), M.clamp(max=0)
        bp, bn = b.clamp(min=0), b.clamp(max=0)
        P = Mp * xp[None, :] + Mn * xn[None, :]   # positive contributions
        N = Mn * xp[None, :] + Mp * xn[None, :]   # negative contributions
        sp = R / stab(P.sum(1) + bp, STAB)
        sn = R / stab(N.sum(1) + bn, STAB)
        return alpha * (P.T @ sp) - beta * (N.T @ sn)
    return rule


def ref_gamma(g: float):
    def rule(M, x, b, R, conn, low, high):
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        Mp, Mn = M.clamp(min=0), M.clamp(max=0)
        bp, bn = b.clamp(min=0), b.clamp(max=0)
        z = M @ x + b
        up = (M + g * Mp) * xp[None, :] + (M + g * Mn) * xn[None, :]
        down = (M + g * Mn) * xp[None, :] + (M + g * Mp) * xn[None, :]
        s_up = R * (z > 0).to(DT) / stab(up.sum(1) + b + g * bp, STAB)
        s_down = R * (z < 0).to(DT) / stab(down.sum(1) + b + g * bn, STAB)
        return up.T @ s_up + down.T @ s_down
    return rule


def ref_flat():
    def rule(M, x, b, R, conn, low, high):
        return conn.T @ (R / stab(conn.sum(1), STAB))
    return rule


def ref_wsquare(zero_bias: bool):
    def rule(M, x, b, R, conn, low, high):
        C = M ** 2
        d = C.sum(1) + (0.0 if zero_bias else b ** 2)
        return C.T @ (R / stab(d, STAB))
    return rule


def ref_zbox():
    def rule(M, x, b, R, conn, low, high):
        Mp, Mn = M.clamp(min=0), M.clamp(max=0)
        bp, bn = b.clamp(min=0), b.clamp(max=0)
        z = M @ x + b
        C = M * x[None, :] - Mp * low[None, :] - Mn * high[None, :]
        d = z - (Mp @ low + bp) - (Mn @ high + bn)
        return C.T @ (R / stab(d, STAB))
    return rule


def reference(ref_rule, module, m, b, conn, x, r, low=None, high=None) -> torch.Tensor:
    out = []
    for k in range(x.shape[0]):
        lo = None if low is None else low[k].flatten()
        hi = None if high is None else high[k].flatten()
        out.append(ref_rule(m, x[k].flatten(), b, r[k].flatten(), conn, lo, hi).view(x.shape[1:]))
    return torch.stack(out)


# -- rule cases ------------------------------------------------------------------------------------
def _channel_shape(in_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, in_shape[0]) + (1,) * (len(in_shape) - 1)


def _per_channel_bounds(in_shape, seed):
    g = torch.Generator().manual_seed(seed)
    shape = _channel_shape(in_shape)
    low = -(0.25 + torch.rand(shape, generator=g, dtype=DT))
    high = 0.75 + torch.rand(shape, generator=g, dtype=DT)
    return low, high


@dataclass(frozen=True)
class RuleCase:
    name: str
    make: Callable  # (in_shape, seed) -> (rule, ref_rule, bounds) ; bounds: None | "sample" | (low, high)


def _fixed(rule, ref, bounds=None):
    return lambda in_shape, seed: (rule, ref, bounds)


def _zbox_channel(in_shape, seed):
    low, high = _per_channel_bounds(in_shape, seed)
    return ZBox(low, high), ref_zbox(), (low, high)


RULES = [
    RuleCase("zrule", _fixed(ZRule(), ref_epsilon(0.0))),
    RuleCase("epsilon0.25", _fixed(Epsilon(0.25), ref_epsilon(0.25))),
    RuleCase("epsilon1e-6", _fixed(Epsilon(1e-6), ref_epsilon(1e-6))),
    RuleCase("epsilon0.1", _fixed(Epsilon(0.1), ref_epsilon(0.1))),  # not exact in float32
    RuleCase("alphabeta1-0", _fixed(AlphaBeta(1, 0), ref_alpha_beta(1.0, 0.0))),
    RuleCase("zplus", _fixed(ZPlus(), ref_alpha_beta(1.0, 0.0))),
    RuleCase("alphabeta2-1", _fixed(AlphaBeta(2, 1), ref_alpha_beta(2.0, 1.0))),
    RuleCase("alphabeta3-2", _fixed(AlphaBeta(3, 2), ref_alpha_beta(3.0, 2.0))),
    RuleCase("gamma0.25", _fixed(Gamma(0.25), ref_gamma(0.25))),
    RuleCase("gamma1", _fixed(Gamma(1.0), ref_gamma(1.0))),
    RuleCase("flat", _fixed(Flat(), ref_flat())),
    RuleCase("wsquare", _fixed(WSquare(), ref_wsquare(False))),
    RuleCase("wsquare-zero-bias", _fixed(WSquare(zero_bias=True), ref_wsquare(True))),
    RuleCase("zbox-fixed", _fixed(ZBox(-1.5, 2.0), ref_zbox(), (-1.5, 2.0))),
    RuleCase("zbox-per-sample", _fixed(ZBox(None, None), ref_zbox(), "sample")),
    RuleCase("zbox-per-channel", _zbox_channel),
]
RULE_BY_NAME = {case.name: case for case in RULES}

#: input kind -> the ``nonnegative`` flags checked with it (signed inputs: only the general path)
INPUT_FLAGS = {"signed": (False,), "nonneg": (False, True)}


def make_inputs(in_shape, out_shape, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((BATCH, *in_shape), generator=g, dtype=DT)
    if kind == "nonneg":
        x = x.clamp(min=0)  # exact zeros: also exercises all-zero receptive fields (z = 0)
    r = torch.randn((BATCH, *out_shape), generator=g, dtype=DT)
    return x, r


def prepare(layer_name, bias, rule_name, kind):
    """Everything a test needs: module, dense matrix, rule, reference rule, x, r, bounds."""
    module, m, b, conn = layer_setup(layer_name, bias)
    in_shape = LAYER_BY_NAME[layer_name].in_shape
    seed = _seed(layer_name, bias, rule_name, kind)
    rule, ref_rule, bounds = RULE_BY_NAME[rule_name].make(in_shape, seed)
    with torch.no_grad():
        out_shape = tuple(module(torch.zeros((1, *in_shape), dtype=DT)).shape[1:])
    x, r = make_inputs(in_shape, out_shape, kind, seed)
    low = high = None
    if bounds == "sample":
        dims = tuple(range(1, x.dim()))
        view = (-1,) + (1,) * (x.dim() - 1)
        low = x.amin(dim=dims).view(view).expand_as(x)
        high = x.amax(dim=dims).view(view).expand_as(x)
    elif bounds is not None:
        x, low, high = inside_box(x, bounds, kind, seed)
    return module, m, b, conn, rule, ref_rule, x, r, low, high


def inside_box(x, bounds, kind, seed):
    """Inputs strictly inside ``[low, high]`` (the z^B rule assumes ``low <= x <= high``).

    Values are kept a margin away from the bounds: an input sitting exactly on the bound that its
    weight pulls towards makes ``z^B_j = 0`` for outputs that see only it, and the rule is then
    ill-conditioned (both sides are rounding noise over the stabiliser)."""
    lo, hi = (torch.as_tensor(v, dtype=DT) for v in bounds)
    g = torch.Generator().manual_seed(seed + 1)
    u = 0.05 + 0.9 * torch.rand(x.shape, generator=g, dtype=DT)
    x = lo + (hi - lo) * u
    if kind == "nonneg":
        x = x.clamp(min=0)  # all bounds used here have low < 0 < high, so 0 is inside too
    return x, lo.expand_as(x), hi.expand_as(x)


def run_rule(rule, module, x, r, nonnegative, layer=None):
    layer = layer if layer is not None else Affine.from_module(module, "layer")
    z = layer.apply(x, layer.weight, layer.bias)
    return rule(layer, x, z, r, nonnegative), z


# -- the main check --------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny float64 ops: one intra-op thread is much faster (and immune to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rule_tolerance(rule_name: str) -> dict:
    """``TOL``, except for z^B with per-sample bounds: there the sample's minimum and maximum lie
    exactly on the bounds, so an output that sees only the minimum through a positive weight (a
    corner of a dilated or padded convolution) has ``z^B_j = 0`` exactly and ``s_j = R_j / 1e-6``.
    The code computes ``x (W^T s) - l (W+^T s) - h (W-^T s)``, a difference of terms of size
    ``|s| ~ 1e6``, so its result carries ~1e-10 of rounding noise where the reference is exactly 0."""
    return {"rtol": 1e-10, "atol": 1e-8} if rule_name == "zbox-per-sample" else TOL


@pytest.mark.parametrize("kind", list(INPUT_FLAGS))
@pytest.mark.parametrize("rule_name", [c.name for c in RULES])
@pytest.mark.parametrize("layer_name,bias", LAYER_PARAMS)
def test_rule_matches_dense_reference(layer_name, bias, rule_name, kind):
    """Signed inputs with ``nonnegative=False``; non-negative inputs with both the general path
    (``nonnegative=False``) and the fast path that skips the ``x-`` branch (``nonnegative=True``)."""
    module, m, b, conn, rule, ref_rule, x, r, low, high = prepare(layer_name, bias, rule_name, kind)
    x0, r0 = x.clone(), r.clone()
    expected = reference(ref_rule, module, m, b, conn, x, r, low, high)

    for nonnegative in INPUT_FLAGS[kind]:
        got, z = run_rule(rule, module, x, r, nonnegative)
        # the layer output itself is the dense affine map
        torch.testing.assert_close(z, torch.stack([(m @ xk.flatten() + b).view(z.shape[1:]) for xk in x]),
                                   **TOL)
        assert got.shape == x.shape and got.dtype == DT
        torch.testing.assert_close(got, expected, **rule_tolerance(rule_name),
                                   msg=lambda msg: f"nonnegative={nonnegative}: {msg}")
        # inputs untouched (rules use in-place ops internally)
        assert torch.equal(x, x0) and torch.equal(r, r0)


def test_nonneg_inputs_hit_zero_outputs():
    """The non-negative inputs do produce exact ``z = 0`` somewhere (so 0/0 := 0 is exercised)."""
    module, m, b, conn, rule, ref_rule, x, r, low, high = prepare("conv1d-depthwise-d2-p2", False, "zrule", "nonneg")
    z = module(x)
    assert (z == 0).any()


EXACT_ZERO_RULES = [c.name for c in RULES if not c.name.startswith("zbox")]


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("rule_name", EXACT_ZERO_RULES + ["zbox-wide"])
def test_exact_zero_output_with_nonzero_contributions(rule_name, with_bias):
    """Output 0 is exactly 0 although its contributions are not (dyadic numbers, so no rounding):
    the conventions at ``z = 0`` matter here (LRP-0's ``0/0 := 0`` and no relevance at all,
    ``sgn(0) = +1`` in the stabiliser, Gamma's strict ``z > 0`` / ``z < 0`` masks)."""
    module = nn.Linear(4, 3, bias=with_bias).to(DT)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, -0.5], [2.0, 1.0, -1.0, 0.25], [-1.0, 0.0, 0.5, 1.0]]))
        if with_bias:
            module.bias.copy_(torch.tensor([0.5, 0.25, -0.5]))
            x = torch.tensor([[1.0, 1.5, 2.0, 2.0], [-1.0, 0.5, 1.0, -1.0]], dtype=DT)
        else:
            x = torch.tensor([[1.0, 1.0, 2.0, 2.0], [-1.0, 0.5, 1.0, -2.0]], dtype=DT)
    r = torch.tensor([[1.0, -0.75, 0.5], [-2.0, 0.5, 1.25]], dtype=DT)
    with torch.no_grad():
        assert (module(x)[:, 0] == 0).all()
    m, b = dense(module, (4,))
    conn = torch.ones_like(m)
    if rule_name == "zbox-wide":
        rule, ref_rule, low, high = ZBox(-4.0, 4.0), ref_zbox(), torch.full_like(x, -4.0), torch.full_like(x, 4.0)
    else:
        (rule, ref_rule, _), low, high = RULE_BY_NAME[rule_name].make((4,), 0), None, None
    got, _ = run_rule(rule, module, x, r, False)
    torch.testing.assert_close(got, reference(ref_rule, module, m, b, conn, x, r, low, high), **TOL)


@pytest.mark.parametrize("layer_name,bias", LAYER_PARAMS)
def test_shared_layer_cache_across_rules(layer_name, bias):
    """One ``Affine`` reused for every rule (twice over): cached derived tensors must not collide."""
    module, *_ = layer_setup(layer_name, bias)
    layer = Affine.from_module(module, "layer")
    for _round in range(2):
        for case in RULES:
            _, m, b, conn, rule, ref_rule, x, r, low, high = prepare(layer_name, bias, case.name, "signed")
            got, _ = run_rule(rule, module, x, r, False, layer=layer)
            torch.testing.assert_close(got, reference(ref_rule, module, m, b, conn, x, r, low, high),
                                       **rule_tolerance(case.name))


# -- conservation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["signed", "nonneg"])
@pytest.mark.parametrize("layer_name", [c.name for c in LAYERS])
def test_zrule_conserves_without_bias(layer_name, kind):
    module, *_ = layer_setup(layer_name, False)
    in_shape = LAYER_BY_NAME[layer_name].in_shape
    with torch.no_grad():
        out_shape = tuple(module(torch.zeros((1, *in_shape), dtype=DT)).shape[1:])
    x, r = make_inputs(in_shape, out_shape, kind, _seed("conserve", layer_name, kind))
    for nonnegative in ([False, True] if kind == "nonneg" else [False]):
        r_in, z = run_rule(ZRule(), module, x, r, nonnegative)
        dims = tuple(range(1, x.dim()))
        expected = torch.where(z != 0, r, torch.zeros_like(r)).sum(dim=dims)
        torch.testing.assert_close(r_in.sum(dim=dims), expected, **TOL)


@pytest.mark.parametrize("layer_name", [c.name for c in LAYERS])
def test_flat_and_wsquare_conserve_up_to_stabilizer(layer_name):
    """Flat and WSquare(zero_bias) conserve ``sum_j R_j d_j / (d_j + 1e-6)`` with ``d_j`` the number
    of inputs of output ``j`` (resp. the sum of its squared weights); Flat has ``d_j >= 1``."""
    module, m, b, conn = layer_setup(layer_name, True)
    in_shape = LAYER_BY_NAME[layer_name].in_shape
    with torch.no_grad():
        out_shape = tuple(module(torch.zeros((1, *in_shape), dtype=DT)).shape[1:])
    x, r = make_inputs(in_shape, out_shape, "signed", _seed("conserve-flat", layer_name))
    dims = tuple(range(1, x.dim()))
    r_in, _ = run_rule(Flat(), module, x, r, False)
    torch.testing.assert_close(r_in.sum(dim=dims), r.sum(dim=dims), rtol=2e-6, atol=2e-6)
    d = (m ** 2).sum(1)
    r_in, _ = run_rule(WSquare(zero_bias=True), module, x, r, False)
    torch.testing.assert_close(r_in.sum(dim=dims), (r.flatten(1) * d / (d + STAB)).sum(1), **TOL)


# -- parameter validation and Pass ----------------------------------------------------------------
@pytest.mark.parametrize("alpha,beta", [(1, 1), (2, 0), (1.5, 0), (0.5, 0), (3, 1), (0, -1), (-1, -2), (2, -1)])
def test_alpha_beta_rejects_invalid(alpha, beta):
    with pytest.raises(ValueError):
        AlphaBeta(alpha, beta)


@pytest.mark.parametrize("alpha,beta", [(1, 0), (2, 1), (1.5, 0.5), (3, 2)])
def test_alpha_beta_accepts_valid(alpha, beta):
    rule = AlphaBeta(alpha, beta)
    assert (rule.alpha, rule.beta) == (alpha, beta)


def test_pass_rule():
    module = _randomize(nn.Linear(5, 5), 3)
    x, r = make_inputs((5,), (5,), "signed", 4)
    got, _ = run_rule(Pass(), module, x, r, False)
    torch.testing.assert_close(got, r, rtol=0, atol=0)
    module = _randomize(nn.Linear(5, 4), 3)
    x, r = make_inputs((5,), (4,), "signed", 4)
    with pytest.raises(ValueError):
        run_rule(Pass(), module, x, r, False)


# -- batch-norm folding ----------------------------------------------------------------------------
BN_CASES = {
    "linear-bn1d": (lambda bias: nn.Linear(7, 5, bias=bias), nn.BatchNorm1d, (7,)),
    "conv1d-g2-bn1d": (lambda bias: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias),
                       nn.BatchNorm1d, (4, 9)),
    "conv2d-g2-bn2d": (lambda bias: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias),
                       nn.BatchNorm2d, (4, 5, 5)),
    "conv2d-depthwise-bn2d": (lambda bias: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=bias),
                              nn.BatchNorm2d, (4, 5, 5)),
    "conv3d-bn3d": (lambda bias: nn.Conv3d(2, 4, 3, stride=2, padding=1, bias=bias), nn.BatchNorm3d, (2, 4, 4, 4)),
}
BN_PARAMS = [pytest.param(name, bias, affine, id=f"{name}-{'bias' if bias else 'nobias'}-"
                          f"{'affine' if affine else 'noaffine'}")
             for name in BN_CASES for bias in (True, False) for affine in (True, False)]


def make_bn_layer(name, bias, affine):
    make_conv, bn_cls, in_shape = BN_CASES[name]
    conv = _randomize(make_conv(bias), _seed("bn-conv", name, bias)).eval()
    bn = bn_cls(conv.weight.shape[0], affine=affine).to(DT).eval()
    g = torch.Generator().manual_seed(_seed("bn", name, bias, affine))
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g, dtype=DT))
        bn.running_var.copy_(0.25 + torch.rand(bn.running_var.shape, generator=g, dtype=DT))
        if affine:
            bn.weight.copy_(torch.randn(bn.weight.shape, generator=g, dtype=DT))
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g, dtype=DT))
    layer = Affine.from_module(conv, "conv")
    layer.bn = bn
    return conv, bn, layer, in_shape


def _bn_apply_matches(conv, bn, layer, x):
    with torch.no_grad():
        expected = bn(conv(x))
    got = layer.apply(x, layer.weight, layer.bias)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    return got


@pytest.mark.parametrize("name,bias,affine", BN_PARAMS)
def test_bn_folding_and_cache_invalidation(name, bias, affine):
    conv, bn, layer, in_shape = make_bn_layer(name, bias, affine)
    x = torch.randn((BATCH, *in_shape), generator=torch.Generator().manual_seed(1), dtype=DT)
    assert layer.bias is not None  # BN always adds a bias
    before = _bn_apply_matches(conv, bn, layer, x)

    with torch.no_grad():
        conv.weight.mul_(2)
    after = _bn_apply_matches(conv, bn, layer, x)
    assert not torch.allclose(before, after)

    # the other sources of the folded parameters invalidate the cache as well
    with torch.no_grad():
        bn.running_var.mul_(3)
        bn.running_mean.add_(0.5)
    _bn_apply_matches(conv, bn, layer, x)
    if affine:
        with torch.no_grad():
            bn.weight.mul_(-1.5)
            bn.bias.add_(1.0)
        _bn_apply_matches(conv, bn, layer, x)
    if bias:
        with torch.no_grad():
            conv.bias.sub_(0.75)
        _bn_apply_matches(conv, bn, layer, x)


BN_RULES = ["zrule", "epsilon0.25", "alphabeta2-1", "gamma0.25", "wsquare", "flat", "zbox-fixed"]


@pytest.mark.parametrize("name,bias,affine", [p for p in BN_PARAMS if p.values[2]])
def test_rules_on_bn_folded_layer(name, bias, affine):
    """Rules on ``conv + BN`` match the reference on the dense matrix of ``bn(conv(.))``, also after an
    in-place change of the conv weight (the derived cached tensors, e.g. ``w+``, must follow)."""
    conv, bn, layer, in_shape = make_bn_layer(name, bias, affine)
    composite = nn.Sequential(conv, bn).eval()
    with torch.no_grad():
        out_shape = tuple(composite(torch.zeros((1, *in_shape), dtype=DT)).shape[1:])
    ones = copy.deepcopy(conv)
    with torch.no_grad():
        ones.weight.fill_(1.0)
    ones.bias = None
    conn, _ = dense(ones, in_shape)
    for _round in range(2):
        m, b = dense(composite, in_shape)
        for rule_name in BN_RULES:
            rule, ref_rule, bounds = RULE_BY_NAME[rule_name].make(in_shape, 0)
            x, r = make_inputs(in_shape, out_shape, "signed", _seed("bn-rule", name, rule_name))
            low = high = None
            if bounds is not None:
                x, low, high = inside_box(x, bounds, "signed", _seed("bn-box", name))
            got, _ = run_rule(rule, conv, x, r, False, layer=layer)
            torch.testing.assert_close(got, reference(ref_rule, composite, m, b, conn, x, r, low, high), **TOL,
                                       msg=lambda msg: f"{rule_name}, round {_round}: {msg}")
        with torch.no_grad():
            conv.weight.mul_(2)
            conv.weight[0].neg_()
