"""What a composite's rules read of the forward pass, for planning memory (:mod:`relprop.segments`).

A rule may declare that it reads no values of an operation's inputs or output, only their shapes
(:meth:`relprop.rules.Rule.reads`: a ReLU's relevance passes through unchanged, winner-take-all max
pooling needs its argmax indices, alpha-beta recomputes its own sums from the input), and how much
memory its step allocates (:meth:`relprop.rules.Rule.working_bytes`). Under a memory budget with a
known composite (:func:`rules_known`), a forward pass then keeps a shape-only placeholder
(:func:`placeholder`) where no step reads a value, and the planner counts each step's own memory.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
import torch.fx as fx

if TYPE_CHECKING:
    from .composite import Composite
    from .propagate import Propagator
    from .rules import Rule

Tensor = torch.Tensor

#: the composite of the explanation under way, when it is known before its forward pass
_COMPOSITE: contextvars.ContextVar["Composite | None"] = contextvars.ContextVar("relprop_composite", default=None)


@contextlib.contextmanager
def rules_known(composite: "Composite") -> Iterator[None]:
    """While the block runs, forward passes under a memory budget plan for ``composite``'s rules
    (the backward pass must use that composite and release the cache as it goes)."""
    token = _COMPOSITE.set(composite)
    try:
        yield
    finally:
        _COMPOSITE.reset(token)


@dataclass(frozen=True)
class Reads:
    """Per graph position: whether the value of its output is kept (some step reads it), whether its
    step is handed its argument values, and its rule (None for the model input)."""

    value: tuple[bool, ...]
    inputs: tuple[bool, ...]
    rules: tuple["Rule | None", ...]

    @property
    def key(self) -> tuple:
        """What a memory plan depends on (the values kept and the rules' working memory)."""
        return self.value, self.inputs, tuple(repr(r) for r in self.rules)


def reads_for(propagator: "Propagator") -> Reads | None:
    """What the rules of the composite under way read (None: no composite known, every value kept)."""
    composite = _COMPOSITE.get()
    if composite is None:
        return None
    nodes = propagator.graph.nodes
    assigned = propagator.rules_for(composite)
    rules = [assigned.get(id(node.op)) for node in nodes]
    flags = [(True, True) if rule is None else rule.reads(node.op) for node, rule in zip(nodes, rules)]
    value = [out for _, out in flags]
    for node, (inputs, _) in zip(nodes, flags):
        if inputs:
            for i in node.inputs:
                value[i] = True
    value[0] = value[-1] = True
    return Reads(tuple(value), tuple(inputs for inputs, _ in flags), tuple(rules))


def placeholder(t: Tensor) -> Tensor:
    """A tensor of ``t``'s shape, dtype and device that holds one zero (all strides 0)."""
    return torch.zeros((), dtype=t.dtype, device=t.device).expand(t.shape)


def blank(value: object) -> object:
    """``value`` (nested tuples, lists, dicts) with every strided tensor replaced by its placeholder."""
    return fx.node.map_aggregate(value, lambda v: placeholder(v) if isinstance(v, Tensor)
                                 and v.layout == torch.strided else v)


__all__ = ["Reads", "blank", "placeholder", "reads_for", "rules_known"]
