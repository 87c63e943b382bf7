"""Attribution-guided factorization (AGF; Gur, Ali & Wolf, AAAI 2021 [Gur2021-AGF]), as the authors' code
computes it (github.com/shirgur/AGFVisualization, ``modules/layers.py``).

AGF carries two streams backwards: the relevance ``R`` and the plain gradient ``g`` of the head's
output ``y^_t`` (:class:`AGFHead`). The rules here read ``g`` at their layer's output from a
mapping filled by the method before the relevance pass (:mod:`relprop.attribution.agf`).

For a convolution with input ``x``, relevance ``R`` at its output and ``m = [R != 0]``:

- ``C = |x| * |W|^T sd(R, conv(|x|, |W|) m)``, the |z| rule (Sec. 3, the "input-agnostic" term);
- ``M = relu(mean_c(x * W^T g))`` over the channels, divided by its per-sample maximum;
- ``F_x``, ``F_dx``: the factorisation of the normalised input and of ``W^T (g m)`` into the
  foreground and background that ``mean_c C`` marks (:func:`factorization`), each ReLU'd;
- ``A = |W|^T sd(R, conv(1, |W|) m)``;
- ``R' = ((F_x + M) / (1 + exp(-C)) + F_dx + A) [C != 0]``, and the output
  ``C + R' - (sum R' / #[C != 0]) [C != 0]`` keeps the sum of ``C`` (``delta_shift``).

Numerics: ``R'`` is O(1) while ``C`` has the relevance's scale, which can be many orders smaller,
and the factorisation solves nearly singular normal equations. So that float32 maps stay near the
float64 ones, the shift is computed in a form equal to the authors' in real arithmetic
(:func:`delta_shift`, :func:`delta_shift_parts`) and the factorisation in float64
(:func:`_factorization`); float64 inputs get the authors' factorisation unchanged.

``flat`` layers (the authors apply it to the 1 x 1 convolutions and to the convolutions that feed a
residual sum of ResNet) return ``C`` alone. A linear layer on a vector (B, C) returns ``C``, shifted
by ``M`` where its input is a flattened feature map; on tokens (B, T, C) or a channels-last map
(B, H, W, C) it is a 1 x 1 convolution and takes the convolution's rule, with the channels in the
last dimension and the positions between batch and channels. :class:`AGFLayerNorm` and
:class:`AGFValueMix` apply ``C`` to the linear maps of a layer norm at constant scale and of an
attention head at constant probabilities (CP-LRP, Ali et al. 2022 [Ali2022-CPLRP]).
``sd(a, b)`` is the authors' ``safe_divide``: ``a / (b + 1e-9)`` where ``b != 0``, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..numerics import reduce_to_shape
from ..ops import Affine
from .base import AffineRule, Rule, Step, _stepping

Tensor = torch.Tensor
#: the stabiliser of the authors' ``safe_divide``
AGF_EPSILON = 1e-9
#: the slope of the sigmoid that stands in for a Heaviside step in the factorisation
HEAVISIDE_SLOPE = 10.0
#: the ridge of the factorisation's least squares
RIDGE = 1.0


def agf_divide(a: Tensor, b: Tensor) -> Tensor:
    """The authors' ``safe_divide``: ``a / (b + 1e-9)`` where ``b != 0`` (a zero ``b + 1e-9`` replaced by
    1e-9), 0 where ``b == 0``."""
    den = b + AGF_EPSILON
    den = torch.where(den == 0, torch.full_like(den, AGF_EPSILON), den)
    return a / den * (b != 0)


def sample_max(t: Tensor) -> Tensor:
    """Each sample's maximum over all its entries, shaped to broadcast against ``t``."""
    return t.flatten(1).amax(dim=1).view(-1, *([1] * (t.dim() - 1)))


def centred(r: Tensor, support: Tensor) -> Tensor:
    """``(r - sum(r [S]) / #S) [S]`` per sample over the support ``S`` (``support``, 0/1 in ``r``'s
    dtype; 0 for a sample with an empty support). The mean is taken of ``r - r_0``, ``r_0`` the
    sample's largest value on ``S``: equal in real arithmetic, but the rounding then scales with the
    spread of ``r`` on ``S`` rather than with its magnitude, and a ``r`` that is constant on ``S``
    centres to exactly 0 (summing ``n`` copies of ``v`` and dividing by ``n`` need not return ``v``)."""
    dims = tuple(range(1, r.dim()))
    inside = support != 0
    lowest = torch.finfo(r.dtype).min
    reference = torch.where(inside, r, lowest).amax(dim=dims, keepdim=True)
    reference = torch.where(reference == lowest, 0.0, reference)
    offset = (r - reference) * support
    count = support.sum(dim=dims, keepdim=True).clamp(min=1)
    return (offset - offset.sum(dim=dims, keepdim=True) / count) * support


