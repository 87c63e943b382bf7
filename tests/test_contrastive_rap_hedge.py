"""RAP, gradient hedging (Attribution Equilibrium), SGLRP, CLRP and (contrastive) excitation backprop,
checked against the closed forms of ``/work/shared/notes/official_methods.md`` (sections 1, 3, 4, 5).

Every reference is written independently of the code under test: each affine layer becomes its dense
per-sample matrix ``M`` (output x input), obtained by differentiating the *torch module* itself, with
bias ``b`` = the module's output at ``x = 0``; the rules are then written in plain matrix form (or
explicit loops), and whole-network references walk a small ``nn.Sequential`` layer by layer (max
pooling via the autograd gradient of the pool, i.e. winner-take-all). Nothing in the references uses
``Affine.apply`` / ``Affine.transpose`` or any rule of :mod:`relprop`.

All computations are float64. The whole-zoo RAP conservation check (torchvision VGG-16, ResNet-50,
Inception-v3, DenseNet-121 and EfficientNet-Lite0) is marked ``slow``.
"""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torchvision
from torch import nn

import relprop
from relprop.attribution.contrastive import _deep_taylor, softmax_gradient
from relprop.ops import Affine
from relprop.propagate import propagator_for
from relprop.rules.hedge import Hedge
from relprop.numerics import uniform_shift
from relprop.rules.rap import RAPHidden, RAPOutput

from dense_reference import dense  # noqa: E402

DT = torch.float64
#: stabiliser of the z+ / z^B rules of the contrastive methods (official CLRP: + 1e-9)
EPS = 1e-9


# -- helpers ---------------------------------------------------------------------------------------
def sd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The authors' safe divide: ``a / b`` where ``b != 0``, else 0."""
    nz = b != 0
    return torch.where(nz, a / torch.where(nz, b, torch.ones_like(b)), torch.zeros_like(a))


