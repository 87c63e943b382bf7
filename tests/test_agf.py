"""AGF (Gur, Ali & Wolf 2021): relprop's ``agf`` against a transcription of the authors' layer code
(github.com/shirgur/AGFVisualization, ``modules/layers.py``, ``vgg.py``, ``resnet.py``), written here
with autograd as the authors compute it, in float64; its conservation; misuse."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.attribution.agf import agf_relevance
from relprop.rules import agf as agf_rules

DT = torch.float64


# -- the authors' code, transcribed (hooks replaced by an explicit forward record) ------------------
def safe_divide(a, b):
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def minmax_dims(x, minmax):
    y = x.clone()
    for i in range(1, x.dim()):
        y = getattr(y, minmax)(dim=i, keepdim=True)[0]
    return y


def delta_shift(C, R):
    dims = list(range(1, R.dim()))
    nonzero = C.ne(0).type(C.type())
    return C + R - (R.sum(dim=dims, keepdim=True)) / (nonzero.sum(dim=dims, keepdim=True)) * nonzero


def get_factorization(X, grad, phi):
    phi_pos, phi_neg = phi.clamp(min=0), phi.clamp(max=0)
    grad = safe_divide(grad, minmax_dims(grad, "max"))
    X = safe_divide(X, minmax_dims(X, "max"))
    out = []
    for source in (X, grad):
        ref = torch.sigmoid(10 * source)
        R_pos = safe_divide((ref * phi_pos.ne(0).type(ref.type())).sum(dim=[2, 3], keepdim=True),
                            phi_pos.ne(0).type(phi_pos.type()).sum(dim=[1, 2, 3], keepdim=True))
        R_neg = safe_divide((ref * phi_neg.ne(0).type(ref.type())).sum(dim=[2, 3], keepdim=True),
                            phi_neg.ne(0).type(phi_neg.type()).sum(dim=[1, 2, 3], keepdim=True))
        R = torch.cat((R_neg.squeeze(3), R_pos.squeeze(3)), dim=-1)
        H = ref.reshape(X.shape[0], X.shape[1], -1)
        W = (R.permute(0, 2, 1) @ R + torch.eye(2, dtype=X.dtype)[None]).inverse() @ (R.permute(0, 2, 1) @ H)
        W = F.relu(W.reshape(W.shape[0], W.shape[1], X.shape[2], X.shape[3]))
        out.append((-(W[:, 0:1] - W[:, 1:2])).expand_as(X))
    return out[0], out[1]


def simple(fn, X, cam):
    """``AGFPropSimple``: LRP-0 through ``fn`` (ReLU, pools)."""
    X = X.detach().requires_grad_(True)
    Z = fn(X) * cam.ne(0).type(cam.type())
    return X * torch.autograd.grad(Z, X, safe_divide(cam, Z))[0]


def gradient(fn, X, g):
    X = X.detach().requires_grad_(True)
    return torch.autograd.grad(fn(X), X, g)[0]


def conv_agf(conv, X, cam, g, flat=False):
    """``Conv2d.AGF`` (the input layer: ``final_backward``; ``flat``: C alone)."""
    X = X.detach().requires_grad_(True)
    pw, nw = conv.weight.clamp(min=0), conv.weight.clamp(max=0)
    kw = dict(stride=conv.stride, padding=conv.padding)
    if X.shape[1] == 3:
        L = X * 0 + X.amin(dim=(1, 2, 3), keepdim=True)
        H = X * 0 + X.amax(dim=(1, 2, 3), keepdim=True)
        Za = F.conv2d(X, conv.weight, **kw) - F.conv2d(L, pw, **kw) - F.conv2d(H, nw, **kw)
        Sp = safe_divide(cam, Za)

        def gp(s, w):
            return torch.nn.grad.conv2d_input(X.shape, w, s, **kw)
        return X * gp(Sp, conv.weight) - L * gp(Sp, pw) - H * gp(Sp, nw)

    def conv_fn(t):
        return F.conv2d(t, conv.weight, conv.bias, **kw)
    grad = gradient(conv_fn, X, g)
    M = F.relu((X * grad).mean(dim=1, keepdim=True).expand_as(X))
    M = safe_divide(M, minmax_dims(M, "max"))
    xabs = X.abs().detach().requires_grad_(True)
    wabs = conv.weight.abs()
    Zabs = F.conv2d(xabs, wabs, **kw) * cam.ne(0).type(cam.type())
    C = xabs * torch.autograd.grad(Zabs, xabs, safe_divide(cam, Zabs))[0]
    if flat:
        return C.detach()
    grad = gradient(lambda t: conv_fn(t) * cam.ne(0).type(cam.type()), X, g)
    F_x, F_dx = get_factorization(X, grad, C.mean(dim=1, keepdim=True))
    F_x, F_dx = F.relu(F_x), F.relu(F_dx)
    ones = torch.ones_like(X).requires_grad_(True)
    Zabs = F.conv2d(ones, wabs, **kw) * cam.ne(0).type(cam.type())
    A = ones * torch.autograd.grad(Zabs, ones, safe_divide(cam, Zabs))[0]
    R = safe_divide(F_x + M, 1 + torch.exp(-C)) + F_dx + A
    R = R * C.ne(0).type(C.type())
    return delta_shift(C, R).detach()


def linear_agf(linear, X, cam, g, feature_map=None):
    """``Linear.AGF`` with a gradient stream (``feature_map``: the shape before flattening)."""
    X = X.detach()
    xabs = X.abs().requires_grad_(True)
    Zabs = F.linear(xabs, linear.weight.abs()) * cam.ne(0).type(cam.type())
    C = xabs * torch.autograd.grad(Zabs, xabs, safe_divide(cam, Zabs))[0]
    if feature_map is None:
        return C.detach()
    grad = gradient(linear, X, g)
    x, gr = X.reshape(-1, *feature_map), grad.reshape(-1, *feature_map)
    M = (x * gr).mean(dim=1, keepdim=True).expand_as(x).reshape_as(X)
    M = F.relu(M) * C.ne(0).type(C.type())
    return delta_shift(C, safe_divide(M, minmax_dims(M, "max"))).detach()


def head_agf(linear, X, target):
    """``Linear.AGF`` at the head: relevance ``x * dy^_t/dx`` and the gradient stream at ``x``."""
    X = X.detach().requires_grad_(True)
    Y = linear(X)
    t = torch.tensor(target).view(-1, 1)
    tgt = torch.zeros_like(Y).scatter(1, t, 1)
    yt = Y.gather(1, t)
    sigma = (Y - yt).abs().max(dim=1, keepdim=True)[0]
    Y = F.softmax(yt * torch.exp(-0.5 * ((Y - yt) / sigma) ** 2), dim=1)
    grad = torch.autograd.grad(Y, X, tgt)[0]
    return (X * grad).detach(), grad.detach()


class TinyVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 5, 3, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(20, 9), nn.ReLU(), nn.Dropout(), nn.Linear(9, 4))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def official_vgg(model: TinyVGG, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    """``VGG.AGF`` on :class:`TinyVGG`: the forward record, then each layer's AGF in reverse."""
    f, c = model.features, model.classifier
    acts = [x]
    for layer in f:
        acts.append(layer(acts[-1]))
    pooled = model.avgpool(acts[-1])
    h0 = pooled.flatten(1)
    h1 = c[0](h0)
    h2 = c[1](h1)
    cam, g = head_agf(c[3], h2, target)  # dropout is the identity in eval mode
    cam, g = simple(c[1], h1, cam), gradient(c[1], h1, g)
    cam, g = linear_agf(c[0], h0, cam, g, feature_map=pooled.shape[1:]), gradient(c[0], h0, g)
    cam, g = cam.reshape_as(pooled), g.reshape_as(pooled)
    cam, g = simple(model.avgpool, acts[-1], cam), gradient(model.avgpool, acts[-1], g)
    for k in reversed(range(len(f))):
        layer, inp = f[k], acts[k]
        if isinstance(layer, nn.Conv2d):
            cam, g = conv_agf(layer, inp, cam, g), gradient(layer, inp, g)
        else:
            cam, g = simple(layer, inp, cam), gradient(layer, inp, g)
    return cam


