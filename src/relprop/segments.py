"""Bounded memory: segment-wise recomputation of the forward pass (as gradient checkpointing does).

The traced graph is cut where a single node's output is the only value live across the cut (every
layer of a VGG, the block outputs of a ResNet, the residual stream between a ViT's blocks). Under a
memory budget, the forward pass keeps only the outputs at some of these cuts (the boundaries) and
the values of the non-tensor helpers (shape arithmetic); the nodes between two boundaries form a
segment. The backward pass, reaching a segment, evaluates it again from its boundary input (the
same ``forward_with_state`` calls, under ``torch.no_grad``), propagates through it and frees it:
memory then holds one segment's activations, the boundaries and the relevance.

Segments are grouped while the forward pass runs: a segment grows until the boundaries kept so far,
its activations and the estimated working memory of its nodes' rules (:func:`working_bytes`) would
exceed the budget, and is closed at its last cut. A convolution whose whole backward step does not
fit the budget is computed in bands of output rows (:mod:`relprop.tiling`, :func:`bands_for`). A
budget too small for the smallest segment raises a ValueError naming its largest node.

Where the composite is known before the forward pass (:func:`relprop.needs.rules_known`, the LRP
methods), the plan is rule-aware: only the values some step reads are kept (shape-only placeholders
for the others, e.g. a convolution's output under alpha-beta, a ReLU's before a max pool), each
rule estimates its own step (:meth:`relprop.rules.Rule.working_bytes`), and a segment needs the
largest, over its nodes, of the values up to a node with that node's step (the backward pass frees
each node's values after its step). The sizes are measured on fake tensors (:func:`shapes_only`: no
arithmetic), so planning costs no forward pass.

The budget is set per explanation (:func:`bounded`, ``memory_budget=`` of :func:`relprop.explain`);
without one, :func:`auto_budget` (half the memory available on the input's device) applies, so
that an input whose full cache fits runs exactly as before.
"""

from __future__ import annotations

import contextlib
import functools
import contextvars
import re
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator, Union

import torch
import torch.fx as fx

from . import needs, ops, tiling

if TYPE_CHECKING:
    from .propagate import ForwardCache, Propagator

Tensor = torch.Tensor
Budget = Union[int, float, str, None]

#: share of the available memory that an explanation without a budget may use before segmenting
AUTO_SHARE = 0.5
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: at most this many nodes per segment (None: as many as the budget allows; 1 evaluates every node again)
MAX_SEGMENT_NODES: int | None = None
#: how many plans (input shape, dtype, budget) each propagator remembers
PLANS_KEPT = 16
#: the budget of the explanation under way (see :func:`bounded`): bytes, "unlimited" or None (automatic)
_BUDGET: contextvars.ContextVar[int | str | None] = contextvars.ContextVar("relprop_memory_budget", default=None)


