"""PatternNet and PatternAttribution (Kindermans, Schütt, Alber, Müller, Erhan, Kim & Dähne, *Learning
how to explain neural networks: PatternNet and PatternAttribution*, ICLR 2018 [Kindermans2018-PatternNet]).

Both backpropagate the target logit's unit like the gradient, keeping the ReLU gates and max-pool
switches of the forward pass and leaving the biases out, with each affine layer's weight ``W``
replaced in the backward pass: by its pattern ``A`` (PatternNet: a signal estimate in input space) or
by ``W * A`` elementwise (PatternAttribution: DTD with root point ``x - a+ y``), as the paper's section
"PatternNet and PatternAttribution" defines them.
The patterns come from :mod:`relprop.patterns` (``patterns=``; shipped for the shipped models).

On transformers the same backward pass (the gradient's, with the weights replaced) goes through
GELU and SiLU by their derivative at the forward input, as through ReLU's mask; through layer norms
with their scale ``sigma`` constant and through attention with the probabilities constant, so that
only the value path carries the signal (the constant treatment of CP-LRP, Ali et al. 2022
[Ali2022-CPLRP]); residual sums pass the signal to both terms.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..options import choice, patterns as patterns_option
from ..patterns import Patterns, pattern_layers, resolve_patterns
from ..targets import Selection, Target, resolve_target
from ..traced_gradient import checked_propagator, gradient_or_zeros, target_score
from .gradients import rectifier_upper
from .method import Attribution
from .registry import register_method

Tensor = torch.Tensor
#: where the backward pass starts: the target logit's unit (as the gradient, Captum's convention) or
#: its value y_c (iNNvestigate's PatternNet: the map then scales with y_c, the signal estimate a y)
SEEDS = ("unit", "logit")

#: op kinds whose gradient PatternNet passes back unchanged: fixed linear maps (reshapes, indexing, pools,
#: sums, concatenations, unfolded batch norms, constant scales, padding) and max pooling's switches
_LINEAR_KINDS = ("input", "identity", "reshape", "getitem", "pad", "maxpool", "avgpool", "add", "concat", "batchnorm",
                 "scale")
#: the kinds of a ReLU network (Kindermans et al. 2018, Sec. 4), besides affine layers and ReLU
_RELU_NETWORK_KINDS = ("input", "identity", "reshape", "pad", "maxpool", "avgpool", "add", "concat", "batchnorm",
                       "scale")
#: smooth rectifiers: their derivative at the forward input gates the backward pass, as ReLU's mask does
_SMOOTH_RECTIFIERS = (nn.GELU, nn.SiLU)
#: the same activations under other libraries' class names (timm's GELU, GELUTanh, Swish)
_SMOOTH_RECTIFIER_NAMES = ("GELU", "GELUTanh", "SiLU", "Swish")
_SMOOTH_RECTIFIER_FUNCS = (F.gelu, F.silu, "gelu", "silu")
#: what may lie between attention scores ``Q K^T`` and their softmax (scaling, a bias, reshapes)
_SCORE_KINDS = ("identity", "reshape", "getitem", "scale", "add", "multiply")


def rectifier_like(op: ops.Op) -> bool:
    """ReLU, GELU or SiLU (module or function): the activations whose backward pass is the derivative at
    the forward input (ReLU's mask, Kindermans et al. 2018, Sec. 4; GELU's and SiLU's derivative)."""
    if op.kind != "activation":
        return False
    if rectifier_upper(op) == math.inf:
        return True
    if isinstance(op, ops.Activation):
        return isinstance(op.module, _SMOOTH_RECTIFIERS) or type(op.module).__name__ in _SMOOTH_RECTIFIER_NAMES
    target = getattr(op, "activation", None)
    return any(target is f or (isinstance(f, str) and target == f) for f in _SMOOTH_RECTIFIER_FUNCS)


def _scores_only(nodes: list, pos: int) -> bool:
    """Whether every path from node ``pos`` ends at a softmax through scalings, biases and reshapes only
    (attention scores ``Q K^T``, whose probabilities the backward pass holds constant)."""
    users = nodes[pos].users
    return bool(users) and all(nodes[u].op.kind == "softmax" or (nodes[u].op.kind in _SCORE_KINDS
                                                                    and _scores_only(nodes, u)) for u in users)


def _unsupported(nodes: list, pos: int) -> str | None:
    """Why PatternNet has no backward pass through node ``pos`` (None when it has one)."""
    op = nodes[pos].op
    if op.kind in _LINEAR_KINDS or op.kind in ("affine", "layernorm", "softmax"):
        return None
    if op.kind == "activation":
        return None if rectifier_like(op) else "an activation other than ReLU, GELU and SiLU"
    if op.kind == "multiply":
        return None if len(op.tensor_arg_nodes) <= 1 else "a product of two tensors"
    if op.kind == "matmul":
        if getattr(op, "attention", None) is not None or _scores_only(nodes, pos):
            return None
        return "a product of two tensors that is neither attention scores nor attention times values"
    return f"an operation of kind {op.kind!r}"


def check_pattern_ops(propagator, method: str) -> None:
    """A ValueError naming the first op that PatternNet is not defined for. Defined: affine layers, ReLU,
    pooling, reshapes, sums, concatenations and batch norms (Kindermans et al. 2018, Sec. 4); GELU and
    SiLU (their derivative); layer norms (their scale constant), softmax and attention products (the
    probabilities constant, Ali et al. 2022) and products with constants."""
    model = propagator.model_ref()
    nodes = propagator.graph.nodes
    for pos, node in enumerate(nodes):
        why = _unsupported(nodes, pos)
        if why is None:
            continue
        op = node.op
        what = type(op.module).__name__ if op.module is not None else getattr(op, "path", "") or op.kind
        raise ValueError(f"{method} is defined for networks of affine layers, ReLU, pooling, flatten and sums "
                         f"(Kindermans et al. 2018), and for transformers with GELU/SiLU, layer norms and attention; "
                         f"{type(model).__name__} has node {node.name!r}, a {op.kind} ({what}): {why}, which it "
                         "does not support")


def relu_network(propagator) -> bool:
    """Whether the model has nothing but affine layers, ReLU, pooling, reshapes, sums, concatenations
    and batch norms: the networks of Kindermans et al. 2018, Sec. 4."""
    return all(n.op.kind in _RELU_NETWORK_KINDS or n.op.kind == "affine"
               or (n.op.kind == "activation" and rectifier_upper(n.op) == math.inf) for n in propagator.graph.nodes)


def _fixed_scale_layer_norm(op: ops.LayerNorm, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
    """The layer norm's value ``out`` with the backward pass of ``gamma (x - mean(x)) / sigma`` for a
    constant ``sigma`` (Ali et al. 2022, LN-rule; the gradient with sigma fixed)."""
    x = args[0]
    shape, weight, _, eps = op.parameters(args, kwargs)
    dims = tuple(range(-len(shape), 0))
    with torch.no_grad():
        sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    linear = (x - x.mean(dims, keepdim=True)) / sigma
    if weight is not None:
        linear = linear * weight.detach()
    return out.detach() + (linear - linear.detach())


def constant_treatment(op: ops.Op, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
    """The value of a node for PatternNet's backward pass: layer norms with their scale constant,
    attention probabilities constant (Ali et al. 2022: only the value path of attention carries the
    backward signal); every other node unchanged."""
    if op.kind == "layernorm":
        return _fixed_scale_layer_norm(op, args, kwargs, out)  # type: ignore[arg-type]
    if op.kind == "softmax":
        return out.detach()
    return out


#: the methods that need the model's signal patterns (and a ReLU network)
PATTERN_METHODS = ("patternnet", "pattern-attribution")


def pattern_problem(model: nn.Module, given: bool = False) -> str | None:
    """Why the pattern methods cannot explain ``model``: an op they do not support, or (unless
    patterns are ``given``) no registered or shipped patterns; None when they can."""
    from ..propagate import propagator_for

    try:
        propagator = propagator_for(model)
        check_pattern_ops(propagator, "PatternNet")
        if not given:
            resolve_patterns(propagator, None, "PatternNet")
    except ValueError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - e.g. an untraceable model: the method will say why
        return f"{type(err).__name__}: {err}"
    return None


def bottlenecks(propagator) -> set[int]:
    """Positions of the nodes that every path from the input to the output passes (no edge of the
    traced graph jumps over them): scaling the backward signal there scales the whole map."""
    nodes = propagator.graph.nodes
    found: set[int] = set()
    reach = 0  # the furthest node that an edge from the nodes before ``pos`` goes to
    for pos, node in enumerate(nodes):
        if pos > 0 and reach <= pos:
            found.add(pos)
        reach = max([reach, *node.users])
    return found


class _Rescaled(torch.autograd.Function):
    """Identity forward; backward divides each sample's gradient by its absolute maximum (1 where it is
    0) and records the divisors, so that deep networks cannot overflow in the backward pass."""

    @staticmethod
    def forward(ctx, t: Tensor, scales: list) -> Tensor:  # type: ignore[override]
        ctx.scales = scales
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        peak = grad.detach().flatten(1).abs().amax(dim=1) if grad.dim() > 1 else grad.detach().abs()
        peak = torch.where((peak > 0) & torch.isfinite(peak), peak, torch.ones_like(peak))
        ctx.scales.append(peak.to(torch.float64))
        return grad / peak.view(-1, *([1] * (grad.dim() - 1))), None


class _SwappedWeight(torch.autograd.Function):
    """The layer's own output forward; ``weight^T g`` backward (no bias)."""

    @staticmethod
    def forward(ctx, x: Tensor, op: ops.Affine, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.op = op
        ctx.save_for_backward(x, weight)
        return op.apply(x, op.weight, op.bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return ctx.op.transpose(grad, weight, x), None, None


def pattern_backward(model: nn.Module, x: Tensor, target: Target, patterns, attribution: bool,
                     method: str, seed: str = "unit", normalize: str = "none") -> Tensor:
    """The gradient of the target logit at ``x`` with every affine layer's backward weight replaced by
    its pattern ``A`` (``attribution=False``) or by ``W * A`` (``attribution=True``), from the unit of
    the target logit (``seed="unit"``) or from its value (``seed="logit"``); ``normalize="max"``
    divides each sample's map by its absolute maximum."""
    propagator = checked_propagator(model, x)
    check_pattern_ops(propagator, method)
    resolved: Patterns = resolve_patterns(propagator, patterns, method)
    backward: dict[int, Tensor] = {}
    with torch.no_grad():
        for path, op in pattern_layers(propagator):
            w = op.weight
            a = resolved[path].to(device=w.device, dtype=torch.float64)
            backward[id(op)] = (w.to(torch.float64) * a if attribution else a).to(w.dtype)

    # the backward signal is rescaled per sample at the bottlenecks (every path passes them, so the map
    # only changes by a positive factor per sample, which is undone at the end): iNNvestigate's
    # abs-max scaling of bottleneck tensors, which keeps the products of patterns from overflowing
    scales: list[Tensor] = []
    positions = {id(n.op): pos for pos, n in enumerate(propagator.graph.nodes)}
    rescaled = bottlenecks(propagator)

    def affine(op: ops.Affine, input: Tensor) -> Tensor:
        out = _SwappedWeight.apply(input, op, backward[id(op)])
        return _Rescaled.apply(out, scales) if positions[id(op)] in rescaled else out

    def activation(op: ops.Op, input: Tensor, output: Tensor) -> Tensor:
        return _Rescaled.apply(output, scales) if positions[id(op)] in rescaled else output

    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, _ = propagator.forward_differentiable(leaf, activation=activation, affine=affine,
                                                      other=constant_treatment)
        indices = resolve_target(target, logits.detach())
        if seed == "logit":  # iNNvestigate: the backward pass starts from the value y_c
            scores = indices.score(logits) if isinstance(indices, Selection) else logits.gather(1, indices.view(-1, 1))
            score = (scores * scores.detach()).sum()
        else:
            score = target_score(logits, indices)
        grad = gradient_or_zeros(score, leaf)
    shape = (-1, *([1] * (grad.dim() - 1)))
    if not bool(torch.isfinite(grad).all()):
        raise ValueError(f"{method}: the backward pass through the patterns overflowed {str(grad.dtype).replace('torch.', '')} "
                         "(products of patterns between the bottlenecks exceed its range, as on deep networks with "
                         "random weights or patterns from few samples); explain a float64 copy of the model "
                         "(model.double() and x.double())")
    if normalize == "max":  # iNNvestigate's scale: each sample's map has absolute maximum 1
        peak = grad.flatten(1).abs().amax(dim=1)
        return grad / torch.where(peak > 0, peak, torch.ones_like(peak)).view(shape)
    if not scales:
        return grad
    log_scale = torch.stack(scales).log().sum(dim=0)
    result = (grad.to(torch.float64) * log_scale.exp().view(shape)).to(grad.dtype)
    if not bool(torch.isfinite(result).all()):
        raise ValueError(f"{method}: the map exceeds the range of {str(grad.dtype).replace('torch.', '')} (per-sample "
                         "absolute maxima up to 10^" + f"{float((log_scale + grad.flatten(1).abs().amax(1).double().log()).max() / math.log(10)):.0f}); "
                         "pass normalize='max' for maps scaled to an absolute maximum of 1, or explain in float64")
    return result


@register_method("patternnet",
                 "PatternNet (Kindermans et al. 2018 [Kindermans2018-PatternNet]): gradient backward with each weight replaced by its signal pattern",
                 patterns=patterns_option(), seed=choice(*SEEDS), normalize=choice("none", "max"))
def patternnet(model: nn.Module, x: Tensor, target: Target, *, patterns=None, seed="unit",
               normalize="none") -> Attribution:
    """PatternNet (Kindermans et al., ICLR 2018, section "PatternNet and PatternAttribution"): the signal estimate of the target logit in
    input space. The target logit's unit is backpropagated like the gradient (forward ReLU gates and
    max-pool switches kept, biases unused) with every affine layer's weight ``W`` replaced by its
    pattern ``A`` (two-component estimator ``S_a+``, :mod:`relprop.patterns`).

    ``patterns``: a :class:`relprop.patterns.Patterns` or the path of a patterns file computed for
    this model (:func:`relprop.patterns.compute_patterns`, ``relprop patterns``); by default those
    registered for the model (:func:`relprop.patterns.register_patterns`), else the shipped patterns
    of ``shapes_vgg``, ``shapes_resnet``, ``shapes_vit`` and ``nodules3d_vgg``. On transformers,
    layer norms' scales and attention probabilities are constants of the backward pass (Ali et al.
    2022), GELU and SiLU pass their derivative. ``seed``: ``"unit"`` (default) starts
    from 1 at the target logit, ``"logit"`` from its value ``y_c`` (iNNvestigate), which gives the
    signal estimate ``a y`` on a linear model. ``normalize``: ``"none"`` (default) keeps the scale of
    the backward pass; ``"max"`` divides each sample's map by its absolute maximum, the scale of
    iNNvestigate, which divides every bottleneck tensor of the backward pass by its per-sample
    absolute maximum (only a positive factor per sample). Internally the backward signal is rescaled
    the same way at every bottleneck and the factors are multiplied back at the end, so that products
    of large patterns in deep networks do not overflow.
    """
    return Attribution(pattern_backward(model, x, target, patterns, False, "patternnet", seed, normalize))


@register_method("pattern-attribution",
                 "PatternAttribution (Kindermans et al. 2018 [Kindermans2018-PatternNet]): gradient backward with each weight W replaced by W * A",
                 patterns=patterns_option(), seed=choice(*SEEDS), normalize=choice("none", "max"))
def pattern_attribution(model: nn.Module, x: Tensor, target: Target, *, patterns=None, seed="unit",
                        normalize="none") -> Attribution:
    """PatternAttribution (Kindermans et al., ICLR 2018, same section): as ``patternnet`` with every affine
    layer's weight ``W`` replaced by ``W * A`` elementwise (DTD with the root point ``x - a+ y``); no
    final multiplication by the input. ``patterns``, ``seed`` and ``normalize`` as for ``patternnet``.
    """
    return Attribution(pattern_backward(model, x, target, patterns, True, "pattern-attribution", seed, normalize))
