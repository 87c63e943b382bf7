"""What relprop's cached traces depend on in a user's model, and the copy that relprop traces.

* :func:`fingerprint` is a cheap structural summary of a model: its module tree (paths, identities,
  types, plain configuration attributes such as a convolution's ``stride``), the identity, shape,
  dtype and storage of every parameter and buffer, and the keys of every forward (pre-)hook
  dictionary, module and global. A traced graph is reused only while the fingerprint is unchanged.
  In-place updates of parameter values do not change it: the traced ops read the very same tensors.
* :func:`inference_copy` is a structural copy of the module tree that shares every parameter and
  buffer tensor, has every training flag off and no hooks: relprop traces and runs it, so that it
  never flips the user's flags nor runs the user's hooks.
* :func:`check_forward_hooks` refuses models with forward (pre-)hooks, which relprop cannot honour.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.nn.modules import module as _module

from .attention import DecomposedAttention
from .window_attention import DecomposedWindowAttention, TraceablePatchMerging, swin_replacement

#: per-module hook dictionaries (the copy gets empty ones)
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")
_FORWARD_HOOKS = ("_forward_hooks", "_forward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks")
_PLAIN = frozenset((bool, int, float, str, type(None)))


#: what every module's ``__dict__`` holds (hooks, tables, the training flag): not configuration
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"training"}


def _config(d: dict) -> tuple:
    """A module's plain attributes (numbers, strings, tuples of them) except its training flag, from
    its ``__dict__``: what a trace bakes in (``stride``, ``padding``, a scale in a custom forward)."""
    keys = sorted(d.keys() - _MODULE_INTERNALS)
    return tuple([(k, d[k]) for k in keys
                  if type(d[k]) in _PLAIN or (type(d[k]) is tuple and _plain_tuple(d[k]))])


def _plain_tuple(value: tuple) -> bool:
    return all(type(v) in _PLAIN for v in value)


def _tensors(table: dict) -> tuple:
    """Identity, storage, dtype and shape of each tensor: a replaced tensor, or one whose ``.data``
    was swapped (``model.double()``, ``.to(device)``), changes its entry; in-place updates do not."""
    return tuple([(k, None) if t is None else (k, id(t), t.data_ptr(), t.dtype, t.shape) for k, t in table.items()])


def _global_hooks() -> tuple:
    return tuple(tuple(getattr(_module, name, None) or ()) for name in _GLOBAL_HOOKS)


def fingerprint(model: nn.Module) -> tuple:
    """A structural summary of ``model`` that changes whenever a cached trace may no longer fit.

    It costs a fraction of a millisecond for a ResNet-50 (about 150 modules and 320 tensors)."""
    parts: list[Any] = [_global_hooks()]
    append = parts.append
    for path, m in model.named_modules(remove_duplicate=False):
        d = m.__dict__
        append((path, id(m), type(m), _config(d), _tensors(d["_parameters"]), _tensors(d["_buffers"]),
                tuple(d.get("_forward_hooks") or ()), tuple(d.get("_forward_pre_hooks") or ())))
    return tuple(parts)


def owned_objects(model: nn.Module) -> list[object]:
    """The submodules, parameters and buffers whose identities a fingerprint records, to keep them
    alive as long as the fingerprint is in use (so that no identity is reused meanwhile)."""
    objects: list[object] = [m for m in model.modules() if m is not model]
    objects += list(model.parameters()) + list(model.buffers())
    return objects


def check_forward_hooks(model: nn.Module) -> None:
    """Refuse forward hooks and forward pre-hooks (on modules or global): they change what the model
    computes, and relprop explains the model through its own traced graph, which does not run them."""
    hooked = [path or "<root>" for path, m in model.named_modules()
              if any(getattr(m, name, None) for name in _FORWARD_HOOKS)]
    if hooked:
        raise ValueError(
            f"relprop cannot honour forward hooks or forward pre-hooks, found on module(s) {', '.join(hooked)}; "
            "remove them (handle.remove()) or build the hooked behaviour into the model's forward"
        )
    if getattr(_module, "_global_forward_hooks", None) or getattr(_module, "_global_forward_pre_hooks", None):
        raise ValueError(
            "relprop cannot honour global forward hooks or forward pre-hooks "
            "(torch.nn.modules.module.register_module_forward_hook / _pre_hook); remove them first"
        )


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree sharing every parameter and buffer tensor, in eval mode, without
    hooks. Aliased submodules stay aliased; plain attributes are shared (shallow copies). Each
    ``nn.MultiheadAttention`` becomes a :class:`relprop.attention.DecomposedAttention` on the same
    tensors, which computes the same function with operations that relprop explains; torchvision's
    swin attention and patch merging become their :mod:`relprop.window_attention` stand-ins."""
    return _copy(model, {}, "")


@contextlib.contextmanager
def placeholder_parameters(copy_of_model: nn.Module) -> Iterator[None]:
    """Give a copy from :func:`inference_copy` private meta-device parameters while it is traced.

    torch.fx patches ``nn.Module.__getattr__`` process-wide while it traces and hands out proxies
    for the traced root's parameters, to every thread; with placeholders, other threads reading the
    user's (shared) parameters meanwhile get the real tensors. Shared parameters keep sharing.
    """
    saved = [(m, m._parameters) for m in copy_of_model.modules()]
    stand_ins: dict[int, nn.Parameter] = {}

    def stand_in(p: nn.Parameter | None) -> nn.Parameter | None:
        if p is None:
            return None
        if id(p) not in stand_ins:
            stand_ins[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                            requires_grad=p.requires_grad)
        return stand_ins[id(p)]

    for m, table in saved:
        m._parameters = {k: stand_in(p) for k, p in table.items()}
    try:
        yield
    finally:
        for m, table in saved:
            m._parameters = table


def _copy(module: nn.Module, memo: dict[int, nn.Module], path: str) -> nn.Module:
    found = memo.get(id(module))
    if found is not None:
        return found
    if isinstance(module, nn.MultiheadAttention):
        memo[id(module)] = DecomposedAttention(module, path)
        return memo[id(module)]
    swin = swin_replacement(module, path)
    if swin is not None:
        memo[id(module)] = _swin_copy(module, swin, memo, path)
        return memo[id(module)]
    clone = copy.copy(module)
    memo[id(module)] = clone
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    for name in HOOK_DICTS:
        if name in module.__dict__:
            setattr(clone, name, OrderedDict())
    clone.training = False
    clone._modules = {name: None if child is None else _copy(child, memo, f"{path}.{name}" if path else name)
                      for name, child in module._modules.items()}
    return clone


def _swin_copy(module: nn.Module, kind: str, memo: dict[int, nn.Module], path: str) -> nn.Module:
    """The traceable stand-in of a torchvision swin module (:mod:`relprop.window_attention`)."""
    if kind == "attention":
        return DecomposedWindowAttention(module, path)
    return TraceablePatchMerging(_copy(module.norm, memo, f"{path}.norm"),
                                 _copy(module.reduction, memo, f"{path}.reduction"), v2=kind == "merging-v2")


__all__ = ["check_forward_hooks", "fingerprint", "inference_copy", "owned_objects", "placeholder_parameters"]
