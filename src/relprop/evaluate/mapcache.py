"""Explanation maps kept across the evaluations of one shared model.

``relprop reproduce`` evaluates the same methods on the same images in several jobs (localisation,
segmentation, perturbation, insertion, ...): a map is a function of the method variant, the model
input and the explained class (and, at float round-off, of the batch it is computed in), so the
maps of a batch of pairs are computed once and looked up when the same batch comes again (jobs with
the same data set order, batch size and targets: their batches agree). Entries are keyed by the
method's key and a digest of the pairs' image bytes and classes; the least recently used are
dropped beyond :data:`MAP_CACHE_BYTES`, and all of them when the model's weights change.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Optional

from torch import Tensor

from ..metrics.inference import image_digests

__all__ = ["MAP_CACHE_BYTES", "MapCache", "batch_digest", "image_digests"]

#: the most bytes of maps a cache keeps (64 x 64 float32 maps: 16 KiB each)
MAP_CACHE_BYTES = 2 * 1024 ** 3


def batch_digest(digests: list[bytes], targets: Tensor) -> bytes:
    """A digest of a batch of pairs: its images' digests and classes, in order."""
    h = hashlib.blake2b(digest_size=16)
    for d, t in zip(digests, targets.tolist()):
        h.update(d)
        h.update(int(t).to_bytes(8, "little", signed=True))
    return h.digest()


class MapCache:
    """Maps (H, W) by ``(method key, image digest, class)``, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int = MAP_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._maps: OrderedDict[tuple, Tensor] = OrderedDict()
        #: the state of the model's weights the kept maps were computed with
        self.state: tuple = ()

    def follow(self, state: tuple) -> None:
        """Drop every kept map when the model's weights changed (``state``: their storage and
        version, :func:`relprop.metrics.inference.weights_state`): a map never outlives the weights it was computed with."""
        if state != self.state:
            self._maps.clear()
            self.bytes = 0
            self.state = state

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
             explain: Callable[[], Tensor]) -> Tensor:
        """(N, H, W) maps of ``method`` for the batch of pairs (``digests[i]``, ``targets[i]``): kept
        ones when the same pairs came in the same order before, else ``explain()`` (then kept).

        Whole batches are kept, not single pairs: a method's arithmetic may depend on the batch it
        runs in (convolution kernels are chosen by batch size), so only the same batch gives the
        very maps, to the bit, that computing them again would."""
        key = (method, batch_digest(digests, targets))
        found = self.get(key)
        n = len(digests)
        if found is not None:
            self.hits += n
            return found.clone()  # a metric may change its maps in place
        self.misses += n
        fresh = explain()
        self.put(key, fresh.detach().clone())
        return fresh
