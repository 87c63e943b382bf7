"""Gradient hedging rules (paper 002, Eq. 6-13, Algorithm 1), as the official code computes them.

The official code is "Attribution Equilibrium" (official_methods.md section 3). For each layer,
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

from ..ops import Affine, safe_divide
from .rap import uniform_shift

Tensor = torch.Tensor


def _per_sample(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1).view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Hedge:
    """One hedged layer; ``use_c``, ``use_a``, ``use_u``, ``use_psi`` switch the terms (Table 2)."""

    gamma: float = 2.0
    use_c: bool = True
    use_a: bool = True
    use_u: bool = True
    use_psi: bool = True

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        w = layer.cached("|w|", lambda: layer.weight.abs())
        positive = r.clamp(min=0)
        negative = r.clamp(max=0)
        t = safe_divide(positive, _per_sample(positive))
        o = safe_divide(negative, _per_sample(negative).abs())
        one_by_one = layer.kind == "conv" and all(k == 1 for k in layer.module.kernel_size)
        out = torch.zeros_like(x)
        if self.use_c:
            xp = x if nonnegative else x.clamp(min=0)
            weighted = t + o if one_by_one else self.gamma * t + o
            c = layer.transpose(safe_divide(weighted, layer.apply(xp, w)), w, xp).mul_(xp)
            if self.use_psi and not one_by_one:
                c = uniform_shift(c, _per_sample(c).flatten() - _per_sample(t).flatten())
            out.add_(c)
        if self.use_a or self.use_u:
            active = (x > 0).to(x.dtype)
            z_active = layer.apply(active, w)
            if self.use_a:
                out.add_(layer.transpose(safe_divide(t, z_active), w, x).mul_(active))
            if self.use_u:
                dead = 1.0 - active
                z_all = layer.apply(torch.ones_like(x[:1]), w)
                out.add_(layer.transpose(safe_divide(o, z_all - z_active), w, x).mul_(dead))
        return out


__all__ = ["Hedge"]
