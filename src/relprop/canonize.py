"""Reversible rewrites that keep the model's function: batch norm folding.

Folding happens in relprop's own graph, never in the user's model: an affine node followed only by
a batch norm computes ``BN(Wx + b)`` with the folded weight ``W * a`` and bias ``(b - mu) * a + beta``
(``a = gamma / sqrt(var + eps)``), and the batch norm node becomes the identity. The model's
parameters are read, never written, so the model is unchanged whatever happens.
"""

from __future__ import annotations

from .graph import Graph
from .ops import Affine, BatchNorm, Pad


def fold_batch_norms(graph: Graph) -> int:
    """Fold every batch norm whose only input is an affine node used by nothing else; returns the count."""
    folded = 0
    for node in graph.nodes:
        if not isinstance(node.op, BatchNorm) or len(node.inputs) != 1:
            continue
        producer = graph.nodes[node.inputs[0]]
        if not isinstance(producer.op, Affine) or producer.op.bn is not None or len(producer.users) != 1:
            continue
        bn = node.op.module
        if bn.running_mean is None or bn.running_var is None:
            continue  # batch statistics at eval time: not a fixed affine map, keep it unfolded
        producer.op.bn = bn
        producer.op.forget_cache()
        node.op.fold()
        folded += 1
    return folded


def fold_zero_padding(graph: Graph) -> int:
    """Move a constant-zero padding that only feeds a convolution into that convolution.

    The convolution then pads internally, like its built-in padding, so rules that look at the
    layer's input (the z^B bounds, the flat rule's counts) see the real input only and padded
    positions never hold relevance. Returns the number of paddings folded.
    """
    folded = 0
    for node in graph.nodes:
        if not isinstance(node.op, Pad) or len(node.inputs) != 1 or len(node.users) != 1:
            continue
        consumer = graph.nodes[node.users[0]]
        pad = node.op.zero_padding()
        if pad is None or not isinstance(consumer.op, Affine) or consumer.op.layer_type != "conv":
            continue
        if consumer.op.pre_pad is not None or len(pad) != 2 * consumer.op.nd:
            continue
        consumer.op.pre_pad = pad
        node.op.fold()
        folded += 1
    return folded
