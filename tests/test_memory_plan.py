"""Rule-aware memory plans: banded max pooling, the rules' own working memory against what their steps
allocate, placeholders for the values no step reads, and budgets that only such a plan meets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.profiler import ProfilerActivity, profile

import relprop
from relprop import needs, ops, segments, tiling
from relprop.attribution.lrp import cmp_composite
from relprop.propagate import propagator_for
from relprop.rules import AlphaBeta, PassThrough, Step, WinnerTakeAll
from relprop.rules.pooling import winner_in_bands

from test_memory_budget import smallest_budget

SRC = Path(__file__).resolve().parents[1] / "src"
#: kernel, stride, padding, dilation, ceil_mode (overlapping windows, padding, dilation, ceil mode)
POOLS = [(2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 2, 0, 1, True), (3, 1, 1, 1, False),
         (2, 3, 0, 1, True), (3, 2, 1, 2, True), ((3, 2), (2, 1), (1, 0), 1, False)]


def pooled(pool: tuple, x: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    kernel, stride, padding, dilation, ceil = pool
    module = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil)
    params = ops.MaxPool(module)._params_2d((x,), {})
    out, indices = torch.ops.aten.max_pool2d_with_indices(x, **params)
    return params, out, indices


@pytest.mark.parametrize("pool", POOLS)
def test_banded_winner_take_all_equals_the_whole_step(pool):
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params, out, indices = pooled(pool, x)
    r = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    whole = torch.ops.aten.max_pool2d_with_indices_backward(r, x, *params.values(), indices)
    for rows in (1, 2, 3, out.shape[2]):
        torch.testing.assert_close(winner_in_bands(x.shape, indices, r, rows), whole, rtol=0, atol=1e-12)
    unbatched = winner_in_bands(x.shape[1:], indices[0], r[0], 2)  # a 3-d input: one sample
    torch.testing.assert_close(unbatched, whole[0], rtol=0, atol=1e-12)


def pooling_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                         nn.Conv2d(6, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 3 * 2, 4)).double().eval()


def test_banded_pooling_in_a_network(monkeypatch):
    model = pooling_net()
    x = torch.randn(2, 3, 15, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = relprop.explain(model, x, 1, method="lrp-cmp", memory_budget="unlimited")
    for rows in (1, 2):
        monkeypatch.setattr(tiling, "FORCE_ROWS", rows)
        got = relprop.explain(model, x, 1, method="lrp-cmp", memory_budget="unlimited")
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def allocated_peak(fn) -> tuple[int, object]:
    """The largest number of bytes that ``fn()`` had allocated at once (the profiler's records of
    allocations and frees, in order) and its result."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    total = peak = 0
    for _, change in events:
        total += change
        peak = max(peak, total)
    return peak, result


def one_step(op, rule, x: torch.Tensor, reads_inputs: bool = True) -> tuple[Step, int, int]:
    """The backward step of ``op`` on ``x`` (a placeholder input where the rule reads none); the
    bytes of its output and input."""
    out, state = op.forward_with_state((x,), {})
    inputs = [x if reads_inputs else needs.placeholder(x)]
    step = Step(op, inputs, (inputs[0],), {}, out, state, False)
    return step, out.numel() * out.element_size(), x.numel() * x.element_size()