def delta_shift(c: Tensor, r: Tensor) -> Tensor:
    """``C + R - (sum R / #[C != 0]) [C != 0]`` per sample (the authors' ``delta_shift``; Gur, Ali &
    Wolf 2021 [Gur2021-AGF], Sec. 3): ``R`` added where ``C`` is nonzero, without changing the sum of
    ``C`` (no shift for a sample whose ``C`` is all zero, e.g. a zero head, where the authors' code
    divides 0 by 0). ``R`` is taken where ``C != 0`` (the authors zero it elsewhere before the shift).
    Computed as ``C + centred(R)`` (:func:`centred`): ``R`` is O(1) (the normalised ``M`` and
    factorisation terms) where ``C`` (the relevance) can be many orders smaller, and ``(C + R) - mean``
    would round ``C`` away (in float32, ``C + 1 - 1`` is 0 for ``|C| < 6e-8``; random-init
    mobilenet_v3_small, whose head's relevance is ~1e-13, gave all-zero float32 maps). Linear in
    ``R``: a sum of parts of different scales is best shifted part by part
    (:func:`delta_shift_parts`)."""
    return delta_shift_parts(c, r)


def delta_shift_parts(c: Tensor, *parts: Tensor) -> Tensor:
    """:func:`delta_shift` of ``C`` and ``sum(parts)``, each part centred on its own: equal in real
    arithmetic; the rounding of each part's centring scales with that part alone, so that a large
    part that is (nearly) constant where ``C != 0`` does not drown a small one that carries the
    signal."""
    support = (c != 0).to(c.dtype)
    out = c
    for part in parts:
        out = out + centred(part, support)
    return out


def channel_dim(channels_last: bool) -> int:
    """The channel dimension of a feature map: the last one of tokens (B, T, C) and channels-last maps
    (B, H, W, C), the input of a linear layer; dimension 1 of a channels-first map (B, C, *spatial)."""
    return -1 if channels_last else 1


def channel_mean_map(t: Tensor, channels_last: bool = False) -> Tensor:
    """``relu(mean_c t)`` broadcast over the channels, divided by its per-sample maximum (the ``M``
    term of Gur, Ali & Wolf 2021 [Gur2021-AGF], Sec. 3)."""
    m = F.relu(t.mean(dim=channel_dim(channels_last), keepdim=True)).expand_as(t)
    return agf_divide(m, sample_max(m))


