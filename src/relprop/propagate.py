"""The backward interpreter: forward with cached activations, then relevance node by node in reverse.

:class:`Propagator` traces a model once, folds its batch norms in relprop's own graph, and then,
for every call, runs the forward pass under ``torch.no_grad`` keeping each node's arguments and
output, and walks the nodes in reverse applying each node's rule (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. II: relevance is conserved layer by layer up to the
bias and stabiliser terms).

relprop explains the model's inference-mode function whatever its training flags: it traces and
runs an eval-mode structural copy of the module tree that shares the model's parameter and buffer
tensors (:func:`relprop.structure.inference_copy`), so it never flips the user's flags, never
updates running statistics and never runs the user's hooks. A traced propagator is reused only
while the model's structural fingerprint (:func:`relprop.structure.fingerprint`) is unchanged.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import torch
import torch.fx as fx
import torch.nn as nn

from . import ops, segments
from .canonize import fold_batch_norms, fold_zero_padding
from .composite import Composite
from .graph import Graph, registrations, trace
from .structure import check_forward_hooks, fingerprint, inference_copy, owned_objects, placeholder_parameters
from .rules import Rule, Step
from .rules.base import RepeatedStep, repeat_rows
from .checks import check_rank
from .targets import selected_output

Tensor = torch.Tensor
T = TypeVar("T")

#: the most bytes that one feature map of a backward pass over several targets per sample may hold
#: before the targets are taken in groups: 32 MiB, the largest block that glibc's allocator serves
#: from its heap by default (``M_MMAP_THRESHOLD``'s dynamic ceiling on 64-bit). Every larger block is
#: a fresh memory map that the kernel zeroes page by page on first touch, so that temporaries of
#: B x K rows cost more per row than those of the B rows of a single target; smaller groups also
#: keep the temporaries of the pass in the caches longer.
PASS_BYTES = 32 * 2**20


@dataclass
class ForwardCache:
    """Arguments and output of every node of one forward pass."""

    args: list[tuple | None]
    kwargs: list[dict | None]
    outputs: list[Tensor | None]
    state: list[object]
    #: ``(position, leaf)`` when the nodes after ``position`` were evaluated with autograd from ``leaf``
    leaf: tuple[int, Tensor] | None = None
    #: each sample appears ``repeats`` times in a row (see :meth:`Propagator.repeat`)
    repeats: int = 1
    #: the forward pass with each sample once, when ``repeats`` > 1
    base: "ForwardCache | None" = None
    #: output rows per band of the steps that the memory plan tiles, by position (:mod:`relprop.tiling`)
    bands: dict[int, int] = field(default_factory=dict)
    #: for a repeated pass, each node's output as a tensor of its shape, dtype and device whose values
    #: are not those of the pass (:meth:`Propagator.repeat`)
    stand_ins: list[object] | None = None
    #: for a repeated pass, each node's arguments and keyword arguments with stand-ins for its inputs
    stand_in_arguments: list[tuple[tuple, dict] | None] | None = None
    #: the rules' per-sample terms (:meth:`relprop.rules.Step.per_sample_term`) by position and rule,
    #: kept by a backward pass that did not release this pass, for the next one
    terms: dict[int, dict[object, dict]] | None = None

    def release(self, pos: int) -> None:
        """Free what is kept of node ``pos`` (also in the base pass)."""
        self.args[pos] = self.kwargs[pos] = self.outputs[pos] = self.state[pos] = None
        if self.stand_ins is not None:
            self.stand_ins[pos] = None
        if self.stand_in_arguments is not None:
            self.stand_in_arguments[pos] = None
        if self.base is not None:
            self.base.release(pos)

    def like(self, pos: int) -> object:
        """Node ``pos``'s output, or a tensor of its shape, dtype and device (for a repeated pass,
        whose values are made only when read)."""
        return self.stand_ins[pos] if self.stand_ins is not None else self.outputs[pos]


class OnRead:
    """One kind of value (outputs, arguments, ...) of every node of a repeated forward pass, made by
    ``make(position)`` at each reading and not kept; an entry set to None is released."""

    def __init__(self, count: int, make: Callable[[int], object]) -> None:
        self.make = make
        self.released = [False] * count

    def __len__(self) -> int:
        return len(self.released)

    def __getitem__(self, pos: int) -> object:
        pos = range(len(self.released))[pos]
        return None if self.released[pos] else self.make(pos)

    def __setitem__(self, pos: int, value: object) -> None:
        if value is not None:
            raise TypeError("the values of a repeated forward pass are made from its base pass and cannot be set")
        self.released[range(len(self.released))[pos]] = True

    def __iter__(self):
        return (self[pos] for pos in range(len(self)))


class NotBatchMajor(ValueError):
    """A forward pass whose values do not all hold the batch along their first dimension, so that it
    cannot be repeated per sample (:meth:`Propagator.repeat`)."""


class Propagator:
    """A traced, canonized model that runs relevance propagation for any :class:`Composite`."""

    def __init__(self, model: nn.Module, fold_batchnorm: bool = True, output: str | int | None = None) -> None:
        self.model_ref = weakref.ref(model)
        check_forward_hooks(model)
        module_tree = inference_copy(model)
        with placeholder_parameters(module_tree):
            self.graph: Graph = trace(module_tree, output)
        #: facts learnt about the model while using this trace (e.g. hedge's "nchw_only"); they
        #: go with the trace when the model changes
        self.notes: dict[str, object] = {}
        self.folded = fold_batch_norms(self.graph) if fold_batchnorm else 0
        fold_zero_padding(self.graph)
        self.affine = [n.op for n in self.graph.nodes if isinstance(n.op, ops.Affine)]
        #: whether all tensor inputs of each node are known to be non-negative
        self.nonnegative_inputs = [all(self.graph.nodes[i].nonnegative for i in n.inputs) for n in self.graph.nodes]

    # -- set-up -------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Match the rank of ``x`` to the first layer (e.g. 4-D for Conv2d models)."""
        first_layer = self.affine[0] if self.affine else None
        expected = first_layer.nd + 2 if first_layer is not None and first_layer.layer_type == "conv" else None
        model = self.model_ref()
        check_rank(x, expected, type(model).__name__ if model is not None else "the model")

    def rules_for(self, composite: Composite) -> dict[int, Rule]:
        """The rule of every operation under ``composite`` (keyed by ``id`` of the op)."""
        return composite.assign([n.op for n in self.graph.nodes])

    # -- the interpreter ----------------------------------------------------------------------
    def _walk(self, x: Tensor, evaluate: Callable[[int, ops.Op, tuple, dict], object],
              known: Callable[[int], object] | None = None) -> object:
        """Evaluate the traced graph on ``x`` and return its output: ``evaluate(position, op, args,
        kwargs)`` gives each node's value; ``known(position)`` may give it without evaluation (a
        cached value; None to evaluate). Shape arithmetic and other non-tensor helpers are evaluated
        as fx would."""
        model = self.model_ref()
        if model is None:
            raise RuntimeError("the model of this propagator no longer exists")
        graph = self.graph
        env: dict[fx.Node, object] = {}
        for fx_node in graph.fx_graph.nodes:
            if fx_node.op == "placeholder":
                env[fx_node] = x
                continue
            pos = graph.position.get(fx_node)
            if known is not None and pos is not None:
                value = known(pos)
                if value is not None:
                    env[fx_node] = value
                    continue
            args = fx.node.map_arg(fx_node.args, lambda a: env[a])
            if fx_node.op == "output":
                return args[0]
            kwargs = fx.node.map_arg(fx_node.kwargs, lambda a: env[a])
            if pos is None:
                env[fx_node] = _evaluate(fx_node, args, kwargs, model)
            else:
                env[fx_node] = evaluate(pos, graph.nodes[pos].op, args, kwargs)
        raise RuntimeError("the traced graph has no output")

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, differentiable_from: str | None = None,
                memory_budget: int | None = None, automatic: bool = False) -> ForwardCache:
        """Run the model through relprop's graph, keeping what the backward pass needs.

        ``differentiable_from`` names a node whose output becomes an autograd leaf: the nodes after
        it are evaluated with autograd, so that :meth:`gradient_at` at that node needs no second
        forward pass of them. With ``memory_budget`` (bytes), only the boundaries of segments that
        fit the budget are kept, and the backward pass evaluates each segment again
        (:mod:`relprop.segments`); ``automatic``: the budget is the automatic one (the whole pass is
        tried first).
        """
        n = len(self.graph.nodes)
        start = self.graph.find(differentiable_from) if differentiable_from is not None else None
        if memory_budget is not None:
            return segments.segmented_forward(self, x, start, memory_budget, automatic)  # type: ignore[return-value]
        cache = ForwardCache([None] * n, [None] * n, [None] * n, [None] * n)
        cache.outputs[0] = x

        def evaluate(pos: int, op: ops.Op, args: tuple, kwargs: dict) -> Tensor:
            with torch.set_grad_enabled(start is not None and pos > start):
                out, cache.state[pos] = op.forward_with_state(args, kwargs)
            if pos == start:
                out = out.detach().requires_grad_(True)
                cache.leaf = (pos, out)
            cache.args[pos], cache.kwargs[pos], cache.outputs[pos] = args, kwargs, out
            return out

        with torch.no_grad():
            cache.outputs[n - 1] = self._walk(x, evaluate)  # type: ignore[assignment]
        return cache

    def forward_differentiable(self, x: Tensor, activation: Callable[[ops.Op, Tensor, Tensor], Tensor] | None = None,
                               keep: Sequence[str] = (),
                               affine: Callable[[ops.Affine, Tensor], Tensor] | None = None,
                               other: Callable[[ops.Op, tuple, dict, Tensor], Tensor] | None = None,
                               ) -> tuple[Tensor, dict[str, Tensor]]:
        """Differentiable forward through relprop's graph (batch norms folded).

        ``activation(op, input, output) -> output`` may replace the value of every activation node
        (e.g. to change its gradient, as guided backprop does, also for functional ``F.relu``).
        ``affine(op, input) -> output`` may evaluate every affine node instead of its own forward
        (e.g. with another weight in the backward pass, as PatternNet does).
        ``other(op, args, kwargs, output) -> output`` may replace the value of every other node
        (neither affine nor an activation; e.g. to hold a layer norm's scale constant in the
        backward pass, as PatternNet does on transformers).
        ``keep`` names nodes whose outputs are returned too (e.g. for Grad-CAM).
        Returns the model output and ``{name: output}`` of the kept nodes.
        """
        wanted = {self.graph.find(name): name for name in keep}
        kept: dict[str, Tensor] = {}

        def evaluate(pos: int, op: ops.Op, args: tuple, kwargs: dict) -> Tensor:
            if affine is not None and isinstance(op, ops.Affine):
                out = affine(op, args[0])
            else:
                out = op.forward(args, kwargs)
            if activation is not None and op.kind == "activation":
                out = activation(op, args[0], out)
            elif other is not None and op.kind not in ("activation", "affine"):
                out = other(op, args, kwargs, out)
            if pos in wanted:
                kept[wanted[pos]] = out
            return out

        result = self._walk(x, evaluate)
        if 0 in wanted:
            kept[wanted[0]] = x
        return result, kept  # type: ignore[return-value]

    def gradient_at(self, cache: ForwardCache, name: str, output_gradient: Tensor) -> tuple[Tensor, Tensor]:
        """Value of node ``name`` and the gradient of ``<output, output_gradient>`` with respect to it.

        Only the part of the graph after the node is recomputed (with autograd), from the cached
        forward pass, which must not have been released yet.
        """
        start = self.graph.find(name)
        if cache.leaf is not None and cache.leaf[0] == start and cache.outputs[-1] is not None:
            return self._gradient_from_leaf(cache, output_gradient)
        if isinstance(cache, segments.SegmentedCache):
            return segments.segmented_gradient_at(cache, start, output_gradient)
        if cache.outputs[start] is None:
            raise RuntimeError("gradient_at needs the forward cache before any backward pass released it")
        leaf = cache.outputs[start].detach().requires_grad_(True)

        def known(pos: int) -> object:
            return leaf if pos == start else cache.outputs[pos] if pos < start else None

        with torch.enable_grad():
            result = self._walk(cache.outputs[0], lambda pos, op, args, kwargs: op.forward(args, kwargs), known)
        gradient, = torch.autograd.grad(result, leaf, output_gradient)
        return leaf.detach(), gradient

    @staticmethod
    def _gradient_from_leaf(cache: ForwardCache, output_gradient: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`gradient_at` for a forward pass that was differentiable from that node; the cache
        keeps plain (detached) values afterwards."""
        assert cache.leaf is not None
        start, leaf = cache.leaf
        output = cache.outputs[-1]
        assert output is not None
        if output.requires_grad:
            gradient, = torch.autograd.grad(output, leaf, output_gradient, allow_unused=True)
        else:
            gradient = None
        if gradient is None:  # the output does not depend on the node
            gradient = torch.zeros_like(leaf)
        cache.leaf = None

        def plain(v: object) -> object:
            return v.detach() if isinstance(v, Tensor) and v.requires_grad else v

        for pos in range(start, len(cache.outputs)):
            cache.outputs[pos] = plain(cache.outputs[pos])  # type: ignore[assignment]
            if cache.args[pos] is not None:
                cache.args[pos] = tuple(fx.node.map_aggregate(cache.args[pos], plain))
            if cache.kwargs[pos] is not None:
                cache.kwargs[pos] = dict(fx.node.map_aggregate(cache.kwargs[pos], plain))
        return cache.outputs[start], gradient  # type: ignore[return-value]

    def repeat(self, cache: ForwardCache, repeats: int) -> ForwardCache:
        """The forward pass of the batch in which each sample of ``cache`` appears ``repeats`` times
        in a row (sample ``b`` at rows ``b * repeats`` to ``b * repeats + repeats - 1``), without
        evaluating any layer: shape arithmetic is evaluated again, and each cached value is repeated
        only when read (a rule that broadcasts reads the ``base`` pass instead, see
        :class:`relprop.rules.base.RepeatedStep`). The result keeps ``cache`` as its ``base`` (for the
        rules' shared terms, :meth:`Step.shared`). A :class:`NotBatchMajor` error if a value does not
        hold the batch along its first dimension."""
        if repeats == 1:
            return cache
        if isinstance(cache, segments.SegmentedCache):
            raise NotBatchMajor("a forward pass held in segments (under a memory budget) is not repeated "
                                "per target: one target per sample at a time")
        if cache.leaf is not None or cache.outputs[0] is None:
            raise RuntimeError("repeat needs a plain forward pass that no backward pass released yet")
        batch = cache.outputs[0].shape[0]
        n = len(self.graph.nodes)
        #: for each stand-in (by id): itself (kept, so that no other tensor takes its id), and the
        #: position and order among that node's output tensors of the base value it stands for
        origin: dict[int, tuple[Tensor, int, int]] = {}
        scalars: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        stand_ins: list[object] = [None] * n
        arguments: list[tuple[tuple, dict] | None] = [None] * n

        def stand_in(value: object, pos: int | None = None) -> object:
            count = 0

            def one(t: object) -> object:
                nonlocal count
                if not isinstance(t, Tensor):
                    return t
                if t.dim() == 0 or t.shape[0] != batch:
                    raise NotBatchMajor(f"a value of shape {tuple(t.shape)} does not hold the batch of {batch} "
                                        "along its first dimension")
                scalar = scalars.setdefault((t.dtype, t.device), torch.zeros((), dtype=t.dtype, device=t.device))
                shaped = scalar.expand(batch * repeats, *t.shape[1:])
                if pos is not None:
                    origin[id(shaped)] = (shaped, pos, count)
                count += 1
                return shaped
            return fx.node.map_aggregate(value, one)

        def evaluate(pos: int, op: ops.Op, args: tuple, kwargs: dict) -> object:
            arguments[pos] = (args, kwargs)
            stand_in(cache.state[pos])  # checked to be batch-major
            stand_ins[pos] = stand_in(cache.outputs[pos], pos)
            return stand_ins[pos]

        stand_ins[0] = stand_in(cache.outputs[0], 0)
        stand_ins[n - 1] = self._walk(stand_ins[0], evaluate)  # type: ignore[arg-type]

        def rows(value: object) -> object:
            made: dict[int, Tensor] = {}

            def one(t: object) -> object:
                if not isinstance(t, Tensor):
                    return t
                if id(t) in origin:
                    _, pos, k = origin[id(t)]
                    t = _tensors(cache.outputs[pos])[k]
                if id(t) not in made:
                    made[id(t)] = repeat_rows(t.detach(), repeats)
                return made[id(t)]
            return fx.node.map_aggregate(value, one)

        def argument(which: int) -> Callable[[int], object]:
            def make(pos: int) -> object:
                entry = arguments[pos]
                return None if entry is None else rows(entry[which])
            return make

        repeated = ForwardCache(OnRead(n, argument(0)), OnRead(n, argument(1)),  # type: ignore[arg-type]
                                OnRead(n, lambda pos: rows(cache.outputs[pos])),  # type: ignore[arg-type]
                                OnRead(n, lambda pos: rows(cache.state[pos])),  # type: ignore[arg-type]
                                repeats=repeats, base=cache, stand_ins=stand_ins, stand_in_arguments=arguments)
        return repeated

    def _step(self, cache: ForwardCache, pos: int) -> Step:
        """What the rule of node ``pos`` sees of ``cache``; for a repeated pass, the K-fold values are
        made only if the rule reads them (:class:`relprop.rules.base.RepeatedStep`)."""
        node = self.graph.nodes[pos]
        nonnegative = self.nonnegative_inputs[pos]
        if cache.base is None:
            step = Step(node.op, [cache.outputs[i] for i in node.inputs], cache.args[pos],
                        cache.kwargs[pos], cache.outputs[pos], cache.state[pos], nonnegative)
            step.band_rows = cache.bands.get(pos)
            return step
        base = cache.base

        def load(name: str) -> object:
            if name == "inputs":
                return [cache.outputs[i] for i in node.inputs]
            if name == "shaped arguments":
                assert cache.stand_in_arguments is not None
                return cache.stand_in_arguments[pos]
            return {"args": cache.args, "kwargs": cache.kwargs, "output": cache.outputs,
                    "state": cache.state}[name][pos]

        return RepeatedStep(node.op, load, nonnegative, cache.repeats, [base.outputs[i] for i in node.inputs],
                            base.outputs[pos], base.state[pos], cache.bands.get(pos))  # type: ignore[arg-type]

    # -- backward -----------------------------------------------------------------------------
    def backward(self, cache: ForwardCache, relevance: Tensor, composite: Composite,
                 record: Sequence[str] = (), start: str | None = None,
                 release: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Propagate ``relevance`` back to the input.

        ``relevance`` is shaped like the model output, or like the output of node ``start`` when
        given (methods whose initial relevance lives at an inner layer). ``record`` names nodes
        (see :meth:`Graph.find`) whose output relevance is returned too. With ``release`` the cache
        is consumed (entries are freed as soon as they are no longer needed); without it, the same
        forward pass can serve several backward passes, and the rules' per-sample terms (z+
        responses, ...) are kept with it (:attr:`ForwardCache.terms`) for the next pass, whose rules
        read them where they are equal rules of the same nodes.

        Over a forward pass repeated per target (:meth:`repeat`), the walk takes every target at
        once down to the first node whose values, with the rows of every target, would be larger
        than :data:`PASS_BYTES`; from there on it takes the targets in groups
        (:func:`targets_per_pass`), one walk per group over the same forward pass, and the rules'
        per-sample terms are computed in the first and kept for the others.
        """
        graph = self.graph
        wanted = {graph.find(name): name for name in record}
        first = len(graph.nodes) - 1 if start is None else graph.find(start)
        above = [name for pos, name in wanted.items() if pos > first]
        if above:
            raise ValueError(f"cannot record {above}: this method's relevance starts at node "
                             f"{graph.nodes[first].name!r}: record that node or nodes before it")
        expected = cache.like(first)
        if isinstance(expected, Tensor) and relevance.shape != expected.shape:
            raise ValueError(
                f"initial relevance has shape {tuple(relevance.shape)}, but node "
                f"{graph.nodes[first].name!r} outputs {tuple(expected.shape)}"
            )
        rel: list[Tensor | None] = [None] * len(graph.nodes)
        rel[first] = relevance
        root = cache.base if cache.base is not None else cache
        kept = None
        if isinstance(root, ForwardCache):  # not a pass held in segments (memory budget)
            if root.terms is None and not release:
                root.terms = {}
            kept = root.terms
        return self._walk_back(cache, rel, first, self.rules_for(composite), wanted, release, kept,
                               groups=self._groups(cache, first))

    def _groups(self, cache: ForwardCache, first: int) -> tuple[int, list[tuple[int, ForwardCache]]] | None:
        """Where a walk from node ``first`` over a forward pass repeated per target goes on in groups
        of targets: the first node whose output or input, with the rows of every target, would be
        larger than :data:`PASS_BYTES`, and the first target and repeated pass of each group (made now,
        while every value of the base pass is there); None for one walk over every target."""
        if cache.base is None:
            return None
        for pos in range(first, 0, -1):
            if _largest_bytes(cache, [pos, *self.graph.nodes[pos].inputs]) > PASS_BYTES:
                group = targets_per_pass(cache, pos)
                if group >= cache.repeats:
                    return None
                starts = range(0, cache.repeats, group)
                return pos, [(k, self.repeat(cache.base, min(group, cache.repeats - k))) for k in starts]
        return None

    def _walk_back(self, cache: ForwardCache, rel: list[Tensor | None], first: int, rules: dict[int, Rule],
                   wanted: dict[int, str], release: bool, kept: dict[int, dict] | None = None,
                   groups: tuple[int, list[tuple[int, ForwardCache]]] | None = None
                   ) -> tuple[Tensor, dict[str, Tensor]]:
        """The walk of :meth:`backward` from node ``first``, with ``rel`` the relevance waiting at each
        node; it goes on in ``groups`` of targets from the node they name (:meth:`_groups`). With
        ``kept``, each step's per-sample terms are read from and stored in ``kept[position][rule]``
        (several walks over one forward pass)."""
        graph = self.graph
        recorded: dict[str, Tensor] = {}
        with torch.no_grad():
            for pos in range(first, 0, -1):
                if groups is not None and pos == groups[0]:
                    return self._in_groups(cache.repeats, rel, pos, groups[1], rules, wanted, release, recorded,
                                           kept)
                r = rel[pos]
                rel[pos] = None
                if pos in wanted:
                    # in the usual layout, whatever layout the rules worked in (channels-last on the CPU)
                    recorded[wanted[pos]] = r.contiguous() if r is not None else torch.zeros_like(
                        cache.like(pos), memory_format=torch.contiguous_format)
                node = graph.nodes[pos]
                if r is None:
                    if release:
                        cache.release(pos)
                    continue
                if pos == len(graph.nodes) - 1:  # the output node hands on the initial relevance
                    results: list[Tensor | None] = [r]
                else:
                    rule = rules[id(node.op)]
                    step = self._step(cache, pos)
                    if kept is not None:
                        step.kept = kept.setdefault(pos, {}).setdefault(_identity(rule), {})
                    results = rule.relevance(step, r)
                    del step
                if release:
                    cache.release(pos)
                    if kept is not None:
                        kept.pop(pos, None)
                for i, ri in zip(node.inputs, results):
                    if ri is None:
                        continue
                    rel[i] = ri if rel[i] is None else rel[i] + ri
        result = rel[0] if rel[0] is not None else torch.zeros_like(cache.like(0))
        result = result.contiguous()  # a rule may work in another memory format (hedge on CPU)
        if 0 in wanted:
            recorded[wanted[0]] = result
        return result, recorded

    def _in_groups(self, count: int, rel: list[Tensor | None], pos: int, groups: list[tuple[int, ForwardCache]],
                   rules: dict[int, Rule], wanted: dict[int, str], release: bool, recorded: dict[str, Tensor],
                   kept: dict[int, dict] | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The rest of a walk over a forward pass repeated for ``count`` targets, from node ``pos`` on,
        one group of targets at a time: each group (its first target, its repeated pass) walks with its
        rows of the relevance waiting at each node, and the rules' per-sample terms are computed once
        and kept for the other groups. ``recorded``: what the walk recorded before."""
        kept = {} if kept is None else kept
        maps: list[Tensor] = []
        records: list[dict[str, Tensor]] = []
        for k, repeated in groups:
            size = repeated.repeats
            part = [None if t is None else t.unflatten(0, (-1, count))[:, k:k + size].flatten(0, 1) for t in rel]
            last = k + size == count
            if last:
                rel[:] = [None] * len(rel)
            result, recorded_here = self._walk_back(repeated, part, pos, rules, wanted, release and last, kept)
            maps.append(result.unflatten(0, (-1, size)))
            records.append({name: t.unflatten(0, (-1, size)) for name, t in recorded_here.items()})
        recorded.update({name: torch.cat([r[name] for r in records], 1).flatten(0, 1) for name in records[0]})
        return torch.cat(maps, 1).flatten(0, 1), recorded


def _identity(rule: Rule) -> object:
    """What tells ``rule``'s terms apart from another rule's: the rule itself where it is hashable (an
    equal rule of another composite computes the same terms), else its id."""
    try:
        hash(rule)
    except TypeError:
        return id(rule)
    return rule


def _largest_bytes(cache: ForwardCache, positions: Sequence[int]) -> int:
    """The bytes of the largest value among the outputs of the nodes at ``positions`` (the rows of
    every target included)."""
    return max((t.numel() * t.element_size() for pos in positions for t in _tensors(cache.like(pos))), default=0)


def targets_per_pass(cache: ForwardCache, last: int) -> int:
    """How many targets per sample one walk over ``cache`` (a forward pass repeated per target,
    :meth:`Propagator.repeat`) takes at once from node ``last`` down: all of them, or as many as keep
    the largest value of those nodes within :data:`PASS_BYTES`, at least one."""
    assert cache.base is not None
    rows = cache.base.outputs[0].shape[0]
    row_bytes = max((t.numel() // max(rows, 1) * t.element_size() for value in cache.base.outputs[:last + 1]
                     for t in _tensors(value) if t.dim() > 0 and t.shape[0] == rows), default=0)
    return min(cache.repeats, max(1, PASS_BYTES // max(row_bytes * rows, 1)))


def _tensors(value: object) -> list[Tensor]:
    """The tensors in ``value`` (a tensor, or tuples, lists and dicts of them), in order."""
    found: list[Tensor] = []
    fx.node.map_aggregate(value, lambda t: found.append(t) if isinstance(t, Tensor) else None)
    return found


def _evaluate(node: fx.Node, args: tuple, kwargs: dict, model: nn.Module) -> object:
    """Evaluate a non-tensor fx node (e.g. ``x.size(0)``) the way fx would."""
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    raise RuntimeError(f"cannot evaluate node {node.name!r} ({node.op})")


@dataclass
class _Traces:
    """The propagators of one model, valid while the model's fingerprint is ``fingerprint``."""

    fingerprint: tuple
    #: the submodules, parameters and buffers the fingerprint names, kept alive so that no new
    #: object can reuse one of their identities while the fingerprint is compared against
    owned: list[object]
    propagators: dict[tuple[bool, str | int | None, int], Propagator]


_PROPAGATORS: "weakref.WeakKeyDictionary[nn.Module, _Traces]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def forward_for(model: nn.Module, x: Tensor, fold_batchnorm: bool = True,
                differentiable_from: str | None = None,
                channels_last: bool = False) -> tuple[Propagator, ForwardCache]:
    """The model's propagator and its cached forward pass for ``x``, after checking ``x``'s rank
    against the first layer (e.g. 4-D for Conv2d models); ``differentiable_from``: see
    :meth:`Propagator.forward`. The forward pass holds to the memory budget of the explanation
    under way (:func:`relprop.segments.current_budget`).

    ``channels_last``: run it channels-last where that is faster (:func:`relprop.ops.channels_last_suits`:
    4-D images in float32 or bfloat16 on the CPU), for methods whose rules then keep that layout
    (convolutions take their weights channels-last too, :meth:`relprop.ops.Affine.laid_out_like`;
    models that refuse the layout: :func:`in_channels_last`)."""
    propagator = propagator_for(model, fold_batchnorm)
    propagator.check_input(x)
    budget = segments.current_budget(x)

    def forward(x: Tensor) -> ForwardCache:
        return propagator.forward(x, differentiable_from, *budget)
    return propagator, in_channels_last(propagator, x, forward) if channels_last else forward(x)


def in_channels_last(propagator: Propagator, x: Tensor, run: Callable[[Tensor], T]) -> T:
    """``run(x)`` on a channels-last copy of ``x`` where that layout is faster
    (:func:`relprop.ops.channels_last_suits`), else on ``x``. A model whose traced code cannot take a
    channels-last input (a ``.view`` of a feature map raises) runs as given, and this is noted on its
    propagator (forgotten when the model changes)."""
    if ops.channels_last_suits(x) and not propagator.notes.get("nchw_only"):
        try:
            return run(x.contiguous(memory_format=torch.channels_last))
        except RuntimeError:
            propagator.notes["nchw_only"] = True
    return run(x)


def propagator_for(model: nn.Module, fold_batchnorm: bool = True) -> Propagator:
    """The (cached) propagator of ``model`` for this folding choice, ending in the model-output
    entry that the explanation under way selects (:func:`relprop.targets.selected_output`).

    The model is traced again whenever its structural fingerprint changed since the last trace
    (a replaced module, parameter or buffer, a changed type, dtype, device or layer setting, a new
    hook): a cached trace never outlives a change of the model.
    """
    current = fingerprint(model)
    with _CACHE_LOCK:
        entry = _PROPAGATORS.get(model)
        if entry is None or entry.fingerprint != current:
            entry = _Traces(current, owned_objects(model), {})
            _PROPAGATORS[model] = entry
        key = (fold_batchnorm, selected_output(), registrations())
        found = entry.propagators.get(key)
    if found is None:
        found = Propagator(model, *key[:2])
        with _CACHE_LOCK:
            found = entry.propagators.setdefault(key, found)
    return found


def forget(model: nn.Module) -> None:
    """Drop the cached traces of ``model`` (after a change the fingerprint cannot see, e.g. in a
    list held by a custom forward); the next call traces it again."""
    with _CACHE_LOCK:
        _PROPAGATORS.pop(model, None)
