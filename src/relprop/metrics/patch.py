"""Maximal patch masking (Iwana et al. 2019 [Iwana2019-SGLRP], Sec. 5.3.1-5.3.2, Fig. 11).

A ``p x p`` patch around the maximum of the map is replaced by the data-set mean and the change of
the target's output is measured; a random-location baseline masks the same patch at a random centre.
Targets are the ground-truth class (Fig. 11 a) or the second most probable class (Fig. 11 b, see
:func:`ranked_classes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ._common import apply_sign, as_seeds, check_finite, first_argmax, is_constant
from .perturbation import check_perturbation_inputs, chunk_size, forward_in_chunks, model_scores
from .registry import Records, as_floats, register, vector_records

__all__ = ["PatchMaskingResult", "maximal_patch_masking", "ranked_classes", "patch_window"]


@dataclass(frozen=True)
class PatchMaskingResult:
    """``change`` (B, P): ``f(x') - f(x)`` per patch size (lower is better: a larger drop);
    ``clean`` (B,): ``f(x)``; ``masked`` (B, P): ``f(x')``; ``centers`` (B, 2): ``(row, col)`` of the
    masked patch centre; ``patch_sizes`` (P,). Rows are NaN for an undefined centre (constant map).
    ``no_positive`` (B,): the map has no positive value, so its maximum is not positive evidence; the
    row is still computed (the maximum is defined) and callers may count or drop such samples."""

    change: Tensor
    clean: Tensor
    masked: Tensor
    centers: Tensor
    patch_sizes: Tensor
    no_positive: Tensor

    def relative_change(self) -> Tensor:
        """(B, P) ``(f(x') - f(x)) / f(x)``."""
        return self.change / self.clean[:, None]


@torch.no_grad()
def ranked_classes(model: Callable, images: Tensor, k: int = 2,
                   internal_batch_size: Optional[int] = None) -> Tensor:
    """(B, k) class indices by decreasing score; ``[:, 1]`` is the second most probable class."""
    logits = forward_in_chunks(model, images.shape[0], lambda i: images[i],
                               chunk_size(internal_batch_size, images), images.device)
    return torch.topk(logits, k, dim=1).indices


def patch_window(center: int, p: int, size: int) -> tuple[int, int]:
    """Half-open index range of a length-``p`` window around ``center``, clipped to ``[0, size)``.

    Odd ``p``: ``center - p//2 .. center + p//2``. Even ``p``: one more pixel before the centre than
    after (``center - p//2 .. center + p//2 - 1``). Windows are clipped at borders (not shifted), so a
    patch at a border covers fewer pixels.
    """
    lo = center - p // 2
    hi = lo + p
    return max(lo, 0), min(hi, size)


def _change_records(res: PatchMaskingResult) -> Records:
    """Per pair: the change per patch size, the clean score and whether the map has a positive value;
    the scalar is the mean change."""
    rows = vector_records(res.change)
    clean, nopos = as_floats(res.clean), res.no_positive.cpu().tolist()
    return [(s, {"change": v, "clean": clean[i], "no_positive": bool(nopos[i])})
            for i, (s, v) in enumerate(rows)]


@register("maximal_patch_masking", higher_is_better=False,
          source="[Iwana2019-SGLRP] Sec. 5.3.1-5.3.2, Fig. 11", category="perturbation",
          inputs=("model", "images", "maps", "targets"), seeded=True, result=_change_records,
          x_axis=lambda options, side: ([int(p) for p in options.get("patch_sizes", (1, 3, 5, 7, 9))],
                                        "patch size"))
def maximal_patch_masking(model: Callable, images, maps, targets, *,
                          patch_sizes: Sequence[int] = (1, 3, 5, 7, 9),
                          fill: Union[float, Tensor] = 0.0, location: str = "max",
                          sign: str = "signed", seed: Union[int, Sequence[int]] = 0,
                          score: str = "softmax", internal_batch_size: Optional[int] = None) -> PatchMaskingResult:
    """Change of the target's output when the ``p x p`` patch at the map's maximum is masked.

    ``location="max"``: centre at the first maximum (row-major tie rule) of the sign-transformed map;
    ``"random"``: a uniformly random pixel per image from ``seed`` (Iwana et al.'s [Iwana2019-SGLRP] Random baseline; the
    map is ignored). ``fill``: the data-set mean per channel in the model's input space, a number or a
    (C,) tensor (0 for mean/std-normalised inputs). ``score``: ``"softmax"`` (``y_hat_t``, the
    default) or ``"logit"``. Lower change is better. NaN rows for a constant map with ``"max"``; an
    all-negative map keeps its (defined) maximum and is flagged in ``no_positive``.
    """
    if location not in ("max", "random"):
        raise ValueError(f"location must be 'max' or 'random', got {location!r}")
    x, m, t = check_perturbation_inputs(images, maps, targets)
    b, c, h, w = x.shape
    if t is None:
        raise ValueError("targets are required (the ground truth, or ranked_classes(...)[:, 1])")
    ps = [int(p) for p in patch_sizes]
    if not ps or min(ps) < 1:
        raise ValueError(f"patch_sizes must be positive ints, got {list(patch_sizes)}")
    fv = check_finite(torch.as_tensor(fill, dtype=x.dtype, device=x.device), "fill values")
    if fv.dim() == 0:
        fv = fv.expand(c)
    if fv.shape != (c,):
        raise ValueError(f"fill must be a number or a ({c},) tensor, got shape {tuple(fv.shape)}")
    r = apply_sign(m, sign)
    if location == "max":
        centers = first_argmax(r)
        undefined = is_constant(r)
    else:
        seeds = as_seeds(seed, b)
        idx = torch.stack([torch.randint(h * w, (1,), generator=torch.Generator().manual_seed(s))[0]
                           for s in seeds]) if b else torch.zeros(0, dtype=torch.long)
        idx = idx.to(x.device)
        centers = torch.stack([idx // w, idx % w], 1)
        undefined = torch.zeros(b, dtype=torch.bool, device=x.device)
    np_ = len(ps)

    def build(i: Tensor) -> Tensor:
        out = x[i // (np_ + 1)].clone()
        for j, flat in enumerate(i.tolist()):
            bi, pi = divmod(flat, np_ + 1)
            if pi == 0:
                continue  # the clean image
            p = ps[pi - 1]
            r0, r1 = patch_window(int(centers[bi, 0]), p, h)
            c0, c1 = patch_window(int(centers[bi, 1]), p, w)
            out[j, :, r0:r1, c0:c1] = fv[:, None, None]
        return out

    logits = forward_in_chunks(model, b * (np_ + 1), build, chunk_size(internal_batch_size, x), x.device)
    s = model_scores(logits, t.repeat_interleave(np_ + 1), score).view(b, np_ + 1)
    clean, masked = s[:, 0].clone(), s[:, 1:].clone()
    change = masked - clean[:, None]
    change[undefined] = float("nan")
    masked[undefined] = float("nan")
    no_positive = ~(m.flatten(1) > 0).any(1)
    return PatchMaskingResult(change, clean, masked, centers, torch.tensor(ps), no_positive)
