"""Class-activation-map baselines beyond Grad-CAM: Grad-CAM++ and Relevance-CAM.

Both weight the channels ``A_k`` of one feature map (the same default layer as ``gradcam``: the input
of the last pooling node that sees a feature map) and return ``relu(sum_k w_k A_k)`` upsampled to the
input size, shaped like ``x`` with ``cam / C`` in every channel (as ``gradcam``).
"""

from __future__ import annotations

import torch

import torch.nn as nn

from ..composite import Composite, by_type
from ..feature_maps import (INTERPOLATIONS, feature_map_candidates, holds_channels_last, interpolation_mode,
                            pick_feature_map, spatial_features, upsample)
from ..options import choice, flag, name, number
from ..numerics import report_rounding, rounding_reported
from ..multi_target import expand_targets
from ..propagate import forward_for
from .registry import register_method
from ..rules import AlphaBeta
from ..targets import Target, one_hot_logit, resolve_target
from ..traced_gradient import checked_propagator, gradient_or_zeros, target_score
from .method import Attribution

Tensor = torch.Tensor


def _check_layer(x: Tensor, layer: str | None, interpolation: str, what: str) -> None:
    if x.dim() < 3:
        raise ValueError(f"{what} needs inputs with spatial dimensions, got shape {tuple(x.shape)}")
    if layer is not None and not isinstance(layer, str):
        raise ValueError(f"layer must be a node or module name (a string), got {type(layer).__name__}")
    interpolation_mode(interpolation, x.dim() - 2)


def _as_input(cam: Tensor, x: Tensor, relu: bool, interpolation: str) -> Tensor:
    """``relu(cam)`` (optionally) upsampled to ``x``'s size, ``cam / C`` in every channel of ``x``."""
    if relu:
        cam = cam.clamp(min=0)
    cam = upsample(cam, tuple(x.shape[2:]), interpolation)
    return (cam / x.shape[1]).expand_as(x).clone()


# -- grad-cam++ ------------------------------------------------------------------------------------
def gradcam_plus_plus_weights(features: Tensor, grads: Tensor, epsilon: float = 1e-6) -> Tensor:
    """Grad-CAM++ channel weights ``w_k = sum_ij alpha_ij^k relu(g_ij^k)`` (B, K, 1, ...), with
    ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3 + epsilon)`` (paper Eq. 19 with ``Y = exp(S)``) and
    ``alpha = 0`` where ``g = 0``."""
    spatial = tuple(range(2, features.dim()))
    g2 = grads * grads
    g3 = g2 * grads
    total = features.sum(dim=spatial, keepdim=True)
    alpha = g2 / (2 * g2 + total * g3 + epsilon)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grads.clamp(min=0)).sum(dim=spatial, keepdim=True)


def gradcam_plus_plus_map(model, x: Tensor, target: Target, layer: str | None = None,
                          epsilon: float = 1e-6) -> tuple[Tensor, Tensor]:
    """The Grad-CAM++ map at the layer's resolution before the ReLU, ``sum_k w_k A_k`` (B, 1, ...),
    and the resolved targets."""
    propagator = checked_propagator(model, x)
    keep = [layer] if layer is not None else feature_map_candidates(propagator)
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, kept = propagator.forward_differentiable(leaf, keep=keep)
        indices = resolve_target(target, logits.detach())
        chosen = layer if layer is not None else pick_feature_map(kept, x, propagator)
        last = holds_channels_last(propagator.graph, chosen)
        spatial_features(kept[chosen], x, chosen, "Grad-CAM++", last)
        grads = spatial_features(gradient_or_zeros(target_score(logits, indices), kept[chosen]), x, chosen,
                                 "Grad-CAM++", last)
    features = spatial_features(kept[chosen].detach(), x, chosen, "Grad-CAM++", last)
    _report_pole(propagator.graph.fx_graph, chosen, features, grads, epsilon)
    weights = gradcam_plus_plus_weights(features, grads, epsilon)
    return (weights * features).sum(dim=1, keepdim=True), indices


