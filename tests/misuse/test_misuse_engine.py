"""No silent wrong answers from the engine: misuse either gets the right map or one clear error.

* A model changed after its first explanation (a replaced layer, a swapped activation, a replaced
  parameter, a new hook) is traced again.
* relprop never flips the user's training flags: several threads on a train-mode model get the
  maps of its inference-mode function, and the model (flags, running statistics) is untouched.
* ``torch.inference_mode()`` gives the same maps as outside it and poisons no cache.
* Forward hooks and custom ``torch.autograd.Function`` calls are refused, naming where they are.
* Every numeric and string option of every method, and every rule parameter, is validated.
* ``target="1"`` and a forward returning a tuple or dict get one clear error.

After every case the user's model is bitwise unchanged and the input untouched.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.attribution.pattern import PATTERN_METHODS
from relprop.patterns import compute_patterns
from model_state import assert_tensor_unchanged, assert_unchanged, snapshot
from relprop.attribution.registry import get_method

#: every method defined on these CNNs (the attention methods refuse them; their misuse cases on a ViT
#: are in tests/test_transformers.py and tests/test_attention_maps.py)
METHODS = [m for m in relprop.methods() if m not in ATTENTION_METHODS]
CHEAP = {"steps": 4, "samples": 3}


def explain(model: nn.Module, x: torch.Tensor, method: str, target=1, **options) -> torch.Tensor:
    accepted = get_method(method).options()
    cheap = {k: v for k, v in CHEAP.items() if k in accepted}
    if method in PATTERN_METHODS and options.get("patterns") is None:  # patterns for this model, from random inputs
        options["patterns"] = _patterns(model, x)
    return relprop.explain(model, x, target=target, method=method, **{**cheap, **options})


def _patterns(model: nn.Module, x: torch.Tensor):
    with torch.inference_mode(False):
        data = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(99), dtype=x.dtype)
        return compute_patterns(model, data)


class Net(nn.Module):
    """Conv + BN (folded), a BN after a ReLU (never folded), dropout, max and average pooling."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.act1 = nn.ReLU()
        self.bn_after_relu = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.pool(self.bn_after_relu(self.act1(self.bn1(self.conv1(x)))))
        x = self.gap(self.act2(self.conv2(x))).flatten(1)
        return self.fc(self.drop(x))


