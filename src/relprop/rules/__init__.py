"""Relevance rules, one module per family; every rule keeps the contract of :mod:`relprop.rules.base`.

Affine layers: the LRP family (:mod:`.lrp`), RAP (:mod:`.rap`, :mod:`.rap_journal`), hedging
(:mod:`.hedge`), RSP (:mod:`.rsp`). The other operation kinds: :mod:`.structural` (activations,
reshapes, concatenation), :mod:`.pooling`, :mod:`.sums`, :mod:`.products`, :mod:`.batchnorm`,
:mod:`.transformer` (layer norm, softmax, products of two tensors), :mod:`.chefer` (Chefer et al.'s
identity and rescaled-sum rules).
"""

from .agf import AGFHead, AGFLayer
from .base import AffineRule, Rule, Step, shared_term
from .batchnorm import BatchNormEpsilon
from .chefer import RescaledSum, Unchanged
from .lrp import AlphaBeta, Contrastive, Epsilon, Flat, Gamma, Pass, WSquare, ZBox, ZPlus, ZRule
from .pooling import Proportional, ProportionalPool, WinnerTakeAll
from .products import GateProduct
from .structural import MoveBack, PassThrough, SplitConcat
from .sums import AbsoluteSum, EqualSum, ProportionalSum
from .transformer import LayerNormEpsilon, MatMulUniform, MatMulValue, SoftmaxConstant, SoftmaxTaylor

__all__ = [
    "AGFHead", "AGFLayer", "AbsoluteSum", "AffineRule", "AlphaBeta", "BatchNormEpsilon", "Contrastive", "Epsilon", "EqualSum", "Flat",
    "Gamma", "GateProduct", "LayerNormEpsilon", "MatMulUniform", "MatMulValue", "MoveBack", "Pass", "PassThrough",
    "Proportional", "ProportionalPool", "ProportionalSum", "RescaledSum", "Rule", "SoftmaxConstant", "SoftmaxTaylor", "SplitConcat",
    "Step", "Unchanged", "WSquare", "WinnerTakeAll", "ZBox", "ZPlus", "ZRule", "shared_term",
]
