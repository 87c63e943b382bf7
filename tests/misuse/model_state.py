"""A bitwise snapshot of everything a user owns in a model, to prove that relprop changed nothing.

``snapshot(model)`` records every parameter and buffer (values, dtype, device, ``requires_grad``,
identity), every module's training flag and every hook dictionary; ``assert_unchanged`` compares
a later snapshot with it and names what differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")


def snapshot(model: nn.Module) -> dict[str, Any]:
    """What the user owns in ``model``, copied."""
    state: dict[str, Any] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        state[f"param {name}"] = (id(p), p.detach().clone(), p.dtype, p.device, p.requires_grad,
                                  None if p.grad is None else p.grad.clone())
    for name, b in model.named_buffers(remove_duplicate=False):
        state[f"buffer {name}"] = (id(b), b.detach().clone(), b.dtype, b.device, b.requires_grad)
    for name, m in model.named_modules(remove_duplicate=False):
        state[f"module {name}"] = (id(m), type(m), m.training)
        for hooks in _HOOK_DICTS:
            state[f"{hooks} {name}"] = tuple(getattr(m, hooks, {}).items())
    return state


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.isnan() & b.isnan()).all()))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    """Fail naming every entry of ``model`` that differs from the snapshot ``before``."""
    after = snapshot(model)
    changed = sorted(k for k in before.keys() | after.keys()
                     if k not in before or k not in after or not _same(before[k], after[k]))
    assert not changed, f"relprop changed the user's model: {changed[:10]}"


def assert_tensor_unchanged(x: torch.Tensor, before: torch.Tensor) -> None:
    """The input tensor is bitwise what it was (values and ``requires_grad``)."""
    assert torch.equal(x, before), "relprop changed the input tensor"
