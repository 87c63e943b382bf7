"""SGLRP, CLRP and (contrastive) excitation backprop, checked against the closed forms of
``/work/shared/notes/official_methods.md`` (sections 4, 5).


Every reference is written independently of the code under test: each affine layer becomes its dense
per-sample matrix ``M`` (output x input), obtained by differentiating the *torch module* itself, with
bias ``b`` = the module's output at ``x = 0``; the rules are then written in plain matrix form (or
explicit loops), and whole-network references walk a small ``nn.Sequential`` layer by layer (max
pooling via the autograd gradient of the pool, i.e. winner-take-all). Nothing in the references uses
``Affine.apply`` / ``Affine.transpose`` or any rule of :mod:`relprop`.

All computations are float64.
"""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from torch import nn

import relprop
from relprop.attribution.contrastive import _deep_taylor, softmax_gradient
from relprop.propagate import propagator_for

from dense_reference import dense
from closed_forms import DT, EPS, assert_close, module_of, per_sample, signed


# -- small CNN and the whole-network dense reference for the contrastive methods ------------------------
def small_cnn(bias: bool = True, seed: int = 11) -> nn.Sequential:
    return module_of(lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias), nn.ReLU(), nn.Flatten(),
        nn.Linear(24, 10, bias=bias), nn.ReLU(), nn.Linear(10, 5, bias=bias)), seed)


SMALL_SHAPE = (3, 8, 8)
LAST = "8"  # the output layer's node name


def ref_zplus(bias: str = "none", negate: bool = False):
    """alpha1beta0 / z+: ``R_i = sum_j (x+_i w+_ij + x-_i w-_ij) R_j / (Z_j + 1e-9)`` with
    ``Z_j`` the sum of those contributions plus nothing / ``b+`` / the full signed ``b``."""
    def rule(M, b, a, r, image):
        if negate:
            M, b = -M, -b
        P = M.clamp(min=0) * a.clamp(min=0)[None, :] + M.clamp(max=0) * a.clamp(max=0)[None, :]
        z = P.sum(1)
        if bias == "plus":
            z = z + b.clamp(min=0)
        elif bias == "full":
            z = z + b
        return P.T @ (r / (z + EPS))
    return rule


def ref_zbox(low=None, high=None):
    """z^B without bias; per-image min / max of the input unless bounds are given; eps sign(z)."""
    def rule(M, b, a, r, image):
        lo = float(image.min()) if low is None else low
        hi = float(image.max()) if high is None else high
        Q = M * a[None, :] - lo * M.clamp(min=0) - hi * M.clamp(max=0)
        z = Q.sum(1)
        z = z + EPS * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
        return Q.T @ (r / z)
    return rule


