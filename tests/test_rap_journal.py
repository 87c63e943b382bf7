"""``rap-journal``: Relative Attributing Propagation, journal version (Nam, Choi and Lee [Nam-RAP-Journal], Eq. 5-11).

References are independent of the code under test: hand-computed numbers on 2x2 layers (the paper's
Fig. 2), and for random layers the dense per-sample matrix ``M`` of each torch module (from its
Jacobian, ``tests/dense_reference.py``) with the rules written on the contributions
``z_ij = M_ji x_i``. A whole small network is re-derived layer by layer from the torch modules.
Everything runs in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relprop
from relprop.ops import Affine
from relprop.propagate import propagator_for
from relprop.rules.rap_journal import BatchNormFlow, FirstPropagation, Flow, bias_effect

from dense_reference import dense  # noqa: E402

DT = torch.float64
KAPPA = {"normal": 1.0, "inversion": -1.0}


# -- helpers ---------------------------------------------------------------------------------------
def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def signed(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=seeded(seed), dtype=DT)


def module_of(make, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make().to(DT).eval()


def sd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` where ``b != 0``, else 0."""
    nz = b != 0
    return torch.where(nz, a / torch.where(nz, b, torch.ones_like(b)), torch.zeros_like(a))


def psi0(c: torch.Tensor) -> torch.Tensor:
    """Eq. 6 on one flattened sample: shift the nonzero entries uniformly so that they sum to 0."""
    nz = (c != 0).to(c.dtype)
    return c - nz * c.sum() / nz.sum() if nz.sum() > 0 else c


def per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-12):
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol + rtol * scale)


def assert_zero_sum(t: torch.Tensor, scale: torch.Tensor | float, rtol: float = 1e-9):
    """Each sample of ``t`` sums to 0 up to ``rtol`` times ``scale`` (e.g. the sample's total |R|)."""
    sums = per_sample(t).abs()
    bound = rtol * (torch.as_tensor(scale, dtype=t.dtype) + 1e-300)
    assert bool((sums <= bound).all()), f"sums {sums.tolist()} exceed {bound.tolist()}"


