"""Parity with zennit, number for number in float64, on torchvision VGG-16 and ResNet-50.

The models have random weights (no download) with non-trivial biases and batch-norm statistics,
so that bias absorption, the stabilisers and batch-norm folding all matter. relprop gets the
ORIGINAL model (it folds batch norms in its own graph); zennit gets a hand-canonized copy:

* zennit 0.5.1's ``SequentialMergeBatchNorm`` (also inside ``ResNetCanonizer``) leaves the batch
  norm computing ``x / sqrt(1 + eps)`` instead of the identity, which changes ResNet-50's logits by
  about 1e-4 relative; newer zennit sets ``eps = 0`` instead, which fails on torch >= 2.10 (zennit
  issue #234). So the copy has each batch norm folded into its convolution by hand and replaced
  by ``nn.Identity``, checked against the original model's logits to 1e-10.
* The residual sums still go through zennit's ``ResNetBottleneckCanonizer`` (a hooked ``Sum``
  module, ``Norm`` rule), the counterpart of relprop's proportional ``add``.

Relevance at the output is the target logit (one-hot times logit) on both sides.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from relprop import Composite, by_type, first
from relprop.rules import Epsilon as RelpropEpsilon
from relprop.rules import Gamma as RelpropGamma
from relprop.rules import ZBox as RelpropZBox

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonGammaBox, LayerMapComposite, layer_map_base  # noqa: E402
from zennit.rules import AlphaBeta, Epsilon, ZPlus  # noqa: E402
from zennit.torchvision import ResNetBottleneckCanonizer  # noqa: E402
from zennit.types import Convolution  # noqa: E402
from model_init import randomize_parameters  # noqa: E402

DTYPE = torch.float64
SIZES = {"vgg16": 64, "resnet50": 48}  # the smallest inputs with a 2x2 last feature map
TARGET = torch.tensor([3, 7])
TOLERANCE = 1e-6
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=DTYPE).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=DTYPE).view(1, 3, 1, 1)
LOW = (0.0 - MEAN) / STD  # bounds of ImageNet-normalised pixels, per channel
HIGH = (1.0 - MEAN) / STD


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- models ----------------------------------------------------------------------------------------

def _randomize(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial biases and batch-norm statistics, He weights where no batch norm follows."""
    return randomize_parameters(model, g)


def _build(name: str) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(1)
    return _randomize(model, g).to(DTYPE).eval()  # randomised in float32: cheaper


def _canonize_for_zennit(model: nn.Module) -> nn.Module:
    """A copy with every batch norm that directly follows a convolution (in module order, as zennit's
    SequentialMergeBatchNorm pairs them) folded into it and replaced by ``nn.Identity``."""
    model = copy.deepcopy(model)
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    folded = 0
    for (_, conv), (bn_name, bn) in zip(leaves, leaves[1:]):
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, nn.Identity())
        folded += 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for p in model.parameters():
        p.requires_grad_(False)
    model.folded_count = folded  # type: ignore[attr-defined]
    return model


class Case:
    """One model: the original (for relprop), its zennit copy, the input and the original's state."""

    def __init__(self, name: str, model: nn.Module, zennit_model: nn.Module, x: torch.Tensor,
                 logits: torch.Tensor) -> None:
        self.name, self.model, self.zennit_model, self.x, self.logits = name, model, zennit_model, x, logits
        self.state = {k: v.clone() for k, v in model.state_dict().items()}

    def canonizers(self) -> list:
        return [ResNetBottleneckCanonizer()] if self.name.startswith("resnet") else []

    def assert_unchanged(self, training: bool) -> None:
        assert all(m.training == training for m in self.model.modules()), "relprop changed training flags"
        state = self.model.state_dict()
        assert state.keys() == self.state.keys()
        for key, value in self.state.items():
            assert torch.equal(state[key], value), f"relprop changed {key} of {self.name}"


