"""Reproduction of the five papers' evaluations (``docs/results.md``), built on the library.

:mod:`.protocols` states each paper's protocol as runner configurations (:mod:`relprop.evaluate`),
:mod:`.run` runs them into a SQLite store and draws the qualitative figures (:mod:`.figures`),
and :mod:`.results` writes the document from the store: the papers' tables (:mod:`.sections`, values
and intervals from :mod:`.rundata`) with a verdict on whether each ordering of methods agrees with the
paper's (:mod:`.paper_orders`). ``relprop reproduce`` and ``relprop report STORE --results FILE.md``
(:mod:`.cli`) are its commands. The library does not depend on this package. Names are imported
lazily so that the command line starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"main": "run", "jobs": "protocols", "write_results": "results"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'relprop.reproduce' has no attribute {name!r}")
