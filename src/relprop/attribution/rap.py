"""Relative Attributing Propagation, conference version (Nam et al. 2020 [Nam2020-RAP]; official code behaviour).

Rules (``relprop.rules.rap``): the first propagation at the output layer, the hidden linear and
convolution rules with the uniform shift, z^B at the input with per-image bounds and no bias, batch
norm as the identity (the official code's net effect; relprop therefore keeps batch norms unfolded),
winner-take-all max pooling, and proportional average pooling and residual sums without epsilon.
Transformers: signed and token inputs of linear layers as in ``relprop.rules.rap``; attention
products by RAP's linear rule on the value mix, layer norms unchanged, constant terms of sums
(positional embeddings) ignored like biases (:data:`TRANSFORMER_RULES`, :class:`~relprop.rules.rap.RAPSum`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..composite import Composite, by_type, first, last
from ..multi_target import expand_targets
from ..propagate import forward_for
from .registry import register_method
from ..options import choice, names
from ..rules import ZBox
from ..rules import Unchanged
from ..rules.rap import RAPHidden, RAPOutput, RAPSum, RAPValueMix, has_layer_norms
from ..targets import Target, resolve_selection
from .method import Attribution

Tensor = torch.Tensor


#: RAP's rules for what transformers add to a network: attention products as RAP's linear rule on
#: the value mix (attention constant), layer norms passing relevance unchanged (their scale constant,
#: their shift ignored like RAP's biases; a ratio to the layer norm's output, as in CP-LRP's rule,
#: would divide the uniform shift's relevance by values near 0)
TRANSFORMER_RULES: list = [(by_type("matmul"), RAPValueMix()), (by_type("layernorm"), Unchanged())]


def residual_rule(add: str, graph) -> RAPSum:
    """RAP's and RSP's rule for sums: ``add="auto"`` splits by signed value (the official code) on
    networks without layer norms and by magnitude on those with them (transformers, ConvNeXt), whose
    residual streams hold terms that nearly cancel: there the signed split multiplies the magnitude
    of the relevance (by 5,000 over the 12 blocks of a random ViT-B/16 under ``rsp``) while its sum
    stays put."""
    if add not in ("auto", "proportional", "absolute"):
        raise ValueError(f"add must be 'auto', 'proportional' or 'absolute', got {add!r}")
    return RAPSum(absolute=add == "absolute" or (add == "auto" and has_layer_norms(graph)))


def rap_composite(start: str = "one-hot", one_by_one: str = "rap", add: RAPSum | None = None) -> Composite:
    """The RAP rule map; ``start="logit"`` uses the hidden rule at the output layer too (AGF copy);
    ``add``: the rule for sums (default: the official signed split, :func:`residual_rule`)."""
    if start not in ("one-hot", "logit"):
        raise ValueError(f"start must be 'one-hot' or 'logit', got {start!r}")
    if one_by_one not in ("rap", "abs"):
        raise ValueError(f"one_by_one must be 'rap' or 'abs', got {one_by_one!r}")
    hidden = RAPHidden(one_by_one)
    rules: list = [(first(1), ZBox(None, None, stabilizer=0.0, bias=False))]
    rules.append((last(1), RAPOutput() if start == "one-hot" else hidden))
    rules.append((by_type("conv", "linear"), hidden))
    rules += TRANSFORMER_RULES
    return Composite(rules, maxpool="winner", add=add if add is not None else RAPSum(), batchnorm="identity",
                     norm_epsilon=0.0, name="rap")


@register_method("rap", multi_target=True, summary="Relative Attributing Propagation (Nam et al. 2020 [Nam2020-RAP], Eq. 5-10), as the official code computes it",
                 start=choice("one-hot", "logit"), one_by_one=choice("rap", "abs"),
                 add=choice("auto", "proportional", "absolute"), record=names())
def rap(model: nn.Module, x: Tensor, target: Target, *, start="one-hot", one_by_one="rap", add="auto",
        record=()) -> Attribution:
    """RAP. ``start="one-hot"`` (default, official): relevance 1 at the target and the absolute-
    influence normalisation at the output layer (Eq. 5-6); ``"logit"``: one-hot times logit with the
    hidden rule at the output (the AGF copy). ``one_by_one="abs"``: the AGF copy's 1x1 rule.
    ``add``: residual sums split by signed value (``"proportional"``, the official code) or by magnitude
    (``"absolute"``); ``"auto"`` (default) takes the first on networks without layer norms, the second
    on transformers (:func:`residual_rule`). The input relevance sums to the target logit."""
    propagator, cache = forward_for(model, x, fold_batchnorm=False)
    composite = rap_composite(start, one_by_one, residual_rule(add, propagator.graph))
    cache, target = expand_targets(propagator, cache, target)
    logits = cache.outputs[-1]
    selection = resolve_selection(target, logits)
    if selection.fn is not None and start == "one-hot":
        raise ValueError("method 'rap' with start='one-hot' starts from relevance 1 at a class or region; "
                         "a callable target needs start='logit'")
    if start == "one-hot":  # 1 at the target class (inside the region for a Region target)
        initial = selection.gradient(logits).clone()
    else:
        initial = selection.initial_relevance(logits)
    return Attribution(*propagator.backward(cache, initial, composite, record))