def official_block(model: "TinyResNet", x: torch.Tensor, target: list[int]) -> torch.Tensor:
    """``ResNet.AGF`` on :class:`TinyResNet` (a stem, one BasicBlock with batch norms, the head):
    batch norms pass the relevance and scale the gradient; ``conv2`` and the downsample are flat."""
    m = model
    s0 = m.stem(x)
    s1 = F.relu(s0)
    a1 = m.bn1(m.conv1(s1))
    a2 = F.relu(a1)
    b1 = m.conv2(a2)
    b2 = m.bn2(b1)
    d1 = m.down(s1)
    d2 = m.down_bn(d1)
    out = b2 + d2
    o1 = F.relu(out)
    pooled = F.adaptive_avg_pool2d(o1, 1)
    cam, g = head_agf(m.fc, pooled.flatten(1), target)
    cam, g = cam.reshape_as(pooled), g.reshape_as(pooled)

    def pool(t):
        return F.adaptive_avg_pool2d(t, 1)
    cam, g = simple(pool, o1, cam), gradient(pool, o1, g)
    cam, g = simple(F.relu, out, cam), gradient(F.relu, out, g)
    # Add: LRP-0 over its two inputs
    b2r, d2r = b2.detach().requires_grad_(True), d2.detach().requires_grad_(True)
    Z = (b2r + d2r) * cam.ne(0).type(cam.type())
    S = safe_divide(cam, Z)
    gb, gd = torch.autograd.grad(Z, [b2r, d2r], S)
    cam_b, cam_d = b2r * gb, d2r * gd
    g_b = g_d = g
    cam_d, g_d = cam_d, gradient(m.down_bn, d1, g_d)
    cam_d, g_d = conv_agf(m.down, s1, cam_d, g_d, flat=True), gradient(m.down, s1, g_d)
    cam_b, g_b = cam_b, gradient(m.bn2, b1, g_b)
    cam_b, g_b = conv_agf(m.conv2, a2, cam_b, g_b, flat=True), gradient(m.conv2, a2, g_b)
    cam_b, g_b = simple(F.relu, a1, cam_b), gradient(F.relu, a1, g_b)
    pre = m.conv1(s1)
    cam_b, g_b = cam_b, gradient(m.bn1, pre, g_b)
    cam_b, g_b = conv_agf(m.conv1, s1, cam_b, g_b), gradient(m.conv1, s1, g_b)
    cam = (cam_b + cam_d).detach()  # Clone: the sum of both branches
    g = g_b + g_d
    cam = simple(F.relu, s0, cam)
    return conv_agf(m.stem, x, cam, g)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(6, 8, 1, bias=False)
        self.down_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        s = F.relu(self.stem(x))
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(s))))) + self.down_bn(self.down(s))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(out), 1), 1))


