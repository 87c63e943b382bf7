"""Numerical building blocks shared by the rules, the methods and the engine, one home each.

Stabilised and safe division (LRP's ``0/0 := 0`` convention), per-sample sums, the uniform shift
of relevance over the nonzero units, sums over broadcast dimensions, and the vector-Jacobian
product of an operation that is linear in its input.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch

Tensor = torch.Tensor

#: stabiliser of the proportional rules for pooling and sums (as zennit's ``Norm``)
NORM_EPSILON = 1e-6

#: the share of a map's values that float rounding may move them by, past which an ill-conditioned
#: computation is reported (:func:`report_rounding`)
ROUNDING_REPORTED = 1e-3
#: what has been reported so far: per traced model (its graph), the (computation, float type) pairs
_ROUNDING_SEEN: "weakref.WeakKeyDictionary[object, set]" = weakref.WeakKeyDictionary()


def rounding_reported(model_key: object, what: str, dtype: torch.dtype) -> bool:
    """Whether :func:`report_rounding` has reported ``what`` for this model (``model_key``: its traced
    graph) and float type already: the caller may then skip its conditioning check."""
    return (what, dtype) in _ROUNDING_SEEN.get(model_key, ())


def report_rounding(model_key: object, what: str, dtype: torch.dtype, gain: float, message: str) -> bool:
    """Warn (``RuntimeWarning``, once per model, computation and float type) when rounding in
    ``dtype`` may move a result by more than :data:`ROUNDING_REPORTED` of its size: ``gain`` is the
    factor by which the computation amplifies a relative rounding error (its condition number), so the
    result may move by about ``eps * gain``. ``message`` names the place and the remedy; the estimate
    is appended. Returns whether it warned."""
    if not dtype.is_floating_point or rounding_reported(model_key, what, dtype):
        return False
    moved = gain * torch.finfo(dtype).eps
    if not moved > ROUNDING_REPORTED:
        return False
    _ROUNDING_SEEN.setdefault(model_key, set()).add((what, dtype))
    warnings.warn(f"{message} (in {str(dtype).replace('torch.', '')}, rounding alone may move it by about "
                  f"{moved:.0e} of its size or more; reported once per model and float type)",
                  RuntimeWarning, stacklevel=3)
    return True


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 2)."""
    if epsilon == 0:
        return z
    plus = torch.tensor(epsilon, dtype=z.dtype, device=z.device)
    # epsilon with the sign of z + 0 (-0 + 0 = +0, so sign(-0) = +1 too), in one new tensor;
    # several times faster than torch.where on large tensors
    out = torch.add(z, 0.0)
    if torch.is_grad_enabled() and z.requires_grad:  # out= does not record gradients
        return torch.copysign(plus, out) + z
    return torch.copysign(plus, out, out=out).add_(z)


def normalize(r: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``r / stabilize(z, epsilon)``; with ``epsilon = 0``, ``r / z`` with ``0/0 := 0``."""
    if epsilon == 0:
        return safe_divide(r, z)
    denominator = stabilize(z, epsilon)
    if denominator.shape != r.shape or denominator.dtype != r.dtype:
        return r / denominator
    return torch.div(r, denominator, out=denominator)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 where the denominator is exactly 0 (LRP-0 convention).

    Differentiable where autograd is recording (the gradient stays finite at a zero denominator)."""
    zero = denominator == 0
    if torch.is_grad_enabled() and (numerator.requires_grad or denominator.requires_grad):
        return torch.where(zero, torch.zeros((), dtype=numerator.dtype, device=numerator.device),
                           numerator / torch.where(zero, torch.ones_like(denominator), denominator))
    return torch.div(numerator, denominator).masked_fill_(zero, 0)


def quotient_(numerator: Tensor, denominator: Tensor, out: Tensor | None = None) -> Tensor:
    """:func:`safe_divide` for non-negative denominators, written into ``out`` (default: ``numerator``).

    The infinities and NaNs of a division by zero are replaced by 0 in one pass, which is faster
    than masking; with a denominator that is a sum of non-negative terms, a nonzero one gives a
    finite quotient."""
    return torch.div(numerator, denominator, out=numerator if out is None else out).nan_to_num_(0.0, 0.0, 0.0)


def per_sample_sum(t: Tensor, keepdim: bool = False) -> Tensor:
    """Sum over every dimension but the first: shape (B,), or (B, 1, ..., 1) with ``keepdim``."""
    if t.dim() == 1:
        return t
    # not flatten(1): that copies a channels-last tensor
    return t.sum(tuple(range(1, t.dim())), keepdim=keepdim)


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """A (B,) tensor viewed as (B, 1, ..., 1) to broadcast against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def shift_excess_(c: Tensor, excess: Tensor, buffer: Tensor | None = None) -> Tensor:
    """The uniform shift Psi (Nam et al. 2020 [Nam2020-RAP], Eq. 8-9) in place: subtract
    ``excess / #nonzero`` (``excess`` of shape (B,)) from every nonzero entry of ``c``, per sample;
    ``c`` is overwritten and returned (``buffer``: scratch space like ``c``)."""
    # a 0/1 mask in c's dtype: faster to count and to apply than a boolean one
    nonzero = torch.ne(c, 0, out=torch.empty_like(c) if buffer is None else buffer)
    dims = tuple(range(1, c.dim()))
    if c[0].numel() <= 2.0 / torch.finfo(c.dtype).eps:  # counting in c's dtype is exact
        count = nonzero.sum(dims)
    else:
        count = torch.count_nonzero(c, dim=dims).to(c.dtype)
    shift = per_sample(safe_divide(excess, count), c)
    return c.addcmul_(nonzero, shift, value=-1)


def uniform_shift(c: Tensor, total: Tensor) -> Tensor:
    """Psi (Nam et al. 2020 [Nam2020-RAP], Eq. 8-9): subtract ``(sum c - total) / #nonzero`` from
    every nonzero entry, per sample, so that each sample's relevance sums to ``total`` (shape (B,))."""
    return shift_excess_(c.clone(), per_sample_sum(c) - total)


def reduce_to_shape(r: Tensor, shape: torch.Size) -> Tensor:
    """Sum relevance over broadcast dimensions so that it has ``shape``."""
    if r.shape == shape:
        return r
    while r.dim() > len(shape):
        r = r.sum(0)
    dims = [i for i, (a, b) in enumerate(zip(r.shape, shape)) if b == 1 and a != 1]
    return r.sum(dim=dims, keepdim=True) if dims else r


def vjp(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """Vector-Jacobian product ``v^T d fn(x) / dx`` for an operation linear in ``x`` (or piecewise)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = fn(leaf)
    return torch.autograd.grad(out, leaf, v)[0]


__all__ = ["NORM_EPSILON", "normalize", "per_sample", "per_sample_sum", "quotient_", "reduce_to_shape",
           "safe_divide", "shift_excess_", "stabilize", "uniform_shift", "vjp"]
