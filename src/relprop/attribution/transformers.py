"""LRP for transformers: conservative propagation (CP-LRP, Ali et al. 2022 [Ali2022-CPLRP]) and
AttnLRP (Achtibat et al. 2024 [Achtibat2024-AttnLRP]).

Both methods share the layer-norm rule (scale treated as a constant, AttnLRP Prop. 3.4 and CP-LRP's
LN-rule, which coincide), pass relevance through element-wise activations (AttnLRP Eq. 9) and
split residual sums in proportion to their terms. They differ inside attention: CP-LRP treats the
attention probabilities as constants (the AH-rule: all relevance to the values, none to queries and
keys), AttnLRP propagates through the softmax (Prop. 3.1) and splits both matrix products uniformly
(Prop. 3.3).

Defaults: LRP-epsilon with ``epsilon = 1e-6`` (a stabiliser only, i.e. LRP-0 as in the CP-LRP
paper's SST runs and as lxt computes with no zennit composite) on the convolution and linear
layers, and the same ``epsilon`` as the stabiliser of every other ratio (layer norms, products,
sums). ``gamma > 0`` puts LRP-gamma (stabiliser ``epsilon``) on the convolution and linear layers
outside attention, as lxt's ViT example does with zennit's ``Gamma``; its code sweeps gamma and
names no single value, so the default stays 0. The projections inside attention
(:class:`relprop.attention.AttentionProjection`) keep LRP-epsilon, as in lxt, where zennit rules
never reach them.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..attention import AttentionProjection
from ..composite import Composite, by_type
from ..options import names, number
from ..propagate import forward_for
from ..rules import (Epsilon, Gamma, LayerNormEpsilon, MatMulUniform, MatMulValue, Rule, SoftmaxConstant,
                     SoftmaxTaylor)
from ..targets import Target, resolve_selection
from .method import Attribution
from .registry import register_method

Tensor = torch.Tensor

#: the options both methods share
OPTIONS = {"epsilon": number(low=0), "gamma": number(low=0), "record": names()}


def transformer_composite(variant: str, epsilon: float = 1e-6, gamma: float = 0.0) -> Composite:
    """The rule map of ``variant`` ``"cp-lrp"`` or ``"attnlrp"`` (see the module docstring)."""
    if variant not in ("cp-lrp", "attnlrp"):
        raise ValueError(f"variant must be 'cp-lrp' or 'attnlrp', got {variant!r}")
    layers: Rule = Gamma(gamma, stabilizer=epsilon) if gamma > 0 else Epsilon(epsilon)
    conservative = variant == "cp-lrp"
    rules: list = [
        (by_type(AttentionProjection), Epsilon(epsilon)),
        (by_type("conv", "linear"), layers),
        (by_type("layernorm"), LayerNormEpsilon(epsilon)),
        (by_type("softmax"), SoftmaxConstant() if conservative else SoftmaxTaylor()),
        (by_type("matmul"), MatMulValue(epsilon) if conservative else MatMulUniform(epsilon)),
    ]
    return Composite(rules, norm_epsilon=epsilon, name=variant)


def _propagate(model: nn.Module, x: Tensor, target: Target, composite: Composite,
               record: Sequence[str]) -> Attribution:
    propagator, cache = forward_for(model, x)
    logits = cache.outputs[-1]
    initial = resolve_selection(target, logits).initial_relevance(logits)
    return Attribution(*propagator.backward(cache, initial, composite, record))


@register_method("cp-lrp", "Conservative propagation for transformers (Ali et al. 2022 [Ali2022-CPLRP]): "
                 "attention probabilities and layer-norm scale constant, LRP-epsilon (epsilon=1e-6) or gamma on layers",
                 **OPTIONS)
def cp_lrp(model: nn.Module, x: Tensor, target: Target, *, epsilon=1e-6, gamma=0.0, record=()) -> Attribution:
    return _propagate(model, x, target, transformer_composite("cp-lrp", epsilon, gamma), record)


@register_method("attnlrp", "AttnLRP (Achtibat et al. 2024 [Achtibat2024-AttnLRP]): softmax Taylor rule (Prop. 3.1), "
                 "uniform matmul rule (Prop. 3.3), layer-norm scale constant (Prop. 3.4)", **OPTIONS)
def attnlrp(model: nn.Module, x: Tensor, target: Target, *, epsilon=1e-6, gamma=0.0, record=()) -> Attribution:
    return _propagate(model, x, target, transformer_composite("attnlrp", epsilon, gamma), record)
