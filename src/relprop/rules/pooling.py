"""Rules for pooling and resizing: which input of a window receives the window's relevance.

Max pooling is winner-take-all by default (the gradient; Montavon et al. 2019 [Montavon2019-LRP]) or proportional to the inputs of each window; average pooling and resizing, linear
maps without bias, split relevance in proportion to each input's contribution (zennit's ``Norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import NORM_EPSILON, normalize, vjp
from ..options import check_rule_field, number
from .base import Rule, Step

Tensor = torch.Tensor


@dataclass(frozen=True)
class WinnerTakeAll(Rule):
    """Max pooling: each window's relevance goes to its maximum (the gradient). Uses the argmax
    indices kept by the forward pass where there are some (2-D max pools), so no recomputation."""

    kinds = ("maxpool",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.inputs[0]
        if step.state is None:
            return [step.input_vjp(0, r)]
        params, indices = step.state
        if x.is_contiguous() and not r.is_contiguous():  # e.g. channels-last from a hedge rule:
            r = r.contiguous()  # one copy of the small side, not two inside the kernel
        return [torch.ops.aten.max_pool2d_with_indices_backward(
            r, x, params["kernel_size"], params["stride"], params["padding"], params["dilation"],
            params["ceil_mode"], indices)]


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
        s = normalize(r, step.output, self.epsilon)
        return [step.inputs[0] * step.input_vjp(0, s)]


__all__ = ["Proportional", "ProportionalPool", "WinnerTakeAll"]