def net(seed: int = 0, classes: int = 5) -> Net:
    torch.manual_seed(seed)
    model = Net(classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


def batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


# -- 1. a changed model is traced again ------------------------------------------------------------
def test_replaced_output_layer_is_traced_again():
    model, x = net(), batch()
    x_before = x.clone()
    relprop.explain(model, x, target=4, method="lrp-epsilon")
    model.fc = nn.Linear(8, 3)
    before = snapshot(model)
    with pytest.raises(ValueError, match="3 classes"):
        relprop.explain(model, x, target=4, method="lrp-epsilon")
    assert relprop.explain(model, x, target=2, method="lrp-epsilon").shape == x.shape
    assert_unchanged(model, before)
    assert_tensor_unchanged(x, x_before)


@pytest.mark.parametrize("change", ["activation", "parameter", "buffer", "attribute", "to-double", "in-place",
                                    "data"])
@pytest.mark.parametrize("method", ["lrp-epsilon", "gradient", "rap-journal", "hedge"])
def test_changed_model_gives_the_changed_models_map(change, method):
    model, x = net(), batch()
    explainer = relprop.Explainer(model, method)
    explainer.explain(x, target=1)
    if change == "activation":
        model.act2 = nn.Tanh()
    elif change == "parameter":
        model.conv2.weight = nn.Parameter(torch.randn_like(model.conv2.weight))
    elif change == "buffer":
        model.bn_after_relu.running_mean = torch.randn(6)
    elif change == "attribute":
        model.conv2.padding = (0, 0)
    elif change == "in-place":
        with torch.no_grad():
            model.conv2.weight.mul_(-2)
            model.bn1.running_var.add_(1)
    elif change == "data":
        model.fc.weight.data = torch.randn_like(model.fc.weight)
    else:
        model.double()
        x = x.double()
    x_before = x.clone()
    before = snapshot(model)
    fresh = copy.deepcopy(model)
    torch.testing.assert_close(explainer.explain(x, target=1), explain(fresh, x, method), rtol=0, atol=0)
    torch.testing.assert_close(explain(model, x, method), explain(fresh, x, method), rtol=0, atol=0)
    assert_unchanged(model, before)
    assert_tensor_unchanged(x, x_before)


def test_hook_added_after_the_first_call_is_seen():
    model, x = net(), batch()
    relprop.explain(model, x, method="lrp-z")
    handle = model.conv2.register_forward_hook(lambda m, i, o: o * 0)
    try:
        before = snapshot(model)
        with pytest.raises(ValueError, match="conv2"):
            relprop.explain(model, x, method="lrp-z")
        assert_unchanged(model, before)
    finally:
        handle.remove()
    assert relprop.explain(model, x, method="lrp-z").shape == x.shape


# -- 2. training flags are never flipped; threads ------------------------------------------------
class _SpyNet(Net):
    """Records every call of ``train``/``eval`` on the root module."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def train(self, mode: bool = True):
        self.calls.append(mode)
        return super().train(mode)


@pytest.mark.parametrize("method", METHODS)
def test_training_flags_are_never_flipped(method):
    torch.manual_seed(0)
    model = _SpyNet()
    model.calls.clear()
    x = batch()
    before = snapshot(model)
    explain(model, x, method)
    assert model.calls == [], f"{method} called train()/eval() on the model: {model.calls}"
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_leaves_a_train_mode_model_unchanged(method):
    model, x = net().train(), batch()
    x_before = x.clone()
    before = snapshot(model)
    got = explain(model, x, method)
    assert_unchanged(model, before)
    assert_tensor_unchanged(x, x_before)
    torch.testing.assert_close(got, explain(copy.deepcopy(model).eval(), x, method), rtol=0, atol=0)


@pytest.mark.parametrize("methods", [["lrp-epsilon", "rap-journal", "gradient"], ["rap", "hedge", "smoothgrad"]])
def test_threads_on_a_train_mode_model(methods):
    model = net().train()
    reference = copy.deepcopy(model).eval()
    inputs = [batch(2, seed=s) for s in range(4)]
    expected = {(m, s): explain(reference, inputs[s], m) for m in methods for s in range(4)}
    before = snapshot(model)
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(4)

    def work(s: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                for m in methods:
                    results.setdefault((m, s), []).append(explain(model, inputs[s], m))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_unchanged(model, before)
    for key, maps in results.items():
        for got in maps:
            torch.testing.assert_close(got, expected[key], rtol=0, atol=0, msg=lambda e: f"{key}: {e}")


# -- 3. inference mode -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_inference_mode_gives_the_same_map_and_poisons_nothing(method):
    model, x = net(), batch()
    before = snapshot(model)
    with torch.inference_mode():
        x_inf = x.clone()
        inside = explain(model, x_inf, method)
    outside = explain(model, x, method)
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    assert not outside.is_inference()
    gradient = relprop.explain(model, x, target=1, method="gradient")
    torch.testing.assert_close(gradient, explain(copy.deepcopy(model), x, "gradient"), rtol=0, atol=0)
    assert_unchanged(model, before)


# -- 4. hooks --------------------------------------------------------------------------------------
def _prune(module, inputs, output):
    return output * torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0]).view(1, -1, 1, 1)


@pytest.mark.parametrize("kind", ["forward", "forward-pre", "global-forward", "global-forward-pre"])
@pytest.mark.parametrize("method", ["lrp-epsilon", "gradient"])
def test_forward_hooks_are_refused(kind, method):
    model, x = net(), batch()
    x_before = x.clone()
    if kind == "forward":
        handle = model.conv2.register_forward_hook(_prune)
    elif kind == "forward-pre":
        handle = model.conv2.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    elif kind == "global-forward":
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    else:
        handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, i: None)
    try:
        before = snapshot(model)
        match = "conv2" if not kind.startswith("global") else "global"
        with pytest.raises(ValueError, match=f"hook.*{match}|{match}.*hook"):
            explain(model, x, method)
        assert_unchanged(model, before)
        assert_tensor_unchanged(x, x_before)
    finally:
        handle.remove()


def test_backward_hooks_are_not_run():
    """relprop explains the forward function; backward hooks change training gradients only."""
    model, x = net(), batch()
    expected = explain(copy.deepcopy(model), x, "gradient")
    calls: list = []
    handle = model.act2.register_full_backward_hook(lambda m, gi, go: calls.append(1) or (gi[0] * 0,))
    try:
        before = snapshot(model)
        got = explain(model, x, "gradient")
        assert_unchanged(model, before)
    finally:
        handle.remove()
    assert not calls
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# -- 5. custom autograd functions ------------------------------------------------------------------
class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class _Reverser(nn.Module):
    def forward(self, x):
        return _GradReverse.apply(x)


class _ReversalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(OrderedDict(reverse=_Reverser(), pool=nn.AdaptiveAvgPool2d(1),
                                              flat=nn.Flatten(), fc=nn.Linear(4, 3)))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("method", ["gradient", "lrp-z"])
def test_custom_autograd_function_is_refused(method):
    torch.manual_seed(0)
    model, x = _ReversalNet().eval(), batch()
    x_before = x.clone()
    before = snapshot(model)
    with pytest.raises(relprop.UnsupportedOperationError, match=r"_GradReverse.*head\.reverse"):
        explain(model, x, method)
    assert_unchanged(model, before)
    assert_tensor_unchanged(x, x_before)
    # autograd functions outside a trace still work (guided backprop uses one itself)
    assert explain(net(), x, "guided-backprop").shape == x.shape


# -- 7. option validation ----------------------------------------------------------------------------
def _bad_values(spec) -> list:
    """Values of the right type that the option's range or choices exclude."""
    if spec.kind in ("number", "int"):
        out = []
        if spec.low is not None:
            out.append(spec.low - 1)
        if spec.high is not None:
            out.append(spec.high + 1)
        if spec.kind == "number":
            out.append(math.nan)
        return out
    if spec.kind == "choice":
        return ["no-such-choice"]
    if spec.kind == "names":
        return [[""]]
    if spec.kind == "bound":
        return [math.inf]
    return []


def _cases():
    for method in METHODS:
        for option, spec in getattr(get_method(method), "option_specs", {}).items():
            yield pytest.param(method, option, object(), id=f"{method}-{option}-type")
            if spec.kind in ("number", "bound"):
                yield pytest.param(method, option, "abc", id=f"{method}-{option}-str")
            if spec.kind == "int":
                yield pytest.param(method, option, 1.5, id=f"{method}-{option}-float")
            if spec.kind == "bool":
                yield pytest.param(method, option, 1, id=f"{method}-{option}-int")
            for k, bad in enumerate(_bad_values(spec)):
                yield pytest.param(method, option, bad, id=f"{method}-{option}-value{k}")


def test_every_option_is_declared():
    for method in METHODS:
        m = get_method(method)
        assert set(m.option_specs) == set(m.options()), method


@pytest.mark.parametrize("method, option, bad", list(_cases()))
def test_bad_option_is_refused_naming_it(method, option, bad):
    model = net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"option '{option}' of method '{method}'"):
        relprop.Explainer(model, method, **{option: bad})
    assert_unchanged(model, before)


