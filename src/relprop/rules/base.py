"""The contract that every relevance rule keeps, for every operation kind.

A rule maps the relevance at an operation's output onto its tensor inputs. The backward
interpreter (:mod:`relprop.propagate`) hands each rule one :class:`Step`: the operation, its cached
forward values and what the trace knows about it. A rule declares the operation kinds it applies
to (``kinds``, names from :data:`relprop.ops.KINDS`); a :class:`relprop.Composite` maps operations
to rules, for every kind alike.

Rules for affine layers (linear and convolution, with a folded batch norm) derive from
:class:`AffineRule` and write only their equation, ``rule(layer, x, z, r, nonnegative)``.

Terms that depend on the forward values alone, not on the relevance (``z+ = conv(x+, W+)``, a
stabilised denominator, ...), go through :meth:`Step.shared` (or, inside an affine rule's equation,
:func:`shared_term`): when several targets per sample are explained in one pass, each sample's
values appear once per target (the rows ``b*K .. b*K+K-1``), and a shared term is computed once
per sample, so that only the relevance-dependent work is done per target.

In such a pass a rule may avoid the K-fold values altogether: :attr:`AffineRule.broadcasts` (or, for
other rules, :meth:`Step.per_sample_inputs` and friends) hands it each sample's values once, and
:func:`rowwise` combines them with the relevance of the K rows of each sample by broadcasting, in the
same elementwise kernel; the transposed maps take the relevance as it is (:func:`rows_like`).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Union

import torch

from .. import tiling

Tensor = torch.Tensor
Terms = Union[Tensor, tuple[Tensor, ...]]


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
    #: targets per sample (K): every value above holds each sample ``K`` times in a row
    repeats: int = 1
    #: the tensor inputs and the output with each sample once (None when ``repeats`` is 1)
    base_inputs: list[Tensor] | None = None
    base_output: Tensor | None = None
    #: the terms computed by :meth:`shared`, by key
    memo: dict[str, Terms] = field(default_factory=dict)
    #: output rows per band where the memory plan tiles this step (:mod:`relprop.tiling`); None: whole
    band_rows: int | None = None
    #: the state with each sample once (None when ``repeats`` is 1)
    base_state: Any = None
    #: where the per-sample terms go when several backward passes over the same forward pass share
    #: them (the passes over groups of targets, or a pass after one that kept the forward pass, see
    #: :meth:`relprop.propagate.Propagator.backward`); None: in :attr:`memo`, for this step alone
    kept: dict[str, Terms] | None = None

    def shared(self, key: str, make: Callable[[list[Tensor], Tensor], Terms]) -> Terms:
        """``make(inputs, output)``, a term (or a tuple of terms) that depends on the forward values
        alone: kept under ``key`` for this step, and with ``repeats`` > 1 computed from each sample's
        values once and repeated for each of its targets (:meth:`per_sample_term` leaves it per
        sample, for rules that broadcast). A caller must not modify it in place."""
        if key not in self.memo:
            value = self.per_sample_term(key, make)
            if self.repeats > 1 and self.base_inputs is not None and self.base_output is not None:
                value = (repeat_rows(value, self.repeats) if isinstance(value, Tensor)
                         else tuple(repeat_rows(v, self.repeats) for v in value))
            self.memo[key] = value
        return self.memo[key]

    def per_sample_term(self, key: str, make: Callable[[list[Tensor], Tensor], Terms]) -> Terms:
        """``make(per_sample_inputs, per_sample_output)``, kept under ``key``: each sample's term once,
        to be combined with the relevance of its targets by :func:`rowwise`; in :attr:`kept` when
        given."""
        key = "per sample:" + key
        store = self.memo if self.kept is None else self.kept
        if key not in store:
            store[key] = make(self.per_sample_inputs, self.per_sample_output)
        return store[key]

    @property
    def per_sample_inputs(self) -> list[Tensor]:
        """The tensor inputs with each sample once (:attr:`inputs` when not repeated)."""
        return self.base_inputs if self.repeats > 1 and self.base_inputs is not None else self.inputs

    @property
    def per_sample_output(self) -> Tensor:
        """The output with each sample once (:attr:`output` when not repeated)."""
        return self.base_output if self.repeats > 1 and self.base_output is not None else self.output

    @property
    def per_sample_state(self) -> Any:
        """The state with each sample once (:attr:`state` when not repeated)."""
        return self.base_state if self.repeats > 1 and self.base_state is not None else self.state

    def input_shape(self, k: int) -> torch.Size:
        """The shape of the ``k``-th tensor input, rows of every target included."""
        if self.repeats > 1 and self.base_inputs is not None:
            base = self.base_inputs[k].shape
            return torch.Size((base[0] * self.repeats, *base[1:]))
        return self.inputs[k].shape

    def input_vjp(self, k: int, v: Tensor) -> Tensor:
        """The operation's vector-Jacobian product for its ``k``-th tensor input, applied to ``v``."""
        return self.op.input_vjp(self.inputs, self.args, self.kwargs, k, v)

    def linear_input_vjp(self, k: int, v: Tensor) -> Tensor:
        """:meth:`input_vjp` of an operation that is linear in its ``k``-th input and whose gradient
        reads no value of its inputs (pooling, resizing): in a repeated pass, from their shapes."""
        return self.input_vjp(k, v)


