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

import hashlib
import warnings
import weakref
from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["FrozenForward", "MemoisedForward", "eager_module", "frozen_forward", "image_digests", "weights_state"]

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


#: the most bytes of logits a :class:`MemoisedForward` keeps (the oldest go first)
MEMO_BYTES = 64 * 2**20


class MemoisedForward(nn.Module):
    """Logits of ``forward`` computed once per distinct input row.

    The forward-only metrics push the same image through the model again and again: the clean image
    of every method's curve, the copies that do not depend on the map (a randomly placed patch, every
    pixel removed). An input row on the CPU whose dtype, shape and bytes (SHA-256) were seen before
    takes the logits kept from its first pass; the other rows run through ``forward`` together, each
    distinct row once. Inputs that need gradients, inputs on other devices, and forwards that do not
    return one row of logits per input row are passed through untouched. At most ``max_bytes`` of
    logits are kept, the least recently used dropped first; keep one per model and weights (the
    evaluation runner makes one per batch of pairs).
    """

    def __init__(self, forward: Callable[[Tensor], Tensor], max_bytes: int = MEMO_BYTES) -> None:
        super().__init__()
        self.module = eager_module(forward)
        self._forward = forward
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._kept: OrderedDict[bytes, Tensor] = OrderedDict()
        self._weights: tuple = self._state()
        self._declined = False

    def _state(self) -> tuple:
        return weights_state(self.module) if isinstance(self.module, nn.Module) else ()

    def forward(self, x: Tensor) -> Tensor:
        if (self._declined or torch.is_grad_enabled() or not isinstance(x, Tensor) or x.device.type != "cpu"
                or x.dim() < 1 or x.shape[0] == 0):
            return self._forward(x)
        state = self._state()
        if state != self._weights:  # the module's weights changed: nothing kept holds
            self._kept.clear()
            self.bytes, self._weights = 0, state
        keys = image_digests(x)
        fresh: dict[bytes, int] = {}  # digest -> first row holding it, for rows not kept
        for i, key in enumerate(keys):
            if key not in self._kept and key not in fresh:
                fresh[key] = i
        self.misses += len(fresh)
        self.hits += len(keys) - len(fresh)
        every = len(fresh) == len(keys)
        computed: dict[bytes, Tensor] = {}
        if fresh:
            out = self._forward(x if every else x[torch.tensor(list(fresh.values()))])
            if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != len(fresh):
                self._declined = True  # not one row of logits per input row: passed through from now on
                return out if every else self._forward(x)
            computed = dict(zip(fresh, out))
        result = out if every else torch.stack([computed.get(k, self._kept.get(k)) for k in keys])
        for key in keys:
            if key in computed:
                self._keep(key, computed[key].clone())
            elif key in self._kept:  # (unless a row kept just now pushed it out)
                self._kept.move_to_end(key)
        return result

    def _keep(self, key: bytes, row: Tensor) -> None:
        size = row.numel() * row.element_size()
        if key in self._kept or size > self.max_bytes:
            return
        self._kept[key] = row
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._kept.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


def image_digests(images: Tensor) -> list[bytes]:
    """SHA-256 of every image's (row's) dtype, shape and bytes: equal digests, equal model inputs."""
    head = f"{images.dtype}{tuple(images.shape[1:])}".encode()
    raw = images.detach().cpu().contiguous().reshape(images.shape[0], -1).view(torch.uint8)  # bfloat16 too
    digests = []
    for row in raw.numpy():
        h = hashlib.sha256(head)
        h.update(row)
        digests.append(h.digest())
    return digests


def eager_module(model: Callable) -> Callable:
    """The module behind a :class:`FrozenForward` or :class:`MemoisedForward` (``model`` itself otherwise)."""
    return model.module if isinstance(model, (FrozenForward, MemoisedForward)) else model


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
