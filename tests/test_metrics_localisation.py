"""Hand-computed toy cases and edge cases for relprop.metrics.localisation and aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from relprop.metrics import aggregate as A
from relprop.metrics import localisation as L
from relprop.metrics import pointing as P

nan = float("nan")


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def same(a, b, tol=1e-9):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0, equal_nan=True), (a, b)


# R = [[2, -1], [1, 0]], mask = top-left pixel
R1 = t([[[2.0, -1.0], [1.0, 0.0]]])
S1 = t([[[1, 0], [0, 0]]], torch.bool)


# ---------------------------------------------------------------------------------- validation


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4, 5\).*\(2, 4, 6\)"):
        L.inside_total_ratio(torch.rand(2, 4, 5), torch.ones(2, 4, 6))
    with pytest.raises(ValueError, match="batch"):
        L.pointing_game(torch.rand(2, 4, 5), torch.ones(3, 4, 5))


def test_nonbinary_mask_wrong_rank_nan_map_raise() -> None:
    with pytest.raises(ValueError, match="binary"):
        L.outside_inside_ratio(torch.rand(1, 3, 3), torch.full((1, 3, 3), 0.5))
    with pytest.raises(ValueError, match="rank 3"):
        L.inside_total_ratio(torch.rand(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="rank 3"):
        L.pointing_game(torch.rand(1, 1, 3, 3), torch.ones(1, 3, 3))
    bad = torch.rand(2, 3, 3)
    bad[1, 0, 0] = nan
    with pytest.raises(ValueError, match=r"NaN \(samples \[1\]\)"):
        L.pointing_game(bad, torch.ones(2, 3, 3))
    bad[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        L.positive_ratio(bad)
    with pytest.raises(ValueError, match="sign"):
        L.inside_total_ratio(R1, S1, sign="pos")


def test_resize_options() -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 3] = 1.0
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :2, 6:] = True
    hit = L.pointing_game(maps, masks, resize="map", tolerance=0)
    assert hit.item() == 1.0
    hit = L.pointing_game(maps, masks, resize="mask", tolerance=0)
    assert hit.item() == 1.0
    with pytest.raises(ValueError, match="resize"):
        L.pointing_game(maps, masks, resize="both")


# ---------------------------------------------------------------------------------- pointing game


def test_pointing_game_tolerance_strict_and_not() -> None:
    maps = torch.zeros(1, 6, 9)
    maps[0, 0, 0] = 1.0
    masks = torch.zeros(1, 6, 9, dtype=torch.bool)
    masks[0, 3:, 4:] = True  # nearest mask pixel (3, 4): distance exactly 5
    assert L.pointing_game(maps, masks, tolerance=5).item() == 0.0  # strict <
    assert L.pointing_game(maps, masks, tolerance=5, strict=False).item() == 1.0
    assert L.pointing_game(maps, masks, tolerance=6).item() == 1.0
    assert L.pointing_game(maps, masks, tolerance=0).item() == 0.0
    assert L.pointing_game(maps, masks).item() == 1.0  # default 15 px
    for ties in ("first", "any"):
        assert L.pointing_game(maps, masks, tolerance=5, ties=ties).item() == 0.0
        assert L.pointing_game(maps, masks, tolerance=5, strict=False, ties=ties).item() == 1.0


def test_pointing_game_non_square_asymmetric_box_no_row_col_swap() -> None:
    # H=6, W=10; box in rows 4-5, cols 0-1. The max at (row 0, col 4) misses;
    # swapping row/col would put it at (4, 0), inside the box.
    maps = torch.zeros(1, 6, 10)
    maps[0, 0, 4] = 1.0
    masks = torch.zeros(1, 6, 10, dtype=torch.bool)
    masks[0, 4:, :2] = True
    assert L.pointing_game(maps, masks, tolerance=0).item() == 0.0
    assert L.max_points(maps).tolist() == [[0, 4]]
    maps2 = torch.zeros(1, 6, 10)
    maps2[0, 5, 1] = 1.0
    assert L.pointing_game(maps2, masks, tolerance=0).item() == 1.0


def test_pointing_game_ties_first_vs_any() -> None:
    maps = torch.zeros(1, 5, 7)
    maps[0, 0, 0] = 3.0
    maps[0, 4, 6] = 3.0
    masks = torch.zeros(1, 5, 7, dtype=torch.bool)
    masks[0, 4, 6] = True
    assert L.pointing_game(maps, masks, tolerance=0, ties="first").item() == 0.0  # top-left wins
    assert L.pointing_game(maps, masks, tolerance=0, ties="any").item() == 1.0
    assert L.max_points(maps).tolist() == [[0, 0]]


def test_pointing_game_undefined_cases() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[1:, 1, 1] = True
    maps = torch.rand(3, 4, 4)
    maps[2] = 0.7  # constant map
    out = L.pointing_game(maps, masks, tolerance=0)
    assert math.isnan(out[0]) and out[1] in (0.0, 1.0) and math.isnan(out[2])
    # TorchRay would point at (0, 0) for the constant map
    out = L.pointing_game(maps, masks, tolerance=0, constant_map="first")
    assert out[2].item() == 0.0
    out = L.pointing_game(maps, masks, tolerance=2, constant_map="first")
    assert out[2].item() == 1.0
    # all-negative map: defined for the signed map, undefined for its positive part
    neg = -torch.rand(1, 4, 4) - 0.1
    neg[0, 1, 1] = -0.01
    assert L.pointing_game(neg, masks[1:2], tolerance=0).item() == 1.0
    assert math.isnan(L.pointing_game(neg, masks[1:2], sign="positive").item())
    # whole-image mask: always a hit
    assert L.pointing_game(torch.rand(1, 4, 4), torch.ones(1, 4, 4), tolerance=0).item() == 1.0


def test_pointing_game_batch_equals_per_sample_and_tie_paths_agree() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 20, 30, generator=g)
    masks = torch.zeros(6, 20, 30, dtype=torch.bool)
    for i in range(6):
        masks[i, 3 * i:3 * i + 4, 5 * i:5 * i + 3] = True
    for tol in (0, 1, 3, 15):
        batch = L.pointing_game(maps, masks, tolerance=tol)
        single = torch.cat([L.pointing_game(maps[i:i + 1], masks[i:i + 1], tolerance=tol) for i in range(6)])
        same(batch, single)
        # without ties the two tie rules agree (dilation path == distance path)
        same(batch, L.pointing_game(maps, masks, tolerance=tol, ties="any"))
        same(L.pointing_game(maps, masks, tolerance=tol, strict=False),
             L.pointing_game(maps, masks, tolerance=tol, strict=False, ties="any"))


def test_pointing_hits_explicit_points() -> None:
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 2, 2] = True
    out = L.pointing_hits(torch.tensor([[2, 3], [0, 0]]), masks, tolerance=2)
    assert out[0].item() == 1.0 and math.isnan(out[1])
    with pytest.raises(ValueError, match="inside"):
        L.pointing_hits(torch.tensor([[5, 0], [0, 0]]), masks)
    with pytest.raises(ValueError, match="tolerance"):
        L.pointing_game(torch.rand(1, 3, 3), torch.ones(1, 3, 3), tolerance=1.5)


def test_pointing_game_per_class_macro_mean_torchray_and_nan() -> None:
    hits = torch.tensor([1.0, 0.0, 1.0, 1.0, nan])
    classes = torch.tensor([0, 0, 1, 1, 2])
    agg = A.per_class_mean(hits, classes, num_classes=4)
    same(agg.per_class[:2], [0.5, 1.0])
    assert math.isnan(agg.per_class[2]) and math.isnan(agg.per_class[3])
    assert agg.macro == pytest.approx(0.75) and agg.classes_counted == 2
    tr = A.per_class_mean(hits, classes, num_classes=4, empty_class="zero")  # TorchRay clamps to 1
    assert tr.macro == pytest.approx((0.5 + 1.0 + 0 + 0) / 4) and tr.classes_counted == 4
    # difficult subset via include
    sub = A.per_class_mean(hits, classes, num_classes=2 + 1, include=torch.tensor([1, 0, 1, 1, 1]))
    same(sub.per_class[:2], [1.0, 1.0])
    assert sub.excluded == 1


def _objects():
    """Image 0 (4 x 6): class 1 twice (2 + 2 px), class 3 once (12 px); image 1: class 2 (marked
    difficult) and class 0 (1 px)."""
    m0 = torch.zeros(3, 4, 6, dtype=torch.bool)
    m0[0, 0, :2] = True
    m0[1, 3, 4:] = True
    m0[2, :, 3:] = True  # overlaps the second class-1 object: the union is still per class
    m1 = torch.zeros(2, 4, 6, dtype=torch.bool)
    m1[0, 1:3, 1:3] = True
    m1[1, 0, 5] = True
    return [[1, 1, 3], [2, 0]], [m0, m1], [[False, False, False], [True, False]]


def test_pointing_pairs_masks_difficult_and_skips() -> None:
    labels, masks, difficult = _objects()
    pairs = P.pointing_pairs(labels, masks, difficult)
    assert pairs.image.tolist() == [0, 0, 1] and pairs.classes.tolist() == [1, 3, 0]
    assert torch.equal(pairs.masks[0], masks[0][0] | masks[0][1])  # union of the class's objects
    assert torch.equal(pairs.masks[1], masks[0][2])
    # class 1: 4/24 < 1/4 with another class present -> difficult; class 3: 12/24 -> not;
    # class 0 of image 1: 1/24, and class 2 is present (although all its objects are difficult)
    assert pairs.difficult.tolist() == [True, False, True]
    assert pairs.skipped_difficult == 1 and pairs.skipped_unpredicted == 0
    keep = P.pointing_pairs(labels, masks, difficult, skip_all_difficult=False)
    assert keep.classes.tolist() == [1, 3, 0, 2] and keep.skipped_difficult == 0  # by image, then class
    # a single-class image is never difficult, however small the object
    one = P.pointing_pairs([[4]], [masks[1][1:]])
    assert one.difficult.tolist() == [False]
    # P: only ground-truth classes that were predicted; predicted classes without objects are no pairs
    pred = P.pointing_pairs(labels, masks, difficult, mode="P", predicted=[[3, 7], [0]])
    assert pred.classes.tolist() == [3, 0] and pred.skipped_unpredicted == 1
    with pytest.raises(ValueError, match="predicted"):
        P.pointing_pairs(labels, masks, mode="P")
    with pytest.raises(ValueError, match="mode"):
        P.pointing_pairs(labels, masks, mode="all")
    with pytest.raises(ValueError, match="2 labels but 3 masks"):
        P.pointing_pairs([[1, 2]], [masks[0]])
    with pytest.raises(ValueError, match="one resolution"):
        P.pointing_pairs([[1], [2]], [masks[0][:1], torch.zeros(1, 5, 6)])
    with pytest.raises(ValueError, match="binary"):
        P.pointing_pairs([[1]], [torch.full((1, 4, 6), 0.5)])


def test_pointing_game_report_macro_means_all_and_difficult() -> None:
    hits = torch.tensor([1.0, 0.0, 1.0, 1.0, nan])
    classes = torch.tensor([0, 0, 1, 2, 2])
    difficult = torch.tensor([True, False, True, False, True])
    rep = P.pointing_game_report(hits, classes, 4, difficult=difficult)
    # TorchRay: class means 0.5, 1, 1 (the NaN pair is not counted), 0 (no pairs) -> 2.5 / 4
    assert rep.all.macro == pytest.approx(0.625) and rep.all.classes_counted == 4
    # difficult: class 0 -> 1, class 1 -> 1, class 2 has only a NaN pair -> 0, class 3 -> 0
    assert rep.difficult.macro == pytest.approx(0.5) and rep.difficult.excluded == 2
    rep = P.pointing_game_report(hits, classes, 4, difficult=difficult, empty_class="nan")
    assert rep.all.macro == pytest.approx(2.5 / 3) and rep.difficult.macro == pytest.approx(1.0)
    assert P.pointing_game_report(hits, classes, 4).difficult is None


def test_pointing_protocol_end_to_end() -> None:
    labels, masks, difficult = _objects()
    pairs = P.pointing_pairs(labels, masks, difficult)
    maps = torch.zeros(3, 4, 6)
    maps[0, 0, 0] = 1.0  # on the class-1 object
    maps[1, 0, 0] = 1.0  # 3 px left of the class-3 box (column 3)
    maps[2, 3, 0] = 1.0  # far from the class-0 pixel (0, 5): distance sqrt(9 + 25)
    hits = L.pointing_game(maps, pairs.masks, tolerance=3)  # strict: distance 3 is a miss
    assert hits.tolist() == [1.0, 0.0, 0.0]
    rep = P.pointing_game_report(hits, pairs.classes, 4, difficult=pairs.difficult)
    assert rep.all.per_class.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert rep.all.macro == pytest.approx(0.25) and rep.difficult.macro == pytest.approx(0.25)


# ---------------------------------------------------------------------------------- energy PG


def test_energy_pointing_game_hand_computed() -> None:
    maps = t([[[4.0, 3.0, 2.0], [1.0, 0.0, -1.0]]])
    masks = t([[[1, 0, 0], [1, 0, 0]]], torch.bool)
    out = L.energy_pointing_game(maps, masks, energies=(0.25, 0.5, 0.75, 1.0))
    same(out, [[1.0, 0.5, 1 / 3, 0.5]])
    acc, hits, sel = L.energy_pointing_game(maps, masks, energies=(0.5, 1.0), return_counts=True)
    assert hits.tolist() == [[1, 2]] and sel.tolist() == [[2, 4]]


def test_energy_pointing_game_ties_and_float_levels() -> None:
    # ties at the threshold are all counted
    maps = t([[[2.0, 2.0], [1.0, 0.0]]])
    masks = t([[[1, 0], [0, 0]]], torch.bool)
    same(L.energy_pointing_game(maps, masks, energies=(0.3,)), [[0.5]])
    # 0.3 * 10 is 3.0000000000000004 in floating point: k must be 3, not 4
    maps = torch.arange(10, 0, -1, dtype=torch.float64).view(1, 2, 5)
    masks = torch.zeros(1, 2, 5, dtype=torch.bool)
    masks[0, 0, :3] = True
    _, hits, sel = L.energy_pointing_game(maps, masks, energies=(0.3, 0.7), return_counts=True)
    assert sel.tolist() == [[3, 7]] and hits.tolist() == [[3, 3]]


def test_energy_pointing_game_edge_cases() -> None:
    masks = torch.zeros(3, 3, 4, dtype=torch.bool)
    masks[0, 1, 1] = True
    masks[2] = True
    maps = torch.rand(3, 3, 4) + 0.1
    maps[0] = -maps[0]  # all negative: no positive relevance
    out = L.energy_pointing_game(maps, masks)
    assert torch.isnan(out[0]).all()  # no positive relevance
    assert torch.isnan(out[1]).all()  # empty mask
    same(out[2], torch.ones(10))  # whole-image mask
    with pytest.raises(ValueError, match="energies"):
        L.energy_pointing_game(maps, masks, energies=(0.0, 0.5))


# ---------------------------------------------------------------------------------- ratios


def test_outside_inside_ratio_hand_computed() -> None:
    same(L.outside_inside_ratio(R1, S1), [1 / 7])  # Eq. 11: (1/3 + 0) / (2 + 1/3)
    same(L.outside_inside_ratio(R1, S1, sign="positive"), [1 / 6])
    same(L.outside_inside_ratio(R1, S1, sign="absolute"), [1 / 3])
    assert math.isnan(L.outside_inside_ratio(R1, S1, sign="negative").item())  # no |R-| inside
    # negative relevance inside the box increases mu (Nam et al. 2020 [Nam2020-RAP], text after Eq. 11)
    maps = t([[[2.0, -3.0], [1.0, 0.0]]])
    masks = t([[[1, 1], [0, 0]]], torch.bool)
    same(L.outside_inside_ratio(maps, masks), [2.0])  # (0.5 + 1.5) / (1 + 0)
    # for a map without negative values the signed form equals the original one
    pos = torch.rand(4, 5, 6, dtype=torch.float64)
    m = torch.zeros(4, 5, 6, dtype=torch.bool)
    m[:, 1:3, 2:5] = True
    same(L.outside_inside_ratio(pos, m), L.outside_inside_ratio(pos, m, sign="positive"))


def test_outside_inside_ratio_edge_cases() -> None:
    maps = torch.rand(4, 3, 5, dtype=torch.float64)
    masks = torch.zeros(4, 3, 5, dtype=torch.bool)
    masks[1] = True  # box covering the whole image
    masks[2:, 0, 0] = True
    maps[3] = -maps[3]  # all negative
    out = L.outside_inside_ratio(maps, masks, sign="positive")
    assert torch.isnan(out).tolist() == [True, True, False, True]
    signed = L.outside_inside_ratio(maps, masks)
    # all-negative map under Eq. 11: (0 + mean_in |R-|) / (0 + mean_out |R-|)
    neg = -maps[3].flatten()
    same(signed[3], neg[0] / neg[1:].mean())
    const = torch.full((1, 3, 5), 0.4, dtype=torch.float64)
    same(L.outside_inside_ratio(const, masks[2:3]), [1.0])


def test_normalised_outside_inside_ratio() -> None:
    # N(R) = (R + 1) / 3 = [[1, 0], [2/3, 1/3]]
    same(L.normalised_outside_inside_ratio(R1, S1), [1 / 3])
    const = torch.full((1, 2, 2), 5.0)
    assert math.isnan(L.normalised_outside_inside_ratio(const, S1).item())
    on_min = t([[[0, 1], [0, 0]]], torch.bool)  # mask on the minimum: mean_in N = 0
    assert math.isnan(L.normalised_outside_inside_ratio(R1, on_min).item())
    assert math.isnan(L.normalised_outside_inside_ratio(R1, torch.ones(1, 2, 2)).item())
    # invariant to affine rescaling of the map
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    m = torch.zeros(3, 6, 4, dtype=torch.bool)
    m[:, 2:4, 1:3] = True
    same(L.normalised_outside_inside_ratio(maps, m), L.normalised_outside_inside_ratio(3 * maps - 2, m))


def test_mu_and_mu_w_hand_computed() -> None:
    same(L.inside_total_ratio(R1, S1), [2 / 3])  # R+ = {2, 1}
    same(L.weighted_inside_total_ratio(R1, S1), [8 / 3])  # * 4 / 1
    same(L.inside_total_ratio(R1, S1, sign="absolute"), [0.5])
    # uniform map: mu_w = 1 for any box (chance level)
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, :3, :2] = True
    m[1, 1:6, 3:8] = True
    same(L.weighted_inside_total_ratio(torch.ones(2, 6, 8), m), [1.0, 1.0], tol=1e-6)
    # whole-image box: mu = mu_w = 1
    same(L.inside_total_ratio(torch.rand(1, 3, 4), torch.ones(1, 3, 4)), [1.0], tol=1e-6)
    same(L.weighted_inside_total_ratio(torch.rand(1, 3, 4), torch.ones(1, 3, 4)), [1.0], tol=1e-6)
    # undefined: empty mask; all-negative map (no positive relevance); all-zero map
    out = L.inside_total_ratio(torch.stack([torch.rand(3, 4), -torch.rand(3, 4) - 0.1, torch.zeros(3, 4)]),
                               torch.stack([torch.zeros(3, 4), torch.ones(3, 4), torch.ones(3, 4)]))
    assert torch.isnan(out).all()


def test_inside_total_summary_subsets_and_bins() -> None:
    maps = torch.ones(4, 4, 4)
    maps[:, 0, 0] = 5.0
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True  # 1/16
    masks[1, :2, :2] = True  # 4/16 = 0.25 -> in <= 0.25
    masks[2, :2, :] = True  # 0.5
    masks[3] = True  # 1.0
    s = L.inside_total_summary(maps, masks, bins=4)
    mu = L.inside_total_ratio(maps, masks)
    same(s.per_sample_mu, mu)
    same(s.fraction, [1 / 16, 0.25, 0.5, 1.0])
    assert s.mu_le_025.count == 2 and s.mu_le_025.mean == pytest.approx(float(mu[:2].mean()))
    assert s.mu_le_05.count == 3 and s.mu.count == 4
    # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert s.by_box_size.count.tolist() == [1, 1, 1, 1]
    same(s.by_box_size.mean, mu)


def test_positive_ratio() -> None:
    same(L.positive_ratio(R1), [0.5])
    same(L.positive_ratio(torch.zeros(1, 3, 3)), [0.0])


def test_topk_rank_mass_hand_computed_and_ties() -> None:
    maps = t([[[4.0, 3.0], [2.0, 1.0]]])
    masks = t([[[0, 1], [1, 0]]], torch.bool)
    same(L.top_k_intersection(maps, masks, k=2), [0.5])
    same(L.top_k_intersection(maps, masks, k=2, concept_influence=True), [1.0])
    same(L.top_k_intersection(maps, masks, k=100), [0.5])  # k capped at H*W
    same(L.relevance_rank_accuracy(maps, masks), [0.5])
    same(L.relevance_mass_accuracy(maps, masks), [0.5])
    # ties: the smaller row-major index ranks first
    flat = torch.ones(1, 2, 2)
    first = t([[[1, 0], [0, 0]]], torch.bool)
    same(L.top_k_intersection(flat, first, k=1), [1.0])
    same(L.top_k_intersection(flat, ~first, k=1), [0.0])
    assert math.isnan(L.relevance_rank_accuracy(maps, torch.zeros(1, 2, 2)).item())
    assert math.isnan(L.relevance_mass_accuracy(t([[[1.0, -1.0], [0.0, 0.0]]]), masks).item())


def test_localisation_batch_equals_per_sample() -> None:
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(5, 7, 9, generator=g, dtype=torch.float64)
    masks = torch.rand(5, 7, 9, generator=g) > 0.6
    masks[0] = False
    fns = [L.outside_inside_ratio, L.normalised_outside_inside_ratio, L.inside_total_ratio,
           L.weighted_inside_total_ratio, L.energy_pointing_game, L.relevance_rank_accuracy,
           L.top_k_intersection, L.pointing_game]
    for fn in fns:
        batch = fn(maps, masks)
        single = torch.cat([fn(maps[i:i + 1], masks[i:i + 1]) for i in range(5)])
        same(batch, single)


# ---------------------------------------------------------------------------------- aggregation


def test_aggregate_nan_aware_with_counts() -> None:
    agg = A.aggregate(torch.tensor([1.0, nan, 3.0, nan]))
    assert agg.mean == 2.0 and agg.std == 1.0 and agg.count == 2 and agg.total == 4
    assert agg.undefined == 2
    agg = A.aggregate(torch.tensor([1.0, nan, 3.0, 5.0]), include=torch.tensor([1, 1, 1, 0]), ddof=1)
    assert agg.mean == 2.0 and agg.std == pytest.approx(math.sqrt(2)) and agg.excluded == 1
    empty = A.aggregate(torch.tensor([nan, nan]))
    assert math.isnan(empty.mean) and empty.count == 0
    assert "n=2/4" in str(A.aggregate(torch.tensor([1.0, nan, 3.0, nan])))
    with pytest.raises(ValueError):
        A.aggregate(torch.zeros(2, 2))


def test_aggregate_curves_and_bins() -> None:
    c = A.aggregate_curves(torch.tensor([[1.0, nan], [3.0, 4.0]]))
    same(c.mean, [2.0, 4.0])
    assert c.count.tolist() == [2, 1]
    b = A.binned_mean(torch.tensor([1.0, 2.0, nan, 4.0, 7.0]), torch.tensor([0.0, 0.1, 0.2, 1.0, 1.5]),
                      bins=2)
    assert b.count.tolist() == [2, 1] and b.outside == 1
    same(b.mean, [1.5, 4.0])
    same(b.centers, [0.25, 0.75])
