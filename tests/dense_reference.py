"""Independent references for the rule tests: the dense matrix of any affine layer, from its Jacobian."""

from __future__ import annotations

from typing import Callable

import torch


def dense(f: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...],
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, b)`` of an affine map of one sample: ``f(x).flatten() == M @ x.flatten() + b``."""
    n_in = 1
    for s in in_shape:
        n_in *= s

    def flat(v: torch.Tensor) -> torch.Tensor:
        return f(v.view(1, *in_shape)).flatten()

    with torch.no_grad():
        b = flat(torch.zeros(n_in, dtype=dtype)).clone()
    m = torch.autograd.functional.jacobian(flat, torch.zeros(n_in, dtype=dtype), vectorize=True)
    return m.detach(), b
