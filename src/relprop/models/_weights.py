"""Read weights for a model: state-dict files (``torch.load(weights_only=True)``) and torchvision weights
from the local torch cache. Every failure is a :class:`WeightsError` naming the file (or name) and the model.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = ["WeightsError", "cached_weights_file", "fit_state", "read_state_file"]

#: How many key names an error message shows.
_SHOWN = 3


class WeightsError(ValueError, RuntimeError):
    """Weights that cannot be loaded into a model: unreadable file, wrong architecture, unknown name.

    A ``ValueError`` (what the command line reports as an error) and, for older callers, a ``RuntimeError``.
    """


def _first_line(err: BaseException) -> str:
    """A short, one-line description of ``err`` (torch's weights-only errors run over many lines)."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return f"it holds a pickled {refused.group(1)}, which weights_only=True refuses to run"
    text = text.partition("WeightsUnpickler error:")[2] or text  # past torch's advice on weights_only
    line = next((s.strip() for s in text.splitlines() if s.strip()), type(err).__name__)
    return line if len(line) <= 160 else line[:157] + "..."


def read_state_file(path: str | os.PathLike, model: str) -> Mapping[str, Any]:
    """The state dict stored at ``path`` for ``model``, read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsError: the file is not a state dict that ``weights_only=True`` loads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file for {model!r} not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to deserialise means: not a weights file
        raise WeightsError(f"{path}: not a weights file for {model!r} that torch.load(weights_only=True) reads "
                           f"({_first_line(err)})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors for {model!r}")
    return state


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def fit_state(module: nn.Module, state: Mapping[str, Any], source: str | os.PathLike, model: str) -> None:
    """Load ``state`` into ``module`` (strictly), or raise :class:`WeightsError` saying what does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{len(missing)} missing keys ({_some(missing)})" if missing else "",
                f"{len(unexpected)} unexpected keys ({_some(unexpected)})" if unexpected else "",
                f"{len(shapes)} shapes differ ({_some(shapes)})" if shapes else ""]
    problems = [p for p in problems if p]
    if problems:
        raise WeightsError(f"{os.fspath(source)}: weights do not fit {model!r} (another architecture?): "
                           + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def cached_weights_file(weights: Any) -> Path:
    """Where torch's hub cache keeps the file of torchvision ``weights`` (a ``WeightsEnum`` member)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
