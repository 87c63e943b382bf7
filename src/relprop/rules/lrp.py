"""The LRP rule family for affine layers (linear and convolution, with folded batch norm).

Each rule maps the relevance ``r`` at a layer's output ``z`` onto its input ``x`` (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP],
Sec. II). All rules are written as direct calls of the layer's map (``layer.apply``) and its
transpose (``layer.transpose``), never as repeated forwards through autograd; branches that are
known to be zero (the negative part of a non-negative input) are skipped.

Bias: relevance absorbed by a bias is not propagated (it is the "leak" of LRP). The parameter
conventions follow zennit so that its composites can be matched number for number: the positive
(resp. negative) part of the bias joins the positive (resp. negative) contributions of ``x+``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from ..numerics import normalize
from ..ops import Affine, is_channels_last
from .base import AffineRule, rows_like, rowwise, shared_term
from ..options import bound, check_rule_field, flag, number

Tensor = torch.Tensor
Bound = Union[float, Tensor, None]
_NON_NEGATIVE = number(low=0)


def _parts(layer: Affine) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Positive and negative parts of the effective weight and bias (cached per layer)."""
    return layer.positive_weight, layer.negative_weight, layer.positive_bias, layer.negative_bias


def _split(x: Tensor, nonnegative: bool) -> tuple[Tensor, Tensor | None]:
    """``(x+, x-)``; ``x-`` is None when ``x`` is known to be non-negative."""
    if nonnegative:
        return x, None
    return x.clamp(min=0), x.clamp(max=0)


@dataclass(frozen=True)
class Epsilon(AffineRule):
    """LRP-epsilon: ``R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j`` (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 2).

    ``epsilon=0`` is LRP-0 (the z rule, Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP] Eq. 1) with ``0/0 := 0``.
    """

    spatially_local: ClassVar[bool] = True  # per output position: r, z there and its input window
    broadcasts: ClassVar[bool] = True

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", _NON_NEGATIVE)

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        s = rowwise(lambda r, z: normalize(r, z, self.epsilon), r, z)
        return rowwise(Tensor.mul_, layer.transpose(s, layer.weight, rows_like(x, r)), x)


def ZRule() -> Epsilon:
    """LRP-0 (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 1)."""
    return Epsilon(0.0)


@dataclass(frozen=True)
class AlphaBeta(AffineRule):
    """LRP-alpha-beta, ``alpha - beta = 1`` with ``beta >= 0`` (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 3).

    Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP] write ``R_i = sum_j (alpha z+_ij / z+_j + beta z-_ij / z-_j) R_j`` with
    ``alpha + beta = 1``, i.e. its beta is the negative of ours: the paper's (alpha=2, beta=-1)
    is ``AlphaBeta(2, 1)`` here. Correct for signed inputs: positive contributions are
    ``x+ w+`` and ``x- w-`` (plus the positive bias), negative ones ``x+ w-`` and ``x- w+``.
    """

    spatially_local: ClassVar[bool] = True  # per output position: r, z there and its input window
    reads_output: ClassVar[bool] = False  # its sums are computed from x again
    broadcasts: ClassVar[bool] = True

    alpha: float = 1.0
    beta: float = 0.0
    stabilizer: float = 1e-6
    #: True: ``b+`` joins the positive and ``b-`` the negative sums (zennit); False: no bias (excitation
    #: backprop, the official CLRP code); "full": the whole signed bias joins the positive sum
    #: (iNNvestigate 1.0.8.3's Alpha1Beta0Rule, used by the official SGLRP code)
    bias: bool | str = True

    def __post_init__(self) -> None:
        if self.bias not in (True, False, "full") or type(self.bias) not in (bool, str):
            raise ValueError(f"'bias' of rule AlphaBeta must be True, False or 'full', got {self.bias!r}")
        check_rule_field(self, "alpha", number(low=1))
        check_rule_field(self, "beta", _NON_NEGATIVE)
        check_rule_field(self, "stabilizer", _NON_NEGATIVE)
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"'alpha' and 'beta' of rule AlphaBeta must satisfy alpha - beta = 1 (beta >= 0), "
                             f"got alpha={self.alpha}, beta={self.beta}")

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        wp, wn, bp, bn = _parts(layer)
        positive_sign = 1
        if self.bias == "full":
            bp, bn, positive_sign = layer.bias, None, 0
        elif not self.bias:
            bp = bn = None
        xp, xn = _split(x, nonnegative)
        result = _one_sided(layer, x, z, xp, xn, wp, wn, bp, r, self.stabilizer, sign=positive_sign)
        if self.alpha != 1:
            result.mul_(self.alpha)
        if self.beta:
            result.sub_(_one_sided(layer, x, z, xp, xn, wn, wp, bn, r, self.stabilizer, sign=-1), alpha=self.beta)
        return result