def test_estimates_cover_what_the_steps_allocate_and_no_more_than_needed():
    """The rules' own estimates (relevance at the output included) cover the measured allocations of
    their steps, within a small factor, where the generic estimate is several times too large."""
    x = torch.randn(1, 16, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    relu = ops.Activation(nn.ReLU())
    pool = ops.MaxPool(nn.MaxPool2d(3, 2, 1))
    for op, rule in ((relu, PassThrough()), (pool, WinnerTakeAll())):
        reads_inputs, reads_output = rule.reads(op)
        assert not reads_inputs and not reads_output
        step, out_bytes, in_bytes = one_step(op, rule, x, reads_inputs)
        r = torch.randn_like(step.output)
        measured, (result,) = allocated_peak(lambda: rule.relevance(step, r))
        estimate = rule.working_bytes(op, out_bytes, in_bytes)
        assert out_bytes + measured <= estimate <= 1.5 * (out_bytes + measured)
        assert 2 * estimate <= segments.working_bytes(op.kind, out_bytes, in_bytes)
        reference = r if op is relu else torch.ops.aten.max_pool2d_with_indices_backward(
            r, x, *step.state[0].values(), step.state[1])
        torch.testing.assert_close(result, reference, rtol=0, atol=0)
    assert AlphaBeta().reads(None) == (True, False)  # its sums come from x: z itself is not read


def vgg_case(side: int = 64) -> tuple:
    torch.manual_seed(0)
    model = torchvision.models.vgg16().double().eval()
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    propagator = propagator_for(model)
    with needs.rules_known(cmp_composite()):
        reads = needs.reads_for(propagator)
    return model, x, propagator, reads


def test_only_read_values_are_kept():
    """Under lrp-cmp the outputs of VGG-16's convolutions and of the ReLUs before its max pools are
    read by no step, the ReLU outputs before convolutions and the pools' outputs are."""
    _, _, propagator, reads = vgg_case()
    names = {node.name: keep for node, keep in zip(propagator.graph.nodes, reads.value)}
    assert not names["features.0"] and not names["features.2"] and not names["features.3"]
    assert names["features.1"] and names["features.4"]


def test_the_planner_accepts_a_budget_it_used_to_refuse(monkeypatch):
    """A budget that the generic plan (every value kept, generic step estimates) refuses even with
    every convolution tiled is met by the rule-aware plan, and the map equals the unbounded run's."""
    monkeypatch.setattr(tiling, "BAND_BYTES", 2 * 10**5)
    model, x, propagator, reads = vgg_case()
    last = len(propagator.graph.nodes) - 2
    aware = segments.measure(propagator, x, reads)
    generic = segments.measure(propagator, x)
    budget = smallest_budget(lambda b: segments.tiled_plan(propagator, aware, b, last), aware) * 102 // 100
    with pytest.raises(segments.BudgetTooSmall):
        segments.tiled_plan(propagator, generic, budget, last)
    bounds, bands = segments.tiled_plan(propagator, aware, budget, last)
    assert len(bounds) > 1 and bands
    got = relprop.explain(model, x, 3, method="lrp-cmp", memory_budget=budget)
    want = relprop.explain(model, x, 3, method="lrp-cmp", memory_budget="unlimited")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(segments.BudgetTooSmall, match=r"node 'features\.\d+'"):
        relprop.explain(model, x, 3, method="lrp-cmp", memory_budget=budget * 8 // 10)


def test_the_fake_pass_measures_as_the_real_one():
    model, x, propagator, reads = vgg_case(side=48)
    assert segments.shapes_only(propagator, x, reads) == segments.measure(propagator, x, reads)


PEAK = textwrap.dedent("""
    import json, resource, sys, torch, torchvision, relprop
    from relprop import tiling
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    tiling.BAND_BYTES = 16 * 10**6  # 256 MB at 2048 x 2048, scaled as the activations
    relprop.explain(model, torch.randn(1, 3, 32, 32), 0, method="lrp-cmp", memory_budget=sys.argv[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    relprop.explain(model, x, 0, method="lrp-cmp", memory_budget=sys.argv[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth": peak - before}))
""")


def test_vgg16_at_a_sixteenth_of_2048_squared_stays_under_a_sixteenth_of_4GB():
    """VGG-16 on one 512 x 512 image (a sixteenth of the activations of 2048 x 2048) under 250 MB (a
    sixteenth of 4 GB, which the generic plan refuses): the process's peak grows by less."""
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    budget = 250 * 10**6
    done = subprocess.run([sys.executable, "-c", PEAK, str(budget)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["growth"] < budget
