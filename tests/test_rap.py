"""RAP (Relative Attributing Propagation), checked against the closed forms of
``/work/shared/notes/official_methods.md`` (section 1).


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

import pytest
import torch
import torchvision
from torch import nn

import relprop
from relprop.ops import Affine
from relprop.numerics import uniform_shift
from relprop.rules.rap import RAPHidden, RAPOutput
from relprop.rules.signed import SignSplitLayer

from dense_reference import dense
from closed_forms import DT, assert_close, module_of, per_sample, post_relu, psi, sd, seeded, signed


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


def ref_rap_hidden_signed(M: torch.Tensor, x: torch.Tensor, r: torch.Tensor, conv: bool) -> torch.Tensor:
    """1.3 / 1.4 on a signed input, written with the contributions ``c_ji = M_ji x_i`` split by their
    own sign (``P`` positive, ``N`` the magnitudes of the negative ones), then Psi."""
    c = M * x[None, :]
    P, N = c.clamp(min=0), c.clamp(max=0).abs()
    zp, zn = P.sum(1), N.sum(1)
    if conv:
        inner = P.T @ sd(r.clamp(min=0), zp) + N.T @ sd(r.clamp(max=0), zn) + N.T @ sd(r, zp + zn)
    else:
        inner = P.T @ sd(r, zp) + N.T @ sd(r, zp + zn)
    return psi(inner, r.sum())


#: the layers above, a depthwise convolution and a linear layer on tokens (B, T, C)
RAP_SIGNED_LAYERS = {**RAP_LAYERS,
                     "depthwise": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 5, 5)),
                     "grouped": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (4, 5, 5)),
                     "linear-tokens": (lambda: nn.Linear(9, 6), (5, 9))}


@pytest.mark.parametrize("name", list(RAP_SIGNED_LAYERS))
def test_rap_hidden_rule_on_signed_inputs_splits_contributions_by_sign(name):
    """A signed input (after a layer norm, a GELU, a linear bottleneck): each contribution counts as
    positive or negative by its own sign, one normalisation for both signs of the input, and the
    layer stays conservative."""
    make, in_shape = RAP_SIGNED_LAYERS[name]
    module = module_of(make, 3)
    M, _ = dense(module, in_shape)
    x = signed((2, *in_shape), 17)
    x[0].view(-1)[::7] = 0.0
    with torch.no_grad():
        z = module(x)
    r = signed(tuple(z.shape), 18)
    layer = Affine.from_module(module, "layer")
    out = RAPHidden()(layer, x, layer.apply(x, layer.weight, layer.bias), r, False)
    assert out.shape == x.shape
    conv = isinstance(module, nn.Conv2d)
    for s in range(2):
        assert_close(out[s].flatten(), ref_rap_hidden_signed(M, x[s].flatten(), r[s].flatten(), conv))
    assert_close(per_sample(out), per_sample(r))
    # a non-negative sample in the same batch gets exactly the map of the rule on it alone
    x[1] = x[1].clamp(min=0)
    with torch.no_grad():
        z = module(x)
    both = RAPHidden()(layer, x, z, r, False)
    alone = RAPHidden()(layer, x[1:], z[1:], r[1:], True)
    assert_close(both[1:], alone)


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


class _SmallResidualNet(nn.Module):
    """Conv-BN-ReLU, max pool, a residual block (3x3 then 1x1; ``signed_branch``: no ReLU between
    them, so the 1x1 convolution reads a signed input), global average pool, two linear layers."""

    def __init__(self, signed_branch: bool = False) -> None:
        super().__init__()
        self.signed_branch = signed_branch
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
        branch = self.conv2(h) if self.signed_branch else torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(branch) + h)
        return self.fc2(torch.relu(self.fc1(self.gap(h).flatten(1))))


def test_rap_conserves_on_small_residual_net_both_starts():
    """Fast stand-in of the zoo check: residual sum, max pool, BN, biases, batch == per sample."""
    model = module_of(_SmallResidualNet, 7)
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



def _old_rap_conv(layer: Affine, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """RAP's convolution rule as the layer's own maps compute it, every quotient ``a / b`` made 0 where
    ``b = 0`` or where it is not finite (an overflow over a tiny denominator)."""
    def q(a, b):
        return torch.nan_to_num(a / b, 0.0, 0.0, 0.0)

    wp = layer.weight.clamp(min=0)
    wn = layer.weight.clamp(max=0).neg()
    zp = layer.apply(x, wp)
    zn = (zp - z + layer.broadcast_bias(z)).clamp(min=0)
    c = layer.transpose(q(r.clamp(min=0), zp), wp, x)
    c = c + layer.transpose(q(r.clamp(max=0), zn) + q(r, zp + zn), wn, x)
    return uniform_shift(c * x, r.flatten(1).sum(1))


@pytest.mark.parametrize("scale", [1.0, 1e-36], ids=["normal", "overflowing-quotients"])
def test_rap_hidden_rule_gives_0_for_quotients_that_overflow(scale):
    """In float32, inputs so small that ``R / z+`` overflows: those quotients count 0 (no inf or NaN
    reaches the map), as where the denominator is 0; one sample tiny, the other normal."""
    module = module_of(lambda: nn.Conv2d(3, 4, 3, padding=1), 5).float()
    x = post_relu((2, 3, 6, 6), 31).float()
    x[0] *= scale
    layer = Affine.from_module(module, "layer")
    with torch.no_grad():
        z = layer.apply(x, layer.weight, layer.bias)
    r = signed((2, 4, 6, 6), 32).float() * 1e3
    out = RAPHidden()(layer, x, z, r, True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _old_rap_conv(layer, x, z, r), rtol=1e-5, atol=1e-5 * float(out.abs().max()))


def test_rap_k_targets_equal_separate_calls_on_a_residual_net_float64():
    """One call with K targets per sample against K calls, float64, to 1e-12 of each map's largest value
    (residual sum, max pool, batch norm, a signed input to a 1x1 convolution)."""
    model = module_of(lambda: _SmallResidualNet(signed_branch=True), 8)
    with torch.no_grad():
        model.bn1.running_mean.copy_(signed((6,), 24))
        model.bn1.running_var.copy_(signed((6,), 25).abs() + 0.5)
    x = signed((3, 3, 8, 8), 26)
    targets = torch.tensor([[0, 4, 2], [1, 1, 3], [4, 0, 2]])
    maps = relprop.explain(model, x, target=targets, method="rap")
    for k in range(targets.shape[1]):
        single = relprop.explain(model, x, target=targets[:, k], method="rap")
        scale = single.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
        assert float(((maps[:, k] - single).abs() / scale).max()) <= 1e-12


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


# -- signed inputs as a layer of twice the width (relprop.rules.signed) -------------------------------
@pytest.mark.parametrize("name", ["linear-tokens", "grouped", "conv3x3-s2-p1"])
def test_sign_split_layer_is_the_same_map_on_the_doubled_input(name):
    make, in_shape = RAP_SIGNED_LAYERS[name]
    module = module_of(make, 5)
    layer = Affine.from_module(module, "layer")
    doubled = SignSplitLayer(layer)
    x = signed((2, *in_shape), 19)
    halves = doubled.split(x)
    assert bool((halves >= 0).all()) and halves.numel() == 2 * x.numel()
    assert_close(doubled.apply(halves, doubled.weight, doubled.bias), layer.apply(x, layer.weight, layer.bias))
    assert_close(doubled.merge(halves), x.abs())
    with torch.no_grad():  # the doubled weights follow a change of the layer's own
        module.weight.mul_(2)
    assert_close(doubled.apply(halves, doubled.weight, None), layer.apply(x, layer.weight, None))


def test_rsp_rule_on_signed_tokens_is_the_rule_on_the_explicit_doubled_layer():
    """RSP on a signed token input equals RSP on a real linear layer of twice the width with weights
    ``[W, -W]`` on ``[x+; x-]``, its halves summed; a sample's map does not depend on the others."""
    from relprop.rules.rsp import RSPRule

    module = module_of(lambda: nn.Linear(6, 4), 7)
    wide = nn.Linear(12, 4).to(DT)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([module.weight, -module.weight], dim=1))
        wide.bias.copy_(module.bias)
    x = signed((2, 5, 6), 20)
    r = signed((2, 5, 4), 21)
    layer, wide_layer = Affine.from_module(module, "layer"), Affine.from_module(wide, "wide")
    with torch.no_grad():
        z = module(x)
    out = RSPRule()(layer, x, z, r, False)
    halves = torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=-1)
    expected = RSPRule()(wide_layer, halves, z, r, True)
    assert_close(out, expected[..., :6] + expected[..., 6:])
    assert_close(out[1:], RSPRule()(layer, x[1:], z[1:], r[1:], False))
    assert out.abs().sum() > 0


