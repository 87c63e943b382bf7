"""Every registered method gives finite maps shaped like the input on the zoo models and on
EfficientNet-Lite0 with its real weights, and a batch gives the same maps as its samples."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.attribution.pattern import PATTERN_METHODS
from relprop.data.photos import load_photo
from relprop.patterns import compute_patterns
from engine_checks import F64, METHODS, ZOO_TINY, assert_unchanged, check_map, explain, randn, snapshot


# -- every method on every model -------------------------------------------------------------------
@pytest.mark.parametrize("name,size,method", [(n, s, m) for n, s in ZOO_TINY for m in METHODS],
                         ids=[f"{n}-{s}-{m}" for n, s in ZOO_TINY for m in METHODS])
def test_every_method_gives_finite_maps_on_the_zoo(zoo, name, size, method):
    model = zoo.get(name, "f32")
    x = randn(1, 3, size, size, seed=3)
    before = snapshot(model)
    relevance = explain(model, x, method)
    check_map(relevance, x, method)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_attention_methods_refuse_the_zoo_cnns_clearly(zoo, method):
    """The methods that read attention probabilities name the problem on a model without attention."""
    for name, size in ZOO_TINY:
        model = zoo.get(name, "f32")
        with pytest.raises(ValueError, match=f"{type(model).__name__} has no attention"):
            explain(model, randn(1, 3, size, size, seed=3), method)


# -- the pattern methods: they need patterns computed on data for each model ---------------------------
#: VGG-16's classifier (25088 x 4096) makes its float64 statistics about 1 GB and the test over 10 s
_PATTERN_ZOO = [pytest.param(n, s, marks=pytest.mark.slow, id=n) if n.startswith("vgg16") else pytest.param(n, s, id=n)
                for n, s in ZOO_TINY]


@pytest.mark.parametrize("name,size", _PATTERN_ZOO)
def test_pattern_methods_on_the_zoo(zoo, name, size):
    """Without patterns the pattern methods say how to compute them; with patterns computed on a few
    inputs they give finite maps, or (float32 on these random deep networks, where the products of
    patterns between bottlenecks can exceed its range) refuse, naming the overflow and float64."""
    model = zoo.get(name, "f32")
    x = randn(1, 3, size, size, seed=3)
    before = snapshot(model)
    for method in PATTERN_METHODS:
        with pytest.raises(ValueError, match="compute_patterns"):
            relprop.explain(model, x, method=method)
    patterns = compute_patterns(model, [randn(4, 3, size, size, seed=s) for s in (40, 41)])
    explained = 0
    for method in PATTERN_METHODS:
        try:
            relevance = relprop.explain(model, x, method=method, patterns=patterns)
        except ValueError as err:
            assert "overflowed float32" in str(err) or "exceeds the range of float32" in str(err), str(err)
            assert "float64" in str(err)
            continue
        check_map(relevance, x, method)
        assert relevance.abs().sum() > 0
        explained += 1
    assert explained >= 1  # pattern-attribution (W * A) stays in range
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", PATTERN_METHODS)
def test_pattern_methods_refuse_efficientnet_lite0_clearly(lite0, method):
    """EfficientNet-Lite0 has ReLU6 activations, for which the patterns are not defined."""
    model, _ = lite0
    with pytest.raises(ValueError, match=r"defined for networks of affine layers, ReLU.*ReLU6"):
        relprop.explain(model, randn(1, 3, 64, 64, seed=3), method=method)


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
    check_map(relevance, chelsea, method)
    assert relevance.abs().sum() > 0, "the map of the predicted class of a real photo is all zero"


def _assert_batch_equals_samples(model, x, method, rtol):
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    batched = explain(model, x, method, target=target)
    check_map(batched, x, method)
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


def test_pattern_methods_batch_equals_samples_resnet50_small(resnet50_small_f64):
    model = resnet50_small_f64
    patterns = compute_patterns(model, [randn(4, 3, 32, 32, dtype=F64, seed=s) for s in (50, 51)])
    x = randn(3, 3, 32, 32, dtype=F64, seed=5)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    for method in PATTERN_METHODS:
        batched = relprop.explain(model, x, target=target, method=method, patterns=patterns)
        check_map(batched, x, method)
        for b in range(x.shape[0]):
            single = relprop.explain(model, x[b:b + 1], target=int(target[b]), method=method, patterns=patterns)
            assert single.abs().max() > 0
            torch.testing.assert_close(batched[b:b + 1], single, rtol=1e-9, atol=1e-9 * float(single.abs().max()))


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