def psi(c: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Uniform shift of one flattened sample: ``c - [c != 0] (sum c - total) / #{c != 0}``."""
    nz = (c != 0).to(c.dtype)
    return c - nz * (c.sum() - total) / nz.sum()


def per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-12):
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol + rtol * scale)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def post_relu(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A non-negative input with roughly half of its entries exactly 0 (as after a ReLU)."""
    return torch.randn(shape, generator=seeded(seed), dtype=DT).clamp(min=0)


def signed(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=seeded(seed), dtype=DT)


def module_of(make, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make().to(DT).eval()


# -- 1. RAP first propagation (notes 1.2) ------------------------------------------------------------
def ref_first_prop(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
    """Loop form of 1.2 for one sample: bias shares, then ``|c~| / sum |c~| * z_t``."""
    n = x.numel()
    c = [float(x[i] * w[t, i]) for i in range(n)]
    z_t = sum(c) + float(b[t])
    pos = sum(ci for ci in c if ci > 0)
    neg = sum(ci for ci in c if ci < 0)
    b_pos = float(b[t]) * pos / (pos + neg)
    b_neg = float(b[t]) * neg / (pos + neg)
    up = [i for i in range(n) if x[i] > 0 and w[t, i] > 0]
    down = [i for i in range(n) if x[i] > 0 and w[t, i] < 0]
    up_sum = sum(c[i] for i in up)
    down_sum = sum(c[i] for i in down)
    tilde = list(c)
    for i in up:
        tilde[i] += b_pos * c[i] / up_sum
    for i in down:
        tilde[i] += b_neg * c[i] / down_sum
    if up and down:  # then the bias is fully distributed (else the authors' sd() drops a share)
        assert abs(sum(tilde) - z_t) < 1e-10 * max(1.0, abs(z_t))
    norm = sum(abs(v) for v in tilde)
    return torch.tensor([abs(v) / norm * z_t for v in tilde], dtype=DT)


def test_rap_first_propagation_closed_form():
    lin = module_of(lambda: nn.Linear(7, 4), 1)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([0.7, -0.9, 0.3, -0.25], dtype=DT))
    x = signed((3, 7), 11)
    x[:, 2] = 0.0  # a unit without contribution
    assert (x < 0).any() and (x > 0).any()
    with torch.no_grad():
        logits = lin(x)
    targets = [int(logits[0].argmax()), int(logits[1].argmin()), 2]  # one negative logit at least
    assert float(logits[1, targets[1]]) < 0
    layer = Affine.from_module(lin, "fc")
    z = layer.apply(x, layer.weight, layer.bias)
    r = torch.zeros(3, 4, dtype=DT)
    r[torch.arange(3), targets] = 1.0
    out = RAPOutput()(layer, x, z, r, False)
    for s, t in enumerate(targets):
        expected = ref_first_prop(lin.weight.detach(), lin.bias.detach(), x[s], t)
        assert_close(out[s], expected)
        assert abs(float(out[s].sum()) - float(logits[s, t])) < 1e-10 * abs(float(logits[s, t]))
        # all shares carry the sign of the logit
        assert bool(((out[s] * logits[s, t].sign()) >= 0).all())


def test_rap_first_propagation_inside_explain():
    """The relevance at the output layer's input (recorded) is 1.2's formula of the hidden ReLU values."""
    model = module_of(lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), 2)
    x = signed((2, 6), 12)
    with torch.no_grad():
        h = model[1](model[0](x))
        logits = model[2](h)
    t = logits.argmax(1)
    rel, rec = relprop.Explainer(model, "rap").explain(x, target=t, record=["1"])
    w, b = model[2].weight.detach(), model[2].bias.detach()
    for s in range(2):
        assert_close(rec["1"][s], ref_first_prop(w, b, h[s], int(t[s])))
    assert_close(per_sample(rel), logits.gather(1, t[:, None]).flatten(), rtol=1e-9)


# -- 2. RAP hidden rules (notes 1.3, 1.4, 1.8) ---------------------------------------------------------
def ref_rap_hidden(M: torch.Tensor, x: torch.Tensor, r: torch.Tensor, conv: bool) -> torch.Tensor:
    """1.3 (linear) / 1.4 (convolution) on one flattened sample, then Psi."""
    xp = x.clamp(min=0)
    Mp, Mn = M.clamp(min=0), M.clamp(max=0).abs()  # w+ and |w-|
    zp, zn = Mp @ xp, Mn @ xp
    if conv:
        inner = Mp.T @ sd(r.clamp(min=0), zp) + Mn.T @ sd(r.clamp(max=0), zn) + Mn.T @ sd(r, zp + zn)
    else:
        inner = Mp.T @ sd(r, zp) + Mn.T @ sd(r, zp + zn)
    return psi(xp * inner, r.sum())


RAP_LAYERS = {
    "linear": (lambda: nn.Linear(9, 6), (9,)),
    "conv3x3-s2-p1": (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 7, 7)),
    "conv3x3-p2": (lambda: nn.Conv2d(2, 4, 3, padding=2), (2, 5, 5)),
    "conv1x1": (lambda: nn.Conv2d(4, 3, 1), (4, 5, 5)),
}


@pytest.mark.parametrize("nonnegative", [True, False], ids=["nonneg", "signed-flag"])
@pytest.mark.parametrize("name", list(RAP_LAYERS))
def test_rap_hidden_rule_closed_form(name, nonnegative):
    make, in_shape = RAP_LAYERS[name]
    module = module_of(make, 3)
    M, _ = dense(module, in_shape)
    x = post_relu((2, *in_shape), 13)
    assert (x == 0).any()
    with torch.no_grad():
        z = module(x)
    r = signed(tuple(z.shape), 14)
    layer = Affine.from_module(module, "layer")
    out = RAPHidden()(layer, x, layer.apply(x, layer.weight, layer.bias), r, nonnegative)
    assert out.shape == x.shape
    conv = not isinstance(module, nn.Linear)
    for s in range(2):
        expected = ref_rap_hidden(M, x[s].flatten(), r[s].flatten(), conv)
        assert_close(out[s].flatten(), expected)
    assert_close(per_sample(out), per_sample(r))


def test_rap_linear_and_conv_route_negative_relevance_differently():
    """A 1x1 conv is the same map as a linear layer, but the rules differ (1.6 item 1)."""
    lin = module_of(lambda: nn.Linear(4, 3), 4)
    conv = nn.Conv2d(4, 3, 1).to(DT)
    with torch.no_grad():
        conv.weight.copy_(lin.weight[:, :, None, None])
        conv.bias.copy_(lin.bias)
    x = post_relu((2, 4), 15) + 0.1
    r = signed((2, 3), 16)
    a, b = Affine.from_module(lin, "lin"), Affine.from_module(conv, "conv")
    out_lin = RAPHidden()(a, x, a.apply(x, a.weight, a.bias), r, True)
    x4 = x[:, :, None, None]
    out_conv = RAPHidden()(b, x4, b.apply(x4, b.weight, b.bias), r[:, :, None, None], True)
    assert not torch.allclose(out_lin, out_conv.flatten(1))
    assert_close(per_sample(out_lin), per_sample(out_conv))


def test_uniform_shift_per_sample():
    c = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, -1.0]], dtype=DT)
    total = torch.tensor([0.0, 5.0], dtype=DT)
    out = uniform_shift(c, total)
    expected = torch.stack([psi(c[0], total[0]), psi(c[1], total[1])])
    assert_close(out, expected)
    assert_close(per_sample(out), total)
    assert bool((out[c == 0] == 0).all())


def test_rap_abs_rule_on_1x1_conv():
    """``RAPHidden("abs")`` on a 1x1 conv is the ``|x| |w|`` z-rule on signed R, without Psi (1.8)."""
    module = module_of(lambda: nn.Conv2d(4, 3, 1), 5)
    M, _ = dense(module, (4, 3, 3))
    x = signed((2, 4, 3, 3), 17)
    x[:, 0, 0, 0] = 0.0
    r = signed((2, 3, 3, 3), 18)
    layer = Affine.from_module(module, "c")
    out = RAPHidden("abs")(layer, x, layer.apply(x, layer.weight, layer.bias), r, False)
    for s in range(2):
        xa, Ma = x[s].flatten().abs(), M.abs()
        expected = xa * (Ma.T @ sd(r[s].flatten(), Ma @ xa))
        assert_close(out[s].flatten(), expected)
    # no Psi, but the |x| |w| z-rule conserves by itself wherever its denominators are nonzero
    assert_close(per_sample(out), per_sample(r), rtol=1e-9)
    # the "abs" switch leaves k x k convolutions with the RAP rule
    module3 = module_of(lambda: nn.Conv2d(4, 3, 3, padding=1), 6)
    layer3 = Affine.from_module(module3, "c3")
    xp = x.clamp(min=0)
    z3 = layer3.apply(xp, layer3.weight, layer3.bias)
    r3 = signed(tuple(z3.shape), 19)
    assert_close(RAPHidden("abs")(layer3, xp, z3, r3, True), RAPHidden()(layer3, xp, z3, r3, True))


# -- 3. RAP conservation on the model zoo ---------------------------------------------------------------
ZOO = [("vgg16", 64), ("resnet50", 64), ("inception_v3", 107), ("densenet121", 64), ("efficientnet_lite0", 224)]


def _zoo_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        model, _ = relprop.load_model(name)
    elif name == "inception_v3":
        model = torchvision.models.inception_v3(weights=None, init_weights=True, aux_logits=True)
    else:
        model = torchvision.models.get_model(name, weights=None)
    return model.to(DT).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name,size", ZOO, ids=[n for n, _ in ZOO])
def test_rap_conserves_logit_on_zoo(name, size):
    model = _zoo_model(name)
    x = torch.randn(2, 3, size, size, generator=seeded(20), dtype=DT)
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(1)
    z_t = logits.gather(1, t[:, None]).flatten()
    explainer = relprop.Explainer(model, "rap", start="one-hot")
    both = explainer.explain(x, target=t)
    assert both.shape == x.shape and torch.isfinite(both).all()
    torch.testing.assert_close(per_sample(both), z_t, rtol=1e-5, atol=0.0)
    # batch of two equals per sample (no batch-wide Psi or bounds); the residual z-rule split has no
    # stabiliser (as in the official code), so float64 round-off of the batched convolutions is
    # amplified where the two branches nearly cancel: compare relative to the map's scale
    single = explainer.explain(x[1:], target=t[1:])
    torch.testing.assert_close(single[0], both[1], rtol=1e-6, atol=1e-9 * float(both[1].abs().max()))
    logit_start = relprop.explain(model, x[:1], target=t[:1], method="rap", start="logit")
    assert torch.isfinite(logit_start).all()
    torch.testing.assert_close(per_sample(logit_start), z_t[:1], rtol=1e-5, atol=0.0)


def test_rap_conserves_on_small_residual_net_both_starts():
    """Fast stand-in of the zoo check: residual sum, max pool, BN, biases, batch == per sample."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(6)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
            self.conv3 = nn.Conv2d(6, 6, 1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Linear(6, 8)
            self.fc2 = nn.Linear(8, 5)

        def forward(self, x):
            h = self.pool(torch.relu(self.bn1(self.conv1(x))))
            h = torch.relu(self.conv3(torch.relu(self.conv2(h))) + h)
            return self.fc2(torch.relu(self.fc1(self.gap(h).flatten(1))))

    model = module_of(Net, 7)
    with torch.no_grad():
        model.bn1.running_mean.copy_(signed((6,), 21))
        model.bn1.running_var.copy_(signed((6,), 22).abs() + 0.5)
    x = signed((2, 3, 8, 8), 23)
    with torch.no_grad():
        logits = model(x)
    t = torch.tensor([1, 3])
    z_t = logits.gather(1, t[:, None]).flatten()
    for start in ("one-hot", "logit"):
        for one_by_one in ("rap", "abs"):
            rel = relprop.explain(model, x, target=t, method="rap", start=start, one_by_one=one_by_one)
            if one_by_one == "rap":
                assert_close(per_sample(rel), z_t, rtol=1e-9)
            single = relprop.explain(model, x[1:], target=t[1:], method="rap", start=start, one_by_one=one_by_one)
            assert_close(single[0], rel[1])
    with pytest.raises(ValueError):
        relprop.explain(model, x, method="rap", start="softmax")


# -- 4. RAP: batch norm is the identity (notes, shared section) ------------------------------------------
def test_rap_batchnorm_is_identity():
    model = module_of(lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(24, 5)), 8)
    with torch.no_grad():
        for k, c in ((1, 4), (4, 6)):
            bn = model[k]
            bn.running_mean.copy_(signed((c,), 30 + k))
            bn.running_var.copy_(signed((c,), 40 + k).abs() + 0.3)
            bn.weight.copy_(signed((c,), 50 + k))
            bn.bias.copy_(signed((c,), 60 + k))
    x = signed((2, 3, 8, 8), 24)
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(1)
    rel, rec = relprop.Explainer(model, "rap").explain(x, target=t, record=["0", "1", "3", "4"])
    # relevance at the BN input (= the conv's output) equals the relevance at the BN output
    assert rec["1"].abs().sum() > 0 and rec["4"].abs().sum() > 0
    assert_close(rec["0"], rec["1"], rtol=0.0, atol=0.0)
    assert_close(rec["3"], rec["4"], rtol=0.0, atol=0.0)
    assert_close(per_sample(rel), logits.gather(1, t[:, None]).flatten(), rtol=1e-9)


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


def test_sglrp_of_an_unlikely_class_keeps_normal_floats(cnn, monkeypatch):
    """A target with a tiny probability: the map is the float64 deep-Taylor pass from Eq. 10 (computed
    in float64, where p_t is still a normal number), and in float32 the relevance handed to the
    propagation holds no subnormal floats (they made sglrp 10-20x slower on CPU)."""
    from relprop.propagate import Propagator

    model, x, logits = cnn
    big = copy.deepcopy(model)
    last = [m for m in big.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(480.0)
        last.bias.mul_(480.0)
        z = big(x)
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


class _ViewNet(nn.Module):
    """Flattens a feature map with ``.view``, which a channels-last tensor cannot do."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        f = self.features(x)
        return self.head(f.view(f.shape[0], -1))


def test_hedge_channels_last_path_equals_the_nchw_one(monkeypatch):
    """On CPU in float32 the hedge rule and its forward pass run channels-last; the maps are those of
    the plain NCHW computation, also for a model whose ``.view`` refuses channels-last inputs."""
    import relprop.attribution.hedge as hedge_method
    import relprop.rules.hedge as hedge_rule

    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 16)
    models = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                            nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval(), _ViewNet().eval()]
    fast = [relprop.explain(m, x, target=1, method="hedge") for m in models]
    nchw_only = [hedge_method.propagator_for(m, fold_batchnorm=False).notes.get("nchw_only") for m in models]
    assert nchw_only == [None, True]
    assert all(f.is_contiguous() for f in fast)
    monkeypatch.setattr(hedge_rule, "_channels_last", lambda layer, x: False)
    monkeypatch.setattr(hedge_method, "_forward", lambda model, x, layer: hedge_method.forward_for(
        model, x, fold_batchnorm=False, differentiable_from=layer))
    for m, f in zip(models, fast):
        torch.testing.assert_close(f, relprop.explain(m, x, target=1, method="hedge"), rtol=1e-4, atol=1e-6)
