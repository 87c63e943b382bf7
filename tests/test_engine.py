"""The propagation engine on whole models.

* Conservation: with LRP-0 (``lrp-z``) and every bias and batch-norm shift set to zero, the input
  relevance of every sample sums to its target logit (paper 003, Sec. II), on VGG-16 (+BN),
  ResNet-50, Inception-v3, DenseNet-121 and AlexNet in float64, with batch norms whose running
  variance and scale are random positive numbers, so that folding them is not the identity.
* Every registered method gives finite maps shaped like the input on those models and on
  EfficientNet-Lite0 with its real weights, and a batch gives the same maps as its samples.
* Intermediate relevance can be recorded at named layers and is conserved there too.
* The model is never modified, is explained in eval mode, and gets its training flags back,
  also when an error is raised half-way.
* Architecture features of user-defined CNNs: functional and in-place activations, ``+=``
  residuals, concatenation, squeeze-excitation gates, views, Conv1d/Conv3d, grouped and depthwise
  convolutions, ReLU6/SiLU/Hardswish, dropout; in-place code gives the same maps as its
  out-of-place twin.
* Unsupported operations raise :class:`relprop.UnsupportedOperationError` naming op and place.

Random weights only (no download); the one real network is EfficientNet-Lite0, whose weights ship
with an installed package.
"""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict

import pytest
import torch
import torch.fx
import torch.nn.functional as F
import torchvision
from torch import nn

import relprop
from relprop.data.photos import load_photo
from relprop.attribution.registry import get_method
from model_init import randomise_batch_norms

F64 = torch.float64
METHODS = relprop.methods()
#: cheaper settings for the sampling methods, used where a method has the option (the checks here
#: are about shapes, finiteness and consistency, not about the number of steps)
CHEAP_OPTIONS = {"steps": 4, "samples": 3}

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


@pytest.fixture(scope="module")
def zoo():
    cache = ZooCache()
    yield cache
    cache._models.clear()


@pytest.fixture(scope="module")
def lite0():
    model, preprocess = relprop.load_model("efficientnet_lite0")
    return model.eval(), preprocess


@pytest.fixture(scope="module")
def resnet50_small():
    torch.manual_seed(0)
    model, _ = relprop.load_model("resnet50")
    return randomise_batch_norms(model).eval()


# -- conservation on the zoo -----------------------------------------------------------------------
@pytest.mark.parametrize("name,size", ZOO_SMALL + [("resnet50", 224)],
                         ids=[f"{n}-{s}" for n, s in ZOO_SMALL] + ["resnet50-224"])
def test_lrp_z_conserves_the_target_logit(zoo, name, size):
    model = zoo.get(name, "conservative-f64")
    x = randn(2, 3, size, size, dtype=F64, seed=size)
    logits = logits_of(model, x)
    # one sample explained for its predicted class, the other for a fixed class it did not predict
    other = 7 if int(logits[1].argmax()) != 7 else 8
    target = torch.tensor([int(logits[0].argmax()), other])
    relevance = relprop.explain(model, x, target=target.tolist(), method="lrp-z")
    assert relevance.shape == x.shape and relevance.dtype == F64
    assert torch.isfinite(relevance).all()
    assert_conserved(relevance, logits, target)


def test_conservation_check_detects_a_bias(zoo):
    """The conservation tests are not vacuous: a non-zero bias in the classifier leaks relevance."""
    model = copy.deepcopy(zoo.get("alexnet", "conservative-f64"))
    with torch.no_grad():
        model.classifier[-1].bias.fill_(0.5)
    x = randn(2, 3, 96, 96, dtype=F64, seed=1)
    logits = logits_of(model, x)
    target = logits.argmax(dim=1)
    relevance = relprop.explain(model, x, target=target, method="lrp-z")
    with pytest.raises(AssertionError):
        assert_conserved(relevance, logits, target)
    # ... and the leak is exactly the bias: the relevance sums to logit - bias
    assert_conserved(relevance, logits - 0.5, target)


