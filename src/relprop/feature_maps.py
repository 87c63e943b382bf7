"""Feature maps of a model for class-activation maps (Grad-CAM and its kin): which node to use by
default, and how a map is upsampled to the input size.

A vision transformer's tokens ``(batch, tokens, features)`` are a feature map too: laid out on the
patch grid of the image (the class token, when there is one, first and left out; the patches in
row-major order), as pytorch-grad-cam's ``reshape_transform`` for ViTs does. Its default layer is the
input of the last attention block after its layer norm (pytorch-grad-cam's ``blocks[-1].norm1``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .graph import Graph
from .propagate import Propagator

Tensor = torch.Tensor

#: the modes of :func:`upsample` (those of ``F.interpolate``)
INTERPOLATIONS = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")


def token_grid(tokens: Tensor, x: Tensor) -> Tensor | None:
    """Tokens ``(B, N, D)`` as a feature map ``(B, D, rows, columns)`` on the patch grid of the image
    ``x`` (B, C, H, W): the first token left out when the other ``N - 1`` tile the image with square
    patches (a class token), else all ``N`` when they do; None when neither tiles it."""
    if tokens.dim() != 3 or x.dim() != 4:
        return None
    height, width = x.shape[-2:]
    for skip in (1, 0):
        count = tokens.shape[1] - skip
        if count < 1:
            continue
        patch = round(math.sqrt(height * width / count))
        if patch >= 1 and height % patch == 0 and width % patch == 0 and (height // patch) * (width // patch) == count:
            grid = tokens[:, skip:].transpose(1, 2)
            return grid.reshape(tokens.shape[0], tokens.shape[2], height // patch, width // patch)
    return None


def as_feature_map(value: Tensor, x: Tensor, channels_last: bool = False) -> Tensor | None:
    """``value`` as a feature map (B, C, *spatial) of the rank of ``x``: itself when it has that rank
    (moved from channels-last (B, *spatial, C) when ``channels_last``), a vision transformer's tokens
    on the patch grid (:func:`token_grid`), else None."""
    if value.dim() == x.dim() and value.dim() >= 3:
        return value.movedim(-1, 1) if channels_last else value
    return token_grid(value, x)


def spatial_features(value: Tensor, x: Tensor, name: str, what: str, channels_last: bool = False) -> Tensor:
    """:func:`as_feature_map`, or a ValueError naming the layer and its shape."""
    features = as_feature_map(value, x, channels_last)
    if features is None:
        raise ValueError(f"{what} needs a layer with spatial dimensions (a feature map of rank {x.dim()}, or a "
                         f"vision transformer's tokens that tile the image), but {name!r} outputs shape "
                         f"{tuple(value.shape)}")
    return features


def normalizes_last_dim(op: ops.LayerNorm, args: tuple | None = None, kwargs: dict | None = None) -> bool | None:
    """Whether the layer norm ``op`` normalises over the last dimension alone: from its module, from
    the forward pass's ``args`` when given, else from the traced call's literal ``normalized_shape``;
    None when none of them tells."""
    if op.module is not None:
        return len(op.module.normalized_shape) == 1
    if args is not None:
        shape, *_ = op.parameters(args, kwargs or {})
        return len(shape) == 1
    node = getattr(op, "fx_node", None)
    given = node.args[1] if node is not None and len(node.args) > 1 else (
        node.kwargs.get("normalized_shape") if node is not None else None)
    if isinstance(given, int):
        return True
    if isinstance(given, (tuple, list)) and all(isinstance(v, int) for v in given):
        return len(given) == 1
    return None


def feeds_linear(graph: Graph, position: int) -> bool:
    """Whether the node's value reaches a linear layer directly or through pass-through nodes (dropout)."""
    pending, seen = list(graph.nodes[position].users), set()
    while pending:
        user = pending.pop()
        if user in seen:
            continue
        seen.add(user)
        op = graph.nodes[user].op
        if isinstance(op, ops.Affine) and op.layer_type == "linear":
            return True
        if op.kind == "identity":
            pending.extend(graph.nodes[user].users)
    return False