def _one_sided(layer: Affine, x: Tensor, z_out: Tensor, xp: Tensor, xn: Tensor | None, w_same: Tensor,
               w_other: Tensor, bias: Tensor | None, r: Tensor, stabilizer: float, sign: int = 0) -> Tensor:
    """Relevance of the contributions ``x+ w_same (+bias) + x- w_other``, normalised by their sum
    (``xp``, ``xn``: the parts of the layer input ``x``; ``z_out``: the layer output).

    ``sign=+1``/``-1`` says the sum is known to be >= 0 / <= 0 (alpha-beta with matching weight
    signs), so the stabiliser is a single shift; a zero sum then has zero contributions, so the
    choice of sign for exact zeros does not change the result. The sum depends on ``x`` alone: it
    is a shared term (:func:`relprop.rules.base.shared_term`).
    """
    key = f"one-sided:{id(w_same)}:{id(w_other)}:{id(bias)}:{stabilizer}:{sign}"
    z = shared_term(key, x, z_out, lambda x, _: _contributions(layer, x, xn is None, w_same, w_other, bias,
                                                               sign * stabilizer))
    assert isinstance(z, Tensor)
    s = rowwise(torch.div, r, z) if sign else rowwise(lambda r, z: normalize(r, z, stabilizer), r, z)
    out = rowwise(Tensor.mul_, layer.transpose(s, w_same, rows_like(xp, r)), xp)
    if xn is not None:
        out.add_(rowwise(Tensor.mul_, layer.transpose(s, w_other, rows_like(xn, r)), xn))
    return out


def _contributions(layer: Affine, x: Tensor, nonnegative: bool, w_same: Tensor, w_other: Tensor,
                   bias: Tensor | None, shift: float) -> Tensor:
    """``layer(x+, w_same, bias) + layer(x-, w_other) + shift``; the shift joins the bias of the first
    product (no pass over the output of its own)."""
    xp, xn = _split(x, nonnegative)
    z = layer.apply(xp, w_same, _shifted_bias(layer, w_same, bias, shift) if shift else bias)
    if xn is not None:
        z.add_(layer.apply(xn, w_other))
    return z


def _shifted_bias(layer: Affine, weight: Tensor, bias: Tensor | None, shift: float) -> Tensor:
    """``bias + shift`` for every output of ``layer``, cached with the layer's weights."""
    def make() -> Tensor:
        base = bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        return base + shift
    return layer.cached(f"shifted:{id(bias)}:{shift}", make)


def ZPlus(stabilizer: float = 1e-6) -> AlphaBeta:
    """LRP-z+ = alpha1beta0 (also right for signed inputs, as zennit's ZPlus)."""
    return AlphaBeta(1.0, 0.0, stabilizer)