# -- every method on every model -------------------------------------------------------------------
def _check_map(relevance: torch.Tensor, x: torch.Tensor, method: str = "") -> None:
    """Shape, dtype, device and finiteness. (An all-zero map can be right on a random network, e.g.
    for contrastive methods that keep the positive part only, so it is not refused here.)"""
    assert isinstance(relevance, torch.Tensor), method
    assert relevance.shape == x.shape, method
    assert relevance.dtype == x.dtype and relevance.device == x.device, method
    assert torch.isfinite(relevance).all(), f"{method}: non-finite relevance"


@pytest.mark.parametrize("name,size,method", [(n, s, m) for n, s in ZOO_TINY for m in METHODS],
                         ids=[f"{n}-{s}-{m}" for n, s in ZOO_TINY for m in METHODS])
def test_every_method_gives_finite_maps_on_the_zoo(zoo, name, size, method):
    model = zoo.get(name, "f32")
    x = randn(1, 3, size, size, seed=3)
    before = snapshot(model)
    relevance = explain(model, x, method)
    _check_map(relevance, x, method)
    assert_unchanged(model, before)


@pytest.fixture(scope="module")
def chelsea(lite0):
    _, preprocess = lite0
    return preprocess(load_photo("chelsea").image())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_finite_maps_on_efficientnet_lite0(lite0, chelsea, method):
    model, _ = lite0
    assert chelsea.shape == (1, 3, 224, 224)
    with torch.no_grad():
        predicted = int(model(chelsea).argmax())
    assert 281 <= predicted <= 285  # a cat: the real weights are in use
    relevance = explain(model, chelsea, method)
    _check_map(relevance, chelsea, method)
    assert relevance.abs().sum() > 0, "the map of the predicted class of a real photo is all zero"


def _assert_batch_equals_samples(model, x, method, rtol):
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    batched = explain(model, x, method, target=target)
    _check_map(batched, x, method)
    for b in range(x.shape[0]):
        single = explain(model, x[b:b + 1], method, target=int(target[b]))
        scale = single.abs().max()
        torch.testing.assert_close(batched[b:b + 1], single, rtol=rtol, atol=rtol * float(scale),
                                   msg=lambda m: f"sample {b} of the batch differs from its own call: {m}")


@pytest.fixture(scope="module")
def resnet50_small_f64(resnet50_small):
    return copy.deepcopy(resnet50_small).to(F64).eval()


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_samples_resnet50_small(resnet50_small_f64, method):
    # float64: in float32 the epsilon rules amplify rounding where a residual sum nearly cancels
    # (its 1e-6 stabiliser), so batch and single calls differ by up to ~1e-3 of the map's maximum
    x = randn(3, 3, 32, 32, dtype=F64, seed=5)
    _assert_batch_equals_samples(resnet50_small_f64, x, method, rtol=1e-9)


@pytest.fixture(scope="module")
def three_photos(lite0):
    """Three real photos, preprocessed at 224 and then downsized to 64 to keep the test fast."""
    _, preprocess = lite0
    x = torch.cat([preprocess(load_photo(n).image()) for n in ("chelsea", "coffee", "motorcycle")])
    return F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False).to(F64)


@pytest.fixture(scope="module")
def lite0_f64(lite0):
    return copy.deepcopy(lite0[0]).to(F64).eval()


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_samples_efficientnet_lite0(lite0_f64, three_photos, method):
    # float64: in float32 on these real weights, SGLRP (p_t (1 - p_t) of a confident prediction)
    # and RAP move by 1e-4..1e-3 of the map's maximum with the summation order of the
    # two-thread convolutions, which differs between a batch of three and a batch of one
    _assert_batch_equals_samples(lite0_f64, three_photos, method, rtol=1e-9)


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
    model = _mixed_net()
    with pytest.raises(ValueError, match="no_such_layer"):
        relprop.Explainer(model, "lrp-z").explain(randn(1, 3, 16, 16), record=["no_such_layer"])


# -- the model is never modified -------------------------------------------------------------------
def test_model_unchanged_by_every_method():
    model = randomise_batch_norms(_mixed_net())
    model.train()
    model.se_reduce.eval()  # a mix of flags, each must come back as it was
    x = randn(2, 3, 16, 16, seed=21)
    x_before = x.clone()
    before = snapshot(model)
    for method in METHODS:
        explain(model, x, method)
        assert_unchanged(model, before)
        assert torch.equal(x, x_before), f"{method} modified the input"
        assert not x.requires_grad and x.grad is None


