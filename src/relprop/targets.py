"""Checks of inputs and targets shared by every method."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

Tensor = torch.Tensor
Target = Union[None, int, Sequence[int], Tensor]


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
    if target is None or isinstance(target, torch.Tensor):
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
    shown = repr(target) if len(repr(target)) <= 60 else repr(target)[:57] + "..."
    raise ValueError(
        "target must be None (the predicted class), an int class index, a sequence of ints or an "
        f"integer tensor (one class per sample), got {type(target).__name__} {shown}"
    )


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Class index per sample as a long tensor (B,); None means the predicted class."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return class scores shaped (batch, classes), got {tuple(logits.shape)}")
    batch, classes = logits.shape
    check_target(target)
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, bool):
        raise ValueError("target must be a class index, not a bool")
    if isinstance(target, int):
        indices = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        indices = torch.as_tensor(target, device=logits.device)
        if indices.numel() == 0:
            raise ValueError(f"target is empty: give one class index per sample of the batch of {batch}")
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"target must hold integer class indices, got dtype {indices.dtype}")
        indices = indices.long().reshape(-1)
        if indices.numel() == 1 and batch > 1:
            indices = indices.expand(batch)
        if indices.numel() != batch:
            raise ValueError(f"target has {indices.numel()} entries for a batch of {batch}")
    bad = (indices < 0) | (indices >= classes)
    if bad.any():
        raise ValueError(
            f"target {indices[bad].tolist()} out of range: the model has {classes} classes (0..{classes - 1})"
        )
    return indices


def one_hot_logit(logits: Tensor, target: Tensor) -> Tensor:
    """Initial relevance: the target logit at the target class, zero elsewhere (paper 003, Sec. II)."""
    relevance = torch.zeros_like(logits)
    index = target.view(-1, 1)
    return relevance.scatter_(1, index, logits.gather(1, index))
