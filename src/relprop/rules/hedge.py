"""Gradient hedging rules (Nam et al. [Nam-Hedge], Eq. 6-13, Algorithm 1), as the official code computes them.

The official code is "Attribution Equilibrium" (github.com/wjNam/Attribution-Equilibrium, ``model.hedge``). For each layer,
with ``x+`` the input's positive part, ``|W|`` the absolute weights, the relevance at the output is
split into ``T = R+ / sum R+`` (sums to +1) and ``O = R- / |sum R-|`` (sums to -1), and

- ``C = x+ * |W|^T sd(gamma T + O, conv(x+, |W|))`` (sums to gamma - 1), shifted by ``Psi``, which
  subtracts ``sum T`` uniformly over its nonzero entries;
- ``A = [x > 0] * |W|^T sd(T, conv([x > 0], |W|))`` (sums to +1): the activated units;
- ``U = [x <= 0] * |W|^T sd(O, conv([x <= 0], |W|))`` (sums to -1): the dead units.

k x k layers return ``C_Psi + A + U`` (sum gamma - 2); 1 x 1 convolutions use ``T + O`` in ``C``
(no gamma) and no ``Psi`` (sum 0). Sums are taken per sample (the official code sums over the whole
batch, which is the same for a batch of one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import per_sample_sum, quotient_, shift_excess_
from ..ops import Affine, channels_last_suits
from ..options import check_rule_field, flag, number
from .base import AffineRule, shared_term

Tensor = torch.Tensor


def _channels_last(layer: Affine, x: Tensor) -> bool:
    """Whether this layer's five convolutions run channels-last (:func:`channels_last_suits`). The
    relevance handed on stays channels-last, so the next layer does not convert it back."""
    return layer.layer_type == "conv" and channels_last_suits(x)


def _normalized(part: Tensor, total: Tensor) -> Tensor:
    """``part / total`` in place for a per-sample ``total`` of ``part`` (``total`` may be negative);
    a zero total means ``part`` is zero, so the divisor is replaced by 1 there."""
    return part.div_(total.masked_fill(total == 0, 1))


def _ones_response(layer: Affine, x: Tensor, w: Tensor) -> Tensor:
    """``conv(1, |W|)`` for inputs shaped like ``x``: it depends only on the shape, so it is cached."""
    key = f"|w| ones:{tuple(x.shape[1:])}:{x.dtype}:{x.is_contiguous()}"
    return layer.cached(key, lambda: layer.apply(torch.ones_like(x[:1]), w))


@dataclass(frozen=True)
class Hedge(AffineRule):
    """One hedged layer; ``use_c``, ``use_a``, ``use_u``, ``use_psi`` switch the terms (Table 2)."""

    gamma: float = 2.0
    use_c: bool = True
    use_a: bool = True
    use_u: bool = True
    use_psi: bool = True

    def __post_init__(self) -> None:
        check_rule_field(self, "gamma", number(low=1, high=2))
        for name in ("use_c", "use_a", "use_u", "use_psi"):
            check_rule_field(self, name, flag())

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        one_by_one = layer.unit_kernel
        channels_last = _channels_last(layer, x)
        if channels_last:
            cl = torch.channels_last
            w = layer.cached("|w| channels-last", lambda: layer.weight.abs().contiguous(memory_format=cl))
        else:
            w = layer.cached("|w|", lambda: layer.weight.abs())

        def layout(t: Tensor) -> Tensor:
            return t.contiguous(memory_format=torch.channels_last) if channels_last else t

        def responses(x: Tensor, _: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """``conv(x+, |W|)``, ``conv([x > 0], |W|)``, ``conv([x <= 0], |W|)``: shared by all targets."""
            x = layout(x)
            z_c = layer.apply(x if nonnegative else x.clamp(min=0), w) if self.use_c else x.new_empty(0)
            z_active = (layer.apply(torch.gt(x, 0).to(x.dtype), w) if self.use_a or self.use_u
                        else x.new_empty(0))
            z_dead = torch.sub(_ones_response(layer, x, w), z_active) if self.use_u else x.new_empty(0)
            return z_c, z_active, z_dead
        shared = shared_term("hedge:|w| responses", x, z, responses)
        z_c, z_active, z_dead = shared  # type: ignore[misc]
        x, r = layout(x), layout(r)
        t = r.clamp(min=0)
        o = r.clamp(max=0)
        _normalized(t, per_sample_sum(t, keepdim=True))
        _normalized(o, per_sample_sum(o, keepdim=True).abs_())
        out = buffer = None
        if self.use_c:
            xp = x if nonnegative else x.clamp(min=0)
            # gamma T + O: T and O have disjoint supports, so this is exact in either order
            weighted = torch.add(o, t, alpha=1.0 if one_by_one else self.gamma)
            out = layer.transpose(quotient_(weighted, z_c), w, xp).mul_(xp)
            del weighted
            if self.use_psi and not one_by_one:
                buffer = torch.empty_like(x)
                out = shift_excess_(out, per_sample_sum(t), buffer)
        if self.use_a or self.use_u:
            if buffer is None:
                buffer = torch.empty_like(x)
            mask = torch.gt(x, 0, out=buffer)  # [x > 0] as numbers
            if self.use_a:
                a = layer.transpose(quotient_(t, z_active), w, x)
                out = a.mul_(mask) if out is None else out.addcmul_(a, mask)
                del a
            del t
            if self.use_u:
                u = layer.transpose(quotient_(o, z_dead), w, x)
                dead = torch.le(x, 0, out=mask)
                out = u.mul_(dead) if out is None else out.addcmul_(u, dead)
        return out if out is not None else torch.zeros_like(x)


__all__ = ["Hedge"]
