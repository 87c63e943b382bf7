"""relprop: relevance propagation explanations for PyTorch image classifiers, and their evaluation.

The public names are imported lazily, so that ``relprop --help`` starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Explainer": "api", "explain": "api",
    "Composite": "composite", "by_name": "composite", "by_type": "composite", "first": "composite",
    "last": "composite",
    "UnsupportedOperationError": "graph",
    "load_model": "models", "model_names": "models",
    "get_method": "attribution.registry", "method_summary": "attribution.registry",
    "methods": "attribution.registry", "register_method": "attribution.registry",
    "Output": "targets", "Region": "targets",
}
#: submodules reachable as attributes without an import of their own (``relprop.targets.Region``,
#: ``relprop.patterns.compute_patterns``)
_SUBMODULES = ("targets", "patterns")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'relprop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