@dataclass(frozen=True)
class Gamma(AffineRule):
    """Generalised LRP-gamma (Montavon et al. 2019 [Montavon2019-LRP]; Andeol et al. 2021; zennit's ``Gamma``).

    Where ``z_j > 0`` the relevance follows ``x+ (w + gamma w+) + x- (w + gamma w-)``, where
    ``z_j < 0`` it follows ``x+ (w + gamma w-) + x- (w + gamma w+)``. Biases are raised alike.
    """

    spatially_local: ClassVar[bool] = True  # per output position: r, z there and its input window
    broadcasts: ClassVar[bool] = True

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        check_rule_field(self, "gamma", _NON_NEGATIVE)
        check_rule_field(self, "stabilizer", _NON_NEGATIVE)

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        # Each contribution x_i w_ij is raised by gamma times its part of z_j's sign: (x w)+ where
        # z_j > 0, (x w)- where z_j < 0, with (x w)+- = (x w +- |x| |w|) / 2 (biases alike). With
        # sigma = sign(z) and m = |x| |W| + |b|, the raised sum is (1 + gamma/2) z + gamma/2 sigma m,
        # and the relevance (1 + gamma/2) x W^T s + gamma/2 |x| |W|^T (sigma s), s its ratio (0 where
        # z = 0): 1 product for the denominator and 2 transposed maps, for any input.
        g = self.gamma

        def terms(x: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            magnitude_of_x = x if nonnegative else x.abs()
            sign = z.sign()
            raised = layer.apply(magnitude_of_x, layer.absolute_weight, layer.absolute_bias)
            raised.mul_(sign).mul_(g / 2).add_(z, alpha=1 + g / 2)
            # an infinite denominator where z = 0, so that s = 0 there without a mask per target
            return raised.masked_fill_(sign == 0, math.inf), sign, magnitude_of_x

        raised, sign, magnitude_of_x = shared_term(f"gamma:{g}", x, z, terms)
        s = rowwise(lambda r, raised: normalize(r, raised, self.stabilizer), r, raised)
        shape = rows_like(x, r)
        signed = rowwise(Tensor.mul_, layer.transpose(s, layer.weight, shape), x)
        s = rowwise(Tensor.mul_, s, sign)
        absolute = rowwise(Tensor.mul_, layer.transpose(s, layer.absolute_weight, shape), magnitude_of_x)
        return signed.mul_(1 + g / 2).add_(absolute, alpha=g / 2)


@dataclass(frozen=True)
class Flat(AffineRule):
    """LRP-flat (LRP_b, Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP]): relevance spread uniformly over each output's receptive field.

    All weights are set to 1 and the bias to 0, and the inputs to 1: ``R_i = sum_j R_j / n_j``
    with ``n_j`` the number of inputs connected to ``j`` (fewer at padded borders).
    """

    spatially_local: ClassVar[bool] = True  # per output position: r, z there and its input window
    reads_output: ClassVar[bool] = False  # counts of ones only
    broadcasts: ClassVar[bool] = True

    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        check_rule_field(self, "stabilizer", _NON_NEGATIVE)

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        ones_w = layer.cached("ones", lambda: torch.ones_like(layer.weight))
        ones_x = torch.ones_like(x[:1])
        count = layer.apply(ones_x, ones_w)
        s = normalize(r, count, self.stabilizer)
        return layer.transpose(s, ones_w, rows_like(x, r))


@dataclass(frozen=True)
class WSquare(AffineRule):
    """LRP-w^2 (Montavon et al. 2017 [Montavon2017-DTD]): ``R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j``.

    As zennit's ``WSquare``, the squared bias joins the denominator unless ``zero_bias``.
    """

    spatially_local: ClassVar[bool] = True  # per output position: r, z there and its input window
    broadcasts: ClassVar[bool] = True

    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self) -> None:
        check_rule_field(self, "stabilizer", _NON_NEGATIVE)
        check_rule_field(self, "zero_bias", flag())

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        w2 = layer.cached("w^2", lambda: layer.weight ** 2)
        b2 = None if (self.zero_bias or layer.bias is None) else layer.cached("b^2", lambda: layer.bias ** 2)
        denom = layer.apply(torch.ones_like(x[:1]), w2, b2)
        s = normalize(r, denom, self.stabilizer)
        return layer.transpose(s, w2, rows_like(x, r))


