"""FullGrad (Srinivas & Fleuret, *Full-Gradient Representation for Neural Network Visualization*,
NeurIPS 2019): input-gradient x input plus the bias-gradients of every layer.

A bias is a constant added to a layer's output (Sec. 3): the biases of convolutions and linear
layers (on ``(B, C)``, a transformer's tokens ``(B, T, C)`` or channels-last maps ``(B, H, W, C)``),
batch norms' and layer norms' shifts, the constant term of a sum (a positional embedding) and the
constant entries of a concatenation (a class token). Token parts enter the map on the patch grid
(:func:`relprop.feature_maps.token_grid`), channels-last maps permuted to channels-first."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .registry import register_method
from ..feature_maps import token_grid
from ..propagate import Propagator
from ..targets import Target, resolve_target
from ..traced_gradient import checked_propagator, gradient_or_zeros, target_score
from .method import Attribution

Tensor = torch.Tensor
#: the stabiliser of the per-map normalisation (the authors' ``_postProcess``)
POSTPROCESS_EPS = 1e-6


#: where a bias part's channels are: dimension 1 (a convolution's or batch norm's bias), the last
#: dimension (a linear layer's or layer norm's: tokens (B, T, C), channels-last maps (B, H, W, C)),
#: or neither (a constant on attention logits, the constant entries of a concatenation): such parts
#: belong to the decomposition only
CHANNELS_FIRST, CHANNELS_LAST, NO_MAP = "channels-first", "channels-last", "none"


@dataclass(frozen=True)
class BiasTerm:
    """A constant added to a layer's output ``z`` (Srinivas & Fleuret 2019, Sec. 3: a bias of the
    full-gradient decomposition): ``value`` broadcasts against ``z``; ``layout`` says where its
    channels are (:data:`CHANNELS_FIRST`, :data:`CHANNELS_LAST` or :data:`NO_MAP`)."""

    value: Tensor
    layout: str


def _batch_norm_bias(op: ops.BatchNorm) -> Tensor | None:
    """``beta - mean * gamma / std`` of a batch norm that was not folded; None with batch statistics."""
    bn = op.module
    if bn.running_mean is None or bn.running_var is None:
        return None  # batch statistics: no fixed bias
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = bn.bias if bn.bias is not None else torch.zeros_like(scale)
    return (shift - bn.running_mean * scale).detach()


def _per_channel(name: str, bias: Tensor, z: Tensor, channels_last: bool) -> BiasTerm:
    """A per-channel bias broadcast along dimension 1 or the last one of ``z``; a ValueError naming
    the layer when ``z`` has no such dimension of the bias's size."""
    bias = bias.detach().to(z.dtype)
    dim = z.dim() - 1 if channels_last else 1
    if z.dim() < 2 or z.shape[dim] != bias.numel():
        where = "last" if channels_last else "1"
        raise ValueError(f"fullgrad: layer {name!r} outputs {tuple(z.shape)} for {bias.numel()} bias values; "
                         f"it needs them along dimension {where}")
    if channels_last:
        return BiasTerm(bias.reshape(-1), CHANNELS_LAST)
    return BiasTerm(bias.view(1, -1, *([1] * (z.dim() - 2))), CHANNELS_FIRST)


def _constant_layout(constant: Tensor, z: Tensor) -> str:
    """Where the channels of a constant added to ``z`` are, from the dimensions it varies along (it
    is broadcast over the others): only the last, or tokens and channels of a token sequence
    ``(B, T, C)`` (a positional embedding): channels last; only dimension 1: channels first; else
    :data:`NO_MAP` (a scalar, a relative position bias on attention logits)."""
    shape = (1,) * (z.dim() - constant.dim()) + tuple(constant.shape)
    varying = [d for d, n in enumerate(shape) if n > 1]
    if varying == [z.dim() - 1] or (z.dim() == 3 and varying == [1, 2]):
        return CHANNELS_LAST
    return CHANNELS_FIRST if varying == [1] else NO_MAP


def _added_constant(op: ops.Add, args: tuple, kwargs: dict) -> Tensor | None:
    """The constant term of ``a + c``, ``a - c`` or ``c - a`` (a positional embedding, a relative
    position bias), with its sign; None for a sum of tensors only or a scaled term (``alpha=``)."""
    node = op.fx_node
    if "alpha" in node.kwargs:
        return None
    tensors = set(op.tensor_arg_nodes)
    subtract = node.target in ("sub", "sub_") or getattr(node.target, "__name__", "") in ("sub", "isub")
    given = list(node.args[:2]) + ([node.kwargs["other"]] if "other" in node.kwargs else [])
    values = list(args[:2]) + ([kwargs["other"]] if "other" in kwargs else [])
    constant: Tensor | None = None
    for k, (arg, value) in enumerate(zip(given, values)):
        if isinstance(arg, fx.Node) and arg in tensors:
            continue
        if not isinstance(value, (Tensor, int, float)):
            return None
        term = torch.as_tensor(value).detach()
        term = -term if subtract and k == 1 else term
        constant = term if constant is None else constant + term
    return constant