# -- dense references of the rules ----------------------------------------------------------------------
def ref_first(M: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Eq. 5 for one sample: ``R_i = sum_j (z+_ij / sum z+_j - z-_ij / sum z-_j) R_j``."""
    z = M * x[None, :]
    p, n = z.clamp(min=0), z.clamp(max=0)
    return (p * sd(r, p.sum(1))[:, None]).sum(0) - (n * sd(r, n.sum(1))[:, None]).sum(0)


def ref_flow(M: torch.Tensor, x: torch.Tensor, r: torch.Tensor, flow: str, effect: torch.Tensor) -> torch.Tensor:
    """Eq. 10 then Eq. 7 (normal) or Eq. 8 (inversion) for one sample, before the zero-sum step."""
    r = r - KAPPA[flow] * effect
    z = M * x[None, :]
    part = z.clamp(min=0) if flow == "normal" else z.clamp(max=0)
    out = (part * sd(r, part.sum(1))[:, None]).sum(0)
    return out if flow == "normal" else -out


def ref_bias_effect(module: nn.Module, out_shape: tuple[int, ...]) -> torch.Tensor:
    """``(b_c - mean_c b) / (w h)`` for every output unit (``w h = 1`` for a linear layer on a feature
    vector; the number of tokens for one on tokens)."""
    b = module.bias.detach()
    centred = b - b.mean()
    if isinstance(module, nn.Linear):
        tokens = 1
        for s in out_shape[:-1]:
            tokens *= s
        return (centred / tokens).expand(out_shape).flatten()
    area = 1
    for s in out_shape[1:]:
        area *= s
    return (centred.view(-1, 1, 1).expand(out_shape) / area).flatten()


def ref_bn(bn: nn.Module, x: torch.Tensor, r: torch.Tensor, flow: str, term: str = "scaled") -> torch.Tensor:
    """Eq. 11 for a batch: ``R - kappa T``, ``S' = (BN(z) - z) [R != 0]``; ``T = (S' - mean S') / (w h c)``
    ("literal") or ``(S' - mean S') sum|R| / sum(|z'| + |S'|)`` ("scaled", ``z' = z [R != 0]``)."""
    out = torch.empty_like(r)
    with torch.no_grad():
        y = bn(x)
    for s in range(x.shape[0]):
        holds = r[s] != 0
        shift = (y[s] - x[s]) * holds
        if term == "literal":
            scale = 1.0 / shift.numel()
        else:
            scale = r[s].abs().sum() / ((x[s] * holds).abs() + shift.abs()).sum()
        out[s] = r[s] - KAPPA[flow] * (shift - shift.mean()) * scale
    return out


# -- 1. the paper's motivational example (Fig. 2), by hand --------------------------------------------
def fig2_model() -> nn.Module:
    """Two hidden neurons with ``w11 = 2, w12 = -1, w21 = -1, w22 = 3`` (``w_ij``: i in layer l, j in l+1)
    and an output that z1 promotes (+3) and z2 inhibits (-1)."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False)).to(DT).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, -1.0], [-1.0, 3.0]]))  # weight[j, i] = w_ij
        model[2].weight.copy_(torch.tensor([[3.0, -1.0], [0.5, 0.5]]))
    return model


def test_fig2_motivational_example_by_hand():
    """m = (2, 1): z = (3, 1), f = 3*3 - 1*1 = 8. First propagation: R(l+1) = (8, -8). Normal flow:
    R11 = 4/4 * 8 = 8, R22 = 3/3 * (-8) = -8. Inversion flow: R21 = -(-2/-2) * (-8) = +8 (m1 inhibits
    the negatively relevant z2), R12 = -(-1/-1) * 8 = -8. Final: (16, -16)."""
    model = fig2_model()
    x = torch.tensor([[2.0, 1.0]], dtype=DT)
    explainer = relprop.Explainer(model, "rap-journal")
    final, rec = explainer.explain(x, target=0, record=["1", "input@normal", "input@inversion"])
    assert_close(rec["1"], torch.tensor([[16.0, -16.0]], dtype=DT))  # unchanged by the ReLU node
    assert_close(rec["input@normal"], torch.tensor([[8.0, -8.0]], dtype=DT))
    assert_close(rec["input@inversion"], torch.tensor([[8.0, -8.0]], dtype=DT))
    assert_close(final, torch.tensor([[16.0, -16.0]], dtype=DT))
    first = relprop.Explainer(model, "rap-journal", flow="normal").explain(x, target=0, record=["1"])[1]["1"]
    assert_close(first, torch.tensor([[8.0, -8.0]], dtype=DT))


def test_first_propagation_by_hand():
    """Contributions (2, -2, -3) with R = 6: the positive one takes 6, the negatives -6 * (0.4, 0.6)."""
    lin = nn.Linear(3, 2, bias=True).to(DT)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0, 3.0], [1.0, 1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([5.0, 0.0]))  # not used by Eq. 5
    layer = Affine.from_module(lin, "fc")
    x = torch.tensor([[1.0, 2.0, -1.0]], dtype=DT)
    r = torch.tensor([[6.0, 0.0]], dtype=DT)
    z = layer.apply(x, layer.weight, layer.bias)
    for center in (True, False):
        out = FirstPropagation(center)(layer, x, z, r, False)
        assert_close(out, torch.tensor([[6.0, -2.4, -3.6]], dtype=DT))


def test_batchnorm_rule_by_hand():
    """BN as y = 2x + 1 on (1, 2, 3): S = (2, 3, 4); R = (1, 0, -1) masks S to (2, 0, 4), mean 2,
    S' - mean = (0, -2, 2), divided by 3 units."""
    bn = nn.BatchNorm1d(3).to(DT).eval()
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=DT)
    with torch.no_grad():
        y = bn(x)
    assert_close(y, torch.tensor([[3.0, 5.0, 7.0]], dtype=DT))
    r = torch.tensor([[1.0, 0.0, -1.0]], dtype=DT)
    assert_close(BatchNormFlow("normal", "literal")(None, x, y, r), torch.tensor([[1.0, 2 / 3, -5 / 3]], dtype=DT))
    assert_close(BatchNormFlow("inversion", "literal")(None, x, y, r), torch.tensor([[1.0, -2 / 3, -1 / 3]], dtype=DT))
    # scaled (default): the same centred shift times sum|R| / sum(|z'| + |S'|) = 2 / ((1 + 2) + (3 + 4))
    assert_close(BatchNormFlow("normal")(None, x, y, r), torch.tensor([[1.0, 0.4, -1.4]], dtype=DT))
    assert_close(BatchNormFlow("inversion")(None, x, y, r), torch.tensor([[1.0, -0.4, -0.6]], dtype=DT))
    assert_close(BatchNormFlow("normal", "off")(None, x, y, r), r)
    with pytest.raises(ValueError, match="bn_term"):
        BatchNormFlow("normal", "paper")


def test_bias_effect_by_hand():
    """Biases (1, 3) on 2 x 2 feature maps: mean 2, so (-1, 1) / 4 on every unit of each map."""
    conv = nn.Conv2d(1, 2, 1).to(DT)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([1.0, 3.0]))
    layer = Affine.from_module(conv, "c")
    r = torch.zeros(1, 2, 2, 2, dtype=DT)
    effect = bias_effect(layer, r).expand_as(r)
    expected = torch.stack([torch.full((2, 2), -0.25), torch.full((2, 2), 0.25)])[None].to(DT)
    assert_close(effect, expected)
    lin = nn.Linear(2, 3).to(DT)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([1.0, 2.0, 6.0]))
    assert_close(bias_effect(Affine.from_module(lin, "l"), torch.zeros(1, 3, dtype=DT)).expand(1, 3),
                 torch.tensor([[-2.0, -1.0, 3.0]], dtype=DT))


