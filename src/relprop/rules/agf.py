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

``flat`` layers (the authors apply it to the 1 x 1 convolutions and to the convolutions that feed a
residual sum of ResNet) return ``C`` alone. A linear layer returns ``C``, shifted by ``M`` where its
input is a flattened feature map. ``sd(a, b)`` is the authors' ``safe_divide``: ``a / (b + 1e-9)``
where ``b != 0``, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..ops import Affine
from .base import AffineRule, Step, _stepping

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


def delta_shift(c: Tensor, r: Tensor) -> Tensor:
    """``C + R - (sum R / #[C != 0]) [C != 0]`` per sample: ``R`` added where ``C`` is nonzero,
    without changing the sum of ``C``."""
    nonzero = (c != 0).to(c.dtype)
    dims = tuple(range(1, r.dim()))
    return c + r - r.sum(dim=dims, keepdim=True) / nonzero.sum(dim=dims, keepdim=True) * nonzero


def channel_mean_map(t: Tensor) -> Tensor:
    """``relu(mean_c t)`` broadcast over the channels, divided by its per-sample maximum."""
    m = F.relu(t.mean(dim=1, keepdim=True)).expand_as(t)
    return agf_divide(m, sample_max(m))


def factorization(x: Tensor, gradient: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """``(F_x, F_dx)``: the authors' ``get_factorization``. ``phi`` (one channel) splits the positions
    into foreground (``phi > 0``) and background (``phi < 0``); for ``H = sigmoid(10 t)`` of the
    normalised input (``t = x / max x``) and gradient, the representatives ``r-``, ``r+`` (per-channel
    means of ``H`` over each region) form ``R`` (C x 2); ``W = relu((R^T R + I)^-1 R^T H)``, and
    ``F = W+ - W-`` broadcast over the channels."""
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
    """AGF on a convolution or linear layer (see the module docstring). ``flat``: the operations
    that return ``C`` alone; ``feature_maps``: for a linear layer that reads a flattened feature
    map, that map's shape (without the batch), so that ``M`` is taken over its channels."""

    flat: frozenset = frozenset()
    feature_maps: dict = field(default_factory=dict, repr=False)

    def propagate(self, layer: Affine, x: Tensor, r: Tensor, g: Tensor, step: Step) -> Tensor:
        c = _absolute_rule(layer, x, r)
        if step.op in self.flat:
            return c
        if layer.layer_type == "linear":
            shape: Any = self.feature_maps.get(step.op)
            if shape is None:
                return c
            product = (x * layer.transpose(g, layer.weight, x)).view(x.shape[0], *shape)
            m = F.relu(product.mean(dim=1, keepdim=True)).expand_as(product).reshape(x.shape) * (c != 0)
            return delta_shift(c, agf_divide(m, sample_max(m)))
        nonzero = (r != 0).to(r.dtype)
        m = channel_mean_map(x * layer.transpose(g, layer.weight, x))
        f_x, f_dx = factorization(x, layer.transpose(g * nonzero, layer.weight, x), c.mean(dim=1, keepdim=True))
        a = _absolute_rule(layer, x, r, ones=True)
        rest = (F.relu(f_x) + m) / (1 + torch.exp(-c)) + F.relu(f_dx) + a
        return delta_shift(c, rest * (c != 0))


__all__ = ["AGFHead", "AGFLayer", "agf_divide", "delta_shift", "factorization"]
