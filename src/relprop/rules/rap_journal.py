"""Relative Attributing Propagation, journal version (Nam, Choi and Lee [Nam-RAP-Journal], Sec. IV-B, Eq. 5-11).

Notation (Nam, Choi and Lee [Nam-RAP-Journal], Eq. 1): ``z_ij = m_i w_ij`` is the contribution of input ``i`` to unit ``j``.
The *promoting* contributions are ``m+ w+`` and ``m- w-`` (positive values), the *inhibiting* ones
``m+ w-`` and ``m- w+`` (negative values). ``kappa`` is +1 in the normal flow and -1 in the
inversion flow (Eq. 10-11). Divisions give 0 where the denominator is 0.

Every rule ends with the zero-sum step of Eq. 6 (``center=True``): relevance that found no path
(a unit whose promoting or inhibiting sum is 0) is spread uniformly over the units holding relevance,
so that the relevance entering each layer sums to 0 per sample and per flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..numerics import per_sample, per_sample_sum, safe_divide, uniform_shift
from ..ops import Affine
from .base import AffineRule, Rule, Step

Tensor = torch.Tensor

#: kappa of Eq. 10-11 for each flow
KAPPA: dict[str, float] = {"normal": 1.0, "inversion": -1.0}


def check_flow(flow: str) -> float:
    """``kappa`` of ``flow`` ("normal" or "inversion"); ValueError otherwise."""
    if flow not in KAPPA:
        raise ValueError(f"flow must be 'normal' or 'inversion', got {flow!r}")
    return KAPPA[flow]


def _share(layer: Affine, x: Tensor, nonnegative: bool, r: Tensor, promoting: bool) -> Tensor:
    """``sum_j z_ij / sum_i' z_i'j * r_j`` over the promoting (or inhibiting) contributions ``z_ij``.

    Promoting: ``m+ w+`` and ``m- w-``; inhibiting: ``m+ w-`` and ``m- w+``. The two signs of ``m``
    share one denominator (``sum_i z_ij`` of all contributions of the kind), so the shares of
    ``r_j`` add up to ``r_j`` wherever the denominator is nonzero. For ``m >= 0`` the ``m-`` terms
    are skipped.
    """
    wp, wn = layer.positive_weight, layer.negative_weight
    w_plus, w_minus = (wp, wn) if promoting else (wn, wp)
    if nonnegative:
        s = safe_divide(r, layer.apply(x, w_plus))
        return layer.transpose(s, w_plus, x).mul_(x)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(r, layer.apply(xp, w_plus) + layer.apply(xn, w_minus))
    out = layer.transpose(s, w_plus, xp).mul_(xp)
    return out.add_(layer.transpose(s, w_minus, xn).mul_(xn))


def _zero_sum(c: Tensor) -> Tensor:
    """Eq. 6: ``sum_i (R+_i + R-_i) = 0`` per sample, by a uniform shift of the nonzero entries."""
    return uniform_shift(c, torch.zeros(c.shape[0], dtype=c.dtype, device=c.device))


def bias_effect(layer: Affine, r: Tensor) -> Tensor:
    """``(b_c - mean(b)) / (w x h)`` of Eq. 10, shaped to broadcast against ``r`` (zeros if no bias).
    A linear layer's channels are ``r``'s last dimension and its positions (tokens, or the rows and
    columns of a channels-last map) the ones between: ``w x h = 1`` on a feature vector."""
    b = layer.bias
    if b is None:
        return torch.zeros((), dtype=r.dtype, device=r.device)
    linear = layer.layer_type == "linear"
    positions = r.shape[1:-1] if linear else r.shape[2:]
    area = 1
    for size in positions:
        area *= size
    centred = (b - b.mean()) / area
    return centred if linear else centred.view(1, -1, *([1] * (r.dim() - 2)))


@dataclass(frozen=True)
class FirstPropagation(AffineRule):
    """The first propagation from the prediction node (Nam, Choi and Lee [Nam-RAP-Journal], Eq. 5-6).

    ``R_i = sum_j (z+_ij / sum_i z+_ij - z-_ij / sum_i z-_ij) R_j``: the promoting contributions
    share ``R_j`` with its sign, the inhibiting ones with the opposite sign; the bias is not used.
    The relevance sums to 0 (Eq. 6), exactly so with ``center``.
    """

    center: bool = True

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        c = _share(layer, x, nonnegative, r, promoting=True)
        c.sub_(_share(layer, x, nonnegative, r, promoting=False))
        return _zero_sum(c) if self.center else c


@dataclass(frozen=True)
class Flow(AffineRule):
    """A hidden affine layer in the normal (Eq. 7) or inversion (Eq. 8) flow, with Eq. 10 first.

    Bias (Eq. 10): ``R'_j = R_j - kappa (b_c - mean(b)) / (w x h)`` at every unit ``j`` of feature
    map ``c`` (active or not; ``w x h = 1`` for linear layers). Normal flow (Eq. 7):
    ``R_i = sum_j z+_ij / sum_i z+_ij R'_j``; inversion flow (Eq. 8):
    ``R_i = -sum_j z-_ij / sum_i z-_ij R'_j`` (an inhibiting input of a positively relevant unit is
    negatively relevant and vice versa). Then the zero-sum step of Eq. 6 when ``center``.
    """

    flow: str = "normal"
    bias: bool = True
    center: bool = True

    def __post_init__(self) -> None:
        check_flow(self.flow)

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        kappa = KAPPA[self.flow]
        if self.bias and layer.bias is not None:
            r = r - kappa * bias_effect(layer, r)
        normal = self.flow == "normal"
        c = _share(layer, x, nonnegative, r, promoting=normal)
        if not normal:
            c.neg_()
        return _zero_sum(c) if self.center else c


#: how Eq. 11's batch-norm term enters: as printed, rescaled to relevance units, or not at all
BN_TERMS = ("scaled", "literal", "off")


@dataclass(frozen=True)
class BatchNormFlow(Rule):
    """Batch norm in either flow (Nam, Choi and Lee [Nam-RAP-Journal], Eq. 11), a rule for the ``batchnorm`` kind
    (``Composite(batchnorm=BatchNormFlow(...))``).

    ``S = BN(z) - z``; ``S'`` is ``S`` with 0 where ``R`` is 0; ``R' = R - kappa T``, with

    - ``term="literal"``: ``T = (S' - mean(S')) / (w x h x c)`` as printed, the mean and the size
      taken over all units of the layer, per sample. ``S`` is in activation units, so on networks
      with many batch norms (EfficientNet) ``|T|`` is several times ``|R|`` and the map shows the
      batch-norm shifts rather than the class evidence (docs/methods.md).
    - ``term="scaled"`` (default): ``T = (S' - mean(S')) * sum|R| / sum(|z'| + |S'|)``: the same
      centred shift, converted from activation into relevance units with the layer's own ratio of
      relevance to activation (``z'``: the batch norm's input where ``R`` is nonzero), so each unit's
      compensation is its shift's share of what the unit carries; ``sum|T| <= 2 sum|R|``.
    - ``term="off"``: ``R' = R``.

    ``R'`` sums to what ``R`` sums to in every case.
    """

    kinds = ("batchnorm",)

    flow: str = "normal"
    term: str = "scaled"

    def __post_init__(self) -> None:
        check_flow(self.flow)
        if self.term not in BN_TERMS:
            raise ValueError(f"bn_term must be one of {BN_TERMS}, got {self.term!r}")

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        return [self(step.op, step.inputs[0], step.output, r)]

    def __call__(self, op: Any, x: Tensor, y: Tensor, r: Tensor) -> Tensor:
        """``R'`` at the batch norm's input ``x`` given its output ``y`` and the relevance ``r`` there."""
        if self.term == "off":
            return r
        kappa = KAPPA[self.flow]
        holds = r != 0
        shift = (y - x).mul_(holds)
        mean = shift.flatten(1).mean(1).view(-1, *([1] * (shift.dim() - 1)))
        centred = shift - mean
        if self.term == "literal":
            return r - kappa / shift[0].numel() * centred
        carried = per_sample_sum(x.abs().mul_(holds) + shift.abs())
        ratio = per_sample(safe_divide(per_sample_sum(r.abs()), carried), r)
        return r - kappa * ratio * centred


__all__ = ["BN_TERMS", "BatchNormFlow", "FirstPropagation", "Flow", "KAPPA", "bias_effect", "check_flow"]
