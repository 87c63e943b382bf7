"""Spatial tiling of a convolution's backward step gives the whole step's relevance exactly."""

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

import relprop
from relprop import needs, segments, tiling
from relprop.attribution.lrp import cmp_composite
from relprop.composite import Composite, by_type, first
from relprop.propagate import forward_for, propagator_for
from relprop.rules import AlphaBeta, Contrastive, Epsilon, Flat, Gamma, WSquare, ZBox
from relprop.rules.rap import RAPHidden

from test_memory_budget import smallest_budget

SRC = Path(__file__).resolve().parents[1] / "src"


def small_net() -> nn.Module:
    """Convolutions with strides 1 and 2, padding 0, 1 and 2, dilation 2, kernels 1, 3 and 5."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(6, 6, 1), nn.ReLU(),
        nn.Conv2d(6, 6, (3, 1), padding=(1, 0)), nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 5 * 4, 4)).double().eval()
    return net


def small_image(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 23, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def composite(conv_rule, first_rule=None) -> Composite:
    rules = [] if first_rule is None else [(first(1), first_rule)]
    return Composite(rules + [(by_type("linear"), Epsilon(0.1)), (by_type("conv"), conv_rule)], name="tiling test")


LOCAL = {
    "lrp-epsilon": "lrp-epsilon",
    "lrp-alpha1beta0": "lrp-alpha1beta0",
    "lrp-alpha2beta1": "lrp-alpha2beta1",
    "lrp-cmp": "lrp-cmp",
    "gamma": composite(Gamma(0.25)),
    "w2-first": composite(AlphaBeta(2.0, 1.0), WSquare()),
    "flat-first": composite(Epsilon(1e-3), Flat()),
    "zb-per-image": composite(AlphaBeta(1.0, 0.0), ZBox()),
    "zb-per-channel": composite(Gamma(0.1), ZBox(torch.full((1, 3, 1, 1), -3.0, dtype=torch.float64),
                                                 torch.full((1, 3, 1, 1), 3.0, dtype=torch.float64))),
    "contrastive": composite(Contrastive(AlphaBeta(1.0, 0.0))),
}


class Spy:
    """Counts the steps computed in bands and the rules they used."""

    def __init__(self, monkeypatch) -> None:
        self.rules: list = []
        original = tiling.relevance_in_bands

        def spy(rule, step, r, rows):
            self.rules.append(rule)
            return original(rule, step, r, rows)

        monkeypatch.setattr(tiling, "relevance_in_bands", spy)


def explain(model, x, method, **kw) -> torch.Tensor:
    return relprop.explain(model, x, 1, method=method, memory_budget="unlimited", **kw)


@pytest.mark.parametrize("name", list(LOCAL))
def test_bands_equal_the_whole_step(name, monkeypatch):
    model, x = small_net(), small_image()
    expected = explain(model, x, LOCAL[name])
    spy = Spy(monkeypatch)
    for rows in (1, 2, 3):
        monkeypatch.setattr(tiling, "FORCE_ROWS", rows)
        got = explain(model, x, LOCAL[name])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert len(spy.rules) == 3 * 6  # every convolution, for every band height


@pytest.mark.parametrize("method", ["lrp-cmp", "lrp-epsilon", "lrp-alpha2beta1"])
def test_bands_on_vgg16(method, monkeypatch):
    torch.manual_seed(0)
    model = torchvision.models.vgg16().double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = explain(model, x, method)
    spy = Spy(monkeypatch)
    monkeypatch.setattr(tiling, "FORCE_ROWS", 3)
    torch.testing.assert_close(explain(model, x, method), expected, rtol=0, atol=1e-12)
    assert len(spy.rules) == 13


def test_a_rule_with_global_terms_is_never_tiled(monkeypatch):
    model, x = small_net(), small_image()
    expected = explain(model, x, "rap")
    spy = Spy(monkeypatch)
    monkeypatch.setattr(tiling, "FORCE_ROWS", 2)
    torch.testing.assert_close(explain(model, x, "rap"), expected, rtol=0, atol=1e-12)
    assert all(type(rule).__module__ == "relprop.rules.lrp" for rule in spy.rules)
    assert RAPHidden().banded(x) is None and not RAPHidden.spatially_local


def test_locality_of_the_lrp_rules():
    x = small_image()
    for rule in (Epsilon(), AlphaBeta(2.0, 1.0), Gamma(), Flat(), WSquare(), ZBox(0.0, 1.0)):
        assert rule.banded(x) is rule
    fixed = ZBox().banded(x)  # per-image bounds, taken from the whole image once
    assert fixed is not None and torch.equal(fixed.low.flatten(), x.amin(dim=(1, 2, 3)))
    varying = torch.zeros(1, 3, x.shape[2], 1, dtype=x.dtype)
    assert ZBox(varying, 1.0).banded(x) is None  # bounds that vary along the rows are not split
    assert Contrastive(RAPHidden()).banded(x) is None


def vgg_float32() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()


def tightest_tiled(propagator, sizes: segments.Sizes, last: int) -> int:
    """The smallest budget (within 1 %) that the planner accepts with tiling."""
    return smallest_budget(lambda budget: segments.plan(propagator, segments.bands_for(sizes, budget)[0], budget,
                                                        last), sizes)


def vgg_sizes(monkeypatch) -> tuple:
    """VGG-16 on one 128 x 128 image with 2 MB bands: ``(model, x, propagator, sizes, last)``."""
    model = vgg_float32()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(tiling, "BAND_BYTES", 2 * 10**6)
    propagator = propagator_for(model)
    with needs.rules_known(cmp_composite()):  # as lrp-cmp plans (relprop.needs)
        sizes = segments.measure(propagator, x, needs.reads_for(propagator))
    last = len(sizes.size) - 2
    return model, x, propagator, sizes, last


def test_the_planner_tiles_a_step_that_does_not_fit(monkeypatch):
    """A budget below what VGG-16's largest convolution needs whole is refused without tiling and
    accepted with it; the steps it tiles give the unbounded run's map."""
    model, x, propagator, sizes, last = vgg_sizes(monkeypatch)
    budget = tightest_tiled(propagator, sizes, last) * 102 // 100
    with pytest.raises(segments.BudgetTooSmall):
        segments.plan(propagator, sizes, budget, last)
    tiled_sizes, bands = segments.bands_for(sizes, budget)
    bounds = segments.plan(propagator, tiled_sizes, budget, last)
    assert bands and all(tiled_sizes.work[p] < sizes.work[p] for p in bands)
    for lo, hi in bounds:  # what each segment holds, with its largest step, fits
        kept = sizes.out[0] + sum(sizes.out[h] for _, h in bounds if h < lo)
        assert kept + tiled_sizes.need(lo, hi) <= budget
    with segments.bounded(budget), needs.rules_known(cmp_composite()):
        _, cache = forward_for(model, x)
    assert cache.bands == bands
    spy = Spy(monkeypatch)
    got = relprop.explain(model, x, 3, method="lrp-cmp", memory_budget=budget)
    want = relprop.explain(model, x, 3, method="lrp-cmp", memory_budget="unlimited")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    assert len(spy.rules) == len(bands)


