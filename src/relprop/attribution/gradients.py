"""Gradient baselines: gradient, input x gradient, Integrated Gradients, SmoothGrad, guided
backprop, Grad-CAM and guided Grad-CAM.

Every method runs the model through relprop's traced graph
(:meth:`relprop.propagate.Propagator.forward_differentiable`): batch norms are folded, the model's
inference-mode function is evaluated whatever its training flags (which are never touched), and
activation overrides (guided backprop) also reach functional activations such as ``F.relu``, which
module hooks cannot. Up to float rounding the gradients equal those of the original model in eval
mode. Module backward hooks are not run: the gradient is that of the forward function.

Conventions follow Captum: a batch in, a tensor shaped like the batch out, ``target`` a class index
(or one per sample; ``None`` = the predicted class, the argmax of the logits at ``x``), and the
gradient is that of the target *logit*.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..feature_maps import (INTERPOLATIONS, feature_map_candidates, holds_channels_last, interpolation_mode,
                            pick_feature_map, spatial_features, upsample)
from ..options import bound, choice, flag, integer, name, number
from ..propagate import Propagator, in_channels_last
from ..targets import Selection, Target, resolve_selection
from ..traced_gradient import checked_propagator, gradient_or_zeros, target_score
from .method import Attribution
from .registry import register_method

Tensor = torch.Tensor
ActivationOverride = Callable[[ops.Op, Tensor, Tensor], Tensor]

IG_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")


# -- shared helpers ---------------------------------------------------------------------------------
def _predicted_targets(propagator: Propagator, x: Tensor, target: Target) -> Selection:
    """What the target selects per sample; ``None`` resolves to the prediction at ``x`` (not at
    perturbed inputs)."""
    with torch.no_grad():
        logits, _ = propagator.forward_differentiable(x)
    return resolve_selection(target, logits)


def _input_gradient(propagator: Propagator, inputs: Tensor, target: Target,
                    activation: ActivationOverride | None = None) -> Tensor:
    """Gradient of each row's target logit with respect to that row of ``inputs`` (one forward and
    one backward pass; ``target`` is resolved on the logits of this very pass), in ``inputs``' layout.

    Images in float32 / bfloat16 on the CPU go through the graph channels-last, where its
    convolutions (with channels-last copies of their weights, :meth:`relprop.ops.Affine.laid_out_like`)
    run faster (:func:`relprop.propagate.in_channels_last`)."""
    grad = in_channels_last(propagator, inputs.detach(),
                            lambda leaf: _gradient_of(propagator, leaf.detach(), target, activation))
    return grad.contiguous() if inputs.is_contiguous() else grad


def _gradient_of(propagator: Propagator, inputs: Tensor, target: Target,
                 activation: ActivationOverride | None) -> Tensor:
    """:func:`_input_gradient` for ``inputs`` as laid out; ``inputs``: a detached tensor of its own."""
    leaf = inputs.requires_grad_(True)
    with torch.enable_grad():
        logits, _ = propagator.forward_differentiable(leaf, activation)
        indices = resolve_selection(target, logits.detach())
        return gradient_or_zeros(target_score(logits, indices), leaf)


def _check_chunk(internal_batch_size: int | None) -> None:
    if internal_batch_size is not None and (
            isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int)
            or internal_batch_size < 1):
        raise ValueError(f"internal_batch_size must be a positive integer or None, got {internal_batch_size!r}")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _weighted_gradient_sum(propagator: Propagator, x: Tensor, indices: Selection, count: int,
                           make_rows: Callable[[Tensor, Tensor], Tensor], weights: Tensor,
                           internal_batch_size: int | None,
                           transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``sum_k weights[k] * grad(make_rows(k, b))`` per sample ``b``, over ``count`` values of ``k``
    (``transform(grad)`` in place of ``grad`` when given, e.g. its square).

    The ``count * B`` rows (row ``r`` is step ``r // B`` of sample ``r % B``) run as one batch, or in
    chunks of ``internal_batch_size`` rows; only one chunk of inputs exists at a time.
    """
    batch = x.shape[0]
    total = count * batch
    chunk = internal_batch_size or total
    result = torch.zeros_like(x)
    trailing = (1,) * (x.dim() - 1)
    for start in range(0, total, chunk):
        rows = torch.arange(start, min(start + chunk, total), device=x.device)
        step, sample = rows // batch, rows % batch
        grads = _input_gradient(propagator, make_rows(step, sample), indices[sample])
        if transform is not None:
            grads = transform(grads)
        result.index_add_(0, sample, grads * weights[step].view(-1, *trailing))
    return result


