"""Every map/mask metric on the edge cases of the metric definitions, with hand-computed values.

Cases (all on a non-square 3 x 4 image, boxes asymmetric): empty mask, box covering the whole image,
constant map, all-negative map, ties at the maximum. NaN means "undefined": the metric must return
NaN there, never a silent 0 or a hit. Values were worked out by hand; comments show the arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch

import relprop.metrics as M

nan = float("nan")
SQ2 = math.sqrt(2.0)

RAMP = torch.arange(1.0, 13.0, dtype=torch.float64).view(3, 4)  # 1..12 row-major


def box(rows, cols) -> torch.Tensor:
    m = torch.zeros(3, 4, dtype=torch.bool)
    m[rows, cols] = True
    return m


TIES = torch.tensor([[0.0, 1.0, 5.0, 0.0],
                     [0.0, 2.0, 0.0, 5.0],
                     [5.0, 0.0, 1.0, 0.0]], dtype=torch.float64)

# name -> (map (3, 4), mask (3, 4), {metric: expected})
CASES = {
    "empty_mask": (RAMP, box(slice(0, 0), slice(0, 0)), {
        "pointing": nan, "pointing_any": nan, "epg": [nan, nan],
        "oir": nan, "oir_pos": nan, "noir": nan, "mu": nan, "mu_w": nan,
        "topk3": nan, "rra": nan, "rma": nan,
        "pixacc_mean": 0.5,  # pred = {7..12}; all 6 others correct
        "iou_mean": 0.25,  # bg 6/12, fg 0/6
        "fg_ap": nan,
        "silent": 0.0, "neg": 0.0,  # no pixel of 1..12 is zero; all 12 are background
    }),
    "whole_image_box": (RAMP, box(slice(None), slice(None)), {
        "pointing": 1.0, "pointing_any": 1.0, "epg": [1.0, 1.0],
        "oir": nan, "oir_pos": nan, "noir": nan,  # no outside
        "mu": 1.0, "mu_w": 1.0, "topk3": 1.0, "rra": 1.0, "rma": 1.0,
        "pixacc_mean": 0.5,  # pred = {7..12} all correct, the rest wrong
        "iou_mean": 0.25,  # bg 0/6, fg 6/12
        "fg_ap": 1.0,
        "silent": nan, "neg": 0.0,  # no background
    }),
    "constant_map": (torch.full((3, 4), 2.0, dtype=torch.float64), box(slice(0, 2), 3), {
        "pointing": nan, "pointing_any": nan,
        "epg": [1 / 6, 1 / 6],  # every pixel ties at tau = 2: 2 hits of 12
        "oir": 1.0, "oir_pos": 1.0, "noir": nan,  # min-max normalisation undefined
        "mu": 1 / 6, "mu_w": 1.0,  # 2/12, * 12/2
        "topk3": 0.0,  # ties: (0,0), (0,1), (0,2) come first, none in column 3
        "rra": 0.0, "rma": 1 / 6,
        "pixacc_mean": 10 / 12,  # constant map -> all background
        "pixacc_zero": 2 / 12,  # R > 0 everywhere -> all foreground
        "iou_mean": (10 / 12 + 0.0) / 2,
        "stacked_ap": nan, "fg_ap": 1 / 6,  # one threshold: precision = foreground rate
        "dk2": 0.5,  # top-2 by row-major ties: (0,0), (0,1): (0 + 1) / 2
        "silent": 0.0, "neg": 0.0,
    }),
    "all_negative_map": (-RAMP, box(slice(1, 3), slice(0, 2)), {
        "pointing": 0.0,  # max -1 at (0, 0), outside the box
        "pointing_pos": nan,  # no positive relevance
        "pointing_any": 0.0, "epg": [nan, nan],
        "oir": 7.5 / 6.0,  # Eq. 11: (0 + mean_in|R-|) / (0 + mean_out|R-|) = (30/4) / (48/8)
        "oir_pos": nan, "noir": 4 / 3,  # N = (R + 12) / 11: mean_out 6/11, mean_in 9/22
        "mu": nan, "mu_w": nan,
        "topk3": 0.0, "rra": 0.0, "rma": 30 / 78,
        "pixacc_mean": 0.5,  # mean -6.5: pred = row 0 + (1,0), (1,1); 2 + 4 correct
        "pixacc_zero": 8 / 12,  # nothing predicted
        "iou_mean": (2 / 8 + 4 / 10) / 2,
        "fg_ap": (1 / 5 + 2 / 6 + 3 / 9 + 4 / 10) / 4,  # positives at ranks 5, 6, 9, 10
        "dk2": nan, "pr": 0.0,
        "silent": 0.0, "neg": 1.0,  # no zero among the 8 background pixels; all relevance negative
    }),
    "ties_at_maximum": (TIES, box(2, 0), {
        "pointing": 0.0,  # first maximum (0, 2) misses
        "pointing_any": 1.0,  # the tied maximum (2, 0) hits
        "epg": [1 / 3, 1 / 6],  # E=0.5: k=3, tau=5, 3 selected, 1 hit; E=1: 6 positives, 1 hit
        "mu": 5 / 19, "mu_w": 60 / 19,
        "topk1": 0.0, "topk3": 1 / 3, "rra": 0.0,
        "dk2": SQ2 / 2,  # r_1 = (0,2), r_2 = (1,3)
        "dk3": SQ2,  # (0 + sqrt 2 + sqrt 8) / 3
        "pr": 0.5,
        "silent": 6 / 11,  # the six zeros all lie outside the one-pixel box at (2, 0)
        "neg": 0.0,
    }),
}

METRICS = {
    "pointing": lambda r, s: M.pointing_game(r, s, tolerance=0),
    "pointing_pos": lambda r, s: M.pointing_game(r, s, tolerance=0, sign="positive"),
    "pointing_any": lambda r, s: M.pointing_game(r, s, tolerance=0, ties="any"),
    "epg": lambda r, s: M.energy_pointing_game(r, s, energies=(0.5, 1.0)),
    "oir": lambda r, s: M.outside_inside_ratio(r, s),
    "oir_pos": lambda r, s: M.outside_inside_ratio(r, s, sign="positive"),
    "noir": M.normalised_outside_inside_ratio,
    "mu": M.inside_total_ratio,
    "mu_w": M.weighted_inside_total_ratio,
    "topk1": lambda r, s: M.top_k_intersection(r, s, k=1),
    "topk3": lambda r, s: M.top_k_intersection(r, s, k=3),
    "rra": M.relevance_rank_accuracy,
    "rma": M.relevance_mass_accuracy,
    "pixacc_mean": lambda r, s: M.pixel_accuracy(r, s, threshold="mean"),
    "pixacc_zero": lambda r, s: M.pixel_accuracy(r, s, threshold="zero"),
    "iou_mean": lambda r, s: M.image_iou(r, s, threshold="mean"),
    "stacked_ap": M.stacked_average_precision,
    "fg_ap": M.foreground_average_precision,
    "dk2": lambda r, s: M.topk_distance(r, ks=(2,))[:, 0],
    "dk3": lambda r, s: M.topk_distance(r, ks=(3,))[:, 0],
    "pr": lambda r, s: M.positive_ratio(r),
    "silent": M.silent_background,
    "neg": lambda r, s: M.negative_share(r),
}

PAIRS = [(case, metric) for case, (_, _, exp) in CASES.items() for metric in exp]


@pytest.mark.parametrize("case, metric", PAIRS, ids=[f"{c}-{m}" for c, m in PAIRS])
def test_edge_case(case, metric) -> None:
    r, s, expected = CASES[case]
    out = METRICS[metric](r[None], s[None])
    exp = torch.tensor(expected[metric], dtype=torch.float64).reshape(out.shape)
    assert torch.allclose(out.to(torch.float64), exp, atol=1e-12, rtol=0, equal_nan=True), (case, metric, out)


def test_stacked_ap_of_empty_and_whole_image_masks() -> None:
    """With a normalised map whose values are symmetric about 1/2 (and exact in binary), the stacked
    problem's positives and negatives hold the same scores, so precision is 1/2 at every threshold."""
    r = torch.tensor([[[0.0, 0, 0, 1], [1, 2, 2, 3], [3, 4, 4, 4]]], dtype=torch.float64)
    for mask in (torch.zeros(1, 3, 4), torch.ones(1, 3, 4)):
        assert M.stacked_average_precision(r, mask).item() == 0.5


