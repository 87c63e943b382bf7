"""The two rules of Chefer, Gur and Wolf's LRP pass through a vision transformer
(Chefer et al. 2021 [Chefer2021-Transformer], Sec. 3.2) that the other families do not have.

* :class:`Unchanged`: the softmax and the layer norm pass the relevance at their output to their
  input as it is (the reference code's ``RelProp.relprop`` default, ``layers_ours.py``); only
  element-wise and shape-preserving kinds qualify.
* :class:`RescaledSum`: the residual sum. LRP-0 gives each term ``t_k`` the share
  ``t_k R / stab(sum)``; each share is then rescaled so that its total is
  ``|T_k| / sum_j |T_j| * sum R`` (``T_k`` the total of the LRP-0 share ``k``), so that the branch
  totals have the ratio of their magnitudes and add up to the incoming total (Eq. 7, the
  normalisation of the binary operators, Sec. 3.2, that keeps a sum of two terms from inflating or
  cancelling the relevance). Totals are
  taken per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import normalize, per_sample_sum, reduce_to_shape, safe_divide
from ..options import check_rule_field, number
from .base import Rule, Step

Tensor = torch.Tensor


@dataclass(frozen=True)
class Unchanged(Rule):
    """``R_in = R_out`` for a softmax or a layer norm (Chefer et al. 2021 [Chefer2021-Transformer], whose
    LRP pass treats both as the identity)."""

    kinds = ("softmax", "layernorm")

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.inputs[0]
        if x.shape != r.shape:
            raise ValueError(f"rule Unchanged needs an operation that keeps the shape, got {tuple(x.shape)} -> "
                             f"{tuple(r.shape)}")
        return [r] + [None] * (len(step.inputs) - 1)


@dataclass(frozen=True)
class RescaledSum(Rule):
    """Chefer et al. 2021 [Chefer2021-Transformer], Sec. 3.2: the LRP-0 shares ``u_k = t_k R / stab(sum)`` of the
    terms of a sum, each multiplied by ``(|U_k| / sum_j |U_j|) (sum R) / U_k`` with ``U_k`` the
    per-sample total of ``u_k`` (``0/0 := 0``). A constant term (``x + parameter``) counts as a term and
    absorbs its share. ``epsilon``: the stabiliser of ``stab(z) = z + epsilon sign(z)`` (the reference
    code shifts by 1e-9)."""

    kinds = ("add",)

    epsilon: float = 1e-9

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", number(low=0))

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        inputs = step.inputs
        signs = step.op.signs(len(inputs))
        s = normalize(r, step.output, self.epsilon)
        terms = [x if sign > 0 else -x for sign, x in zip(signs, inputs)]
        constant = step.output - sum(terms)  # a parameter added in the sum (zero without one)
        shares = [reduce_to_shape(t * s, x.shape) for t, x in zip(terms, inputs)]
        totals = [per_sample_sum(u, keepdim=True) for u in shares]
        magnitude = per_sample_sum(constant * s, keepdim=True).abs() + sum(total.abs() for total in totals)
        incoming = per_sample_sum(r, keepdim=True)
        return [u * safe_divide(safe_divide(total.abs(), magnitude) * incoming, total)
                for u, total in zip(shares, totals)]


__all__ = ["RescaledSum", "Unchanged"]
