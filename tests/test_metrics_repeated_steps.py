"""Perturbation steps that repeat the copy before them take its results without a forward pass."""

from __future__ import annotations

import torch
from torch import nn

from relprop.metrics import perturbation as P


class CountingModel(nn.Module):
    """Two logits from every pixel, counting the rows it sees. Each row's logits are computed on their
    own (a product and a sum per row, not a matrix product, whose rounding may depend on the number of
    rows), so that the same image gives the same logits to the bit in any batch."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.weight = torch.linspace(-1.0, 1.0, 2 * 3 * 4 * 4, dtype=torch.float64).view(2, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return (x.flatten(1).to(torch.float64).unsqueeze(1) * self.weight).sum(-1)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 4, 4, generator=g)
    maps = torch.rand(3, 4, 4, generator=g)  # no negative relevance in sample 0
    maps[1, :2] -= 2.0  # 8 negative pixels in sample 1
    maps[2, 0, 0] = -1.0  # 1 negative pixel in sample 2
    return x, maps, torch.tensor([0, 1, 0])


def test_repeated_steps_marks_equal_region_counts() -> None:
    k = torch.tensor([[0, 0, 0], [0, 3, 3], [0, 1, 2]])
    n = torch.tensor([[0, 0, 0], [0, 3, 3], [0, 1, 2]])
    assert P.repeated_steps(k, n, shuffle=False).tolist() == [[False, True, True], [False, False, True],
                                                                [False, False, False]]
    # shuffling draws a fresh permutation per step: only copies that change at most one pixel repeat
    assert P.repeated_steps(k, n, shuffle=True).tolist() == [[False, True, True], [False, False, False],
                                                               [False, False, False]]


def test_curves_with_repeated_steps_equal_those_of_every_forward_pass(monkeypatch) -> None:
    x, maps, t = _inputs()
    counts = [0, 2, 4, 8, 16]
    for removal in ("min", "shuffle"):
        fast_model = CountingModel()
        fast = P.region_perturbation(fast_model, x, maps, t, counts=counts, order="lerf", restrict="negative",
                                     removal=removal, incremental=False)
        monkeypatch.setattr(P, "repeated_steps", lambda k, n, shuffle: torch.zeros_like(k, dtype=torch.bool))
        slow_model = CountingModel()
        slow = P.region_perturbation(slow_model, x, maps, t, counts=counts, order="lerf", restrict="negative",
                                     removal=removal, incremental=False)
        monkeypatch.undo()
        assert torch.equal(fast.scores, slow.scores) and torch.equal(fast.correct, slow.correct)
        assert torch.equal(fast.n_perturbed, slow.n_perturbed)
        assert slow_model.rows == 3 * 5
        # sample 0 has no eligible pixel (4 repeats); sample 1's 8 run out at 8 (1 repeat); sample 2
        # has one (3 repeats, also when shuffling: a single pixel cannot move)
        assert fast_model.rows == 3 * 5 - (4 + 1 + 3 if removal == "min" else 4 + 3)
