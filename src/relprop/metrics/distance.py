"""Mean distance of the top-K positive attributions from the top-1 (Nam, Choi and Lee [Nam-RAP-Journal], Eq. 12, Fig. 7b)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._common import apply_sign, check_maps, stable_order
from .registry import register, vector_records

__all__ = ["topk_distance"]


@register("topk_distance", higher_is_better=None,
          source="[Nam-RAP-Journal] Eq. 12, Fig. 7b", category="distribution",
          inputs=("maps",), result=vector_records,
          x_axis=lambda options, side: (list(options.get("ks", (10, 100, 1000))), "K"))
def topk_distance(maps, ks: Sequence[int] = (10, 100, 1000), *, squared: bool = False,
                  normalise: bool = False, fewer: str = "nan", sign: str = "signed") -> Tensor:
    """``D_K = (1/K) sum_{n=1..K} ||r_1 - r_n||`` over the K largest positive pixels (B, len(ks)).

    ``H_p = (r_1, ..., r_L)`` are the positions of the positive pixels in decreasing relevance
    (stable: ties by row-major index), so ``r_1`` is the first maximum and the sum includes ``n = 1``
    (distance 0), as Eq. 12 is written. Distances are Euclidean in pixels (the text: "the euclidean
    distance"); ``squared=True`` squares them, as Eq. 12's ``||.||^2`` reads literally.
    ``normalise=True`` divides by the image diagonal (its square when ``squared``).

    Undefined: no positive pixel -> NaN; fewer than K positive pixels -> NaN (``fewer="nan"``,
    Eq. 12 requires K < L) or the mean over all positives (``fewer="all"``). Descriptive: a small
    ``D_K`` means positive relevance concentrated around the top-1 (Nam, Choi and Lee [Nam-RAP-Journal] do not call it better).
    """
    if fewer not in ("nan", "all"):
        raise ValueError(f"fewer must be 'nan' or 'all', got {fewer!r}")
    ks_t = torch.as_tensor(list(ks), dtype=torch.long)
    if ks_t.dim() != 1 or ks_t.numel() == 0 or (ks_t < 1).any():
        raise ValueError(f"ks must be positive ints, got {list(ks)}")
    r = apply_sign(check_maps(maps), sign)
    b, h, w = r.shape
    flat = r.flatten(1)
    npos = (flat > 0).sum(1)
    kmax = min(int(ks_t.max()), h * w)
    top = stable_order(flat, descending=True)[:, :kmax]
    rows, cols = (top // w).to(torch.float64), (top % w).to(torch.float64)
    d2 = (rows - rows[:, :1]) ** 2 + (cols - cols[:, :1]) ** 2
    d = d2 if squared else d2.sqrt()
    if normalise:
        diag2 = float(h * h + w * w)
        d = d / (diag2 if squared else diag2 ** 0.5)
    csum = d.cumsum(1)
    ks_dev = ks_t.to(r.device)
    keff = torch.minimum(ks_dev[None, :].expand(b, -1), npos[:, None]).clamp(max=kmax)
    out = csum.gather(1, (keff - 1).clamp(min=0)) / keff.to(torch.float64)
    too_few = npos[:, None] < ks_dev[None, :]
    if fewer == "nan":
        out[too_few] = float("nan")
    out[npos == 0] = float("nan")
    return out