# -- the budget ------------------------------------------------------------------------------------
def parse_budget(value: Budget) -> int | str | None:
    """Bytes from ``4_000_000_000``, ``"4GB"`` (decimal units), ``"4GiB"`` (binary units) or
    ``"512 MB"``; ``"unlimited"`` (never segment) and None (automatic) are kept as they are."""
    if value is None or value == "unlimited":
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"memory_budget must be a positive number of bytes, got {value!r}")
        return int(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if match and match.group(2).lower() in _UNITS and float(match.group(1)) > 0:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(f"memory_budget must be a number of bytes, a size such as '4GB' or '512MiB', 'unlimited' "
                     f"or None (automatic), got {value!r}")


def bounded(budget: Budget) -> contextlib.AbstractContextManager:
    """While the block runs, forward passes (:func:`relprop.propagate.forward_for`) hold to
    ``budget``; None keeps the budget of the surrounding block (automatic outside any). The budget
    is checked here."""
    parsed = parse_budget(budget)
    return contextlib.nullcontext() if parsed is None else _bounded(parsed)


@contextlib.contextmanager
def _bounded(budget: int | str) -> Iterator[None]:
    token = _BUDGET.set(budget)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def current_budget(x: Tensor) -> tuple[int | None, bool]:
    """The budget in bytes for a forward pass of ``x`` now (None for no bound), and whether it is
    the automatic one."""
    budget = _BUDGET.get()
    if budget == "unlimited":
        return None, False
    return (auto_budget(x), True) if budget is None else (int(budget), False)


def auto_budget(x: Tensor) -> int | None:
    """:data:`AUTO_SHARE` of the memory available on ``x``'s device (free GPU memory; on the CPU,
    ``MemAvailable`` of /proc/meminfo); None where it cannot be read."""
    if x.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x.device)
        return int(AUTO_SHARE * free)
    if x.device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(AUTO_SHARE * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return None


def shown(size: float) -> str:
    """``1.23 GB`` (decimal units)."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.2f} {unit}"
    return f"{int(size)} B"


# -- the cuts --------------------------------------------------------------------------------------
def cut_points(nodes: list) -> list[bool]:
    """``cut[p]``: position ``p``'s output is the only node output live between ``p`` and ``p + 1``
    (no node before ``p`` is used after it)."""
    last_use = [max(n.users, default=i) for i, n in enumerate(nodes)]
    cuts, reach = [], 0
    for p in range(len(nodes)):
        cuts.append(reach <= p)
        reach = max(reach, last_use[p])
    return cuts


def tensor_bytes(value: object, seen: set[int]) -> int:
    """Bytes of the tensors in ``value`` (nested tuples, lists, dicts) whose storage is not in ``seen``."""
    total = 0

    def add(v: object) -> object:
        nonlocal total
        if isinstance(v, Tensor) and v.layout == torch.strided:
            key = v.untyped_storage()._cdata  # the storage itself (fake tensors have no data pointer)
            if key not in seen:
                seen.add(key)
                total += v.untyped_storage().nbytes()
        return v

    fx.node.map_aggregate(value, add)
    return total


#: operations whose rules pass relevance on elementwise (no temporaries beyond one tensor)
_LIGHT = {"input", "identity", "activation", "reshape", "getitem", "pad", "scale"}


def working_bytes(kind: str, out_bytes: int, in_bytes: int) -> int:
    """Estimated memory of one node's backward step besides the cached activations: the relevance
    at its output and inputs and the rule's temporaries (a few tensors of the larger size; one for
    elementwise operations of kind in :data:`_LIGHT`)."""
    if kind in _LIGHT:
        return 2 * out_bytes
    return 2 * (out_bytes + in_bytes + max(out_bytes, in_bytes))


# -- the cache -------------------------------------------------------------------------------------
class _Slots(list):
    """A list of per-node entries that evaluates a node's segment again when an entry is read."""

    def __init__(self, cache: "SegmentedCache", n: int) -> None:
        super().__init__([None] * n)
        self.cache = weakref.ref(cache)  # no cycle: a dropped cache frees its tensors at once

    def __getitem__(self, index):  # type: ignore[override]
        value = super().__getitem__(index)
        cache = self.cache()
        if value is None and isinstance(index, int) and cache is not None:
            pos = index % len(self)
            if cache.missing(pos):
                cache.load(cache.segment_of[pos])
                value = super().__getitem__(index)
        return value

    def raw(self, pos: int) -> object:
        return super().__getitem__(pos)


@functools.lru_cache(maxsize=None)
def _cache_class() -> type:
    """:class:`SegmentedCache` as a :class:`relprop.propagate.ForwardCache`."""
    from .propagate import ForwardCache

    return type("SegmentedForwardCache", (SegmentedCache, ForwardCache), {"__module__": __name__})