@dataclass(frozen=True)
class ZBox(AffineRule):
    """DTD z^B rule for inputs bounded by ``low <= x <= high`` (Montavon et al. 2017 [Montavon2017-DTD]).

    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z^B_j R_j``. ``low``/``high``: numbers,
    tensors broadcastable to the input (e.g. per channel ``(1, C, 1, 1)``), or None for per-image
    bounds: the minimum and maximum of each sample (as the official RAP code does).
    """

    low: Bound = None
    high: Bound = None
    stabilizer: float = 1e-6
    bias: bool = True  #: False: no bias anywhere (the official RAP/CLRP/SGLRP input rule)

    broadcasts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_rule_field(self, "low", bound())
        check_rule_field(self, "high", bound())
        check_rule_field(self, "stabilizer", _NON_NEGATIVE)
        check_rule_field(self, "bias", flag())
        low, high = self.low, self.high
        if low is not None and high is not None and bool(torch.any(torch.as_tensor(low) > torch.as_tensor(high))):
            raise ValueError(f"'low' of rule ZBox must not exceed 'high', got low={low}, high={high}")

    def banded(self, x: Tensor) -> "ZBox | None":
        """The rule for bands of rows of ``x``: per-image bounds (None) are taken from the whole image
        once, so that every band uses the same; bounds that vary along the rows are not split (None)."""
        given = [b for b in (self.low, self.high) if isinstance(b, Tensor)]
        if x.dim() > 2 and any(b.dim() >= x.dim() - 2 and b.shape[2 - x.dim()] > 1 for b in given):
            return None
        if self.low is not None and self.high is not None:
            return self
        low, high = self._bounds(x)
        return ZBox(low, high, self.stabilizer, self.bias)

    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper bound tensors broadcast to the shape of ``x``."""
        low, high = self._bounds(x)
        return low.expand_as(x), high.expand_as(x)

    def _bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The bounds as given or per sample, broadcastable to ``x`` (not expanded)."""
        reduce_dims = tuple(range(1, x.dim()))
        view = (-1,) + (1,) * (x.dim() - 1)
        low = x.amin(dim=reduce_dims).view(view) if self.low is None else torch.as_tensor(
            self.low, dtype=x.dtype, device=x.device)
        high = x.amax(dim=reduce_dims).view(view) if self.high is None else torch.as_tensor(
            self.high, dtype=x.dtype, device=x.device)
        return low, high

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        wp, wn, bp, bn = _parts(layer)
        low, high = self._bounds(x)
        # z^B = z - layer(low, w+, b+) - layer(high, w-, b-), and z - b+ - b- = z - b
        if not self.bias:
            bias = layer.broadcast_bias(z) if layer.bias is not None else None
        else:
            bias = None if bp is None else (bp + bn if layer.layer_type == "linear" else (bp + bn).view(
                1, -1, *([1] * layer.nd)))

        def denominator(x: Tensor, z: Tensor) -> Tensor:
            low, high = self._bounds(x)
            zb = z - bias if bias is not None else z.clone()
            return _subtract_bound_response(layer, _subtract_bound_response(layer, zb, x, low, "w+", wp),
                                            x, high, "w-", wn)
        zb = shared_term(f"zbox:{self.low!r}:{self.high!r}:{self.bias}", x, z, denominator)
        assert isinstance(zb, Tensor)
        s = rowwise(lambda r, zb: normalize(r, zb, self.stabilizer), r, zb)
        del zb
        if layer.layer_type == "conv" and layer.groups == 1:
            # the three transposed maps in one call, with [W, W+, W-] stacked along the input channels
            stacked = layer.cached("[w,w+,w-]:in", lambda: torch.cat([layer.weight, wp, wn], 1))
            channels = x.shape[1]
            # the output in s's memory format (channels-last after a hedge layer): no copy inside
            fmt = torch.channels_last if is_channels_last(s) else torch.contiguous_format
            g = layer.transpose(s, stacked, torch.empty((s.shape[0], 3 * channels, *x.shape[2:]), dtype=x.dtype,
                                                        device=x.device, memory_format=fmt))
            g_w, g_p, g_n = g[:, :channels], g[:, channels:2 * channels], g[:, 2 * channels:]
        else:
            g_w, g_p, g_n = (layer.transpose(s, w, rows_like(x, s)) for w in (layer.weight, wp, wn))
        return rowwise(lambda x, g_w, low, g_p, high, g_n: x * g_w - low * g_p - high * g_n,
                       x, g_w, low, g_p, high, g_n)


