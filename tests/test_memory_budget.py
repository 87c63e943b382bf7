"""Bounded memory: segment-wise recomputation gives the unbounded run's relevance exactly."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torchvision

import relprop
from relprop import needs, segments
from relprop.attribution.lrp import cmp_composite
from relprop.layer_gradient import default_layer
from relprop.propagate import ForwardCache, forward_for, propagator_for

from test_transformers import small_vit

FLOAT = torch.float32  # recomputation is bitwise identical: float32 suffices (and is fast)
METHODS = ["lrp-cmp", "rap", "hedge", "sglrp"]


def vgg16() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()


def resnet50() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


def image(batch: int = 1, side: int = 32, dtype: torch.dtype = FLOAT) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, dtype=dtype, generator=torch.Generator().manual_seed(1))


def full_need(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The estimated memory of the whole forward pass with the largest backward step."""
    sizes = segments.measure(propagator_for(model), x)
    return sum(sizes.size) + max(sizes.work)


def tightest(model: torch.nn.Module, x: torch.Tensor, method: str | None = None) -> int:
    """The smallest budget (within 1 %) that the segments of ``model`` on ``x`` fit under ``method``
    (None: as any method plans without knowing its rules)."""
    propagator = propagator_for(model, fold_batchnorm=method not in ("rap", "hedge"))
    reads = None
    if method == "lrp-cmp":  # its plan keeps only what its rules read (relprop.needs)
        with needs.rules_known(cmp_composite()):
            reads = needs.reads_for(propagator)
    sizes = segments.measure(propagator, x, reads)
    last = len(sizes.size) - 2
    if method == "hedge":
        last = propagator.graph.find(default_layer(propagator.graph))
    return smallest_budget(lambda budget: segments.plan(propagator, sizes, budget, last), sizes)


def smallest_budget(plan: Callable[[int], object], sizes: segments.Sizes) -> int:
    """The smallest budget (within 1 %) for which ``plan(budget)`` raises no ValueError (bisection
    from the whole forward pass's need)."""
    low, high = 1, sum(sizes.size) + max(sizes.work)
    while high - low > high // 100:
        middle = (low + high) // 2
        try:
            plan(middle)
            high = middle
        except ValueError:
            low = middle
    return high


def segment_count(model: torch.nn.Module, x: torch.Tensor, budget: int) -> int:
    with segments.bounded(budget):
        _, cache = forward_for(model, x)
    return len(cache.segments) if isinstance(cache, segments.SegmentedCache) else 1


MODELS = {"vgg16": (vgg16, 32), "resnet50": (resnet50, 32), "small_vit": (small_vit, 32)}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    make, side = MODELS[request.param]
    model, x = make(), image(side=side)
    if request.param == "small_vit":
        x = x.double()
    return request.param, model, x, full_need(model, x)


def test_cuts_of_a_chain_and_of_a_residual_block():
    vgg = propagator_for(vgg16()).graph.nodes
    assert all(segments.cut_points(vgg))
    resnet = propagator_for(resnet50()).graph.nodes
    cuts = segments.cut_points(resnet)
    names = {n.name for n, c in zip(resnet, cuts) if c}
    assert "layer1.0.conv2" not in names and any(name.startswith("layer1.0") for name in names)
    assert 10 < sum(cuts) < len(resnet) / 2


