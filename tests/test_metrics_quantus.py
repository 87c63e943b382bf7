"""Cross-checks against Quantus where Quantus is right (an optional test extra).

Settings: ``normalise=False, abs=False`` (Quantus's data-set-wide normalisation is scale-only and
would not change these results, but is kept out of the comparison), continuous random maps (no ties:
Quantus ranks with an unstable ``np.argsort``) and non-empty masks (Quantus's ``PointingGame``
counts an empty mask as a hit). Known Quantus bugs are listed in docs/metrics.md and not reproduced.
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
    x = rng.normal(size=(B, C, H, W)).astype(np.float32)
    a = rng.normal(size=(B, 1, H, W)).astype(np.float32)
    s = np.zeros((B, 1, H, W), np.float32)
    s[0, :, 2:6, 3:11] = 1
    s[1, :, 7:, :4] = 1
    s[2, :, :, 12:] = 1
    s[3, :, 5:9, 5:9] = 1
    a[3, 0, 6, 6] = 10.0  # a sure hit
    return x, a, s, np.zeros(B, int)


def call(metric, data):
    x, a, s, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s), dtype=float)


def test_pointing_game_without_tolerance(data) -> None:
    ref = call(quantus.PointingGame(**KW), data)
    ours = M.pointing_game(data[1][:, 0], data[2][:, 0], tolerance=0, ties="any")
    np.testing.assert_array_equal(ours.numpy(), ref)
    assert ref.sum() >= 1 and (ref == 0).sum() >= 1  # both outcomes occur
    # with unique maxima the first-maximum rule (TorchRay) agrees too
    np.testing.assert_array_equal(M.pointing_game(data[1][:, 0], data[2][:, 0], tolerance=0).numpy(), ref)


@pytest.mark.parametrize("k", [1, 20, 100])
def test_top_k_intersection(data, k) -> None:
    for ci in (False, True):
        ref = call(quantus.TopKIntersection(k=k, concept_influence=ci, **KW), data)
        ours = M.top_k_intersection(data[1][:, 0], data[2][:, 0], k=k, concept_influence=ci)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_relevance_rank_and_mass_accuracy(data) -> None:
    ref = call(quantus.RelevanceRankAccuracy(**KW), data)
    np.testing.assert_allclose(M.relevance_rank_accuracy(data[1][:, 0], data[2][:, 0]).numpy(), ref,
                               rtol=1e-12, atol=1e-12)
    ref = call(quantus.RelevanceMassAccuracy(**KW), data)
    np.testing.assert_allclose(M.relevance_mass_accuracy(data[1][:, 0], data[2][:, 0]).numpy(), ref,
                               rtol=1e-5, atol=1e-6)


def test_attribution_localisation_is_mu_with_positive_attributions(data) -> None:
    ref = call(quantus.AttributionLocalisation(positive_attributions=True, **KW), data)
    ours = M.inside_total_ratio(data[1][:, 0], data[2][:, 0])  # no 1e-9 in the denominator
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize("order, softmax", [("morf", False), ("lerf", True)])
def test_region_perturbation_curves(order, softmax) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 5)).eval()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, 18, 18)).astype(np.float32)  # 18 = 4 * 4 + 2: padded, partial regions
    a = rng.normal(size=(3, 1, 18, 18)).astype(np.float32)
    y = np.array([0, 3, 4])
    metric = quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=25,
                                        perturb_baseline="black", **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, softmax=softmax, device="cpu"))
    curves = M.region_perturbation(model, torch.tensor(x), torch.tensor(a[:, 0]), torch.tensor(y),
                                   counts=range(26), order=order, patch_size=4, removal="min",
                                   score="softmax" if softmax else "logit")
    np.testing.assert_allclose(curves.drop()[:, 1:].numpy(), ref, atol=1e-5, rtol=0)
