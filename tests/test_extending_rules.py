"""The worked examples of docs/extending.md for rules: a rule for a new operation kind (a user's own
layer) and a new rule for sums. Each example is written exactly as the document shows it; the tests
check the relevance the engine produces against the rule's formula computed directly, so a rule that
the composite does not route to its operation, or an engine that drops an operation kind, fails."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import relprop
from relprop.composite import Composite, by_type
from relprop.graph import UnsupportedOperationError, register_module, unregister_module
from relprop.numerics import normalize, safe_divide
from relprop.ops import Op
from relprop.rules import Epsilon, Rule, Step


# -- example 1: a rule for a new operation kind ---------------------------------------------------
class ChannelAffine(nn.Module):
    """A user's layer: ``y = gamma * x + beta`` per channel (a frozen batch norm, as in detection
    backbones), written with a fused multiply-add that relprop has no rule for."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)
        self.beta = nn.Parameter(torch.randn(channels) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta.view(1, -1, 1, 1), x, self.gamma.view(1, -1, 1, 1))


class ChannelAffineOp(Op):
    """The operation: relprop evaluates the module's own forward; the kind names its rules."""

    kind = "channel_affine"

    def __init__(self, module: ChannelAffine) -> None:
        self.module = module


@dataclass(frozen=True)
class ChannelAffineEpsilon(Rule):
    """Epsilon rule on ``y = gamma x + beta``: ``R_in = gamma x R_out / stab(y)``."""

    kinds = ("channel_affine",)
    epsilon: float = 1e-6

    def relevance(self, step: Step, r: torch.Tensor) -> list[torch.Tensor | None]:
        x = step.inputs[0]
        gamma = step.op.module.gamma.view(1, -1, 1, 1)
        return [x * gamma * normalize(r, step.output, self.epsilon)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), ChannelAffine(6), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 4)).double().eval()


@pytest.fixture
def registered():
    register_module(ChannelAffine, ChannelAffineOp)
    yield
    unregister_module(ChannelAffine)


def test_unregistered_layer_is_refused_naming_it():
    with pytest.raises(UnsupportedOperationError, match="addcmul"):
        relprop.explain(_model(), torch.rand(2, 3, 8, 8, dtype=torch.float64), target=1, method="lrp-epsilon")


def test_rule_for_a_new_operation_kind(registered):
    model = _model()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    composite = Composite([(by_type("channel_affine"), ChannelAffineEpsilon()),
                           (by_type("conv", "linear"), Epsilon(1e-6))], name="with-channel-affine")
    _, recorded = relprop.Explainer(model, composite).explain(x, target=1, record=["1", "2"])
    with torch.no_grad():  # the rule's formula, computed directly from the layer's input and output
        a = model[1](model[0](x))
        y = model[2](a)
        gamma = model[2].gamma.view(1, -1, 1, 1)
        expected = a * gamma * normalize(recorded["2"], y, 1e-6)
    torch.testing.assert_close(recorded["1"], expected, rtol=1e-10, atol=1e-12)


def test_new_kind_without_a_rule_is_an_error_naming_it(registered):
    composite = Composite([(by_type("conv", "linear"), Epsilon())], name="without")
    with pytest.raises(ValueError, match="no rule matches operation of kind 'channel_affine' '2'"):
        relprop.Explainer(_model(), composite).explain(torch.rand(1, 3, 8, 8, dtype=torch.float64), target=0)


def test_registration_is_seen_by_a_model_traced_before():
    """Registering or unregistering a module class re-traces models explained before (no stale trace)."""
    model = _model()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    register_module(ChannelAffine, ChannelAffineOp)
    composite = Composite([(by_type("channel_affine"), ChannelAffineEpsilon()), (by_type("conv", "linear"), Epsilon())])
    unregister_module(ChannelAffine)
    with pytest.raises(UnsupportedOperationError):
        relprop.Explainer(model, composite).explain(x, target=0)
    register_module(ChannelAffine, ChannelAffineOp)
    try:
        assert torch.isfinite(relprop.Explainer(model, composite).explain(x, target=0)).all()
    finally:
        unregister_module(ChannelAffine)
    with pytest.raises(UnsupportedOperationError):
        relprop.Explainer(model, composite).explain(x, target=0)


def test_unknown_kind_in_a_selector_is_refused():
    with pytest.raises(ValueError, match="unknown layer kind 'chanel_affine'"):
        by_type("chanel_affine")


# -- example 2: a new rule for sums ---------------------------------------------------------------
@dataclass(frozen=True)
class PositiveShareSum(Rule):
    """``R_k = R max(a_k, 0) / sum_l max(a_l, 0)``: only the terms that push the sum up share it."""

    kinds = ("add",)

    def relevance(self, step: Step, r: torch.Tensor) -> list[torch.Tensor | None]:
        positive = [x.clamp(min=0) for x in step.inputs]
        s = safe_divide(r, sum(positive))
        return [p * s for p in positive]


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        s = h + self.branch(torch.relu(h))
        return self.head(s.mean((2, 3)))


def test_new_rule_for_sums():
    torch.manual_seed(1)
    model = Residual().double().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    composite = Composite([(by_type("add"), PositiveShareSum()), (by_type("conv", "linear"), Epsilon(1e-9))])
    _, recorded = relprop.Explainer(model, composite).explain(x, target=2, record=["branch", "add"])
    with torch.no_grad():
        h = model.stem(x)
        b = model.branch(torch.relu(h))
        share = safe_divide(recorded["add"], h.clamp(min=0) + b.clamp(min=0))
    torch.testing.assert_close(recorded["branch"], b.clamp(min=0) * share, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(recorded["branch"], recorded["add"] * b / (h + b))  # not the default rule