def factorization(x: Tensor, gradient: Tensor, phi: Tensor,
                  channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """``(F_x, F_dx)``: the authors' ``get_factorization`` (Gur, Ali & Wolf 2021 [Gur2021-AGF], Sec. 3).
    ``phi`` (one channel) splits the positions into foreground (``phi > 0``) and background
    (``phi < 0``); for ``H = sigmoid(10 t)`` of the normalised input (``t = x / max x``) and gradient,
    the representatives ``r-``, ``r+`` (per-channel means of ``H`` over each region) form ``R``
    (C x 2); ``W = relu((R^T R + I)^-1 R^T H)``, and ``F = W+ - W-`` broadcast over the channels.
    ``channels_last``: the channels are the last dimension and the positions those between batch and
    channels (tokens, or a channels-last map)."""
    if channels_last:
        f_x, f_dx = _factorization(x.movedim(-1, 1), gradient.movedim(-1, 1), phi.movedim(-1, 1))
        return f_x.movedim(1, -1), f_dx.movedim(1, -1)
    return _factorization(x, gradient, phi)


def _factorization(x: Tensor, gradient: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`factorization` of a channels-first map (B, C, *positions), computed in float64 and
    rounded to the input's precision.

    The factorisation amplifies rounding by orders of magnitude: ``H = sigmoid(10 t)`` is near 1/2
    wherever ``|t| = |x| / max x`` is small, and so are both representatives, so ``R``'s two columns
    nearly coincide; the normal equations ``(R^T R + I) W = R^T H`` (entries ~ ``C / 4``, condition
    number ~ ``C / 2``) then take ``W+ - W-`` from differences of nearly equal numbers. In float32
    ``F_dx`` came out up to 1.4e-3 of its maximum off the float64 value (vit_b_16, the last block's
    ``mlp.3``, 3072 channels), from inputs 1e-6 apart; from the same float32 inputs, the float64
    computation is 1e-7 off. Its cost is elementwise work and a (2 x C) by (C x positions) product per
    sample, small next to the layer's own convolution."""
    if x.dtype != torch.float64:
        # Apple's MPS has no float64: there the factorisation runs on the CPU
        exact = torch.device("cpu") if x.device.type == "mps" else x.device
        f_x, f_dx = _factorization(*(t.to(exact, torch.float64) for t in (x, gradient, phi)))
        return f_x.to(x.device, x.dtype), f_dx.to(x.device, x.dtype)
    spatial = tuple(range(2, x.dim()))
    regions = []
    for part in (phi.clamp(max=0), phi.clamp(min=0)):  # background first, as the authors' code
        inside = (part != 0).to(x.dtype)
        regions.append((inside, inside.sum(dim=tuple(range(1, x.dim())), keepdim=True)))

    def factor(t: Tensor) -> Tensor:
        h = torch.sigmoid(HEAVISIDE_SLOPE * agf_divide(t, sample_max(t)))
        reps = torch.cat([agf_divide((h * inside).sum(dim=spatial, keepdim=True), count).flatten(2)
                          for inside, count in regions], dim=-1)  # (B, C, 2)
        flat = h.flatten(2)  # (B, C, positions)
        gram = reps.transpose(1, 2) @ reps + RIDGE * torch.eye(2, dtype=x.dtype, device=x.device)
        weights = F.relu(torch.linalg.solve(gram, reps.transpose(1, 2) @ flat))  # (B, 2, positions)
        weights = weights.view(x.shape[0], 2, *x.shape[2:])
        return (weights[:, 1:2] - weights[:, 0:1]).expand_as(x)

    return factor(x), factor(gradient)


@dataclass(frozen=True, eq=False)
class _GradientStream(AffineRule):
    """An affine rule that also reads the gradient stream at its layer's output."""

    #: the gradient of the head's output at each affine operation's output, by operation
    gradients: dict = field(default_factory=dict, repr=False)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        g = self.gradients.get(step.op)
        if g is None:
            raise ValueError(f"AGF: no gradient recorded at layer {step.op.path!r}")
        with _stepping(step):
            return [self.propagate(step.op, step.inputs[0], r, g, step)]

    def propagate(self, layer: Affine, x: Tensor, r: Tensor, g: Tensor, step: Step) -> Tensor:
        raise NotImplementedError


def _absolute_rule(layer: Affine, x: Tensor, r: Tensor, ones: bool = False) -> Tensor:
    """``C`` (``ones=False``: ``|x| |W|^T sd(R, layer(|x|, |W|) m)``) or ``A`` (``ones=True``: the same
    with ``x = 1``)."""
    w = layer.absolute_weight
    source = torch.ones_like(x) if ones else x.abs()
    s = agf_divide(r, layer.apply(source, w) * (r != 0))
    out = layer.transpose(s, w, x)
    return out if ones else out.mul_(source)


@dataclass(frozen=True, eq=False)
class AGFHead(_GradientStream):
    """The classifier head: ``x * dy^_t/dx`` at its input, where ``y^ = softmax(y_t exp(-((y - y_t) /
    sigma)^2 / 2))``, ``sigma = max_j |y_j - y_t|`` (the authors' ``Linear.AGF`` without a gradient
    stream); ``g`` is ``dy^_t/dy`` at the logits. The incoming relevance is not used."""

    def propagate(self, layer: Affine, x: Tensor, r: Tensor, g: Tensor, step: Step) -> Tensor:
        return layer.transpose(g, layer.weight, x).mul_(x)


@dataclass(frozen=True, eq=False)
class AGFLayer(_GradientStream):
    """AGF on a convolution or linear layer (see the module docstring; Gur, Ali & Wolf 2021
    [Gur2021-AGF], Sec. 3). A linear layer on tokens or a channels-last map takes the
    convolution's rule with the channels last. ``flat``: the operations that return ``C`` alone;
    ``feature_maps``: for a linear layer that reads a flattened feature map, that map's shape
    (without the batch), so that ``M`` is taken over its channels."""

    flat: frozenset = frozenset()
    feature_maps: dict = field(default_factory=dict, repr=False)

    def propagate(self, layer: Affine, x: Tensor, r: Tensor, g: Tensor, step: Step) -> Tensor:
        c = _absolute_rule(layer, x, r)
        if step.op in self.flat:
            return c
        if layer.layer_type == "linear" and x.dim() < 3:
            shape: Any = self.feature_maps.get(step.op)
            if shape is None:
                return c
            product = (x * layer.transpose(g, layer.weight, x)).view(x.shape[0], *shape)
            m = F.relu(product.mean(dim=1, keepdim=True)).expand_as(product).reshape(x.shape) * (c != 0)
            return delta_shift(c, agf_divide(m, sample_max(m)))
        last = layer.layer_type == "linear"  # tokens (B, T, C) or a channels-last map (B, H, W, C)
        nonzero = (r != 0).to(r.dtype)
        m = channel_mean_map(x * layer.transpose(g, layer.weight, x), last)
        phi = c.mean(dim=channel_dim(last), keepdim=True)
        f_x, f_dx = factorization(x, layer.transpose(g * nonzero, layer.weight, x), phi, last)
        a = _absolute_rule(layer, x, r, ones=True)
        # (F_x + M) sigmoid(C) + F_dx + A, with sigmoid(C) = 1/2 + tanh(C/2)/2: the O(1) part
        # (F_x + M)/2 + F_dx and the part of the relevance's scale are shifted each on its own
        # (delta_shift_parts): where C is tiny the first is nearly constant where C != 0 and its
        # centring would leave rounding of its own size, drowning the second.
        foreground = F.relu(f_x) + m
        return delta_shift_parts(c, foreground / 2 + F.relu(f_dx), foreground * torch.tanh(c / 2) / 2 + a)


@dataclass(frozen=True)
class AGFLayerNorm(Rule):
    """A layer norm under AGF: the scale ``sigma = sqrt(var(x) + eps)`` a constant, as in CP-LRP's
    LN-rule (Ali et al. 2022 [Ali2022-CPLRP]), so that ``y = D x + beta`` with
    ``D_ki = (gamma_k / sigma) (delta_ki - 1/n)`` over the ``n`` normalised values; then AGF's |z| term
    (``C``, Gur, Ali & Wolf 2021 [Gur2021-AGF], Sec. 3) on that linear map, ``beta`` ignored like the
    biases of AGF's layers: ``R(x_i) = |x_i| sum_k |D_ki| sd(R_k, sum_j |x_j| |D_kj|)``, which is
    ``|x_i| ((1 - 2/n) q_i + sum_k q_k / n)`` with ``q_k = sd(R_k, (1 - 2/n) |x_k| + sum_j |x_j| / n)``
    where ``gamma_k != 0`` (``sigma`` and ``|gamma_k|`` cancel). It conserves the relevance and is
    bounded by it: after AGF's factorisation step the relevance is not proportional to the
    activations, and the epsilon rule's ratio ``R_k / y_k`` would blow up where ``y_k`` is near 0."""

    kinds = ("layernorm",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.inputs[0]
        shape, weight, _, _ = step.op.parameters(step.args, step.kwargs)
        dims = tuple(range(-len(shape), 0))
        n = x[(0,) * (x.dim() - len(shape))].numel()
        if n < 2:
            raise ValueError(f"AGF: the layer norm {step.op.path!r} normalises a single value (its output is "
                             "its shift alone)")
        magnitude = x.abs()
        den = (1 - 2 / n) * magnitude + magnitude.sum(dims, keepdim=True) / n
        q = agf_divide(r, den)
        if weight is not None:
            q = q * (weight != 0)
        return [magnitude * ((1 - 2 / n) * q + q.sum(dims, keepdim=True) / n)]


@dataclass(frozen=True)
class AGFValueMix(Rule):
    """The attention product ``O = P V`` under AGF: the attention probabilities ``P >= 0`` are
    constants (CP-LRP's AH-rule, Ali et al. 2022 [Ali2022-CPLRP]), so ``O`` is a linear map of the
    values, and AGF's |z| term (Gur, Ali & Wolf 2021 [Gur2021-AGF], Sec. 3) runs on it:
    ``R(V_ip) = |V_ip| sum_j P_ji sd(R_jp, sum_i' P_ji' |V_i'p|)``. ``P`` gets nothing. Conservative
    and bounded by the relevance, unlike a ratio to ``O``, which is near 0 where positive and
    negative values cancel. A product without attention probabilities (``Q K^T``, which receives
    relevance only through a softmax) gets nothing."""

    kinds = ("matmul",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        attention = getattr(step.op, "attention", None)
        if attention is None:
            return [None] * len(step.inputs)
        p, v = step.inputs[attention], step.inputs[1 - attention]
        if attention == 1:  # O = V P: the same rule on O^T = P^T V^T
            p, v, r = p.transpose(-1, -2), v.transpose(-1, -2), r.transpose(-1, -2)
        magnitude = v.abs()
        c = magnitude * torch.matmul(p.transpose(-1, -2), agf_divide(r, torch.matmul(p, magnitude)))
        c = reduce_to_shape(c, v.shape)
        shares: list[Tensor | None] = [None, None]
        shares[1 - attention] = c.transpose(-1, -2) if attention == 1 else c
        return shares


__all__ = ["AGFHead", "AGFLayer", "AGFLayerNorm", "AGFValueMix", "agf_divide", "centred", "channel_dim",
           "channel_mean_map", "delta_shift", "delta_shift_parts", "factorization"]