def test_train_mode_model_is_explained_in_eval_mode():
    eval_model = randomise_batch_norms(_mixed_net()).eval()
    train_model = copy.deepcopy(eval_model).train()
    x = randn(2, 3, 16, 16, seed=22)
    # the set-up is meaningful: in train mode the model computes something else (batch statistics, dropout)
    with torch.no_grad():
        assert not torch.allclose(copy.deepcopy(train_model)(x), eval_model(x))
    before = snapshot(train_model)
    for method in METHODS:
        expected = explain(eval_model, x, method, target=1)
        got = explain(train_model, x, method, target=1)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=lambda m: f"{method}: {m}")
        assert train_model.training and all(m.training for m in train_model.modules())
        assert_unchanged(train_model, before)
    # the propagator traced in eval mode is reused for the train-mode model, and the other way round
    train_model.eval()
    torch.testing.assert_close(relprop.explain(train_model, x, target=1, method="lrp-epsilon"),
                               relprop.explain(eval_model, x, target=1, method="lrp-epsilon"), rtol=0, atol=0)


def test_model_unchanged_when_target_is_out_of_range():
    model = randomise_batch_norms(_mixed_net()).train()
    model.se_reduce.eval()
    before = snapshot(model)
    x = randn(2, 3, 16, 16, seed=23)
    with pytest.raises(ValueError, match="range"):
        relprop.explain(model, x, target=10, method="lrp-epsilon")
    assert_unchanged(model, before)
    # the failed call did not leave anything behind: a good call still works and agrees with eval mode
    good = relprop.explain(model, x, target=3, method="lrp-epsilon")
    assert_unchanged(model, before)
    torch.testing.assert_close(good, relprop.explain(copy.deepcopy(model).eval(), x, target=3,
                                                     method="lrp-epsilon"), rtol=0, atol=0)


def test_model_unchanged_when_recording_fails_midway():
    model = randomise_batch_norms(_mixed_net()).train()
    before = snapshot(model)
    with pytest.raises(ValueError):
        relprop.Explainer(model, "lrp-z").explain(randn(2, 3, 16, 16), record=["fc", "nowhere"])
    assert_unchanged(model, before)


def test_model_unchanged_when_an_unsupported_op_is_found():
    model = _LayerNormNet().train()
    before = snapshot(model)
    with pytest.raises(relprop.UnsupportedOperationError):
        relprop.explain(model, randn(2, 3, 8, 8), method="lrp-z")
    assert_unchanged(model, before)


# -- architecture features -------------------------------------------------------------------------
class MixedNet(nn.Module):
    """F.relu, nn.ReLU (in place or not), ``+=`` residual, torch.cat, a squeeze-excitation gate
    (``mul_`` in place), a reused max pool, a view, dropout, unfolded and folded batch norms.
    Input (B, 3, 16, 16)."""

    def __init__(self, inplace: bool = True, classes: int = 10) -> None:
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.branch1 = nn.Conv2d(16, 8, 1)
        self.branch3 = nn.Conv2d(16, 8, 3, padding=1)
        self.pre_bn = nn.BatchNorm2d(16)  # batch norm before a conv: not foldable
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        identity = x
        out = self.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        if self.inplace:
            out += identity
        else:
            out = out + identity
        out = self.relu(out)
        out = self.pool(out)
        out = torch.cat([self.branch1(out), self.branch3(out)], dim=1)
        out = F.relu(out, inplace=self.inplace)
        out = self.pre_bn(out)
        out = out.relu_() if self.inplace else out.relu()
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(out, 1)))))
        out = out.mul_(gate) if self.inplace else out * gate
        out = self.pool(out)
        out = out.view(out.size(0), -1)
        out = self.dropout(out)
        return self.fc(out)


def _mixed_net(inplace: bool = True, seed: int = 0) -> MixedNet:
    torch.manual_seed(seed)
    return MixedNet(inplace).eval()


