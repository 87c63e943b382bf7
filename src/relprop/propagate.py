"""The backward interpreter: forward with cached activations, then relevance node by node in reverse.

:class:`Propagator` traces a model once (in eval mode, leaving the model's mode as it was), folds
its batch norms in relprop's own graph, and then, for every call, runs the forward pass under
``torch.no_grad`` keeping each node's arguments and output, and walks the nodes in reverse
applying each node's rule (paper 003, Sec. II: relevance is conserved layer by layer up to the
bias and stabiliser terms).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from . import ops
from .canonize import fold_batch_norms
from .composite import Composite
from .graph import Graph, trace
from .rules import AffineRule

Tensor = torch.Tensor


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@dataclass
class ForwardCache:
    """Arguments and output of every node of one forward pass."""

    args: list[tuple | None]
    kwargs: list[dict | None]
    outputs: list[Tensor | None]
    state: list[object]


class _Context:
    """What ops need during the backward pass: the rule map and per-node facts."""

    def __init__(self, propagator: "Propagator", composite: Composite) -> None:
        self.graph = propagator.graph
        self.maxpool = composite.maxpool
        self.add = composite.add
        self.batchnorm = composite.batchnorm
        self.norm_epsilon = composite.norm_epsilon
        self.epsilon_batchnorm = composite.epsilon_batchnorm
        self._rules = propagator.rules_for(composite)
        self._nonneg = {id(n.op): all(self.graph.nodes[i].nonnegative for i in n.inputs)
                        for n in self.graph.nodes}
        self._gates = propagator.gates
        self.state: object = None  # what the current node kept from its forward pass

    def rule(self, layer: ops.Affine) -> AffineRule:
        return self._rules[id(layer)]

    def nonnegative_input(self, op: ops.Op) -> bool:
        return self._nonneg[id(op)]

    def gate_index(self, op: ops.Op) -> int | None:
        return self._gates.get(id(op))


class Propagator:
    """A traced, canonized model that runs relevance propagation for any :class:`Composite`."""

    def __init__(self, model: nn.Module) -> None:
        self.model_ref = weakref.ref(model)
        with eval_mode(model):
            self.graph: Graph = trace(model)
        self.folded = fold_batch_norms(self.graph)
        self.affine = [n.op for n in self.graph.nodes if isinstance(n.op, ops.Affine)]
        self.gates = self._find_gates()

    # -- set-up -------------------------------------------------------------------------------
    def _find_gates(self) -> dict[int, int | None]:
        """For each product of two tensors, which factor is the gate (see ``ops.Multiply``)."""
        gates: dict[int, int | None] = {}
        gate_kinds = (torch.sigmoid, "sigmoid", torch.nn.functional.sigmoid, torch.nn.functional.hardsigmoid)
        for node in self.graph.nodes:
            if not isinstance(node.op, ops.Multiply) or len(node.inputs) != 2:
                continue
            found = None
            for k, i in enumerate(node.inputs):
                producer = self.graph.nodes[i].op
                if isinstance(producer, ops.Activation) and isinstance(
                        producer.module, (nn.Sigmoid, nn.Hardsigmoid)):
                    found = k
                if isinstance(producer, ops.FunctionalActivation) and producer.activation in gate_kinds:
                    found = k
            gates[id(node.op)] = found
        return gates

    def rules_for(self, composite: Composite) -> dict[int, AffineRule]:
        """The rule of every affine layer under ``composite`` (keyed by ``id`` of the layer op)."""
        return composite.assign(self.affine)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> ForwardCache:
        """Run the model through relprop's graph, keeping what the backward pass needs."""
        model = self.model_ref()
        if model is None:
            raise RuntimeError("the model of this propagator no longer exists")
        graph = self.graph
        n = len(graph.nodes)
        cache = ForwardCache([None] * n, [None] * n, [None] * n, [None] * n)
        env: dict[fx.Node, object] = {}
        with torch.no_grad(), eval_mode(model):
            for fx_node in graph.fx_graph.nodes:
                if fx_node.op == "placeholder":
                    env[fx_node] = x
                    cache.outputs[0] = x
                    continue
                args = fx.node.map_arg(fx_node.args, lambda a: env[a])
                kwargs = fx.node.map_arg(fx_node.kwargs, lambda a: env[a])
                pos = graph.position.get(fx_node)
                if fx_node.op == "output":
                    cache.outputs[pos] = args[0]
                    continue
                if pos is None:  # shape arithmetic and other non-tensor helpers
                    env[fx_node] = _evaluate(fx_node, args, kwargs, model)
                    continue
                out, cache.state[pos] = graph.nodes[pos].op.forward_with_state(args, kwargs)
                env[fx_node] = out
                cache.args[pos], cache.kwargs[pos], cache.outputs[pos] = args, kwargs, out
        return cache

    # -- backward -----------------------------------------------------------------------------
    def backward(self, cache: ForwardCache, relevance: Tensor, composite: Composite,
                 record: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Propagate ``relevance`` (shaped like the model output) back to the input.

        ``record`` names nodes (module paths or fx names) whose output relevance is returned too.
        The cache is consumed: entries are released as soon as they are no longer needed.
        """
        graph = self.graph
        ctx = _Context(self, composite)
        wanted = {graph.find(name): name for name in record}
        recorded: dict[str, Tensor] = {}
        rel: list[Tensor | None] = [None] * len(graph.nodes)
        rel[-1] = relevance
        with torch.no_grad():
            for pos in range(len(graph.nodes) - 1, 0, -1):
                r = rel[pos]
                rel[pos] = None
                if pos in wanted:
                    recorded[wanted[pos]] = r if r is not None else torch.zeros_like(cache.outputs[pos])
                node = graph.nodes[pos]
                if r is None:
                    cache.args[pos] = cache.kwargs[pos] = cache.outputs[pos] = None
                    continue
                inputs = [cache.outputs[i] for i in node.inputs]
                if pos == len(graph.nodes) - 1:
                    results: list[Tensor | None] = [r]
                else:
                    ctx.state = cache.state[pos]
                    results = node.op.relevance(inputs, cache.args[pos], cache.kwargs[pos],
                                                cache.outputs[pos], r, ctx)
                cache.args[pos] = cache.kwargs[pos] = cache.outputs[pos] = cache.state[pos] = None
                for i, ri in zip(node.inputs, results):
                    if ri is None:
                        continue
                    rel[i] = ri if rel[i] is None else rel[i] + ri
        result = rel[0] if rel[0] is not None else torch.zeros_like(cache.outputs[0])
        if 0 in wanted:
            recorded[wanted[0]] = result
        return result, recorded


def _evaluate(node: fx.Node, args: tuple, kwargs: dict, model: nn.Module) -> object:
    """Evaluate a non-tensor fx node (e.g. ``x.size(0)``) the way fx would."""
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    raise RuntimeError(f"cannot evaluate node {node.name!r} ({node.op})")


_PROPAGATORS: "weakref.WeakKeyDictionary[nn.Module, Propagator]" = weakref.WeakKeyDictionary()


def propagator_for(model: nn.Module) -> Propagator:
    """The (cached) propagator of ``model``; tracing happens once per model."""
    found = _PROPAGATORS.get(model)
    if found is None:
        found = Propagator(model)
        _PROPAGATORS[model] = found
    return found
