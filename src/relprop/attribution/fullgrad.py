"""FullGrad (Srinivas & Fleuret, *Full-Gradient Representation for Neural Network Visualization*,
NeurIPS 2019): input-gradient x input plus the bias-gradients of every layer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .registry import register_method
from ..targets import Target, resolve_target
from ..traced_gradient import checked_propagator, gradient_or_zeros, target_score
from .method import Attribution

Tensor = torch.Tensor
#: the stabiliser of the per-map normalisation (the authors' ``_postProcess``)
POSTPROCESS_EPS = 1e-6


def _bias_nodes(propagator) -> dict[str, Tensor]:
    """``{node name: effective bias}`` of every affine layer with a bias (batch norms folded into it
    included) and every batch norm that could not be folded (``beta - mean * gamma / std``)."""
    biases: dict[str, Tensor] = {}
    for node in propagator.graph.nodes:
        op = node.op
        if isinstance(op, ops.Affine) and op.bias is not None:
            biases[node.name] = op.bias
        elif isinstance(op, ops.BatchNorm) and not op.folded:
            bn = op.module
            if bn.running_mean is None or bn.running_var is None:
                continue  # batch statistics: no fixed bias
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = bn.bias if bn.bias is not None else torch.zeros_like(scale)
            biases[node.name] = (shift - bn.running_mean * scale).detach()
    return biases


def fullgrad_parts(model, x: Tensor, target: Target) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """The full-gradient decomposition of the target logit (the paper's completeness property): the input part
    ``x * df/dx``, ``{node name: b * df/dz}`` for every layer output ``z`` with a bias ``b`` (shaped
    like ``z``, the bias broadcast over positions), and the resolved targets. On networks of
    piecewise-linear activations, max/average pools and linear layers the parts sum to ``f(x)``."""
    propagator = checked_propagator(model, x)
    biases = _bias_nodes(propagator)
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, kept = propagator.forward_differentiable(leaf, keep=list(biases))
        indices = resolve_target(target, logits.detach())
        score = target_score(logits, indices)
        names = [name for name in biases if name in kept]
        wrt = [leaf] + [kept[name] for name in names]
        if score.requires_grad:
            grads = torch.autograd.grad(score, wrt, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
        else:
            grads = [gradient_or_zeros(score, t) for t in wrt]
    parts: dict[str, Tensor] = {}
    for name, grad in zip(names, grads[1:]):
        bias = biases[name].to(grad.dtype)
        if grad.dim() < 2 or grad.shape[1] != bias.numel():
            raise ValueError(f"fullgrad needs channels in dimension 1 at every layer with a bias; {name!r} "
                             f"outputs {tuple(grad.shape)} for {bias.numel()} bias values (channels last, or a transformer's "
                             "tokens?): FullGrad is defined for convolutional feature maps")
        parts[name] = grad * bias.view(1, -1, *([1] * (grad.dim() - 2)))
    return x.detach() * grads[0], parts, indices


def postprocess(t: Tensor, eps: float = POSTPROCESS_EPS) -> Tensor:
    """The authors' ``_postProcess``: ``abs``, minus each sample's minimum, divided by its maximum
    (plus ``eps``), jointly over channels and positions."""
    t = t.abs()
    shape = (-1, *([1] * (t.dim() - 1)))
    t = t - t.flatten(1).amin(dim=1).view(shape)
    return t / (t.flatten(1).amax(dim=1).view(shape) + eps)


def _resize(t: Tensor, size: tuple[int, ...]) -> Tensor:
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(t, size=size, mode=mode, align_corners=True)


@register_method("fullgrad",
                 "FullGrad (Srinivas & Fleuret 2019 [Srinivas2019-FullGrad]): input-gradient x input plus normalised bias-gradient maps of every layer",
                 display="positive")
def fullgrad(model: nn.Module, x: Tensor, target: Target) -> Attribution:
    """FullGrad (Srinivas & Fleuret, NeurIPS 2019 [Srinivas2019-FullGrad]), its FullGrad saliency:
    ``S = sum_c psi(x * df/dx) + sum_l sum_c up(psi(b_l * df/dz_l))`` over the layers ``l`` whose output
    ``z_l`` is a feature map of the input's rank, ``psi`` = abs, minus the sample's minimum, divided by
    its maximum (+1e-6), ``up`` = (bi/tri)linear resizing with ``align_corners=True`` (the authors'
    code). Biases of dense layers belong to the decomposition (:func:`fullgrad_parts`) but not to the
    map, as in the authors' code. Batch norms are folded into the preceding convolution, whose
    effective bias ``(b - mean) gamma / std + beta`` gives one map; the authors' code makes separate
    maps of the convolution's bias and the batch norm's ``beta - mean gamma / std`` (the same where
    convolutions have no bias, as in ResNets). The result is shaped like ``x``: every channel holds
    ``S / C``.
    """
    if x.dim() < 3:
        raise ValueError(f"FullGrad needs inputs with spatial dimensions, got shape {tuple(x.shape)}")
    input_part, parts, _ = fullgrad_parts(model, x, target)
    size = tuple(x.shape[2:])
    saliency = postprocess(input_part).sum(dim=1, keepdim=True)
    for part in parts.values():
        if part.dim() == x.dim():
            saliency = saliency + _resize(postprocess(part), size).sum(dim=1, keepdim=True)
    return Attribution((saliency / x.shape[1]).expand_as(x).clone())
