"""What an evaluation reads: data set, model and input specification, from names or ``module:callable``.

A data set is a registered name (``shapes``, ``imagenet``, ...; :func:`relprop.data.registry.get_dataset`)
or ``package.module:factory``, a callable returning a :class:`relprop.data.base.Dataset`. A model is a
name accepted by :func:`relprop.load_model` or ``package.module:factory`` returning ``(model,
preprocess)`` (or a bare model, with the input given explicitly). The input specification (side,
mean, std) that :func:`relprop.data.base.to_model_input` needs is read from the preprocessing.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

__all__ = ["InputSpec", "allow_plugins_from_cwd", "check_logits", "input_spec", "load_callable", "parse_options",
           "resolve_dataset", "resolve_model"]


@dataclass(frozen=True)
class InputSpec:
    """The model's input: a ``size`` x ``size`` image normalised by ``mean`` and ``std`` (on [0, 1])."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def pixels(self) -> int:
        """Pixels per input image."""
        return self.size * self.size

    def as_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``package.module:attribute`` (dots after the colon walk attributes).

    This imports and so runs the module's code: name only modules you trust. The module is found on the
    import path (``sys.path``); the ``relprop`` command adds the current folder to its end.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {spec!r} is not of the form 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({err})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {spec!r} is not callable")
    return obj


def allow_plugins_from_cwd(*specs: Optional[str]) -> None:
    """Let ``module:factory`` specs import modules of the current folder, as ``python -m relprop.cli`` does.

    For the ``relprop`` command: a console script's import path lacks the current folder. It is appended,
    so that a local file never shadows an installed package.
    """
    if any(spec and ":" in spec for spec in specs):
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)


def _build(builder: Callable[..., Any], options: dict, what: str, flag: str) -> Any:
    """``builder(**options)``; an option the builder does not take is a ValueError naming it and ``flag``."""
    try:
        return builder(**options)
    except TypeError as err:
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(err))
        if unknown is None or unknown.group(1) not in options:
            raise
        raise ValueError(f"{what}: unknown option {unknown.group(1)!r} ({flag}); given: "
                         f"{', '.join(sorted(options))}") from None


def check_logits(out: Any, model: str) -> torch.Tensor:
    """``out`` when it is one tensor with a batch and a class dimension; otherwise a ValueError naming ``model``."""
    if isinstance(out, torch.Tensor) and out.dim() >= 2:
        return out
    got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
    raise ValueError(f"model {model!r}: forward must return one tensor of shape (batch, classes), got {got}")


