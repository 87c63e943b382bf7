"""Shared pieces of the closed-form references of RAP, gradient hedging and the contrastive methods:
the authors' safe divide and uniform shift, seeded inputs, float64 comparison."""

from __future__ import annotations

import torch
from torch import nn


DT = torch.float64
#: stabiliser of the z+ / z^B rules of the contrastive methods (official CLRP: + 1e-9)
EPS = 1e-9


# -- helpers ---------------------------------------------------------------------------------------
def sd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The authors' safe divide: ``a / b`` where ``b != 0``, else 0."""
    nz = b != 0
    return torch.where(nz, a / torch.where(nz, b, torch.ones_like(b)), torch.zeros_like(a))


def psi(c: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Uniform shift of one flattened sample: ``c - [c != 0] (sum c - total) / #{c != 0}``."""
    nz = (c != 0).to(c.dtype)
    return c - nz * (c.sum() - total) / nz.sum()


def per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-12):
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol + rtol * scale)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def post_relu(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A non-negative input with roughly half of its entries exactly 0 (as after a ReLU)."""
    return torch.randn(shape, generator=seeded(seed), dtype=DT).clamp(min=0)


def signed(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=seeded(seed), dtype=DT)


def module_of(make, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make().to(DT).eval()