_DENSE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def dense_layers(model: nn.Sequential) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{index: (M, b)}`` of the affine layers of a Sequential taking ``SMALL_SHAPE`` inputs."""
    if model not in _DENSE:
        shapes = [SMALL_SHAPE]
        with torch.no_grad():
            probe = torch.zeros(1, *SMALL_SHAPE, dtype=DT)
            for m in model:
                probe = m(probe)
                shapes.append(tuple(probe.shape[1:]))
        _DENSE[model] = {k: dense(m, shapes[k]) for k, m in enumerate(model)
                         if isinstance(m, (nn.Conv2d, nn.Linear))}
    return _DENSE[model]


def ref_backward(model: nn.Sequential, x: torch.Tensor, r_out: torch.Tensor, first, hidden, top):
    """Walk the Sequential backwards per sample with dense matrices; pools by their gradient."""
    results = []
    mats = dense_layers(model)
    affine = sorted(mats)
    for s in range(x.shape[0]):
        acts = [x[s:s + 1]]
        with torch.no_grad():
            for m in model:
                acts.append(m(acts[-1]))
        r = r_out[s:s + 1]
        for k in reversed(range(len(model))):
            m, a = model[k], acts[k]
            if k in mats:
                rule = first if k == affine[0] else top if k == affine[-1] else hidden
                M, b = mats[k]
                r = rule(M, b, a.flatten(), r.flatten(), x[s]).view_as(a)
            elif isinstance(m, nn.MaxPool2d):
                leaf = a.clone().requires_grad_(True)
                r, = torch.autograd.grad(m(leaf), leaf, r)
            else:  # ReLU, Flatten: relevance passes unchanged
                r = r.reshape(a.shape)
        results.append(r[0])
    return torch.stack(results)


def deep_taylor_ref(model, x, r_out, low=None, high=None, negate_top=False):
    return ref_backward(model, x, r_out, ref_zbox(low, high), ref_zplus(), ref_zplus(negate=negate_top))


@pytest.fixture(scope="module")
def cnn():
    model = small_cnn()
    x = signed((2, *SMALL_SHAPE), 31)
    with torch.no_grad():
        logits = model(x)
    return model, x, logits


# -- 6. SGLRP (notes 4) ------------------------------------------------------------------------------------
def test_softmax_gradient_is_eq10():
    logits = signed((3, 6), 32) * 3
    t = torch.tensor([0, 4, 5])
    g = softmax_gradient(logits, t)
    for s in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: z.softmax(0)[t[s]], logits[s])
        assert_close(g[s], jac)
    assert_close(g.sum(1), torch.zeros(3, dtype=DT), atol=1e-15)


def _sharpened(model: nn.Module, x: torch.Tensor, factor: float) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` with its last linear layer scaled by ``factor`` (extreme softmax
    probabilities), and its logits for ``x``."""
    big = copy.deepcopy(model)
    last = [m for m in big.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
        return big, big(x)


def test_sglrp_of_an_unlikely_class_keeps_normal_floats(cnn, monkeypatch):
    """A target with a tiny probability: the map is the float64 deep-Taylor pass from Eq. 10 (computed
    in float64, where p_t is still a normal number), and in float32 the relevance handed to the
    propagation holds no subnormal floats (they made sglrp 10-20x slower on CPU)."""
    from relprop.propagate import Propagator

    model, x, logits = cnn
    big, z = _sharpened(model, x, 480.0)
    t = z.argmin(1)
    p_t = z.softmax(1).gather(1, t[:, None])
    assert (p_t < 1e-30).all() and (p_t > 1e-37).all()
    signed_map = relprop.explain(big, x, target=t, method="sglrp", relu=False)
    assert_close(signed_map, deep_taylor_ref(big, x, softmax_gradient(z, t)), rtol=1e-8, atol=1e-300)
    seen = []
    backward = Propagator.backward
    monkeypatch.setattr(Propagator, "backward", lambda self, cache, relevance, *a, **k: (
        seen.append(relevance), backward(self, cache, relevance, *a, **k))[1])
    for variant in ("paper", "official"):
        relprop.explain(big.float(), x.float(), target=t, method="sglrp", variant=variant)
    tiny = torch.finfo(torch.float32).tiny
    assert len(seen) == 3 and all(r.dtype == torch.float32 for r in seen)
    assert all(not ((r != 0) & (r.abs() < tiny)).any() for r in seen)


def test_sglrp_of_a_certain_class_in_float32_is_the_float64_map(cnn):
    """A target whose probability rounds to 1 in float32: ``1 - p_t`` there is the sum of the other
    classes' probabilities, not 0, so the float32 map (and Eq. 10 itself) is the float64 one; with
    ``1 - p_t`` computed as such, the target's share vanished and the map was the dual classes' alone."""
    model, x, logits = cnn
    big, z = _sharpened(model, x, 400.0)
    t = z.argmax(1)
    assert (z.float().softmax(1).gather(1, t[:, None]) == 1).all()  # 1 - p_t is 0 in float32
    want = softmax_gradient(z, t)
    assert_close(softmax_gradient(z.float(), t).double(), want, rtol=1e-5, atol=0.0)
    for relu in (False, True):
        ref = relprop.explain(big, x, target=t, method="sglrp", relu=relu)
        low = relprop.explain(copy.deepcopy(big).float(), x.float(), target=t, method="sglrp", relu=relu).double()
        scale = ref.flatten(1).abs().max(1).values.view(-1, 1, 1, 1)
        assert ((low - ref).abs() <= 1e-4 * scale).all()
    from relprop.attribution.contrastive import _region_sglrp

    spatial = z.float()[:, :, None, None].expand(-1, -1, 2, 3)
    weights = torch.zeros_like(spatial)
    weights[torch.arange(2), t, :, :2] = 1.0
    region = _region_sglrp(spatial, weights)
    expect = softmax_gradient(z, t)[:, :, None, None] * weights.double().sum(1, keepdim=True)
    assert_close(region.double(), expect, rtol=1e-5, atol=0.0)


def test_sglrp_paper(cnn):
    model, x, logits = cnn
    t = torch.tensor([2, 4])
    initial = softmax_gradient(logits, t)
    signed_map, rec = relprop.Explainer(model, "sglrp", relu=False).explain(x, target=t, record=[LAST])
    assert_close(rec[LAST], initial)  # the initial relevance at the logits: Eq. 10, sums to 0
    assert_close(per_sample(rec[LAST]), torch.zeros(2, dtype=DT), atol=1e-15)
    assert_close(signed_map, deep_taylor_ref(model, x, initial), rtol=1e-8)
    # the single signed pass equals the difference of separate target and dual passes of the same
    # composite (linearity), computed through the propagator
    propagator = propagator_for(model)
    composite = _deep_taylor("sglrp", None, None)
    cache = propagator.forward(x)
    target_part = torch.zeros_like(initial).scatter_(1, t[:, None], initial.gather(1, t[:, None]))
    dual_part = target_part - initial  # positive: p_t p_j
    a_t, _ = propagator.backward(cache, target_part, composite, release=False)
    a_d, _ = propagator.backward(cache, dual_part, composite)
    assert_close(signed_map, a_t - a_d, rtol=1e-8)
    # relu: default on for the paper variant, and the clamp of the signed map
    clipped = relprop.explain(model, x, target=t, method="sglrp")
    assert_close(clipped, signed_map.clamp(min=0), rtol=0.0, atol=0.0)
    assert (signed_map < 0).any()


def _sglrp_official_ref(model, x, logits, t, bias="full"):
    p = logits.clamp(min=0).softmax(1)
    p_t = p.gather(1, t[:, None])
    active = (logits > 0).to(DT)
    target_r = torch.zeros_like(logits).scatter(1, t[:, None], p_t * (1 - p_t) + 1e-8) * active
    dual_r = (p * p_t).scatter(1, t[:, None], 0.0) * active
    rules = (ref_zbox(), ref_zplus(bias), ref_zplus(bias))
    a_t = ref_backward(model, x, target_r, *rules)
    a_o = ref_backward(model, x, dual_r, *rules)
    scale = (per_sample(a_t) / per_sample(a_o)).view(-1, 1, 1, 1)
    return a_t - a_o * scale


def test_sglrp_official_sums_to_zero(cnn):
    model, x, logits = cnn
    t = logits.argmax(1)
    assert bool((logits > 0).sum(1).ge(2).all())  # a dual exists
    out = relprop.explain(model, x, target=t, method="sglrp", variant="official")
    assert torch.isfinite(out).all() and (out < 0).any()
    assert_close(per_sample(out), torch.zeros(2, dtype=DT), atol=1e-12 * float(out.abs().sum()))
    assert_close(relprop.explain(model, x, target=t, method="sglrp", variant="official", relu=True),
                 out.clamp(min=0), rtol=0.0, atol=0.0)


def test_sglrp_official_matches_innvestigate_rules(cnn):
    """4.2-4.3: two BoundedDeepTaylor passes; Alpha1Beta0Rule with bias kept, whose denominator
    (iNNvestigate 1.0.8.3) holds the full signed bias: ``z+_j + b_j`` for ReLU inputs."""
    model, x, logits = cnn
    t = logits.argmax(1)
    out = relprop.explain(model, x, target=t, method="sglrp", variant="official")
    assert_close(out, _sglrp_official_ref(model, x, logits, t, "full"), rtol=1e-7)


def test_sglrp_official_without_bias_matches_reference():
    """With bias-free layers the bias convention does not matter: the rest of 4.2 is checked alone."""
    model = small_cnn(bias=False, seed=12)
    x = signed((2, *SMALL_SHAPE), 33)
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(1)
    assert bool((logits > 0).sum(1).ge(2).all())
    out = relprop.explain(model, x, target=t, method="sglrp", variant="official")
    assert_close(out, _sglrp_official_ref(model, x, logits, t, "none"), rtol=1e-7)


# -- 7. CLRP (notes 5) -------------------------------------------------------------------------------------
def test_clrp_paper(cnn):
    model, x, logits = cnn
    t = torch.tensor([0, 3])
    signed_map, rec = relprop.Explainer(model, "clrp", relu=False).explain(x, target=t, record=[LAST])
    z_t = logits.gather(1, t[:, None])
    initial = (-z_t / 4).expand(-1, 5).clone().scatter_(1, t[:, None], z_t)
    assert_close(rec[LAST], initial)
    assert_close(per_sample(rec[LAST]), torch.zeros(2, dtype=DT), atol=1e-14)
    assert_close(signed_map, deep_taylor_ref(model, x, initial), rtol=1e-8)
    clipped = relprop.explain(model, x, target=t, method="clrp")  # relu=True by default
    assert_close(clipped, signed_map.clamp(min=0), rtol=0.0, atol=0.0)
    assert (signed_map < 0).any() and (signed_map > 0).any()


@pytest.mark.parametrize("bounds", [(None, None), (-2.1179, 2.64)], ids=["per-image", "official-constants"])
def test_clrp_official_type1(cnn, bounds):
    model, x, logits = cnn
    low, high = bounds
    t = torch.tensor([1, 2])
    target_r = torch.zeros_like(logits).scatter(1, t[:, None], logits.gather(1, t[:, None]).abs())
    dual_r = logits.abs().scatter(1, t[:, None], 0.0)
    a_t = deep_taylor_ref(model, x, target_r, low, high)
    a_d = deep_taylor_ref(model, x, dual_r, low, high)
    expected = a_t / per_sample(a_t).view(-1, 1, 1, 1) - a_d / per_sample(a_d).view(-1, 1, 1, 1)
    out = relprop.explain(model, x, target=t, method="clrp", variant="official-type1", relu=False,
                          low=low, high=high)
    assert_close(out, expected, rtol=1e-8)
    assert_close(per_sample(out), torch.zeros(2, dtype=DT), atol=1e-12)
    clipped = relprop.explain(model, x, target=t, method="clrp", variant="official-type1", low=low, high=high)
    assert_close(clipped, expected.clamp(min=0), rtol=1e-8)


def test_clrp_official_type2(cnn):
    model, x, logits = cnn
    t = torch.tensor([1, 2])
    out = relprop.explain(model, x, target=t, method="clrp", variant="official-type2", relu=False)
    assert out.shape == x.shape and torch.isfinite(out).all()
    target_r = torch.zeros_like(logits).scatter(1, t[:, None], logits.gather(1, t[:, None]).abs())
    a_t = deep_taylor_ref(model, x, target_r)
    a_d = deep_taylor_ref(model, x, target_r, negate_top=True)  # z+ through -W at the output layer
    expected = a_t / per_sample(a_t).view(-1, 1, 1, 1) - a_d / per_sample(a_d).view(-1, 1, 1, 1)
    assert_close(out, expected, rtol=1e-8)
    assert torch.isfinite(relprop.explain(model, x, target=t, method="clrp", variant="official-type2")).all()


@pytest.mark.parametrize("method,variant,extra", [("sglrp", "official", 0), ("clrp", "official-type1", 0),
                                                   ("clrp", "official-type2", 1)])
def test_the_dual_pass_reuses_the_terms_of_the_target_pass(cnn, monkeypatch, method, variant, extra):
    """The official variants' two passes over one forward pass compute each layer's z+ responses once
    (as the one pass of the paper's variant does); only clrp type 2's negated output layer has terms of
    its own. The maps are those of the dense references above."""
    from relprop.rules import lrp as lrp_rules

    model, x, logits = cnn
    t = logits.argmax(1)
    calls = []
    original = lrp_rules._contributions
    monkeypatch.setattr(lrp_rules, "_contributions", lambda *a, **k: calls.append(1) or original(*a, **k))
    relprop.explain(model, x, target=t, method=method, variant="paper")
    one_pass = len(calls)
    calls.clear()
    relprop.explain(model, x, target=t, method=method, variant=variant)
    assert one_pass > 0 and len(calls) == one_pass + extra


def test_contrastive_invalid_variants(cnn):
    model, x, _ = cnn
    with pytest.raises(ValueError):
        relprop.explain(model, x, method="clrp", variant="type3")
    with pytest.raises(ValueError):
        relprop.explain(model, x, method="sglrp", variant="keras")


# -- 8. Excitation backprop and contrastive excitation backprop --------------------------------------------
@pytest.fixture(scope="module")
def cnn_nobias():
    model = small_cnn(bias=False, seed=13)
    x = signed((2, *SMALL_SHAPE), 34)
    return model, x


def test_excitation_backprop_is_a_probability(cnn_nobias):
    model, x = cnn_nobias
    t = torch.tensor([0, 4])
    out = relprop.explain(model, x, target=t, method="excitation-backprop")
    assert_close(per_sample(out), torch.ones(2, dtype=DT), rtol=1e-6)
    one_hot = torch.zeros(2, 5, dtype=DT).scatter_(1, t[:, None], 1.0)
    ref = ref_backward(model, x, one_hot, ref_zplus(), ref_zplus(), ref_zplus())
    assert_close(out, ref, rtol=1e-8)


def test_contrastive_excitation_backprop(cnn_nobias):
    model, x = cnn_nobias
    t = torch.tensor([0, 4])
    out = relprop.explain(model, x, target=t, method="contrastive-eb")
    assert_close(per_sample(out), torch.zeros(2, dtype=DT), atol=1e-6)
    negated = copy.deepcopy(model)
    with torch.no_grad():
        negated[-1].weight.neg_()
    target_eb = relprop.explain(model, x, target=t, method="excitation-backprop")
    dual_eb = relprop.explain(negated, x, target=t, method="excitation-backprop")
    assert_close(out, target_eb - dual_eb, rtol=1e-9)
    assert (out < 0).any() and (out > 0).any()
    assert_close(relprop.explain(model, x, target=t, method="contrastive-eb", relu=True), out.clamp(min=0),
                 rtol=0.0, atol=0.0)
