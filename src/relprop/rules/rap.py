"""Relative Attributing Propagation rules (Nam et al. 2020 [Nam2020-RAP], Eq. 5-10), as the official code computes them.

Notation (official code, github.com/wjNam/Relative_Attributing_Propagation): ``x+ = max(x, 0)``, ``w+``, ``|w-|``; ``z+_j = sum_i x+_i w+_ij``,
``z-_j = sum_i x+_i |w-_ij|``; ``sd`` divides and gives 0 where the denominator is 0 (no epsilon).
Hidden-layer inputs are post-ReLU in the models RAP was made for. A signed input (after a layer
norm, a GELU, a linear bottleneck) is split as ``x = x+ - x-`` into a layer of twice the width on a
non-negative input (:mod:`relprop.rules.signed`), so that contributions are split by their own sign.
Linear layers may act on the last dimension of tokens ``(B, T, C)`` or channels-last maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..numerics import (per_sample_sum, reduce_to_shape, report_rounding, rounding_reported, safe_divide,
                        shift_excess_)
from ..ops import Affine
from ..options import check_rule_field, choice
from .base import AffineRule, Rule, Step, rows_like, rowwise, shared_term
from .signed import on_nonnegative_input
from .transformer import MatMulUniform

Tensor = torch.Tensor


def _stacked(layer: Affine) -> Tensor:
    """``[w+; |w-|]`` stacked along the output dimension (one transposed map serves both parts)."""
    def make() -> Tensor:
        w = layer.weight
        out = w.new_empty((2 * w.shape[0], *w.shape[1:]))
        torch.clamp(w, min=0, out=out[:w.shape[0]])
        torch.clamp(w, max=0, out=out[w.shape[0]:]).neg_()
        return out
    return layer.cached("[w+;|w-|]", make)


def _positive(layer: Affine) -> Tensor:
    return _stacked(layer)[:layer.weight.shape[0]]


def _abs_negative(layer: Affine) -> Tensor:
    return _stacked(layer)[layer.weight.shape[0]:]


def _pre_activations(layer: Affine, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The denominators ``z+`` (one extra convolution), ``z-`` and ``z+ + z-`` for ``x >= 0``, with
    ``+inf`` where they are 0 (so that ``R / z`` is 0 there without a mask per target), and each
    sample's smallest nonzero denominator (shape (B,): bounds the quotients, :func:`_quotients_finite`).
    ``z-`` is ``z+ - (z - b)``, from the forward pass's own output (no second extra convolution)."""
    zp = layer.apply(x, _positive(layer))
    zn = torch.sub(zp, z)
    if layer.bias is not None:
        zn.add_(layer.broadcast_bias(z))
    zn.clamp_(min=0)
    total = torch.add(zp, zn)
    for t in (zp, zn, total):
        t.masked_fill_(t == 0, math.inf)
    dims = tuple(range(1, zp.dim()))
    smallest = torch.minimum(zp.amin(dims), zn.amin(dims)) if zp.dim() > 1 else torch.minimum(zp, zn)
    return zp, zn, total, smallest


def _quotients_finite(r: Tensor, smallest: Tensor) -> bool:
    """Whether every ``r / z`` over a denominator ``z >= smallest`` (or ``+inf``) is finite, so that no
    quotient needs the 0 that :func:`~relprop.numerics.quotient_` gives to an overflow (or to a
    non-finite ``r``); one reading of ``r`` and one transfer of the answer to the host."""
    if r.numel() == 0 or smallest.numel() == 0:
        return True
    low, high = torch.aminmax(r)
    bound = torch.maximum(-low, high)
    return bool(torch.isfinite(bound) & (bound <= smallest.min().to(r.dtype) * torch.finfo(r.dtype).max))


