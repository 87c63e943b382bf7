"""The registry of explanation methods, by name."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .options import Option

#: a method: (model, x, target indices (B,), **options) -> relevance shaped like x
MethodFn = Callable[..., torch.Tensor]


#: how a method's maps are meant to be shown: signed (red/blue around 0), positive part, or |R|
DISPLAYS = ("signed", "positive", "absolute")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    fn: MethodFn
    #: what each option may hold (see :mod:`relprop.options`)
    option_specs: dict[str, Option] = field(default_factory=dict)
    #: how its maps are meant to be shown: one of :data:`DISPLAYS`
    display: str = "signed"

    def options(self) -> dict[str, Any]:
        """The method's options with their defaults."""
        return _defaults(self.fn)

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse unknown options and values outside their declared type or range, naming them."""
        unknown = sorted(set(options) - set(self.option_specs))
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(self.option_specs) or 'none'}"
            )
        for key, value in options.items():
            self.option_specs[key].check(value, f"option '{key}' of method '{self.name}'")


def _defaults(fn: MethodFn) -> dict[str, Any]:
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


_METHODS: dict[str, Method] = {}


def register_method(name: str, summary: str, display: str = "signed",
                    **options: Option) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(model, x, target, **options)`` under ``name`` with a one-line summary and how its
    maps are meant to be displayed (``display``: one of :data:`DISPLAYS`).

    Each keyword option of ``fn`` is declared with an :class:`~relprop.options.Option` (its type
    and range), e.g. ``epsilon=number(low=0)``; an undeclared option whose default is a bool, an int
    or a float gets that type and no range. The defaults must satisfy their declarations.
    """
    if display not in DISPLAYS:
        raise ValueError(f"display must be one of {DISPLAYS}, got {display!r}")

    def wrap(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        defaults = _defaults(fn)
        extra = sorted(set(options) - set(defaults))
        if extra:
            raise ValueError(f"method {name!r} declares {', '.join(map(repr, extra))}, which are not options of its function")
        specs = {key: options[key] if key in options else _inferred(name, key, default)
                 for key, default in defaults.items()}
        method = Method(name, summary, fn, specs, display)
        method.check_options(defaults)
        _METHODS[name] = method
        return fn
    return wrap


def get_method(name: str) -> Method:
    """The registered method ``name``; a clear ValueError for unknown names."""
    _load_builtin_methods()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def methods() -> list[str]:
    """Sorted names of every registered method."""
    _load_builtin_methods()
    return sorted(_METHODS)


def method_summary(name: str) -> str:
    """One-line description of a registered method."""
    return get_method(name).summary


def _load_builtin_methods() -> None:
    from . import attribution  # noqa: F401  (registers the built-in methods on import)
