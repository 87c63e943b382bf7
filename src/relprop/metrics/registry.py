"""The metric registry: each metric declared once, with what the evaluation runner needs to compute it.

A metric is a function of some of the runner's inputs (:data:`INPUTS`: the model, the images, the
attribution maps, the masks, the targets, the method's explain function) and of keyword options. One
call of :func:`register` (a decorator, or with ``fn=``) next to the function records its
:class:`MetricInfo` in :data:`METRICS`: the direction, the source, the category, and its
:class:`Wiring`, from which :mod:`relprop.evaluate` computes it for every batch of explained pairs
(which inputs it takes, which function the runner calls and how its result becomes, per pair, a
headline scalar and a stored value). :func:`unregister` removes a metric again. See
``docs/extending.md``, "A metric".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["INPUTS", "METRICS", "MetricInfo", "Records", "Wiring", "as_floats", "register", "scalar_records",
           "unregister", "vector_records"]

#: the runner's inputs a metric can take, passed positionally in the order the metric names them:
#: ``model`` (eval mode), ``images`` (N, C, S, S), ``maps`` (N, S, S) relevance summed over channels,
#: ``masks`` (N, S, S) bool, ``targets`` (N,) class indices, ``explain`` ``(model, images, targets) -> maps``
INPUTS = ("model", "images", "maps", "masks", "targets", "explain")

#: per explained pair: (headline scalar, the value stored as JSON)
Records = list[tuple[float, Any]]


def as_floats(t: Tensor) -> list:
    """A tensor as (nested) Python floats in double precision."""
    return t.detach().to(torch.float64).cpu().tolist()


def scalar_records(values: Tensor) -> Records:
    """(N,) values: each is both the scalar and the stored value."""
    return [(x, x) for x in as_floats(values)]


def vector_records(values: Tensor) -> Records:
    """Rows of a (N, K) tensor; the scalar is the row mean (NaN if any entry is NaN)."""
    rows = as_floats(values)
    return [(math.fsum(r) / len(r) if r and not any(math.isnan(x) for x in r) else math.nan, r)
            for r in rows]


@dataclass(frozen=True)
class Wiring:
    """How the evaluation runner computes a metric.

    ``inputs``: the runner's inputs (:data:`INPUTS`) passed positionally; a metric without ``maps``
    and ``explain`` does not depend on the explanation and is computed once per pair. ``call``: the
    function called (default: the metric's own); its keyword arguments are the metric's options,
    less ``fixed`` (set by the runner and passed as given). ``defaults``: option values of the runner
    that differ from the function's. ``seeded``: the option ``seed`` (an int, default 0) becomes one
    seed per pair. ``result``: the function's result -> :data:`Records`. ``x_axis``:
    ``(options, side) -> (x, label)`` of a vector- or curve-valued metric on side x side inputs.
    """

    inputs: tuple[str, ...] = ("maps", "masks")
    call: Optional[Callable] = None
    result: Callable[[Any], Records] = scalar_records
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    seeded: bool = False
    x_axis: Optional[Callable[[dict, int], tuple[list, str]]] = None

    def __post_init__(self) -> None:
        unknown = [i for i in self.inputs if i not in INPUTS]
        if unknown or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"inputs must be distinct names of {INPUTS}, got {self.inputs}")


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of a registered metric.

    ``higher_is_better`` is True or False, or None for descriptive statistics that have no preferred
    direction (e.g. the positive ratio). ``source`` names the reference (a key of
    ``docs/references.md``) and equation/figure (or the anchor implementation) that the metric follows. ``wiring``: how the
    evaluation runner computes it. ``volumes``: the metric has a 3-D form, the same formula over
    voxels of (B, D, H, W) maps and masks (and (B, C, D, H, W) inputs); the runner refuses the others
    on volume data sets.
    """

    name: str
    fn: Callable
    higher_is_better: Optional[bool]
    source: str
    category: str
    wiring: Wiring = field(default_factory=Wiring)
    volumes: bool = False

    @property
    def direction(self) -> str:
        return {True: "higher", False: "lower", None: "none"}[self.higher_is_better]


METRICS: dict[str, MetricInfo] = {}


def register(name: str, *, higher_is_better: Optional[bool], source: str, category: str,
             fn: Optional[Callable] = None, inputs: Sequence[str] = ("maps", "masks"),
             call: Optional[Callable] = None, result: Callable[[Any], Records] = scalar_records,
             fixed: Optional[Mapping[str, Any]] = None, defaults: Optional[Mapping[str, Any]] = None,
             seeded: bool = False, x_axis: Optional[Callable[[dict, int], tuple[list, str]]] = None,
             volumes: bool = False):
    """Register ``fn`` (or decorate a function) under ``name`` in :data:`METRICS`.

    The keyword arguments after ``fn`` up to ``x_axis`` are the runner's :class:`Wiring` (default: a
    function of the maps and the masks returning one value per pair); ``volumes=True`` declares
    that the function also takes volumes (:attr:`MetricInfo.volumes`).
    """
    wiring = Wiring(tuple(inputs), call, result, dict(fixed or {}), dict(defaults or {}), seeded, x_axis)

    def deco(f: Callable) -> Callable:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = MetricInfo(name, f, higher_is_better, source, category, wiring, volumes)
        if not hasattr(f, "higher_is_better"):
            try:
                f.higher_is_better = higher_is_better  # type: ignore[attr-defined]
                f.source = source  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover - builtins / partials without __dict__
                pass
        return f

    return deco(fn) if fn is not None else deco


def unregister(name: str) -> MetricInfo:
    """Remove the metric ``name`` from :data:`METRICS` (e.g. one a test registered); returns its entry."""
    if name not in METRICS:
        raise KeyError(f"metric {name!r} is not registered")
    return METRICS.pop(name)
