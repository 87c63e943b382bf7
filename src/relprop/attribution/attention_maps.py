"""Maps read from a vision transformer's attention: attention rollout (Abnar & Zuidema 2020
[Abnar2020-Rollout]) and transformer attribution (Chefer, Gur & Wolf 2021 [Chefer2021-Transformer]).

Both combine one token-by-token matrix per attention block into a joint matrix ``J`` (later blocks
on the left, from block ``start_layer`` on), read the class token's row ``J[0, 1:]`` over the patch
tokens, lay it out on the patch grid and upsample it bilinearly to the image (``align_corners=False``,
as the reference code's ``F.interpolate(scale_factor=patch)``). The map is returned shaped like
``x``, with ``map / C`` in each of the ``C`` channels (as ``gradcam``), so that the channel sum is
the token map. The reference code also min-max normalises each map for display, which only
changes its scale and offset and is left out.

The attention probabilities are the factor ``P`` of each product ``P V`` that the trace marks as
attention (a softmax output, :mod:`relprop.attention` decomposes ``nn.MultiheadAttention``), of
shape ``(batch, heads, tokens, tokens)``; the class token comes first and the other tokens are the
patches in row-major order (torchvision's ``VisionTransformer``, timm's, Chefer's ViT).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..composite import Composite, by_type, first
from ..feature_maps import upsample
from ..options import integer, number
from ..propagate import Propagator, propagator_for
from ..rules import AlphaBeta, MatMulUniform, RescaledSum, Unchanged, ZBox
from ..targets import Target, one_hot, resolve_target
from ..traced_gradient import checked_propagator, target_score
from .method import Attribution
from .registry import register_method

Tensor = torch.Tensor

#: the methods that read attention probabilities: they refuse a model without attention (a CNN)
ATTENTION_METHODS = ("attention-rollout", "transformer-attribution")



# -- the attention probabilities and the token layout ----------------------------------------------
def attention_nodes(propagator: Propagator, what: str) -> list[str]:
    """Names of the nodes that hold attention probabilities, one per attention block in execution
    order; a ValueError naming the model if it has none."""
    graph = propagator.graph
    names = []
    for node in graph.nodes:
        factor = getattr(node.op, "attention", None) if node.op.kind == "matmul" else None
        if factor is not None:
            names.append(graph.nodes[node.inputs[factor]].name)
    if not names:
        model = propagator.model_ref()
        raise ValueError(f"{what} reads attention probabilities, and {type(model).__name__} has no attention "
                         "(nn.MultiheadAttention, or softmax(Q K^T) V written with matmul): use it on a "
                         "vision transformer")
    return names


def has_attention(model: nn.Module) -> bool:
    """Whether the traced ``model`` holds attention probabilities (what :data:`ATTENTION_METHODS`
    read); True also when it cannot be traced, so that the method itself says why."""
    try:
        return bool(any(n.op.kind == "matmul" and getattr(n.op, "attention", None) is not None
                        for n in propagator_for(model).graph.nodes))
    except Exception:  # noqa: BLE001 - the method will report it
        return True


def applicable_methods(model: nn.Module, names: Sequence[str],
                       options: Mapping[str, Any] | None = None) -> tuple[list[str], list[str], str]:
    """``names`` split into those that can explain ``model`` and those that cannot, with the reason:
    the attention methods on a model without attention, the pattern methods on a model without
    registered or shipped patterns and none in ``options`` (method name -> its options), or with ops
    they do not support."""
    kept, skipped, reasons = list(names), [], []
    if any(n in ATTENTION_METHODS for n in names) and not has_attention(model):
        skipped = [n for n in kept if n in ATTENTION_METHODS]
        kept = [n for n in kept if n not in ATTENTION_METHODS]
        reasons.append(f"has no attention: {', '.join(skipped)} left out (they read attention probabilities)")
    from .pattern import PATTERN_METHODS, pattern_problem

    options = options or {}
    for given in (False, True):  # without patterns of their own, then with ``patterns=`` given
        wanted = [n for n in kept if n in PATTERN_METHODS and _gives_patterns(options.get(n)) == given]
        problem = pattern_problem(model, given) if wanted else None
        if problem is not None:
            skipped += wanted
            kept = [n for n in kept if n not in wanted]
            reasons.append(f"{', '.join(wanted)} left out ({problem})")
    return kept, skipped, "; ".join(reasons)


def _gives_patterns(options: Any) -> bool:
    """Whether a method's options (a dict, or a list of variants) give ``patterns``."""
    if isinstance(options, Mapping):
        return options.get("patterns") is not None
    if isinstance(options, (list, tuple)):
        return bool(options) and all(_gives_patterns(o) for o in options)
    return False


def _check_probabilities(name: str, p: Tensor, what: str, batch: int) -> None:
    """Global self-attention of each sample over all its tokens: (batch, heads, tokens, tokens)."""
    if p.dim() != 4 or p.shape[-1] != p.shape[-2] or p.shape[0] != batch:
        raise ValueError(f"{what} is defined for global self-attention of each image over its class token and "
                         f"patch tokens (ViT, DeiT), probabilities shaped (batch={batch}, heads, tokens, tokens); "
                         f"node {name!r} holds shape {tuple(p.shape)} (attention within windows or grid cells, "
                         "as in Swin or MaxViT, has no class-token row to roll out)")


