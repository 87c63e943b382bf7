"""What an explanation explains: targets, the output selectors and the initial relevance they give.

A target is a class index (or one per sample, or None for the predicted class), or an output
selector: :class:`Region` (a class inside a region of a segmentation output), :class:`Output` (a
named entry of a dict / ``ModelOutput``, or a position in a tuple) or a callable
``output -> score per sample``. :func:`resolve_selection` turns any of them into a
:class:`Selection` of the output; :func:`resolve_target` accepts class indices only, for the methods
that need one class per sample of a (batch, classes) output. :func:`one_hot` and
:func:`one_hot_logit` are the one-hot initial relevances. Checks of inputs and of a target's type
are in :mod:`relprop.checks`.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch

from .checks import check_target

Tensor = torch.Tensor


@dataclass(frozen=True)
class Region:
    """Class ``class_index`` inside ``mask``, a boolean (H, W) or (B, H, W) mask over the spatial
    dimensions of a (B, C, H, W) output: "why are these pixels class c". The initial relevance is
    the class-c output inside the mask, zero elsewhere."""

    class_index: int
    mask: Any

    def __post_init__(self) -> None:
        c = self.class_index
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ValueError(f"Region: class_index must be an int, got {type(c).__name__} {c!r}")
        mask = torch.as_tensor(self.mask) if isinstance(self.mask, np.ndarray) else self.mask
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            kind = f"dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"Region: mask must be a boolean tensor (H, W) or (B, H, W), got {kind}")
        if mask.dim() not in (2, 3):
            raise ValueError(f"Region: mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
        object.__setattr__(self, "mask", mask)


@dataclass(frozen=True)
class Output:
    """Entry ``name`` of a model output that is a dict (``ModelOutput``; a position for a tuple),
    explained for ``target`` (a class index, None, a :class:`Region` or a callable)."""

    name: str | int
    target: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.target, Output):
            raise ValueError("Output: the target of an Output cannot be another Output")
        check_target(self.target)


Target = Union[None, int, Sequence[int], Tensor, Region, Output, Callable[[Tensor], Tensor]]

#: the model-output entry and the method of the explanation under way (see :func:`selecting`)
_SELECTED_OUTPUT: contextvars.ContextVar[str | int | None] = contextvars.ContextVar("relprop_output", default=None)
_METHOD: contextvars.ContextVar[str | None] = contextvars.ContextVar("relprop_method", default=None)


@contextlib.contextmanager
def selecting(output: str | int | None, method: str | None = None) -> Iterator[None]:
    """While the block runs, relprop's traces end in the model-output entry ``output`` and refusals
    of a target name ``method``."""
    tokens = _SELECTED_OUTPUT.set(output), _METHOD.set(method)
    try:
        yield
    finally:
        _SELECTED_OUTPUT.reset(tokens[0])
        _METHOD.reset(tokens[1])


def selected_output() -> str | int | None:
    """The model-output entry that the explanation under way selects (None: the whole output)."""
    return _SELECTED_OUTPUT.get()


def split_output(target: Target) -> tuple[str | int | None, Target]:
    """``(entry name, inner target)`` of an :class:`Output` target; ``(None, target)`` otherwise."""
    if isinstance(target, Output):
        return target.name, target.target
    return None, target


def _refuse_selector(what: str) -> None:
    method = _METHOD.get()
    who = f"method {method!r}" if method else "this method"
    raise ValueError(
        f"{who} needs one class per sample of a (batch, classes) output, but got {what}; "
        f"see docs/methods.md (Output selectors) for the methods that accept it"
    )


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Class index per sample as a long tensor (B,); None means the predicted class. Output
    selectors (a :class:`Region`, a callable, a spatial output) are refused, naming the method."""
    if isinstance(target, Selection):
        if target.indices is None:
            _refuse_selector("a region or callable target")
        target = target.indices
    if isinstance(target, Region):
        _refuse_selector("a Region target")
    if callable(target) and not isinstance(target, (torch.Tensor, type)):
        _refuse_selector("a callable target")
    if logits.dim() != 2:
        if _METHOD.get() is not None:
            _refuse_selector(f"an output of shape {tuple(logits.shape)}")
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


def one_hot(output: Tensor, indices: Tensor, value: Tensor | float = 1.0) -> Tensor:
    """Zeros shaped like ``output`` (B, C, ...) with ``value`` at each sample's class ``indices`` (B,):
    the one-hot initial relevance (``value``: a number, or one per sample shaped (B, 1))."""
    return torch.zeros_like(output).scatter_(1, indices.view(-1, 1), value)


def one_hot_logit(logits: Tensor, target: Tensor) -> Tensor:
    """Initial relevance: the target logit at the target class, zero elsewhere (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. II)."""
    return one_hot(logits, target, logits.gather(1, target.view(-1, 1)))