@dataclass(frozen=True)
class RAPOutput(AffineRule):
    """The first propagation at the output layer (Nam et al. 2020 [Nam2020-RAP], Eq. 5-6; the official code's output layer).

    The target unit's input contributions ``c_i = x_i w_ti`` receive the bias in proportion to the
    positive and negative sums, and relevance is their absolute value normalised to the logit:
    ``R_i = |c~_i| / sum_k |c~_k| * z_t``. Only the target unit (the nonzero entry of R) counts.
    """

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        if layer.layer_type != "linear" or x.dim() != 2:
            raise ValueError(f"RAP's first propagation needs a linear output layer, got {layer.path!r}")
        target = r.abs().argmax(dim=1)
        w = layer.weight[target]  # (B, in)
        b = layer.bias[target] if layer.bias is not None else torch.zeros_like(target, dtype=x.dtype)
        c = x * w
        positive = c.clamp(min=0).sum(1)
        negative = c.clamp(max=0).sum(1)
        total = positive + negative
        b_pos = safe_divide(b * positive, total)
        b_neg = safe_divide(b * negative, total)
        # the bias shares go to the units with x > 0 only, as in the official code's first_prop (its
        # Cb1, Cb2), also where the input is signed (a transformer's layer-normed class token)
        active = x > 0
        up = torch.where(active & (w > 0), c, torch.zeros_like(c))
        down = torch.where(active & (w < 0), c, torch.zeros_like(c))
        shares = safe_divide(up, up.sum(1, keepdim=True)) * b_pos[:, None] \
            + safe_divide(down, down.sum(1, keepdim=True)) * b_neg[:, None]
        tilde = (c + shares).abs()
        z_t = z.gather(1, target[:, None])
        return safe_divide(tilde, tilde.sum(1, keepdim=True)) * z_t