def _subtract_bound_response(layer: Affine, z: Tensor, x: Tensor, bound: Tensor, key: str, w: Tensor) -> Tensor:
    """``z - layer(bound, w)`` in place, for a bound broadcast to ``x``. A bound that is one number per
    sample (or one overall) gives ``z - bound * layer(1, w)``, with the response to ones cached per shape."""
    if bound.numel() == 1 or (bound.dim() == x.dim() and all(n == 1 for n in bound.shape[1:])):
        ones = layer.cached(f"{key} ones:{tuple(x.shape[1:])}:{x.dtype}",
                            lambda: layer.apply(torch.ones_like(x[:1]), w))
        return z.addcmul_(ones, bound.reshape(-1, *([1] * (ones.dim() - 1))), value=-1)
    return z.sub_(layer.apply(bound.expand_as(x), w))


class NegatedLayer:
    """A view of an affine layer with negated weight and bias (for contrastive top layers)."""

    def __init__(self, layer: Affine) -> None:
        self._layer = layer

    def __getattr__(self, name: str):
        return getattr(self._layer, name)

    @property
    def weight(self) -> Tensor:
        return self._layer.cached("negated:weight", lambda: -self._layer.weight)

    @property
    def bias(self) -> Tensor | None:
        if self._layer.bias is None:
            return None
        return self._layer.cached("negated:bias", lambda: -self._layer.bias)

    def cached(self, key: str, make):
        return self._layer.cached("negated:" + key, make)

    # the parts of the negated weight and bias, cached under the negated keys
    positive_weight = Affine.positive_weight
    negative_weight = Affine.negative_weight
    positive_bias = Affine.positive_bias
    negative_bias = Affine.negative_bias


@dataclass(frozen=True)
class Contrastive(AffineRule):
    """``rule(W) - rule(-W)``: the target's relevance minus that of its negated "dual" unit.

    For the output layer of contrastive excitation backprop (Zhang et al. 2016 [Zhang2016-EB]) and CLRP's second
    type (Gu et al. 2018 [Gu2018-CLRP]), where the dual class uses the negated weights of the target.
    """

    rule: "AffineRule"

    def banded(self, x: Tensor) -> "Contrastive | None":
        """Local where the rule it contrasts is (:meth:`AffineRule.banded`)."""
        inner = self.rule.banded(x)
        return None if inner is None else (self if inner is self.rule else Contrastive(inner))

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        target = self.rule(layer, x, z, r, nonnegative)
        negated = NegatedLayer(layer)
        return target - self.rule(negated, x, -z, r, nonnegative)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pass(AffineRule):
    """Relevance passes unchanged (only for layers whose input and output shapes agree)."""

    def __call__(self, layer: Affine, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        if r.shape != x.shape:
            raise ValueError(f"the Pass rule needs equal input and output shapes at {layer.path!r}")
        return r


__all__ = ["AlphaBeta", "Contrastive", "Epsilon", "Flat", "Gamma", "Pass", "WSquare", "ZBox", "ZPlus", "ZRule"]
