"""Typed options: what a method option or rule parameter may hold, checked in one place.

An :class:`Option` declares a kind (``number``, ``int``, ``bool``, ``choice``, ``name``, ``names``,
``bound``), a range or the allowed choices, and whether ``None`` is allowed. :meth:`Option.check`
raises a ValueError that names the option and says what was expected, e.g.
``option 'epsilon' of method 'lrp-epsilon' must be a non-negative number, got -1``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

KINDS = ("number", "int", "bool", "choice", "name", "names", "bound", "patterns")


def _shown(value: Any) -> str:
    """``-1``, ``str 'abc'``, ``object <object ...>``: the value, with its type unless a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Option:
    """What one option may hold; ``low``/``high`` are inclusive bounds of numbers and integers."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    none: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}; use one of {', '.join(KINDS)}")

    def expected(self) -> str:
        """What the option must be, in words (``a non-negative number``, ``one of 'a', 'b'``)."""
        text = self._expected()
        return f"{text} or None" if self.none else text

    def _expected(self) -> str:
        if self.kind in ("number", "int"):
            noun = "number" if self.kind == "number" else "integer"
            if self.low is not None and self.high is not None:
                return f"a{'n' if noun == 'integer' else ''} {noun} in [{self.low:g}, {self.high:g}]"
            if self.low == 0:
                return f"a non-negative {noun}"
            if self.low == 1 and noun == "integer":
                return "a positive integer"
            if self.low is not None:
                return f"a{'n' if noun == 'integer' else ''} {noun} >= {self.low:g}"
            return f"a{'n' if noun == 'integer' else ''} {noun}"
        if self.kind == "bool":
            return "a bool (True or False)"
        if self.kind == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        if self.kind == "name":
            return "a node or module name (a string)"
        if self.kind == "names":
            return "a sequence of node or module names (strings)"
        if self.kind == "patterns":
            return "a relprop.patterns.Patterns or the path of a patterns file"
        return "a finite number or a tensor of finite numbers"

    def check(self, value: Any, what: str) -> None:
        """Raise ``ValueError("<what> must be ..., got ...")`` unless ``value`` fits."""
        if value is None and self.none:
            return
        problem = self._problem(value)
        if problem is not None:
            raise ValueError(f"{what} must be {problem}, got {_shown(value)}")

    def _problem(self, value: Any) -> str | None:
        """None if ``value`` fits, else what was expected (the type first, then the range)."""
        if self.kind in ("number", "int"):
            if self.kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
                return self.expected()
            if self.kind == "number" and not _is_number(value):
                return "a number" + (" or None" if self.none else "")
            if not math.isfinite(value) or (self.low is not None and value < self.low) or (
                    self.high is not None and value > self.high):
                return self.expected()
            return None
        if self.kind == "bool":
            return None if isinstance(value, bool) else self.expected()
        if self.kind == "choice":
            ok = isinstance(value, str) and value in self.choices
            return None if ok else self.expected()
        if self.kind == "name":
            return None if isinstance(value, str) and value else self.expected()
        if self.kind == "names":
            ok = isinstance(value, Sequence) and not isinstance(value, str) and all(
                isinstance(v, str) and v for v in value)
            return None if ok else self.expected()
        if self.kind == "patterns":
            from .patterns import Patterns

            ok = isinstance(value, (Patterns, str, os.PathLike)) and value != ""
            return None if ok else self.expected()
        return _bound_problem(value, self.expected())


def _bound_problem(value: Any, expected: str) -> str | None:
    if _is_number(value):
        return None if math.isfinite(value) else expected
    if isinstance(value, torch.Tensor):
        ok = value.is_floating_point() or not (value.dtype == torch.bool or value.is_complex())
        return None if ok and bool(torch.isfinite(value).all()) else expected
    return expected


def number(low: float | None = None, high: float | None = None, none: bool = False) -> Option:
    """A finite int or float (not a bool) in ``[low, high]``."""
    return Option("number", low, high, none=none)


def integer(low: int | None = None, high: int | None = None, none: bool = False) -> Option:
    """A Python int (not a bool) in ``[low, high]``."""
    return Option("int", low, high, none=none)


def flag(none: bool = False) -> Option:
    """True or False."""
    return Option("bool", none=none)


def choice(*choices: str) -> Option:
    """One of the given strings."""
    return Option("choice", choices=tuple(choices))


def name(none: bool = True) -> Option:
    """A node or module name (``layer=``)."""
    return Option("name", none=none)


def names() -> Option:
    """A sequence of node or module names (``record=``)."""
    return Option("names")


def bound(none: bool = True) -> Option:
    """A finite number or a tensor of finite numbers (z^B bounds, a baseline)."""
    return Option("bound", none=none)


def patterns(none: bool = True) -> Option:
    """Signal patterns (:class:`relprop.patterns.Patterns`) or the path of a patterns file."""
    return Option("patterns", none=none)


def check_rule_field(rule: object, field_name: str, option: Option) -> None:
    """Check one field of a rule dataclass: ``'epsilon' of rule Epsilon must be ...``."""
    option.check(getattr(rule, field_name), f"'{field_name}' of rule {type(rule).__name__}")


__all__ = ["Option", "bound", "check_rule_field", "choice", "flag", "integer", "name", "names", "number", "patterns"]