def test_undefined_values_are_not_counted() -> None:
    """Undefined is NaN and is not counted by the aggregation."""
    r, s, _ = CASES["empty_mask"]
    hits = M.pointing_game(torch.stack([r, r]), torch.stack([s, box(0, 0)]), tolerance=0)
    agg = M.aggregate_values(hits)
    assert agg.count == 1 and agg.total == 2 and agg.undefined == 1


SCALE_FREE = {
    "pointing": lambda r, s: M.pointing_game(r, s, tolerance=1),
    "epg": M.energy_pointing_game,
    "oir": M.outside_inside_ratio,
    "oir_abs": lambda r, s: M.outside_inside_ratio(r, s, sign="absolute"),
    "oir_neg": lambda r, s: M.outside_inside_ratio(r, s, sign="negative"),
    "noir": M.normalised_outside_inside_ratio,
    "mu": M.inside_total_ratio, "mu_w": M.weighted_inside_total_ratio,
    "topk": lambda r, s: M.top_k_intersection(r, s, k=7),
    "rra": M.relevance_rank_accuracy, "rma": M.relevance_mass_accuracy,
    **{f"pixacc_{t}": (lambda t: lambda r, s: M.pixel_accuracy(r, s, threshold=t))(t)
       for t in ("mean", "zero", "median", "otsu", 0.3, ("percentile", 80))},
    "iou": M.image_iou, "stacked_ap": M.stacked_average_precision, "fg_ap": M.foreground_average_precision,
    "dk": lambda r, s: M.topk_distance(r, ks=(1, 5)),
}


