"""Object-versus-context occlusion check (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. IV-A, Fig. 2).

Verifies the assumption behind mu / mu_w that the model relies on the object more than on its
context: the object area (inside the class's boxes) or the context (outside) is replaced by the
data-set mean colour per pixel, and ``Delta f = f(x') - f(x)`` of the true class's logit is recorded
(lower means a stronger reaction). Fig. 2 plots both as a function of the relative box size: bin
with :func:`relprop.metrics.aggregate.binned_mean` against
:func:`relprop.metrics.localisation.box_fraction`.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ._common import check_finite, check_images, check_masks, check_targets
from .perturbation import chunk_size, forward_in_chunks, model_scores
from .registry import Records, as_floats, register, scalar_records

__all__ = ["object_context_occlusion", "target_score"]


def _object_minus_context(out: Tensor) -> Records:
    """Per pair: object minus context (negative when occluding the object hurts more, Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Fig. 2)."""
    return [(r[0] - r[1], {"object": r[0], "context": r[1]}) for r in as_floats(out)]


@register("object_context_occlusion", higher_is_better=None,
          source="[Kohlbrenner2020-LRP] Sec. IV-A, Fig. 2", category="sanity",
          inputs=("model", "images", "masks", "targets"), result=_object_minus_context)
def object_context_occlusion(model: Callable, images, masks, targets, *,
                             fill: Union[float, Tensor] = 0.0, score: str = "logit",
                             internal_batch_size: Optional[int] = None) -> Tensor:
    """(B, 2) ``[Delta f with the object occluded, Delta f with the context occluded]``.

    ``fill``: the data-set mean per pixel in the model's input space - a number, a (C,) tensor or a
    (C, H, W) tensor (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP]: "mean color values per corresponding pixel and dataset"). ``score``:
    ``"logit"`` (the paper) or ``"softmax"``. NaN: object column for an empty mask, context column
    for a mask covering the whole image. A model using the object should give object < context.
    """
    x = check_images(images)
    m = check_masks(masks).to(x.device)
    b, c, h, w = x.shape
    if m.shape != (b, h, w):
        raise ValueError(f"masks {tuple(m.shape)} must be (B, H, W) matching images {tuple(x.shape)}")
    t = check_targets(targets, b, x.device)
    if t is None:
        raise ValueError("targets are required")
    fv = check_finite(torch.as_tensor(fill, dtype=x.dtype, device=x.device), "fill values")
    if fv.dim() == 0:
        fv = fv.expand(c)
    if fv.shape == (c,):
        fv = fv[:, None, None].expand(c, h, w)
    if fv.shape != (c, h, w):
        raise ValueError(f"fill must be a number, a ({c},) or a ({c}, {h}, {w}) tensor, got {tuple(fv.shape)}")

    def build(i: Tensor) -> Tensor:
        bi, kind = i // 3, i % 3
        region = torch.where((kind == 1)[:, None, None], m[bi], ~m[bi])  # 1: object, 2: context
        region = region & (kind != 0)[:, None, None]
        return torch.where(region[:, None], fv[None], x[bi])

    logits = forward_in_chunks(model, 3 * b, build, chunk_size(internal_batch_size, x), x.device)
    s = model_scores(logits, t.repeat_interleave(3), score).view(b, 3)
    out = s[:, 1:] - s[:, :1]
    nin = m.flatten(1).sum(1)
    out[nin == 0, 0] = float("nan")
    out[nin == h * w, 1] = float("nan")
    return out


@register("target_score", volumes=True, higher_is_better=None,
          source="[Nam-Hedge] Sec. 5.3.1 (P: predicted classes)", category="model",
          inputs=("model", "images", "targets"), result=scalar_records)
def target_score(model: Callable, images, targets, *, score: str = "logit") -> Tensor:
    """(B,) the model's ``score`` (``"logit"``, ``"softmax"``, ``"log_softmax"``) of the target class on
    the clean image; tells which explained classes the model predicts (Nam et al. [Nam-Hedge], Table 1, "P");
    images may be (B, C, D, H, W) volumes."""
    x = check_images(images, volumes=True)
    t = check_targets(targets, x.shape[0], x.device)
    if t is None:
        raise ValueError("targets are required")
    with torch.no_grad():
        logits = model(x)
    return model_scores(logits, t, score)
