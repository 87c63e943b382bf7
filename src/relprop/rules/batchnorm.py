"""Rules for a batch norm that could not be folded into the affine layer before it.

The default is :class:`relprop.rules.structural.PassThrough` (relevance passes unchanged, as
zennit's ``Pass``); :class:`BatchNormEpsilon` treats the per-channel map ``y = a x + c`` as an affine
layer under the epsilon rule (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 2), so the shift
``c`` absorbs its share like a bias. Relative Attributing Propagation's own batch-norm rule is
:class:`relprop.rules.rap_journal.BatchNormFlow`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import normalize
from ..options import check_rule_field, number
from .base import Rule, Step, rowwise

Tensor = torch.Tensor


@dataclass(frozen=True)
class BatchNormEpsilon(Rule):
    """``R_in = a x R_out / stab(a x + c)``, per channel."""

    kinds = ("batchnorm",)

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", number(low=0))

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.per_sample_inputs[0]  # broadcast over the targets of each sample (rowwise)
        s = rowwise(lambda r, z: normalize(r, z, self.epsilon), r, step.per_sample_output)
        return [rowwise(torch.mul, x * step.op.scale(x), s)]


__all__ = ["BatchNormEpsilon"]
