"""DeepLIFT with the rescale rule (Shrikumar, Greenside & Kundaje, ICML 2017).

The input and its reference run through relprop's traced graph as one batch of ``2B`` rows; every
element-wise activation then passes back the multiplier ``(f(z) - f(z0)) / (z - z0)`` of its sample
instead of its derivative (the gradient where ``|z - z0| < 1e-7``, as the authors' code), and linear
layers pass back their weights, so that the gradient at ``x`` of the target logit is the chained
multiplier ``m`` and the attribution is ``(x - x0) * m``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..options import bound, choice, number
from .registry import register_method
from ..targets import Target, resolve_target
from ..traced_gradient import checked_propagator, gradient_or_zeros, target_score
from .method import Attribution

Tensor = torch.Tensor
REFERENCES = ("zero", "blur", "mean")
#: below this input difference the rescale rule falls back to the gradient (deeplift/util.py)
RESCALE_EPS = 1e-7


def _rescale(op: ops.Op, input: Tensor, output: Tensor) -> Tensor:
    """``output`` whose derivative with respect to ``input`` is the rescale multiplier of each
    (input, reference) pair, the first half of the batch being the inputs and the second the references."""
    half = input.shape[0] // 2
    with torch.no_grad():
        delta_in = input[:half] - input[half:]
        delta_out = output[:half] - output[half:]
        small = delta_in.abs() < RESCALE_EPS
        multiplier = delta_out / torch.where(small, torch.ones_like(delta_in), delta_in)
        small = torch.cat([small, small])
        multiplier = torch.cat([multiplier, multiplier])
    rescaled = output.detach() + multiplier * (input - input.detach())
    return torch.where(small, output, rescaled)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``x`` blurred over its spatial dimensions by a Gaussian of standard deviation ``sigma`` pixels
    (separable kernel of radius ``ceil(3 sigma)``, edges replicated); ``sigma=0`` returns ``x``."""
    if sigma <= 0 or x.dim() < 3:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype).to(x.device)
    channels = x.shape[1]
    out = x
    nd = x.dim() - 2
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = -1
        weight = kernel.view(1, 1, *shape).expand(channels, 1, *shape).contiguous()
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        out = F.pad(out, pad, mode="replicate")
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        out = conv(out, weight, groups=channels)
    return out


def deeplift_reference(x: Tensor, reference: str = "zero", baseline=None, blur_sigma: float = 5.0) -> Tensor:
    """The reference input ``x0`` shaped like ``x``: ``baseline`` (a number or a tensor broadcastable
    to ``x``) when given, else ``"zero"``, ``"blur"`` (``x`` blurred by a Gaussian of ``blur_sigma``
    pixels) or ``"mean"`` (each sample's mean over its spatial positions, per channel)."""
    if baseline is not None:
        try:
            return torch.broadcast_to(torch.as_tensor(baseline, dtype=x.dtype, device=x.device), x.shape).clone()
        except RuntimeError as err:
            shape = tuple(torch.as_tensor(baseline).shape)
            raise ValueError(f"baseline of shape {shape} cannot be broadcast to the input {tuple(x.shape)}") from err
    if reference == "zero":
        return torch.zeros_like(x)
    if reference == "blur":
        return gaussian_blur(x, blur_sigma)
    if reference == "mean":
        if x.dim() < 3:
            return x.mean(dim=1, keepdim=True).expand_as(x).clone()
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x).clone()
    raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")


@register_method("deeplift",
                 "DeepLIFT (Shrikumar et al. 2017 [Shrikumar2017-DeepLIFT]), rescale rule: multipliers from input and reference, zero reference",
                 reference=choice(*REFERENCES), baseline=bound(), blur_sigma=number(low=0))
def deeplift(model: nn.Module, x: Tensor, target: Target, *,
             reference="zero", baseline=None, blur_sigma=5.0) -> Attribution:
    """DeepLIFT with the rescale rule (Shrikumar, Greenside & Kundaje, *Learning Important Features
    Through Propagating Activation Differences*, ICML 2017): ``C = (x - x0) * m``, where the multipliers
    ``m = C / dx`` (Sec. 3.1) chain like gradients (its chain rule for multipliers), linear layers
    pass their weights back (linear rule, Sec. 3.5.1: biases get nothing) and every element-wise
    activation passes back ``(f(z) - f(z0)) / (z - z0)`` (rescale rule, Sec. 3.5.2), ``z0`` being its
    input on the reference; where ``|z - z0| < 1e-7`` the derivative ``f'(z)`` (the authors' code).
    Summation to delta (Eq. 1): ``sum C = f(x) - f(x0)`` for the target logit ``f`` on networks of
    linear layers, average pools and element-wise activations.

    Max pooling passes the multiplier back to the winner at ``x`` (the gradient: the default of the
    authors' code, ``MaxPoolDeepLiftMode.gradient``; Captum instead rescales max pools too), and so
    do other non-linear ops (products of two tensors).

    The reference ``x0``: ``baseline`` (a number or a tensor broadcastable to ``x``) when given, else
    ``reference``: ``"zero"`` (default), ``"blur"`` (Gaussian blur of ``x``, ``blur_sigma`` pixels) or
    ``"mean"`` (each sample's per-channel mean). With the zero reference on a ReLU network without
    biases this is LRP-0 (``lrp-z``) and gradient x input (Ancona et al., ICLR 2018 [Ancona2018-Gradients]).
    """
    propagator = checked_propagator(model, x)
    x = x.detach()
    x0 = deeplift_reference(x, reference, baseline, blur_sigma).detach()
    batch = x.shape[0]
    leaf = torch.cat([x, x0]).requires_grad_(True)
    with torch.enable_grad():
        logits, _ = propagator.forward_differentiable(leaf, _rescale)
        indices = resolve_target(target, logits[:batch].detach())
        multipliers = gradient_or_zeros(target_score(logits[:batch], indices), leaf)[:batch]
    return Attribution((x - x0) * multipliers)
