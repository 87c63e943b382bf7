"""Architecture features of user-defined CNNs: functional and in-place activations, ``+=``
residuals, concatenation, squeeze-excitation gates, views, Conv1d/Conv3d, grouped and depthwise
convolutions, ReLU6/SiLU/Hardswish, dropout; in-place code gives the same maps as its out-of-place
twin."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
import torch.fx
import torchvision
from torch import nn

import relprop
from model_init import randomise_batch_norms
from engine_checks import (F64, METHODS, assert_conserved, assert_unchanged, check_map, explain, logits_of,
                           make_conservative, randn, snapshot)
from user_cnns import MobileNet, conv1d_net, conv3d_net, mixed_net


# -- architecture features -------------------------------------------------------------------------
ARCHITECTURES = {
    "mixed": (lambda: mixed_net(), (2, 3, 16, 16)),
    "conv1d": (conv1d_net, (2, 2, 32)),
    "conv3d": (conv3d_net, (2, 1, 8, 8, 8)),
    "grouped-depthwise": (lambda: MobileNet().eval(), (2, 3, 16, 16)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small().eval(), (1, 3, 32, 32)),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0().eval(), (1, 3, 32, 32)),
}
#: the every-method check leaves out efficientnet_b0 (its parts are in mobilenet_v3_small and the
#: real efficientnet_lite0 checks) to keep the run short
EVERY_METHOD_ARCHITECTURES = [a for a in ARCHITECTURES if a != "efficientnet_b0"]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_lrp_z_conserves(arch):
    make, shape = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = make_conservative(make()).to(F64).eval()
    x = randn(*shape, dtype=F64, seed=31)
    logits = logits_of(model, x)
    target = logits.argmax(dim=1)
    relevance = relprop.explain(model, x, target=target, method="lrp-z")
    assert relevance.shape == x.shape
    assert torch.isfinite(relevance).all()
    assert_conserved(relevance, logits, target)


@pytest.mark.parametrize("arch", EVERY_METHOD_ARCHITECTURES)
def test_architecture_every_method_is_finite(arch):
    make, shape = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = randomise_batch_norms(make()).eval()
    x = randn(*shape, seed=32)
    before = snapshot(model)
    for method in METHODS:
        relevance = explain(model, x, method)
        check_map(relevance, x, method)
    assert_unchanged(model, before)


def test_rank_of_conv1d_and_conv3d_inputs_is_checked():
    with pytest.raises(ValueError, match=r"\(2, 32\)"):
        relprop.explain(conv1d_net(), randn(2, 32), method="lrp-z")
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\)"):
        relprop.explain(conv3d_net(), randn(2, 1, 8, 8), method="lrp-z")


def _traced_in_place_ops(model: nn.Module) -> set[str]:
    """What the fx graph of ``model`` does in place (so that the in-place twin really is in place).

    ``out += identity`` is not among them: fx records it as ``operator.add`` (a Proxy has no
    ``__iadd__``), so only eager execution of the model runs it in place.
    """
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    found = set()
    for node in graph.nodes:
        if node.target in (operator.iadd, operator.imul):
            found.add(str(node.target))
        if node.op == "call_method" and node.target.endswith("_"):
            found.add(node.target)
        if node.op == "call_function" and node.kwargs.get("inplace"):
            found.add("F.relu(inplace=True)")
        if node.op == "call_module" and getattr(modules[node.target], "inplace", False):
            found.add("nn.ReLU(inplace=True)")
    return found


@pytest.mark.parametrize("method", METHODS)
def test_in_place_code_gives_the_same_maps(method):
    in_place = randomise_batch_norms(mixed_net(inplace=True))
    out_of_place = mixed_net(inplace=False)
    out_of_place.load_state_dict(in_place.state_dict())
    assert _traced_in_place_ops(in_place) == {"relu_", "mul_", "F.relu(inplace=True)", "nn.ReLU(inplace=True)"}
    assert _traced_in_place_ops(out_of_place) == set()
    x = randn(3, 3, 16, 16, seed=33)
    with torch.no_grad():
        torch.testing.assert_close(in_place(x.clone()), out_of_place(x))
    a = explain(in_place, x, method, target=2)
    b = explain(out_of_place, x, method, target=2)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7 * float(b.abs().max()))


def test_in_place_relu_and_iadd_residual_keep_cached_activations():
    """lrp-epsilon in float64, in-place residual block vs. out-of-place one, and vs. torchvision's
    BasicBlock-based resnet18 (which uses ``out += identity`` and ReLU(inplace=True))."""
    in_place = randomise_batch_norms(mixed_net(inplace=True)).to(F64)
    out_of_place = mixed_net(inplace=False).to(F64)
    out_of_place.load_state_dict(in_place.state_dict())
    x = randn(2, 3, 16, 16, dtype=F64, seed=34)
    torch.testing.assert_close(relprop.explain(in_place, x, target=4, method="lrp-epsilon"),
                               relprop.explain(out_of_place, x, target=4, method="lrp-epsilon"),
                               rtol=1e-12, atol=1e-15)

    torch.manual_seed(0)
    resnet = randomise_batch_norms(torchvision.models.resnet18()).to(F64).eval()
    twin = copy.deepcopy(resnet)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    assert any(getattr(m, "inplace", False) for m in resnet.modules())
    xr = randn(2, 3, 48, 48, dtype=F64, seed=35)
    torch.testing.assert_close(relprop.explain(resnet, xr, target=1, method="lrp-epsilon"),
                               relprop.explain(twin, xr, target=1, method="lrp-epsilon"),
                               rtol=1e-12, atol=1e-15)


class _GateStatement(nn.Module):
    """A gate applied by an in-place method whose result is not assigned (``out.mul_(gate)``)."""

    def __init__(self, statement: bool) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.statement = statement
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        out = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.se(out.mean((2, 3), keepdim=True)))
        if self.statement:
            out.mul_(gate)
        else:
            out = out * gate
        return self.fc(out.mean((2, 3)))


def test_in_place_method_with_unused_result_is_not_ignored():
    """fx records ``out.mul_(gate)`` as a node whose result nobody uses, while later nodes read
    ``out`` as it was before the product. relprop must either explain what the model computes
    (the maps of the out-of-place twin) or refuse the model; it must not silently drop the gate."""
    statement, twin = _GateStatement(True).to(F64).eval(), _GateStatement(False).to(F64).eval()
    x = randn(2, 3, 10, 10, dtype=F64, seed=38)
    with torch.no_grad():
        torch.testing.assert_close(statement(x.clone()), twin(x))
    try:
        got = relprop.explain(statement, x, target=1, method="lrp-z")
    except relprop.UnsupportedOperationError as error:
        assert "mul_" in str(error)
        return
    torch.testing.assert_close(got, relprop.explain(twin, x, target=1, method="lrp-z"))


def test_squeeze_excitation_gate_gets_no_relevance():
    """The sigmoid factor of ``x * sigmoid(...)`` is a gate: all relevance goes to ``x``."""
    model = make_conservative(mixed_net(inplace=False)).to(F64)
    x = randn(2, 3, 16, 16, dtype=F64, seed=36)
    logits = logits_of(model, x)
    target = logits.argmax(dim=1)
    relevance, recorded = relprop.Explainer(model, "lrp-z").explain(
        x, target=target, record=["se_reduce", "se_expand", "pre_bn"])
    assert torch.count_nonzero(recorded["se_reduce"]) == 0
    assert torch.count_nonzero(recorded["se_expand"]) == 0
    assert_conserved(recorded["pre_bn"], logits, target)
    assert_conserved(relevance, logits, target)


def test_sign_of_inputs_is_not_assumed_after_a_shift():
    """``relu(.) - c`` and ``relu(.) * -1`` can be negative: alpha-beta must treat them as signed
    inputs, exactly as it does when the same values come out of an op that does not keep signs
    (``/ 1.0``)."""

    class Shifted(nn.Module):
        def __init__(self, variant: str) -> None:
            super().__init__()
            torch.manual_seed(4)
            self.variant = variant
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            if self.variant == "sub":
                h = h - 0.5
            elif self.variant == "sub-signed":
                h = (h - 0.5) / 1.0
            elif self.variant == "neg":
                h = h * -1.0
            elif self.variant == "neg-signed":
                h = (h * -1.0) / 1.0
            h = torch.relu(self.conv2(h))
            return self.fc(h.mean((2, 3)))

    x = randn(2, 3, 12, 12, dtype=F64, seed=37)
    for method in ("lrp-alpha1beta0", "lrp-alpha2beta1"):
        for variant in ("sub", "neg"):
            plain = relprop.explain(Shifted(variant).to(F64), x, target=0, method=method)
            signed = relprop.explain(Shifted(variant + "-signed").to(F64), x, target=0, method=method)
            torch.testing.assert_close(plain, signed, rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"{method}, h {variant}: {m}")
