"""Signed inputs for rules defined on non-negative ones (RAP, RSP).

RAP (Nam et al. 2020 [Nam2020-RAP], Eq. 5-10) and RSP split each unit's input contributions
``x_i w_ij`` by the sign of the weight, which is their sign only where ``x >= 0``: after a ReLU, as
in the networks they were made for. After a layer norm, a GELU or a linear bottleneck, inputs are
signed. Writing ``x = x+ - x-`` (both non-negative) makes any affine layer one with a non-negative
input of twice the width:

    ``W x + b = [W, -W] [x+; x-] + b``,

so the rule runs unchanged on ``[x+; x-]`` with weights ``[W, -W]``, and the relevance of ``x_i`` is
the sum of what ``x+_i`` and ``x-_i`` receive. A contribution's sign is then the sign of
``x_i w_ij`` itself, as the papers' definitions of positive and negative contributions
(Nam et al. 2020 [Nam2020-RAP], Eq. 1-2) read for any input. Where ``x >= 0`` the second half is
zero and receives nothing, so the result equals the rule's on ``x`` itself.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..ops import Affine

Tensor = torch.Tensor

#: a rule's ``__call__(layer, x, z, r, nonnegative)``
AffineCall = Callable[[Affine, Tensor, Tensor, Tensor, bool], Tensor]


class SignSplitLayer(Affine):
    """``layer`` on the doubled input ``[x+; x-]`` with weights ``[W, -W]`` and the same bias.

    For a convolution the halves are doubled within each group, so grouped and depthwise
    convolutions keep their groups. Derived tensors are cached on ``layer`` (under their own keys),
    so they are recomputed when its parameters change."""

    def __init__(self, layer: Affine) -> None:  # noqa: D107 - the attributes of ``layer``, shared
        self.__dict__.update(layer.__dict__)
        self.base = layer

    def cached(self, key: str, make: Callable[[], Tensor]) -> Tensor:
        return self.base.cached("[W,-W]:" + key, make)

    def forget_cache(self) -> None:
        self.base.forget_cache()

    def _fold_weight(self) -> Tensor:
        w = self.base.weight
        return torch.cat([w, -w], dim=1)

    def _fold_bias(self) -> Tensor:
        bias = self.base.bias
        assert bias is not None
        return bias

    @property
    def _channel_dim(self) -> int:
        return -1 if self.layer_type == "linear" else 1

    def split(self, x: Tensor) -> Tensor:
        """``[x+; x-]`` (per group for a convolution), the input of the doubled layer."""
        positive, negative = x.clamp(min=0), x.clamp(max=0).neg_()
        if self.layer_type == "linear":
            return torch.cat([positive, negative], dim=-1)
        groups = self.groups
        grouped = (x.shape[0], groups, x.shape[1] // groups, *x.shape[2:])
        doubled = torch.cat([positive.reshape(grouped), negative.reshape(grouped)], dim=2)
        return doubled.reshape(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    def merge(self, r: Tensor) -> Tensor:
        """The relevance of ``x`` from that of ``[x+; x-]``: the two halves summed."""
        if self.layer_type == "linear":
            half = r.shape[-1] // 2
            return r[..., :half] + r[..., half:]
        groups = self.groups
        width = r.shape[1] // (2 * groups)
        return r.reshape(r.shape[0], groups, 2, width, *r.shape[2:]).sum(2).reshape(
            r.shape[0], groups * width, *r.shape[2:])


def on_nonnegative_input(rule: AffineCall, layer: Affine, x: Tensor, z: Tensor, r: Tensor,
                         nonnegative: bool) -> Tensor:
    """``rule`` on ``x`` itself when it is non-negative (known from the graph or found so), else on the
    doubled layer :class:`SignSplitLayer` with its relevance merged back; ``rule`` always sees
    ``nonnegative=True``."""
    if nonnegative or not bool((x < 0).any()):
        return rule(layer, x, z, r, True)
    doubled = SignSplitLayer(layer)
    return doubled.merge(rule(doubled, doubled.split(x), z, r, True))


__all__ = ["SignSplitLayer", "on_nonnegative_input"]
