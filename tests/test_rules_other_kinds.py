"""The rules of the operation kinds other than affine layers (pooling, resizing, sums, products,
concatenation, batch norm), each against an independent float64 reference written with explicit
windows, basis vectors or the closed formula, in the style of tests/test_rules.py.

Each test runs the rule inside a small model through ``Explainer.explain(..., record=...)``: the
relevance recorded at the operation's output is the rule's input, the relevance recorded at the
operation's input is its result. Catches: the wrong window receiving a max-pool's relevance, a
missing stabiliser or a wrong divisor in the proportional rules, a sum rule that does not conserve
or loses the sign of a subtracted term, a gate that receives relevance, concatenation split along
the wrong dimension, a composite that routes a kind to the wrong rule."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from relprop.composite import Composite, by_type
from relprop.rules import AbsoluteSum, Epsilon, Rule, ZPlus

DOUBLE = torch.float64


def _explain(model: nn.Module, x: torch.Tensor, record: list[str], **composite_options) -> dict[str, torch.Tensor]:
    composite = Composite([(by_type("conv", "linear"), Epsilon(1e-9))], name="reference", **composite_options)
    _, recorded = relprop.Explainer(model.double().eval(), composite).explain(x, target=1, record=record)
    return recorded


class _Head(nn.Module):
    """``op`` on the input, then a linear layer on the flattened result."""

    def __init__(self, op: nn.Module, features: int) -> None:
        super().__init__()
        self.op = op
        self.fc = nn.Linear(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.op(x), 1))


def _windows(h: int, w: int, k: int, s: int):
    for i, j in itertools.product(range((h - k) // s + 1), range((w - k) // s + 1)):
        yield i, j, [(i * s + a, j * s + b) for a in range(k) for b in range(k)]


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1)])
def test_max_pool_winner_takes_all(k, s):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 6, dtype=DOUBLE)
    out = (6 - k) // s + 1
    rec = _explain(_Head(nn.MaxPool2d(k, s), 2 * out * out), x, ["input", "op"])
    r_out, expected = rec["op"], torch.zeros_like(x)
    for b, c in itertools.product(range(2), range(2)):
        for i, j, cells in _windows(6, 6, k, s):
            winner = max(cells, key=lambda p: x[b, c, p[0], p[1]].item())
            expected[b, c, winner[0], winner[1]] += r_out[b, c, i, j]
    torch.testing.assert_close(rec["input"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1)])
def test_max_pool_proportional(k, s):
    torch.manual_seed(1)
    x = torch.rand(2, 2, 6, 6, dtype=DOUBLE) + 0.1
    out = (6 - k) // s + 1
    rec = _explain(_Head(nn.MaxPool2d(k, s), 2 * out * out), x, ["input", "op"], maxpool="proportional",
                   norm_epsilon=0.0)
    r_out, expected = rec["op"], torch.zeros_like(x)
    for b, c in itertools.product(range(2), range(2)):
        for i, j, cells in _windows(6, 6, k, s):
            total = sum(x[b, c, p, q] for p, q in cells)
            for p, q in cells:
                expected[b, c, p, q] += x[b, c, p, q] * r_out[b, c, i, j] / total
    torch.testing.assert_close(rec["input"], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("epsilon", [0.0, 0.5])
def test_average_pool_proportional(epsilon):
    torch.manual_seed(2)
    x = torch.randn(2, 2, 4, 4, dtype=DOUBLE)
    rec = _explain(_Head(nn.AvgPool2d(2), 8), x, ["input", "op"], norm_epsilon=epsilon)
    r_out, expected = rec["op"], torch.zeros_like(x)
    for b, c in itertools.product(range(2), range(2)):
        for i, j, cells in _windows(4, 4, 2, 2):
            z = sum(x[b, c, p, q] for p, q in cells) / 4
            stab = z + epsilon * (1.0 if z >= 0 else -1.0)
            for p, q in cells:
                expected[b, c, p, q] += x[b, c, p, q] / 4 * r_out[b, c, i, j] / stab
    torch.testing.assert_close(rec["input"], expected, rtol=1e-10, atol=1e-12)


def test_bilinear_resize_proportional_with_a_dense_jacobian():
    torch.manual_seed(3)
    x = torch.rand(1, 1, 3, 3, dtype=DOUBLE) + 0.1
    resize = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    rec = _explain(_Head(resize, 36), x, ["input", "op"], norm_epsilon=0.0)
    # the Jacobian, column by column, from the resize of each basis image
    basis = torch.eye(9, dtype=DOUBLE).view(9, 1, 3, 3)
    jacobian = F.interpolate(basis, scale_factor=2, mode="bilinear", align_corners=False).view(9, 36).t()
    z = jacobian @ x.view(9)
    expected = x.view(9) * (jacobian.t() @ (rec["op"].view(36) / z))
    torch.testing.assert_close(rec["input"].view(9), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rec["input"].sum(), rec["op"].sum(), rtol=1e-10, atol=1e-12)  # conserved


class _Sum(nn.Module):
    def __init__(self, subtract: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2 * 9, 3)
        self.subtract = subtract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.a(x) - self.b(x) if self.subtract else self.a(x) + self.b(x) + 0.25
        return self.fc(torch.flatten(s, 1))


@pytest.mark.parametrize("subtract", [False, True])
@pytest.mark.parametrize("rule", ["proportional", "equal", "absolute"])
def test_sum_rules(rule, subtract):
    torch.manual_seed(4)
    model = _Sum(subtract).double()
    x = torch.randn(2, 2, 3, 3, dtype=DOUBLE)
    name = "sub" if subtract else "add_1"
    rec = _explain(model, x, ["a", "b", name], add=rule, norm_epsilon=0.0)
    with torch.no_grad():
        a, b = model.a(x), model.b(x)
    sign = -1.0 if subtract else 1.0
    constant = 0.0 if subtract else 0.25
    r = rec[name]
    if rule == "proportional":
        total = a + sign * b + constant
        want_a, want_b = a * r / total, sign * b * r / total
    elif rule == "equal":
        want_a = want_b = r / 2
    else:  # (a + b) + 0.25 is two sums: the constant absorbs its share at the second
        r = r * (a + sign * b).abs() / ((a + sign * b).abs() + abs(constant))
        total = a.abs() + b.abs()
        want_a, want_b = a.abs() * r / total, b.abs() * r / total
    torch.testing.assert_close(rec["a"], want_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rec["b"], want_b, rtol=1e-10, atol=1e-12)


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.signal = nn.Conv2d(2, 2, 1)
        self.gate = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(18, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.signal(x) * torch.sigmoid(self.gate(x)), 1))


def test_gated_product_sends_everything_to_the_signal():
    torch.manual_seed(5)
    rec = _explain(_Gated(), torch.randn(2, 2, 3, 3, dtype=DOUBLE), ["signal", "gate", "mul"])
    torch.testing.assert_close(rec["signal"], rec["mul"], rtol=0, atol=0)
    assert torch.count_nonzero(rec["gate"]) == 0


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 1, 1)
        self.b = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], dim=1), 1))


def test_concatenation_splits_along_its_dimension():
    torch.manual_seed(6)
    rec = _explain(_Concat(), torch.randn(2, 2, 3, 3, dtype=DOUBLE), ["a", "b", "cat"])
    torch.testing.assert_close(rec["a"], rec["cat"][:, :1], rtol=0, atol=0)
    torch.testing.assert_close(rec["b"], rec["cat"][:, 1:], rtol=0, atol=0)


def test_unfolded_batch_norm_epsilon_rule():
    torch.manual_seed(7)
    bn = nn.BatchNorm2d(2)  # first in the model: nothing to fold it into
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.2, 0.2)
    model = _Head(bn, 2 * 9).double()
    x = torch.randn(2, 2, 3, 3, dtype=DOUBLE)
    rec = _explain(model, x, ["input", "op"], batchnorm="epsilon", epsilon_batchnorm=0.1)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().view(1, -1, 1, 1)
    with torch.no_grad():
        y = model.op(x)
    expected = scale * x * rec["op"] / (y + 0.1 * torch.where(y >= 0, 1.0, -1.0).to(DOUBLE))
    torch.testing.assert_close(rec["input"], expected, rtol=1e-10, atol=1e-12)
    identity = _explain(model, x, ["input", "op"])  # default: passes unchanged
    torch.testing.assert_close(identity["input"], identity["op"], rtol=0, atol=0)


def test_composite_refuses_what_is_not_a_rule_for_its_place():
    with pytest.raises(ValueError, match="not a rule"):
        Composite([(by_type("conv"), lambda layer, x, z, r, nonnegative: r)])
    with pytest.raises(ValueError, match="add=.*not for add"):
        Composite([], add=ZPlus())
    with pytest.raises(ValueError, match="maxpool must be one of"):
        Composite([], maxpool="largest")


def test_a_rule_object_as_shorthand_and_as_entry_agree():
    torch.manual_seed(8)
    model = _Sum().double().eval()
    x = torch.randn(2, 2, 3, 3, dtype=DOUBLE)
    rules = [(by_type("conv", "linear"), Epsilon(1e-9))]
    shorthand = relprop.explain(model, x, 1, method=Composite(rules, add="absolute"))
    as_object = relprop.explain(model, x, 1, method=Composite(rules, add=AbsoluteSum()))
    as_entry = relprop.explain(model, x, 1, method=Composite([(by_type("add"), AbsoluteSum())] + rules))
    torch.testing.assert_close(shorthand, as_object, rtol=0, atol=0)
    torch.testing.assert_close(shorthand, as_entry, rtol=0, atol=0)


def test_every_operation_kind_has_a_rule_or_needs_an_entry():
    """Every built-in kind but the input and affine layers has a default rule of that kind."""
    from relprop.composite import DEFAULT_RULES
    from relprop.ops import KINDS

    assert set(DEFAULT_RULES) == set(KINDS) - {"input", "affine"}
    for kind, rule in DEFAULT_RULES.items():
        assert isinstance(rule, Rule) and kind in rule.kinds