# -- 2. per-layer rules against dense references --------------------------------------------------------
LAYERS = {
    "linear": (lambda: nn.Linear(9, 6), (9,)),
    "conv3x3-s2-p1": (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 7, 7)),
    "conv1x1": (lambda: nn.Conv2d(4, 3, 1), (4, 5, 5)),
    "depthwise": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 5, 5)),
    "linear-tokens": (lambda: nn.Linear(9, 6), (5, 9)),
}


@pytest.mark.parametrize("nonnegative", [True, False], ids=["nonneg", "signed"])
@pytest.mark.parametrize("flow", ["normal", "inversion"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_flow_rule_matches_dense_reference(name, flow, nonnegative):
    make, in_shape = LAYERS[name]
    module = module_of(make, 3)
    with torch.no_grad():
        module.bias.copy_(signed(tuple(module.bias.shape), 4))
    M, _ = dense(module, in_shape)
    x = signed((2, *in_shape), 13)
    if nonnegative:
        x = x.clamp(min=0)
    with torch.no_grad():
        z = module(x)
    r = signed(tuple(z.shape), 14)
    effect = ref_bias_effect(module, tuple(z.shape[1:]))
    layer = Affine.from_module(module, "layer")
    for bias in (True, False):
        for center in (True, False):
            out = Flow(flow, bias, center)(layer, x, z, r, nonnegative)
            assert out.shape == x.shape
            for s in range(2):
                expected = ref_flow(M, x[s].flatten(), r[s].flatten(), flow, effect if bias else 0 * effect)
                assert_close(out[s].flatten(), psi0(expected) if center else expected)
            if center:
                assert_zero_sum(out, per_sample(out.abs()))


@pytest.mark.parametrize("nonnegative", [True, False], ids=["nonneg", "signed"])
@pytest.mark.parametrize("name", ["linear", "conv3x3-s2-p1"])
def test_first_propagation_matches_dense_reference(name, nonnegative):
    make, in_shape = LAYERS[name]
    module = module_of(make, 5)
    M, _ = dense(module, in_shape)
    x = signed((2, *in_shape), 15)
    if nonnegative:
        x = x.clamp(min=0)
    with torch.no_grad():
        z = module(x)
    r = signed(tuple(z.shape), 16)
    out = FirstPropagation(center=False)(Affine.from_module(module, "l"), x, z, r, nonnegative)
    for s in range(2):
        assert_close(out[s].flatten(), ref_first(M, x[s].flatten(), r[s].flatten()))


def test_first_propagation_signs_follow_contributions():
    """Eq. 5-6: for a positive logit each input's relevance has the sign of its contribution z_it,
    and the relevance sums to 0 (each sample here has contributions of both signs)."""
    model = module_of(lambda: nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4)), 6)
    x = signed((3, 6), 18)
    with torch.no_grad():
        h = model[1](model[0](x))
        logits = model[2](h)
    t = logits.argmax(1)
    assert bool((logits.gather(1, t[:, None]) > 0).all())
    contributions = h * model[2].weight.detach()[t]
    assert bool(((contributions > 0).any(1) & (contributions < 0).any(1)).all())
    _, rec = relprop.Explainer(model, "rap-journal", flow="normal").explain(x, target=t, record=["1"])
    rel = rec["1"]
    assert torch.equal(rel.sign(), contributions.sign())
    assert_zero_sum(rel, per_sample(rel.abs()))