@pytest.mark.parametrize("name", sorted(SCALE_FREE))
def test_per_sample_positive_scaling_changes_nothing(name) -> None:
    """Normalisation by a per-sample positive factor (e.g. Quantus's normalise_by_max) has no effect."""
    g = torch.Generator().manual_seed(11)
    r = torch.randn(4, 7, 9, generator=g, dtype=torch.float64)
    s = torch.rand(4, 7, 9, generator=g) > 0.6
    scale = torch.tensor([0.3, 1.0, 7.5, 1e3], dtype=torch.float64)[:, None, None]
    a, b = SCALE_FREE[name](r, s), SCALE_FREE[name](r * scale, s)
    assert torch.allclose(a.to(torch.float64), b.to(torch.float64), atol=1e-10, rtol=1e-10, equal_nan=True)


def test_map_statistics_on_zero_maps_and_relative_floor() -> None:
    """An all-zero map is silent everywhere and has no negative share; silence is relative to the
    map's own largest |R| (a map scaled by 1e-12 keeps its silent pixels); a bad floor is refused."""
    mask = box(0, 0)
    zero = torch.zeros(1, 3, 4, dtype=torch.float64)
    assert M.silent_background(zero, mask[None]).item() == 1.0
    assert math.isnan(M.negative_share(zero).item())
    r = RAMP.clone()
    r[2, 3] = 1e-9  # below 1e-6 of the maximum 11 -> silent; the other 10 background pixels are not
    for scale in (1.0, 1e-12):
        assert M.silent_background(scale * r[None], mask[None]).item() == pytest.approx(1 / 11)
    with pytest.raises(ValueError, match="floor"):
        M.silent_background(r[None], mask[None], floor=-1.0)