def patch_grid(tokens: int, x: Tensor, what: str) -> tuple[int, int]:
    """The grid ``(rows, columns)`` of the ``tokens - 1`` patch tokens on the image ``x`` (square
    patches that tile it); a ValueError when they cannot."""
    height, width = x.shape[-2:]
    patches = tokens - 1
    side = math.sqrt(height * width / patches) if patches > 0 else 0.0
    patch = round(side)
    if x.dim() != 4 or patch < 1 or height % patch or width % patch or (height // patch) * (width // patch) != patches:
        raise ValueError(f"{what}: cannot lay {patches} patch tokens (a class token first, then the patches in "
                         f"row-major order) out on an input of shape {tuple(x.shape)} with square patches")
    return height // patch, width // patch


def _check_start(start_layer: int, blocks: int, what: str) -> None:
    if not 0 <= start_layer < blocks:
        raise ValueError(f"{what}: start_layer={start_layer} is not a block of this model, which has {blocks} "
                         f"attention blocks (0..{blocks - 1})")


def joint_attention(matrices: Sequence[Tensor], start_layer: int = 0) -> Tensor:
    """``J = M_L ... M_{s+1} M_s`` for the (batch, tokens, tokens) matrices ``M_s .. M_L`` from
    ``start_layer`` on (later blocks on the left, Abnar & Zuidema 2020 [Abnar2020-Rollout], Sec. 3)."""
    joint = matrices[start_layer]
    for m in matrices[start_layer + 1:]:
        joint = torch.bmm(m, joint)
    return joint


def with_identity(a: Tensor) -> Tensor:
    """``A + I`` for a batch of square matrices (the residual connection of each block)."""
    return a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)


def rollout_matrix(probabilities: Tensor) -> Tensor:
    """Abnar & Zuidema 2020 [Abnar2020-Rollout], Sec. 3: the mean over heads ``Ā`` of one block's
    attention probabilities (batch, heads, tokens, tokens), plus the identity for the residual
    connection, rows normalised: ``Â = (Ā + I) / rowsum = 0.5 Ā + 0.5 I``."""
    a = with_identity(probabilities.mean(dim=1))
    return a / a.sum(dim=-1, keepdim=True)


def class_token_map(joint: Tensor, x: Tensor, what: str) -> Tensor:
    """The class token's row ``J[:, 0, 1:]`` on the patch grid, upsampled bilinearly to ``x``'s size,
    ``map / C`` in each channel of ``x``."""
    rows, columns = patch_grid(joint.shape[-1], x, what)
    grid = joint[:, 0, 1:].reshape(-1, 1, rows, columns)
    cam = upsample(grid, tuple(x.shape[2:]), "bilinear")
    return (cam / x.shape[1]).to(x.dtype).expand_as(x).clone()


# -- attention rollout -----------------------------------------------------------------------------
def rollout_matrices(model: nn.Module, x: Tensor, target: Target, what: str = "attention-rollout") -> list[Tensor]:
    """The matrices ``Â`` of every attention block of ``model`` on ``x`` (:func:`rollout_matrix`)."""
    propagator = checked_propagator(model, x)
    names = attention_nodes(propagator, what)
    with torch.no_grad():
        logits, kept = propagator.forward_differentiable(x.detach(), keep=names)
        resolve_target(target, logits)  # checks the target, which the map does not depend on
    for name in names:
        _check_probabilities(name, kept[name], what, x.shape[0])
    return [rollout_matrix(kept[name]) for name in names]


@register_method("attention-rollout",
                 "Attention rollout (Abnar & Zuidema 2020 [Abnar2020-Rollout]): product of head-averaged "
                 "attention plus identity, row-normalised, class token's row; target-independent",
                 start_layer=integer(low=0), display="positive")
def attention_rollout(model: nn.Module, x: Tensor, target: Target, *, start_layer=1) -> Attribution:
    """Attention rollout (Abnar & Zuidema, *Quantifying Attention Flow in Transformers*, ACL 2020).

    Each block's attention probabilities are averaged over heads, ``Ā``; the residual connection is
    added and the rows normalised, ``Â = 0.5 Ā + 0.5 I``; the joint attention is
    ``J = Â_L ... Â_s`` (Sec. 3, ``s = start_layer``) and the map is the class token's row
    ``J[0, 1:]`` on the patch grid, upsampled to the image. Every row of ``Â`` and of ``J`` sums to 1.

    The map does not depend on ``target``: it is the same for every class (the target is checked
    and otherwise ignored). ``start_layer=1`` skips the first block, as the evaluation of Chefer et
    al. 2021 [Chefer2021-Transformer] runs it (``generate_visualizations.py``); ``0`` is the paper's rollout.
    """
    matrices = rollout_matrices(model, x, target)
    _check_start(start_layer, len(matrices), "attention-rollout")
    return Attribution(class_token_map(joint_attention(matrices, start_layer), x, "attention-rollout"))