def _new_cache(propagator: "Propagator", n: int) -> "SegmentedCache":
    cls = _cache_class()
    cache = cls.__new__(cls)
    super(SegmentedCache, cache).__init__(_Slots(cache, n), _Slots(cache, n), _Slots(cache, n), _Slots(cache, n))
    cache.setup(propagator, n)
    return cache


class SegmentedCache:
    """A :class:`relprop.propagate.ForwardCache` that keeps the segments' boundaries only and
    evaluates a segment again when one of its entries is read (one segment is held at a time)."""

    propagator: "Propagator"
    args: _Slots
    kwargs: _Slots
    outputs: _Slots
    state: _Slots

    def setup(self, propagator: "Propagator", n: int) -> None:
        self.propagator = propagator
        self.helpers: dict[fx.Node, object] = {}
        self.kept = [False] * n
        self.released = [False] * n
        #: the segment of each position (-1: kept whole, as the input, output and autograd part)
        self.segment_of = [-1] * n
        self.segments: list[tuple[int, int]] = []
        self.loaded: int | None = None
        #: what the rules read (None: every value is kept, see :mod:`relprop.needs`)
        self.reads: needs.Reads | None = None

    def store(self, pos: int, args: tuple, kwargs: dict, out: object, state: object) -> None:
        """Keep node ``pos``'s arguments, output and state, as placeholders where no step reads them."""
        reads = self.reads
        if reads is not None and not reads.inputs[pos]:
            args, kwargs = tuple(needs.blank(args)), dict(needs.blank(kwargs))
        if reads is not None and not reads.value[pos] and not self.kept[pos]:
            out = needs.blank(out)
        for slots, value in ((self.args, args), (self.kwargs, kwargs), (self.outputs, out), (self.state, state)):
            list.__setitem__(slots, pos, value)

    def missing(self, pos: int) -> bool:
        """Whether node ``pos`` is in a segment that is not held now (and was not released)."""
        return not self.released[pos] and self.segment_of[pos] >= 0 and self.loaded != self.segment_of[pos]

    def release(self, pos: int) -> None:
        """Free what is kept of node ``pos``."""
        self.released[pos] = True
        for slots in (self.args, self.kwargs, self.outputs, self.state):
            list.__setitem__(slots, pos, None)

    def evict(self, lo: int, hi: int) -> None:
        """Drop the entries of positions ``lo..hi`` but the kept outputs."""
        for pos in range(lo, hi + 1):
            for slots in (self.args, self.kwargs, self.state):
                list.__setitem__(slots, pos, None)
            if not self.kept[pos]:
                list.__setitem__(self.outputs, pos, None)

    def load(self, segment: int) -> None:
        """Evaluate ``segment`` again from its boundary input, dropping the segment held before."""
        if self.loaded is not None:
            self.evict(*self.segments[self.loaded])
            self.loaded = None
        lo, hi = self.segments[segment]

        def evaluate(pos: int, op: ops.Op, args: tuple, kwargs: dict) -> Tensor:
            out, state = op.forward_with_state(args, kwargs)
            if self.released[pos]:
                return out
            if self.kept[pos]:
                kept = self.outputs.raw(pos)
                self.store(pos, args, kwargs, kept, state)
                return kept  # type: ignore[return-value]
            self.store(pos, args, kwargs, out, state)
            return out

        with torch.no_grad():
            walk_range(self, lo, hi, evaluate)
        self.loaded = segment


