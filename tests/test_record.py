"""Intermediate relevance can be recorded at named layers and is conserved there too."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import relprop
from engine_checks import F64, assert_conserved, logits_of, make_conservative, randn
from user_cnns import mixed_net


# -- recording intermediate relevance --------------------------------------------------------------
def _module_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Size]:
    """Output shape of each named module (the last call, for a module called several times)."""
    modules = dict(model.named_modules())
    shapes: dict[str, torch.Size] = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape))
             for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def test_record_at_named_layers_alexnet(zoo):
    model = zoo.get("alexnet", "conservative-f64")
    x = randn(2, 3, 96, 96, dtype=F64, seed=11)
    names = ["features.0", "features.2", "features.10", "features.12", "avgpool", "classifier.4"]
    logits = logits_of(model, x)
    target = logits.argmax(dim=1)
    explainer = relprop.Explainer(model, "lrp-z")
    result = explainer.explain(x, target=target, record=names)
    assert isinstance(result, tuple) and len(result) == 2
    relevance, recorded = result
    assert set(recorded) == set(names)
    shapes = _module_outputs(model, x, names)
    for name in names:
        assert recorded[name].shape == shapes[name], name
        assert torch.isfinite(recorded[name]).all()
        assert_conserved(recorded[name], logits, target)
    # recording does not change the input map
    torch.testing.assert_close(relevance, explainer.explain(x, target=target), rtol=0, atol=0)
    assert_conserved(relevance, logits, target)


def test_record_at_named_layers_vgg16(zoo):
    model = zoo.get("vgg16", "conservative-f64")
    x = randn(1, 3, 64, 64, dtype=F64, seed=12)
    names = ["features.10", "features.30", "classifier.0"]
    logits = logits_of(model, x)
    target = logits.argmax(dim=1)
    relevance, recorded = relprop.Explainer(model, "lrp-z").explain(x, record=names)
    shapes = _module_outputs(model, x, names)
    for name in names:
        assert recorded[name].shape == shapes[name]
        assert_conserved(recorded[name], logits, target)


def test_record_at_a_container_module_resnet():
    """``record=["layer4"]`` gives the relevance at the output of the whole stage."""
    torch.manual_seed(0)
    model = make_conservative(torchvision.models.resnet18()).to(F64).eval()
    x = randn(2, 3, 64, 64, dtype=F64, seed=13)
    names = ["layer1", "layer4"]
    logits = logits_of(model, x)
    target = logits.argmax(dim=1)
    relevance, recorded = relprop.Explainer(model, "lrp-z").explain(x, record=names)
    shapes = _module_outputs(model, x, names)
    for name in names:
        assert recorded[name].shape == shapes[name]
        assert_conserved(recorded[name], logits, target)


def test_record_unknown_name_is_an_error():
    model = mixed_net()
    with pytest.raises(ValueError, match="no_such_layer"):
        relprop.Explainer(model, "lrp-z").explain(randn(1, 3, 16, 16), record=["no_such_layer"])


@pytest.mark.parametrize("method", ["hedge", "rsp"])
def test_record_above_the_start_of_the_relevance_is_an_error(method):
    """hedge and rsp start their relevance at an inner layer: a layer above it carries none, and asking
    for it is refused by name rather than left out of the records."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = randn(2, 3, 8, 8)
    explainer = relprop.Explainer(model, method)
    _, recorded = explainer.explain(x, target=[0, 1], record=["3"])
    assert set(recorded) == {"3"}
    with pytest.raises(ValueError, match=r"cannot record \['7'\]: this method's relevance starts at node"):
        explainer.explain(x, target=[0, 1], record=["7", "3"])
