"""Explanation maps kept across the evaluations of one shared model.

``relprop reproduce`` evaluates the same methods on the same images in several jobs (localisation,
segmentation, perturbation, insertion, ...): a map is a function of the method variant, the model
input and the explained class, so each is computed once and looked up afterwards. Entries are keyed
by the method's key, a digest of the image's bytes and the class; the least recently used are
dropped beyond :data:`MAP_CACHE_BYTES`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["MAP_CACHE_BYTES", "MapCache", "image_digests"]

#: the most bytes of maps a cache keeps (64 x 64 float32 maps: 16 KiB each)
MAP_CACHE_BYTES = 2 * 1024 ** 3


def image_digests(images: Tensor) -> list[bytes]:
    """A digest of every image's dtype, shape and bytes: equal digests, equal model inputs."""
    flat = images.detach().cpu().contiguous()
    head = f"{flat.dtype}{tuple(flat.shape[1:])}".encode()
    return [hashlib.blake2b(head + x.numpy().tobytes(), digest_size=16).digest() for x in flat]


class MapCache:
    """Maps (H, W) by ``(method key, image digest, class)``, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int = MAP_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._maps: OrderedDict[tuple, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, key: tuple) -> Optional[Tensor]:
        m = self._maps.get(key)
        if m is not None:
            self._maps.move_to_end(key)
        return m

    def put(self, key: tuple, value: Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        old = self._maps.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        self._maps[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._maps.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()

    def maps(self, method: str, digests: list[bytes], targets: Tensor,
             explain: Callable[[Tensor], Tensor]) -> Tensor:
        """(N, H, W) maps of ``method`` for the pairs (``digests[i]``, ``targets[i]``): those not kept
        come from ``explain(indices)`` (the maps of those pairs, in one batch) and are kept."""
        keys = [(method, d, int(t)) for d, t in zip(digests, targets.tolist())]
        found = [self.get(k) for k in keys]
        missing = [i for i, m in enumerate(found) if m is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = explain(torch.tensor(missing, device=targets.device))
            for j, i in enumerate(missing):
                found[i] = fresh[j]
                self.put(keys[i], fresh[j].clone())
        return torch.stack(found)  # type: ignore[arg-type]