@pytest.fixture(scope="module", params=["vgg16", "resnet50"])
def case(request) -> Case:
    model = _build(request.param)
    zennit_model = _canonize_for_zennit(model)
    assert zennit_model.folded_count == (53 if request.param == "resnet50" else 0)
    size = SIZES[request.param]
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 3, size, size, generator=g, dtype=DTYPE) - MEAN) / STD
    with torch.no_grad():
        logits, zennit_logits = model(x), zennit_model(x)
    # the hand-canonized copy computes the same function as the original
    assert rel_err(zennit_logits, logits) <= 1e-10
    assert (logits.gather(1, TARGET.view(-1, 1)).abs() > 1e-2).all()
    yield Case(request.param, model, zennit_model, x, logits)


# -- the rule maps on both sides -------------------------------------------------------------------

def _everywhere(rule_factory):
    """zennit: one rule on every convolution and linear layer, zennit's defaults elsewhere."""
    def make(canonizers):
        return LayerMapComposite(
            layer_map_base() + [(Convolution, rule_factory()), (nn.Linear, rule_factory())],
            canonizers=canonizers,
        )
    return make


#: name: (relprop options, zennit composite from canonizers, explain the model in training mode)
CASES = {
    # in training mode: relprop must explain in eval mode (running statistics, as zennit's copy) and
    # hand the model back in training mode, its batch-norm buffers not updated
    "lrp-epsilon-0.25": (
        dict(method="lrp-epsilon", epsilon=0.25),
        _everywhere(lambda: Epsilon(epsilon=0.25)),
        True,
    ),
    # zennit's ZPlus is its AlphaBeta(1, 0), signed inputs included, at half the cost
    "lrp-alpha1beta0": (
        dict(method="lrp-alpha1beta0"),
        _everywhere(lambda: ZPlus()),
        False,
    ),
    "lrp-alpha2beta1": (
        dict(method="lrp-alpha2beta1"),
        _everywhere(lambda: AlphaBeta(alpha=2.0, beta=1.0)),
        False,
    ),
    "zbox-gamma-epsilon": (
        dict(method=Composite([
            (first(1), RelpropZBox(LOW, HIGH)),
            (by_type("conv"), RelpropGamma(0.25)),
            (by_type("linear"), RelpropEpsilon(1e-6)),
        ])),
        lambda canonizers: EpsilonGammaBox(low=LOW, high=HIGH, epsilon=1e-6, gamma=0.25, canonizers=canonizers),
        False,
    ),
}


def _zennit_relevance(case: Case, composite) -> torch.Tensor:
    def initial(output: torch.Tensor) -> torch.Tensor:
        index = TARGET.view(-1, 1)
        return torch.zeros_like(output).scatter_(1, index, output.gather(1, index))

    with Gradient(model=case.zennit_model, composite=composite) as attributor:
        _, relevance = attributor(case.x.clone(), initial)
    return relevance.detach()


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CASES))
def test_parity_with_zennit(case: Case, method: str) -> None:
    options, zennit_composite, training = CASES[method]
    case.model.train(training)
    try:
        ours = relprop.explain(case.model, case.x, TARGET, **options)
        case.assert_unchanged(training)
    finally:
        case.model.eval()
    theirs = _zennit_relevance(case, zennit_composite(case.canonizers()))

    assert ours.shape == case.x.shape and ours.dtype == DTYPE
    assert torch.isfinite(ours).all() and torch.isfinite(theirs).all()
    assert float(theirs.norm()) > 0
    error = rel_err(ours, theirs)
    print(f"\n{case.name} {method}: relative L2 error {error:.3e}; relevance sums "
          f"{[round(v, 4) for v in theirs.sum(dim=(1, 2, 3)).tolist()]} of target logits "
          f"{[round(v, 4) for v in case.logits.gather(1, TARGET.view(-1, 1)).flatten().tolist()]}")
    assert error <= TOLERANCE, f"{case.name} {method}: relative L2 error {error:.3e} against zennit"
