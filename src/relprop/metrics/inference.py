"""Faster forward passes for the perturbation metrics: a frozen, inference-optimised copy of a model.

Perturbation curves and patch masking push many copies of every image through the model and need
only its logits. On the CPU, a TorchScript copy of an ``eval()`` model, frozen and optimised for
inference (convolution and batch norm folded, oneDNN layouts; ``torch.jit.optimize_for_inference``),
computes them two to three times faster for small convolutional networks. The logits agree with
the module's up to float round-off (the folding changes the order of the arithmetic); every copy
is checked against the module on probe batches of other sizes before it is used, and any model that
cannot be traced, or whose traced copy disagrees, keeps its own forward pass.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["FrozenForward", "eager_module", "frozen_forward", "weights_state"]

#: the largest difference of the logits from the module's, relative to their magnitude, accepted
#: when a frozen copy is checked
TOLERANCE = 1e-4

_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Optional[FrozenForward]]]" = weakref.WeakKeyDictionary()


class FrozenForward(nn.Module):
    """Logits of ``module`` from ``script``, its frozen TorchScript copy; ``module`` stays reachable
    (incremental evaluation traces the module itself)."""

    def __init__(self, module: nn.Module, script: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.module = module
        self._script = script

    def forward(self, x: Tensor) -> Tensor:
        return self._script(x)


def eager_module(model: Callable) -> Callable:
    """The module behind a :class:`FrozenForward` (``model`` itself otherwise)."""
    return model.module if isinstance(model, FrozenForward) else model


def weights_state(model: nn.Module) -> tuple:
    """Identity, storage and version of every parameter and buffer of ``model``: changes when any of
    them is replaced or updated in place (what a frozen copy, or a map computed with the model,
    depends on)."""
    return tuple((id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                 for t in list(model.parameters()) + list(model.buffers()))


def _agrees(script: Callable, model: nn.Module, probe: Tensor) -> bool:
    a, b = script(probe), model(probe)
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape:
        return False
    if not b.numel():
        return True
    scale = float(b.abs().max())
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= TOLERANCE * max(1.0, scale)


def _freeze(model: nn.Module, example: Tensor) -> Optional[FrozenForward]:
    """A checked frozen copy of ``model`` traced on ``example`` (None when there is none)."""
    x = example[:2]
    probes = [example[:1], torch.cat([example[:1]] * 3) + 0.1 * torch.randn(
        (3,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(0)).to(example)]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            script = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x).eval()))
            if not all(_agrees(script, model, p) for p in probes):
                return None
    except Exception:  # noqa: BLE001 - tracing and freezing fail in many ways; the module is used then
        return None
    return FrozenForward(model, script)


def frozen_forward(model: Callable, example: Tensor) -> Callable:
    """A :class:`FrozenForward` of ``model`` for inputs like ``example`` (N, ...) when one is possible
    and checked: an ``nn.Module`` in ``eval()`` mode, float32 inputs on the CPU; else ``model``.
    Copies are kept per module and made again when a parameter or buffer changes."""
    if (not isinstance(model, nn.Module) or isinstance(model, (FrozenForward, torch.jit.ScriptModule))
            or model.training or example.device.type != "cpu" or example.dtype != torch.float32
            or example.shape[0] < 1):
        return model
    state = (tuple(example.shape[1:]),) + weights_state(model)
    kept = _CACHE.get(model)
    if kept is not None and kept[0] == state:
        return kept[1] if kept[1] is not None else model
    frozen = _freeze(model, example)
    _CACHE[model] = (state, frozen)
    return frozen if frozen is not None else model