def walk_range(cache: SegmentedCache, lo: int, hi: int,
               evaluate: Callable[[int, ops.Op, tuple, dict], object]) -> object:
    """Evaluate the nodes at positions ``lo..hi`` with ``evaluate`` (as :meth:`Propagator._walk`),
    reading the other positions' outputs and the helpers' values from ``cache``; returns the value
    of the last node evaluated."""
    graph = cache.propagator.graph
    env: dict[fx.Node, object] = {}

    def value(a: fx.Node) -> object:
        if a in env:
            return env[a]
        if a in cache.helpers:
            return cache.helpers[a]
        found = cache.outputs.raw(graph.position[a])
        if found is None:
            raise RuntimeError(f"segment {lo}..{hi} reads node {graph.nodes[graph.position[a]].name!r}, "
                               "which the cache does not hold")
        return found

    result: object = None
    order, last_use = _last_uses(graph)
    for i, fx_node in enumerate(order):
        pos = graph.position.get(fx_node)
        if pos is None or pos < lo or fx_node.op == "placeholder":
            continue
        if pos > hi:
            break
        args = fx.node.map_arg(fx_node.args, value)
        if fx_node.op == "output":
            result = args[0]
        else:
            kwargs = fx.node.map_arg(fx_node.kwargs, value)
            result = evaluate(pos, graph.nodes[pos].op, args, kwargs)
        env[fx_node] = result
        if pos < hi:  # the values no later node of the range reads (the cache keeps what steps read)
            _forget(env, last_use, i, graph)
    return result


# -- the forward pass ------------------------------------------------------------------------------
@dataclass
class Sizes:
    """What one forward pass of an input holds per node: ``size`` (bytes of output and state),
    ``out`` (bytes of the output), ``work`` (estimated working memory of the backward step) and
    ``band`` (for a convolution: ``(rows, work, input bytes)`` of its step in bands of rows, see
    :mod:`relprop.tiling`; None for other nodes). With the rules known (:mod:`relprop.needs`),
    ``size`` counts only the values some step reads, ``work`` is the rule's own estimate,
    ``passing`` the node's inputs and output while it is evaluated again, and ``released`` says that
    the backward pass frees each node's values after its step."""

    size: list[int]
    out: list[int]
    work: list[int]
    band: list[tuple[int, int, int] | None] = field(default_factory=list)
    passing: list[int] = field(default_factory=list)
    released: bool = False

    def step(self, pos: int) -> int:
        """The memory of node ``pos``'s backward step or of its evaluation, whichever is larger."""
        return max(self.work[pos], self.passing[pos] if self.passing else 0)

    def need(self, lo: int, hi: int) -> int:
        """The memory of the segment ``lo..hi`` besides what is kept before it: its values with its
        largest step; with ``released``, the largest over its nodes of the values up to the node
        with the node's step (later nodes' values are freed by then, or not yet evaluated)."""
        total, need = 0, 0
        for pos in range(lo, hi + 1):
            total += self.size[pos]
            need = max(need, (total if self.released else 0) + self.step(pos))
        return need + (0 if self.released else total)


def _node_sizes(nodes: list, pos: int, out: object, state: object, inputs: list[object],
                reads: needs.Reads | None = None) -> tuple[int, int, int]:
    """``(size, out, work)`` of node ``pos`` (see :class:`Sizes`; with ``reads``, rule-aware)."""
    seen: set[int] = set()
    out_bytes = tensor_bytes(out, seen)
    size = out_bytes + tensor_bytes(state, seen)
    in_bytes = sum(tensor_bytes(v, set()) for v in inputs)
    work = working_bytes(nodes[pos].op.kind, out_bytes, in_bytes)
    if reads is not None:
        if not reads.value[pos]:
            size -= out_bytes
        rule = reads.rules[pos]
        own = None if rule is None else rule.working_bytes(nodes[pos].op, out_bytes, in_bytes)
        work = work if own is None else own
    return size, out_bytes, work


