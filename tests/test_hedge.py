"""Gradient hedging (Attribution Equilibrium), checked against the closed forms of
``/work/shared/notes/official_methods.md`` (section 3).


Every reference is written independently of the code under test: each affine layer becomes its dense
per-sample matrix ``M`` (output x input), obtained by differentiating the *torch module* itself, with
bias ``b`` = the module's output at ``x = 0``; the rules are then written in plain matrix form (or
explicit loops), and whole-network references walk a small ``nn.Sequential`` layer by layer (max
pooling via the autograd gradient of the pool, i.e. winner-take-all). Nothing in the references uses
``Affine.apply`` / ``Affine.transpose`` or any rule of :mod:`relprop`.

All computations are float64.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import relprop
from relprop.ops import Affine
from relprop.rules.hedge import Hedge

from dense_reference import dense
from closed_forms import DT, assert_close, module_of, per_sample, post_relu, psi, sd, seeded, signed


# -- 5. Gradient hedging (notes 3.2) ---------------------------------------------------------------------
def ref_hedge_terms(M: torch.Tensor, x: torch.Tensor, r: torch.Tensor, gamma: float, one_by_one: bool):
    """C (before Psi), C_Psi, A, U of 3.2 on one flattened sample."""
    Ma = M.abs()
    xp = x.clamp(min=0)
    t = r.clamp(min=0) / r.clamp(min=0).sum()
    o = r.clamp(max=0) / r.clamp(max=0).sum().abs()
    weighted = (t + o) if one_by_one else (gamma * t + o)
    c = xp * (Ma.T @ sd(weighted, Ma @ xp))
    c_psi = c if one_by_one else psi(c, c.sum() - t.sum())
    active = (x > 0).to(DT)
    dead = 1.0 - active
    a = active * (Ma.T @ sd(t, Ma @ active))
    u = dead * (Ma.T @ sd(o, Ma @ dead))
    return c, c_psi, a, u


def _hedge_terms(rule_kwargs, module, x, r):
    layer = Affine.from_module(module, "h")
    z = layer.apply(x, layer.weight, layer.bias)
    return Hedge(**rule_kwargs)(layer, x, z, r, True)


@pytest.mark.parametrize("gamma", [1.0, 1.5, 2.0])
def test_hedge_3x3_terms(gamma):
    module = module_of(lambda: nn.Conv2d(3, 4, 3, padding=1), 9)
    in_shape = (3, 6, 6)
    M, _ = dense(module, in_shape)
    x = post_relu((2, *in_shape), 25)
    assert (x == 0).any()
    with torch.no_grad():
        r = signed(tuple(module(x).shape), 26)
    # every output sees an active and a dead input (no relevance is lost at this layer)
    conn = (M != 0).to(DT)
    for s in range(2):
        assert bool(((conn @ (x[s].flatten() > 0).to(DT)) > 0).all())
        assert bool(((conn @ (x[s].flatten() <= 0).to(DT)) > 0).all())
    only = dict(use_c=False, use_a=False, use_u=False, use_psi=False)
    c = _hedge_terms({**only, "gamma": gamma, "use_c": True}, module, x, r)
    c_psi = _hedge_terms({**only, "gamma": gamma, "use_c": True, "use_psi": True}, module, x, r)
    a = _hedge_terms({**only, "gamma": gamma, "use_a": True}, module, x, r)
    u = _hedge_terms({**only, "gamma": gamma, "use_u": True}, module, x, r)
    total = _hedge_terms({"gamma": gamma}, module, x, r)
    for s in range(2):
        ref = ref_hedge_terms(M, x[s].flatten(), r[s].flatten(), gamma, False)
        for got, expected in zip((c, c_psi, a, u), ref):
            assert_close(got[s].flatten(), expected)
    ones = torch.ones(2, dtype=DT)
    assert_close(per_sample(c), (gamma - 1) * ones)
    assert_close(per_sample(c_psi), (gamma - 2) * ones)
    assert_close(per_sample(a), ones)
    assert_close(per_sample(u), -ones)
    assert_close(per_sample(total), (gamma - 1 - 1 + 1 - 1) * ones, atol=1e-12)
    assert_close(total, c_psi + a + u)
    # A lives on active units, U on dead ones
    assert bool((a[x == 0] == 0).all()) and bool((u[x > 0] == 0).all())


def test_hedge_1x1_terms_sum_to_zero_without_gamma():
    module = module_of(lambda: nn.Conv2d(5, 3, 1), 10)
    in_shape = (5, 4, 4)
    M, _ = dense(module, in_shape)
    x = post_relu((2, *in_shape), 27)
    x[:, 0] = 0.0  # every pixel has a dead unit ...
    x[:, 1] = x[:, 1].abs() + 0.1  # ... and an active one, so no relevance is lost
    r = signed((2, 3, 4, 4), 28)
    outs = {gamma: _hedge_terms({"gamma": gamma}, module, x, r) for gamma in (1.0, 1.5, 2.0)}
    assert_close(outs[1.0], outs[2.0], rtol=0.0, atol=0.0)
    assert_close(outs[1.5], outs[2.0], rtol=0.0, atol=0.0)
    assert_close(per_sample(outs[2.0]), torch.zeros(2, dtype=DT), atol=1e-12)
    only = dict(use_c=False, use_a=False, use_u=False, use_psi=True)
    c = _hedge_terms({**only, "use_c": True}, module, x, r)
    a = _hedge_terms({**only, "use_a": True}, module, x, r)
    u = _hedge_terms({**only, "use_u": True}, module, x, r)
    for s in range(2):
        rc, rc_psi, ra, ru = ref_hedge_terms(M, x[s].flatten(), r[s].flatten(), 2.0, True)
        assert_close(rc_psi, rc)  # no Psi on 1x1
        assert_close(c[s].flatten(), rc)
        assert_close(a[s].flatten(), ra)
        assert_close(u[s].flatten(), ru)
    assert_close(per_sample(c), torch.zeros(2, dtype=DT), atol=1e-12)
    assert_close(per_sample(a), torch.ones(2, dtype=DT))
    assert_close(per_sample(u), -torch.ones(2, dtype=DT))


@pytest.fixture(scope="module")
def vgg11():
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None).to(DT).eval()


@pytest.fixture(scope="module")
def vgg_input():
    return torch.randn(2, 3, 64, 64, generator=seeded(29), dtype=DT)


def test_hedge_vgg_sums_to_gamma_minus_two(vgg11, vgg_input):
    t = torch.tensor([3, 7])
    for gamma in (1.0, 1.5, 2.0):
        n = 2 if gamma == 1.5 else 1  # one batch of two: the sums are per sample
        rel = relprop.explain(vgg11, vgg_input[:n], target=t[:n], method="hedge", gamma=gamma)
        assert rel.shape == vgg_input[:n].shape and torch.isfinite(rel).all()
        assert_close(per_sample(rel), torch.full((n,), gamma - 2, dtype=DT), rtol=0.0, atol=1e-8)
    for gamma in (0.5, 3.0):
        with pytest.raises(ValueError):
            relprop.explain(vgg11, vgg_input, target=t, method="hedge", gamma=gamma)


def test_hedge_vgg_initial_map_at_inner_layer(vgg11, vgg_input):
    t = torch.tensor([3, 7])
    layer = "features.10"
    rel, rec = relprop.Explainer(vgg11, "hedge", layer=layer, gamma=1.5).explain(
        vgg_input, target=t, record=[layer])
    assert_close(per_sample(rel), torch.full((2,), -0.5, dtype=DT), rtol=0.0, atol=1e-8)
    # reference: plain autograd on the model itself, activation captured by a forward hook
    captured = {}
    handle = vgg11.features[10].register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        logits = vgg11(vgg_input)
    finally:
        handle.remove()
    act = captured["a"]
    grad, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), act)
    r0 = act.detach() * grad.mean(dim=(2, 3), keepdim=True)
    r0 = r0 / per_sample(r0).abs().view(-1, 1, 1, 1)
    assert_close(rec[layer], r0, rtol=1e-9)
    assert_close(per_sample(rec[layer]).abs(), torch.ones(2, dtype=DT))


def test_hedge_vgg_default_layer_is_last_relu(vgg11, vgg_input):
    """Official entry point (3.1): VGG's initial map is at the last ReLU before the final max pool
    (``features[29]`` of VGG-16, ``features[19]`` of VGG-11); relprop's docstring says the same."""
    x, t = vgg_input[:1], torch.tensor([3])
    default = relprop.explain(vgg11, x, target=t, method="hedge")
    explicit = relprop.explain(vgg11, x, target=t, method="hedge", layer="features.19")
    assert_close(default, explicit)