# -- gradient and input x gradient -------------------------------------------------------------------
@register_method("gradient", "Gradient of the target logit w.r.t. the input (Simonyan et al. 2014 [Simonyan2014-Saliency]); signed, no abs")
def gradient(model: nn.Module, x: Tensor, target: Target) -> Attribution:
    """Vanilla gradient ``d y_target / d x`` (saliency of Simonyan, Vedaldi & Zisserman, *Deep Inside
    Convolutional Networks*, ICLR workshop 2014), signed: unlike the paper's saliency map and Captum's
    ``Saliency(abs=True)`` default, no absolute value is taken."""
    return Attribution(_input_gradient(checked_propagator(model, x), x, target))


@register_method("input-x-gradient", "Input times gradient of the target logit (Shrikumar et al. 2016 [Shrikumar2016-GxI])")
def input_x_gradient(model: nn.Module, x: Tensor, target: Target) -> Attribution:
    """``x * d y_target / d x`` (Shrikumar et al., *Not Just a Black Box*, 2016 [Shrikumar2016-GxI]; Ancona et al., ICLR 2018 [Ancona2018-Gradients])."""
    return Attribution(x * gradient(model, x, target).relevance)


# -- integrated gradients ----------------------------------------------------------------------------
def integration_points(steps: int, integration: str = "riemann_right") -> tuple[Tensor, Tensor]:
    """Points ``alpha_k`` in [0, 1] and weights ``w_k`` (float64, summing to 1) of the path integral.

    As Captum's, except ``riemann_trapezoid``: relprop's weights are ``1/(n-1)``, halved at both ends
    (the trapezoid rule on ``linspace(0, 1, n)``); Captum 0.9 uses ``1/n`` there, summing to ``(n-1)/n``.
    """
    steps = _positive_int("steps", steps)
    n = float(steps)
    method = integration
    if method == "riemann_right":
        alphas = torch.arange(1, steps + 1, dtype=torch.float64) / n
    elif method == "riemann_left":
        alphas = torch.arange(0, steps, dtype=torch.float64) / n
    elif method == "riemann_middle":
        alphas = (torch.arange(0, steps, dtype=torch.float64) + 0.5) / n
    elif method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs steps >= 2")
        alphas = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        weights = torch.full((steps,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
        return alphas, weights
    elif method == "gausslegendre":
        import numpy as np

        nodes, w = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1.0)), torch.from_numpy(0.5 * w)
    else:
        raise ValueError(f"unknown integration {method!r}; choose one of {', '.join(IG_METHODS)}")
    return alphas, torch.full((steps,), 1.0 / n, dtype=torch.float64)


@register_method("integrated-gradients",
                 "Integrated Gradients (Sundararajan et al. 2017 [Sundararajan2017-IG]), batched over steps; baseline 0, 32 steps",
                 steps=integer(low=1), baseline=bound(none=False), integration=choice(*IG_METHODS),
                 internal_batch_size=integer(low=1, none=True))
