"""Sharding an evaluation over processes started by ``torchrun`` (gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` joins
the process group. Rank 0 reads the store and broadcasts the samples still to do; they are cut into
batches, and rank ``r`` computes batches ``r, r + world, r + 2 world, ...`` (so a sample lands in the
same batch as in a single-process run and gets bit-identical values). After each round the ranks
send their rows to rank 0 (``gather_object`` over a gloo group, also when the default group is nccl),
which writes them in one transaction. SQLite therefore has a single writer, and the store holds the
same rows as a single-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = ["Context", "setup", "torchrun_env"]


def torchrun_env() -> Optional[tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` when started by torchrun with more than one process."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


@dataclass
class Context:
    """The process's place in the job: ``rank`` of ``world`` processes, and its ``device``."""

    rank: int
    world: int
    device: torch.device
    group: Any = None  # the gloo group used for Python objects
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> Optional[list]:
        """Every rank's ``obj`` as a list on rank 0 (in rank order); None on the other ranks."""
        if self.world == 1:
            return [obj]
        out: Optional[list] = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _device(device: str, local_rank: Optional[int]) -> torch.device:
    """The ``torch.device`` of ``device``; an unknown, absent or unavailable device is a ValueError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if dev.type not in ("cpu", "cuda"):
        backend = getattr(torch, dev.type, None)
        if dev.type == "meta" or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"device {device!r} is not available here; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
        if local_rank is not None and dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def setup(device: str = "cpu", timeout_s: float = 1800.0) -> Context:
    """Join the torchrun process group if there is one; otherwise a single-process context.

    ``device`` ``"cuda"`` becomes ``cuda:LOCAL_RANK`` under torchrun and the default group uses
    nccl; on CPU it uses gloo.
    """
    env = torchrun_env()
    if env is None:
        return Context(0, 1, _device(device, None))
    rank, world, local_rank = env
    dev = _device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        owns = True
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return Context(dist.get_rank(), dist.get_world_size(), dev, group, owns)
