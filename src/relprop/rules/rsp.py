"""Relative Sectional Propagation rules (official code wjNam/Relative_Sectional_Propagation).

As the official code computes it: with ``x+`` the layer input, ``R+ = max(R, 0)`` and
``R- = max(-R, 0)``, the learned weights are replaced by the "comparative gradients"
``G+- = d<conv(x+, W), R+-> / dW`` (the weight gradient, per sample), and

    ``C+- = x+ * G+-^T sd(R+-, conv(x+, G+-) * [R > 0 or R < 0])``,

``R_in = 2 (C+ - C-) - [nonzero] * sum(R+ - R-) / #nonzero`` for k x k kernels and
``R_in = C+ - C-`` for 1 x 1 kernels. The learned weights W do not enter the result.

The official code's ``x+`` assumes post-ReLU inputs; a signed input is split as ``x = x+ - x-`` into
a layer of twice the width on a non-negative input (:mod:`relprop.rules.signed`). A linear layer on
tokens ``(B, T, C)`` sums its comparative gradient over the tokens, as a convolution over positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import safe_divide
from ..ops import Affine
from .base import AffineRule
from .signed import on_nonnegative_input

Tensor = torch.Tensor


def _weight_gradient(layer: Affine, x: Tensor, r: Tensor) -> Tensor:
    """``d <layer(x), r> / dW`` for one sample (batch of one)."""
    if layer.layer_type == "linear":  # positions (tokens) of the sample summed, as a convolution's
        return r.reshape(-1, r.shape[-1]).transpose(0, 1).matmul(x.reshape(-1, x.shape[-1]))
    weight = layer.weight
    if layer.pre_pad is not None:
        x = torch.nn.functional.pad(x, layer.pre_pad)
    return torch.ops.aten.convolution_backward(
        r, x, weight, None, list(layer.stride), list(layer.padding), list(layer.dilation), False,
        [0] * layer.nd, layer.groups, [False, True, False])[1]


@dataclass(frozen=True)
class RSPRule(AffineRule):
    """One RSP layer (per sample; the official code runs a batch of one)."""

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        return on_nonnegative_input(self._rsp, layer, x, z, r, nonnegative)

    def _rsp(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        one_by_one = layer.unit_kernel
        outputs = [self._sample(layer, x[b:b + 1], r[b:b + 1], one_by_one) for b in range(x.shape[0])]
        return torch.cat(outputs, dim=0)

    @staticmethod
    def _sample(layer: Affine, x: Tensor, r: Tensor, one_by_one: bool) -> Tensor:
        parts = []
        for magnitude, mask in ((r.clamp(min=0), r > 0), ((-r).clamp(min=0), r < 0)):
            g = _weight_gradient(layer, x, magnitude)
            z = layer.apply(x, g) * mask.to(x.dtype)
            parts.append(layer.transpose(safe_divide(magnitude, z), g, x).mul_(x))
        difference = parts[0] - parts[1]
        if one_by_one:
            return difference
        doubled = 2 * difference
        nonzero = doubled != 0
        count = nonzero.sum().to(x.dtype)
        total = r.sum()
        shift = safe_divide(total, count)
        return doubled - nonzero.to(x.dtype) * shift


__all__ = ["RSPRule"]