def test_negative_epsilon_message():
    model, x = net(), batch()
    with pytest.raises(ValueError, match="option 'epsilon' of method 'lrp-epsilon' must be a non-negative number, got -1"):
        relprop.explain(model, x, method="lrp-epsilon", epsilon=-1)
    with pytest.raises(ValueError, match="option 'epsilon' of method 'lrp-epsilon' must be a number, got str 'abc'"):
        relprop.explain(model, x, method="lrp-epsilon", epsilon="abc")


def test_good_options_still_work():
    model, x = net(), batch()
    before = snapshot(model)
    for method in METHODS:
        assert explain(model, x, method, **get_method(method).options()).shape == x.shape
    assert explain(model, x, "lrp-epsilon", epsilon=0).shape == x.shape
    assert explain(model, x, "hedge", gamma=1).shape == x.shape
    assert explain(model, x, "sglrp", low=-3, high=torch.tensor(3.0)).shape == x.shape
    assert explain(model, x, "gradcam", layer="act2").shape == x.shape
    assert_unchanged(model, before)


@pytest.mark.parametrize("make, name", [
    (lambda r: r.Epsilon(-1), "epsilon"), (lambda r: r.Epsilon(math.inf), "epsilon"),
    (lambda r: r.Epsilon("abc"), "epsilon"), (lambda r: r.Gamma(-0.5), "gamma"),
    (lambda r: r.Gamma(0.25, stabilizer=-1), "stabilizer"), (lambda r: r.AlphaBeta(2.0, 0.5), "alpha"),
    (lambda r: r.AlphaBeta(math.nan, 0.0), "alpha"), (lambda r: r.AlphaBeta(1.0, 0.0, -1e-6), "stabilizer"),
    (lambda r: r.Flat(-1), "stabilizer"), (lambda r: r.WSquare(math.nan), "stabilizer"),
    (lambda r: r.WSquare(zero_bias=1), "zero_bias"), (lambda r: r.ZBox(2.0, 1.0), "low"),
    (lambda r: r.ZBox(math.nan, 1.0), "low"), (lambda r: r.ZBox("a", 1.0), "low"),
    (lambda r: r.ZBox(0.0, 1.0, bias="yes"), "bias"),
])
def test_bad_rule_parameters_are_refused(make, name):
    from relprop import rules
    with pytest.raises(ValueError, match=f"'{name}'"):
        make(rules)