def measure(propagator: "Propagator", x: Tensor, reads: needs.Reads | None = None) -> Sizes:
    """The sizes of every node's values for ``x``: one forward pass under ``torch.no_grad`` that
    frees each value after its last use; ``reads``: what the rules read (:mod:`relprop.needs`)."""
    graph = propagator.graph
    n = len(graph.nodes)
    sizes = Sizes([0] * n, [0] * n, [0] * n, [None] * n, [0] * n, reads is not None)
    sizes.out[0] = sizes.size[0] = tensor_bytes(x, set())
    order, last_use = _last_uses(graph)
    fx_of = {pos: node for node, pos in graph.position.items()}
    env: dict[fx.Node, object] = {}
    model = propagator.model_ref()
    from .propagate import _evaluate

    with torch.no_grad():
        for i, fx_node in enumerate(order):
            pos = graph.position.get(fx_node)
            args = fx.node.map_arg(fx_node.args, lambda a: env[a])
            kwargs = fx.node.map_arg(fx_node.kwargs, lambda a: env[a])
            if fx_node.op == "placeholder":
                env[fx_node] = x
            elif fx_node.op == "output":
                break
            elif pos is None:
                env[fx_node] = _evaluate(fx_node, args, kwargs, model)
            else:
                out, state = graph.nodes[pos].op.forward_with_state(args, kwargs)
                inputs = [env[fx_of[i]] for i in graph.nodes[pos].inputs if fx_of.get(i) in env]
                sizes.size[pos], sizes.out[pos], sizes.work[pos] = _node_sizes(graph.nodes, pos, out, state, inputs,
                                                                               reads)
                in_bytes = sum(tensor_bytes(v, set()) for v in inputs)
                if reads is not None:
                    sizes.passing[pos] = in_bytes + sizes.out[pos]
                band = tiling.band_plan(graph.nodes[pos].op, out, sizes.work[pos], in_bytes, sizes.out[pos])
                sizes.band[pos] = None if band is None else (*band, in_bytes)
                env[fx_node] = out
                del out, state, inputs
            _forget(env, last_use, i, graph)
    return sizes


def shapes_only(propagator: "Propagator", x: Tensor, reads: needs.Reads | None = None) -> Sizes:
    """:func:`measure` on fake tensors (shapes, dtypes and devices, no data: no arithmetic and no
    memory), or on ``x`` itself where an operation needs values (e.g. data-dependent shapes)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    affine = [node.op for node in propagator.graph.nodes if isinstance(node.op, ops.Affine)]
    for op in affine:  # the folded weights, made from the real parameters before the fake pass
        _ = op.weight, op.bias
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            return measure(propagator, mode.from_tensor(x), reads)
    except Exception:  # an operation fake tensors cannot evaluate
        return measure(propagator, x, reads)
    finally:
        for op in affine:
            if any(isinstance(t, FakeTensor) for t in op._cache[1].values()):
                op.forget_cache()


def _last_uses(graph) -> tuple[list[fx.Node], dict[fx.Node, int]]:
    """The fx nodes in order and the index of each one's last user."""
    order = list(graph.fx_graph.nodes)
    index = {node: i for i, node in enumerate(order)}
    return order, {node: max((index[u] for u in node.users), default=i) for i, node in enumerate(order)}


def _forget(env: dict, last_use: dict, i: int, graph) -> None:
    """Drop from ``env`` the node values whose last user is the ``i``-th fx node or earlier."""
    for done in [a for a in env if last_use[a] <= i and graph.position.get(a) is not None]:
        del env[done]


def bands_for(sizes: Sizes, budget: int, everywhere: bool = False) -> tuple[Sizes, dict[int, int]]:
    """The convolutions to tile under ``budget`` (:mod:`relprop.tiling`): those whose whole backward
    step, with their input, output and the model input, exceeds it (``everywhere``: every one whose
    step tiling makes smaller); ``(sizes with their tiled working memory, {position: output rows per
    band})``. A node is tiled only where its rule is local (:meth:`relprop.rules.AffineRule.banded`);
    another rule takes the whole step."""
    work, bands = list(sizes.work), {}
    for pos, band in enumerate(sizes.band):
        if band is not None and (everywhere or sizes.out[0] + band[2] + sizes.size[pos] + sizes.step(pos) > budget):
            bands[pos], work[pos] = band[0], band[1]
    return replace(sizes, work=work), bands


