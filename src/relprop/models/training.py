"""The seeded training loop shared by the shipped synthetic-benchmark models (:mod:`.train_shapes`,
:mod:`.train_nodules3d`): AdamW, a one-cycle learning-rate schedule and random flips, with the batch
order and the flips drawn from a generator seeded with ``seed``."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn


def train_epochs(model: nn.Module, load: Callable[[Tensor], Tensor], targets: Tensor,
                 loss: Callable[[Tensor, Tensor], Tensor], *, epochs: int, lr: float, batch_size: int, seed: int,
                 weight_decay: float, pct_start: float, flip_dims: Sequence[int],
                 memory_format: torch.memory_format = torch.contiguous_format,
                 on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Train ``model`` in place for ``epochs`` passes over the ``len(targets)`` samples.

    ``load(indices)`` gives the input batch of those samples; each sample is flipped along each of
    ``flip_dims`` with probability 1/2; ``loss(model(x), targets[indices])`` is minimised.
    ``on_epoch(epoch, mean loss)`` runs after every epoch (``epoch`` counts from 0).
    """
    count = len(targets)
    steps = epochs * math.ceil(count / batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=pct_start)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(count, generator=gen)
        flips = torch.rand(count, len(flip_dims), generator=gen) < 0.5
        total = 0.0
        for i in range(0, count, batch_size):
            idx = order[i:i + batch_size]
            x = load(idx)
            for k, dim in enumerate(flip_dims):
                f = flips[idx, k]
                x[f] = x[f].flip(dim)
            x = x.contiguous(memory_format=memory_format)
            value = loss(model(x), targets[idx])
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
            schedule.step()
            total += float(value.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / count)
    return model
