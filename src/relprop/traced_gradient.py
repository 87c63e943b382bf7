"""Gradients of a target score through relprop's traced graph, shared by the gradient-based methods.

:func:`checked_propagator` gives the model's propagator after checking the input's rank; its
:meth:`~relprop.propagate.Propagator.forward_differentiable` evaluates the model's inference-mode
function with autograd. :func:`target_score` is the selected score summed over the batch and
:func:`gradient_or_zeros` its gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .propagate import Propagator, propagator_for
from .targets import Selection

Tensor = torch.Tensor


def checked_propagator(model: nn.Module, x: Tensor) -> Propagator:
    """The model's propagator, after checking the input rank against its first layer."""
    propagator = propagator_for(model)
    propagator.check_input(x)
    return propagator


def target_score(logits: Tensor, indices: Tensor | Selection) -> Tensor:
    """Sum over the batch of each sample's target logit, or of its selected score (a region's
    logits, a callable's score); rows are independent in eval mode."""
    if isinstance(indices, Selection):
        return indices.score(logits).sum()
    return logits.gather(1, indices.view(-1, 1)).sum()


def gradient_or_zeros(score: Tensor, wrt: Tensor) -> Tensor:
    """d score / d wrt, zeros where the score does not depend on ``wrt``."""
    if not score.requires_grad:
        return torch.zeros_like(wrt)
    (grad,) = torch.autograd.grad(score, wrt, allow_unused=True)
    return torch.zeros_like(wrt) if grad is None else grad