# -- 3. a small network, re-derived layer by layer ------------------------------------------------------
def chain_model() -> nn.Module:
    model = module_of(lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(80, 12), nn.ReLU(), nn.Linear(12, 5)), 8)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(signed((4,), 31))
        bn.running_var.copy_(signed((4,), 32).abs() + 0.3)
        bn.weight.copy_(signed((4,), 33))
        bn.bias.copy_(signed((4,), 34))
        for k in (0, 4, 7, 9):
            model[k].bias.copy_(0.5 * signed(tuple(model[k].bias.shape), 40 + k))
    return model


def ref_chain(model: nn.Module, x: torch.Tensor, t: torch.Tensor, flow: str, center: bool,
              bn_term: str = "scaled") -> torch.Tensor:
    """Walk ``chain_model`` backwards with the dense references (ReLU and Flatten pass relevance)."""
    acts = [x]
    with torch.no_grad():
        for m in model:
            acts.append(m(acts[-1]))
    logits = acts[-1]
    r = torch.zeros_like(logits)
    r[torch.arange(len(t)), t] = logits.gather(1, t[:, None]).flatten()
    finish = psi0 if center else (lambda c: c)
    for k in range(len(model) - 1, -1, -1):
        m, a_in = model[k], acts[k]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            M, _ = dense(m, tuple(a_in.shape[1:]))
            out = torch.empty_like(a_in)
            for s in range(len(t)):
                if k == len(model) - 1:
                    c = ref_first(M, a_in[s].flatten(), r[s].flatten())
                else:
                    effect = ref_bias_effect(m, tuple(acts[k + 1].shape[1:]))
                    c = ref_flow(M, a_in[s].flatten(), r[s].flatten(), flow, effect)
                out[s] = finish(c).view(a_in.shape[1:])
            r = out
        elif isinstance(m, nn.BatchNorm2d):
            r = ref_bn(m, a_in, r, flow, bn_term) if bn_term != "off" else r
        elif isinstance(m, nn.MaxPool2d):  # winner-take-all: the gradient of the pool
            leaf = a_in.detach().requires_grad_(True)
            r = torch.autograd.grad(m(leaf), leaf, r)[0]
        elif isinstance(m, nn.Flatten):
            r = r.view(a_in.shape)
    return r