@pytest.mark.parametrize("method", METHODS)
def test_bounded_runs_equal_the_unbounded_run(case, method, monkeypatch):
    name, model, x, need = case
    expected = relprop.explain(model, x, 3, method=method, memory_budget="unlimited")
    got = relprop.explain(model, x, 3, method=method, memory_budget=tightest(model, x, method) * 11 // 10)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    monkeypatch.setattr(segments, "MAX_SEGMENT_NODES", 1)
    got = relprop.explain(model, x, 3, method=method, memory_budget=10 * need)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method,options", [("cp-lrp", {}), ("attnlrp", {}), ("attnlrp", {"gamma": 0.25})])
def test_transformer_methods_under_a_budget_equal_the_unbounded_run(method, options):
    """CP-LRP and AttnLRP on a ViT held in segments (benchmarks/transformer_speed.py compares their
    memory with lxt's this way): the unbounded maps, with the forward pass really cut."""
    model, x = small_vit(), image(batch=2, side=32).double()
    budget = tightest(model, x) * 11 // 10
    assert segment_count(model, x, budget) > 1
    expected = relprop.explain(model, x, [3, 5], method=method, memory_budget="unlimited", **options)
    got = relprop.explain(model, x, [3, 5], method=method, memory_budget=budget, **options)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert expected.abs().sum() > 0


def test_budgets_below_the_whole_pass_segment_it(case, monkeypatch):
    name, model, x, need = case
    tight = tightest(model, x)
    halfway = (tight + need) // 2
    assert segment_count(model, x, 10 * need) == 1
    assert segment_count(model, x, halfway) > 1
    assert segment_count(model, x, tight) >= segment_count(model, x, halfway)
    monkeypatch.setattr(segments, "MAX_SEGMENT_NODES", 1)
    cuts = sum(segments.cut_points(propagator_for(model).graph.nodes)[1:-1])
    assert segment_count(model, x, 10 * need) >= cuts


def test_other_propagation_methods_and_records():
    model, x = vgg16(), image()
    budget = tightest(model, x) * 11 // 10
    for method in ("rsp", "clrp", "relevance-cam"):
        expected = relprop.explain(model, x, 3, method=method, memory_budget="unlimited")
        got = relprop.explain(model, x, 3, method=method, memory_budget=budget)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    explainer = relprop.Explainer(model, "lrp-cmp", memory_budget=budget)
    _, recorded = explainer.explain(x, 3, record=["features.10", "features.2"])
    _, reference = relprop.Explainer(model, "lrp-cmp").explain(x, 3, record=["features.10", "features.2"])
    for key in reference:
        torch.testing.assert_close(recorded[key], reference[key], rtol=0, atol=1e-12)


def test_several_targets_per_sample_under_a_budget():
    model, x = vgg16().double(), image(batch=2, dtype=torch.float64)  # its plan tiles convolutions
    target = [[1, 2], [3, 4]]
    for method in ("lrp-cmp",):
        budget = tightest(model, x, method) * 11 // 10
        got = relprop.explain(model, x, target, method=method, memory_budget=budget)
        columns = [relprop.explain(model, x, [row[k] for row in target], method=method, memory_budget="unlimited")
                   for k in range(2)]
        torch.testing.assert_close(got, torch.stack(columns, 1), rtol=0, atol=1e-12)
        one_call = relprop.explain(model, x, target, method=method, memory_budget="unlimited")
        torch.testing.assert_close(got, one_call, rtol=1e-4, atol=1e-6)


def test_a_budget_too_small_names_the_largest_node():
    model, x = vgg16(), image()
    with pytest.raises(ValueError, match=r"memory_budget of 1.00 kB is too small .*node 'features\.\d+' outputs"):
        relprop.explain(model, x, 3, memory_budget=1000)


def test_a_batch_over_the_budget_is_explained_in_parts():
    """A budget that one sample fits but the batch does not (not even in segments): the batch is
    explained in parts and joined, per-sample targets, K targets per sample and records included."""
    model, x = vgg16(), image(batch=4)
    one = tightest(model, x[:1])
    assert one * 3 < tightest(model, x)  # the batch of 4 cannot fit this budget in segments
    budget = one * 3 // 2
    cases = [dict(target=torch.tensor([3, 1, 4, 1])), dict(target=[[1, 2], [3, 4], [5, 6], [7, 8]]),
             dict(target=3, record=["features.28"])]
    for case in cases:
        got = relprop.Explainer(model, "lrp-cmp", memory_budget=budget).explain(x, **case)
        want = relprop.Explainer(model, "lrp-cmp", memory_budget="unlimited").explain(x, **case)
        if "record" in case:
            got, got_rec = got
            want, want_rec = want
            torch.testing.assert_close(got_rec["features.28"], want_rec["features.28"], rtol=1e-4, atol=1e-6)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # too small for a single sample: the single sample's error
    with pytest.raises(ValueError, match=r"memory_budget of .* is too small"):
        relprop.explain(model, x, 3, memory_budget=one // 2)


def test_the_model_is_unchanged():
    model, x = resnet50(), image()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    relprop.explain(model, x, 3, method="lrp-cmp", memory_budget=tightest(model, x))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and not model._forward_hooks


def test_automatic_choice_keeps_small_inputs_whole():
    model, x = vgg16(), image()
    _, cache = forward_for(model, x)
    assert type(cache) is ForwardCache


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 10**9), ("512 MiB", 512 * 2**20), ("1.5kB", 1500),
                                            (2048, 2048), ("unlimited", "unlimited"), (None, None)])
def test_budget_parsing(text, expected):
    assert segments.parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, -5, True, "4 parsecs"])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="memory_budget must be"):
        relprop.Explainer(vgg16(), "lrp-cmp", memory_budget=bad)


def test_cli_accepts_a_memory_budget():
    from relprop.cli import build_parser

    args = build_parser().parse_args(["explain", "a.png", "--model", "m", "--method", "lrp-cmp",
                                      "--memory-budget", "4GB"])
    assert args.memory_budget == "4GB"
