"""The rules of transformers' operation kinds (layer norm, softmax, product of two tensors), each
against an independent float64 reference: explicit centring matrices, the softmax Jacobian from
autograd, and explicit sums over the summands of a matrix product (tests/test_rules_other_kinds.py
style: the relevance recorded at an operation's output is the rule's input, the relevance recorded
at its producers is its result). Catches: a layer-norm rule that lets beta or the scale take
relevance, a stabiliser in the wrong place, a softmax rule with the wrong sign or sum, a product
rule that does not halve or gives the attention probabilities relevance, a composite that routes a
kind to the wrong rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from relprop.composite import Composite, by_type
from relprop.rules import (Epsilon, LayerNormEpsilon, MatMulUniform, MatMulValue, Rule, SoftmaxConstant,
                           SoftmaxTaylor)

DOUBLE = torch.float64


def _explain(model: nn.Module, x: torch.Tensor, record: list[str], *rules: tuple) -> dict[str, torch.Tensor]:
    composite = Composite([*rules, (by_type("conv", "linear"), Epsilon(1e-9))], name="reference", norm_epsilon=0.0)
    _, recorded = relprop.Explainer(model.double().eval(), composite).explain(x, target=1, record=record)
    return recorded


def _stab(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


# -- layer norm ----------------------------------------------------------------------------------
class _Norm(nn.Module):
    """Linear, layer norm over the last dimension (module or functional with the module's own
    parameters read in its forward), linear head on the flattened tokens."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5, eps=1e-3)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0, 0.3)
        self.head = nn.Linear(3 * 5, 3)
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.functional:
            h = F.layer_norm(h, (5,), self.norm.weight, self.norm.bias, 1e-3)
        else:
            h = self.norm(h)
        return self.head(torch.flatten(h, 1))


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_layer_norm_rule(functional, epsilon):
    torch.manual_seed(0)
    model = _Norm(functional).double()
    x = torch.randn(2, 3, 4, dtype=DOUBLE)
    name = "layer_norm" if functional else "norm"
    rec = _explain(model, x, ["a", name], (by_type("layernorm"), LayerNormEpsilon(epsilon)))
    with torch.no_grad():
        h = model.a(x)
        y = model.norm(h)
    gamma, beta = model.norm.weight.detach(), model.norm.bias.detach()
    centring = torch.eye(5, dtype=DOUBLE) - 1.0 / 5  # c = C h, symmetric
    c = h @ centring.t()
    sigma = (c.pow(2).mean(-1, keepdim=True) + 1e-3).sqrt()
    n = c / sigma
    r = rec[name]
    r_n = gamma * n * r / _stab(y, epsilon)                      # affine step, beta absorbs
    r_c = r_n                                                    # identity on 1 / sigma
    expected = h * ((r_c / _stab(c, epsilon)) @ centring)        # centring: x_i sum_k C_ki R_k / c_k
    torch.testing.assert_close(rec["a"], expected, rtol=1e-10, atol=1e-12)
    if epsilon == 0:  # conservation up to beta's share
        torch.testing.assert_close(rec["a"].sum((1, 2)), ((y - beta) * r / y).sum((1, 2)), rtol=1e-10, atol=1e-12)


def test_layer_norm_default_is_the_same_rule():
    torch.manual_seed(1)
    model = _Norm(False).double()
    x = torch.randn(2, 3, 4, dtype=DOUBLE)
    default = _explain(model, x, ["a"])
    explicit = _explain(model, x, ["a"], (by_type("layernorm"), LayerNormEpsilon()))
    torch.testing.assert_close(default["a"], explicit["a"], rtol=0, atol=0)