def _concat_constant(op: ops.Concat, args: tuple, kwargs: dict, z: Tensor) -> Tensor | None:
    """The concatenation's constant entries (a class token) in place, zeros at its tensor entries;
    None without constant entries."""
    if all(op.entries):
        return None
    sequence = op.sequence(args, kwargs)
    pieces = [torch.zeros_like(v) if tensor else v.detach() for v, tensor in zip(sequence, op.entries)]
    return torch.cat(pieces, dim=op.dim(args, kwargs)).to(z.dtype)


def bias_term(name: str, op: ops.Op, args: tuple, kwargs: dict, z: Tensor) -> BiasTerm | None:
    """The bias that node ``name`` adds to its output ``z``, None if it adds none: an affine layer's
    (batch norms folded into it included; along dimension 1 for a convolution, the last for a linear
    layer), an unfolded batch norm's ``beta - mean gamma / std``, a layer norm's ``beta`` (its affine
    part is a per-channel scale and a shift: the shift is a bias), the constant term of a sum (a
    positional embedding) and the constant entries of a concatenation (a class token)."""
    if isinstance(op, ops.Affine):
        return None if op.bias is None else _per_channel(name, op.bias, z, op.layer_type == "linear")
    if isinstance(op, ops.BatchNorm) and not op.folded:
        bias = _batch_norm_bias(op)
        return None if bias is None else _per_channel(name, bias, z, False)
    if isinstance(op, ops.LayerNorm):
        shape, _, beta, _ = op.parameters(args, kwargs)
        if beta is None:
            return None
        if len(shape) == 1:
            return _per_channel(name, beta, z, True)
        return BiasTerm(beta.detach().to(z.dtype), NO_MAP)
    if isinstance(op, ops.Add):
        constant = _added_constant(op, args, kwargs)
        if constant is None:
            return None
        constant = constant.to(device=z.device, dtype=z.dtype)
        return BiasTerm(constant, _constant_layout(constant, z))
    if isinstance(op, ops.Concat):
        constant = _concat_constant(op, args, kwargs, z)
        return None if constant is None else BiasTerm(constant, NO_MAP)
    return None


def _forward_with_biases(propagator: Propagator, leaf: Tensor) -> tuple[Tensor, dict[str, tuple[Tensor, BiasTerm]]]:
    """The differentiable forward pass (as :meth:`Propagator.forward_differentiable`), and
    ``{node name: (output z, its bias)}`` for every node that adds a bias, in execution order."""
    nodes = propagator.graph.nodes
    found: dict[str, tuple[Tensor, BiasTerm]] = {}

    def evaluate(pos: int, op: ops.Op, args: tuple, kwargs: dict) -> Tensor:
        out = op.forward(args, kwargs)
        term = bias_term(nodes[pos].name, op, args, kwargs, out)
        if term is not None:
            found[nodes[pos].name] = (out, term)
        return out

    return propagator._walk(leaf, evaluate), found


