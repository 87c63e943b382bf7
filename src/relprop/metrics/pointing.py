"""Pointing-game protocol: which (image, class) pairs are explained, their masks, the "difficult"
subset and the per-class report (TorchRay's benchmark; Nam et al. [Nam-Hedge], Table 1).

:func:`relprop.metrics.localisation.pointing_game` scores one (map, mask) pair. The protocol around it:

* every ground-truth class of an image is one pair, its mask the union of all objects of that class
  (objects marked difficult included); a pair whose objects are *all* marked difficult is skipped
  (TorchRay on VOC07);
* Nam et al. [Nam-Hedge] report two cases: ``"L"`` (all labels) and ``"P"`` (only labels the model predicted);
* the "difficult" subset (Zhang et al., excitation backprop [Zhang2016-EB]): the class's mask covers less than a
  quarter of the image and the image holds at least one other class. TorchRay ships these flags as
  lists; pass such a list to :func:`pointing_game_report` to use it instead;
* the score is the macro mean of the per-class accuracies; TorchRay counts a class without pairs as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._common import as_tensor, check_masks
from .aggregate import ClassAggregate, per_class_mean

__all__ = ["PointingPairs", "PointingReport", "pointing_pairs", "pointing_game_report"]

MODES = ("L", "P")


@dataclass(frozen=True)
class PointingPairs:
    """The (image, class) pairs to explain.

    ``image`` (N,): index of the image; ``classes`` (N,): the class; ``masks`` (N, H, W): union of the
    class's objects; ``difficult`` (N,): in the difficult subset; ``skipped_difficult``: pairs left out
    because every object of the class is marked difficult; ``skipped_unpredicted``: pairs left out in
    mode ``"P"`` because the model did not predict the class.
    """

    image: Tensor
    classes: Tensor
    masks: Tensor
    difficult: Tensor
    skipped_difficult: int
    skipped_unpredicted: int


def pointing_pairs(object_labels: Sequence[Sequence[int]], object_masks: Sequence[Tensor],
                   object_difficult: Optional[Sequence[Sequence[bool]]] = None, *, mode: str = "L",
                   predicted: Optional[Sequence[Sequence[int]]] = None, skip_all_difficult: bool = True,
                   max_fraction: float = 0.25) -> PointingPairs:
    """Build the pointing-game pairs of a list of images.

    ``object_labels[i]``: the K_i object labels of image i; ``object_masks[i]``: (K_i, H, W) binary
    masks (boxes or segments, all images at one resolution); ``object_difficult[i]``: K_i flags
    (default: none difficult). ``mode="L"``: every ground-truth class; ``"P"``: only ground-truth
    classes listed in ``predicted[i]`` (e.g. the classes with a positive logit of a multi-label model,
    or the top-1 class); predicted classes without an object have no mask and are not pairs.
    ``skip_all_difficult``: skip a class whose objects are all difficult (TorchRay on VOC07).
    A pair is difficult when its mask covers less than ``max_fraction`` of the image and the image has
    at least two ground-truth classes. Pairs are ordered by image, then class.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'L' (all labels) or 'P' (predicted labels), got {mode!r}")
    n = len(object_labels)
    if len(object_masks) != n:
        raise ValueError(f"object_labels has {n} images but object_masks has {len(object_masks)}")
    if object_difficult is not None and len(object_difficult) != n:
        raise ValueError(f"object_labels has {n} images but object_difficult has {len(object_difficult)}")
    if mode == "P":
        if predicted is None:
            raise ValueError("mode 'P' needs the predicted classes of every image (predicted=...)")
        if len(predicted) != n:
            raise ValueError(f"object_labels has {n} images but predicted has {len(predicted)}")
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
    images, classes, masks, difficult = [], [], [], []
    size = None
    skipped_difficult = skipped_unpredicted = 0
    for i in range(n):
        labels = as_tensor(object_labels[i], "object_labels").reshape(-1).long()
        m = check_masks(as_tensor(object_masks[i], "object_masks"), f"object_masks[{i}]")
        if m.shape[0] != labels.numel():
            raise ValueError(f"image {i}: {labels.numel()} labels but {m.shape[0]} masks")
        if size is None:
            size = tuple(m.shape[1:])
        elif tuple(m.shape[1:]) != size:
            raise ValueError(f"image {i}: masks of size {tuple(m.shape[1:])}, earlier images {size}; "
                             "bring all masks to one resolution first")
        dif = (torch.zeros(labels.numel(), dtype=torch.bool) if object_difficult is None
               else torch.as_tensor(list(object_difficult[i]), dtype=torch.bool).reshape(-1))
        if dif.numel() != labels.numel():
            raise ValueError(f"image {i}: {labels.numel()} labels but {dif.numel()} difficult flags")
        present = sorted(set(labels.tolist()))
        keep_pred = None if mode == "L" else {int(c) for c in predicted[i]}  # type: ignore[index]
        for c in present:
            sel = labels == c
            if skip_all_difficult and bool(dif[sel].all()):
                skipped_difficult += 1
                continue
            if keep_pred is not None and c not in keep_pred:
                skipped_unpredicted += 1
                continue
            mask = m[sel.to(m.device)].any(0)
            frac = float(mask.sum()) / mask.numel()
            images.append(i)
            classes.append(c)
            masks.append(mask)
            difficult.append(frac < max_fraction and len(present) >= 2)
    if masks:
        mstack = torch.stack(masks)
    else:
        mstack = torch.zeros((0,) + (size or (0, 0)), dtype=torch.bool)
    return PointingPairs(torch.tensor(images, dtype=torch.long), torch.tensor(classes, dtype=torch.long),
                         mstack, torch.tensor(difficult, dtype=torch.bool), skipped_difficult,
                         skipped_unpredicted)


@dataclass(frozen=True)
class PointingReport:
    """``all``: per-class accuracies and their macro mean over every pair; ``difficult``: the same on
    the difficult subset (None when no flags were given)."""

    all: ClassAggregate
    difficult: Optional[ClassAggregate]


def pointing_game_report(hits, classes, num_classes: int, *, difficult=None,
                         empty_class: str = "zero") -> PointingReport:
    """Per-class pointing accuracy ``#Hit / (#Hit + #Miss)`` and its macro mean (Nam et al. [Nam-Hedge], Table 1;
    TorchRay), on all pairs and on the difficult subset.

    ``hits`` (N,): 1 / 0 / NaN from :func:`relprop.metrics.localisation.pointing_game` (NaN pairs are
    not counted); ``classes`` (N,); ``difficult`` (N,) flags (e.g. :attr:`PointingPairs.difficult` or
    TorchRay's lists). ``empty_class="zero"`` (TorchRay): a class without counted pairs scores 0 and is
    averaged; ``"nan"``: it is left out (see ``classes_counted``).
    """
    everything = per_class_mean(hits, classes, num_classes=num_classes, empty_class=empty_class)
    sub = None
    if difficult is not None:
        sub = per_class_mean(hits, classes, num_classes=num_classes, include=difficult,
                             empty_class=empty_class)
    return PointingReport(everything, sub)
