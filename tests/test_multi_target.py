"""Several targets per sample in one call: ``target`` with K classes per sample gives maps shaped
(B, K, ...) equal to K separate calls, for every registered method; the methods built on the
backward interpreter run one forward pass for all targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.attribution.registry import get_method
from relprop.multi_target import ClassTargets
from relprop.patterns import compute_patterns, register_patterns
from relprop import ops, propagate
from relprop.propagate import Propagator
from relprop.rules import base as rules_base
from relprop.rules import lrp as lrp_rules
from relprop.rules import Step
from engine_checks import CHEAP_OPTIONS
from misuse.model_state import assert_unchanged, snapshot

F64 = torch.float64
CLASSES = 7
#: the methods that explain CNNs (not the attention methods, which refuse them)
METHODS = [m for m in relprop.methods() if m not in ATTENTION_METHODS]
NATIVE = [m for m in METHODS if get_method(m).multi_target]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN() if kind == "cnn" else SmallResNet()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # batch norms that do something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model = model.to(F64).eval()
    # the pattern methods' default patterns for it, from random inputs
    register_patterns(model, compute_patterns(model, torch.randn(16, 3, 12, 12, generator=g, dtype=F64)))
    return model


@pytest.fixture(scope="module", params=["cnn", "resnet"])
def model(request):
    return _model(request.param)


def _x(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 12, 12, generator=torch.Generator().manual_seed(2), dtype=F64)


TARGETS = torch.tensor([[0, 3, 6], [2, 2, 5], [6, 1, 0]])


def _explain(model, x, method, target, **extra):
    accepted = get_method(method).options()
    options = {k: v for k, v in CHEAP_OPTIONS.items() if k in accepted}
    return relprop.explain(model, x, target=target, method=method, **options, **extra)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * max(scale, 1e-12),
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("method", METHODS)
def test_k_targets_equal_k_separate_calls(model, method):
    x = _x()
    before = snapshot(model)
    maps = _explain(model, x, method, TARGETS)
    assert maps.shape == (3, 3, *x.shape[1:])
    for k in range(TARGETS.shape[1]):
        _assert_close(maps[:, k], _explain(model, x, method, TARGETS[:, k]), f"{method}, target column {k}")
    assert maps.abs().sum() > 0
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["lrp-cmp", "rap", "sglrp", "hedge"])
def test_a_list_of_class_lists_and_k_1(model, method):
    x = _x()
    as_tensor = _explain(model, x, method, TARGETS)
    _assert_close(_explain(model, x, method, TARGETS.tolist()), as_tensor, "list of lists")
    one = _explain(model, x, method, [[c] for c in TARGETS[:, 1].tolist()])
    assert one.shape == (3, 1, *x.shape[1:])
    _assert_close(one[:, 0], _explain(model, x, method, TARGETS[:, 1].tolist()), "K = 1")


def test_records_are_per_target(model):
    x = _x()
    name = "classifier.1" if isinstance(model, SmallCNN) else "fc"
    maps, recorded = relprop.Explainer(model, "lrp-epsilon").explain(x, TARGETS, record=[name])
    for k in range(TARGETS.shape[1]):
        single, single_recorded = relprop.Explainer(model, "lrp-epsilon").explain(x, TARGETS[:, k], record=[name])
        _assert_close(recorded[name][:, k], single_recorded[name], "recorded relevance")
        _assert_close(maps[:, k], single, "relevance")


def test_a_composite_explains_k_targets(model):
    composite = relprop.Composite([(relprop.composite.by_type("conv", "linear"), relprop.rules.Gamma(0.3))],
                                  name="gamma")
    x = _x()
    maps = relprop.explain(model, x, TARGETS, method=composite)
    for k in range(TARGETS.shape[1]):
        _assert_close(maps[:, k], relprop.explain(model, x, TARGETS[:, k], method=composite), "composite")


@pytest.mark.parametrize("method", NATIVE)
def test_one_forward_pass_serves_every_target(model, method, monkeypatch):
    calls = []
    original = Propagator.forward

    def counted(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Propagator, "forward", counted)
    _explain(model, _x(), method, TARGETS)
    assert calls == [3], f"{method}: forward passes of batch sizes {calls} for 3 samples x 3 targets"


def test_shared_terms_are_computed_once_per_sample():
    x, z = torch.randn(2, 4), torch.randn(2, 3)
    step = Step(None, [x.repeat_interleave(3, 0)], (), {}, z.repeat_interleave(3, 0), None, False,
                repeats=3, base_inputs=[x], base_output=z)
    seen = []

    def make(inputs, output):
        seen.append(inputs[0].shape[0])
        return inputs[0].sum(1) + output.sum(1)

    term = step.shared("t", make)
    assert step.shared("t", make) is term and seen == [2]
    torch.testing.assert_close(term, (x.sum(1) + z.sum(1)).repeat_interleave(3))


class PooledResidualNet(nn.Module):
    """Convolution, batch norm (folded, and one unfolded), max pool, a residual block (add) and average
    pooling: the steps that the rules of lrp-cmp, sglrp and rap broadcast over the targets."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.BatchNorm2d(8))  # not folded: after a max pool
        self.block = Block(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


#: a composite of the other rules that broadcast: w^2 first, gamma, magnitude-proportional sums, the
#: epsilon rule on unfolded batch norms
BROADCASTING = relprop.Composite([(relprop.composite.first(1), relprop.rules.WSquare()),
                                  (relprop.composite.by_type("conv", "linear"), relprop.rules.Gamma(0.3))],
                                 add=relprop.rules.AbsoluteSum(), batchnorm="epsilon", name="broadcasting")


@pytest.mark.parametrize("method", ["lrp-cmp", "rap", "sglrp", BROADCASTING],
                         ids=lambda m: m if isinstance(m, str) else m.name)
def test_repeated_pass_copies_no_feature_map(method, monkeypatch):
    """The values of the convolutions, batch norms, max pool, sum and pooling are broadcast over the
    targets, never repeated: only the classifier's (2-D) values are; the maps equal separate calls."""
    torch.manual_seed(0)
    model = PooledResidualNet().to(F64).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = _x()
    repeated = []
    for module in (propagate, rules_base):
        original = module.repeat_rows

        def counted(t, repeats, original=original):
            if repeats > 1:
                repeated.append(tuple(t.shape))
            return original(t, repeats)

        monkeypatch.setattr(module, "repeat_rows", counted)
    explain = ((lambda target: _explain(model, x, method, target)) if isinstance(method, str)
               else (lambda target: relprop.explain(model, x, target, method=method)))
    maps = explain(TARGETS)
    assert repeated and all(len(shape) == 2 for shape in repeated), f"{method} repeated {repeated}"
    for k in range(TARGETS.shape[1]):
        _assert_close(maps[:, k], explain(TARGETS[:, k]), f"{method}, target column {k}")


# -- groups of targets ------------------------------------------------------------------------------
def _two_thirds_of_the_largest_map(model: nn.Module, x: torch.Tensor, targets: int) -> int:
    """A :data:`relprop.propagate.PASS_BYTES` under which the walk over ``targets`` targets per sample
    goes on in groups of two from the nodes whose maps are the largest."""
    propagator, cache = propagate.forward_for(model, x)
    row = max(t.numel() // x.shape[0] * t.element_size() for t in cache.outputs if isinstance(t, torch.Tensor))
    return row * x.shape[0] * targets * 2 // 3


@pytest.mark.parametrize("method,options", [*[(m, {}) for m in NATIVE], ("sglrp", {"variant": "official"}),
                                            ("clrp", {"variant": "official-type1"})],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={w}" for k, w in v.items()))
def test_targets_in_groups_equal_one_walk(model, method, options, monkeypatch):
    """Past :data:`relprop.propagate.PASS_BYTES` the walk takes the targets in groups (here 2 + 1)
    from the first node whose maps are too large: the maps and the records of layers on either side
    of that node equal one walk over every target."""
    x = _x()
    # on either side of the node where the groups begin (the max pool's, in the small CNN), at or
    # below the start of hedge and rsp
    names = ["features.4", "features.2"] if isinstance(model, SmallCNN) else ["block.conv2", "stem.0"]
    records = get_method(method).records()
    cheap = {k: v for k, v in CHEAP_OPTIONS.items() if k in get_method(method).options()}
    explainer = relprop.Explainer(model, method, **cheap, **options)

    def explain():
        return explainer.explain(x, TARGETS, record=names) if records else (explainer.explain(x, TARGETS), {})

    expected, expected_recorded = explain()
    groups = []
    original = Propagator._in_groups

    def spied(self, count, rel, pos, parts, *args):
        groups.append([repeated.repeats for _, repeated in parts])
        return original(self, count, rel, pos, parts, *args)

    monkeypatch.setattr(Propagator, "_in_groups", spied)
    monkeypatch.setattr(propagate, "PASS_BYTES", _two_thirds_of_the_largest_map(model, x, TARGETS.shape[1]))
    actual, actual_recorded = explain()
    assert groups and all(g == [2, 1] for g in groups), f"{method}: groups {groups}"
    assert set(actual_recorded) == set(expected_recorded) == (set(names) if records else set())
    for name in expected_recorded:
        _assert_close(actual_recorded[name], expected_recorded[name], f"{method}, recorded {name}")
    _assert_close(actual, expected, f"{method} in groups")


def test_groups_share_the_terms_of_each_sample(monkeypatch):
    """The groups compute the z+ responses once per layer and sample, as one walk does; only the
    transposed products are repeated per group. In the small residual net every map has the same
    size, so the groups begin at the pooling and cover both convolutions of the block."""
    model, x = _model("resnet"), _x()
    budget = _two_thirds_of_the_largest_map(model, x, TARGETS.shape[1])
    counts: dict[str, int] = {}

    def counting(name, original):
        def counted(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(*args, **kwargs)
        return counted

    monkeypatch.setattr(lrp_rules, "_contributions", counting("z+", lrp_rules._contributions))
    monkeypatch.setattr(ops.Affine, "transpose", counting("transpose", ops.Affine.transpose))
    relprop.explain(model, x, TARGETS, method="lrp-cmp")
    one_walk = dict(counts)
    counts.clear()
    monkeypatch.setattr(propagate, "PASS_BYTES", budget)
    relprop.explain(model, x, TARGETS, method="lrp-cmp")
    assert counts["z+"] == one_walk["z+"] == 2, (counts, one_walk)  # the block's two convolutions
    assert counts["transpose"] > one_walk["transpose"], (counts, one_walk)


class ScaledEpsilon(relprop.rules.AffineRule):
    """A user's rule whose shared term has the same key as :class:`OffsetEpsilon`'s but another value."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    __hash__ = None  # type: ignore[assignment]  # not hashable: its terms are told apart by id

    def __call__(self, layer, x, z, r, nonnegative):
        zs = relprop.rules.shared_term("z", x, z, lambda x, z: z * self.scale + 1e-3 * z.sign())
        return x * layer.transpose(r / zs, layer.weight, x)


class OffsetEpsilon(ScaledEpsilon):
    def __call__(self, layer, x, z, r, nonnegative):
        zs = relprop.rules.shared_term("z", x, z, lambda x, z: z + self.scale * z.sign())
        return x * layer.transpose(r / zs, layer.weight, x)


def test_a_pass_that_keeps_the_forward_pass_shares_terms_with_equal_rules_only():
    """Without ``release``, a backward pass keeps the rules' per-sample terms with the forward pass for
    the next pass; a pass with other rules, even with the same term keys, gets its own."""
    model, x = _model("cnn"), _x()
    target = TARGETS[:, 0]
    one = lambda rule: relprop.Composite([(relprop.composite.by_type("conv", "linear"), rule)], name="c")
    composites = [one(relprop.rules.AlphaBeta(2.0, 1.0)), one(relprop.rules.AlphaBeta(1.0, 0.0)),
                  one(ScaledEpsilon(2.0)), one(OffsetEpsilon(0.5)), one(relprop.rules.AlphaBeta(2.0, 1.0))]

    def run(composite, propagator, cache, release):
        logits = cache.outputs[-1]
        initial = torch.zeros_like(logits).scatter_(1, target[:, None], logits.gather(1, target[:, None]))
        return propagator.backward(cache, initial, composite, release=release)[0]

    propagator, cache = propagate.forward_for(model, x)
    shared = [run(c, propagator, cache, release=i == len(composites) - 1) for i, c in enumerate(composites)]
    assert cache.terms is not None
    for composite, actual in zip(composites, shared):
        fresh = run(composite, *propagate.forward_for(model, x), release=True)
        _assert_close(actual, fresh, f"{composite.rules[0][1]!r} after other passes")


# -- misuse ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target,message", [
    ([[0, 1], [2], [3, 4]], "same number K of classes"),
    ([[0, 1], [2, 3]], "2 rows of classes for a batch of 3"),
    (torch.tensor([[0, 1], [2, 3], [4, 5], [6, 0]]), "4 rows of classes for a batch of 3"),
    ([[0, 1], [2, 3], [4, 7]], r"target \[7\] out of range: the model has 7 classes"),
    ([[0, -1], [2, 3], [4, 5]], r"out of range"),
    (torch.zeros(3, 0, dtype=torch.long), "K = 0"),
    ([[], [], []], "K = 0"),
    (torch.zeros(3, 2), "integer class indices, got dtype torch.float32"),
    ([[0, 1.5], [2, 3], [4, 5]], "integer class indices, got float"),
    ([[0, 1], 2, [4, 5]], "mixes class indices and class lists"),
])
@pytest.mark.parametrize("method", ["lrp-cmp", "gradient"])
def test_misuse_is_refused_clearly(model, target, message, method):
    with pytest.raises(ValueError, match=message):
        relprop.explain(model, _x(), target, method=method)


def test_class_targets_reshape_rows():
    targets = ClassTargets(torch.tensor([[1, 2], [3, 4], [5, 6]]))
    assert targets.flat().tolist() == [1, 2, 3, 4, 5, 6]
    rows = torch.arange(6.0).view(6, 1)
    assert targets.unflatten(rows)[:, :, 0].tolist() == [[0, 1], [2, 3], [4, 5]]
