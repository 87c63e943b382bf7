"""The channels-last path on the CPU: LRP rules, the contrastive methods, hedge and the gradient
methods run their forward pass and convolutions channels-last (relprop.propagate.forward_for(channels_last=True),
relprop.ops.Affine.laid_out_like); the maps are those of the usual layout, models whose code refuses
a channels-last input fall back, a user's own rule gets the usual layout, and no channels-last copy
of a weight outlives a change of that weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relprop
import relprop.ops as ops
import relprop.rules.hedge as hedge_rule
from relprop.propagate import propagator_for
from relprop.rules import AlphaBeta, Epsilon, Rule, Step

METHODS = ["hedge", "lrp-cmp", "lrp-epsilon", "lrp-alpha2beta1", "lrp-preset-b", "sglrp", "clrp",
           "gradient", "input-x-gradient", "integrated-gradients", "smoothgrad", "guided-backprop"]


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


class _Residual(nn.Module):
    """A batch-normed residual block (folded batch norms, a 1x1 convolution, a sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        s = self.stem(x)
        return self.head(s + self.branch(s))


def _models() -> list[nn.Module]:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    residual = _Residual()
    with torch.no_grad():
        for m in residual.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return [plain.eval(), residual.eval(), _ViewNet().eval()]


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_path_equals_the_usual_layout(monkeypatch, method):
    """Maps equal to the usual layout's (float32 round-off), returned in the usual layout, for plain,
    batch-normed residual and ``.view``-flattening models (the last falls back, noted once)."""
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 3, 0])
    models = _models()
    fast = [relprop.explain(m, x, target=target, method=method) for m in models]
    fold = method != "hedge"  # hedge's graph keeps its batch norms
    notes = [propagator_for(m, fold_batchnorm=fold).notes.get("nchw_only") for m in models]
    assert notes == [None, None, True]
    assert all(f.is_contiguous() for f in fast)
    used = []
    original = ops.Affine.laid_out_like

    def spy(self, weight, t):
        out = original(self, weight, t)
        used.append(out is not weight)
        return out
    monkeypatch.setattr(ops.Affine, "laid_out_like", spy)
    relprop.explain(models[1], x, target=target, method=method)
    assert any(used), "no convolution took a channels-last weight"
    monkeypatch.setattr(ops, "channels_last_suits", lambda x: False)
    monkeypatch.setattr(hedge_rule, "channels_last_suits", lambda x: False)
    used.clear()
    for m, f in zip(models, fast):
        usual = relprop.explain(m, x, target=target, method=method)
        torch.testing.assert_close(f, usual, rtol=1e-4, atol=1e-6 * float(usual.abs().max()))
    assert not any(used)


def test_several_targets_take_the_channels_last_path_like_one():
    """Several targets per sample in one call equal the separate calls on the channels-last path."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    model = _models()[1]
    for method in ("lrp-cmp", "sglrp"):
        joint = relprop.explain(model, x, target=[[1, 4], [0, 2]], method=method)
        for k in range(2):
            single = relprop.explain(model, x, target=torch.tensor([[1, 4], [0, 2]])[:, k], method=method)
            torch.testing.assert_close(joint[:, k], single, rtol=1e-5, atol=1e-7)


def test_a_weight_change_drops_its_channels_last_copy():
    """A weight changed in place (and a replaced one) is seen at the next call: no stale copy."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    model = _models()[1]
    relprop.explain(model, x, target=1, method="lrp-cmp")
    with torch.no_grad():
        model.branch[0].weight.mul_(-1.5)
        model.stem[0].weight.add_(0.1)
    changed = relprop.explain(model, x, target=1, method="lrp-cmp")
    fresh = _models()[1]
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(changed, relprop.explain(fresh, x, target=1, method="lrp-cmp"), rtol=1e-5, atol=1e-7)
    model.branch[0].weight = nn.Parameter(torch.randn_like(model.branch[0].weight))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(relprop.explain(model, x, target=1, method="lrp-cmp"),
                               relprop.explain(fresh, x, target=1, method="lrp-cmp"), rtol=1e-5, atol=1e-7)


class _FlatteningEpsilon(Rule):
    """A user's epsilon rule that flattens its relevance with ``.view`` (the usual layout only)."""

    kinds = ("affine",)

    def relevance(self, step: Step, r: torch.Tensor) -> list[torch.Tensor | None]:
        flat = r.view(r.shape[0], -1)  # refuses a channels-last tensor
        return Epsilon(1e-6).relevance(step, flat.view_as(r))


def test_a_users_rule_gets_the_usual_layout():
    """A Composite with a rule of the user's own keeps the usual layout (its code may rely on it)."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    model = _models()[0]
    composite = relprop.Composite([(relprop.composite.by_type("conv"), _FlatteningEpsilon()),
                                   (relprop.composite.by_type("linear"), AlphaBeta(1.0, 0.0))], name="user")
    own = relprop.Explainer(model, composite).explain(x, target=1)
    builtin = relprop.Composite([(relprop.composite.by_type("conv"), Epsilon(1e-6)),
                                 (relprop.composite.by_type("linear"), AlphaBeta(1.0, 0.0))], name="builtin")
    torch.testing.assert_close(own, relprop.Explainer(model, builtin).explain(x, target=1), rtol=1e-4, atol=1e-7)
