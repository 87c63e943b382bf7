"""Rules for pooling and resizing: which input of a window receives the window's relevance.

Max pooling is winner-take-all by default (the gradient; Montavon et al. 2019 [Montavon2019-LRP]) or proportional to the inputs of each window; average pooling and resizing, linear
maps without bias, split relevance in proportion to each input's contribution (zennit's ``Norm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .. import tiling
from ..numerics import NORM_EPSILON, normalize, vjp
from ..options import check_rule_field, number
from .base import Rule, Step, rowwise

Tensor = torch.Tensor


@dataclass(frozen=True)
class WinnerTakeAll(Rule):
    """Max pooling: each window's relevance goes to its maximum (the gradient). Uses the argmax
    indices kept by the forward pass where there are some (2-D max pools), so no recomputation; these
    need the input's shape only, and may be scattered in bands of output rows (:func:`winner_in_bands`,
    :data:`relprop.tiling.FORCE_ROWS` or the step's ``band_rows``)."""

    kinds = ("maxpool",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        if step.per_sample_state is None:
            return [step.input_vjp(0, r)]
        params, indices = step.per_sample_state
        rows = tiling.FORCE_ROWS if tiling.FORCE_ROWS is not None else step.band_rows
        if indices.shape[0] != r.shape[0]:  # each sample's winners, for the rows of its targets
            return [winner_in_bands(step.input_shape(0), indices, r, rows)]
        x = step.inputs[0]
        if rows is not None:
            return [winner_in_bands(x.shape, indices, r, rows)]
        if x.is_contiguous() and not r.is_contiguous():  # e.g. channels-last from a hedge rule:
            r = r.contiguous()  # one copy of the small side, not two inside the kernel
        return [torch.ops.aten.max_pool2d_with_indices_backward(
            r, x, params["kernel_size"], params["stride"], params["padding"], params["dilation"],
            params["ceil_mode"], indices)]

    def reads(self, op: Any) -> tuple[bool, bool]:
        return not _keeps_indices(op), False

    def working_bytes(self, op: Any, out_bytes: int, in_bytes: int) -> int | None:
        # the relevance at the output and the input's (indices count with the forward values)
        return out_bytes + in_bytes if _keeps_indices(op) else None


def _keeps_indices(op: Any) -> bool:
    """Whether the forward pass of ``op`` keeps argmax indices (a 2-D max-pool module)."""
    module = getattr(op, "module", None)
    return isinstance(module, nn.MaxPool2d) and not module.return_indices


def winner_in_bands(shape: torch.Size, indices: Tensor, r: Tensor, rows: int | None = None) -> Tensor:
    """The input relevance of a 2-D max pool of an input of ``shape`` with argmax ``indices`` (flat
    positions in each input plane): ``r`` added at the winners, ``rows`` output rows at a time (None:
    all at once). Overlapping windows (a winner of several) add up as in the whole step. ``r`` may hold
    the rows of a batch repeated per target (B * K, each sample's K targets in a row) while
    ``indices`` holds each sample's once (B): the indices are broadcast over the targets, not repeated."""
    samples = indices.shape[0]
    targets = r.shape[0] // samples
    height = r.shape[-2]
    step = height if rows is None else rows
    if step < 1:
        raise ValueError(f"a band needs at least one output row, got {step}")
    result = torch.zeros(shape, dtype=r.dtype, device=r.device)
    planes = result.view(samples, targets, -1, shape[-2] * shape[-1])
    by_sample = r.unflatten(0, (samples, targets))
    for first in range(0, height, step):
        count = min(step, height - first)
        where = indices.narrow(-2, first, count).reshape(samples, 1, planes.shape[2], -1)
        values = by_sample.narrow(-2, first, count).reshape(samples, targets, planes.shape[2], -1)
        planes.scatter_add_(3, where.expand(-1, targets, -1, -1), values)
    return result


@dataclass(frozen=True)
class ProportionalPool(Rule):
    """Max pooling, proportional: each window's relevance is split in proportion to all its inputs,
    ``R_i = x_i sum_j R_j / stab(sum_window x)``, as for a sum pool over the same windows."""

    kinds = ("maxpool",)

    epsilon: float = NORM_EPSILON

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", number(low=0))

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.inputs[0]
        pool = step.op.sum_pool(step.args, step.kwargs)
        return [x * vjp(pool, x, normalize(r, pool(x), self.epsilon))]


@dataclass(frozen=True)
class Proportional(Rule):
    """A linear map without bias (average pooling, adaptive pooling, ``mean``, resizing in every
    interpolation mode): ``R_i = x_i sum_j J_ji R_j / stab(z_j)``, which conserves relevance
    (zennit's ``Norm``; Montavon et al. 2019 [Montavon2019-LRP])."""

    kinds = ("avgpool", "resize")

    epsilon: float = NORM_EPSILON

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", number(low=0))

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        s = rowwise(lambda r, z: normalize(r, z, self.epsilon), r, step.per_sample_output)
        return [rowwise(torch.mul, step.per_sample_inputs[0], step.linear_input_vjp(0, s))]


__all__ = ["Proportional", "ProportionalPool", "WinnerTakeAll", "winner_in_bands"]
