"""The public entry points: :func:`explain` and :class:`Explainer` (Captum's calling convention)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from .attribution.lrp import propagate_lrp
from .attribution.method import Attribution
from .attribution.registry import get_method
from .checks import check_input, check_target
from .composite import Composite
from .multi_target import ClassTargets, by_columns, class_targets, collect, is_multi_target
from .propagate import NotBatchMajor
from .segments import Budget, BudgetTooSmall, batch_parts, bounded, parse_budget, target_rows
from .targets import Target, selecting, split_output

Tensor = torch.Tensor


class Explainer:
    """An explanation method bound to a model and its options.

    ``method`` is a registered name (see :func:`relprop.methods`) or a :class:`Composite` for
    custom LRP rule maps; options are checked against the method's declared types and ranges here,
    before any work. relprop explains the model's inference-mode function whatever its training
    flags, and never changes the model (parameters, buffers, flags, hooks). Explanations run outside
    ``torch.inference_mode`` even when called inside it (they need autograd).

    ``memory_budget`` (bytes, or a size such as ``"4GB"`` or ``"512MiB"``) bounds the memory of the
    methods that propagate through relprop's cached forward pass: past it, the forward pass keeps
    segment boundaries only and the backward pass evaluates each segment again
    (:mod:`relprop.segments`). None (default): the budget of a surrounding
    ``relprop.segments.bounded(...)`` block, else half the memory available when the call starts;
    ``"unlimited"``: never segment. A batch that does not fit even in segments is explained in
    parts (samples are explained independently). Results do not depend on it.
    """

    def __init__(self, model: nn.Module, method: str | Composite = "lrp-cmp", memory_budget: Budget = None,
                 **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.memory_budget = parse_budget(memory_budget)
        self.composite = method if isinstance(method, Composite) else None
        if self.composite is None:
            self.method = get_method(method)
            self.method.check_options(options)
        elif options:
            raise ValueError("options are given by the Composite itself when method is a Composite")
        self.options = options

    def explain(self, x: Tensor, target: Target = None,
                record: Sequence[str] | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Relevance shaped like ``x``; with ``record``, also ``{node name: relevance at its output}``.
        With K classes per sample (a list of class lists or a (B, K) integer tensor), relevance and
        records are shaped (B, K, ...): one map per sample and target."""
        check_input(x)
        check_target(target)
        output, target = split_output(target)
        if is_multi_target(target):
            target = class_targets(target, x.shape[0])
        name = self.composite.name if self.composite is not None else self.method.name
        with torch.inference_mode(False), selecting(output, name), bounded(self.memory_budget):
            return self._explain(_outside_inference(x), _outside_inference(target), record)

    def _explain(self, x: Tensor, target: Target,
                 record: Sequence[str] | None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The explanation of the batch; a batch whose forward pass does not fit the memory budget even
        in segments is explained in parts (samples are explained independently) and joined."""
        try:
            return self._explain_batch(x, target, record)
        except BudgetTooSmall as error:
            parts = batch_parts(x.shape[0], error)
            rows = [target_rows(target, lo, hi, x.shape[0]) for lo, hi in parts or []]
            if parts is None or not all(ok for ok, _ in rows):
                raise
        results = [self._explain(x[lo:hi], t, record) for (lo, hi), (_, t) in zip(parts, rows)]
        if record is None:
            return torch.cat(results)  # type: ignore[arg-type]
        relevance = torch.cat([r[0] for r in results])  # type: ignore[index]
        return relevance, {k: torch.cat([r[1][k] for r in results]) for k in results[0][1]}  # type: ignore[index]

    def _explain_batch(self, x: Tensor, target: Target,
                       record: Sequence[str] | None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if self.composite is not None:
            relevance, recorded = self._composite_relevance(x, target, record or ())
        else:
            options = dict(self.options)
            if record is not None:
                if not self.method.records():
                    raise ValueError(f"method {self.method.name!r} cannot record intermediate relevance")
                self.method.check_options({"record": record})
                options["record"] = record
            attribution = self.method(self.model, x, target, **options)
            relevance, recorded = attribution.relevance, dict(attribution.recorded)
        relevance = relevance.to(dtype=x.dtype, device=x.device)
        return (relevance, recorded) if record is not None else relevance


    def _composite_relevance(self, x: Tensor, target: Target,
                             record: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Relevance under the Composite; for several targets per sample in one backward pass."""
        assert self.composite is not None
        composite = self.composite

        def run(t: Target) -> Attribution:
            return Attribution(*propagate_lrp(self.model, x, t, composite, record))
        if not isinstance(target, ClassTargets):
            result = run(target)
        else:
            try:
                result = collect(run(target), target, composite.name)
            except NotBatchMajor:
                result = by_columns(run, target)
        return result.relevance, dict(result.recorded)


def _outside_inference(value: Any) -> Any:
    """A normal copy of an inference tensor (usable by autograd); anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.is_inference():
        return value.clone()
    return value


def explain(model: nn.Module, x: Tensor, target: Target = None, method: str | Composite = "lrp-cmp",
            memory_budget: Budget = None, **options: Any) -> Tensor:
    """Explain ``model``'s decision for the batch ``x``: relevance shaped like ``x``.

    ``target``: None (the predicted class), an int, or one class index per sample; K class indices
    per sample (a list of class lists, or a (B, K) integer tensor) for maps shaped (B, K, ...); or an output
    selector: :class:`relprop.targets.Region` (a class inside a region of a segmentation output),
    :class:`relprop.targets.Output` (an entry of a dict or tuple output) or a callable
    ``output -> score per sample`` (see docs/methods.md, Output selectors). ``memory_budget``: see
    :class:`Explainer` (docs/methods.md, Memory).
    """
    return Explainer(model, method, memory_budget, **options).explain(x, target)  # type: ignore[return-value]
