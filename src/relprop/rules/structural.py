"""Rules for the operations that only move values: relevance goes back to where each value came from.

These operations neither create nor mix evidence, so relevance is conserved exactly: element-wise
activations and the identity pass it unchanged (Montavon et al. 2019
[Montavon2019-LRP]), reshapes, indexing and padding move it back (padded positions receive nothing),
and concatenations split it back along the concatenated dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import Rule, Step

Tensor = torch.Tensor


@dataclass(frozen=True)
class PassThrough(Rule):
    """``R_in = R_out`` for element-wise operations (activations, identity, dropout, division by a
    constant, a batch norm left unfolded as zennit's ``Pass``). An operation that changes the shape
    or dtype on the way (e.g. ``.to(dtype)``, ``expand``) moves relevance back with its own
    vector-Jacobian product; extra tensor arguments (e.g. a clamp bound) receive nothing."""

    kinds = ("identity", "activation", "scale", "batchnorm")

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        x = step.per_sample_inputs[0]  # its shape and dtype only: no value repeated per target
        if step.input_shape(0) != r.shape or x.dtype != r.dtype:
            return [step.input_vjp(0, r)]
        return [r] + [None] * (len(step.per_sample_inputs) - 1)

    def reads(self, op: Any) -> tuple[bool, bool]:
        return op.kind != "activation", False  # an activation keeps shape and dtype: r passes on

    def working_bytes(self, op: Any, out_bytes: int, in_bytes: int) -> int | None:
        return out_bytes if op.kind == "activation" else None  # the same relevance tensor


@dataclass(frozen=True)
class MoveBack(Rule):
    """Reshape, permute, indexing, slicing and constant padding: each output value is one input value
    (or a padded constant), so its relevance goes back to that input position: the operation's
    vector-Jacobian product, or a plain reshape when the values keep their order."""

    kinds = ("reshape", "getitem", "pad")

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        shape = step.input_shape(0)
        keeps_order = getattr(step.op, "keeps_order", None)
        if keeps_order is not None and r.numel() == shape.numel() and keeps_order():
            return [r.reshape(shape)]
        return [step.input_vjp(0, r)]


@dataclass(frozen=True)
class SplitConcat(Rule):
    """Concatenation: relevance is split back along the concatenated dimension; the part of a
    constant entry (e.g. a class token read from a parameter) is absorbed, as a bias's share."""

    kinds = ("concat",)

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        dim = step.op.dim(step.args, step.kwargs)
        sequence = step.op.sequence(step.args, step.kwargs)
        parts = torch.split(r, [x.shape[dim] for x in sequence], dim=dim)
        return [part for part, tensor in zip(parts, step.op.entries) if tensor]


__all__ = ["MoveBack", "PassThrough", "SplitConcat"]