def _report_pole(model_key: object, layer: str, features: Tensor, grads: Tensor, epsilon: float) -> None:
    """Warn when Grad-CAM++'s ``alpha`` is ill-conditioned in the float type at hand. Its denominator
    ``2 g^2 + S g^3 = g^2 (2 + S g)`` (Chattopadhay et al. 2018, Eq. 19) is at least ``2 g^2`` where the
    features are non-negative (after a ReLU) and the gradient positive; on signed features the sum
    ``S`` can be negative and ``2 + S g`` cancel, where ``alpha`` has a pole: rounding the sum (relative
    ``eps`` of ``sum |A|``) then moves ``alpha`` by ``eps`` times ``(2 g^2 + sum |A| |g|^3) / |denominator|``,
    the gain reported (only where ``g > 0``, the positions that enter the weights)."""
    if not features.is_floating_point() or rounding_reported(model_key, "Grad-CAM++ alpha", features.dtype):
        return
    spatial = tuple(range(2, features.dim()))
    g2 = grads * grads
    g3 = g2 * grads
    magnitude = 2 * g2 + features.abs().sum(dim=spatial, keepdim=True) * g3.abs() + epsilon
    denominator = (2 * g2 + features.sum(dim=spatial, keepdim=True) * g3 + epsilon).abs()
    gain = torch.where(grads > 0, magnitude / denominator.clamp(min=torch.finfo(features.dtype).tiny), 0)
    worst = float(gain.max()) if gain.numel() else 0.0
    report_rounding(model_key, "Grad-CAM++ alpha", features.dtype, worst,
                    f"Grad-CAM++ at {layer!r}: the denominator of alpha, g^2 (2 + S g), nearly cancels (the "
                    f"features are signed, so their sum S can be negative), which multiplies rounding errors "
                    f"by up to {worst:.1e} and makes alpha and the map ill-conditioned; Grad-CAM++ assumes "
                    "non-negative features: pick a layer after a ReLU (layer=...), or use gradcam")


@register_method("gradcam-plus-plus",
                 "Grad-CAM++ (Chattopadhay et al. 2018 [Chattopadhay2018-GradCAMpp]): alpha-weighted positive gradients, exp-score closed form",
                 layer=name(), relu=flag(), interpolation=choice(*INTERPOLATIONS), epsilon=number(low=0), display="positive")
def gradcam_plus_plus(model: nn.Module, x: Tensor, target: Target, *,
                      layer=None, relu=True, interpolation="bilinear", epsilon=1e-6) -> Attribution:
    """Grad-CAM++ (Chattopadhay, Sarkar, Howlader & Balasubramanian, *Grad-CAM++: Generalized
    Gradient-based Visual Explanations for Deep Convolutional Networks*, WACV 2018).

    ``L = relu(sum_k w_k A_k)``, ``w_k = sum_ij alpha_ij^k relu(dY/dA_ij^k)`` (Eq. 7) with the
    closed form of Eq. 19 for ``Y = exp(S)``: with ``g = dS/dA`` (``S`` the target logit),
    ``alpha_ij^k = g^2 / (2 g^2 + sum_ab A_ab^k g^3)``; the factor ``exp(S)`` of ``relu(dY/dA)`` is
    dropped, as in the authors' and pytorch-grad-cam's code. As pytorch-grad-cam: ``epsilon`` (1e-6) is
    added to the denominator and ``alpha = 0`` where ``g = 0``. ``layer``, ``relu``, ``interpolation``
    and the output layout (``cam / C`` in every channel) as ``gradcam``; pytorch-grad-cam also min-max
    normalises each map before resizing it with OpenCV, which only changes the scale.
    """
    _check_layer(x, layer, interpolation, "Grad-CAM++")
    cam, _ = gradcam_plus_plus_map(model, x, target, layer, epsilon)
    return Attribution(_as_input(cam, x, relu, interpolation))


# -- relevance-cam ---------------------------------------------------------------------------------
def relevance_cam_composite(maxpool: str = "winner", add: str = "proportional",
                            batchnorm: str = "identity") -> Composite:
    """LRP-alpha1beta0 (z+) on every affine layer, as ``lrp-alpha1beta0``."""
    return Composite([(by_type("conv", "linear"), AlphaBeta(1.0, 0.0))], maxpool=maxpool, add=add,
                     batchnorm=batchnorm, name="lrp-alpha1beta0", norm_epsilon=1e-6)