@pytest.mark.parametrize("bn_term", ["scaled", "literal", "off"])
@pytest.mark.parametrize("center", [True, False], ids=["center", "literal"])
def test_chain_network_matches_layer_by_layer_reference(center, bn_term):
    model = chain_model()
    x = signed((2, 3, 8, 8), 24)
    with torch.no_grad():
        t = model(x).argmax(1)
    explainer = relprop.Explainer(model, "rap-journal", center=center, bn_term=bn_term)
    final, rec = explainer.explain(x, target=t, record=["input@normal", "input@inversion"])
    normal = ref_chain(model, x, t, "normal", center, bn_term)
    inversion = ref_chain(model, x, t, "inversion", center, bn_term)
    assert_close(rec["input@normal"], normal)
    assert_close(rec["input@inversion"], inversion)
    assert_close(final, normal + inversion)  # Eq. 9


def test_zero_sum_per_flow_at_every_layer_of_a_chain():
    """Eq. 6 and 9: each flow's relevance at every node sums to 0, so does the final map; on a chain
    with nonzero denominators the literal equations are zero-sum without the centring step."""
    model = chain_model()
    x = signed((2, 3, 8, 8), 25)
    names = [n.name for n in propagator_for(model, fold_batchnorm=False).graph.nodes[:-2]]
    assert names[-1] == "8"  # every node below the output layer "9"
    record = [f"{n}@{f}" for n in names for f in ("normal", "inversion", "final")]
    for center in (True, False):
        rel, rec = relprop.Explainer(model, "rap-journal", center=center).explain(x, record=record)
        assert set(rec) == set(record)
        for name in record:
            assert_zero_sum(rec[name], per_sample(rec[name].abs()))
        assert_close(rec["input@final"], rel)


def residual_model() -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(6)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(6)
            self.conv3 = nn.Conv2d(6, 6, 1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            h = self.pool(torch.relu(self.bn1(self.conv1(x))))
            g = torch.relu(self.bn2(self.conv2(h)) + h)  # a branch of one affine layer and an identity
            g = torch.relu(self.conv3(g))
            return self.fc(torch.cat([self.gap(g), self.gap(h)], dim=1).flatten(1))

    model = module_of(Net, 9)
    with torch.no_grad():
        for k, bn in enumerate((model.bn1, model.bn2)):
            bn.running_mean.copy_(signed((6,), 50 + k))
            bn.running_var.copy_(signed((6,), 60 + k).abs() + 0.5)
            bn.bias.copy_(signed((6,), 70 + k))
    return model


def test_residual_network_zero_sum_needs_the_centring_step():
    """A residual sum joins a branch of one affine layer and an identity: the inversion flow switches
    the sign of the branch's share but not of the identity's, so the literal equations leave a nonzero
    total; the centring step of Eq. 6 restores 0 per flow at the input."""
    model = residual_model()
    x = signed((2, 3, 8, 8), 26)
    record = ["input@normal", "input@inversion"]
    _, literal = relprop.Explainer(model, "rap-journal", center=False).explain(x, record=record)
    leak = per_sample(literal["input@inversion"]).abs() / per_sample(literal["input@inversion"].abs())
    assert bool((leak > 1e-3).all())
    rel, centred = relprop.Explainer(model, "rap-journal").explain(x, record=record)
    for name in record:
        assert_zero_sum(centred[name], per_sample(centred[name].abs()))
    assert_zero_sum(rel, per_sample(rel.abs()))


def test_batch_equals_samples_and_flows_add_up():
    model = residual_model()
    x = signed((3, 3, 8, 8), 27)
    t = torch.tensor([0, 3, 4])
    maps = {f: relprop.explain(model, x, target=t, method="rap-journal", flow=f)
            for f in ("final", "normal", "inversion")}
    assert_close(maps["final"], maps["normal"] + maps["inversion"])  # Eq. 9
    for s in range(3):
        single = relprop.explain(model, x[s:s + 1], target=t[s:s + 1], method="rap-journal")
        assert_close(single[0], maps["final"][s])


def test_options_switch_bias_and_batchnorm_terms():
    """Without Eq. 10 and 11 every rule is linear in R, so the logit start is the one-hot start times
    the logit; with them it is not (their terms do not scale with R)."""
    model = residual_model()
    x = signed((2, 3, 8, 8), 28)
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(1)
    z_t = logits.gather(1, t[:, None]).view(-1, 1, 1, 1)
    plain = dict(bias=False, batchnorm=False)
    logit = relprop.explain(model, x, target=t, method="rap-journal", start="logit", **plain)
    one_hot = relprop.explain(model, x, target=t, method="rap-journal", start="one-hot", **plain)
    assert_close(logit, z_t * one_hot)
    full = relprop.explain(model, x, target=t, method="rap-journal", start="one-hot")
    assert not torch.allclose(full, one_hot)
    for option in ("bias", "batchnorm"):
        only = relprop.explain(model, x, target=t, method="rap-journal", start="one-hot", **{option: False})
        assert not torch.allclose(only, full) and not torch.allclose(only, one_hot)


def test_recording_names_and_errors():
    model = residual_model()
    x = signed((2, 3, 8, 8), 29)
    explainer = relprop.Explainer(model, "rap-journal", flow="inversion")
    rel, rec = explainer.explain(x, record=["conv3", "conv3@final", "bn1@normal", "input"])
    assert set(rec) == {"conv3", "conv3@final", "bn1@normal", "input"}
    assert_close(rec["input"], rel)
    assert rec["conv3"].shape == (2, 6, 4, 4) and rec["bn1@normal"].shape == (2, 6, 8, 8)
    final = relprop.Explainer(model, "rap-journal").explain(x, record=["conv3"])[1]["conv3"]
    assert_close(rec["conv3@final"], final)
    # a container's path names its last node: both names are answered
    nested = module_of(lambda: nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Flatten(),
                                             nn.Linear(144, 3)), 10)
    _, both = relprop.Explainer(nested, "rap-journal").explain(x, record=["0", "0.1", "0@normal"])
    assert set(both) == {"0", "0.1", "0@normal"}
    assert_close(both["0"], both["0.1"])
    assert "rap-journal" in relprop.methods()
    with pytest.raises(ValueError, match="flow"):
        relprop.explain(model, x, method="rap-journal", flow="both")
    with pytest.raises(ValueError, match="start"):
        relprop.explain(model, x, method="rap-journal", start="softmax")
    with pytest.raises(ValueError, match="after '@'"):
        relprop.Explainer(model, "rap-journal").explain(x, record=["conv3@sum"])
    with pytest.raises(ValueError, match="no node"):
        relprop.Explainer(model, "rap-journal").explain(x, record=["nowhere@normal"])