# -- transformer attribution (Chefer et al. 2021) --------------------------------------------------
def transformer_attribution_composite(epsilon: float = 1e-9) -> Composite:
    """The rules of Chefer et al.'s LRP pass (Chefer et al. 2021 [Chefer2021-Transformer], Sec. 3.2, and their
    ``layers_ours.py``): z^B with per-image bounds and no bias on the layer that reads the image,
    LRP-alpha1beta0 without bias on every other convolution and linear layer (attention
    projections included), softmax and layer norm unchanged (GELU and dropout pass
    relevance unchanged by default), both products of two tensors LRP-0 with each factor's share
    halved (:class:`~relprop.rules.MatMulUniform`), residual sums by :class:`~relprop.rules.RescaledSum`. ``epsilon`` stabilises every ratio (the reference code adds 1e-9)."""
    rules: list = [
        (first(1), ZBox(stabilizer=epsilon, bias=False)),
        (by_type("conv", "linear"), AlphaBeta(1.0, 0.0, stabilizer=epsilon, bias=False)),
        (by_type("softmax", "layernorm"), Unchanged()),
        (by_type("matmul"), MatMulUniform(epsilon)),
        (by_type("add"), RescaledSum(epsilon)),
    ]
    return Composite(rules, norm_epsilon=epsilon, name="transformer-attribution")


def transformer_attribution_matrices(model: nn.Module, x: Tensor, target: Target, epsilon: float = 1e-9,
                                     what: str = "transformer-attribution") -> list[Tensor]:
    """``Ā_b = mean_h[(∇A_b ⊙ R_b)⁺]`` of every attention block b (Chefer et al. 2021 [Chefer2021-Transformer],
    Eq. 13): ``R_b`` the relevance at the attention probabilities ``A_b`` from the LRP pass of
    :func:`transformer_attribution_composite` started with 1 at the target class, ``∇A_b`` the
    gradient of the target logit with respect to ``A_b``."""
    propagator = checked_propagator(model, x)
    names = attention_nodes(propagator, what)
    # one forward pass for both: autograd from the first attention probabilities on, for the gradients
    cache = propagator.forward(x.detach(), differentiable_from=names[0])
    probabilities = [cache.outputs[propagator.graph.find(name)] for name in names]
    logits = cache.outputs[-1]
    indices = resolve_target(target, logits.detach())
    for name, value in zip(names, probabilities):
        _check_probabilities(name, value.detach(), what, x.shape[0])
    with torch.enable_grad():
        gradients = torch.autograd.grad(target_score(logits, indices), probabilities, allow_unused=True)
    initial = one_hot(logits.detach(), indices)
    _, recorded = propagator.backward(cache, initial, transformer_attribution_composite(epsilon), record=names)
    matrices = []
    for name, gradient in zip(names, gradients):
        relevance = recorded[name]
        if gradient is None:
            gradient = torch.zeros_like(relevance)
        matrices.append((gradient * relevance).clamp(min=0).mean(dim=1))
    return matrices


@register_method("transformer-attribution",
                 "Transformer attribution (Chefer et al. 2021 [Chefer2021-Transformer]): LRP relevance times gradient "
                 "at the attention probabilities, positive part, head mean, product over blocks",
                 start_layer=integer(low=0), epsilon=number(low=0), display="positive")
def transformer_attribution(model: nn.Module, x: Tensor, target: Target, *, start_layer=1,
                            epsilon=1e-9) -> Attribution:
    """Transformer attribution (Chefer, Gur & Wolf, *Transformer Interpretability Beyond Attention
    Visualization*, CVPR 2021).

    For each attention block b, ``Ā_b = mean_h[(∇A_b ⊙ R_b)⁺]`` (Eq. 13), with ``R_b`` the relevance
    at its attention probabilities from an LRP pass with the rules of
    :func:`transformer_attribution_composite`, started with 1 at the target class, and ``∇A_b`` the
    gradient of the target logit. ``C = (Ā_L + I) ... (Ā_s + I)`` (Eq. 14, ``s = start_layer``; the
    identity for the residual connection, rows not normalised, as the reference code's
    ``compute_rollout_attention``); the map is the class token's row ``C[0, 1:]`` on the patch grid,
    upsampled to the image. ``start_layer=1`` as the paper's evaluation runs it
    (``generate_visualizations.py``; the function's own default there is 0). Each sample of a batch
    is explained on its own (the reference code reads batch index 0 only).
    """
    matrices = transformer_attribution_matrices(model, x, target, epsilon)
    _check_start(start_layer, len(matrices), "transformer-attribution")
    joint = joint_attention([with_identity(m) for m in matrices], start_layer)
    return Attribution(class_token_map(joint, x, "transformer-attribution"))


__all__ = ["ATTENTION_METHODS", "applicable_methods", "attention_nodes", "has_attention", "attention_rollout", "class_token_map", "joint_attention", "patch_grid",
           "rollout_matrices", "rollout_matrix", "transformer_attribution", "transformer_attribution_composite",
           "transformer_attribution_matrices", "with_identity"]
