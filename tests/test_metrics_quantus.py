"""Cross-checks against Quantus where Quantus is right (Quantus is in the ``test`` extra).

Settings: ``normalise=False, abs=False`` (Quantus's data-set-wide normalisation is a positive scaling
and would not change these results, but is kept out of the comparison), float64 maps so that the
values agree to the last bits, continuous random maps (no ties: Quantus ranks with an unstable
``np.argsort``) and non-empty masks (Quantus's ``PointingGame`` counts an empty mask as a hit).
The last tests pin Quantus's known bugs, listed in docs/metrics.md, and check they are not reproduced.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import relprop.metrics as M

quantus = pytest.importorskip("quantus")

B, C, H, W = 4, 3, 12, 16
KW = dict(disable_warnings=True, normalise=False, abs=False)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, C, H, W))
    a = rng.normal(size=(B, 1, H, W))
    s = np.zeros((B, 1, H, W))
    s[0, :, 2:6, 3:11] = 1  # asymmetric boxes on a non-square image
    s[1, :, 7:, :4] = 1
    s[2, :, :, 12:] = 1
    s[3, :, 5:9, 5:9] = 1
    a[3, 0, 6, 6] = 10.0  # a sure hit
    return x, a, s, np.zeros(B, int)


def call(metric, data, s=None):
    x, a, s0, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s0 if s is None else s)
    return np.asarray(out, dtype=float)


def ours(fn, data, s=None, **kw):
    a, s0 = data[1], data[2] if s is None else s
    return fn(torch.tensor(a[:, 0]), torch.tensor(s0[:, 0]), **kw).numpy()


def test_pointing_game_without_tolerance(data) -> None:
    ref = call(quantus.PointingGame(**KW), data)
    np.testing.assert_array_equal(ours(M.pointing_game, data, tolerance=0, ties="any"), ref)
    assert ref.sum() >= 1 and (ref == 0).sum() >= 1  # both outcomes occur
    # with unique maxima the first-maximum rule (TorchRay) agrees too
    np.testing.assert_array_equal(ours(M.pointing_game, data, tolerance=0), ref)


@pytest.mark.parametrize("k", [1, 20, 100])
def test_top_k_intersection(data, k) -> None:
    for ci in (False, True):
        ref = call(quantus.TopKIntersection(k=k, concept_influence=ci, **KW), data)
        np.testing.assert_allclose(ours(M.top_k_intersection, data, k=k, concept_influence=ci), ref,
                                   rtol=1e-14, atol=0)


def test_relevance_rank_and_mass_accuracy(data) -> None:
    ref = call(quantus.RelevanceRankAccuracy(**KW), data)
    np.testing.assert_array_equal(ours(M.relevance_rank_accuracy, data), ref)
    ref = call(quantus.RelevanceMassAccuracy(**KW), data)
    np.testing.assert_allclose(ours(M.relevance_mass_accuracy, data), ref, rtol=1e-12, atol=0)


def test_attribution_localisation_is_mu_with_positive_attributions(data) -> None:
    ref = call(quantus.AttributionLocalisation(positive_attributions=True, **KW), data)
    # Quantus adds 1e-9 to the denominator; relprop does not
    np.testing.assert_allclose(ours(M.inside_total_ratio, data), ref, rtol=1e-8, atol=0)


@pytest.mark.parametrize("order, softmax, patch", [("morf", False, 4), ("lerf", True, 4), ("morf", False, 1)])
def test_region_perturbation_curves(order, softmax, patch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 5)).eval()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, 18, 18)).astype(np.float32)  # 18 = 4 * 4 + 2: padded, partial regions
    a = rng.normal(size=(3, 1, 18, 18))  # float64: float32 region sums can tie within rounding
    y = np.array([0, 3, 4])
    steps = 25
    metric = quantus.RegionPerturbation(patch_size=patch, order=order, regions_evaluation=steps,
                                        perturb_baseline="black", **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, softmax=softmax, device="cpu"))
    curves = M.region_perturbation(model, torch.tensor(x), torch.tensor(a[:, 0]), torch.tensor(y),
                                   counts=range(steps + 1), order=order, patch_size=patch, removal="min",
                                   score="softmax" if softmax else "logit")
    # Quantus returns f(x) - f(x^(k)) for k = 1..L; the model runs in float32 in both, on batches of
    # different sizes, so the curves agree to float32 rounding
    assert ref.shape == (3, steps)
    np.testing.assert_allclose(curves.drop()[:, 1:].numpy(), ref, atol=1e-5, rtol=1e-5)
    assert np.abs(ref).max() > 1e-3  # the comparison is not between flat curves


# ---- Quantus bugs that relprop does not reproduce (docs/metrics.md, "Known Quantus bugs") --------


def test_bug_pointing_game_counts_an_empty_mask_as_a_hit(data) -> None:
    s = data[2].copy()
    s[1] = 0
    ref = call(quantus.PointingGame(**KW), data, s)
    assert ref[1] == 1.0  # Quantus: NaN stored into a boolean array becomes True
    mine = ours(M.pointing_game, data, s, tolerance=0, ties="any")
    assert np.isnan(mine[1])
    np.testing.assert_array_equal(mine[[0, 2, 3]], ref[[0, 2, 3]])
    agg = M.aggregate_values(torch.tensor(mine))
    assert agg.count == 3 and agg.total == 4


def test_bug_attribution_localisation_weight_is_inverted(data) -> None:
    ref = call(quantus.AttributionLocalisation(positive_attributions=True, weighted=True, **KW), data)
    mu = ours(M.inside_total_ratio, data)
    size_in = data[2].reshape(B, -1).sum(1)
    # Quantus: mu * S_in / size with size = x_batch[2:].size = (B - 2) * C * H * W
    np.testing.assert_allclose(ref, mu * size_in / ((B - 2) * C * H * W), rtol=1e-8)
    # Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 5: mu * S_tot / S_in
    np.testing.assert_allclose(ours(M.weighted_inside_total_ratio, data), mu * (H * W) / size_in, rtol=1e-12)


def test_bug_pointing_game_weighted_raises(data) -> None:
    with pytest.raises(TypeError):
        call(quantus.PointingGame(weighted=True, **KW), data)