def integrated_gradients(model: nn.Module, x: Tensor, target: Target, *,
                         steps=32, baseline=0.0, integration="riemann_right",
                         internal_batch_size=None) -> Attribution:
    """Integrated Gradients (Sundararajan, Taly & Yan, *Axiomatic Attribution for Deep Networks*,
    ICML 2017): ``(x - x') * sum_k w_k grad f(x' + alpha_k (x - x'))``, which approximates the path
    integral, so that the attributions of a sample sum to about ``f(x) - f(x')`` (completeness).

    ``baseline`` ``x'``: a number or a tensor broadcastable to ``x``. ``integration``: the quadrature,
    Captum's ``method`` (``riemann_right`` (default), ``riemann_left``, ``riemann_middle``,
    ``riemann_trapezoid``, ``gausslegendre``; named ``integration`` here because ``method`` names the
    explanation method in :func:`relprop.explain`). All ``steps * B`` interpolated inputs run as one batch, or in chunks of
    ``internal_batch_size`` rows. ``target=None`` is the class predicted at ``x``.
    """
    propagator = checked_propagator(model, x)
    _check_chunk(internal_batch_size)
    alphas, weights = integration_points(steps, integration)
    alphas, weights = alphas.to(x.device, x.dtype), weights.to(x.device, x.dtype)
    try:
        base = torch.broadcast_to(torch.as_tensor(baseline, dtype=x.dtype, device=x.device), x.shape)
    except RuntimeError as err:
        shape = tuple(torch.as_tensor(baseline).shape)
        raise ValueError(f"baseline of shape {shape} cannot be broadcast to the input {tuple(x.shape)}") from err
    x = x.detach()
    base = base.detach()
    diff = x - base
    indices = _predicted_targets(propagator, x, target)
    trailing = (1,) * (x.dim() - 1)

    def rows(step: Tensor, sample: Tensor) -> Tensor:
        return base[sample] + alphas[step].view(-1, *trailing) * diff[sample]

    return Attribution(diff * _weighted_gradient_sum(propagator, x, indices, len(alphas), rows, weights,
                                                     internal_batch_size))


# -- smoothgrad --------------------------------------------------------------------------------------
#: what SmoothGrad averages and returns: |mean gradient| (paper), mean squared gradient, mean gradient
SMOOTHGRAD_MAGNITUDES = ("absolute", "squared", "signed")


@register_method("smoothgrad", "SmoothGrad (Smilkov et al. 2017 [Smilkov2017-SmoothGrad]): |mean gradient| over 50 noisy copies, sigma 15% of "
                               "the image's range", display="positive",
                 samples=integer(low=1), noise_level=number(low=0), magnitude=choice(*SMOOTHGRAD_MAGNITUDES),
                 seed=integer(), internal_batch_size=integer(low=1, none=True), multiply_by_input=flag())
def smoothgrad(model: nn.Module, x: Tensor, target: Target, *,
               samples=50, noise_level=0.15, magnitude="absolute", seed=0,
               internal_batch_size=None, multiply_by_input=False) -> Attribution:
    """SmoothGrad (Smilkov et al., *SmoothGrad: removing noise by adding noise*, 2017 [Smilkov2017-SmoothGrad]):
    ``1/n sum_k grad f(x + eps_k)``, ``eps_k ~ N(0, sigma^2)``, ``sigma = noise_level * (max(x) - min(x))``
    per sample.

    Defaults follow the paper: ``samples=50`` ("the estimated gradient becomes smoother as the sample
    size n increases ... diminishing returns" beyond about 50), ``noise_level=0.15`` (10-20% of the
    input range works best; here the range of each image), and ``magnitude="absolute"``: the
    paper displays the absolute value of the averaged gradient. ``"squared"`` averages squared
    gradients (SmoothGrad-Squared, Hooker et al. 2019 [Hooker2019-ROAR]); ``"signed"`` returns the mean gradient itself
    (Captum's ``NoiseTunnel(Saliency(abs=False))``). A signed map summed over the colour channels
    cancels (two seeds' maps on efficientnet_lite0 correlate only 0.2-0.3 with 16 samples).

    The noise is drawn from a ``torch.Generator`` seeded with ``seed`` (on the CPU, in float64, then
    cast), once as ``samples`` standard-normal images that every sample of the batch shares (scaled
    by its own sigma): the result is deterministic, the same on every device and dtype, and a sample
    gets the same map alone as in a batch. ``multiply_by_input`` multiplies the mean gradient by the
    clean input ``x`` before the magnitude is taken (Captum's ``NoiseTunnel(InputXGradient)``
    instead averages noisy input times gradient). The ``samples * B`` noisy inputs run as one batch
    or in chunks of ``internal_batch_size`` rows. ``target=None`` is the class predicted at the
    clean ``x``.
    """
    propagator = checked_propagator(model, x)
    _check_chunk(internal_batch_size)
    samples = _positive_int("samples", samples)
    if magnitude not in SMOOTHGRAD_MAGNITUDES:
        raise ValueError(f"magnitude must be one of {SMOOTHGRAD_MAGNITUDES}, got {magnitude!r}")
    try:
        level = float(noise_level)
    except (TypeError, ValueError, RuntimeError):
        level = math.nan
    if isinstance(noise_level, bool) or not (math.isfinite(level) and level >= 0):
        raise ValueError(f"noise_level must be a non-negative number, got {noise_level!r}")
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((samples, *x.shape[1:]), generator=generator, dtype=torch.float64)
    noise = noise.to(device=x.device, dtype=x.dtype)
    x = x.detach()
    flat = x.reshape(x.shape[0], -1)
    trailing = (1,) * (x.dim() - 1)
    sigma = (level * (flat.amax(dim=1) - flat.amin(dim=1))).view(-1, *trailing)
    indices = _predicted_targets(propagator, x, target)
    weights = torch.full((samples,), 1.0 / samples, dtype=x.dtype, device=x.device)

    def rows(step: Tensor, sample: Tensor) -> Tensor:
        return x[sample] + sigma[sample] * noise[step]

    if magnitude == "squared":  # mean of (x *) grad squared
        mean = _weighted_gradient_sum(propagator, x, indices, samples, rows, weights, internal_batch_size,
                                      lambda g: g.mul(g))
        return Attribution(x * x * mean if multiply_by_input else mean)
    mean = _weighted_gradient_sum(propagator, x, indices, samples, rows, weights, internal_batch_size)
    out = x * mean if multiply_by_input else mean
    return Attribution(out.abs() if magnitude == "absolute" else out)


