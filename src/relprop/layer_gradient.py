"""The gradient of the target logit at an inner layer: where methods that start from an inner
feature map (gradient hedging, RSP) take their initial relevance, and Grad-CAM's channel weights
there (Selvaraju et al. 2017 [Selvaraju2017-GradCAM], Eq. 1), for channels-first maps and for
token / channels-last maps alike."""

from __future__ import annotations

import torch

from . import ops
from .feature_maps import attention_tokens_in, holds_channels_last, token_grid
from .graph import Graph
from .propagate import ForwardCache, Propagator
from .targets import Target, one_hot, resolve_target

Tensor = torch.Tensor


def default_layer(graph: Graph) -> str:
    """The input of the last pooling node (VGG: the last ReLU before the final max pool; ResNet,
    Inception, DenseNet, EfficientNet, ConvNeXt, Swin: the input of global average pooling). A model
    without pooling but with attention (a vision transformer): the tokens entering the last attention
    block after its layer norm, the layer Grad-CAM uses there
    (:func:`relprop.feature_maps.last_attention_tokens`; pytorch-grad-cam's ``blocks[-1].norm1``)."""
    pooling = (ops.MaxPool, ops.AvgPool)
    pools = [n for n in graph.nodes if isinstance(n.op, pooling)]
    if not pools:
        tokens = attention_tokens_in(graph)
        if tokens is not None:
            return tokens
        raise ValueError("the default start layer is the input of the last pooling layer, or the tokens entering "
                         "the last attention block, and this model has neither: pass layer=<node name> "
                         "(see relprop.graph.describe)")
    node = graph.nodes[pools[-1].inputs[0]]
    while isinstance(node.op, pooling) and node.inputs:  # VGG: avgpool follows the last max pool
        node = graph.nodes[node.inputs[0]]
    return node.name


def gradient_at_layer(propagator: Propagator, cache: ForwardCache, layer: str | None,
                      target: Target) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(layer name, activation A, dz_t/dA)`` at ``layer`` (default: :func:`default_layer`), the
    gradient of each sample's target logit, from a forward pass kept in ``cache``."""
    start = layer if layer is not None else default_layer(propagator.graph)
    logits = cache.outputs[-1]
    indices = resolve_target(target, logits)
    activation, gradient = propagator.gradient_at(cache, start, one_hot(logits, indices))
    return start, activation, gradient


def channels_last(propagator: Propagator, cache: ForwardCache, layer: str) -> bool:
    """Whether the activation of ``layer`` holds its channels in the last dimension, decided by the
    layer, not by the shape alone: the output of a layer norm over the last dimension (a
    transformer's tokens (B, T, C); ConvNeXt's and Swin's (B, H, W, C) maps) or the input of a
    linear layer is channels-last. Otherwise Grad-CAM's reading (:func:`relprop.feature_maps.as_feature_map`)
    decides: a (B, T, C) sequence of tokens tiling a 4-d image is channels-last, anything else
    (B, C, *spatial). Reads the forward pass in ``cache`` (before any backward pass released it)."""
    graph = propagator.graph
    position = graph.find(layer)
    if holds_channels_last(graph, layer, cache.args[position], cache.kwargs[position]):
        return True
    value, x = cache.outputs[position], cache.outputs[0]
    if value is None or x is None:
        raise ValueError(f"the forward cache no longer holds {layer!r} or the input")
    return value.dim() != x.dim() and token_grid(value, x) is not None


def channel_weights(gradient: Tensor, channels_last: bool) -> Tensor:
    """Grad-CAM's channel weights ``alpha_k = mean over positions of dz_t/dA_k`` (Selvaraju et al.
    2017, Eq. 1; Nam et al. [Nam-Hedge] Eq. 4), shaped to broadcast against ``A``: the mean over
    dims ``2..`` of a channels-first map (B, C, *spatial), over dims ``1..-2`` of tokens (B, T, C) or a
    channels-last map (B, H, W, C). On tokens the positions are the tokens, as in the Grad-CAM of
    ViTs: pytorch-grad-cam averages over the tokens of ``blocks[-1].norm1`` per feature, Chefer et
    al. 2021 [Chefer2021-Transformer] (their Grad-CAM baseline) over the tokens of the last attention
    map per head. The class token counts as a position here: pytorch-grad-cam leaves it out only
    because it has no place on the patch grid, while the initial map keeps the whole layer. A
    (B, C) vector has no positions: ``alpha`` is the gradient itself."""
    positions = tuple(range(1, gradient.dim() - 1)) if channels_last else tuple(range(2, gradient.dim()))
    return gradient.mean(dim=positions, keepdim=True) if positions else gradient
