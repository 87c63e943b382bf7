"""The public API: bad input is refused with a clear ValueError, targets follow one convention,
the output has the input's dtype and device, and the method registry is well-formed.

Every check that applies to all methods loops over :func:`relprop.methods`, so that methods
registered later are covered without editing this file.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.patterns import compute_patterns, register_patterns

METHODS = relprop.methods()
#: the methods that explain the CNNs here (the attention methods refuse them: tests/test_attention_maps.py)
CNN_METHODS = [m for m in METHODS if m not in ATTENTION_METHODS]
LRP_NAMES = ["lrp-z", "lrp-epsilon", "lrp-alpha1beta0", "lrp-alpha2beta1", "lrp-cmp"]


def tiny(classes: int = 1000, seed: int = 0) -> nn.Module:
    """A small Conv2d classifier with ``classes`` outputs, input (B, 3, 8, 8), with registered
    patterns (for the pattern methods, computed on random inputs)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, classes),
    ).eval()
    register_patterns(net, compute_patterns(net, batch(32, seed=1000 + seed)))
    return net


def batch(n: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def model10():
    return tiny(classes=10, seed=1)


def _distinct_targets(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A batch whose samples the model puts in different classes (for target tests that can fail)."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


@pytest.fixture(scope="module")
def x10(model10):
    """Four inputs with at least two different predicted classes under ``model10``."""
    for seed in range(100):
        x = batch(4, seed=seed)
        if len(set(_distinct_targets(model10, x).tolist())) >= 2:
            return x
    raise AssertionError("no batch with two predicted classes")


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", CNN_METHODS)
def test_wrong_rank_names_the_shape(model, method):
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        relprop.explain(model, torch.randn(3, 8, 8), method=method)
    with pytest.raises(ValueError, match=r"\(1, 1, 3, 8, 8\)"):
        relprop.explain(model, torch.randn(1, 1, 3, 8, 8), method=method)


def test_wrong_rank_for_conv1d_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)).eval()
    assert relprop.explain(net, torch.randn(2, 2, 8), method="lrp-z").shape == (2, 2, 8)
    with pytest.raises(ValueError, match=r"\(2, 2, 8, 8\)"):
        relprop.explain(net, torch.randn(2, 2, 8, 8), method="lrp-z")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("method", CNN_METHODS)
def test_non_finite_input_is_refused(model, method, bad):
    x = batch()
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN|nan|inf"):
        relprop.explain(model, x, method=method)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_input_is_refused(model, dtype):
    x = torch.ones(2, 3, 8, 8, dtype=dtype)
    with pytest.raises(ValueError, match="floating|dtype"):
        relprop.explain(model, x)


def test_non_tensor_input_is_refused(model):
    with pytest.raises(ValueError, match="Tensor"):
        relprop.explain(model, np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="batch|empty"):
        relprop.explain(model, torch.zeros(0, 3, 8, 8))


def test_non_module_model_is_refused():
    with pytest.raises(ValueError, match="Module"):
        relprop.explain(lambda t: t, batch())


@pytest.mark.parametrize("target", [1000, -1, 5000, [3, 1000], [-1, 0]], ids=str)
@pytest.mark.parametrize("method", CNN_METHODS)
def test_target_out_of_range_names_the_range(model, method, target):
    with pytest.raises(ValueError) as info:
        relprop.explain(model, batch(), target=target, method=method)
    message = str(info.value)
    assert "range" in message and "1000" in message and "999" in message, message


@pytest.mark.parametrize("target", [[1, 2, 3], torch.tensor([[1, 2], [3, 4], [5, 6]]), (5, 6, 7)],
                         ids=["3-for-2", "3x2", "tuple"])
def test_target_count_mismatch(model, target):
    with pytest.raises(ValueError, match="batch of 2"):
        relprop.explain(model, batch(2), target=target, method="lrp-epsilon")


def test_empty_target_list_is_refused(model):
    with pytest.raises(ValueError, match="target"):
        relprop.explain(model, batch(2), target=[], method="lrp-epsilon")


@pytest.mark.parametrize("target", [1.0, [1.5, 2.0], torch.tensor([1.0, 2.0]), True], ids=str)
def test_non_integer_target_is_refused(model, target):
    with pytest.raises(ValueError, match="target"):
        relprop.explain(model, batch(2), target=target, method="lrp-epsilon")


def test_unknown_method_lists_the_known_ones(model):
    with pytest.raises(ValueError) as info:
        relprop.explain(model, batch(), method="lrp-zz")
    message = str(info.value)
    assert "lrp-zz" in message
    for name in METHODS:
        assert name in message, f"{name} missing from: {message}"
    with pytest.raises(ValueError, match="no-such-method"):
        relprop.Explainer(model, "no-such-method")


@pytest.mark.parametrize("method", CNN_METHODS)
def test_unknown_option_is_named(model, method):
    with pytest.raises(ValueError, match="frobnicate"):
        relprop.explain(model, batch(), method=method, frobnicate=3)
    with pytest.raises(ValueError, match="frobnicate"):
        relprop.Explainer(model, method, frobnicate=3)


def test_option_of_another_method_is_refused(model):
    relprop.explain(model, batch(), method="lrp-epsilon", epsilon=0.5)  # valid here
    with pytest.raises(ValueError, match="epsilon"):
        relprop.explain(model, batch(), method="lrp-z", epsilon=0.5)


