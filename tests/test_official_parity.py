"""Parity with the authors' official code, number for number in float64.

The official repositories are not part of relprop (nor vendored): point these environment variables
at local clones to run the checks, otherwise every test here is skipped.

* ``RELPROP_OFFICIAL_RAP``   -> wjNam/Relative_Attributing_Propagation (``rap``, VGG-16 and ResNet-50)
* ``RELPROP_OFFICIAL_HEDGE`` -> wjNam/Attribution-Equilibrium (``hedge``, VGG-16)
* ``RELPROP_OFFICIAL_RSP``   -> wjNam/Relative_Sectional_Propagation (``rsp``, VGG-16)

Each test builds the official model class, loads the state dict of a torchvision model with random
weights and biases (no download), and runs the official entry point as the repository's script does
(``main.py`` / ``run_imagenet.py``): RAP from a one-hot of value 1; hedge from the Grad-CAM-weighted
activation at ``features.29`` divided by ``|sum|``, ``flag=29``, ``ratio`` = gamma (2 in
``run_imagenet.py``, 1 in ``Sanity.py``); RSP from the Grad-CAM-weighted activation at ``features.29``
divided by ``max + 1e-9``. relprop gets the torchvision model itself.

The repositories are imported as they are, without editing their files. Two import-time patches:
the three repositories all use the top-level package names ``modules`` and ``baselines`` (so they
are imported one at a time and removed from ``sys.modules`` again), and their Grad-CAM helpers import
``baselines.misc_functions``, which the repositories do not ship (a stub module stands in; nothing
from it is used).
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from model_init import randomize_parameters

DTYPE = torch.float64
TOLERANCE = 1e-6
VARIABLES = ("RELPROP_OFFICIAL_RAP", "RELPROP_OFFICIAL_HEDGE", "RELPROP_OFFICIAL_RSP")
_PACKAGES = ("modules", "baselines")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _clone(variable: str) -> str:
    path = os.environ.get(variable)
    if not path:
        pytest.skip(f"set {variable} to a clone of the official code to run this check "
                    f"(variables: {', '.join(VARIABLES)})")
    if not os.path.isdir(os.path.join(path, "modules")):
        pytest.fail(f"{variable}={path!r} is not a clone of the official code (no 'modules' folder)")
    return path


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _PACKAGES:
            del sys.modules[name]


def _import_official(variable: str, names: list[str]) -> list[types.ModuleType]:
    """Import ``names`` from the clone named by ``variable``, isolated from the other clones."""
    path = _clone(variable)
    _purge()
    sys.path.insert(0, path)
    stub = types.ModuleType("baselines.misc_functions")
    stub.get_example_params = stub.save_class_activation_images = None  # type: ignore[attr-defined]
    sys.modules["baselines.misc_functions"] = stub
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(path)
        _purge()


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial random parameters (:func:`model_init.randomize_parameters`), in float64, eval mode."""
    return randomize_parameters(model, torch.Generator().manual_seed(seed)).to(DTYPE).eval()


_REFERENCES: dict[str, nn.Module] = {}


def _reference(name: str) -> nn.Module:
    """The torchvision model with random weights, built once per session (VGG-16 is 138M weights)."""
    if name not in _REFERENCES:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(weights=None)
        _REFERENCES[name] = _randomize(model, 1)
    return _REFERENCES[name]


def _models(name: str, official_module: types.ModuleType, size: int) -> tuple[nn.Module, nn.Module, torch.Tensor, int]:
    """(torchvision model, official model with the same weights, input, predicted class)."""
    reference = _reference(name)
    official = getattr(official_module, name)()
    official.load_state_dict(reference.state_dict())
    official = official.to(DTYPE).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    with torch.no_grad():
        logits = reference(x)
        assert torch.allclose(official(x), logits, rtol=1e-12, atol=1e-12), "official model differs"
    return reference, official, x, int(logits.argmax())


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("vgg16", 224), ("resnet50", 64)])
def test_rap_matches_official(name: str, size: int) -> None:
    # VGG-16 at 224 px: the official VGG code reshapes the classifier's relevance to the last
    # feature map, which only fits when the adaptive average pool is the identity (7 x 7)
    vgg, resnet = _import_official("RELPROP_OFFICIAL_RAP", ["modules.vgg", "modules.resnet"])
    reference, official, x, target = _models(name, vgg if name == "vgg16" else resnet, size)
    logits = official(x.clone().requires_grad_())
    one_hot = torch.zeros_like(logits)
    one_hot[0, target] = 1.0
    expected = official.RAP_relprop(R=one_hot).detach()

    actual = relprop.explain(reference, x, target=target, method="rap")
    assert rel_err(actual, expected) < TOLERANCE
    assert actual.sum().item() == pytest.approx(logits[0, target].item(), rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [2, 1])
def test_hedge_matches_official(gamma: int) -> None:
    vgg, grad_activation = _import_official("RELPROP_OFFICIAL_HEDGE", ["modules.vgg", "baselines.gradactivation"])
    reference, official, x, target = _models("vgg16", vgg, 64)
    data = x.clone().requires_grad_()
    official(data)
    r0 = grad_activation.GradActivation(official, "vgg").generate_activation(data, target)
    r0 = r0 / r0.sum().abs()
    expected = official.hedge(R=r0.detach(), flag=29, ratio=gamma).detach()

    actual = relprop.explain(reference, x, target=target, method="hedge", gamma=float(gamma))
    assert rel_err(actual, expected) < TOLERANCE
    assert actual.sum().item() == pytest.approx(gamma - 2, abs=1e-9)


@pytest.mark.slow
def test_rsp_matches_official() -> None:
    # 224 px: the official Grad-CAM helper skips the adaptive average pool, so its classifier only
    # accepts a 7 x 7 feature map
    vgg, gradcam = _import_official("RELPROP_OFFICIAL_RSP", ["modules.vgg", "baselines.gradcam"])
    reference, official, x, target = _models("vgg16", vgg, 224)
    data = x.clone().requires_grad_()
    official(data)
    cam = gradcam.GradCam(official, target_layer=29).generate_cam_without_sum(data, target).detach()
    cam = cam / (cam.max() + 1e-9)
    expected = official.RSP(R=cam).detach()

    actual = relprop.explain(reference, x, target=target, method="rsp")
    assert rel_err(actual, expected) < TOLERANCE
    assert actual.sum().item() == pytest.approx(cam.sum().item(), rel=1e-9)
