"""Rules for the operations of transformers: layer norm, softmax and the product of two tensors.

Two families: conservative propagation (CP-LRP, Ali et al. 2022 [Ali2022-CPLRP]) treats the
attention probabilities and the layer norm's scale as constants, so that the attention head is
linear in its values and nothing but biases absorbs relevance; AttnLRP (Achtibat et al. 2024
[Achtibat2024-AttnLRP]) propagates through the softmax by its Taylor expansion (Prop. 3.1) and
splits each product of two tensors uniformly (Prop. 3.3). Both treat the layer norm alike
(AttnLRP Prop. 3.4, CP-LRP's LN-rule). ``epsilon`` is the stabiliser of each ratio
(``z + epsilon sign(z)``, ``0/0 := 0``); ``epsilon=0`` is the plain gradient-times-input reading of
each rule, as lxt implements it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import normalize
from ..options import check_rule_field, number
from .base import Rule, Step

Tensor = torch.Tensor
_NON_NEGATIVE = number(low=0)


@dataclass(frozen=True)
class LayerNormEpsilon(Rule):
    """Layer norm with the scale ``sigma = sqrt(var(x) + eps)`` a constant (Achtibat et al. 2024
    [Achtibat2024-AttnLRP], Prop. 3.4; Ali et al. 2022 [Ali2022-CPLRP], LN-rule):
    ``y = gamma (x - mean(x)) / sigma + beta`` is then linear in ``x``.

    The affine step is an epsilon rule in which ``beta`` absorbs its share,
    ``R(n_k) = gamma_k n_k R_k / stab(y_k)`` with ``n = (x - mean(x)) / sigma``; the identity rule
    passes it through ``1 / sigma``; the centring is an epsilon rule without bias,
    ``R(x_i) = x_i sum_k (delta_ik - 1/D) R(c_k) / stab(c_k)`` with ``c = x - mean(x)`` and ``D`` the
    number of normalised values. With ``epsilon = 0``,
    ``R(x_i) = x_i sum_k (gamma_k / sigma) (delta_ik - 1/D) R_k / y_k`` and
    ``sum_i R(x_i) = sum_k (y_k - beta_k) R_k / y_k``.
    """

    kinds = ("layernorm",)

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", _NON_NEGATIVE)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.inputs[0]
        shape, _, bias, _ = step.op.parameters(step.args, step.kwargs)
        dims = tuple(range(-len(shape), 0))
        centred = x - x.mean(dims, keepdim=True)
        y = step.output
        scaled = y - bias if bias is not None else y  # gamma (x - mean(x)) / sigma
        relevance_centred = normalize(r, y, self.epsilon).mul_(scaled)
        s = normalize(relevance_centred, centred, self.epsilon)
        return [x * (s - s.mean(dims, keepdim=True))]


@dataclass(frozen=True)
class SoftmaxTaylor(Rule):
    """AttnLRP's softmax rule (Achtibat et al. 2024 [Achtibat2024-AttnLRP], Prop. 3.1): the Taylor
    expansion at the logits ``x`` with a bias, ``R(x_i) = x_i (R_i - s_i sum_j R_j)`` along the
    softmax dimension (``s`` the softmax output; infinite logits, i.e. masked ones, count as 0).

    Not conservative: ``sum_i R(x_i) = sum_j (x_j - sum_i s_i x_i) R_j``, which is not invariant to
    a shift of the logits; the rest is absorbed by the bias of the expansion."""

    kinds = ("softmax",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.inputs[0]
        x = x.masked_fill(torch.isinf(x), 0.0)
        dim = step.op.dim(step.args, step.kwargs)
        return [x * (r - step.output * r.sum(dim, keepdim=True))]


@dataclass(frozen=True)
class SoftmaxConstant(Rule):
    """CP-LRP's attention-head rule on the softmax (Ali et al. 2022 [Ali2022-CPLRP], AH-rule):
    the attention probabilities are constants, so the logits (queries and keys) receive
    no relevance."""

    kinds = ("softmax",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        return [None]


def _epsilon_shares(step: Step, r: Tensor, epsilon: float, factors: tuple[int, ...]) -> list[Tensor | None]:
    """``R(f) = f * (d O / d f)^T (R / stab(O))`` for each factor ``f`` of ``O = a @ b`` named in
    ``factors`` (the epsilon rule over the summands ``a_ji b_ip`` of ``O_jp``); None for the others."""
    s = normalize(r, step.output, epsilon)
    return [step.inputs[k] * step.input_vjp(k, s) if k in factors else None for k in range(len(step.inputs))]


@dataclass(frozen=True)
class MatMulUniform(Rule):
    """AttnLRP's rule for the product of two tensors ``O = A B`` (Achtibat et al. 2024
    [Achtibat2024-AttnLRP], Prop. 3.3): the epsilon rule over the summands, then a uniform split
    (Eq. 7): ``R(A_ji) = sum_p A_ji B_ip R_jp / (2 stab(O_jp))`` and
    ``R(B_ip) = sum_j A_ji B_ip R_jp / (2 stab(O_jp))``. Conservative up to the stabiliser."""

    kinds = ("matmul",)

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", _NON_NEGATIVE)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        shares = _epsilon_shares(step, r, self.epsilon, (0, 1))
        return [None if share is None else share.mul_(0.5) for share in shares]


@dataclass(frozen=True)
class MatMulValue(Rule):
    """CP-LRP's attention-head rule on ``O = P V`` (Ali et al. 2022 [Ali2022-CPLRP], AH-rule):
    the attention probabilities ``P`` (the factor produced by a softmax, marked at trace
    time in ``MatMul.attention``) are constants, so the product is linear in the values and the
    epsilon rule gives them everything, ``R(V_ip) = sum_j P_ji V_ip R_jp / stab(O_jp)``; ``P`` gets
    nothing. A product in which no factor is attention probabilities (e.g. ``Q K^T``) falls back to
    :class:`MatMulUniform`."""

    kinds = ("matmul",)

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        check_rule_field(self, "epsilon", _NON_NEGATIVE)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        attention = getattr(step.op, "attention", None)
        if attention is None:
            return MatMulUniform(self.epsilon).relevance(step, r)
        return _epsilon_shares(step, r, self.epsilon, (1 - attention,))


__all__ = ["LayerNormEpsilon", "MatMulUniform", "MatMulValue", "SoftmaxConstant", "SoftmaxTaylor"]
