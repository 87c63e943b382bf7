"""Faithfulness of every registered method on real and shipped networks.

For each method: the map is finite, depends on the explained class where the method is meant to be
class-specific (mean correlation of the two classes' maps of an image below a bound), is not
concentrated in a handful of pixels (top-1% share of |R| below a bound), and points into the
explained object (pointing game) in at least the measured number of cases. Models and data:

* ``efficientnet_lite0`` (real ImageNet weights) on the annotated ``photos``: every outlined object's
  class is explained (12 cases); astronaut (space shuttle / crash helmet), camera (tripod / reflex
  camera) and grace_hopper (military uniform / Windsor tie) hold two classes in different places and
  give the six class-contrast cases;
* ``shapes_vgg``, ``shapes_resnet`` and ``shapes_vit`` (shipped weights) on the first eight ``shapes`` test
  scenes with two or more classes (19 cases, 28 class-contrast cases); on ``shapes_vit`` every method.

Every bound was measured on 2026-12-06 with

    PYTHONPATH=src python benchmarks/faithfulness.py --variants --randomisation

(table in docs/methods.md, "Faithfulness"). The bounds are the measured figures rounded outwards
by at most 0.05 (correlation, share) or exactly the measured hits (pointing); a method that misses
one is listed below with the reason, never given a looser bound.

The whole efficientnet_lite0 sweep costs several minutes on two CPU cores and is the opt-in sweep
(``RELPROP_SWEEP=1 python -m pytest tests/test_faithfulness.py``), as are the sampling methods on the
shapes models and the randomisation check of methods outside the core set; the targets on
efficientnet_lite0 (hedge, rap-journal, lrp-cmp, sglrp, clrp,
contrastive-eb), every other method on the shapes models and the randomisation check of the core
methods on shapes_resnet run in CI.

The cascading randomisation check (small version): shapes_resnet, two scenes, three layers (the
classifier, a middle layer, the stem) re-initialised from the output down; the Spearman correlation of
|R| with the original map must end below 0.9 (measured after all six layers of the benchmark: at most
0.31, lrp-epsilon; see docs/methods.md).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.attribution.pattern import PATTERN_METHODS

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("faithfulness_bench", ROOT / "benchmarks" / "faithfulness.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("faithfulness_bench", bench)
_spec.loader.exec_module(bench)

#: the methods that explain CNNs (not the attention methods, which refuse them)
METHODS = [m for m in relprop.methods() if m not in ATTENTION_METHODS]
#: the methods with targets on efficientnet_lite0, run in CI
CORE_LITE0 = ["hedge", "rap-journal", "lrp-cmp", "sglrp", "clrp", "contrastive-eb"]

# -- bounds (measured 2026-12-06, see the module docstring) --------------------------------------------
#: mean correlation of the two classes' maps of an image must stay below this (largest measured value
#: outside CLASS_AGNOSTIC: lite0 0.40 rsp, shapes_vgg 0.16 sglrp, shapes_resnet 0.06 smoothgrad; shapes_vit,
#: measured 2026-12-07: 0.25 clrp)
CORR_BOUND = {"lite0": 0.45, "shapes_vgg": 0.20, "shapes_resnet": 0.10, "shapes_vit": 0.30}
#: mean share of |R| in the top 1% of pixels must stay below this (largest measured: lite0 0.270
#: lrp-preset-b, shapes_vgg 0.395 guided-gradcam, shapes_resnet 0.299 guided-gradcam, shapes_vit 0.269
#: guided-gradcam). Before the
#: fix hedge's share was 0.324 on lite0 (0.27 on random resnet50, 2 noise images)
TOP1_BOUND = {"lite0": 0.30, "shapes_vgg": 0.42, "shapes_resnet": 0.33, "shapes_vit": 0.30}

_LRP_CONVS = ("alpha-beta on the convolutions passes mostly positive evidence shared by all classes; LRP's "
              "class insensitivity on deep networks is what CLRP and SGLRP (Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 6) address")
#: (models, reason) of the methods whose maps are not meant to change (much) with the class: documented
#: exceptions to CORR_BOUND, measured mean correlation in brackets
CLASS_AGNOSTIC = {
    "rap": (("lite0", "shapes_vgg", "shapes_resnet"),
            "the first propagation hands out |x w| (Nam et al. 2020 [Nam2020-RAP], Eq. 5-6): every unit gets relevance of one sign "
            "whatever the class; lite0 0.96, shapes_vgg 0.77, shapes_resnet 0.88 (shapes_vit 0.28, docs/methods.md)"),
    "excitation-backprop": (("lite0", "shapes_vgg", "shapes_resnet", "shapes_vit"),
                            "z+ everywhere: excitatory paths shared by all classes (Zhang et al. 2016, the reason "
                            "for contrastive-eb); lite0 0.96, shapes_vgg 0.64, shapes_resnet 0.33, shapes_vit 0.81"),
    "guided-backprop": (("lite0", "shapes_vgg", "shapes_resnet", "shapes_vit"),
                        "reconstructs image structure whatever the class (Nie et al. 2018, Adebayo et al. 2018); "
                        "lite0 0.98, shapes_vgg 0.43, shapes_resnet 0.43, shapes_vit 0.55"),
    "attention-rollout": (("shapes_vit",), "rolls out the attention probabilities alone: the same map for every "
                                           "class by definition (Abnar & Zuidema 2020 [Abnar2020-Rollout]); 1.00"),
    "fullgrad": (("shapes_vit",), "the bias-gradient maps, each made non-negative and min-max scaled per layer, "
                                  "share their layout across classes; shapes_vit 0.69 (the input-gradient part "
                                  "alone is class-specific)"),
    "hedge": (("shapes_vit",), "0.76, while Grad-CAM from the same start layer (the last block's tokens) gives "
                               "-0.13: the class is lost in the hedged propagation through the blocks; no "
                               "specific cause found"),
    "lrp-alpha1beta0": (("lite0", "shapes_vgg", "shapes_resnet"),
                        "positive contributions only; lite0 0.97, shapes_vgg 0.66, shapes_resnet 0.42. " + _LRP_CONVS),
    "lrp-alpha2beta1": (("lite0",), "lite0 0.77. " + _LRP_CONVS),
    "lrp-cmp": (("lite0",), "lite0 0.61. " + _LRP_CONVS),
    "lrp-preset-a": (("lite0",), "lite0 0.62. " + _LRP_CONVS),
    "lrp-preset-b": (("lite0",), "lite0 0.67. " + _LRP_CONVS),
    "guided-gradcam": (("lite0",), "guided backprop times Grad-CAM: the guided factor is class-agnostic; lite0 0.62"),
    "smoothgrad": (("lite0",), "the paper's |mean gradient| keeps the gradient's magnitude at edges, which all "
                               "classes share; lite0 0.47 (signed 16-sample maps: 0.22, but those are noise: two "
                               "seeds' maps barely correlate, docs/methods.md)"),
    # an open exception, not the method's nature: Eq. 11's batch-norm term does not depend on the class.
    # Scaled to relevance units it no longer swamps efficientnet_lite0 (0.26; literal 0.99) but on
    # shapes_resnet, a batch norm after every convolution and small relevance per unit, it still sets
    # half the map: 0.50 scaled, 0.65 literal, -0.47 with bn_term="off" (docs/methods.md)
    "rap-journal": (("shapes_resnet", "shapes_vit"), "Eq. 11's class-independent batch-norm term; shapes_resnet 0.50 "
                                                    "(bn_term='off': -0.47); shapes_vit, which has batch norms only in "
                                                    "its stem, 0.51: no specific reason found"),
    # measured 2026-12-07 with the shipped patterns (tests/test_patterns.py checks the estimator and the
    # backward pass against references); not in benchmarks/faithfulness.py's table yet
    "patternnet": (("shapes_vgg", "shapes_resnet"),
                   "the signal estimate: products of patterns project every class's unit onto the same signal "
                   "directions (Kindermans et al. 2018 [Kindermans2018-PatternNet]); shapes_vgg 1.00, shapes_resnet 0.99"),
    # measured 2026-12-07 (tests/test_agf.py checks it against the authors' layer code)
    "agf": (("shapes_vgg", "shapes_resnet"),
            "the |z| rule (C) and the uniform term A hand every input a share of one sign whatever the class, "
            "and F_x factorises the input itself; the class shows in where the share goes (the target's "
            "map wins 25 and 23 of 28 class contrasts); shapes_vgg 0.47, shapes_resnet 0.47 (lite0 0.37)"),
    "pattern-attribution": (("shapes_vgg", "shapes_resnet"),
                            "W * A backward: the patterns' shared signal directions dominate; shapes_vgg 0.32, "
                            "shapes_resnet 0.13"),
}

#: pointing-game hits measured per model and method (cases: lite0 12, shapes 19); a method must reach them
POINTING = {
    "lite0": {
        "clrp": 9, "contrastive-eb": 10, "excitation-backprop": 9, "gradcam": 12, "gradient": 6,
        "guided-backprop": 7, "guided-gradcam": 9, "hedge": 12, "input-x-gradient": 5,
        "integrated-gradients": 7, "lrp-alpha1beta0": 9, "lrp-alpha2beta1": 10, "lrp-cmp": 10,
        "lrp-epsilon": 12, "lrp-preset-a": 10, "lrp-preset-b": 8, "lrp-z": 9, "rap": 5, "rap-journal": 11,
        # rap and rsp re-measured 2026-12-07 when signed inputs (EfficientNet's linear bottlenecks) began to
        # receive relevance (relprop.rules.signed): rap 4 -> 5, rsp 11 -> 10
        "rsp": 10, "sglrp": 10, "smoothgrad": 10, "agf": 9,
    },
    "shapes_vgg": {
        "clrp": 19, "contrastive-eb": 19, "excitation-backprop": 14, "gradcam": 16, "gradient": 17,
        "guided-backprop": 19, "guided-gradcam": 19, "hedge": 18, "input-x-gradient": 16,
        "integrated-gradients": 18, "lrp-alpha1beta0": 14, "lrp-alpha2beta1": 18, "lrp-cmp": 18,
        "lrp-epsilon": 17, "lrp-preset-a": 17, "lrp-preset-b": 19, "lrp-z": 16, "rap": 12, "rap-journal": 18,
        "rsp": 17, "sglrp": 16, "smoothgrad": 18, "patternnet": 4, "pattern-attribution": 11, "agf": 15,
    },
    # measured 2026-12-07 (benchmarks/faithfulness.py --models shapes_vit)
    "shapes_vit": {
        "attention-rollout": 7, "attnlrp": 19, "clrp": 12, "contrastive-eb": 16, "cp-lrp": 19, "deeplift": 16,
        "excitation-backprop": 12, "fullgrad": 11, "gradcam": 16, "gradcam-plus-plus": 6, "gradient": 12,
        "guided-backprop": 13, "guided-gradcam": 17, "hedge": 11, "input-x-gradient": 14, "integrated-gradients": 19,
        "lrp-alpha1beta0": 11, "lrp-alpha2beta1": 10, "lrp-cmp": 19, "lrp-epsilon": 19, "lrp-preset-a": 19,
        "lrp-preset-b": 19, "lrp-z": 19, "rap": 10, "rap-journal": 12, "relevance-cam": 9, "rsp": 13, "sglrp": 17,
        "smoothgrad": 18, "transformer-attribution": 16, "patternnet": 3, "pattern-attribution": 10, "agf": 11,
    },
    "shapes_resnet": {
        "clrp": 19, "contrastive-eb": 18, "excitation-backprop": 19, "gradcam": 19, "gradient": 15,
        "guided-backprop": 18, "guided-gradcam": 19, "hedge": 18, "input-x-gradient": 17,
        "integrated-gradients": 19, "lrp-alpha1beta0": 18, "lrp-alpha2beta1": 19, "lrp-cmp": 19,
        "lrp-epsilon": 19, "lrp-preset-a": 19, "lrp-preset-b": 19, "lrp-z": 17, "rap": 9, "rap-journal": 19,
        "rsp": 19, "sglrp": 18, "smoothgrad": 19, "patternnet": 3, "pattern-attribution": 5, "agf": 15,
    },
}


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setups():
    """Model and cases per model name, loaded on first use."""
    loaded: dict = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = bench.load(name)
        return loaded[name]
    return get


@pytest.fixture(scope="module")
def rows(setups):
    """The measured table row of (model, method), computed once."""
    cache: dict = {}

    def get(name: str, method: str, **options):
        key = (name, method, tuple(sorted(options.items())))
        if key not in cache:
            model, cases = setups(name)
            maps, seconds = bench.explain(model, cases, method, **options)
            cache[key] = bench.measure(maps, cases, seconds)
        return cache[key]
    return get


def _check(row, name: str, method: str) -> None:
    assert row.finite, f"{method} on {name}: non-finite map"
    assert row.top1 < TOP1_BOUND[name], f"{method} on {name}: top-1% share {row.top1:.3f}"
    if name not in CLASS_AGNOSTIC.get(method, ((), ""))[0]:
        assert row.corr_mean < CORR_BOUND[name], f"{method} on {name}: class maps correlate {row.corr_mean:.2f}"
    need = POINTING[name].get(method)
    if need is not None:
        assert row.hits >= need, f"{method} on {name}: pointing {row.hits}/{row.cases}, measured {need}"


#: methods that take more than about half a minute on the 19 shapes cases on two CPU cores (50 noisy or
#: 32 interpolated copies per case; rsp's sectional passes): marked slow
SLOW_ON_SHAPES = ("smoothgrad", "integrated-gradients", "rsp")


#: the full sweep (tens of minutes on two CPU cores): run with RELPROP_SWEEP=1; its bounds come from the
#: same measurement as the rest (benchmarks/faithfulness.py)
SWEEP = [pytest.mark.slow,
         pytest.mark.skipif(not os.environ.get("RELPROP_SWEEP"),
                            reason="faithfulness sweep: set RELPROP_SWEEP=1 to run it (tens of minutes on a CPU)")]


def _maybe_slow(methods, slow):
    return [pytest.param(m, marks=SWEEP) if m in slow else m for m in methods]


# -- every method on the shapes models (CI, but for SLOW_ON_SHAPES) -------------------------------------
@pytest.mark.parametrize("method", _maybe_slow(METHODS, SLOW_ON_SHAPES))
@pytest.mark.parametrize("name", ["shapes_vgg", "shapes_resnet"])
def test_shapes_models(rows, name, method):
    _check(rows(name, method), name, method)


#: every method explains shapes_vit
VIT_METHODS = relprop.methods()


@pytest.mark.parametrize("method", VIT_METHODS)
def test_shapes_vit(rows, method):
    """The shipped ViT: every method's map is checked like the CNNs' (pointing hits as measured)."""
    assert method in POINTING["shapes_vit"], f"{method}: no measured pointing figure on shapes_vit"
    _check(rows("shapes_vit", method), "shapes_vit", method)


# -- efficientnet_lite0 on the photos -----------------------------------------------------------------
@pytest.mark.parametrize("method", CORE_LITE0)
def test_lite0_core_methods(rows, method):
    _check(rows("lite0", method), "lite0", method)


#: the pattern methods refuse efficientnet_lite0 (ReLU6) and need patterns recomputed for every randomised
#: model (their shipped patterns belong to the shipped weights): left out of the lite0 and randomisation checks
_NOT_RANDOMISED = PATTERN_METHODS


@pytest.mark.parametrize("method", [pytest.param(m, marks=SWEEP) for m in METHODS
                                    if m not in CORE_LITE0 and m not in _NOT_RANDOMISED])
def test_lite0_other_methods(rows, method):
    _check(rows("lite0", method), "lite0", method)


# -- targets on efficientnet_lite0 -------------------------------------------------------------------
def test_hedge_and_rap_journal_point_at_least_as_often_as_lrp_cmp(rows):
    reference = rows("lite0", "lrp-cmp").hits
    for method in ("hedge", "rap-journal"):
        assert rows("lite0", method).hits >= reference, method


def test_hedge_wins_three_quarters_of_the_class_contrast_cases(rows):
    row = rows("lite0", "hedge")
    assert row.wins >= math.ceil(0.75 * row.pairs), f"{row.wins}/{row.pairs}"


@pytest.mark.parametrize("method", ["sglrp", "clrp", "contrastive-eb"])
def test_contrastive_methods_move_positive_relevance_to_the_object(rows, method):
    """Positive share in the explained object's box, explaining it minus explaining the other class."""
    assert rows("lite0", method).shift >= 0.20, rows("lite0", method)