def tiled_plan(propagator: "Propagator", sizes: Sizes, budget: int,
               last: int) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """:func:`plan` with the convolutions that must be tiled (:func:`bands_for`) and, if that does not
    fit, with every convolution tiled where it saves memory; ``(segments, bands)``."""
    try:
        tiled, bands = bands_for(sizes, budget)
        return plan(propagator, tiled, budget, last), bands
    except BudgetTooSmall:
        tiled, bands = bands_for(sizes, budget, everywhere=True)
        return plan(propagator, tiled, budget, last), bands


def plan(propagator: "Propagator", sizes: Sizes, budget: int, last: int) -> list[tuple[int, int]]:
    """Segments ``(first, last position)`` covering positions ``1..last`` whose backward steps fit
    ``budget``, with the fewest bytes kept at their boundaries (the cuts between them); the nodes
    after ``last`` are kept whole. A ValueError if no grouping fits."""
    cuts = cut_points(propagator.graph.nodes)
    pinned = sum(sizes.size[last + 1:])
    ends = [c for c in range(1, last) if cuts[c]] + [last]
    if MAX_SEGMENT_NODES == 1:
        ends = [c for c in ends if c == last or cuts[c]]
        return [(lo + 1, hi) for lo, hi in zip([0] + ends[:-1], ends)]
    best: dict[int, int] = {0: sizes.out[0] + pinned}
    parent: dict[int, int] = {}
    for lo in [0] + ends[:-1]:
        if lo not in best:
            continue
        total, work, peak = 0, 0, 0
        for hi in range(lo + 1, last + 1):
            total, work = total + sizes.size[hi], max(work, sizes.step(hi))
            peak = max(peak, total + sizes.step(hi))  # as Sizes.need, one node at a time
            if best[lo] + (peak if sizes.released else total + work) > budget:
                break
            if hi in ends:
                kept = best[lo] + (sizes.out[hi] if hi != last else 0)
                if kept < best.get(hi, budget + 1):
                    best[hi], parent[hi] = kept, lo
    if last not in best:
        _refuse(propagator, sizes, budget, ends, pinned)
    bounds, hi = [], last
    while hi != 0:
        bounds.append((parent[hi] + 1, hi))
        hi = parent[hi]
    return bounds[::-1]


def _refuse(propagator: "Propagator", sizes: Sizes, budget: int, ends: list[int], pinned: int) -> None:
    """The ValueError of a budget below what the largest unsplittable segment needs."""
    nodes = propagator.graph.nodes
    demands = [(sizes.need(lo + 1, hi) + sizes.out[lo], lo + 1, hi) for lo, hi in zip([0] + ends[:-1], ends)]
    need, lo, hi = max(demands)
    largest = max(range(lo, hi + 1), key=lambda p: sizes.size[p] + sizes.step(p))
    where = f"the segment from {nodes[lo].name!r} to {nodes[hi].name!r}" if hi > lo else f"node {nodes[lo].name!r}"
    raise BudgetTooSmall(
        need + pinned, budget,
        f"memory_budget of {shown(budget)} is too small for this input: node {nodes[largest].name!r} outputs "
        f"{shown(sizes.size[largest])} and its backward step needs about {shown(sizes.step(largest))} more; "
        f"{where}, which cannot be split, needs about {shown(need + pinned)} with its input"
        + (f" and {shown(pinned)} kept for the gradient" if pinned else "")
        + "; give a larger budget or a smaller input")


class BudgetTooSmall(ValueError):
    """A memory budget below what the largest unsplittable segment of the input needs: ``need`` bytes
    (for the whole batch) against ``budget``. :class:`relprop.Explainer` explains a batch in smaller
    parts when it gets one."""

    def __init__(self, need: int, budget: int, message: str) -> None:
        super().__init__(message)
        self.need, self.budget = need, budget


