"""The registry of explanation methods, by name.

:func:`register_method` declares a method (see :mod:`relprop.attribution.method` for the contract);
importing :mod:`relprop.attribution` registers the built-in ones.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Iterator

from ..options import Option
from .method import DISPLAYS, Method, MethodFunction

_METHODS: dict[str, Method] = {}


def register_method(name: str, summary: str, display: str = "signed", multi_target: bool = False,
                    **options: Option) -> Callable[[MethodFunction], MethodFunction]:
    """Register ``fn(model, x, target, **options) -> Attribution`` under ``name`` with a one-line
    summary and how its maps are meant to be displayed (``display``: one of :data:`DISPLAYS`).

    Each keyword option of ``fn`` is declared with an :class:`~relprop.options.Option` (its type
    and range), e.g. ``epsilon=number(low=0)``; an undeclared option whose default is a bool, an int
    or a float gets that type and no range. The defaults must satisfy their declarations.
    ``multi_target=True`` declares that ``fn`` explains several targets per sample at once (see
    :mod:`relprop.attribution.method`); other methods are called once per target.
    """
    if display not in DISPLAYS:
        raise ValueError(f"display must be one of {DISPLAYS}, got {display!r}")

    def wrap(fn: MethodFunction) -> MethodFunction:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = Method.declare(name, summary, fn, display, multi_target, **options)
        return fn
    return wrap


def unregister_method(name: str) -> Method:
    """Remove the method ``name`` from the registry and return it."""
    return _METHODS.pop(get_method(name).name)


@contextlib.contextmanager
def temporary_registrations() -> Iterator[None]:
    """Methods registered inside the block are unregistered when it ends."""
    before = set(_METHODS)
    try:
        yield
    finally:
        for name in set(_METHODS) - before:
            del _METHODS[name]


def get_method(name: str) -> Method:
    """The registered method ``name``; a clear ValueError for unknown names."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def methods() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(_METHODS)


def method_summary(name: str) -> str:
    """One-line description of a registered method."""
    return get_method(name).summary