def test_bad_hedge_and_rap_rule_parameters():
    from relprop.rules.hedge import Hedge
    from relprop.rules.rap import RAPHidden
    with pytest.raises(ValueError, match="'gamma'"):
        Hedge(3.0)
    with pytest.raises(ValueError, match="'one_by_one'"):
        RAPHidden("nope")


def test_bad_composite_parameters():
    with pytest.raises(ValueError, match="'norm_epsilon'"):
        relprop.Composite([], norm_epsilon=-1)
    with pytest.raises(ValueError, match="'epsilon_batchnorm'"):
        relprop.Composite([], epsilon_batchnorm="x")


# -- 17. target type; forward output -----------------------------------------------------------------
@pytest.mark.parametrize("target", ["1", 1.0, b"1", {1: 2}])
@pytest.mark.parametrize("method", ["lrp-epsilon", "gradient", "integrated-gradients"])
def test_target_of_a_wrong_type_names_target(target, method):
    model, x = net(), batch()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"target must be .*int"):
        explain(model, x, method, target=target)
    assert_unchanged(model, before)


class _TupleNet(nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        logits = self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))
        return {"logits": logits} if self.as_dict else (logits, x)


@pytest.mark.parametrize("as_dict", [False, True])
@pytest.mark.parametrize("method", ["lrp-z", "gradient"])
def test_forward_returning_several_values_is_refused(as_dict, method):
    model, x = _TupleNet(as_dict).eval(), batch()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"forward must return one tensor of shape \(batch, classes\)"):
        explain(model, x, method)
    assert_unchanged(model, before)
