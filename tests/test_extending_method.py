"""The worked example of docs/extending.md ("A method"): gradient times the sign of the input,
written against the method contract, registered for the duration of each test, run through
:func:`relprop.explain` and compared with a direct autograd computation on the model."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.attribution.method import Attribution
from relprop.attribution.registry import register_method, temporary_registrations, unregister_method
from relprop.options import flag
from relprop.targets import Target, resolve_selection
from relprop.traced_gradient import checked_propagator, gradient_or_zeros, target_score


# -- the example, as in docs/extending.md ----------------------------------------------------------
def gradient_x_sign(model: nn.Module, x: Tensor, target: Target, *, absolute: bool = False) -> Attribution:
    """``d y_target / d x * sign(x)``; with ``absolute``, its magnitude."""
    propagator = checked_propagator(model, x)
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, _ = propagator.forward_differentiable(leaf)
        selection = resolve_selection(target, logits.detach())
        gradient = gradient_or_zeros(target_score(logits, selection), leaf)
    relevance = gradient * x.sign()
    return Attribution(relevance.abs() if absolute else relevance)


def register_gradient_x_sign() -> None:
    register_method("gradient-x-sign", "Gradient of the target logit times the sign of the input",
                    absolute=flag())(gradient_x_sign)
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def method() -> Iterator[str]:
    """The example registered for one test, and unregistered afterwards."""
    with temporary_registrations():
        register_gradient_x_sign()
        yield "gradient-x-sign"


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).double().eval()


@pytest.fixture
def x() -> Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def direct(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """The same quantity, with autograd on the model itself."""
    leaf = x.clone().requires_grad_(True)
    model(leaf).gather(1, target.view(-1, 1)).sum().backward()
    return leaf.grad * x.sign()


def test_the_example_equals_the_direct_computation(method, model, x):
    target = torch.tensor([1, 3])
    expected = direct(model, x, target)
    torch.testing.assert_close(relprop.explain(model, x, target, method=method), expected)
    torch.testing.assert_close(relprop.explain(model, x, target, method=method, absolute=True), expected.abs())
    predicted = model(x).argmax(1)
    torch.testing.assert_close(relprop.explain(model, x, method=method), direct(model, x, predicted))


def test_the_example_is_a_registered_method_while_registered(method):
    assert method in relprop.methods()
    assert relprop.method_summary(method).startswith("Gradient of the target logit")
    assert relprop.get_method(method).options() == {"absolute": False}
    assert relprop.get_method(method).display == "signed"


def test_registration_ends_with_the_block():
    with temporary_registrations():
        register_gradient_x_sign()
        assert "gradient-x-sign" in relprop.methods()
    assert "gradient-x-sign" not in relprop.methods()
    register_gradient_x_sign()
    assert unregister_method("gradient-x-sign").fn is gradient_x_sign
    assert "gradient-x-sign" not in relprop.methods()


def test_its_options_are_checked_by_the_declaration(method, model, x):
    with pytest.raises(ValueError, match="option 'absolute' of method 'gradient-x-sign' must be a bool"):
        relprop.explain(model, x, 1, method=method, absolute="yes")
    with pytest.raises(ValueError, match="has no option 'epsilon'; its options are: absolute"):
        relprop.explain(model, x, 1, method=method, epsilon=0.1)
    with pytest.raises(ValueError, match="cannot record intermediate relevance"):
        relprop.Explainer(model, method).explain(x, 1, record=["0"])


def test_a_method_that_returns_a_bare_tensor_breaks_the_contract(model, x):
    def bare(model: nn.Module, x: Tensor, target: Target) -> Tensor:
        return x.clone()

    with temporary_registrations():
        register_method("bare-tensor", "returns a tensor, not an Attribution")(bare)
        with pytest.raises(TypeError, match="method 'bare-tensor' returned Tensor, not a relprop Attribution"):
            relprop.explain(model, x, 1, method="bare-tensor")