# -- 4. the model zoo -----------------------------------------------------------------------------------
ZOO = [
    pytest.param("vgg16", 32, marks=pytest.mark.slow),
    ("resnet50", 64),
    ("inception_v3", 80),
    ("densenet121", 64),
    ("alexnet", 64),
    ("efficientnet_lite0", 64),
]


@pytest.mark.parametrize("name,size", ZOO)
def test_zoo_models(name, size):
    """Random-init torchvision models (EfficientNet-Lite0 with its shipped weights), float64: right
    shape, finite, zero-sum per flow and in total, batch equal to its samples."""
    torch.manual_seed(0)
    kwargs = {"efficientnet_lite0": {"image_size": size}, "inception_v3": {"init_weights": True}}.get(name, {})
    model = relprop.load_model(name, **kwargs)[0].to(DT).eval()
    x = signed((2, 3, size, size), 30)
    rel, rec = relprop.Explainer(model, "rap-journal").explain(x, record=["input@normal", "input@inversion"])
    assert rel.shape == x.shape and rel.dtype == DT and torch.isfinite(rel).all()
    assert float(rel.abs().max()) > 0
    for part in (rec["input@normal"], rec["input@inversion"], rel):
        assert torch.isfinite(part).all()
        assert_zero_sum(part, per_sample(part.abs()))
    assert_close(rel, rec["input@normal"] + rec["input@inversion"])
    with torch.no_grad():
        t = model(x).argmax(1)
    single = relprop.explain(model, x[1:], target=t[1:], method="rap-journal")
    assert_close(single[0], rel[1])
