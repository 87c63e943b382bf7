"""The contract of an explanation method: what it declares (:class:`Method`) and what it returns
(:class:`Attribution`).

A method is a function ``fn(model, x, target, **options) -> Attribution``. ``x`` is a checked,
floating-point batch; ``target`` is what the caller asked to explain (None, class indices or an
output selector of :mod:`relprop.targets`), resolved by the method itself. A method declared with
``multi_target=True`` may also receive a :class:`~relprop.multi_target.ClassTargets` (K classes
per sample): it then returns one row per sample and target (sample b's target k at row ``b * K + k``,
see :func:`relprop.multi_target.expand_targets`), which :class:`Method` shapes (B, K, ...); any
other method is called once per target. Every option is a
keyword argument with a default, declared with an :class:`~relprop.options.Option` (its type and
range); the declaration is where option values are checked.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Protocol

import torch
import torch.nn as nn

from ..multi_target import ClassTargets, by_columns, collect
from ..options import Option
from ..propagate import NotBatchMajor
from ..targets import Target

Tensor = torch.Tensor

#: how a method's maps are meant to be shown: signed (red/blue around 0), positive part, or |R|
DISPLAYS = ("signed", "positive", "absolute")


@dataclass(frozen=True)
class Attribution:
    """What every method returns: ``relevance`` shaped like the input, and ``recorded``, the
    relevance at the output of each node named by the method's ``record=`` option."""

    relevance: Tensor
    recorded: Mapping[str, Tensor] = field(default_factory=dict)


class MethodFunction(Protocol):
    """``fn(model, x, target, **options) -> Attribution``."""

    def __call__(self, model: nn.Module, x: Tensor, target: Target, /, **options: Any) -> Attribution: ...


@dataclass(frozen=True)
class Method:
    """A registered explanation method: its name, a one-line summary, how its maps are meant to be
    shown (one of :data:`DISPLAYS`), its function and its declared options with their defaults."""

    name: str
    summary: str
    fn: MethodFunction
    #: what each option may hold (see :mod:`relprop.options`)
    option_specs: Mapping[str, Option] = field(default_factory=dict)
    #: each option's default
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: how its maps are meant to be shown: one of :data:`DISPLAYS`
    display: str = "signed"
    #: whether its function explains several targets per sample at once (:class:`ClassTargets`)
    multi_target: bool = False

    def __post_init__(self) -> None:
        if self.display not in DISPLAYS:
            raise ValueError(f"display must be one of {DISPLAYS}, got {self.display!r}")
        if set(self.option_specs) != set(self.defaults):
            raise ValueError(f"method {self.name!r}: every option needs a declaration and a default")
        object.__setattr__(self, "option_specs", MappingProxyType(dict(self.option_specs)))
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        self.check_options(dict(self.defaults))

    @classmethod
    def declare(cls, name: str, summary: str, fn: MethodFunction, display: str = "signed",
                multi_target: bool = False, **options: Option) -> "Method":
        """The method of ``fn``: its options are the keyword arguments after ``(model, x, target)``,
        with their defaults. Each is declared in ``options``; an undeclared option whose default is a
        bool, an int or a float gets that type and no range."""
        defaults = keyword_defaults(fn)
        extra = sorted(set(options) - set(defaults))
        if extra:
            raise ValueError(f"method {name!r} declares {', '.join(map(repr, extra))}, "
                             "which are not options of its function")
        specs = {key: options[key] if key in options else _inferred(name, key, default)
                 for key, default in defaults.items()}
        return cls(name, summary, fn, specs, defaults, display, multi_target)

    def options(self) -> dict[str, Any]:
        """The method's options with their defaults."""
        return dict(self.defaults)

    def records(self) -> bool:
        """Whether the method can return the relevance at inner nodes (it has a ``record`` option)."""
        return "record" in self.option_specs

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse unknown options and values outside their declared type or range, naming them."""
        unknown = sorted(set(options) - set(self.option_specs))
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(self.option_specs) or 'none'}"
            )
        for key, value in options.items():
            self.option_specs[key].check(value, f"option '{key}' of method '{self.name}'")

    def __call__(self, model: nn.Module, x: Tensor, target: Target, **options: Any) -> Attribution:
        """Run the method; a TypeError if it breaks the contract by returning anything but an
        :class:`Attribution`. A :class:`ClassTargets` target gives maps shaped (B, K, ...)."""
        if isinstance(target, ClassTargets):
            if self.multi_target:
                try:
                    return collect(self._call(model, x, target, options), target, self.name)
                except NotBatchMajor:  # a model whose values are not batch-major: one target at a time
                    pass
            return by_columns(lambda column: self._call(model, x, column, options), target)
        return self._call(model, x, target, options)

    def _call(self, model: nn.Module, x: Tensor, target: Target, options: dict[str, Any]) -> Attribution:
        result = self.fn(model, x, target, **options)
        if not isinstance(result, Attribution):
            raise TypeError(f"method {self.name!r} returned {type(result).__name__}, not a relprop Attribution")
        return result


def keyword_defaults(fn: MethodFunction) -> dict[str, Any]:
    """The options of a method function: its parameters after ``(model, x, target)``, with defaults."""
    params = list(inspect.signature(fn).parameters.values())[3:]
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty}


def _inferred(method: str, key: str, default: Any) -> Option:
    """The declaration of an undeclared option, from its default: a bool, an integer or a number."""
    if isinstance(default, bool):
        return Option("bool")
    if isinstance(default, int):
        return Option("int")
    if isinstance(default, float):
        return Option("number")
    raise ValueError(f"method {method!r}: declare option {key!r} with its type and range "
                     f"(register_method(..., {key}=relprop.options.choice(...)), ...), its default {default!r} says too little")