class OverBudget(Exception):
    """The whole forward pass does not fit the budget (raised while it runs, to plan segments)."""


def segmented_forward(propagator: "Propagator", x: Tensor, start: int | None, budget: int,
                      automatic: bool = False) -> "SegmentedCache | ForwardCache":
    """The forward pass of ``x`` keeping the boundaries of segments that fit ``budget`` (bytes);
    the nodes after ``start`` (evaluated with autograd, see :meth:`Propagator.forward`) are kept
    whole. A plain :class:`ForwardCache` when the whole pass fits. ``automatic``: try the whole
    pass first and measure the sizes only if it does not fit; otherwise the sizes are measured first
    (once per input shape, dtype and device)."""
    n = len(propagator.graph.nodes)
    last = n - 2 if start is None else start
    if automatic:
        try:
            return _run(propagator, x, start, [(1, last)], budget)
        except OverBudget:
            pass
    plans = propagator.notes.setdefault("memory_plans", {})
    reads = needs.reads_for(propagator) if start is None else None
    key = (tuple(x.shape), x.dtype, x.device, x.stride(), budget, last, MAX_SEGMENT_NODES)
    key = (*key, tiling.BAND_BYTES, None if reads is None else reads.key)
    if key not in plans:
        if len(plans) >= PLANS_KEPT:
            del plans[next(iter(plans))]
        plans[key] = tiled_plan(propagator, shapes_only(propagator, x, reads), budget, last)
    bounds, bands = plans[key]
    cache = _run(propagator, x, start, bounds, None, reads)
    cache.bands = dict(bands)
    return cache


def _run(propagator: "Propagator", x: Tensor, start: int | None, bounds: list[tuple[int, int]],
         limit: int | None, reads: needs.Reads | None = None) -> "SegmentedCache | ForwardCache":
    """The forward pass in the segments ``bounds``; ``limit``: raise :class:`OverBudget` when what
    is held (with the largest working memory so far) exceeds it; ``reads``: keep placeholders for
    the values no step reads (:mod:`relprop.needs`)."""
    graph = propagator.graph
    n = len(graph.nodes)
    cache = _new_cache(propagator, n)
    cache.reads = reads
    ends = {hi: k for k, (lo, hi) in enumerate(bounds)}
    for k, (lo, hi) in enumerate(bounds):
        cache.segments.append((lo, hi))
        for pos in range(lo, hi + 1):
            cache.segment_of[pos] = k
    cache.kept[0] = cache.kept[n - 1] = True
    for pos in [hi for _, hi in bounds[:-1]] + list(range(bounds[-1][1] + 1, n)):
        cache.kept[pos] = True  # the boundaries and the nodes kept whole
    list.__setitem__(cache.outputs, 0, x)
    model = propagator.model_ref()
    if model is None:
        raise RuntimeError("the model of this propagator no longer exists")
    from .propagate import _evaluate

    env: dict[fx.Node, object] = {}
    held, work = tensor_bytes(x, set()), 0
    order, last_use = _last_uses(graph)
    with torch.no_grad():
        for i, fx_node in enumerate(order):
            if fx_node.op == "placeholder":
                env[fx_node] = x
                continue
            pos = graph.position.get(fx_node)
            args = fx.node.map_arg(fx_node.args, lambda a: env[a])
            kwargs = fx.node.map_arg(fx_node.kwargs, lambda a: env[a])
            if fx_node.op == "output":
                list.__setitem__(cache.outputs, n - 1, args[0])
                break
            if pos is None:
                env[fx_node] = cache.helpers[fx_node] = _evaluate(fx_node, args, kwargs, model)
                continue
            env[fx_node] = _evaluate_node(cache, pos, args, kwargs, start)
            if limit is not None:
                size, _, node_work = _node_sizes(graph.nodes, pos, env[fx_node], cache.state.raw(pos),
                                                 [env[a] for a in fx_node.all_input_nodes if a in graph.position])
                held, work = held + size, max(work, node_work)
                if held + work > limit:
                    raise OverBudget
            if pos in ends and ends[pos] < len(bounds) - 1:
                cache.evict(*bounds[ends[pos]])
            _forget(env, last_use, i, graph)
    cache.loaded = len(bounds) - 1
    return cache if len(bounds) > 1 else _plain(cache)


