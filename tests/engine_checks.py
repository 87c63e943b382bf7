"""Shared pieces of the whole-model engine tests: the model zoo, cheap method settings, and checks of
conservation and of an unchanged model."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.attribution.pattern import PATTERN_METHODS
from relprop.attribution.registry import get_method


F64 = torch.float64
#: every method that explains a CNN (the attention methods refuse them, tests/test_every_method.py),
#: but the pattern methods, which need patterns computed on data for each model and a ReLU network
#: (tests/test_every_method.py and tests/test_patterns.py check them)
METHODS = [m for m in relprop.methods() if m not in ATTENTION_METHODS + PATTERN_METHODS]
#: cheaper settings for the sampling methods, used where a method has the option (the checks here
#: are about shapes, finiteness and consistency, not about the number of steps)
CHEAP_OPTIONS = {"steps": 4, "samples": 3}
#: what the pattern methods say on a random transformer (merged into each test's table of refusals):
#: they need patterns computed on data for each model (shipped for shapes_vit;
#: tests/test_pattern_transformers.py computes some)
REFUSALS_ON_TRANSFORMERS = {"patternnet": "needs the signal patterns of",
                            "pattern-attribution": "needs the signal patterns of"}

#: (model name, input side) for the zoo checks; inception_v3 needs at least 75 pixels
ZOO_SMALL = [("vgg16", 64), ("vgg16_bn", 64), ("resnet50", 64), ("inception_v3", 107),
             ("densenet121", 64), ("alexnet", 96)]
#: smaller still for the every-method checks (float32, batch of one)
ZOO_TINY = [("vgg16", 32), ("vgg16_bn", 32), ("resnet50", 32), ("inception_v3", 75),
            ("densenet121", 32), ("alexnet", 64)]
CONSERVATION_RTOL = 1e-6


# -- helpers ---------------------------------------------------------------------------------------
def explain(model: nn.Module, x: torch.Tensor, method: str, target=None) -> torch.Tensor:
    """``relprop.explain`` with the cheap settings of :data:`CHEAP_OPTIONS` the method accepts."""
    accepted = get_method(method).options()
    options = {k: v for k, v in CHEAP_OPTIONS.items() if k in accepted}
    return relprop.explain(model, x, target=target, method=method, **options)


def make_conservative(model: nn.Module, seed: int = 0) -> nn.Module:
    """Zero every conv/linear bias and batch-norm mean and shift; draw batch-norm running variance
    and scale as positive random numbers (so folding them changes the weights). In place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 1.5 + 0.5)
                if module.affine:
                    module.bias.zero_()
                    module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
    return model




def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).eval()(x)


def assert_conserved(relevance: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                     rtol: float = CONSERVATION_RTOL) -> None:
    """Per sample: the relevance sums to the target logit within ``rtol`` (relative)."""
    sums = relevance.reshape(relevance.shape[0], -1).sum(dim=1)
    expected = logits.gather(1, target.view(-1, 1)).view(-1)
    for b, (s, e) in enumerate(zip(sums.tolist(), expected.tolist())):
        assert e != 0.0
        assert abs(s - e) <= rtol * abs(e), f"sample {b}: relevance sums to {s!r}, target logit is {e!r}"


def snapshot(model: nn.Module) -> tuple[OrderedDict, dict[str, bool], dict[str, bool]]:
    """All state (cloned), every module's training flag and every parameter's requires_grad."""
    state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items())
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    return state, flags, grads


def assert_unchanged(model: nn.Module, before: tuple[OrderedDict, dict[str, bool], dict[str, bool]]) -> None:
    state, flags, grads = before
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert now[key].dtype == value.dtype and now[key].shape == value.shape, key
        assert torch.equal(now[key], value), f"{key} was modified"
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters()), "explaining left gradients on the model"


class ZooCache:
    """Builds each zoo model once per variant and keeps only the last two (VGG-16 in float64 is 1 GB)."""

    def __init__(self) -> None:
        self._models: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()

    def get(self, name: str, variant: str) -> nn.Module:
        key = (name, variant)
        if key not in self._models:
            torch.manual_seed(0)
            kwargs = {"init_weights": False} if name == "inception_v3" else {}
            model, _ = relprop.load_model(name, **kwargs)
            if variant == "conservative-f64":
                model = make_conservative(model).to(F64)
            elif variant != "f32":
                raise AssertionError(variant)
            self._models[key] = model.eval()
            while len(self._models) > 2:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return self._models[key]


def check_map(relevance: torch.Tensor, x: torch.Tensor, method: str = "") -> None:
    """Shape, dtype, device and finiteness. (An all-zero map can be right on a random network, e.g.
    for contrastive methods that keep the positive part only, so it is not refused here.)"""
    assert isinstance(relevance, torch.Tensor), method
    assert relevance.shape == x.shape, method
    assert relevance.dtype == x.dtype and relevance.device == x.device, method
    assert torch.isfinite(relevance).all(), f"{method}: non-finite relevance"


def assert_explains_or_refuses(model: nn.Module, x: torch.Tensor, method: str, refused: dict[str, str]) -> None:
    """``method`` explains ``model`` (finite, shaped like ``x``), or, when it is in ``refused``, raises a
    ValueError whose message contains ``refused[method]``: never an obscure error from inside a rule."""
    import re

    import pytest

    if method in refused:
        with pytest.raises(ValueError, match=re.escape(refused[method])):
            relprop.explain(model, x, target=1, method=method)
        return
    r = relprop.explain(model, x, target=1, method=method)
    assert r.shape == x.shape and bool(r.isfinite().all())


def assert_batch_equals_samples(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str,
                                rtol: float = 1e-9) -> None:
    """Each sample of the batch ``x`` gets the map of its own call (cheap settings of :func:`explain`;
    the sampling methods draw per sample), and the maps are not all zero."""
    r = explain(model, x, method, target=target)
    assert r.abs().sum() > 0
    for i in range(x.shape[0]):
        one = explain(model, x[i:i + 1], method, target=target[i:i + 1])
        torch.testing.assert_close(one, r[i:i + 1], rtol=rtol, atol=rtol * float(r.abs().max()))


def assert_cp_lrp_conserves(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    """CP-LRP without stabilisers (``epsilon=0``) on a model with nothing that absorbs relevance: each
    sample's map is shaped like ``x`` and sums to its target logit (1e-6 relative). Returns the maps."""
    target = torch.as_tensor(target).reshape(-1).expand(x.shape[0])
    r = relprop.explain(model, x, target=target, method="cp-lrp", epsilon=0.0)
    with torch.no_grad():
        logit = model(x).gather(1, target[:, None])[:, 0]
    assert r.shape == x.shape
    torch.testing.assert_close(r.sum(tuple(range(1, r.dim()))), logit, rtol=1e-6, atol=0.0)
    return r