class _LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 4, 1), norm=nn.LayerNorm([4, 8, 8])))
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.block(self.features(x)), 1))


class _SortHead(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=1).values


class _SortNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)
        self.ranker = _SortHead()

    def forward(self, x):
        return self.ranker(self.fc(torch.flatten(self.pool(self.conv(x)), 1)))


def _conv1d_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 16, 3, padding=1, groups=2), nn.BatchNorm1d(16), nn.ReLU(inplace=True), nn.AvgPool1d(2),
        nn.Conv1d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.AdaptiveAvgPool1d(4),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 5),
    ).eval()


def _conv3d_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1, groups=2), nn.BatchNorm3d(8), nn.SiLU(), nn.Dropout3d(0.1),
        nn.AvgPool3d(2), nn.Conv3d(8, 8, 1), nn.Hardswish(), nn.AdaptiveMaxPool3d(1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


class _MobileNet(nn.Module):
    """Grouped and depthwise convolutions with ReLU6, SiLU and Hardswish (in-place ones too)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.SiLU(inplace=True),
            nn.Conv2d(16, 32, 1, groups=4, bias=False), nn.BatchNorm2d(32), nn.Hardswish(inplace=True),
            nn.Conv2d(32, 32, 5, stride=2, padding=2, groups=32), nn.BatchNorm2d(32), nn.ReLU6(),
        )
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(32, 6)

    def forward(self, x):
        x = self.features(x)
        x = x.mean((2, 3))
        return self.classifier(F.dropout(x, 0.2, self.training))


ARCHITECTURES = {
    "mixed": (lambda: _mixed_net(), (2, 3, 16, 16)),
    "conv1d": (_conv1d_net, (2, 2, 32)),
    "conv3d": (_conv3d_net, (2, 1, 8, 8, 8)),
    "grouped-depthwise": (lambda: _MobileNet().eval(), (2, 3, 16, 16)),
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
        _check_map(relevance, x, method)
    assert_unchanged(model, before)


def test_rank_of_conv1d_and_conv3d_inputs_is_checked():
    with pytest.raises(ValueError, match=r"\(2, 32\)"):
        relprop.explain(_conv1d_net(), randn(2, 32), method="lrp-z")
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\)"):
        relprop.explain(_conv3d_net(), randn(2, 1, 8, 8), method="lrp-z")


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
    in_place = randomise_batch_norms(_mixed_net(inplace=True))
    out_of_place = _mixed_net(inplace=False)
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
    in_place = randomise_batch_norms(_mixed_net(inplace=True)).to(F64)
    out_of_place = _mixed_net(inplace=False).to(F64)
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
    model = make_conservative(_mixed_net(inplace=False)).to(F64)
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


# -- unsupported operations ------------------------------------------------------------------------
def test_unsupported_layer_names_op_and_path():
    with pytest.raises(relprop.UnsupportedOperationError) as info:
        relprop.explain(_LayerNormNet().eval(), randn(1, 3, 8, 8), method="lrp-z")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "LayerNorm" in message and "block.norm" in message, message


def test_unsupported_function_names_op_and_path():
    with pytest.raises(relprop.UnsupportedOperationError) as info:
        relprop.explain(_SortNet().eval(), randn(1, 3, 8, 8), method="lrp-epsilon")
    message = str(info.value)
    assert "sort" in message and "ranker" in message, message


#: methods that propagate through relprop's traced graph (they can record intermediate relevance);
#: the others (plain autograd gradients) may well explain a LayerNorm
GRAPH_METHODS = [m for m in METHODS if "record" in get_method(m).options()]


def test_graph_methods_include_lrp():
    assert {"lrp-z", "lrp-epsilon", "lrp-cmp"} <= set(GRAPH_METHODS)


@pytest.mark.parametrize("method", GRAPH_METHODS)
def test_every_graph_method_rejects_unsupported_ops(method):
    with pytest.raises(relprop.UnsupportedOperationError, match="LayerNorm"):
        relprop.explain(_LayerNormNet().eval(), randn(1, 3, 8, 8), method=method)