def test_every_convolution_is_tiled_when_the_needed_ones_do_not_suffice(monkeypatch):
    """Tiling only the steps that cannot fit alone leaves a budget refused that tiling every
    convolution fits (the boundaries kept before a step count too); the map is the unbounded one."""
    model, x, propagator, sizes, last = vgg_sizes(monkeypatch)
    budget = smallest_budget(lambda b: segments.tiled_plan(propagator, sizes, b, last), sizes) * 101 // 100
    with pytest.raises(segments.BudgetTooSmall):
        segments.plan(propagator, segments.bands_for(sizes, budget)[0], budget, last)
    _, bands = segments.tiled_plan(propagator, sizes, budget, last)
    assert len(bands) > len(segments.bands_for(sizes, budget)[1])
    assert set(bands) == {p for p, band in enumerate(sizes.band) if band is not None}
    got = relprop.explain(model, x, 3, method="lrp-cmp", memory_budget=budget)
    want = relprop.explain(model, x, 3, method="lrp-cmp", memory_budget="unlimited")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


PEAK = textwrap.dedent("""
    import json, resource, sys, torch, torch.nn as nn, relprop
    from relprop import tiling
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 1, 1), nn.Flatten(1),
                          nn.Linear(2048 * 512, 2)).eval()
    x = torch.randn(1, 16, 2048, 512)
    tiling.BAND_BYTES = 8 * 10**6
    small = nn.Sequential(*list(model)[:3], nn.Linear(64 * 512, 2)).eval()
    relprop.explain(small, x[:, :, :64], 0, method="lrp-alpha1beta0")  # kernels and thread pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    relprop.explain(model, x, 0, method="lrp-alpha1beta0", memory_budget=sys.argv[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth": peak - before}))
""")


def peak_growth(budget: str) -> int:
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PEAK, budget], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["growth"]


def test_the_measured_peak_of_a_tiled_step_stays_under_the_budget():
    """A convolution on a 16 x 2048 x 512 input (67.1 MB per activation): its whole step needs about
    6 activations besides its input and output, a budget of 5.5 in all tiles it, and the process's
    peak grows by less than that."""
    activation = 16 * 2048 * 512 * 4
    budget = int(5.5 * activation)
    assert peak_growth(str(budget)) < budget


def other_nets() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Groups, a folded asymmetric zero padding, 1-d and 3-d convolutions."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(4)
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.ZeroPad2d((1, 2, 0, 3)),
                            nn.Conv2d(8, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 6, 3))
    one_d = nn.Sequential(nn.Conv1d(3, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 4, 3, stride=2, dilation=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14, 3))
    three_d = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, stride=2, padding=1),
                            nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 3 * 3, 3))
    return {"grouped-padded": (grouped.double().eval(), torch.randn(2, 4, 15, 11, dtype=torch.float64,
                                                                     generator=generator)),
            "1-d": (one_d.double().eval(), torch.randn(2, 3, 31, dtype=torch.float64, generator=generator)),
            "3-d": (three_d.double().eval(), torch.randn(1, 2, 7, 5, 6, dtype=torch.float64, generator=generator))}


@pytest.mark.parametrize("net", ["grouped-padded", "1-d", "3-d"])
@pytest.mark.parametrize("method", ["lrp-cmp", "lrp-epsilon", "lrp-alpha2beta1"])
def test_bands_of_other_convolutions(net, method, monkeypatch):
    model, x = other_nets()[net]
    expected = explain(model, x, method)
    spy = Spy(monkeypatch)
    for rows in (1, 2):
        monkeypatch.setattr(tiling, "FORCE_ROWS", rows)
        torch.testing.assert_close(explain(model, x, method), expected, rtol=0, atol=1e-12)
    assert len(spy.rules) == 4