def _decomposition(model: nn.Module, x: Tensor, target: Target) -> tuple[Tensor, dict[str, tuple[Tensor, str]], Tensor]:
    """:func:`fullgrad_parts` with each bias part's layout: ``{name: (part, layout)}``."""
    propagator = checked_propagator(model, x)
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, found = _forward_with_biases(propagator, leaf)
        indices = resolve_target(target, logits.detach())
        score = target_score(logits, indices)
        names = list(found)
        wrt = [leaf] + [found[name][0] for name in names]
        if score.requires_grad:
            grads = torch.autograd.grad(score, wrt, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
        else:
            grads = [gradient_or_zeros(score, t) for t in wrt]
    parts = {name: (grad * found[name][1].value, found[name][1].layout) for name, grad in zip(names, grads[1:])}
    return x.detach() * grads[0], parts, indices


def fullgrad_parts(model: nn.Module, x: Tensor, target: Target) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """The full-gradient decomposition of the target logit (Srinivas & Fleuret 2019, Sec. 3, the
    completeness property): the input part ``x * df/dx``, ``{node name: b * df/dz}`` for every layer
    output ``z`` to which a constant ``b`` is added (shaped like ``z``, ``b`` broadcast over the
    positions; :func:`bias_term` lists them), and the resolved targets.

    On networks of piecewise-linear activations, max/average pools, linear layers (on feature maps,
    token sequences or channels-last maps) and sums, ``f`` is positively homogeneous of degree 1 in
    the input and all biases together, and the parts sum to ``f(x)``. Layer norms, softmax and
    smooth activations (GELU) break that: on the shipped ``shapes_vit`` (64 ``shapes`` test scenes,
    float64, the top class) the parts miss the logit by a median 113 % of ``|f|`` (docs/methods.md)."""
    input_part, parts, indices = _decomposition(model, x, target)
    return input_part, {name: part for name, (part, _) in parts.items()}, indices


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


def _grid_map(part: Tensor, x: Tensor) -> Tensor | None:
    """A channels-last part ``(B, *grid, C)`` as ``(B, C, *grid)`` when its grid has one integer stride
    on the image along every axis (a Swin or ConvNeXt stage); None otherwise (a window partition
    ``(B, windows, positions, C)`` such as MaxViT's is not a grid of the image)."""
    grid, size = part.shape[1:-1], x.shape[2:]
    if any(n < 1 or s % n for n, s in zip(grid, size)) or len({s // n for n, s in zip(grid, size)}) != 1:
        return None
    return part.permute(0, part.dim() - 1, *range(1, part.dim() - 1))


def bias_map(part: Tensor, layout: str, x: Tensor) -> Tensor | None:
    """A bias part as a feature map ``(B, C, *spatial)`` of the input ``x``, None if it is none.
    Channels-first parts of the input's rank are maps as they are; channels-last parts are either
    token sequences ``(B, T, C)``, placed on the patch grid (:func:`relprop.feature_maps.token_grid`,
    the class token left out), or channels-last maps permuted to channels-first (:func:`_grid_map`).
    Parts batched otherwise (Swin's windows, ``(B * windows, N, C)``) are not maps."""
    if part.dim() < 2 or part.shape[0] != x.shape[0] or layout == NO_MAP:
        return None
    if layout == CHANNELS_FIRST:
        return part if part.dim() == x.dim() else None
    if part.dim() == x.dim():
        return _grid_map(part, x)
    return token_grid(part, x) if part.dim() == 3 else None


@register_method("fullgrad",
                 "FullGrad (Srinivas & Fleuret 2019 [Srinivas2019-FullGrad]): input-gradient x input plus normalised bias-gradient maps of every layer",
                 display="positive")
def fullgrad(model: nn.Module, x: Tensor, target: Target) -> Attribution:
    """FullGrad (Srinivas & Fleuret, NeurIPS 2019 [Srinivas2019-FullGrad], Sec. 4), its FullGrad saliency:
    ``S = sum_c psi(x * df/dx) + sum_l sum_c up(psi(b_l * df/dz_l))`` over the layers ``l`` whose bias
    part is a feature map of the input (:func:`bias_map`), ``psi`` = abs, minus the sample's minimum,
    divided by its maximum (+1e-6), ``up`` = (bi/tri)linear resizing with ``align_corners=True`` (the
    authors' code). Biases of dense layers belong to the decomposition (:func:`fullgrad_parts`) but
    not to the map, as in the authors' code. Batch norms are folded into the preceding convolution, whose
    effective bias ``(b - mean) gamma / std + beta`` gives one map; the authors' code makes separate
    maps of the convolution's bias and the batch norm's ``beta - mean gamma / std`` (the same where
    convolutions have no bias, as in ResNets).

    Transformers: the parts of linear layers and layer norms on tokens ``(B, T, C)``, and of the
    positional embedding, enter the map on the patch grid (the class token's row left out, as its
    constant entry of the concatenation); those on channels-last maps ``(B, H, W, C)`` (Swin, ConvNeXt)
    permuted to channels-first. Parts inside attention windows or on attention logits (a relative
    position bias) stay in the decomposition only. The result is shaped like ``x``: every channel
    holds ``S / C``.
    """
    if x.dim() < 3:
        raise ValueError(f"FullGrad needs inputs with spatial dimensions, got shape {tuple(x.shape)}")
    input_part, parts, _ = _decomposition(model, x, target)
    size = tuple(x.shape[2:])
    saliency = postprocess(input_part).sum(dim=1, keepdim=True)
    for part, layout in parts.values():
        features = bias_map(part, layout, x)
        if features is not None:
            # resizing is linear: summing the channels first gives the same map for 1/C of the work
            saliency = saliency + _resize(postprocess(features).sum(dim=1, keepdim=True), size)
    return Attribution((saliency / x.shape[1]).expand_as(x).clone())
