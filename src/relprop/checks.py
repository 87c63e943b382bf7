"""Checks of what a caller passes, shared by every method: the input batch, its rank, the type of a target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .targets import Target

Tensor = torch.Tensor


def check_input(x: Tensor) -> None:
    """Reject what no method can explain: non-tensors, integer tensors, NaN/inf, missing batch dim."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"the input must be a torch.Tensor batch, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"the input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"the input must be a batch with a leading batch dimension, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("the input batch is empty")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"the input contains {bad} NaN or infinite values")


def check_rank(x: Tensor, expected: int | None, model_name: str) -> None:
    """Match the input rank to the first layer (e.g. 4-D for Conv2d models)."""
    if expected is None or x.dim() == expected:
        return
    hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == expected - 1 else ""
    raise ValueError(
        f"{model_name} expects a {expected}-D input batch, got shape {tuple(x.shape)}{hint}"
    )


def check_target(target: Target) -> None:
    """Refuse a target of the wrong type (a str, a float, ...), naming what is expected."""
    from .multi_target import ClassTargets
    from .targets import Output, Region, Selection  # the target types; targets.py checks with this function

    if target is None or isinstance(target, (torch.Tensor, Region, Output, Selection, ClassTargets)):
        return
    if callable(target) and not isinstance(target, type):
        return
    if isinstance(target, bool):
        raise ValueError("target must be a class index, not a bool")
    if isinstance(target, int) or (isinstance(target, np.integer)):
        return
    if isinstance(target, np.ndarray):
        return
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target):
            return
        if any(isinstance(t, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(t, (str, bytes))
               for t in target):
            return  # K classes per sample, checked by relprop.multi_target.class_targets
    shown = repr(target) if len(repr(target)) <= 60 else repr(target)[:57] + "..."
    raise ValueError(
        "target must be None (the predicted class), an int class index, a sequence of ints or an "
        "integer tensor (one class per sample), a list of class lists or a (batch, K) integer tensor (K "
        "classes per sample), a relprop.targets.Region, a relprop.targets.Output or a "
        f"callable output -> score per sample, got {type(target).__name__} {shown}"
    )
