"""Gradient hedging ("Attribution Equilibrium", Nam et al. [Nam-Hedge]): gradient-weighted initial map at an inner
layer (Eq. 4-5) and hedged propagation down to the input (Eq. 6-13, Algorithm 1).
"""

from __future__ import annotations

import torch

import torch.nn as nn

from ..composite import Composite, by_type, first
from ..layer_gradient import channel_weights, channels_last, default_layer, gradient_at_layer
from ..multi_target import ClassTargets, expand_targets
from ..propagate import forward_for, propagator_for
from .registry import register_method
from ..options import choice, flag, name, names, number
from ..rules import ZBox
from ..rules.hedge import Hedge
from ..numerics import per_sample_sum, safe_divide
from ..targets import Target
from .method import Attribution

Tensor = torch.Tensor


def initial_contribution(activation: torch.Tensor, gradient: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``R0 = A * alpha`` with Grad-CAM's channel weights ``alpha = mean over positions of dz_t/dA``,
    divided by ``|sum R0|`` per sample (Eq. 4-5). ``channels_last``: ``A`` is tokens (B, T, C) or a
    (B, H, W, C) map, whose channels are the last dimension
    (:func:`relprop.layer_gradient.channel_weights`)."""
    r0 = activation * channel_weights(gradient, channels_last)
    return safe_divide(r0, per_sample_sum(r0, keepdim=True).abs())


@register_method("hedge", multi_target=True, summary="Gradient hedging (Nam et al. [Nam-Hedge], Eq. 4-13): gradient-weighted inner map, hedged propagation",
                 gamma=number(low=1, high=2), layer=name(), use_c=flag(), use_a=flag(), use_u=flag(),
                 use_psi=flag(), add=choice("absolute", "proportional", "equal"), record=names())
def hedge(model: nn.Module, x: Tensor, target: Target, *,
          gamma=2.0, layer=None, use_c=True, use_a=True, use_u=True, use_psi=True,
          add="absolute", record=()) -> Attribution:
    """Hedged relevance; ``gamma`` in [1, 2] (official default 2: the map of a CNN sums to
    gamma - 2 = 0; on a ViT whose patch embedding is the first layer the residual stream carries a
    share of the start map past the hedged branches, docs/methods.md),
    ``layer``: where the initial map lives (default: see :func:`default_layer`: the input of the last
    pooling node; on a vision transformer the tokens entering the last attention block, after its
    layer norm, with Grad-CAM's weights averaged over the tokens, :func:`initial_contribution`), ``use_*``: the
    terms of Table 2's ablation. Batch norm is the identity (official code). ``add``: how a
    residual sum ``a + b`` splits its relevance: ``"absolute"`` (default) in proportion to
    ``|a|`` and ``|b|``, conservative and bounded however closely ``a`` and ``b`` cancel;
    ``"proportional"`` in proportion to ``a / (a + b)`` without a stabiliser (unbounded where the
    signed branches nearly cancel), ``"equal"`` half each. Both branches are propagated; the
    official code drops the skip branch (docs/methods.md)."""
    if add not in ("absolute", "proportional", "equal"):
        raise ValueError(f"add must be 'absolute', 'proportional' or 'equal', got {add!r}")
    if not 1.0 <= gamma <= 2.0:
        raise ValueError(f"gamma must lie in [1, 2], got {gamma}")
    if layer is None:
        layer = default_layer(propagator_for(model, fold_batchnorm=False).graph)
    # the graph above the start layer is evaluated with autograd in the forward pass itself, unless
    # it is repeated for several targets per sample (then gradient_at evaluates it again per row)
    # channels-last on the CPU, where the hedge rule's convolutions run channels-last (rules/hedge.py):
    # the cached activations then need no conversion
    propagator, cache = forward_for(model, x, fold_batchnorm=False, channels_last=True,
                                    differentiable_from=None if isinstance(target, ClassTargets) else layer)
    cache, target = expand_targets(propagator, cache, target)
    start, activation, gradient = gradient_at_layer(propagator, cache, layer, target)
    r0 = initial_contribution(activation, gradient, channels_last(propagator, cache, start))
    rule = Hedge(gamma, use_c, use_a, use_u, use_psi)
    composite = Composite([(first(1), ZBox(None, None, stabilizer=0.0, bias=False)),
                           (by_type("conv", "linear"), rule)],
                          maxpool="winner", add=add, batchnorm="identity", norm_epsilon=0.0,
                          name="hedge")
    return Attribution(*propagator.backward(cache, r0, composite, record, start=start))
