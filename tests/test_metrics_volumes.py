"""Localisation metrics on (B, D, H, W) volumes: hand-worked 3-D cases, and a volume of one slice
scoring exactly like the 2-D map it holds."""

from __future__ import annotations

import pytest
import torch

from relprop.metrics.localisation import (energy_pointing_game, max_points, outside_inside_ratio, pointing_game,
                                          pointing_hits)


def _one_hot(shape, *points):
    t = torch.zeros(shape, dtype=torch.bool)
    for p in points:
        t[p] = True
    return t


def test_max_points_in_volumes():
    r = torch.zeros(2, 3, 4, 5)
    r[0, 2, 1, 3] = 1.0
    r[1, 0, 3, 4] = 2.0
    r[1, 1, 0, 0] = 2.0  # a later tie: the first in row-major order wins
    assert max_points(r).tolist() == [[2, 1, 3], [0, 3, 4]]


def test_pointing_game_in_3d_hand_worked():
    r = torch.zeros(1, 6, 6, 6)
    r[0, 1, 1, 1] = 5.0
    far = _one_hot((1, 6, 6, 6), (0, 3, 1, 1))  # distance 2 along the slice axis
    diag = _one_hot((1, 6, 6, 6), (0, 2, 2, 2))  # distance sqrt(3)
    on = _one_hot((1, 6, 6, 6), (0, 1, 1, 1))
    assert pointing_game(r, on, tolerance=0).item() == 1.0
    assert pointing_game(r, far, tolerance=2).item() == 0.0  # strict: 4 < 4 fails
    assert pointing_game(r, far, tolerance=2, strict=False).item() == 1.0
    assert pointing_game(r, far, tolerance=3).item() == 1.0
    assert pointing_game(r, diag, tolerance=2).item() == 1.0  # 3 < 4
    assert pointing_game(r, diag, tolerance=1).item() == 0.0
    # ties="any": a second maximum next to the mask is a hit although the first one misses
    r2 = r.clone()
    r2[0, 5, 5, 5] = 5.0
    corner = _one_hot((1, 6, 6, 6), (0, 5, 5, 4))
    assert pointing_game(r2, corner, tolerance=2).item() == 0.0
    assert pointing_game(r2, corner, tolerance=2, ties="any").item() == 1.0
    assert torch.isnan(pointing_game(r, torch.zeros(1, 6, 6, 6, dtype=torch.bool))).all()
    assert pointing_hits(torch.tensor([[3, 1, 1]]), far, tolerance=1).item() == 1.0
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        pointing_hits(torch.tensor([[3, 1]]), far)
    with pytest.raises(ValueError, match="inside the 6x6x6 volume"):
        pointing_hits(torch.tensor([[6, 1, 1]]), far)


def test_energy_pointing_game_in_3d_hand_worked():
    r = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0, 0.0, 0.0]).view(1, 2, 2, 2)
    m = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool).view(1, 2, 2, 2)
    acc = energy_pointing_game(r, m, energies=(0.25, 0.5, 0.75, 1.0))
    # 4 positive voxels: E=0.25 keeps {4} (hit), 0.5 {4, 3}, 0.75 {4, 3, 2}, 1.0 all four (hits 4 and 1)
    torch.testing.assert_close(acc, torch.tensor([[1.0, 0.5, 1 / 3, 0.5]], dtype=torch.float64))


def test_outside_inside_ratio_in_3d_hand_worked():
    r = torch.tensor([2.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0]).view(1, 2, 2, 2)
    m = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool).view(1, 2, 2, 2)
    # inside R+ mean 1, outside R+ mean 4/6, inside |R-| mean 1/2, outside |R-| mean 0
    torch.testing.assert_close(outside_inside_ratio(r, m), torch.tensor([(4 / 6 + 0.5) / 1.0]))
    torch.testing.assert_close(outside_inside_ratio(r, m, sign="positive"), torch.tensor([(4 / 6) / 1.0]))
    assert torch.isnan(outside_inside_ratio(r, torch.ones(1, 2, 2, 2, dtype=torch.bool))).all()


def test_a_one_slice_volume_scores_like_its_image():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 9, 11, generator=g)
    m = torch.rand(4, 9, 11, generator=g) > 0.7
    for tol in (0, 2, 4):
        torch.testing.assert_close(pointing_game(r[:, None], m[:, None], tolerance=tol),
                                   pointing_game(r, m, tolerance=tol), equal_nan=True)
        torch.testing.assert_close(pointing_game(r[:, None], m[:, None], tolerance=tol, ties="any"),
                                   pointing_game(r, m, tolerance=tol, ties="any"), equal_nan=True)
    torch.testing.assert_close(energy_pointing_game(r[:, None], m[:, None]), energy_pointing_game(r, m))
    torch.testing.assert_close(outside_inside_ratio(r[:, None], m[:, None]), outside_inside_ratio(r, m))


def test_volume_resizing_and_rank_checks():
    r = torch.zeros(1, 4, 4, 4)
    r[0, 1, 1, 1] = 1.0
    big = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    big[0, 2:4, 2:4, 2:4] = True
    assert pointing_game(r, big, tolerance=0, resize="mask").item() == 1.0
    assert pointing_game(r, big, tolerance=0, resize="map").item() == 1.0
    with pytest.raises(ValueError, match="differ in rank"):
        pointing_game(r, big[:, 0])
    with pytest.raises(ValueError, match=r"rank 3\) or \(B, D, H, W\)"):
        pointing_game(r[None], big)


def test_the_flat_metrics_score_a_volume_like_its_voxels_laid_out_as_an_image():
    """Metrics whose formula runs over the pixels as a set (or a ranking) give a (B, D, H, W) volume the
    value of its (B, D * H, W) image: the same voxels in the same row-major order."""
    import relprop.metrics as M

    g = torch.Generator().manual_seed(3)
    r = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    r[0, :2] = 0.0  # silent voxels
    m = torch.rand(3, 4, 5, 6, generator=g) > 0.6
    flat_r, flat_m = r.reshape(3, 20, 6), m.reshape(3, 20, 6)
    for name, fn in [("normalised_outside_inside_ratio", M.normalised_outside_inside_ratio),
                     ("top_k_intersection", lambda a, b: M.top_k_intersection(a, b, k=7)),
                     ("relevance_rank_accuracy", M.relevance_rank_accuracy),
                     ("relevance_mass_accuracy", M.relevance_mass_accuracy),
                     ("mu", M.inside_total_ratio), ("silent_background", M.silent_background),
                     ("negative_share", lambda a, b: M.negative_share(a))]:
        assert M.METRICS[name].volumes, name
        torch.testing.assert_close(fn(r, m), fn(flat_r, flat_m), rtol=0, atol=1e-12, equal_nan=True, msg=name)
