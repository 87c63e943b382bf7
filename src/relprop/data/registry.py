"""Data sets by name: ``get_dataset("voc2007", root=...)``, ``dataset_names()``."""

from __future__ import annotations

from typing import Any, Callable

from .base import Dataset

__all__ = ["dataset_names", "get_dataset", "register_dataset"]

_BUILDERS: dict[str, tuple[Callable[..., Dataset], str]] = {}


def register_dataset(name: str, summary: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Register a builder ``builder(root=None, split=..., **options) -> Dataset`` under ``name``."""

    def wrap(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in _BUILDERS:
            raise ValueError(f"data set {name!r} is registered twice")
        _BUILDERS[name] = (builder, summary)
        return builder

    return wrap


def _load_builtin() -> None:
    import importlib
    import pkgutil

    from .. import data

    for info in pkgutil.iter_modules(data.__path__):
        if info.name not in ("base", "registry"):
            importlib.import_module(f"{data.__name__}.{info.name}")


def dataset_names() -> list[str]:
    """Names of the registered data sets, sorted."""
    _load_builtin()
    return sorted(_BUILDERS)


def dataset_summary(name: str) -> str:
    _load_builtin()
    return _BUILDERS[name][1]


def get_dataset(name: str, **options: Any) -> Dataset:
    """Build the data set ``name``; raises ValueError for an unknown name, listing the known ones."""
    _load_builtin()
    if name not in _BUILDERS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name][0](**options)
