"""The contract that every relevance rule keeps, for every operation kind.

A rule maps the relevance at an operation's output onto its tensor inputs. The backward
interpreter (:mod:`relprop.propagate`) hands each rule one :class:`Step`: the operation, its cached
forward values and what the trace knows about it. A rule declares the operation kinds it applies
to (``kinds``, names from :data:`relprop.ops.KINDS`); a :class:`relprop.Composite` maps operations
to rules, for every kind alike.

Rules for affine layers (linear and convolution, with a folded batch norm) derive from
:class:`AffineRule` and write only their equation, ``rule(layer, x, z, r, nonnegative)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

Tensor = torch.Tensor


@dataclass
class Step:
    """One operation of the backward pass, as its rule sees it."""

    #: the operation (:class:`relprop.ops.Op`): its forward evaluation and trace metadata
    op: Any
    #: the values of its tensor inputs, in order
    inputs: list[Tensor]
    #: its arguments and keyword arguments, as evaluated in the forward pass
    args: tuple
    kwargs: dict
    #: its output value
    output: Tensor
    #: what the operation kept from its forward pass (``Op.forward_with_state``), e.g. argmax indices
    state: Any
    #: whether every tensor input is known to be non-negative (e.g. after a ReLU)
    nonnegative: bool

    def input_vjp(self, k: int, v: Tensor) -> Tensor:
        """The operation's vector-Jacobian product for its ``k``-th tensor input, applied to ``v``."""
        return self.op.input_vjp(self.inputs, self.args, self.kwargs, k, v)


class Rule:
    """Base class of every rule: ``relevance(step, r)`` gives one entry per tensor input of the
    operation (``None`` where an input receives nothing)."""

    #: the operation kinds the rule applies to (see :data:`relprop.ops.KINDS`)
    kinds: ClassVar[tuple[str, ...]] = ()

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        raise NotImplementedError


class AffineRule(Rule):
    """A rule for an affine layer: subclasses define ``__call__(layer, x, z, r, nonnegative)``, the
    relevance at the layer input ``x`` given the relevance ``r`` at its output ``z`` (``nonnegative``:
    ``x`` is known to be non-negative, so its negative part may be skipped)."""

    kinds: ClassVar[tuple[str, ...]] = ("affine",)

    def __call__(self, layer: Any, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        raise NotImplementedError

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        return [self(step.op, step.inputs[0], step.output, r, step.nonnegative)]


__all__ = ["AffineRule", "Rule", "Step"]