def holds_channels_last(graph: Graph, name: str, args: tuple | None = None, kwargs: dict | None = None) -> bool:
    """Whether the layer ``name`` outputs its channels in the last dimension, read from the graph, not
    from the shape: the output of a layer norm over the last dimension (a transformer's tokens
    (B, T, C); Swin's and ConvNeXt's (B, H, W, C) maps) or the input of a linear layer. ``args``:
    the layer's arguments in the forward pass, for a layer norm whose shape was computed."""
    position = graph.find(name)
    op = graph.nodes[position].op
    if isinstance(op, ops.LayerNorm) and normalizes_last_dim(op, args, kwargs):
        return True
    return feeds_linear(graph, position)


def last_attention_tokens(propagator: Propagator) -> str | None:
    """The tokens entering the last attention block: the last layer norm before its attention
    probabilities (the factor of a product ``P V`` marked as attention); None without attention."""
    return attention_tokens_in(propagator.graph)


def attention_tokens_in(graph: Graph) -> str | None:
    """:func:`last_attention_tokens` of a traced graph."""
    nodes = graph.nodes
    last = max((i for i, n in enumerate(nodes) if n.op.kind == "matmul" and getattr(n.op, "attention", None)
                is not None), default=None)
    if last is None:
        return None
    return next((n.name for n in reversed(nodes[:last]) if n.op.kind == "layernorm"), None)


def feature_map_candidates(propagator: Propagator) -> list[str]:
    """Candidate layers for Grad-CAM, best first: the tokens entering the last attention block of a
    transformer (:func:`last_attention_tokens`), the inputs of the pooling nodes (last first), then
    the output of the last convolution's activation (or the last convolution)."""
    nodes = propagator.graph.nodes
    tokens = last_attention_tokens(propagator)
    names: list[str] = [tokens] if tokens is not None else []
    for node in reversed(nodes):
        op = node.op
        adaptive_max = isinstance(op, ops.MaxPool) and "daptive" in (
            type(op.module).__name__ if op.module is not None else getattr(op.fx_node.target, "__name__", ""))
        if (isinstance(op, ops.AvgPool) or adaptive_max) and node.inputs:
            name = nodes[node.inputs[0]].name
            if name not in names:
                names.append(name)
    convs = [i for i, n in enumerate(nodes) if isinstance(n.op, ops.Affine) and n.op.layer_type == "conv"]
    if convs:
        last = convs[-1]
        after = [n.name for n in nodes[last + 1:]
                 if isinstance(n.op, (ops.Activation, ops.FunctionalActivation))]
        for name in ([after[0]] if after else []) + [nodes[last].name]:
            if name not in names:
                names.append(name)
    return names


def pick_feature_map(kept: dict[str, Tensor], x: Tensor, propagator: Propagator) -> str:
    """The first candidate (in the order of :func:`feature_map_candidates`) that is a feature map."""
    for name in feature_map_candidates(propagator):
        value = kept.get(name)
        if value is not None and as_feature_map(value, x, holds_channels_last(propagator.graph, name)) is not None:
            return name
    raise ValueError(
        f"Grad-CAM found no feature map of rank {x.dim()} in {type(propagator.model_ref()).__name__} "
        "(no pooling over one and no convolution); name one with layer=...")


def interpolation_mode(interpolation: str, spatial: int) -> str:
    """The ``F.interpolate`` mode of ``interpolation`` for ``spatial`` dimensions (a ValueError for unknown ones)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    if interpolation in ("linear", "bilinear", "trilinear"):  # the linear mode of the input's rank
        return {1: "linear", 2: "bilinear", 3: "trilinear"}.get(spatial, interpolation)
    return interpolation


def upsample(cam: Tensor, size: tuple[int, ...], interpolation: str = "bilinear") -> Tensor:
    """Resize ``cam`` (B, 1, *spatial) to ``size`` (as Captum's ``LayerAttribution.interpolate``)."""
    if tuple(cam.shape[2:]) == tuple(size):
        return cam
    mode = interpolation_mode(interpolation, len(size))
    align = False if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
    return F.interpolate(cam, size=tuple(size), mode=mode, align_corners=align)
