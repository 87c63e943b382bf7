"""The registry of explanation methods, by name."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

#: a method: (model, x, target indices (B,), **options) -> relevance shaped like x
MethodFn = Callable[..., torch.Tensor]


#: how a method's maps are meant to be shown: signed (red/blue around 0), positive part, or |R|
DISPLAYS = ("signed", "positive", "absolute")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    fn: MethodFn
    display: str = "signed"

    def options(self) -> dict[str, Any]:
        """The method's options with their defaults."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty}


_METHODS: dict[str, Method] = {}


def register_method(name: str, summary: str, display: str = "signed") -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(model, x, target, **options)`` under ``name`` with a one-line summary and how its
    maps are meant to be displayed (``display``: one of :data:`DISPLAYS`)."""
    if display not in DISPLAYS:
        raise ValueError(f"display must be one of {DISPLAYS}, got {display!r}")

    def wrap(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = Method(name, summary, fn, display)
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
