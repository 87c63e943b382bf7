"""Attribution-guided factorization (AGF; Gur, Ali & Wolf, *Visualization of Supervised and
Self-Supervised Neural Networks via Attribution Guided Factorization*, AAAI 2021 [Gur2021-AGF]).

A composition like every LRP method: one forward pass (autograd from the first affine layer on, so
that the gradient stream of the head's output is read at every affine layer without a second
pass), the head's relevance ``x * dy^_t/dx`` (:class:`~relprop.rules.agf.AGFHead`), the AGF rules
on the other affine layers (:class:`~relprop.rules.agf.AGFLayer`), z^B with per-image bounds and no
bias on the layer that reads the image, and LRP-0 elsewhere (ReLU identity, max-pool winner,
average pools and residual sums in proportion), as the authors' ``AGFPropSimple`` layers. The map is
divided by each sample's maximum (the authors' ``vgg.py``/``resnet.py``); summed over the channels
it is the authors' map.

Transformers: linear layers on tokens (B, T, C) and channels-last maps (B, H, W, C) take the
convolution's rule with the channels last (:class:`~relprop.rules.agf.AGFLayer`); the softmax and
the layer norm's scale are constants as in CP-LRP (Ali et al. 2022 [Ali2022-CPLRP]), and AGF's |z|
term runs on the linear maps that leaves (:class:`~relprop.rules.agf.AGFLayerNorm`,
:class:`~relprop.rules.agf.AGFValueMix`), sums in proportion to their terms' magnitudes
(:data:`TRANSFORMER_RULES`, in models with layer norms). After AGF's shift the relevance is not
proportional to the activations, so a ratio to a layer's output (CP-LRP's ``R / y`` of the layer
norm, ``R / O`` of the attention product, the proportional sum) would blow up where it is near 0;
these rules are bounded by the relevance and conserve it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .. import ops
from ..composite import Composite, by_type, first, last
from ..options import choice, names
from ..rules import AbsoluteSum, ZBox
from ..rules.agf import AGF_EPSILON, AGFHead, AGFLayer, AGFLayerNorm, AGFValueMix, agf_divide, sample_max
from ..targets import Target, one_hot, resolve_target
from ..traced_gradient import checked_propagator
from .method import Attribution
from .registry import register_method

Tensor = torch.Tensor
#: which convolutions return the |z| term alone (the authors' ``flat=True``)
FLAT_CHOICES = ("residual", "none")
#: AGF's rules for what transformers add, in models with layer norms (the softmax keeps CP-LRP's
#: constant attention, :class:`~relprop.rules.SoftmaxConstant`; ResNets keep the authors'
#: proportional sums)
TRANSFORMER_RULES: list = [(by_type("layernorm"), AGFLayerNorm()), (by_type("matmul"), AGFValueMix()),
                           (by_type("add"), AbsoluteSum())]


def _has_layer_norm(graph) -> bool:
    """Whether the model normalises with layer norms (a transformer, ConvNeXt)."""
    return any(node.op.kind == "layernorm" for node in graph.nodes)


def agf_score(logits: Tensor, indices: Tensor) -> Tensor:
    """``sum_b y^_{b,t}`` with ``y^ = softmax(y_t exp(-((y - y_t) / sigma)^2 / 2))`` and ``sigma =
    max_j |y_j - y_t|`` per sample (the authors' ``Linear.AGF`` at the head), differentiable in
    ``logits``."""
    target_logit = logits.gather(1, indices.view(-1, 1))
    sigma = (logits - target_logit).abs().amax(dim=1, keepdim=True)
    sigma = torch.where(sigma == 0, torch.ones_like(sigma), sigma)  # one class, or all logits equal
    reweighted = torch.softmax(target_logit * torch.exp(-0.5 * ((logits - target_logit) / sigma) ** 2), dim=1)
    return reweighted.gather(1, indices.view(-1, 1)).sum()


def _flat_layers(graph, choice_: str) -> frozenset:
    """The convolutions that return ``C`` alone: with ``"residual"``, the 1 x 1 convolutions and those
    whose output (batch norm folded) feeds a residual sum, as the authors mark ResNet's layers."""
    if choice_ == "none":
        return frozenset()
    flat = set()
    for node in graph.nodes:
        op = node.op
        if not isinstance(op, ops.Affine) or op.layer_type != "conv":
            continue
        users, feeds_sum = list(node.users), False
        while users:  # through identities (a folded batch norm, dropout)
            user = graph.nodes[users.pop()]
            if user.op.kind == "identity":
                users.extend(user.users)
            feeds_sum = feeds_sum or user.op.kind == "add"
        if feeds_sum or op.unit_kernel:
            flat.add(op)
    return frozenset(flat)


def _flattened_maps(graph, outputs: list) -> dict:
    """``{linear op: feature-map shape}`` for each linear layer that reads a flattened feature map."""
    shapes = {}
    for node in graph.nodes:
        op = node.op
        if not isinstance(op, ops.Affine) or op.layer_type != "linear" or not node.inputs:
            continue
        producer = node.inputs[0]
        while producer > 0 and graph.nodes[producer].op.kind == "identity" and len(graph.nodes[producer].inputs) == 1:
            producer = graph.nodes[producer].inputs[0]  # dropout between the flattening and the layer
        if producer <= 0 or graph.nodes[producer].op.kind != "reshape" or not graph.nodes[producer].inputs:
            continue
        source = outputs[max(graph.nodes[producer].inputs[0], 0)]  # -1 and 0: the model input
        if isinstance(source, Tensor) and source.dim() >= 3:
            shapes[op] = tuple(source.shape[1:])
    return shapes


@register_method("agf",
                 "Attribution-guided factorization (Gur, Ali & Wolf 2021 [Gur2021-AGF]): |z|-rule relevance "
                 "guided by the gradient stream and a foreground/background factorisation of input and gradient",
                 display="positive", flat=choice(*FLAT_CHOICES), record=names())
def agf(model: nn.Module, x: Tensor, target: Target, *, flat="residual", record=()) -> Attribution:
    """AGF (Gur, Ali & Wolf, AAAI 2021 [Gur2021-AGF], Sec. 3 and the authors' code), divided by each
    sample's maximum (summed over the channels: the authors' map). See
    :mod:`relprop.rules.agf` for the per-layer terms. The model must end in a linear or convolution
    layer (the classifier head); transformers run as the module docstring says. ``flat``:
    ``"residual"`` (default) returns the |z| term alone on 1 x 1 convolutions and on the
    convolutions that feed a residual sum, as the authors' ResNet does;
    ``"none"`` applies the full rule on every convolution (the authors' VGG has no such layers)."""
    relevance, recorded, _ = _propagate(model, x, target, flat, record)
    return Attribution(agf_divide(relevance, sample_max(relevance)), recorded)


def agf_relevance(model: nn.Module, x: Tensor, target: Target, flat: str = "residual") -> tuple[Tensor, Tensor]:
    """The AGF relevance of ``x`` before the per-sample normalisation (its sum is the head's
    relevance ``sum x * dy^_t/dx``, up to what the stabilisers absorb), and the resolved targets."""
    relevance, _, indices = _propagate(model, x, target, flat)
    return relevance, indices


def _propagate(model: nn.Module, x: Tensor, target: Target, flat: str,
               record: Sequence[str] = ()) -> tuple[Tensor, dict, Tensor]:
    """The AGF relevance of ``x``, the relevance recorded at the nodes named in ``record``, and the
    resolved targets."""
    propagator = checked_propagator(model, x)
    graph = propagator.graph
    affine = graph.affine_positions()
    head = len(graph.nodes) - 1
    while graph.nodes[head].op.kind == "identity" and len(graph.nodes[head].inputs) == 1 and head > 0:
        head = graph.nodes[head].inputs[0]  # the output node and other identities
    if not affine or affine[-1] != head:
        raise ValueError("agf: the model must end in a linear or convolution layer (the classifier head, "
                         "whose output AGF reweights); its last operation is "
                         f"{graph.nodes[head].name!r} ({graph.nodes[head].op.kind})")
    if len(affine) < 2:
        raise ValueError("agf: the model needs an affine layer before its classifier head")
    cache = propagator.forward(x.detach(), differentiable_from=graph.nodes[affine[0]].name)
    logits = cache.outputs[-1]
    indices = resolve_target(target, logits.detach())
    layer_outputs = [cache.outputs[pos] for pos in affine]
    with torch.enable_grad():
        grads = torch.autograd.grad(agf_score(logits, indices), layer_outputs, allow_unused=True)
    gradients = {graph.nodes[pos].op: (torch.zeros_like(out) if g is None else g).detach()
                 for pos, out, g in zip(affine, layer_outputs, grads)}
    composite = Composite([
        (last(1), AGFHead(gradients)),
        (first(1), ZBox(None, None, stabilizer=AGF_EPSILON, bias=False)),
        (by_type("conv", "linear"), AGFLayer(gradients, _flat_layers(graph, flat),
                                             _flattened_maps(graph, cache.outputs))),
        *(TRANSFORMER_RULES if _has_layer_norm(graph) else []),
    ], norm_epsilon=AGF_EPSILON, name="agf")
    relevance, recorded = propagator.backward(cache, one_hot(logits.detach(), indices), composite, record)
    return relevance, recorded, indices


__all__ = ["agf", "agf_relevance", "agf_score"]