# -- softmax -------------------------------------------------------------------------------------
class _Softmax(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.kind = kind
        self.softmax = nn.Softmax(dim=-1)
        self.head = nn.Linear(3 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.kind == "module":
            s = self.softmax(h)
        elif self.kind == "method":
            s = h.softmax(-1)
        else:
            s = F.softmax(h, dim=-1)
        return self.head(torch.flatten(s, 1))


@pytest.mark.parametrize("kind", ["module", "method", "function"])
def test_softmax_taylor_rule(kind):
    torch.manual_seed(2)
    model = _Softmax(kind).double()
    x = torch.randn(2, 3, 4, dtype=DOUBLE)
    name = {"module": "softmax", "method": "softmax", "function": "softmax"}[kind]
    rec = _explain(model, x, ["a", name], (by_type("softmax"), SoftmaxTaylor()))
    with torch.no_grad():
        h = model.a(x)
        s = h.softmax(-1)
    r = rec[name]
    expected = torch.empty_like(h)
    for b in range(2):
        for t in range(3):  # x * J^T (R / s): the Taylor expansion at x (Prop. 3.1), from autograd's Jacobian
            jac = torch.autograd.functional.jacobian(lambda v: v.softmax(-1), h[b, t])
            expected[b, t] = h[b, t] * (jac.t() @ (r[b, t] / s[b, t]))
    torch.testing.assert_close(rec["a"], expected, rtol=1e-10, atol=1e-12)
    # what the rule absorbs: sum_j (x_j - sum_i s_i x_i) R_j is what remains
    remains = ((h - (s * h).sum(-1, keepdim=True)) * r).sum(-1)
    torch.testing.assert_close(rec["a"].sum(-1), remains, rtol=1e-10, atol=1e-12)


def test_softmax_constant_rule_gives_the_logits_nothing():
    torch.manual_seed(3)
    model = _Softmax("module").double()
    x = torch.randn(2, 3, 4, dtype=DOUBLE)
    rec = _explain(model, x, ["a", "softmax"])  # the default: CP-LRP's rule
    assert rec["softmax"].abs().sum() > 0
    assert torch.equal(rec["a"], torch.zeros_like(rec["a"]))
    explicit = _explain(model, x, ["a"], (by_type("softmax"), SoftmaxConstant()))
    assert torch.equal(explicit["a"], rec["a"])


# -- products of two tensors ---------------------------------------------------------------------
class _Product(nn.Module):
    """``O = A @ V`` with ``A`` (3 x 4) from one linear layer, through a softmax and a dropout when
    ``attention``, and ``V`` (4 x 5) from another."""

    def __init__(self, attention: bool, how: str = "matmul") -> None:
        super().__init__()
        self.a = nn.Linear(2, 12)
        self.v = nn.Linear(2, 20)
        self.attention = attention
        self.drop = nn.Dropout(0.5)
        self.how = how
        self.head = nn.Linear(15, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).view(-1, 3, 4)
        if self.attention:
            a = self.drop(torch.softmax(a, dim=-1))
        v = self.v(x).view(-1, 4, 5)
        if self.how == "matmul":
            o = torch.matmul(a, v)
        elif self.how == "operator":
            o = a @ v
        elif self.how == "einsum":
            o = torch.einsum("bji,bip->bjp", a, v)
        else:
            o = torch.bmm(a, v)
        return self.head(torch.flatten(o, 1))


def _summands(model: _Product, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        a = model.a(x).view(-1, 3, 4)
        if model.attention:
            a = a.softmax(-1)
        v = model.v(x).view(-1, 4, 5)
    return a, v, torch.einsum("bji,bip->bjip", a, v)  # the summand A_ji V_ip of O_jp


@pytest.mark.parametrize("how", ["matmul", "operator", "bmm", "einsum"])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_matmul_uniform_rule(how, epsilon):
    torch.manual_seed(4)
    model = _Product(False, how).double()
    x = torch.randn(2, 2, dtype=DOUBLE)
    name = {"matmul": "matmul", "operator": "matmul", "bmm": "bmm", "einsum": "einsum"}[how]
    rec = _explain(model, x, ["a", "v", name], (by_type("matmul"), MatMulUniform(epsilon)))
    a, v, z = _summands(model, x)
    share = z * (rec[name] / (2 * _stab(z.sum(2), epsilon))).unsqueeze(2)  # R_jp z_jip / (2 stab(O_jp))
    torch.testing.assert_close(rec["a"].view(-1, 3, 4), share.sum(3), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rec["v"].view(-1, 4, 5), share.sum(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_matmul_value_rule_treats_attention_as_constant(epsilon):
    torch.manual_seed(5)
    model = _Product(True).double()
    x = torch.randn(2, 2, dtype=DOUBLE)
    rec = _explain(model, x, ["a", "v", "drop", "matmul"], (by_type("matmul"), MatMulValue(epsilon)),
                   (by_type("softmax"), SoftmaxTaylor()))
    a, v, z = _summands(model, x)
    share = z * (rec["matmul"] / _stab(z.sum(2), epsilon)).unsqueeze(2)
    torch.testing.assert_close(rec["v"].view(-1, 4, 5), share.sum(1), rtol=1e-10, atol=1e-12)
    assert torch.equal(rec["drop"], torch.zeros_like(rec["drop"]))  # nothing to the probabilities
    assert torch.equal(rec["a"], torch.zeros_like(rec["a"]))
    # without an attention factor the rule is the uniform one
    plain = _Product(False).double()
    got = _explain(plain, x, ["a", "v"], (by_type("matmul"), MatMulValue(epsilon)))
    want = _explain(plain, x, ["a", "v"], (by_type("matmul"), MatMulUniform(epsilon)))
    torch.testing.assert_close(got["a"], want["a"], rtol=0, atol=0)
    torch.testing.assert_close(got["v"], want["v"], rtol=0, atol=0)


def test_rap_value_mix_is_raps_linear_rule_on_the_mix():
    """RAP's attention rule: with ``A`` constant, ``O = A V`` is the linear map ``W = A (x) I`` on the
    flattened values, and the rule equals RAP's linear rule on it with the values' signs split
    (``C(V) = V+ W^T (R / z+) + V- W^T (R / (z+ + z-))``, then the uniform shift over the sample)."""
    from relprop.rules.rap import RAPValueMix

    torch.manual_seed(6)
    model = _Product(True).double()
    x = torch.randn(2, 2, dtype=DOUBLE)
    rec = _explain(model, x, ["a", "v", "drop", "matmul"], (by_type("matmul"), RAPValueMix()))
    a, v, _ = _summands(model, x)
    for s in range(2):
        w = torch.kron(a[s], torch.eye(5, dtype=DOUBLE))  # O.flatten() = W @ V.flatten()
        vf, r = v[s].flatten(), rec["matmul"][s].flatten()
        positive, negative = vf.clamp(min=0), (-vf).clamp(min=0)
        zp, zn = w @ positive, w @ negative
        def sd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # 0 where b is 0
            return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), 0.0)
        c = positive * (w.T @ sd(r, zp)) + negative * (w.T @ sd(r, zp + zn))
        nonzero = (c != 0).to(DOUBLE)
        expected = c - nonzero * (c.sum() - r.sum()) / nonzero.sum()
        torch.testing.assert_close(rec["v"][s].flatten(), expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(rec["drop"], torch.zeros_like(rec["drop"]))


def test_rap_value_mix_stays_finite_where_masked_probabilities_underflow():
    """Swin's shifted windows mask attention logits with -100: in float32 the probabilities are
    denormal (about 4e-44), and where such a probability alone meets a positive value, R / z+ would
    overflow. The rule computes in float64: finite, each value's share at most the output's |R|, and
    the same as the float64 rule on the same inputs."""
    from types import SimpleNamespace

    from relprop.rules.rap import RAPValueMix

    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(1, 2, 4, 4, generator=gen)
    logits[..., 3] = -100.0  # the last key masked for every query
    p = logits.softmax(-1)
    assert 0 < float(p[..., 3].max()) < torch.finfo(torch.float32).tiny
    v = -torch.rand(1, 2, 4, 3, generator=gen)
    v[..., 3, :] = 1.0  # the only positive values sit at the masked key
    r = torch.randn(1, 2, 4, 3, generator=gen)
    step = SimpleNamespace(inputs=[p, v], op=SimpleNamespace(attention=0))
    shares = RAPValueMix().relevance(step, r)
    assert shares[0] is None and bool(shares[1].isfinite().all())
    step64 = SimpleNamespace(inputs=[p.double(), v.double()], op=SimpleNamespace(attention=0))
    torch.testing.assert_close(shares[1], RAPValueMix().relevance(step64, r.double())[1].float())
    assert float(shares[1].abs().sum()) < 10 * float(r.abs().sum())


def test_rap_sum_ignores_a_constant_term_and_splits_tensor_terms_by_value():
    from relprop.rules.rap import RAPSum

    class _Sums(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)
            self.offset = nn.Parameter(torch.randn(4))
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shifted = self.a(x) + self.offset  # a constant term: ignored
            return self.head(shifted + self.b(x))

    torch.manual_seed(7)
    model = _Sums().double()
    x = torch.randn(2, 3, dtype=DOUBLE)
    rec = _explain(model, x, ["a", "b", "add", "add_1"], (by_type("add"), RAPSum()))
    torch.testing.assert_close(rec["a"], rec["add"], rtol=0, atol=0)  # all of R to the tensor term
    with torch.no_grad():
        terms = (model.a(x) + model.offset, model.b(x))
    total = terms[0] + terms[1]
    torch.testing.assert_close(rec["add"], terms[0] * rec["add_1"] / total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rec["b"], terms[1] * rec["add_1"] / total, rtol=1e-10, atol=1e-12)
    # by magnitude: each share at most |R|, the sum kept
    rec = _explain(model, x, ["a", "b", "add", "add_1"], (by_type("add"), RAPSum(absolute=True)))
    magnitude = terms[0].abs() + terms[1].abs()
    torch.testing.assert_close(rec["add"], terms[0].abs() * rec["add_1"] / magnitude, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rec["b"], terms[1].abs() * rec["add_1"] / magnitude, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rec["a"], rec["add"], rtol=0, atol=0)


def test_rap_splits_residual_sums_by_magnitude_on_transformers_only():
    """``add="auto"``: the official signed split on a network without layer norms, the magnitude split
    on one with them; naming either gives the same map as the default where it is the default."""
    from relprop.attribution.rap import residual_rule
    from relprop.propagate import propagator_for

    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=8, mlp_dim=16, num_classes=3).double().eval()
    cnn = torchvision.models.resnet18(num_classes=3).double().eval()
    assert residual_rule("auto", propagator_for(vit).graph).absolute
    assert not residual_rule("auto", propagator_for(cnn).graph).absolute
    with pytest.raises(ValueError, match="add must be"):
        residual_rule("signed", propagator_for(cnn).graph)
    torch.manual_seed(9)
    nn.init.normal_(vit.heads.head.weight)
    x = torch.randn(2, 3, 16, 16, dtype=DOUBLE)
    for method in ("rap", "rsp"):
        auto = relprop.explain(vit, x, target=1, method=method)
        torch.testing.assert_close(auto, relprop.explain(vit, x, target=1, method=method, add="absolute"))
        assert not torch.allclose(auto, relprop.explain(vit, x, target=1, method=method, add="proportional"))


def test_attention_factor_is_marked_through_identities():
    from relprop.propagate import propagator_for

    graph = propagator_for(_Product(True).double().eval()).graph
    op = graph.nodes[graph.find("matmul")].op
    assert op.attention == 0
    plain = propagator_for(_Product(False).double().eval()).graph
    assert plain.nodes[plain.find("matmul")].op.attention is None


@pytest.mark.parametrize("rule", [LayerNormEpsilon(), SoftmaxTaylor(), SoftmaxConstant(), MatMulUniform(),
                                  MatMulValue()])
def test_rules_declare_their_kinds(rule: Rule):
    assert rule.kinds and set(rule.kinds) <= set(relprop.ops.KINDS)


def test_normalize_passes_relevance():
    """``F.normalize`` with its norm held constant is a division by a constant: the relevance at its
    input is the relevance at its output (CP-LRP and AttnLRP alike)."""

    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.head = nn.Linear(2 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(F.normalize(self.a(x), dim=-1), 1))

    torch.manual_seed(6)
    model = Normalised().double().eval()
    x = torch.randn(2, 2, 3, dtype=DOUBLE)
    for method in ("cp-lrp", "attnlrp"):
        _, rec = relprop.Explainer(model, method).explain(x, target=1, record=["a", "normalize"])
        assert rec["a"].abs().sum() > 0
        torch.testing.assert_close(rec["a"], rec["normalize"], rtol=0, atol=0)
