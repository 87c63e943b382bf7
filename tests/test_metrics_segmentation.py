"""Hand-computed toy cases and edge cases for relprop.metrics.segmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relprop.metrics import segmentation as S

nan = float("nan")


def same(a, b, tol=1e-9):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0, equal_nan=True), (a, b)


MAP1 = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # mean 1.5 -> pred [[0, 0], [1, 1]]
MASK1 = torch.tensor([[[0, 1], [1, 1]]], dtype=torch.bool)
MAP2 = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])  # mean 0.75 -> pred [[1, 0], [0, 0]]
MASK2 = torch.tensor([[[0, 0], [0, 1]]], dtype=torch.bool)


def test_thresholds() -> None:
    pred, const = S.threshold_maps(MAP1)
    assert pred.tolist() == [[[False, False], [True, True]]] and not const.any()
    signed = torch.tensor([[[-1.0, 0.0], [0.5, 2.0]]])
    assert S.threshold_maps(signed, "zero")[0].tolist() == [[[False, False], [True, True]]]
    # mean threshold on the raw map == Chefer's mean threshold on the min-max normalised map
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 9, 7, generator=g, dtype=torch.float64)
    norm = S.minmax_normalise(maps)
    chefer = norm > norm.flatten(1).mean(1)[:, None, None]
    assert torch.equal(S.threshold_maps(maps)[0], chefer)
    # numeric thresholds apply to the normalised map
    assert torch.equal(S.threshold_maps(maps, 0.3)[0], norm > 0.3)
    assert S.threshold_maps(MAP1, "median")[0].tolist() == [[[False, False], [True, True]]]
    with pytest.raises(ValueError):
        S.threshold_maps(MAP1, 1.5)
    with pytest.raises(ValueError):
        S.threshold_maps(MAP1, "triangle")


def test_constant_map_predicts_background_and_is_flagged() -> None:
    const = torch.full((1, 3, 3), 0.1)  # float mean of 0.1s may differ from 0.1 by an ulp
    pred, flag = S.threshold_maps(const)
    assert not pred.any() and flag.all()
    pred, flag = S.threshold_maps(const, 0.0)
    assert not pred.any() and flag.all()


def test_pixel_accuracy_and_image_iou_hand_computed() -> None:
    same(S.pixel_accuracy(MAP1, MASK1), [0.75])
    same(S.pixel_accuracy(MAP2, MASK2), [0.5])
    # image 1: fg 2/3, bg 1/2
    same(S.image_iou(MAP1, MASK1), [(2 / 3 + 1 / 2) / 2])
    # empty mask: bg IoU only; fg union = predicted pixels
    same(S.image_iou(MAP2, torch.zeros(1, 2, 2)), [(3 / 4 + 0) / 2])


def test_accumulator_accumulates_over_the_data_set() -> None:
    acc = S.SegmentationAccumulator(with_ap=False)
    acc.update(MAP1, MASK1)
    acc.update(MAP2, MASK2)
    r = acc.compute()
    assert r.pixel_accuracy == pytest.approx(5 / 8)
    # fg: (2 + 0) / (3 + 2); bg: (1 + 2) / (2 + 4)  -- not the mean of per-image IoUs
    assert r.iou == (pytest.approx(0.5), pytest.approx(0.4))
    assert r.miou == pytest.approx(0.45)
    per_image = float(torch.cat([S.image_iou(MAP1, MASK1), S.image_iou(MAP2, MASK2)]).mean())
    assert per_image != pytest.approx(0.45)
    assert r.n_samples == 2
    # batching does not matter
    acc2 = S.SegmentationAccumulator(with_ap=False)
    acc2.update(torch.cat([MAP1, MAP2]), torch.cat([MASK1, MASK2]))
    assert acc2.compute() == r
    acc2.reset()
    assert acc2.compute().n_samples == 0 and math.isnan(acc2.compute().pixel_accuracy)


def test_accumulator_constant_maps_and_empty_classes() -> None:
    const = torch.full((1, 2, 2), 2.0)
    acc = S.SegmentationAccumulator()
    acc.update(torch.cat([MAP1, const]), torch.cat([MASK1, MASK1]))
    r = acc.compute()
    assert r.n_samples == 2 and r.n_constant == 1 and r.ap_count == 1  # constant map: AP NaN
    assert r.pixel_accuracy == pytest.approx((3 + 1) / 8)
    skip = S.SegmentationAccumulator(constant_map="skip")
    skip.update(torch.cat([MAP1, const]), torch.cat([MASK1, MASK1]))
    rs = skip.compute()
    assert rs.n_samples == 1 and rs.n_skipped == 1 and rs.pixel_accuracy == pytest.approx(0.75)
    # whole-image masks predicted perfectly: the background union is empty -> its IoU and mIoU NaN
    full = S.SegmentationAccumulator(threshold="zero", with_ap=False)
    full.update(torch.ones(1, 2, 2), torch.ones(1, 2, 2))
    rf = full.compute()
    assert math.isnan(rf.iou[0]) and rf.iou[1] == 1.0 and math.isnan(rf.miou)


def test_average_precision_hand_computed_and_ties() -> None:
    ap = S.average_precision(torch.tensor([[0.9, 0.8, 0.7], [0.5, 0.5, 0.1]]),
                             torch.tensor([[1, 0, 1], [1, 0, 1]]))
    same(ap, [0.5 * 1 + 0.5 * 2 / 3, 0.5 * 0.5 + 0.5 * 2 / 3])
    # the order of tied entries does not matter
    same(S.average_precision(torch.tensor([[0.5, 0.5, 0.1]]), torch.tensor([[0, 1, 1]])), ap[1:])
    assert math.isnan(S.average_precision(torch.rand(1, 4), torch.zeros(1, 4)).item())


def test_stacked_and_foreground_ap() -> None:
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    # a perfect map
    same(S.stacked_average_precision(mask.double(), mask), [1.0])
    same(S.foreground_average_precision(mask.double(), mask), [1.0])
    # constant map: NaN by default; Chefer's NaN -> 0 gives (N-|S|)^2/N^2 + |S|/(2N)
    const = torch.full((1, 2, 2), 3.0)
    assert math.isnan(S.stacked_average_precision(const, mask).item())
    same(S.stacked_average_precision(const, mask, constant_map="zero"), [9 / 16 + 1 / 8])
    # constant map as plain foreground AP: the foreground rate
    same(S.foreground_average_precision(const, mask), [0.25])
    # empty mask: the stacked problem is defined (background channel), the foreground AP is not
    empty = torch.zeros(1, 2, 2)
    assert not math.isnan(S.stacked_average_precision(MAP1, empty).item())
    assert math.isnan(S.foreground_average_precision(MAP1, empty).item())


def test_segmentation_batch_equals_per_sample_and_validation() -> None:
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    masks = torch.rand(4, 6, 5, generator=g) > 0.5
    for fn in (S.pixel_accuracy, S.image_iou, S.stacked_average_precision, S.foreground_average_precision):
        same(fn(maps, masks), torch.cat([fn(maps[i:i + 1], masks[i:i + 1]) for i in range(4)]))
    with pytest.raises(ValueError, match=r"\(4, 6, 5\).*\(4, 5, 6\)"):
        S.pixel_accuracy(maps, masks.transpose(1, 2))
    with pytest.raises(ValueError, match="binary"):
        S.pixel_accuracy(maps, masks.double() * 2)
    # mask resized to the map (nearest), as Chefer et al. do
    big = masks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    same(S.pixel_accuracy(maps, big, resize="mask"), S.pixel_accuracy(maps, masks))


def test_average_precision_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, size=(3, 40)) / 5.0  # many ties
        targets = rng.random((3, 40)) > 0.6
        ours = S.average_precision(torch.tensor(scores), torch.tensor(targets))
        ref = [metrics.average_precision_score(targets[i], scores[i]) for i in range(3)]
        same(ours, ref, tol=1e-12)
    # Chefer et al.'s stacked two-channel AP
    maps = rng.normal(size=(2, 7, 6))
    masks = rng.random((2, 7, 6)) > 0.5
    ours = S.stacked_average_precision(torch.tensor(maps), torch.tensor(masks))
    for i in range(2):
        r = (maps[i] - maps[i].min()) / (maps[i].max() - maps[i].min())
        scores = np.stack([1 - r, r]).ravel()
        target = np.stack([~masks[i], masks[i]]).ravel()
        assert ours[i].item() == pytest.approx(metrics.average_precision_score(target, scores), abs=1e-12)


def test_otsu_and_percentile_thresholds_hand_computed() -> None:
    # groups {0, 0, 1} and {9, 10, 10}: the between-class variance 3 * 3 * (28/3)^2 is largest for any
    # split between the bins of 1 and 9; the first such bin is bin 25 (1 / (10/256) = 25.6), and the
    # threshold is its centre 25.5 * 10/256 = 0.99609375 (skimage's rule), so the 1 itself lies above it
    r = torch.tensor([[[0.0, 0.0, 1.0], [9.0, 10.0, 10.0]]], dtype=torch.float64)
    assert S.otsu_thresholds(r).item() == 0.99609375
    pred, _ = S.threshold_maps(r, "otsu")
    assert pred.tolist() == [[[False, False, True], [True, True, True]]]
    # percentile: values 0..11, q = 75 -> position 8.25 -> 8.25; q = 50 -> 5.5 (numpy), median -> 5
    ramp = torch.arange(12.0, dtype=torch.float64).view(1, 3, 4)
    same(S.percentile_thresholds(ramp, 75), [8.25])
    same(S.threshold_values(ramp, ("percentile", 50)), [5.5])
    same(S.threshold_values(ramp, "median"), [5.0])
    assert S.threshold_maps(ramp, ("percentile", 75))[0].sum() == 3  # 9, 10, 11
    same(S.threshold_values(ramp, 0.5), [5.5])  # min + t * (max - min)
    with pytest.raises(ValueError, match="percentile"):
        S.threshold_maps(ramp, ("percentile", 101))
    with pytest.raises(ValueError, match="threshold"):
        S.threshold_maps(ramp, ("quantile", 0.5))
    # constant maps stay background and flagged with every data-driven threshold
    for t in ("otsu", ("percentile", 30), "median"):
        pred, const = S.threshold_maps(torch.full((1, 2, 2), 3.0), t)
        assert not pred.any() and const.all()


def test_otsu_and_percentile_match_skimage_and_numpy() -> None:
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(3)
    maps = np.concatenate([rng.normal(0, 1, (4, 9, 11)), rng.normal(4, 0.5, (4, 6, 11))], axis=1)
    maps[3] = rng.integers(0, 5, size=(15, 11))  # many ties
    ours = S.otsu_thresholds(torch.tensor(maps))
    for i in range(4):
        assert ours[i].item() == filters.threshold_otsu(maps[i])
    pred, _ = S.threshold_maps(torch.tensor(maps), "otsu")
    assert torch.equal(pred, torch.tensor(maps > np.array([filters.threshold_otsu(m) for m in maps])[:, None, None]))
    for q in (0, 12.5, 50, 77, 100):
        ref = np.percentile(maps.reshape(4, -1), q, axis=1)
        assert S.percentile_thresholds(torch.tensor(maps), q).numpy().tolist() == ref.tolist()


def test_paper_000_threshold_cases() -> None:
    """Nam et al. 2020 [Nam2020-RAP]: positive relevance -> mean threshold; signed relevance -> zero threshold."""
    r = torch.tensor([[[-2.0, 1.0], [3.0, 0.0]]])
    mask = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.bool)
    # positive part: R+ = [[0, 1], [3, 0]], mean 1 -> only 3 is foreground
    assert S.threshold_maps(r, "mean", sign="positive")[0].tolist() == [[[False, False], [True, False]]]
    same(S.pixel_accuracy(r, mask, threshold="mean", sign="positive"), [0.75])
    # signed: R > 0 -> 1 and 3 are foreground: perfect
    same(S.pixel_accuracy(r, mask, threshold="zero"), [1.0])
    acc = S.SegmentationAccumulator(threshold="zero", with_ap=False)
    acc.update(r, mask)
    assert acc.compute().miou == 1.0


# ----------------------------------------------------------------------- per-image counts, pooled


def test_segmentation_counts_hand_computed() -> None:
    # MAP1 (mean 1.5) -> pred [[0, 0], [1, 1]] vs MASK1 [[0, 1], [1, 1]]: 3 correct of 4;
    # bg: pred {00, 01}, mask {00} -> inter 1, union 2; fg: pred {10, 11}, mask {01, 10, 11} -> 2, 3
    # MAP2 (mean 0.75) -> pred [[1, 0], [0, 0]] vs MASK2 [[0, 0], [0, 1]]: 2 correct;
    # bg: pred {01, 10, 11}, mask {00, 01, 10} -> 2, 4; fg: pred {00}, mask {11} -> 0, 2
    c = S.segmentation_counts(torch.cat([MAP1, MAP2]), torch.cat([MASK1, MASK2]))
    assert c.dtype == torch.int64
    assert c.tolist() == [[3, 4, 1, 2, 2, 3], [2, 4, 2, 4, 0, 2]]
    assert S.COUNT_FIELDS == ("correct", "pixels", "intersection_bg", "union_bg", "intersection_fg", "union_fg")
    # signed map at zero: pred = R > 0
    signed = torch.tensor([[[-1.0, 0.0], [0.5, 2.0]]])
    assert S.segmentation_counts(signed, MASK1, threshold="zero").tolist() == [[3, 4, 1, 2, 2, 3]]
    # positive part thresholded at its mean: R+ = [[0, 0], [.5, 2]], mean .625 -> pred {11}
    assert S.segmentation_counts(signed, MASK1, threshold="mean", sign="positive").tolist() == \
        [[2, 4, 1, 3, 1, 3]]
    pix, miou, iou = S.pooled_segmentation(c)
    assert pix == pytest.approx(5 / 8)
    assert iou == (pytest.approx(3 / 6), pytest.approx(2 / 5)) and miou == pytest.approx(0.45)
    assert all(math.isnan(v) for v in S.pooled_segmentation(torch.zeros(0, 6))[:2])


@pytest.mark.parametrize("options", [{"threshold": "zero"}, {"threshold": "mean", "sign": "positive"},
                                     {"threshold": "mean"}])
def test_pooled_counts_equal_the_accumulator(options) -> None:
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(11, 9, 7, generator=g, dtype=torch.float64)
    maps[4] = 0.0  # constant map: predicted background, counted
    masks = torch.rand(11, 9, 7, generator=g) > 0.6
    masks[2] = False
    acc = S.SegmentationAccumulator(with_ap=False, **options)
    rows = []
    for lo, hi in ((0, 3), (3, 4), (4, 11)):  # batching does not matter
        acc.update(maps[lo:hi], masks[lo:hi])
        rows.append(S.segmentation_counts(maps[lo:hi], masks[lo:hi], **options))
    ref = acc.compute()
    pix, miou, iou = S.pooled_segmentation(torch.cat(rows))
    assert pix == pytest.approx(ref.pixel_accuracy, abs=1e-12)
    assert miou == pytest.approx(ref.miou, abs=1e-12)
    assert iou == (pytest.approx(ref.iou[0], abs=1e-12), pytest.approx(ref.iou[1], abs=1e-12))
    # the per-image mean IoU is a different figure
    assert float(S.image_iou(maps, masks, **options).mean()) != pytest.approx(ref.miou, abs=1e-6)
