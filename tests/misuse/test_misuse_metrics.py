"""Misuse of the metrics: bad counts, non-finite inputs, bad targets; and a property-based suite.

Every misuse gives a documented result or a ``ValueError`` naming the argument, never a silent wrong
answer and never another exception type.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import relprop.metrics as M

H = W = 8
CLASSES = 3


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, CLASSES)).double().eval()


MODEL = tiny_model()


def _inputs(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, H, W, generator=g, dtype=torch.float64),
            torch.randn(b, H, W, generator=g, dtype=torch.float64))


def _perturbation_calls() -> dict[str, Callable]:
    """Every metric that perturbs images, as ``fn(images, maps, targets)``."""
    return {
        "region_perturbation": lambda x, m, t: M.region_perturbation(MODEL, x, m, t, counts=[0, 4, 8]),
        "blurred_insertion": lambda x, m, t: M.blurred_insertion(MODEL, x, m, t, fractions=[0.1, 0.5],
                                                                 kernel_size=3, sigma=1.0),
        "rise_deletion": lambda x, m, t: M.rise_deletion(MODEL, x, m, t, step=16),
        "rise_insertion": lambda x, m, t: M.rise_insertion(MODEL, x, m, t, step=16),
        "maximal_patch_masking": lambda x, m, t: M.maximal_patch_masking(MODEL, x, m, t, patch_sizes=(1, 3)),
        "aopc_morf": lambda x, m, t: M.METRICS["aopc_morf"].fn(MODEL, x, m, t, counts=[0, 4]),
    }


PERTURBATION = _perturbation_calls()


# ---- case 9: counts and non-finite inputs -----------------------------------------------------


@pytest.mark.parametrize("counts, why", [
    ([4, 0, 2], "increasing"), ([0, 2, 2, 4], "increasing"), ([0, 4, 2], "increasing"),
    ([0, -2, 4], "non-negative"), ([0, 2.5, 4], "integers"), ([0, True, 4], "integers"), ([], "at least"),
])
def test_region_perturbation_rejects_bad_counts(counts, why) -> None:
    x, m = _inputs()
    with pytest.raises(ValueError, match=rf"counts.*{why}"):
        M.region_perturbation(MODEL, x, m, torch.tensor([0, 1]), counts=counts)


def test_counts_beyond_the_number_of_regions_are_capped() -> None:
    """Documented: ``counts=[..., H*W]`` is "All"; larger counts perturb every eligible region."""
    x, m = _inputs()
    c = M.region_perturbation(MODEL, x, m, torch.tensor([0, 1]), counts=[0, H * W, 10 * H * W])
    assert c.n_perturbed[:, 1].tolist() == c.n_perturbed[:, 2].tolist() == [H * W] * 2
    assert torch.equal(c.scores[:, 1], c.scores[:, 2])


def test_blurred_insertion_rejects_unsorted_fractions() -> None:
    x, m = _inputs()
    with pytest.raises(ValueError, match="fractions.*increasing"):
        M.blurred_insertion(MODEL, x, m, torch.tensor([0, 1]), fractions=[0.2, 0.1], kernel_size=3, sigma=1.0)


@pytest.mark.parametrize("name", sorted(PERTURBATION))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_images_are_rejected(name: str, bad: float) -> None:
    x, m = _inputs()
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"images contain (NaN|infinite)"):
        PERTURBATION[name](x, m, torch.tensor([0, 1]))


@pytest.mark.parametrize("name", sorted(PERTURBATION))
def test_non_finite_maps_are_rejected(name: str) -> None:
    x, m = _inputs()
    m[0, 1, 1] = math.nan
    with pytest.raises(ValueError, match="maps contain NaN"):
        PERTURBATION[name](x, m, torch.tensor([0, 1]))


def test_non_finite_removal_values_are_rejected() -> None:
    x, m = _inputs()
    with pytest.raises(ValueError, match="removal"):
        M.region_perturbation(MODEL, x, m, torch.tensor([0, 1]), counts=[0, 4], removal=math.nan)
    with pytest.raises(ValueError, match="fill"):
        M.maximal_patch_masking(MODEL, x, m, torch.tensor([0, 1]), fill=math.inf)


# ---- case 17: targets out of range or of the wrong type ---------------------------------------


@pytest.mark.parametrize("name", sorted(PERTURBATION))
@pytest.mark.parametrize("targets", [[0, CLASSES], [-1, 0], [0, 100]])
def test_out_of_range_targets_name_the_valid_range(name: str, targets) -> None:
    x, m = _inputs()
    with pytest.raises(ValueError, match=rf"targets.*\[0, {CLASSES}\)"):
        PERTURBATION[name](x, m, torch.tensor(targets))


@pytest.mark.parametrize("name", sorted(PERTURBATION))
@pytest.mark.parametrize("targets", ["1", ["a", "b"], [0.0, 1.0], 1.5, [True, False]])
def test_targets_of_the_wrong_type_name_the_type_expected(name: str, targets) -> None:
    x, m = _inputs()
    with pytest.raises(ValueError, match="targets.*integer"):
        PERTURBATION[name](x, m, targets)


@pytest.mark.parametrize("targets", [[0, CLASSES], "1", [0.5, 1.0]])
def test_other_metrics_with_targets_check_them(targets) -> None:
    x, m = _inputs()
    masks = m > 0
    with pytest.raises(ValueError, match="targets"):
        M.object_context_occlusion(MODEL, x, masks, targets)
    with pytest.raises(ValueError, match="targets"):
        M.target_score(MODEL, x, targets)


# ---- property-based suite: a documented result or a ValueError, never another exception -------

#: MISUSE_EXAMPLES=500 for a longer search (the default keeps the file near 15 s on 2 loaded cores)
SETTINGS = settings(max_examples=int(os.environ.get("MISUSE_EXAMPLES", 60)), deadline=None, derandomize=True,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float64, torch.float32, torch.float16, torch.int64, torch.bool]


@st.composite
def maps_and_masks(draw, same_shape: bool = False):
    """(maps, masks, valid): shapes, dtypes and values chosen to hit every input check.

    Masks come from boxes (empty, degenerate, outside the image, reversed corners), from random
    bits, or are all-zero / all-one; some are not binary or hold NaN; some maps hold NaN or inf.
    """
    b = draw(st.integers(0, 3))
    h, w = draw(st.integers(0, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    values = torch.randn(b, h, w, generator=g, dtype=torch.float64) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    if draw(st.booleans()):
        values = values.round()  # ties, zeros, constant regions
    valid = True
    if b and h and draw(st.integers(0, 5)) == 0:
        values[draw(st.integers(0, b - 1)), 0, 0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        valid = dtype not in (torch.int64, torch.bool)  # a cast to int / bool hides it (but not valid)
        if not valid:
            values = values.nan_to_num(0.0, 0.0, 0.0)
            valid = True
        else:
            valid = False
    maps = values.to(dtype)
    valid &= h > 0  # an empty image
    if draw(st.integers(0, 19)) == 0:
        maps, valid = maps.to(torch.complex64), False
    mh, mw = (h, w) if same_shape or draw(st.integers(0, 4)) else (draw(st.integers(0, 6)), draw(st.integers(1, 6)))
    valid &= (mh, mw) == (h, w)
    kind = draw(st.sampled_from(["box", "bits", "zeros", "ones", "halves", "nan", "twos"]))
    masks = torch.zeros(b, mh, mw, dtype=torch.float64)
    if kind == "box":
        for i in range(b):
            x0, x1 = draw(st.integers(-3, mw + 3)), draw(st.integers(-3, mw + 3))
            y0, y1 = draw(st.integers(-3, mh + 3)), draw(st.integers(-3, mh + 3))
            masks[i, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1  # reversed corners: empty
    elif kind == "bits":
        masks = (torch.rand(b, mh, mw, generator=g) > 0.5).double()
    elif kind == "ones":
        masks = torch.ones(b, mh, mw, dtype=torch.float64)
    elif kind == "halves" and b and mh:
        masks[:, 0, 0] = 0.5
        valid = False
    elif kind == "nan" and b and mh:
        masks[:, 0, 0] = math.nan
        valid = False
    elif kind == "twos" and b and mh:
        masks = masks.to(torch.uint8)
        masks[:, 0, 0] = 2
        valid = False
    if masks.dtype != torch.uint8:
        masks = masks.to(draw(st.sampled_from([torch.bool, torch.float32, torch.int64]))) if valid else masks
    if draw(st.integers(0, 9)) == 0:  # a wrong rank
        maps, valid = maps[None], False
    return maps, masks, valid


def _values(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _in(lo: float, hi: float) -> Callable[[torch.Tensor], bool]:
    return lambda v: bool(((v >= lo) & (v <= hi) | v.isnan()).all())


# name -> (call on (maps, masks), check of the values of valid inputs)
MAP_MASK = {
    "pointing_game": (lambda m, k: M.pointing_game(m, k, tolerance=1),
                      lambda v: bool(((v == 0) | (v == 1) | v.isnan()).all())),
    "pointing_game_any": (lambda m, k: M.pointing_game(m, k, ties="any", tolerance=0),
                          lambda v: bool(((v == 0) | (v == 1) | v.isnan()).all())),
    "energy_pointing_game": (lambda m, k: M.energy_pointing_game(m, k, [0.5, 1.0]), _in(0, 1)),
    "outside_inside_ratio": (lambda m, k: M.outside_inside_ratio(m, k), _in(0, math.inf)),
    "outside_inside_ratio_pos": (lambda m, k: M.outside_inside_ratio(m, k, sign="positive"), _in(0, math.inf)),
    "normalised_outside_inside_ratio": (M.normalised_outside_inside_ratio, _in(0, math.inf)),
    "mu": (M.inside_total_ratio, _in(0, 1)),
    "mu_w": (M.weighted_inside_total_ratio, _in(0, math.inf)),
    "pixel_accuracy": (M.pixel_accuracy, _in(0, 1)),
    "image_iou": (M.image_iou, _in(0, 1)),
    "stacked_average_precision": (M.stacked_average_precision, _in(0, 1)),
    "foreground_average_precision": (M.foreground_average_precision, _in(0, 1)),
    "top_k_intersection": (lambda m, k: M.top_k_intersection(m, k, k=3), _in(0, 1)),
    "relevance_rank_accuracy": (M.relevance_rank_accuracy, _in(0, 1)),
    "relevance_mass_accuracy": (lambda m, k: M.relevance_mass_accuracy(m, k, sign="positive"), _in(0, 1)),
}


@pytest.mark.parametrize("name", sorted(MAP_MASK))
@SETTINGS
@given(data=maps_and_masks())
def test_map_mask_metrics_give_a_documented_result_or_a_value_error(name: str, data) -> None:
    maps, masks, valid = data
    fn, check = MAP_MASK[name]
    try:
        out = _values(fn(maps, masks))
    except ValueError:
        assert not valid, "a valid input was refused"
        return
    assert valid, "an invalid input was accepted"
    assert out.shape[0] == maps.shape[0]
    assert check(out), out


@pytest.mark.parametrize("resize", ["map", "mask"])
@SETTINGS
@given(data=maps_and_masks())
def test_resized_pairs_give_a_result_or_a_value_error(resize: str, data) -> None:
    maps, masks, valid = data
    valid = valid or (maps.dim() == 3 and masks.dim() == 3 and maps.shape[0] == masks.shape[0]
                      and not maps.is_complex() and bool(torch.isfinite(maps.double()).all())
                      and min(maps.shape[1:] + masks.shape[1:]) > 0 and bool(((masks == 0) | (masks == 1)).all()))
    try:
        out = M.inside_total_ratio(maps, masks, resize=resize)
    except ValueError:
        assert not valid
        return
    assert valid and _in(0, 1)(out)


MAP_ONLY = {
    "topk_distance": (lambda m: M.topk_distance(m, ks=(1, 3)), _in(0, math.inf)),
    "topk_distance_all": (lambda m: M.topk_distance(m, ks=(2,), fewer="all", normalise=True), _in(0, 1)),
    "positive_ratio": (M.positive_ratio, _in(0, 1)),
    "max_points": (M.max_points, lambda v: bool((v >= 0).all())),
}


@pytest.mark.parametrize("name", sorted(MAP_ONLY))
@SETTINGS
@given(data=maps_and_masks(same_shape=True))
def test_map_metrics_give_a_documented_result_or_a_value_error(name: str, data) -> None:
    maps, _, valid = data
    takes_volumes = name == "max_points" or (name in M.METRICS and M.METRICS[name].volumes)
    ranks = (3, 4) if takes_volumes else (3,)  # (B, H, W) maps, and (B, D, H, W) volumes where declared
    valid = (maps.dim() in ranks and not maps.is_complex() and min(maps.shape[1:]) > 0
             and bool(torch.isfinite(maps.double()).all()))
    fn, check = MAP_ONLY[name]
    try:
        out = fn(maps)
    except ValueError:
        assert not valid
        return
    assert valid and out.shape[0] == maps.shape[0] and check(out)


counts_st = st.lists(st.integers(-2, 40), min_size=0, max_size=5)
targets_st = st.one_of(st.none(), st.integers(-2, 4), st.lists(st.integers(-1, 3), min_size=0, max_size=3),
                       st.sampled_from(["0", 0.5, True]))


def _images(b: int, h: int, w: int, seed: int, bad: bool) -> torch.Tensor:
    x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if bad and b:
        x[0, 0, 0, 0] = math.nan
    return x


def _targets_valid(t, b: int) -> bool:
    if t is None:
        return True
    if isinstance(t, (str, float, bool)):
        return False
    ts = [t] * b if isinstance(t, int) else t
    return len(ts) == b and all(0 <= v < CLASSES for v in ts)


@SETTINGS
@given(b=st.integers(0, 3), h=st.integers(2, 6), w=st.integers(2, 6), seed=st.integers(0, 99),
       bad=st.booleans(), counts=counts_st, targets=targets_st, patch=st.integers(1, 3),
       order=st.sampled_from(["morf", "lerf", "random"]))
def test_region_perturbation_gives_curves_or_a_value_error(b, h, w, seed, bad, counts, targets, patch,
                                                           order) -> None:
    x = _images(b, h, w, seed, bad)
    maps = x.sum(1)
    valid = (not (bad and b) and bool(counts) and min(counts) >= 0
             and all(q > p for p, q in zip(counts, counts[1:])) and _targets_valid(targets, b))
    try:
        c = M.region_perturbation(MODEL, x, maps, targets, counts=counts, patch_size=patch, order=order)
    except ValueError:
        assert not valid
        return
    assert valid
    steps = len(counts) + (counts[0] != 0)
    assert c.scores.shape == (b, steps) and c.correct.shape == (b, steps)
    assert bool(torch.isfinite(c.scores).all())
    assert bool((c.n_perturbed[:, 1:] >= c.n_perturbed[:, :-1]).all()) and bool((c.n_perturbed <= h * w).all())
    if b:
        assert bool((c.scores[:, 0] == c.scores[:, 0]).all()) and bool((c.n_perturbed[:, 0] == 0).all())


@SETTINGS
@given(b=st.integers(0, 3), h=st.integers(1, 6), w=st.integers(1, 6), seed=st.integers(0, 99),
       bad=st.booleans(), targets=targets_st, sizes=st.lists(st.integers(-1, 8), min_size=0, max_size=3),
       location=st.sampled_from(["max", "random"]))
def test_patch_masking_gives_changes_or_a_value_error(b, h, w, seed, bad, targets, sizes, location) -> None:
    x = _images(b, h, w, seed, bad)
    maps = x.sum(1)
    valid = (not (bad and b) and targets is not None and _targets_valid(targets, b) and bool(sizes)
             and min(sizes) >= 1)
    try:
        res = M.maximal_patch_masking(MODEL, x, maps, targets, patch_sizes=sizes, location=location)
    except ValueError:
        assert not valid
        return
    assert valid and res.change.shape == (b, len(sizes))
    assert bool(((res.change.abs() <= 1) | res.change.isnan()).all())  # softmax differences


@SETTINGS
@given(data=maps_and_masks(same_shape=True), row=st.integers(-3, 9), col=st.integers(-3, 9))
def test_pointing_hits_outside_the_image_are_refused(data, row: int, col: int) -> None:
    _, masks, _ = data
    valid = bool(((masks == 0) | (masks == 1)).all())  # the maps play no part here
    b, h, w = masks.shape
    inside = 0 <= row < h and 0 <= col < w
    try:
        out = M.pointing_hits(torch.tensor([[row, col]] * b, dtype=torch.long).view(b, 2), masks, tolerance=1)
    except ValueError:
        assert not (valid and (inside or b == 0))
        return
    assert valid and (inside or b == 0) and bool(((out == 0) | (out == 1) | out.isnan()).all())


# ---- what the property-based suite found (fixed in relprop.metrics._common) -------------------


def test_complex_maps_are_refused_not_cast() -> None:
    """Found by the suite: a complex map was cast to its real part without a word."""
    maps = torch.ones(1, 2, 2, dtype=torch.complex64)
    with pytest.raises(ValueError, match="maps must be real"):
        M.inside_total_ratio(maps, torch.ones(1, 2, 2, dtype=torch.bool))


@pytest.mark.parametrize("resize", [None, "map", "mask"])
def test_masks_of_empty_size_are_refused(resize) -> None:
    """Found by the suite: (B, 0, W) masks reached torch's interpolate (RuntimeError)."""
    with pytest.raises(ValueError, match="masks have an empty spatial size"):
        M.pointing_game(torch.ones(1, 1, 1), torch.ones(1, 0, 1, dtype=torch.bool), resize=resize)


def test_an_empty_batch_with_an_empty_target_list_gives_empty_results() -> None:
    """Found by the suite: ``targets=[]`` for an empty batch was refused as float."""
    x, m = _inputs(b=0)
    res = M.maximal_patch_masking(MODEL, x, m, [], patch_sizes=(1,))
    assert res.change.shape == (0, 1)
    assert M.region_perturbation(MODEL, x, m, [], counts=[0, 2]).scores.shape == (0, 2)