@dataclass(frozen=True)
class Selection:
    """What a target selects in an output ``z`` of shape (B, C, ...): a score per sample and its
    gradient ``w = d score / d z``. Class and region targets are linear, ``score = sum(w * z)`` with
    a 0/1 ``w``; a callable ``fn`` gives ``score = fn(z)``. ``indices`` keeps the class per sample
    when the target is one class per sample of a (B, C) output."""

    weights: Tensor | None = None
    fn: Callable[[Tensor], Tensor] | None = None
    indices: Tensor | None = None

    def __getitem__(self, rows: Tensor) -> "Selection":
        """The selection of some rows of the batch (for methods that batch several inputs per sample)."""
        return Selection(None if self.weights is None else self.weights[rows], self.fn,
                         None if self.indices is None else self.indices[rows])

    def score(self, output: Tensor) -> Tensor:
        """The selected score per sample (B,), differentiable in ``output``."""
        if self.indices is not None:
            return output.gather(1, self.indices.view(-1, 1)).view(-1)
        if self.fn is not None:
            return _call_score(self.fn, output)
        assert self.weights is not None
        return (output * self.weights).flatten(1).sum(1)

    def gradient(self, output: Tensor) -> Tensor:
        """``d score / d output``: the 0/1 selection of a class or region, the gradient of a callable."""
        if self.indices is not None:
            return one_hot(output, self.indices)
        if self.fn is None:
            assert self.weights is not None
            return self.weights
        with torch.enable_grad():
            leaf = output.detach().requires_grad_(True)
            score = _call_score(self.fn, leaf)
            if not score.requires_grad:
                raise ValueError("the callable target's score does not depend on the model output")
            return torch.autograd.grad(score.sum(), leaf)[0]

    def initial_relevance(self, output: Tensor) -> Tensor:
        """LRP's initial relevance ``output * d score / d output``: the selected logits (one-hot
        logit, or the class inside the region), or for a callable the first-order Taylor terms of
        its score at the output."""
        if self.indices is not None:
            return one_hot_logit(output, self.indices)
        return output.detach() * self.gradient(output)


def _call_score(fn: Callable[[Tensor], Tensor], output: Tensor) -> Tensor:
    score = fn(output)
    if not isinstance(score, torch.Tensor) or score.shape != (output.shape[0],):
        shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(f"the callable target must return one score per sample, shape ({output.shape[0]},), "
                         f"got {shape}")
    return score


def resolve_selection(target: Target, output: Tensor) -> Selection:
    """The :class:`Selection` of ``target`` in ``output``: class indices on a (B, C) output, a class
    over all positions or a :class:`Region` of a (B, C, H, W) output, or a callable score."""
    if isinstance(target, Selection):
        return target
    if isinstance(target, Output):
        raise ValueError("Output(...) must be the outermost target (pass it to relprop.explain)")
    if callable(target) and not isinstance(target, (torch.Tensor, type)):
        return Selection(fn=target)
    if output.dim() == 2 and not isinstance(target, Region):
        return Selection(indices=resolve_target(target, output))
    if output.dim() < 2:
        raise ValueError(f"the selected model output must be shaped (batch, classes, ...), got {tuple(output.shape)}")
    if isinstance(target, Region):
        return Selection(weights=_region_weights(target, output))
    if target is None:
        raise ValueError(f"target=None (the predicted class) needs class scores shaped (batch, classes), but the "
                         f"output has shape {tuple(output.shape)}, where it is ambiguous; pass a class index or "
                         "relprop.targets.Region(class, mask)")
    pooled = output.flatten(2).sum(2)  # a class index selects the class at every position
    indices = resolve_target(target, pooled)
    weights = torch.zeros_like(output)
    weights[torch.arange(output.shape[0], device=output.device), indices] = 1
    return Selection(weights=weights)


def _region_weights(region: Region, output: Tensor) -> Tensor:
    """1 at the region's class inside its mask, 0 elsewhere, shaped like ``output``."""
    if output.dim() < 3:
        raise ValueError(f"a Region needs an output with spatial dimensions (batch, classes, H, W), "
                         f"got {tuple(output.shape)}")
    batch, classes, spatial = output.shape[0], output.shape[1], tuple(output.shape[2:])
    c = int(region.class_index)
    if not 0 <= c < classes:
        raise ValueError(f"Region class {c} out of range: the output has {classes} classes (0..{classes - 1})")
    mask = region.mask.to(output.device)
    if tuple(mask.shape[-len(spatial):]) != spatial or mask.dim() not in (len(spatial), len(spatial) + 1) or (
            mask.dim() == len(spatial) + 1 and mask.shape[0] != batch):
        raise ValueError(f"Region mask has shape {tuple(mask.shape)}, but the output's spatial dimensions are "
                         f"{spatial} for a batch of {batch}: give {spatial} or {(batch, *spatial)}")
    mask = mask.expand(batch, *spatial)
    empty = (~mask.flatten(1).any(1)).nonzero().view(-1).tolist()
    if empty:
        raise ValueError(f"Region mask is empty (no pixel selected) for sample(s) {empty}")
    weights = torch.zeros_like(output)
    weights[:, c] = mask.to(output.dtype)
    return weights
