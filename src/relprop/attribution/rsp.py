"""Relative Sectional Propagation (official code wjNam/Relative_Sectional_Propagation).

Initial map (as the official code computes it, github.com/wjNam/Relative_Sectional_Propagation): ``R0 = A * mean_hw(dz_t/dA)`` at an inner layer (default: the
input of the last pooling node; VGG-16: ``features.29``; a vision transformer: the tokens entering
its last attention block after the layer norm, the mean taken over the tokens per feature, as
Grad-CAM's weights there), kept per channel and divided by
``max R0 + 1e-9`` per sample; then the RSP rule on every convolution down to the input, z^B at the
input (per-image bounds, no bias), batch norm as the identity, winner-take-all max pooling.
Residual networks (an extension: the official ResNet path does not run): sums are split in
proportion to each branch's value, and both branches are propagated. Transformers: attention
products, layer norms and constant terms of sums take RAP's rules (:data:`relprop.attribution.rap.TRANSFORMER_RULES`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..composite import Composite, by_type, first
from ..layer_gradient import channel_weights, channels_last, gradient_at_layer
from ..multi_target import expand_targets
from ..propagate import forward_for
from .registry import register_method
from ..options import choice, name, names
from ..rules import ZBox
from ..rules.rsp import RSPRule
from .rap import TRANSFORMER_RULES, residual_rule
from ..targets import Target
from .method import Attribution

Tensor = torch.Tensor


@register_method("rsp", multi_target=True, summary="Relative Sectional Propagation (official code): comparative-gradient propagation from a Grad-CAM map",
                 layer=name(), add=choice("auto", "proportional", "absolute"), record=names())
def rsp(model: nn.Module, x: Tensor, target: Target, *, layer=None, add="auto", record=()) -> Attribution:
    """RSP; ``layer``: where the initial Grad-CAM-weighted map lives (default: the input of the last
    pooling node; on a vision transformer the tokens entering the last attention block after its
    layer norm, weighted by the gradient's mean over the tokens per feature:
    :func:`relprop.layer_gradient.channel_weights`); ``add``: residual sums as in ``rap``
    (:func:`relprop.attribution.rap.residual_rule`)."""
    propagator, cache = forward_for(model, x, fold_batchnorm=False)
    cache, target = expand_targets(propagator, cache, target)
    start, activation, gradient = gradient_at_layer(propagator, cache, layer, target)
    r0 = activation * channel_weights(gradient, channels_last(propagator, cache, start))
    peak = r0.flatten(1).amax(1).view(-1, *([1] * (r0.dim() - 1)))
    r0 = r0 / (peak + 1e-9)
    composite = Composite([(first(1), ZBox(None, None, stabilizer=0.0, bias=False)),
                           (by_type("conv", "linear"), RSPRule()), *TRANSFORMER_RULES],
                          maxpool="winner", add=residual_rule(add, propagator.graph), batchnorm="identity",
                          norm_epsilon=0.0, name="rsp")
    return Attribution(*propagator.backward(cache, r0, composite, record, start=start))
