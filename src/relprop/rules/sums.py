"""Rules for sums of tensors (residual connections; also ``x + constant`` and ``x - constant``).

``ProportionalSum`` (default, zennit's ``Norm``) gives each term ``R * term / stab(sum)``, a
constant term absorbing its share like a bias; ``EqualSum`` shares ``R`` equally among the tensor
terms; ``AbsoluteSum`` gives each term ``R * |term| / sum |terms|``: conservative, every share has
the sign of ``R`` and is at most ``|R|``, however closely two signed terms cancel (docs/methods.md,
"Residual sums").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import NORM_EPSILON, normalize, reduce_to_shape, safe_divide
from ..options import check_rule_field, number
from .base import Rule, Step, rowwise

Tensor = torch.Tensor


@dataclass(frozen=True)
class ProportionalSum(Rule):
    """``R_k = term_k R / stab(sum)``: each term's share in proportion to its signed value."""

    kinds = ("add",)

    epsilon: float = NORM_EPSILON

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", number(low=0))

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        inputs = step.per_sample_inputs  # broadcast over the targets of each sample (rowwise)
        signs = step.op.signs(len(inputs))
        s = rowwise(lambda r, z: normalize(r, z, self.epsilon), r, step.per_sample_output)
        shares = [reduce_to_shape(rowwise(torch.mul, x, s) if sign > 0 else rowwise(torch.mul, x, s).neg_(),
                                  step.input_shape(k)) for k, (sign, x) in enumerate(zip(signs[:-1], inputs))]
        last = rowwise(Tensor.mul_, s, inputs[-1])
        if signs[-1] < 0:
            last.neg_()
        return shares + [reduce_to_shape(last, step.input_shape(len(inputs) - 1))]


@dataclass(frozen=True)
class EqualSum(Rule):
    """``R_k = R / K`` for each of the ``K`` tensor terms."""

    kinds = ("add",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        share = r / len(step.inputs)
        return [reduce_to_shape(share, x.shape) for x in step.inputs]


@dataclass(frozen=True)
class AbsoluteSum(Rule):
    """``R_k = R |term_k| / sum |terms|``; a constant term (the output minus the signed tensor terms)
    counts in the denominator with its magnitude and absorbs its share. ``0/0 := 0``."""

    kinds = ("add",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        inputs = step.per_sample_inputs  # broadcast over the targets of each sample (rowwise)
        magnitudes = [x.abs() for x in inputs]
        constant = step.per_sample_output.detach().clone()
        for sign, x in zip(step.op.signs(len(inputs)), inputs):
            constant = constant - x if sign > 0 else constant + x
        total = constant.abs_()
        for m in magnitudes:
            total = total + m
        s = rowwise(safe_divide, r, total)
        return [reduce_to_shape(rowwise(torch.mul, m, s), step.input_shape(k)) for k, m in enumerate(magnitudes)]


__all__ = ["AbsoluteSum", "EqualSum", "ProportionalSum"]