def _evaluate_node(cache: SegmentedCache, pos: int, args: tuple, kwargs: dict, start: int | None) -> Tensor:
    """Evaluate node ``pos`` in the forward pass and cache it."""
    op = cache.propagator.graph.nodes[pos].op
    with torch.set_grad_enabled(start is not None and pos > start):
        out, state = op.forward_with_state(args, kwargs)
    if pos == start:
        out = out.detach().requires_grad_(True)
        cache.leaf = (pos, out)
    cache.store(pos, args, kwargs, out, state)
    return out


def _plain(cache: SegmentedCache) -> "ForwardCache":
    """The whole forward pass held in ``cache`` as a plain cache (a single segment)."""
    from .propagate import ForwardCache

    lists = [[slots.raw(p) for p in range(len(slots))] for slots in (cache.args, cache.kwargs, cache.outputs, cache.state)]
    return ForwardCache(*lists, leaf=cache.leaf, bands=cache.bands)  # type: ignore[attr-defined]


def segmented_gradient_at(cache: SegmentedCache, start: int, output_gradient: Tensor) -> tuple[Tensor, Tensor]:
    """:meth:`Propagator.gradient_at` on a segmented cache: the segment of ``start`` is held, and the
    nodes after ``start`` are evaluated again with autograd from it."""
    segment = cache.segment_of[start]
    if segment >= 0 and cache.loaded != segment:
        cache.load(segment)
    value = cache.outputs[start]
    if value is None:
        raise RuntimeError("gradient_at needs the forward cache before any backward pass released it")
    leaf = value.detach().requires_grad_(True)
    lo = cache.segments[segment][0] if segment >= 0 else start

    def evaluate(pos: int, op: ops.Op, args: tuple, kwargs: dict) -> object:
        if pos < start:
            return cache.outputs.raw(pos)
        return leaf if pos == start else op.forward(args, kwargs)

    with torch.enable_grad():
        result = walk_range(cache, lo, len(cache.kept) - 1, evaluate)
    gradient, = torch.autograd.grad(result, leaf, output_gradient)
    return leaf.detach(), gradient


# -- batches in parts ------------------------------------------------------------------------------
def batch_parts(batch: int, error: BudgetTooSmall) -> list[tuple[int, int]] | None:
    """Row ranges ``[lo, hi)`` that split a batch of ``batch`` samples refused with ``error`` into
    parts that should fit its budget (the memory of a forward pass grows with the batch); None for a
    single sample, which cannot be split."""
    if batch <= 1:
        return None
    size = max(1, min(batch // 2, int(batch * error.budget / max(error.need, 1))))
    return [(lo, min(lo + size, batch)) for lo in range(0, batch, size)]


def target_rows(target: object, lo: int, hi: int, batch: int) -> tuple[bool, object]:
    """``(True, rows lo..hi of target)`` for a target that names one class (or K classes) per sample,
    the same class for all (an int, None) or a per-sample tensor or list; ``(False, None)`` for any
    other target (it is not split)."""
    from .multi_target import ClassTargets

    if target is None or (isinstance(target, int) and not isinstance(target, bool)):
        return True, target
    if isinstance(target, ClassTargets):
        return True, ClassTargets(target.classes[lo:hi])
    if isinstance(target, Tensor):
        if target.dim() == 0:
            return True, target
        return (True, target[lo:hi]) if target.shape[0] == batch else (False, None)
    if isinstance(target, (list, tuple)) and len(target) == batch:
        return True, type(target)(target[lo:hi])
    return False, None
