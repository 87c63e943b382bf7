"""Class-contrastive relevance: SGLRP, CLRP, excitation backprop and contrastive excitation backprop.

The rules underneath are deep-Taylor style: z+ without bias on every hidden and output layer
(Iwana et al. 2019 [Iwana2019-SGLRP], Eq. 1) and z^B on the input layer (Iwana et al. 2019 [Iwana2019-SGLRP], Eq. 2), with per-image bounds unless
``low``/``high`` are given. Because these rules are linear in the relevance for a fixed forward
pass, a signed initial relevance in one pass equals the difference of separate target and dual passes.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..composite import Composite, by_type, first, last
from ..numerics import per_sample_sum, safe_divide
from ..multi_target import expand_targets
from ..propagate import forward_for
from .registry import register_method
from ..options import bound, choice, flag, names
from ..rules import AffineRule, AlphaBeta, Contrastive, ZBox
from ..rules.lrp import Bound
from ..targets import Region, Target, one_hot, resolve_selection, resolve_target
from .method import Attribution

Tensor = torch.Tensor
_ALL = by_type("conv", "linear")
#: stabiliser of the z+ rules of these methods (the official CLRP code adds 1e-9)
STABILIZER = 1e-9


def _deep_taylor(name: str, low: Bound, high: Bound, bias: bool | str = False, top=None) -> Composite:
    """z^B on the input layer, z+ everywhere else; ``top`` replaces the output layer's rule."""
    zplus = AlphaBeta(1.0, 0.0, STABILIZER, bias=bias)
    rules: list = [(first(1), ZBox(low, high, STABILIZER, bias=False))]
    if top is not None:
        rules.append((last(1), top))
    rules.append((_ALL, zplus))
    return Composite(rules, name=name)


def _forward(model: nn.Module, x: Tensor, target: Target):
    """The forward pass (repeated per target for several targets per sample), its logits and the
    target of each row."""
    propagator, cache = forward_for(model, x, channels_last=True)  # LRP rules: faster so on the CPU
    cache, target = expand_targets(propagator, cache, target)
    return propagator, cache, cache.outputs[-1], target


def _region_weights(target, logits: Tensor, method: str, variant: str = "paper") -> Tensor | None:
    """For a :class:`Region` or a class of a spatial (B, C, H, W) output: 1 at the class inside the
    region, 0 elsewhere (the contrast then runs over the class axis at each selected position).
    None for one class per sample of a (B, C) output (the methods' own path)."""
    if logits.dim() == 2 and not isinstance(target, Region) and not callable(target):
        return None
    if callable(target) and not isinstance(target, (Tensor, type)):
        raise ValueError(f"method {method!r} contrasts one class against the others and cannot start "
                         "from a callable score; pass a class index or a Region")
    if variant != "paper":
        raise ValueError(f"method {method!r} with variant={variant!r} needs one class per sample of a "
                         "(batch, classes) output; use variant='paper' for a region or a spatial output")
    selection = resolve_selection(target, logits)
    assert selection.weights is not None
    return selection.weights


def _region_sglrp(logits: Tensor, weights: Tensor) -> Tensor:
    """Eq. 10 at every selected position: ``p_c (1 - p_c)`` at the class, ``-p_c p_n`` at the others
    (softmax over the class axis), zero outside the region."""
    p = logits.softmax(dim=1)
    inside = weights.sum(1, keepdim=True)
    p_c = (p * weights).sum(1, keepdim=True)
    others = 1 - weights
    rest = (p * others).sum(1, keepdim=True)  # 1 - p_c, see _softmax_gradient_over_p_t
    return inside * p_c * (weights * rest - others * p)


def _region_clrp(logits: Tensor, weights: Tensor) -> Tensor:
    """Eq. 7 at every selected position: ``z_c`` at the class, ``-z_c / (N - 1)`` at the others."""
    classes = logits.shape[1]
    if classes < 2:
        raise ValueError("CLRP needs a model with at least two classes")
    inside = weights.sum(1, keepdim=True)
    z_c = (logits * weights).sum(1, keepdim=True)
    return inside * z_c * (weights - (1 - weights) / (classes - 1))


def softmax_gradient(logits: Tensor, target: Tensor) -> Tensor:
    """d p_t / d z_n: ``p_t (1 - p_t)`` at the target, ``-p_t p_n`` elsewhere (Iwana et al. 2019 [Iwana2019-SGLRP], Eq. 10)."""
    scaled, p_t = _softmax_gradient_over_p_t(logits, target)
    return scaled * p_t