def test_rsp_rule_on_tokens_matches_its_formula():
    """RSP's comparative-gradient rule on a linear layer over tokens (non-negative input), against
    its formula written out per sample: ``G+- = R+-^T X`` (summed over tokens), ``z+- = X G+-^T`` where
    R is positive (negative), ``C+- = X * sd(R+-, z+-) G+-``, ``R_in = 2 (C+ - C-)`` shifted uniformly
    over its nonzero entries to sum to ``sum R``."""
    from relprop.rules.rsp import RSPRule

    module = module_of(lambda: nn.Linear(6, 4), 8)
    x = post_relu((2, 5, 6), 22)
    r = signed((2, 5, 4), 23)
    layer = Affine.from_module(module, "layer")
    with torch.no_grad():
        z = module(x)
    out = RSPRule()(layer, x, z, r, True)
    for s in range(2):
        X, R = x[s], r[s]
        parts = []
        for magnitude, mask in ((R.clamp(min=0), R > 0), ((-R).clamp(min=0), R < 0)):
            G = magnitude.T @ X
            zs = (X @ G.T) * mask
            parts.append(X * (sd(magnitude, zs) @ G))
        doubled = 2 * (parts[0] - parts[1])
        assert_close(out[s].flatten(), psi(doubled.flatten(), R.sum()))


class _Cancelling(nn.Module):
    """Two convolutions whose sum is 1e-5 of either: the signed split multiplies relevance by 1e5."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.b.weight.copy_(-self.a.weight * (1 - 1e-5))
            self.b.bias.copy_(-self.a.bias * (1 - 1e-5))
        self.head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x) + self.b(x))


def test_an_ill_conditioned_signed_split_is_reported_once_per_model_and_float_type() -> None:
    """The official signed split of a residual sum multiplies relevance by |term| / |sum| where the terms
    nearly cancel; in float32 rounding then moves the map (measured up to 26% of its maximum on
    shapes_resnet), which rap says once per model and float type, and not where the split is exact
    enough (float64) or bounded (add='absolute')."""
    import warnings

    model = _Cancelling().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match=r"signed split of the sum at 'add'.*float32.*add='absolute'"):
        relprop.explain(model, x, target=0, method="rap")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relprop.explain(model, x, target=0, method="rap")  # reported already
        relprop.explain(model, x, target=0, method="rap", add="absolute")
        relprop.explain(model.double(), x.double(), target=0, method="rap")