def _loaded(name: str) -> property:
    """A value of a :class:`RepeatedStep`, made on first reading and kept by the step."""
    def read(step: "RepeatedStep") -> Any:
        if name not in step.loaded:
            step.loaded[name] = step.load(name)
        return step.loaded[name]

    def write(step: "RepeatedStep", value: Any) -> None:
        step.loaded[name] = value

    return property(read, write)


class RepeatedStep(Step):
    """A step of a forward pass repeated per target (:meth:`relprop.propagate.Propagator.repeat`):
    its K-fold values (``inputs``, ``args``, ``kwargs``, ``output``, ``state``) are made from the
    base pass only when a rule reads them (``load(name)``) and go with the step; a rule that
    broadcasts reads the per-sample values instead."""

    inputs = _loaded("inputs")  # type: ignore[assignment]
    args = _loaded("args")  # type: ignore[assignment]
    kwargs = _loaded("kwargs")  # type: ignore[assignment]
    output = _loaded("output")  # type: ignore[assignment]
    state = _loaded("state")  # type: ignore[assignment]

    def __init__(self, op: Any, load: Callable[[str], Any], nonnegative: bool, repeats: int,
                 base_inputs: list[Tensor], base_output: Tensor, base_state: Any,
                 band_rows: int | None = None) -> None:
        self.load, self.loaded = load, {}
        self.op, self.nonnegative, self.repeats = op, nonnegative, repeats
        self.base_inputs, self.base_output, self.base_state = base_inputs, base_output, base_state
        self.memo, self.band_rows, self.kept = {}, band_rows, None

    def linear_input_vjp(self, k: int, v: Tensor) -> Tensor:
        shaped = [rows_like(x, v) for x in self.base_inputs]  # type: ignore[union-attr]
        args, kwargs = self.load("shaped arguments")
        return self.op.input_vjp(shaped, args, kwargs, k, v)

    def holds(self, name: str) -> bool:
        """Whether the K-fold value ``name`` was made already."""
        return name in self.loaded


class Rule:
    """Base class of every rule: ``relevance(step, r)`` gives one entry per tensor input of the
    operation (``None`` where an input receives nothing)."""

    #: the operation kinds the rule applies to (see :data:`relprop.ops.KINDS`)
    kinds: ClassVar[tuple[str, ...]] = ()
    #: each output position's term depends only on the relevance and values there and on the input
    #: under its kernel (no statistic of the whole layer or sample), so that a convolution's step may be
    #: computed in bands of rows (:mod:`relprop.tiling`)
    spatially_local: ClassVar[bool] = False

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        raise NotImplementedError

    def reads(self, op: Any) -> tuple[bool, bool]:
        """Whether the step of ``op`` reads the values of its inputs and of its output (False: their
        shapes, dtypes and devices only, so that a memory plan may keep placeholders, see
        :mod:`relprop.needs`)."""
        return True, True

    def working_bytes(self, op: Any, out_bytes: int, in_bytes: int) -> int | None:
        """Bytes the step of ``op`` allocates besides the cached forward values, with the relevance at
        its output (``out_bytes``, ``in_bytes``: sizes of its output and inputs); None: the
        planner's generic estimate (:func:`relprop.segments.working_bytes`)."""
        return None


class AffineRule(Rule):
    """A rule for an affine layer: subclasses define ``__call__(layer, x, z, r, nonnegative)``, the
    relevance at the layer input ``x`` given the relevance ``r`` at its output ``z`` (``nonnegative``:
    ``x`` is known to be non-negative, so its negative part may be skipped)."""

    kinds: ClassVar[tuple[str, ...]] = ("affine",)
    #: whether the equation reads the layer output ``z`` (False: its shape at most)
    reads_output: ClassVar[bool] = True
    #: whether the equation takes ``x`` and ``z`` with each sample once while ``r`` holds the K rows of
    #: each sample's targets (a forward pass repeated per target): it combines them by :func:`rowwise`
    #: and gives the transposed maps :func:`rows_like` shapes; False: it is handed the K-fold values
    broadcasts: ClassVar[bool] = False

    def reads(self, op: Any) -> tuple[bool, bool]:
        return True, self.reads_output

    def __call__(self, layer: Any, x: Tensor, z: Tensor, r: Tensor, nonnegative: bool) -> Tensor:
        raise NotImplementedError

    def banded(self, x: Tensor) -> "AffineRule | None":
        """The rule to apply to bands of rows of the layer input ``x`` (and of the output) so that the
        bands' relevance adds up to this rule's on the whole (:mod:`relprop.tiling`): the rule itself
        when it is :attr:`spatially_local`, None when it cannot be split."""
        return self if self.spatially_local else None

    def relevance(self, step: Step, r: Tensor) -> list[Tensor | None]:
        rows = tiling.rows_for(step)
        band_rule = self.banded(step.inputs[0]) if rows is not None else None
        if rows is not None and band_rule is not None:
            return [tiling.relevance_in_bands(band_rule, step, r, rows)]
        with _stepping(step):
            if self.broadcasts and step.repeats > 1 and step.base_inputs is not None:
                return [self(step.op, step.base_inputs[0], step.base_output, r, step.nonnegative)]
            return [self(step.op, step.inputs[0], step.output, r, step.nonnegative)]