def _softmax_gradient_over_p_t(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The softmax gradient divided by ``p_t``: ``1 - p_t`` at the target, ``-p_n`` elsewhere, and
    ``p_t`` (B, 1). The propagation rules are linear in the relevance, so propagating this and
    multiplying by ``p_t`` at the end gives the same map, without the subnormal floats that a small
    ``p_t`` (an unlikely target class) would carry through every layer: they make CPU arithmetic
    10-20x slower and lose precision. ``1 - p_t`` is summed from the other classes' probabilities: a
    confident prediction has ``p_t`` rounded to 1 in float32, where ``1 - p_t`` would be 0 while the
    other entries are not, and the map that of the other classes alone."""
    p = logits.softmax(dim=1)
    index = target.view(-1, 1)
    p_t = p.gather(1, index)
    others = (-p).scatter_(1, index, 0.0)
    return others.scatter_(1, index, -others.sum(1, keepdim=True)), p_t


def _scaled(t: Tensor, factor: Tensor) -> Tensor:
    """``t * factor`` with one factor (B, 1) per sample."""
    return t * factor.view(-1, *([1] * (t.dim() - 1)))


@register_method("sglrp", multi_target=True, summary="Softmax-gradient LRP (Iwana et al. 2019 [Iwana2019-SGLRP], Eq. 9-10): softmax-gradient initial relevance, z+ / z^B",
                 variant=choice("paper", "official"), relu=flag(none=True), low=bound(), high=bound(),
                 record=names())
def sglrp(model: nn.Module, x: Tensor, target: Target, *,
          variant="paper", relu=None, low=None, high=None, record=()) -> Attribution:
    """SGLRP. ``variant="paper"``: one pass from the signed softmax gradient (Eq. 10), then
    ``max(., 0)`` (Eq. 9; ``relu=False`` keeps the signed map). ``variant="official"``: the
    authors' code: softmax over ReLU'd logits, a target pass from ``p_t (1 - p_t) + 1e-8`` and a
    dual pass from ``p_j p_t`` (classes with positive logits only), alpha1beta0 with bias on
    hidden and output layers (the full signed bias in the denominator, as iNNvestigate 1.0.8.3), output
    ``A_t - A_o * sum(A_t) / sum(A_o)`` per image, no ReLU."""
    if variant not in ("paper", "official"):
        raise ValueError(f"variant must be 'paper' or 'official', got {variant!r}")
    propagator, cache, logits, target = _forward(model, x, target)
    region = _region_weights(target, logits, "sglrp", variant)
    if region is not None:
        relevance, recorded = propagator.backward(cache, _region_sglrp(logits, region),
                                                  _deep_taylor("sglrp", low, high), record)
        return Attribution(_relu(relevance, True if relu is None else relu), recorded)
    indices = resolve_target(target, logits)
    if variant == "paper":
        composite = _deep_taylor("sglrp", low, high)
        initial, p_t = _softmax_gradient_over_p_t(logits, indices)
        relevance, recorded = propagator.backward(cache, initial, composite, record)
        recorded = {k: _scaled(v, p_t) for k, v in recorded.items()}
        return Attribution(_relu(_scaled(relevance, p_t), True if relu is None else relu), recorded)
    composite = _deep_taylor("sglrp-official", low, high, bias="full")
    positive = logits.clamp(min=0)
    p = positive.softmax(dim=1)
    p_t = p.gather(1, indices.view(-1, 1))
    active = (logits > 0).to(logits.dtype)
    target_r = one_hot(logits, indices, p_t * (1 - p_t) + 1e-8) * active
    # the dual map enters only through A_o * sum(A_t) / sum(A_o), so its scale p_t cancels: starting
    # from p_j alone (where p_t > 0) avoids subnormal floats when p_t is small (see softmax_gradient)
    dual_r = (p * (p_t > 0)).scatter(1, indices.view(-1, 1), 0.0) * active
    a_t, recorded = propagator.backward(cache, target_r, composite, record, release=False)
    a_o, recorded_dual = propagator.backward(cache, dual_r, composite, record)
    scale = safe_divide(per_sample_sum(a_t, keepdim=True), per_sample_sum(a_o, keepdim=True))
    recorded = {k: v - recorded_dual[k] * scale.view(-1, *([1] * (v.dim() - 1))) for k, v in recorded.items()}
    return Attribution(_relu(a_t - a_o * scale, False if relu is None else relu), recorded)


@register_method("clrp", multi_target=True, summary="Contrastive LRP (Iwana et al. 2019 [Iwana2019-SGLRP], Eq. 6-7): target minus uniform dual classes, z+ / z^B",
                 variant=choice("paper", "official-type1", "official-type2"), relu=flag(), low=bound(),
                 high=bound(), record=names())
def clrp(model: nn.Module, x: Tensor, target: Target, *,
         variant="paper", relu=True, low=None, high=None, record=()) -> Attribution:
    """CLRP. ``variant="paper"``: one pass from ``z_t`` at the target and ``-z_t / (N - 1)`` at every
    other class (Eq. 7), then ``max(., 0)`` (Eq. 6). ``"official-type1"``: separate passes from
    ``|z_t|`` and from the dual ``|z_j|`` (j != t), output ``A_t / sum A_t - A_d / sum A_d``.
    ``"official-type2"``: the dual pass starts from ``|z_t|`` through the negated output weights."""
    variants = ("paper", "official-type1", "official-type2")
    if variant not in variants:
        raise ValueError(f"variant must be one of {variants}, got {variant!r}")
    propagator, cache, logits, target = _forward(model, x, target)
    region = _region_weights(target, logits, "clrp", variant)
    if region is not None:
        relevance, recorded = propagator.backward(cache, _region_clrp(logits, region),
                                                  _deep_taylor("clrp", low, high), record)
        return Attribution(_relu(relevance, relu), recorded)
    indices = resolve_target(target, logits)
    index = indices.view(-1, 1)
    z_t = logits.gather(1, index)
    if variant == "paper":
        classes = logits.shape[1]
        if classes < 2:
            raise ValueError("CLRP needs a model with at least two classes")
        initial = torch.full_like(logits, 0.0) - z_t / (classes - 1)
        initial.scatter_(1, index, z_t)
        relevance, recorded = propagator.backward(cache, initial, _deep_taylor("clrp", low, high), record)
        return Attribution(_relu(relevance, relu), recorded)
    composite = _deep_taylor("clrp", low, high)
    target_r = one_hot(logits, index, z_t.abs())
    if variant == "official-type1":
        dual_r, dual_composite = logits.abs().scatter(1, index, 0.0), composite
    else:
        top = AlphaBeta(1.0, 0.0, STABILIZER, bias=False)
        dual_r = target_r
        dual_composite = _deep_taylor("clrp-type2", low, high, top=_NegatedTop(top))
    a_t, recorded = propagator.backward(cache, target_r, composite, record, release=False)
    a_d, recorded_dual = propagator.backward(cache, dual_r, dual_composite, record)
    relevance = safe_divide(a_t, per_sample_sum(a_t, keepdim=True)) - safe_divide(a_d, per_sample_sum(a_d, keepdim=True))
    recorded = {k: v - recorded_dual[k] for k, v in recorded.items()}
    return Attribution(_relu(relevance, relu), recorded)


class _NegatedTop(AffineRule):
    """Apply a rule to the output layer with negated weights (CLRP type 2's dual)."""

    def __init__(self, rule) -> None:
        self.rule = rule

    def __call__(self, layer, x, z, r, nonnegative):
        from ..rules.lrp import NegatedLayer
        return self.rule(NegatedLayer(layer), x, -z, r, nonnegative)


@register_method("excitation-backprop", multi_target=True, summary="Excitation backprop (Zhang et al. 2016 [Zhang2016-EB]): marginal winning probability, z+ without bias",
                 relu=flag(), record=names(), display="positive")
def excitation_backprop(model: nn.Module, x: Tensor, target: Target, *, relu=False, record=()) -> Attribution:
    """Marginal winning probabilities from ``P = 1`` at the target: ``P_i = sum_j x_i w+_ij /
    sum_i' x_i' w+_i'j P_j`` on every layer, no bias; signed pixels at the input are handled as
    alpha1beta0 does (``x+ w+`` and ``x- w-`` are the excitatory contributions)."""
    propagator, cache, logits, target = _forward(model, x, target)
    composite = Composite([(_ALL, AlphaBeta(1.0, 0.0, STABILIZER, bias=False))], name="excitation-backprop")
    initial = _one_hot(target, logits, "excitation-backprop")
    relevance, recorded = propagator.backward(cache, initial, composite, record)
    return Attribution(_relu(relevance, relu), recorded)


@register_method("contrastive-eb", multi_target=True, summary="Contrastive excitation backprop (Zhang et al. 2016 [Zhang2016-EB]): target MWP minus its negated-weight dual",
                 relu=flag(), record=names(), display="positive")
def contrastive_eb(model: nn.Module, x: Tensor, target: Target, *, relu=False, record=()) -> Attribution:
    """Contrastive MWP: the output layer distributes ``P = 1`` through ``W`` and through ``-W`` (the
    dual unit), and the difference travels on with excitation backprop. Signed unless ``relu``."""
    propagator, cache, logits, target = _forward(model, x, target)
    zplus = AlphaBeta(1.0, 0.0, STABILIZER, bias=False)
    composite = Composite([(last(1), Contrastive(zplus)), (_ALL, zplus)], name="contrastive-eb")
    initial = _one_hot(target, logits, "contrastive-eb")
    relevance, recorded = propagator.backward(cache, initial, composite, record)
    return Attribution(_relu(relevance, relu), recorded)


def _one_hot(target, logits: Tensor, method: str) -> Tensor:
    """``P = 1`` at the target class (inside the region for a Region or a spatial output)."""
    region = _region_weights(target, logits, method)
    if region is not None:
        return region.clone()
    indices = resolve_target(target, logits)
    return one_hot(logits, indices)


def _relu(relevance: Tensor, relu: bool) -> Tensor:
    return relevance.clamp(min=0) if relu else relevance


__all__: Sequence[str] = ["softmax_gradient"]