def _value(text: str) -> Any:
    """A command-line option value: JSON when it parses (numbers, lists, true/false/null), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: Optional[Sequence[str]], what: str, scoped: bool = False) -> dict:
    """Parse ``key=value`` items (``scope.key=value`` with ``scoped``) into a dict.

    Values are JSON where they parse (``3``, ``0.5``, ``[1,3,5]``, ``true``), plain text otherwise.
    With ``scoped`` the result is ``{scope: {key: value}}``; the scope is everything before the last
    dot of the left-hand side, so method names containing dots are not supported.
    """
    out: dict = {}
    for item in items or ():
        left, sep, right = item.partition("=")
        if not sep or not left:
            raise ValueError(f"{what} {item!r} is not of the form {'NAME.' if scoped else ''}KEY=VALUE")
        if scoped:
            scope, dot, key = left.rpartition(".")
            if not dot or not scope or not key:
                raise ValueError(f"{what} {item!r} is not of the form NAME.KEY=VALUE")
            out.setdefault(scope, {})[key] = _value(right)
        else:
            out[left] = _value(right)
    return out


def resolve_dataset(spec: str, options: dict) -> Any:
    """Build the data set ``spec`` (registered name or ``module:callable``) with ``options``."""
    from ..data.base import Dataset
    from ..data.registry import get_dataset

    builder = load_callable(spec, "data set") if ":" in spec else (lambda **kw: get_dataset(spec, **kw))
    dataset = _build(builder, options, f"data set {spec!r}", "--dataset-option")
    if not isinstance(dataset, Dataset):
        raise ValueError(f"data set {spec!r} did not return a Dataset (needs name, class_names, "
                         f"__len__ and __getitem__), got {type(dataset).__name__}")
    return dataset


def resolve_model(spec: str, options: dict) -> tuple[nn.Module, Any]:
    """``(model, preprocess)`` of ``spec`` (a :func:`relprop.load_model` name or ``module:callable``).

    ``preprocess`` is None when the factory returns a bare model.
    """
    if ":" in spec:
        builder = load_callable(spec, "model")
    else:
        from ..models import load_model

        def builder(**kw: Any) -> Any:
            return load_model(spec, **kw)
    out = _build(builder, options, f"model {spec!r}", "--model-option")
    model, preprocess = out if isinstance(out, tuple) else (out, None)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} did not return a torch.nn.Module, got {type(model).__name__}")
    return model.eval(), preprocess


def _find_transforms(preprocess: Any) -> list[Any]:
    """The flat list of torchvision transforms inside ``preprocess`` (Compose, wrappers)."""
    out: list[Any] = []
    stack = [preprocess]
    while stack:
        t = stack.pop(0)
        if t is None:
            continue
        out.append(t)
        inner = getattr(t, "transforms", None)
        if isinstance(inner, (list, tuple)):
            stack[:0] = list(inner)
        wrapped = getattr(t, "transform", None)
        if wrapped is not None and wrapped is not t:
            stack.insert(0, wrapped)
    return out


def _side(value: Any) -> Optional[int]:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        if len(value) == 2 and value[0] != value[1]:
            return None
        return int(value[0])
    return None


def input_spec(preprocess: Any, size: Optional[int] = None, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None) -> InputSpec:
    """The input side, mean and std, from explicit values or read from ``preprocess``.

    Recognised: attributes ``mean``/``std`` (relprop's ``Preprocess``, torchvision's
    ``ImageClassification``), ``crop_size``, and inside a ``Compose``: ``Normalize``, ``CenterCrop``
    and a square ``Resize``. The image is resized (not cropped) to ``size`` x ``size`` by
    :func:`relprop.data.base.to_model_input`, so boxes and masks stay aligned.
    """
    from torchvision import transforms as T

    found_size: Optional[int] = None
    found_mean = found_std = None
    crop = resize = None
    for t in _find_transforms(preprocess):
        if found_mean is None and getattr(t, "mean", None) is not None and getattr(t, "std", None) is not None:
            found_mean, found_std = tuple(map(float, t.mean)), tuple(map(float, t.std))
        if crop is None and getattr(t, "crop_size", None) is not None:
            crop = _side(list(t.crop_size))
        if isinstance(t, T.CenterCrop) and crop is None:
            crop = _side(list(t.size))
        if isinstance(t, T.Resize) and resize is None:
            resize = _side(t.size if isinstance(t.size, int) else list(t.size))
    found_size = crop if crop is not None else resize
    size = size if size is not None else found_size
    mean = tuple(map(float, mean)) if mean is not None else found_mean
    std = tuple(map(float, std)) if std is not None else found_std
    missing = [n for n, v in (("input size", size), ("mean", mean), ("std", std)) if v is None]
    if missing:
        raise ValueError(f"cannot read the {', '.join(missing)} from the model's preprocessing "
                         f"{preprocess!r}; give them with --input-size / --mean / --std")
    if int(size) < 1:  # type: ignore[arg-type]
        raise ValueError(f"input size must be positive, got {size}")
    if len(mean) != len(std):  # type: ignore[arg-type]
        raise ValueError(f"mean {mean} and std {std} have different lengths")
    return InputSpec(int(size), mean, std)  # type: ignore[arg-type]
