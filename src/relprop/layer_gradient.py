"""The gradient of the target logit at an inner layer: where methods that start from an inner
feature map (gradient hedging, RSP) take their initial relevance."""

from __future__ import annotations

import torch

from . import ops
from .graph import Graph
from .propagate import ForwardCache, Propagator
from .targets import Target, one_hot, resolve_target


def default_layer(graph: Graph) -> str:
    """The input of the last pooling node (VGG: the last ReLU before the final max pool; ResNet,
    Inception, DenseNet, EfficientNet: the input of global average pooling)."""
    pooling = (ops.MaxPool, ops.AvgPool)
    pools = [n for n in graph.nodes if isinstance(n.op, pooling)]
    if not pools:
        raise ValueError("the default start layer is the input of the last pooling layer, and this model has "
                         "none: pass layer=<node name> (see relprop.graph.describe)")
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
