"""Rules for products: by a constant, or of two tensors.

A gate (a factor produced by a sigmoid or hard-sigmoid, as in squeeze-excitation) is treated as a
constant weight, so all relevance flows to the other factor (as the identity rule for gated
activations of Arras et al. 2017 [Arras2017-LSTM]). Two factors without a gate share the relevance
equally, each half summed back to its factor's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import reduce_to_shape
from .base import Rule, Step

Tensor = torch.Tensor


@dataclass(frozen=True)
class GateProduct(Rule):
    """Product with a constant: relevance passes; gated product: all to the gated factor; product
    of two ungated tensors: half each."""

    kinds = ("multiply",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        inputs = step.inputs
        if len(inputs) == 1:  # product with a constant
            return [r]
        if len(inputs) != 2:
            return [r / len(inputs)] * len(inputs)
        gate = step.op.gate
        if gate is None:
            return [reduce_to_shape(r / 2, x.shape) for x in inputs]
        out: list[Tensor | None] = [None, None]
        out[1 - gate] = reduce_to_shape(r, inputs[1 - gate].shape)
        return out


__all__ = ["GateProduct"]