@dataclass(frozen=True)
class RAPHidden(AffineRule):
    """RAP for hidden linear and convolution layers (the official code's linear and convolution layers), then Psi.

    Linear: ``C_i = x+_i [sum_j w+_ij R_j / z+_j + sum_j |w-_ij| R_j / (z+_j + z-_j)]``.
    Convolution: ``C_i = x+_i [sum_j w+_ij R+_j / z+_j + sum_j |w-_ij| R-_j / z-_j
    + sum_j |w-_ij| R_j / (z+_j + z-_j)]``. Biases are ignored. ``one_by_one="abs"`` applies the
    AGF copy's rule to 1x1 convolutions: ``|x| |w|`` z-rule on the signed relevance, no Psi.
    Signed inputs are split into their positive and negative parts (:mod:`relprop.rules.signed`).
    """

    broadcasts: ClassVar[bool] = True

    one_by_one: str = "rap"

    def __post_init__(self) -> None:
        check_rule_field(self, "one_by_one", choice("rap", "abs"))

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        if self.one_by_one == "abs" and layer.unit_kernel:
            w_abs = layer.absolute_weight
            za = shared_term("rap:|x||w|", x, z, lambda x, _: layer.apply(x.abs(), w_abs))
            assert isinstance(za, Tensor)
            s = rowwise(safe_divide, r, za)
            return rowwise(Tensor.mul_, layer.transpose(s, w_abs, rows_like(x, r)), x.abs())
        return on_nonnegative_input(self._rap, layer, x, z, r, nonnegative)

    @staticmethod
    def _rap(layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        """The rule on a non-negative input ``x`` (signed ones are split, :mod:`relprop.rules.signed`)."""
        zp, zn, total, smallest = shared_term("rap:z+,z-", x, z, lambda x, z: _pre_activations(layer, x, z))
        # zero denominators are +inf (the quotient 0); where a quotient could overflow (a tiny
        # denominator) or r is not finite, the quotients are cleaned as quotient_ does (0 for those)
        clean = not _quotients_finite(r, smallest)
        # both parts' scaled relevance side by side (along the output channels: the last dimension
        # of a linear layer's input, which may hold tokens, else dimension 1), for one transposed map
        # with [w+; |w-|]
        linear = layer.layer_type == "linear"
        if linear:
            stacked = r.new_empty((*r.shape[:-1], 2, r.shape[-1]))
            to_positive, to_negative = stacked[..., 0, :], stacked[..., 1, :]
        else:
            stacked = r.new_empty((r.shape[0], 2, *r.shape[1:]))
            to_positive, to_negative = stacked[:, 0], stacked[:, 1]
        rowwise(lambda r, total, out: torch.div(r, total, out=out), r, total, to_negative)
        if linear:
            rowwise(lambda r, zp, out: torch.div(r, zp, out=out), r, zp, to_positive)
            if clean:
                stacked.nan_to_num_(0.0, 0.0, 0.0)
        else:
            # r-/z- added to r/(z+ + z-), with to_positive as scratch space, then r+/z+
            torch.clamp(r, max=0, out=to_positive)
            if clean:
                to_negative.nan_to_num_(0.0, 0.0, 0.0)
                rowwise(Tensor.div_, to_positive, zn).nan_to_num_(0.0, 0.0, 0.0)
                to_negative.add_(to_positive)
            else:
                rowwise(lambda out, t, zn: out.addcdiv_(t, zn), to_negative, to_positive, zn)
            rowwise(Tensor.div_, torch.clamp(r, min=0, out=to_positive), zp)
            if clean:
                to_positive.nan_to_num_(0.0, 0.0, 0.0)
        del total, zp, zn
        shape = rows_like(x, r)
        if layer.layer_type == "conv" and layer.groups != 1:  # stacking would mix the groups
            c = layer.transpose(to_positive, _positive(layer), shape)
            c.add_(layer.transpose(to_negative, _abs_negative(layer), shape))
        else:
            c = layer.transpose(stacked.flatten(-2) if linear else stacked.flatten(1, 2), _stacked(layer), shape)
        del to_positive, to_negative, shape
        c = rowwise(Tensor.mul_, c, x)
        # the scaled relevance is spent: its memory is the shift's scratch space where it fits
        buffer = _scratch(stacked, c)
        del stacked
        return shift_excess_(c, c.flatten(1).sum(1) - per_sample_sum(r), buffer)


def _scratch(memory: Tensor, like: Tensor) -> Tensor | None:
    """A tensor shaped and laid out like ``like`` in the memory of ``memory`` (contiguous, no longer
    needed), or None where it does not fit."""
    if not memory.is_contiguous() or memory.dtype != like.dtype or memory.numel() < like.numel():
        return None
    if like.is_contiguous():
        return memory.view(-1)[:like.numel()].view(like.shape)
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = like.shape
        return memory.view(-1)[:like.numel()].view(n, h, w, c).permute(0, 3, 1, 2)
    return None

@dataclass(frozen=True)
class RAPSum(Rule):
    """A sum ``a + b (+ c)`` under RAP. ``absolute=False``: each tensor term's share in proportion to
    its signed value, ``R_k = term_k R / sum_tensor_terms`` (the official code's residual rule, no
    stabiliser; unbounded where the terms nearly cancel). ``absolute=True``: in proportion to its
    magnitude, ``R_k = |term_k| R / sum |tensor_terms|`` (each share at most ``|R|``, as hedge's and
    rap-journal's sums), for residual streams such as a transformer's, whose terms cancel closely.
    A constant term (a positional embedding) is ignored like the biases of RAP's layers, so a single
    tensor term keeps all of ``R``. ``0/0 := 0``."""

    kinds = ("add",)

    absolute: bool = False

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        inputs = step.per_sample_inputs  # broadcast over the targets of each sample (rowwise)
        signs = step.op.signs(len(inputs))
        if len(inputs) == 1:
            return [reduce_to_shape(r if signs[0] > 0 else -r, step.input_shape(0))]
        terms = [x if sign > 0 else -x for sign, x in zip(signs, inputs)]
        if self.absolute:
            terms = [t.abs() for t in terms]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        if not self.absolute:
            _report_cancellation(step, terms, total, r)
        s = rowwise(safe_divide, r, total)
        return [reduce_to_shape(rowwise(torch.mul, t, s), step.input_shape(k)) for k, t in enumerate(terms)]


def _report_cancellation(step: Step, terms: list[Tensor], total: Tensor, r: Tensor) -> None:
    """Warn when the signed split of a sum is ill-conditioned in the float type at hand: where the
    terms nearly cancel, ``R_k = term_k R / sum`` multiplies the relevance by ``|term_k| / |sum|``,
    and the rounding of the sum (relative ``eps``) moves the map by about ``eps`` times that gain
    (the official code's rule; measured in float32: up to 26% of the map's maximum on shapes_resnet, 35% on
    efficientnet_lite0; 1e-15 in float64). Once per traced model and float type
    (:func:`~relprop.numerics.report_rounding`): the first such sum is named, the others are not
    checked again."""
    node = getattr(step.op, "fx_node", None)
    model = node.graph if node is not None else step.op
    if not total.is_floating_point() or rounding_reported(model, "signed split", total.dtype):
        return
    largest = terms[0].abs()
    for t in terms[1:]:
        largest = torch.maximum(largest, t.abs())
    gain = safe_divide(largest, total.abs())
    reached = rowwise(lambda r, g: torch.where(r != 0, g, 0), r, gain)  # where relevance arrives
    worst = float(reached.max()) if reached.numel() else 0.0
    dtype = str(total.dtype).replace("torch.", "")
    report_rounding(model, "signed split", total.dtype, worst,
                    f"the signed split of the sum at {step.op.path!r} (and perhaps of other sums of this model, "
                    f"not checked again) multiplies relevance by up to {worst:.1e} where its terms nearly cancel, "
                    f"so the {dtype} map is ill-conditioned; explain in float64 (model.double(), x.double()) for "
                    "the exact split, or split by magnitude (add='absolute')")


def has_layer_norms(graph) -> bool:
    """Whether a traced model normalises with layer norms (a transformer's or ConvNeXt's residual
    stream), where RAP's and RSP's residual sums split by magnitude (:class:`RAPSum`)."""
    return any(node.op.kind == "layernorm" for node in graph.nodes)


@dataclass(frozen=True)
class RAPValueMix(Rule):
    """The attention product ``O = P V`` under RAP: the attention probabilities ``P >= 0`` are
    constants (as in CP-LRP, Ali et al. 2022 [Ali2022-CPLRP]), so ``O`` mixes the values linearly,
    and RAP's hidden linear rule (Nam et al. 2020 [Nam2020-RAP]) runs on that mix with the values'
    signs split: ``z+_jp = sum_i P_ji V+_ip``, ``z-_jp = sum_i P_ji V-_ip``,
    ``C(V_ip) = V+_ip sum_j P_ji R_jp / z+_jp + V-_ip sum_j P_ji R_jp / (z+_jp + z-_jp)``, then the
    uniform shift Psi per sample. Its denominators are sums of non-negative terms, so unlike a ratio to
    ``O`` itself they do not blow up where positive and negative values cancel. ``P`` gets nothing; a
    product without attention probabilities (``Q K^T``) takes :class:`~relprop.rules.MatMulUniform`
    without a stabiliser."""

    kinds = ("matmul",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        attention = getattr(step.op, "attention", None)
        if attention is None:
            return MatMulUniform(0.0).relevance(step, r)
        p, v = step.inputs[attention], step.inputs[1 - attention]
        if attention == 1:  # O = V P: the same rule on O^T = P^T V^T
            p, v, r = p.transpose(-1, -2), v.transpose(-1, -2), r.transpose(-1, -2)
        dtype = v.dtype
        # in double precision: a masked probability (softmax of -100, Swin's shifted windows) is a
        # denormal in float32, and R / z+ over such a z+ would overflow; in float64 the quotient is
        # finite and meets the same tiny probabilities again, so each share stays below |R|
        p, v, r = p.double(), v.double(), r.double()
        positive, negative = v.clamp(min=0), v.clamp(max=0).neg_()
        zp, zn = torch.matmul(p, positive), torch.matmul(p, negative)
        pt = p.transpose(-1, -2)
        c = positive.mul_(torch.matmul(pt, safe_divide(r, zp)))
        c.add_(negative.mul_(torch.matmul(pt, safe_divide(r, zp.add_(zn)))))
        c = reduce_to_shape(c, v.shape)
        c = shift_excess_(c, c.flatten(1).sum(1) - per_sample_sum(r)).to(dtype)
        if attention == 1:
            c = c.transpose(-1, -2)
        shares: list[Tensor | None] = [None, None]
        shares[1 - attention] = c
        return shares


__all__ = ["RAPHidden", "RAPOutput", "RAPSum", "RAPValueMix", "has_layer_norms"]