# -- guided backprop ---------------------------------------------------------------------------------
class _GuidedRectifier(torch.autograd.Function):
    """The rectifier's own ``output`` (of ``clamp(input, 0, upper)``), whose backward passes only
    positive gradients where the unit is active: ``grad.clamp(min=0) * (0 < input < upper)`` to
    ``input`` (guided backprop) and nothing through the original op."""

    @staticmethod
    def forward(ctx, input: Tensor, output: Tensor, upper: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(input)
        ctx.upper = upper
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (input,) = ctx.saved_tensors
        active = input > 0
        if not math.isinf(ctx.upper):
            active &= input < ctx.upper
        return grad.clamp(min=0).mul_(active), None, None


_RELU_FUNCS = {F.relu, torch.relu, F.relu_, torch.relu_, "relu", "relu_"}
_RELU6_FUNCS = {F.relu6}


def rectifier_upper(op: ops.Op) -> float | None:
    """Upper clip of a rectifier activation (inf for ReLU, 6 for ReLU6); None for other activations."""
    if isinstance(op, ops.Activation):
        module = op.module
        if isinstance(module, nn.ReLU):
            return math.inf
        if isinstance(module, nn.Hardtanh) and module.min_val == 0:  # ReLU6 and clipped ReLUs
            return float(module.max_val)
        return None
    if isinstance(op, ops.FunctionalActivation):
        try:
            if op.activation in _RELU_FUNCS:
                return math.inf
            if op.activation in _RELU6_FUNCS:
                return 6.0
        except TypeError:  # unhashable target
            return None
    return None


def _guided_activation(op: ops.Op, input: Tensor, output: Tensor) -> Tensor:
    upper = rectifier_upper(op)
    if upper is None:
        return output
    return _GuidedRectifier.apply(input, output, upper)


def _guided_gradient(propagator: Propagator, x: Tensor, target: Target) -> Tensor:
    return _input_gradient(propagator, x, target, _guided_activation)


@register_method("guided-backprop",
                 "Guided backprop (Springenberg et al. 2015 [Springenberg2015-GuidedBP]): only positive gradients through active ReLUs")
def guided_backprop(model: nn.Module, x: Tensor, target: Target) -> Attribution:
    """Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, *Striving for Simplicity:
    The All Convolutional Net*, ICLR workshop 2015): the gradient of the target logit in which every
    rectifier passes back ``grad.clamp(min=0) * (input > 0)``.

    Applies to ReLU modules and functional ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` alike (module
    hooks, as Captum uses, miss the functional ones). ReLU6 (and any ``Hardtanh`` with
    ``min_val=0``, and ``F.relu6``) passes back ``grad.clamp(min=0) * (0 < input < upper)``. Other
    activations (SiLU, GELU, LeakyReLU, sigmoid, tanh, ...) keep their ordinary gradient, as in Captum.
    """
    return Attribution(_guided_gradient(checked_propagator(model, x), x, target))


# -- grad-cam ----------------------------------------------------------------------------------------
def default_gradcam_layer(model: nn.Module, x: Tensor) -> str:
    """The node Grad-CAM uses by default for ``model`` and inputs shaped like ``x``."""
    propagator = checked_propagator(model, x)
    with torch.no_grad():
        _, kept = propagator.forward_differentiable(x, keep=feature_map_candidates(propagator))
    return pick_feature_map(kept, x, propagator)


def _gradcam_map(propagator: Propagator, x: Tensor, target: Target, layer: str | None, relu: bool,
                 interpolation: str) -> tuple[Tensor, Tensor]:
    """Upsampled Grad-CAM (B, 1, *x.shape[2:]) and the resolved targets."""
    if x.dim() < 3:
        raise ValueError(f"Grad-CAM needs inputs with spatial dimensions, got shape {tuple(x.shape)}")
    if layer is not None and not isinstance(layer, str):
        raise ValueError(f"layer must be a node or module name (a string), got {type(layer).__name__}")
    interpolation_mode(interpolation, x.dim() - 2)  # validate before the forward pass
    keep = [layer] if layer is not None else feature_map_candidates(propagator)
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, kept = propagator.forward_differentiable(leaf, keep=keep)
        indices = resolve_selection(target, logits.detach())
        name = layer if layer is not None else pick_feature_map(kept, x, propagator)
        last = holds_channels_last(propagator.graph, name)
        spatial_features(kept[name], x, name, "Grad-CAM", last)
        grads = spatial_features(gradient_or_zeros(target_score(logits, indices), kept[name]), x, name, "Grad-CAM",
                                 last)
        features = spatial_features(kept[name], x, name, "Grad-CAM", last)
    spatial = tuple(range(2, features.dim()))
    weights = grads.mean(dim=spatial, keepdim=True)            # alpha_k: global-average-pooled gradients
    cam = (weights * features).sum(dim=1, keepdim=True).detach()
    if relu:
        cam = cam.clamp(min=0)
    return upsample(cam, tuple(x.shape[2:]), interpolation), indices


@register_method("gradcam",
                 "Grad-CAM (Selvaraju et al. 2017 [Selvaraju2017-GradCAM]) at the last feature map, upsampled; cam/C in each channel",
                 layer=name(), relu=flag(), interpolation=choice(*INTERPOLATIONS), display="positive")
def gradcam(model: nn.Module, x: Tensor, target: Target, *,
            layer=None, relu=True, interpolation="bilinear") -> Attribution:
    """Grad-CAM (Selvaraju et al., *Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization*, ICCV 2017): ``cam = relu(sum_k alpha_k A_k)``, ``alpha_k = mean_hw d y_target / d A_k``,
    upsampled to the input size (``interpolation``, as ``F.interpolate``; as Captum's
    ``LayerAttribution.interpolate`` with ``align_corners=False``).

    ``layer``: a node or module name (as ``record`` takes: ``"layer4"``, ``"features.28"``, ...); the
    default is the input of the last pooling node that sees a feature map (the global average pool
    in front of the classifier), else the output of the last convolution's activation.
    ``relu=False`` keeps the signed map. The result is shaped like ``x``: every channel holds
    ``cam / C``, so that the sum over channels is the cam.
    """
    propagator = checked_propagator(model, x)
    cam, _ = _gradcam_map(propagator, x, target, layer, relu, interpolation)
    return Attribution((cam / x.shape[1]).expand_as(x).clone())


@register_method("guided-gradcam", "Guided Grad-CAM (Selvaraju et al. 2017 [Selvaraju2017-GradCAM]): guided backprop times upsampled Grad-CAM",
                 layer=name(), interpolation=choice(*INTERPOLATIONS))
def guided_gradcam(model: nn.Module, x: Tensor, target: Target, *, layer=None, interpolation="bilinear") -> Attribution:
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017 [Selvaraju2017-GradCAM]): guided backprop multiplied, pixel by pixel and
    in every channel, by the upsampled Grad-CAM (with ReLU; ``layer`` and ``interpolation`` as for
    ``gradcam``; Captum's ``GuidedGradCam`` upsamples with ``"nearest"``)."""
    propagator = checked_propagator(model, x)
    x = x.detach()
    cam, indices = _gradcam_map(propagator, x, target, layer, True, interpolation)
    return Attribution(_guided_gradient(propagator, x, indices) * cam)
