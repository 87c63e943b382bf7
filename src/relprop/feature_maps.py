"""Feature maps of a model for class-activation maps (Grad-CAM and its kin): which node to use by
default, and how a map is upsampled to the input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ops
from .propagate import Propagator

Tensor = torch.Tensor

#: the modes of :func:`upsample` (those of ``F.interpolate``)
INTERPOLATIONS = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")


def feature_map_candidates(propagator: Propagator) -> list[str]:
    """Candidate layers for Grad-CAM, best first: the inputs of the pooling nodes (last first), then
    the output of the last convolution's activation (or the last convolution)."""
    nodes = propagator.graph.nodes
    names: list[str] = []
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
        if value is not None and value.dim() == x.dim() and value.dim() >= 3:
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