def relevance_cam_initial(logits: Tensor, indices: Tensor, initial: str) -> Tensor:
    """``"contrastive"``: 1 at the target and ``-1/C`` at every other class (the authors' code);
    ``"logit"``: the target logit at the target, zero elsewhere (relprop's LRP methods)."""
    index = indices.view(-1, 1)
    if initial == "contrastive":
        relevance = torch.full_like(logits, -1.0 / logits.shape[1])
        return relevance.scatter_(1, index, 1.0)
    if initial == "logit":
        return one_hot_logit(logits, indices)
    raise ValueError(f"initial must be 'contrastive' or 'logit', got {initial!r}")


def relevance_cam_map(model, x: Tensor, target: Target, layer: str | None = None,
                      initial: str = "contrastive", maxpool: str = "winner", add: str = "proportional",
                      batchnorm: str = "identity") -> tuple[Tensor, Tensor]:
    """The Relevance-CAM map at the layer's resolution before any ReLU, ``sum_k alpha_k A_k``
    (B, 1, ...) with ``alpha_k`` the spatial mean of the relevance of ``A_k``, and the targets."""
    propagator, cache = forward_for(model, x.detach())
    graph = propagator.graph
    if layer is None:
        candidates = {n: cache.outputs[graph.find(n)] for n in feature_map_candidates(propagator)}
        layer = pick_feature_map({k: v for k, v in candidates.items() if v is not None}, x, propagator)
    cache, target = expand_targets(propagator, cache, target)
    features = cache.outputs[graph.find(layer)]
    if features is None:
        raise ValueError(f"Relevance-CAM: node {layer!r} keeps no output")
    last = holds_channels_last(graph, layer)
    features = spatial_features(features, x, layer, "Relevance-CAM", last).detach().clone()
    logits = cache.outputs[-1]
    indices = resolve_target(target, logits)
    composite = relevance_cam_composite(maxpool, add, batchnorm)
    _, recorded = propagator.backward(cache, relevance_cam_initial(logits, indices, initial), composite,
                                      record=[layer])
    relevance = spatial_features(recorded[layer], x, layer, "Relevance-CAM", last)
    alpha = relevance.mean(dim=tuple(range(2, relevance.dim())), keepdim=True)
    return (alpha * features).sum(dim=1, keepdim=True), indices


@register_method("relevance-cam",
                 "Relevance-CAM (Lee et al. 2021 [Lee2021-RelevanceCAM]): feature map weighted by its mean z+ relevance per channel",
                 display="positive", multi_target=True,
                 layer=name(), relu=flag(), interpolation=choice(*INTERPOLATIONS),
                 initial=choice("contrastive", "logit"), maxpool=choice("winner", "proportional"),
                 add=choice("proportional", "equal"), batchnorm=choice("identity", "epsilon"))
def relevance_cam(model: nn.Module, x: Tensor, target: Target, *,
                  layer=None, relu=True, interpolation="bilinear", initial="contrastive",
                  maxpool="winner", add="proportional", batchnorm="identity") -> Attribution:
    """Relevance-CAM (Lee, Kim, Park, Eo & Hwang, *Relevance-CAM: Your Model Already Knows Where to
    Look*, CVPR 2021): ``L = relu(sum_k alpha_k A_k)``, ``alpha_k = 1/(HW) sum_ij R_ij^k``,
    where ``R`` is the LRP relevance of the layer's output ``A`` propagated from the output with the
    z+ rule (LRP-alpha1beta0), exactly as ``lrp-alpha1beta0`` with ``record=[layer]``.

    ``initial``: ``"contrastive"`` (default, the authors' code) starts from 1 at the target and
    ``-1/C`` at the other classes (not scaled by the logit); ``"logit"`` from the target logit (relprop's
    LRP methods). ``maxpool``, ``add``, ``batchnorm`` as the LRP methods. ``relu=False`` keeps the
    signed map (the authors' code applies no ReLU and min-max normalises instead). ``layer``,
    ``interpolation`` and the output layout as ``gradcam``.
    """
    _check_layer(x, layer, interpolation, "Relevance-CAM")
    cam, _ = relevance_cam_map(model, x, target, layer, initial, maxpool, add, batchnorm)
    rows = x if cam.shape[0] == x.shape[0] else x[:1].expand(cam.shape[0], *x.shape[1:])  # several targets
    return Attribution(_as_input(cam, rows, relu, interpolation))
