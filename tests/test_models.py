"""Model zoo: EfficientNet-Lite0 weights and preprocessing, torchvision builders, names."""

import pytest
import torch
import torch.fx
import torchvision
from torch import nn

from relprop.data.photos import load_photo
from relprop.models import imagenet_categories, load_model, model_names
from relprop.models.efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0_weights


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def _top1(model, preprocess, photo_name):
    x = preprocess(load_photo(photo_name).image())
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    prob, idx = probs.max(dim=1)
    return int(idx), float(prob), x


def test_lite0_classifies_cat(lite0):
    idx, prob, x = _top1(*lite0, "chelsea")
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert 281 <= idx <= 285, imagenet_categories()[idx]
    assert 0.2 < prob <= 1.0


def test_lite0_classifies_espresso(lite0):
    idx, prob, _ = _top1(*lite0, "coffee")
    assert idx == 967
    assert prob > 0.8


def test_lite0_is_eval_and_fx_traceable(lite0):
    model, preprocess = lite0
    assert not model.training
    x = preprocess(load_photo("coffee").image())
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)
    ops = {type(m) for m in model.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, nn.ZeroPad2d, nn.Linear} <= ops


def test_lite0_modules_not_reused(lite0):
    model, _ = lite0
    leaves = [m for m in model.modules() if not list(m.children())]
    assert len({id(m) for m in leaves}) == len(leaves)
    named = list(model.named_modules(remove_duplicate=False))
    assert len(named) == len(list(model.named_modules()))


def test_lite0_weight_loading_reports_bad_keys(tmp_path):
    model = EfficientNetLite0()
    bad = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
    bad["_unknown.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(RuntimeError, match=r"classifier\.weight.*_unknown\.weight"):
        load_efficientnet_lite0_weights(model, path)


def test_resnet18_without_weights():
    model, preprocess = load_model("resnet18")
    assert isinstance(model, nn.Module) and not model.training
    x = preprocess(load_photo("astronaut").image())
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


def test_inception_v3_preprocess_is_299():
    model, preprocess = load_model("inception_v3", init_weights=False)
    assert not model.training
    x = preprocess(load_photo("camera").image())  # greyscale photo -> 3 channels
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32


def test_weights_use_their_transforms(monkeypatch, tmp_path):
    seen = {}
    # weights are read from the local torch cache only: a placeholder file stands for the cached one
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vit_b_16_swag-9ac1b537.pth").write_bytes(b"")

    def fake_get_model(name, weights=None, **kwargs):
        seen["args"] = (name, weights)
        return nn.Linear(2, 2).train()

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    model, preprocess = load_model("vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1")
    assert seen["args"] == ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert not model.training
    assert preprocess(load_photo("chelsea").image()).shape == (1, 3, 384, 384)


def test_unknown_name():
    with pytest.raises(ValueError, match="resnet5O") as err:
        load_model("resnet5O")
    assert "resnet50" in str(err.value)


def test_model_names():
    names = model_names()
    assert names == sorted(names)
    for name in ["vgg16", "resnet50", "inception_v3", "densenet121", "alexnet", "efficientnet_lite0"]:
        assert name in names


def test_imagenet_categories():
    cats = imagenet_categories()
    assert len(cats) == 1000
    assert cats[967] == "espresso"