def _model(cls, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = cls().to(DT).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # drawn statistics, positive scales
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model


def _inputs(seed: int, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=g, dtype=DT)


def _authors_map(relevance: torch.Tensor) -> torch.Tensor:
    relevance = relevance.detach()
    return (relevance / minmax_dims(relevance, "max")).sum(1, keepdim=True)


def assert_same_map(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Relative L2 error of the channel-summed maps below 1e-6 (measured: 1e-8 to 9e-8). The authors
    add 1e-9 to every denominator, whatever its sign, also where relprop divides nothing (the
    winner of a max pool, a ReLU), which moves entries next to small activations by ~1e-9/|z|."""
    got = got.sum(1, keepdim=True)
    error = float((got - expected).norm() / expected.norm())
    assert error < 1e-6, error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_authors_code_on_a_vgg(seed):
    """VGG layout (convolutions, ReLU, max pool, adaptive average pool, flatten, classifier with a
    hidden layer): every AGF term (C, M, F_x, F_dx, A, the shift, the head's reweighting, the
    flattened-map M of the first classifier layer, z^B at the input) as the authors compute it."""
    model, x = _model(TinyVGG, seed), _inputs(seed)
    target = [1, 3]
    expected = official_vgg(model, x, target)
    got = relprop.explain(model, x, target=target, method="agf")
    assert_same_map(got, _authors_map(expected))


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_authors_code_on_a_residual_block(seed):
    """ResNet layout with batch norms (folded by relprop; the authors pass relevance through them
    and use the raw convolution weights, which gives the same terms for positive scales): the
    second convolution and the 1 x 1 downsample are flat, the residual sum splits in proportion."""
    model, x = _model(TinyResNet, seed), _inputs(seed + 10)
    target = [0, 2]
    expected = official_block(model, x, target)
    got = relprop.explain(model, x, target=target, method="agf")
    assert_same_map(got, _authors_map(expected))
    flat_everywhere = relprop.explain(model, x, target=target, method="agf", flat="none")
    assert not torch.allclose(flat_everywhere, got, atol=1e-6)  # the option changes the map


@pytest.mark.parametrize("cls", [TinyVGG, TinyResNet])
def test_relevance_is_conserved_from_the_head(cls, monkeypatch):
    """Every AGF layer keeps the sum of its |z| term (the shift adds a zero-sum term), z^B without
    bias conserves, and LRP-0 elsewhere: the input relevance sums to the head's ``sum x dy^_t/dx``,
    but for what the stabilisers absorb. With the authors' 1e-9 that is ~3e-6 of the head relevance's
    absolute sum here (its entries are ~1e-3); with 1e-15 in their place, rounding alone. The batch
    norms' shifts are zeroed: a shift gives an output whose inputs are all zero a share of the
    residual sum, which the |z| rule cannot pass on (the authors' code drops it alike)."""
    model, x = _model(cls, 3), _inputs(4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.zero_()
                module.running_mean.zero_()
    head = model.classifier[3] if cls is TinyVGG else model.fc
    head_input = {}
    handle = head.register_forward_hook(lambda m, i, o: head_input.setdefault("x", i[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    expected, _ = head_agf(head, head_input["x"], [1, 2])
    scale = expected.abs().sum(1)
    assert bool((expected.sum(1).abs() > 1e-3 * scale).all())  # not a vanishing total

    def lost() -> torch.Tensor:
        relevance, _ = agf_relevance(model, x, [1, 2])
        return (relevance.sum((1, 2, 3)) - expected.sum(1)).abs() / scale

    assert float(lost().max()) < 1e-5
    monkeypatch.setattr(relprop.rules.agf, "AGF_EPSILON", 1e-15)
    monkeypatch.setattr(relprop.attribution.agf, "AGF_EPSILON", 1e-15)
    assert float(lost().max()) < 1e-10


def test_batch_equals_samples():
    model, x = _model(TinyResNet, 5), _inputs(6, batch=3)
    together = relprop.explain(model, x, target=[0, 1, 3], method="agf")
    alone = torch.cat([relprop.explain(model, x[i:i + 1], target=[t], method="agf")
                       for i, t in enumerate([0, 1, 3])])
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-12)


def test_refuses_a_model_without_a_head():
    no_head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="must end in a linear or convolution layer"):
        relprop.explain(no_head.eval(), torch.rand(1, 3, 8, 8), target=0, method="agf")
    with pytest.raises(ValueError, match="flat"):
        relprop.explain(_model(TinyVGG, 0), _inputs(0), target=[0, 0], method="agf", flat="all")


# -- float32 against float64 ------------------------------------------------------------------------
def _relative_max_error(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``max |got - expected| / max |expected|`` per sample."""
    return (got.double() - expected).abs().flatten(1).amax(1) / expected.abs().flatten(1).amax(1)


def test_float32_map_is_the_float64_map_on_a_shapes_scene():
    """The shipped ``shapes_vgg`` on test scene 1, explained in float32 and as a float64 copy: the maps
    differ by float32 rounding carried through the layers, measured 4e-7 of the map's maximum (bound
    1e-5). Shifting ``C + R - mean`` with ``R`` of order 1 rounded entries of ``C`` near 1e-8 away
    (one flipped ``R != 0`` mask, 5.7e-3), and the factorisation's nearly singular normal equations
    amplified rounding."""
    from relprop.data.shapes import ShapesDataset

    model, preprocess = relprop.load_model("shapes_vgg")
    x = preprocess(ShapesDataset("test")[1].image)
    double = copy.deepcopy(model).double()
    with torch.no_grad():
        target = double(x.double()).argmax(1)
    single = relprop.explain(model, x, target=target, method="agf")
    expected = relprop.explain(double, x.double(), target=target, method="agf")
    assert single.dtype == torch.float32
    assert float(_relative_max_error(single, expected).max()) < 1e-5


@pytest.mark.parametrize("channels,positions", [(256, 64), (768, 197), (3072, 197)])
def test_float32_factorisation_where_the_heaviside_values_are_near_a_half(channels, positions):
    """One large entry makes ``t = x / max x`` small elsewhere, so ``H = sigmoid(10 t)`` is near 1/2 and
    the two representatives nearly coincide: the normal equations' condition number is ~ C / 2.
    The float32 factorisation is the float64 one of the same (rounded) inputs, rounded once: measured
    5e-8 of the maximum (bound 1e-6; solved in float32, 5e-3 to 1.4e-1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, positions, generator=g, dtype=DT)
    gradient = torch.randn(1, channels, positions, generator=g, dtype=DT) * torch.rand(1, 1, positions, generator=g,
                                                                                        dtype=DT)
    x[0, 0, 0] = gradient[0, 0, 0] = 100.0
    phi = torch.randn(1, 1, positions, generator=g, dtype=DT)
    inputs = [t.float().double() for t in (x, gradient, phi)]  # the float32 inputs, exactly
    singles = agf_rules.factorization(*(t.float() for t in inputs))
    for single, double in zip(singles, agf_rules.factorization(*inputs)):
        assert single.dtype == torch.float32
        assert float(_relative_max_error(single, double)) < 1e-6


def test_the_shift_keeps_a_small_relevance_beside_a_constant_term():
    """``delta_shift(C, R)`` with ``R`` constant where ``C != 0`` is ``C`` in real arithmetic; in float32
    it is ``C`` exactly (centring a constant gives 0), also where ``|C|`` is far below float32's
    resolution of ``R``, where the authors' ``(C + R) - mean`` (:func:`delta_shift` above) gives 0: the
    all-zero float32 maps of a head whose relevance is ~1e-13. Split into parts, the shift is the shift
    of their sum, and in float64 it is the authors'."""
    g = torch.Generator().manual_seed(1)
    c = 1e-10 * torch.randn(2, 3, 5, 5, generator=g)
    c[:, :, :2] = 0
    support = (c != 0).float()
    assert torch.equal(agf_rules.delta_shift(c, 0.7 * support), c)
    assert not bool(delta_shift(c, 0.7 * support).any())  # the authors' order of operations
    parts = [torch.rand(2, 3, 5, 5, generator=g, dtype=DT) * support.double() for _ in range(2)]
    c64, total = c.double(), parts[0] + parts[1]
    torch.testing.assert_close(agf_rules.delta_shift_parts(c64, *parts), agf_rules.delta_shift(c64, total),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(agf_rules.delta_shift(c64, total), delta_shift(c64, total), rtol=0, atol=1e-15)