def test_options_change_the_result(model):
    x = batch()
    small = relprop.explain(model, x, target=3, method="lrp-epsilon", epsilon=1e-9)
    large = relprop.explain(model, x, target=3, method="lrp-epsilon", epsilon=10.0)
    assert not torch.allclose(small, large)
    torch.testing.assert_close(small, relprop.explain(model, x, target=3, method="lrp-z"), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet5000", "no_such_model", ""])
def test_unknown_model_name(name):
    with pytest.raises(ValueError) as info:
        relprop.load_model(name)
    assert repr(name) in str(info.value)


def test_known_model_name_loads():
    net, preprocess = relprop.load_model("resnet18")
    assert isinstance(net, nn.Module) and not net.training
    assert callable(preprocess)


def test_model_output_must_be_class_scores():
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(ValueError, match="batch, classes"):
        relprop.explain(net, batch(), method="lrp-z")


# -- target conventions ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", CNN_METHODS)
def test_target_none_is_the_prediction(model10, x10, method):
    predicted = _distinct_targets(model10, x10)
    by_default = relprop.explain(model10, x10, method=method)
    torch.testing.assert_close(by_default, relprop.explain(model10, x10, target=predicted.tolist(), method=method),
                               rtol=0, atol=0)
    # ... and not some fixed class: explaining every sample for one class gives another map
    torch.testing.assert_close(by_default, relprop.explain(model10, x10, target=None, method=method), rtol=0, atol=0)
    fixed = relprop.explain(model10, x10, target=int(predicted[0]), method=method)
    assert not torch.allclose(by_default, fixed)


@pytest.mark.parametrize("method", CNN_METHODS)
def test_int_list_tensor_and_numpy_targets_agree(model10, x10, method):
    n = x10.shape[0]
    as_int = relprop.explain(model10, x10, target=3, method=method)
    for same in ([3] * n, torch.tensor([3] * n), torch.tensor(3), torch.tensor([3] * n, dtype=torch.int32),
                 np.full(n, 3), np.int64(3), [3]):
        torch.testing.assert_close(relprop.explain(model10, x10, target=same, method=method), as_int,
                                   rtol=0, atol=0, msg=lambda m: f"target {same!r}: {m}")
    assert not torch.allclose(as_int, relprop.explain(model10, x10, target=4, method=method))


@pytest.mark.parametrize("method", CNN_METHODS)
def test_per_sample_targets_equal_separate_calls(model10, x10, method):
    targets = [3, 7, 0, 9]
    rtol, atol = 1e-4, 1e-6
    if method in ("sglrp", "clrp", "contrastive-eb"):
        # their target-minus-dual difference cancels on a random model: float32 round-off, which
        # differs between a batch of 4 and of 1 (kernels block batches differently), grows to ~4e-6 of
        # the map's maximum (docs/methods.md, "Float32 against float64"); in float64 the maps agree to 1e-12
        model10, x10 = copy.deepcopy(model10).double(), x10.double()
        rtol, atol = 1e-10, 1e-12
    together = relprop.explain(model10, x10, target=targets, method=method)
    for b, t in enumerate(targets):
        alone = relprop.explain(model10, x10[b:b + 1], target=t, method=method)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=rtol, atol=atol * float(alone.abs().max()))
    # the per-sample targets are used as given (not the first one for all samples)
    assert not torch.allclose(together[1:2], relprop.explain(model10, x10[1:2], target=3, method=method))


def test_explainer_matches_explain(model10, x10):
    for method in CNN_METHODS:
        explainer = relprop.Explainer(model10, method)
        torch.testing.assert_close(explainer.explain(x10, target=2), relprop.explain(model10, x10, 2, method),
                                   rtol=0, atol=0)
    # the default method is lrp-cmp
    torch.testing.assert_close(relprop.explain(model10, x10, 2), relprop.explain(model10, x10, 2, "lrp-cmp"),
                               rtol=0, atol=0)


def test_record_returns_a_pair_and_without_record_a_tensor(model10, x10):
    explainer = relprop.Explainer(model10, "lrp-epsilon")
    plain = explainer.explain(x10, target=1)
    assert isinstance(plain, torch.Tensor)
    relevance, recorded = explainer.explain(x10, target=1, record=["8", "3"])
    assert set(recorded) == {"8", "3"}
    assert recorded["8"].shape == (4, 16) and recorded["3"].shape == (4, 6, 4, 4)
    torch.testing.assert_close(relevance, plain, rtol=0, atol=0)
    relevance, recorded = explainer.explain(x10, target=1, record=[])
    assert recorded == {}


# -- dtype and device ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", CNN_METHODS)
def test_output_dtype_and_device_follow_the_input(method):
    net32 = tiny(classes=10, seed=2)
    net64 = tiny(classes=10, seed=2).double()
    x32 = batch(2, seed=3)
    r32 = relprop.explain(net32, x32, target=[1, 2], method=method)
    r64 = relprop.explain(net64, x32.double(), target=[1, 2], method=method)
    assert r32.dtype == torch.float32 and r64.dtype == torch.float64
    assert r32.device == x32.device and r64.device == x32.device
    assert r32.shape == r64.shape == x32.shape
    assert torch.isfinite(r64).all()
    # float64 computes the same map, more precisely
    torch.testing.assert_close(r32.double(), r64, rtol=1e-3, atol=1e-5 * float(r64.abs().max()))


# -- the registry ----------------------------------------------------------------------------------
def test_methods_sorted_and_has_lrp():
    names = relprop.methods()
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert all(isinstance(n, str) and n for n in names)
    for name in LRP_NAMES:
        assert name in names
    for name in names:
        assert relprop.method_summary(name).strip()
    # a copy: the caller cannot break the registry
    names.clear()
    assert relprop.methods() == METHODS