def test_hedge_residual_rule_is_stable_where_the_proportional_split_fails(rows):
    """The old split (a / (a + b), no stabiliser) concentrates hedge's relevance and loses the class."""
    old, new = rows("lite0", "hedge", add="proportional"), rows("lite0", "hedge")
    assert old.top1 > 2 * new.top1 and old.corr_mean > 0.5 > new.corr_mean + 0.4
    assert new.hits > old.hits


def test_rap_journal_literal_batch_norm_term_swamps_the_class(rows):
    old, new = rows("lite0", "rap-journal", bn_term="literal"), rows("lite0", "rap-journal")
    assert old.corr_mean > 0.9 > new.corr_mean + 0.5
    assert new.hits > old.hits


# -- model randomisation (small): maps must change when the top layers are re-initialised -------------
RANDOMISATION_BOUND = 0.9  # Spearman of |R| with the original map after randomising every chosen layer


@pytest.mark.parametrize("method", _maybe_slow([m for m in METHODS if m not in _NOT_RANDOMISED],
                                               [m for m in METHODS if m not in CORE_LITE0]))
def test_cascading_randomisation_changes_the_map(setups, method):
    from relprop.metrics import cascading_randomisation
    from relprop.metrics.randomisation import execution_order

    model, cases = setups("shapes_resnet")
    x, t = cases.images[:2], cases.targets[:2]
    names = execution_order(model, x)
    chosen = [names[i] for i in np.linspace(0, len(names) - 1, 3).round().astype(int)]

    def fn(m, xx, tt):
        return relprop.explain(m, xx, target=tt, method=method, **bench.CHUNKED.get(method, {})).detach().sum(1)
    res = cascading_randomisation(model, x, t, fn, layers=chosen)
    last = float(res.spearman_abs[:, -1].nanmean())
    assert last < RANDOMISATION_BOUND, f"{method}: Spearman |R| {last:.2f} after randomising {chosen}"