#: the step whose affine rule is running (for :func:`shared_term`)
_STEP: contextvars.ContextVar[Step | None] = contextvars.ContextVar("relprop_step", default=None)


@contextlib.contextmanager
def _stepping(step: Step) -> Iterator[None]:
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


def shared_term(key: str, x: Tensor, z: Tensor, make: Callable[[Tensor, Tensor], Terms]) -> Terms:
    """``make(x, z)`` for a term of an affine rule's equation that depends on the layer input ``x``
    and output ``z`` alone: kept by the running step when ``x`` and ``z`` are its own values
    (:meth:`Step.per_sample_term` for its per-sample values, :meth:`Step.shared` for its K-fold ones),
    else computed here (a rule called directly, or on other values). ``make`` must use its arguments
    only, and the result must not be modified in place."""
    step = _STEP.get()
    if step is None or not step.per_sample_inputs:
        return make(x, z)
    if x is step.per_sample_inputs[0] and z is step.per_sample_output:
        return step.per_sample_term(key, lambda inputs, output: make(inputs[0], output))
    if isinstance(step, RepeatedStep) and not (step.holds("inputs") and step.holds("output")):
        return make(x, z)  # not the step's K-fold values, which were never made
    if x is step.inputs[0] and z is step.output:
        return step.shared(key, lambda inputs, output: make(inputs[0], output))
    return make(x, z)


def rowwise(fn: Callable[..., Tensor], *values: Any) -> Tensor:
    """``fn(*values)`` for an elementwise ``fn`` whose tensor arguments of the highest rank hold either
    the rows of a batch repeated per target (B * K: each sample's K targets in a row) or each sample's
    row once (B): the latter are broadcast over the K targets (viewed (B, 1, ...) against (B, K, ...))
    instead of being repeated; the result has B * K rows. Lower-rank tensors and numbers broadcast as
    usual; with rows all equal (or 1) this is ``fn(*values)`` itself."""
    rank = max(v.dim() for v in values if isinstance(v, Tensor))
    rows = {v.shape[0] for v in values if isinstance(v, Tensor) and v.dim() == rank} - {1}
    if len(rows) < 2:
        return fn(*values)
    samples, repeated = min(rows), max(rows)
    if len(rows) > 2 or repeated % samples:
        raise ValueError(f"rowwise: rows {sorted(rows)} are not a batch and its repetition per target")
    targets = repeated // samples

    def view(v: Any) -> Any:
        if not isinstance(v, Tensor) or v.dim() != rank:
            return v
        return v.unflatten(0, (samples, targets)) if v.shape[0] == repeated else v.unsqueeze(1)

    return fn(*map(view, values)).flatten(0, 1)


def rows_like(x: Tensor, r: Tensor) -> Tensor:
    """``x`` when it has ``r``'s rows, else an uninitialised tensor of its shape with ``r``'s rows (in
    its memory format): the shape that a transposed map (:meth:`relprop.ops.Affine.transpose`) reads
    of the layer input, for ``x`` with each sample once and ``r`` with the rows of every target."""
    if x.shape[0] == r.shape[0]:
        return x
    fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
           and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    return torch.empty((r.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)


def repeat_rows(t: Tensor, repeats: int) -> Tensor:
    """Each sample (row of the first dimension) ``repeats`` times in a row, in ``t``'s memory format."""
    if repeats == 1:
        return t
    fmt = (torch.channels_last if t.dim() == 4 and not t.is_contiguous()
           and t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    out = torch.empty((t.shape[0] * repeats, *t.shape[1:]), dtype=t.dtype, device=t.device, memory_format=fmt)
    out.view(t.shape[0], repeats, *t.shape[1:]).copy_(t.unsqueeze(1))
    return out


__all__ = ["AffineRule", "RepeatedStep", "Rule", "Step", "repeat_rows", "rows_like", "rowwise", "shared_term"]
