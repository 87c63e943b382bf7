"""Relative Attributing Propagation rules (Nam et al. 2020 [Nam2020-RAP], Eq. 5-10), as the official code computes them.

Notation (official code, github.com/wjNam/Relative_Attributing_Propagation): ``x+ = max(x, 0)``, ``w+``, ``|w-|``; ``z+_j = sum_i x+_i w+_ij``,
``z-_j = sum_i x+_i |w-_ij|``; ``sd`` divides and gives 0 where the denominator is 0 (no epsilon).
Hidden-layer inputs are post-ReLU in the models RAP was made for; negative inputs receive no
relevance from these rules (the uniform shift keeps the layer conservative regardless).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import per_sample_sum, quotient_, safe_divide, shift_excess_
from ..ops import Affine
from ..options import check_rule_field, choice
from .base import AffineRule, require_feature_vectors, shared_term

Tensor = torch.Tensor


def _stacked(layer: Affine) -> Tensor:
    """``[w+; |w-|]`` stacked along the output dimension (one transposed map serves both parts)."""
    def make() -> Tensor:
        w = layer.weight
        out = w.new_empty((2 * w.shape[0], *w.shape[1:]))
        torch.clamp(w, min=0, out=out[:w.shape[0]])
        torch.clamp(w, max=0, out=out[w.shape[0]:]).neg_()
        return out
    return layer.cached("[w+;|w-|]", make)


def _positive(layer: Affine) -> Tensor:
    return _stacked(layer)[:layer.weight.shape[0]]


def _abs_negative(layer: Affine) -> Tensor:
    return _stacked(layer)[layer.weight.shape[0]:]


def _pre_activations(layer: Affine, xp: Tensor, z: Tensor, nonnegative: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``z+`` (one extra convolution), ``z-`` and ``z+ + z-``; for ``x >= 0``, ``z-`` is ``z+ - (z - b)``,
    from the forward pass's own output (no second extra convolution), else computed."""
    zp = layer.apply(xp, _positive(layer))
    if nonnegative:
        zn = torch.sub(zp, z)
        if layer.bias is not None:
            zn.add_(layer.broadcast_bias(z))
        zn.clamp_(min=0)
    else:
        zn = layer.apply(xp, _abs_negative(layer))
    return zp, zn, torch.add(zp, zn)


@dataclass(frozen=True)
class RAPOutput(AffineRule):
    """The first propagation at the output layer (Nam et al. 2020 [Nam2020-RAP], Eq. 5-6; the official code's output layer).

    The target unit's input contributions ``c_i = x_i w_ti`` receive the bias in proportion to the
    positive and negative sums, and relevance is their absolute value normalised to the logit:
    ``R_i = |c~_i| / sum_k |c~_k| * z_t``. Only the target unit (the nonzero entry of R) counts.
    """

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        require_feature_vectors(layer, x, type(self).__name__)
        if layer.layer_type != "linear" or x.dim() != 2:
            raise ValueError(f"RAP's first propagation needs a linear output layer, got {layer.path!r}")
        target = r.abs().argmax(dim=1)
        w = layer.weight[target]  # (B, in)
        b = layer.bias[target] if layer.bias is not None else torch.zeros_like(target, dtype=x.dtype)
        c = x * w
        positive = c.clamp(min=0).sum(1)
        negative = c.clamp(max=0).sum(1)
        total = positive + negative
        b_pos = safe_divide(b * positive, total)
        b_neg = safe_divide(b * negative, total)
        active = x > 0
        up = torch.where(active & (w > 0), c, torch.zeros_like(c))
        down = torch.where(active & (w < 0), c, torch.zeros_like(c))
        shares = safe_divide(up, up.sum(1, keepdim=True)) * b_pos[:, None] \
            + safe_divide(down, down.sum(1, keepdim=True)) * b_neg[:, None]
        tilde = (c + shares).abs()
        z_t = z.gather(1, target[:, None])
        return safe_divide(tilde, tilde.sum(1, keepdim=True)) * z_t


@dataclass(frozen=True)
class RAPHidden(AffineRule):
    """RAP for hidden linear and convolution layers (the official code's linear and convolution layers), then Psi.

    Linear: ``C_i = x+_i [sum_j w+_ij R_j / z+_j + sum_j |w-_ij| R_j / (z+_j + z-_j)]``.
    Convolution: ``C_i = x+_i [sum_j w+_ij R+_j / z+_j + sum_j |w-_ij| R-_j / z-_j
    + sum_j |w-_ij| R_j / (z+_j + z-_j)]``. Biases are ignored. ``one_by_one="abs"`` applies the
    AGF copy's rule to 1x1 convolutions: ``|x| |w|`` z-rule on the signed relevance, no Psi.
    """

    one_by_one: str = "rap"

    def __post_init__(self) -> None:
        check_rule_field(self, "one_by_one", choice("rap", "abs"))

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        require_feature_vectors(layer, x, type(self).__name__)
        if self.one_by_one == "abs" and layer.unit_kernel:
            w_abs = layer.cached("|w|", lambda: layer.weight.abs())
            xa = x.abs()
            za = shared_term("rap:|x||w|", x, z, lambda x, _: layer.apply(x.abs(), w_abs))
            assert isinstance(za, Tensor)
            return layer.transpose(safe_divide(r, za), w_abs, x).mul_(xa)
        xp = x if nonnegative else x.clamp(min=0)
        zp, zn, total = shared_term("rap:z+,z-", x, z, lambda x, z: _pre_activations(
            layer, x if nonnegative else x.clamp(min=0), z, nonnegative))
        # both parts' scaled relevance side by side, for one transposed map with [w+; |w-|]
        stacked = r.new_empty((r.shape[0], 2, *r.shape[1:]))
        to_positive, to_negative = stacked[:, 0], stacked[:, 1]
        if layer.layer_type == "linear":
            quotient_(r, total, out=to_negative)
            quotient_(r, zp, out=to_positive)
        else:
            relative = quotient_(r, total, out=torch.empty_like(total))
            quotient_(torch.clamp(r, min=0, out=to_positive), zp)
            quotient_(torch.clamp(r, max=0, out=to_negative), zn).add_(relative)
            del relative
        del total, zp, zn
        if layer.layer_type == "conv" and layer.groups != 1:  # stacking would mix the groups
            c = layer.transpose(to_positive, _positive(layer), xp)
            c.add_(layer.transpose(to_negative, _abs_negative(layer), xp))
        else:
            c = layer.transpose(stacked.flatten(1, 2), _stacked(layer), xp)
        del stacked, to_positive, to_negative
        c.mul_(xp)
        return shift_excess_(c, c.flatten(1).sum(1) - per_sample_sum(r))


__all__ = ["RAPHidden", "RAPOutput"]