# -- the residual-sum rule itself ----------------------------------------------------------------------
class _Residual(torch.nn.Module):
    """``relu(conv(x)) - relu(conv2(x))`` plus ``x``'s 1x1 image: two signed branches that nearly cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        s = self.a(x) + self.b(x)
        return self.head(torch.relu(s).mean((2, 3)))


def test_absolute_add_is_conservative_and_bounded():
    """add="absolute": shares R |a| / (|a| + |b|) sum to R and never exceed |R|, however closely a and b
    cancel; add="proportional" gives shares far above |R| there."""
    from relprop.composite import Composite, by_type
    from relprop.rules import Epsilon

    torch.manual_seed(0)
    model = _Residual().double().eval()
    with torch.no_grad():
        model.b.weight.copy_(-model.a.weight * 0.999)
        model.b.bias.copy_(-model.a.bias * 0.999 + 1e-4)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    shares = {}
    for add in ("absolute", "proportional"):
        comp = Composite([(by_type("conv", "linear"), Epsilon(1e-9))], add=add, norm_epsilon=0.0)
        _, rec = relprop.Explainer(model, comp).explain(x, target=[0, 1], record=["a", "b", "add"])
        shares[add] = rec
    a, b, total = shares["absolute"]["a"], shares["absolute"]["b"], shares["absolute"]["add"]
    torch.testing.assert_close(a + b, total)
    assert (a.abs() <= total.abs() + 1e-12).all() and (b.abs() <= total.abs() + 1e-12).all()
    assert (a * total >= 0).all() and (b * total >= 0).all()
    p = shares["proportional"]
    assert p["a"].abs().max() > 10 * p["add"].abs().max()
