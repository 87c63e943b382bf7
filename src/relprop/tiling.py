"""Spatial tiling of a convolution's backward step: one large input under a memory budget.

The LRP rules on a convolution are local (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. II):
``R_in = x * W^T (r / z')`` and its variants, where each output position's term depends only on the
relevance and the output there and on the input window under the kernel. The output is split into
bands of rows (its first spatial dimension); each band is explained from the input rows its receptive
field covers (stride, padding, dilation; zero rows only at the real borders of the input), with a
layer whose padding along that dimension is the band's own, and its input relevance is added into
the whole input's at its rows (bands overlap in the input by the kernel's halo). Memory then holds
the input, the output relevance and the input relevance with one band's temporaries, instead of
several temporaries of the whole size; the maps equal the whole step's up to float round-off.

Only rules that declare themselves local (:meth:`relprop.rules.AffineRule.banded`) are tiled; a rule
that uses statistics of the whole layer (RAP's per-sample totals, ...) always takes the whole step.
:mod:`relprop.segments` tiles a node when its whole step does not fit the memory budget
(:func:`band_plan`); :data:`FORCE_ROWS` tiles every convolution (for tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .ops import Affine

if TYPE_CHECKING:
    from .rules.base import AffineRule, Step

Tensor = torch.Tensor

#: bytes a band's temporaries may take (the band height follows from it)
BAND_BYTES = 256 * 10**6
#: output rows per band for every tileable step, whatever the budget (None: tile only under a budget)
FORCE_ROWS: int | None = None


def tileable(op: object) -> bool:
    """Whether ``op`` is a convolution whose backward step can be split into bands of output rows."""
    return isinstance(op, Affine) and op.layer_type == "conv" and op.nd >= 1


def band_plan(op: object, out: Tensor, work: int, in_bytes: int, out_bytes: int) -> tuple[int, int] | None:
    """``(rows, working bytes)`` of the tiled backward step of ``op`` with output ``out``, whose whole
    step needs ``work`` bytes: bands of about :data:`BAND_BYTES` of temporaries; the step then holds
    the output and input relevance and one band. None where ``op`` is not tileable or one row per
    band would not save memory."""
    if not tileable(op) or not isinstance(out, Tensor) or out.dim() < 3 or out.shape[2] < 2:
        return None
    total_rows = out.shape[2]
    rows = max(1, min(total_rows, total_rows * BAND_BYTES // max(work, 1)))
    halo = _halo_rows(op)  # type: ignore[arg-type]
    band_work = work * (rows + halo) // total_rows
    tiled = out_bytes + in_bytes + band_work
    return (rows, tiled) if tiled < work else None


def _extent(op: Affine) -> int:
    """Input rows one output row reads along the first spatial dimension (the dilated kernel)."""
    return op.dilation[0] * (op.module.kernel_size[0] - 1) + 1


def _halo_rows(op: Affine) -> int:
    """Input rows a band reads beyond its own share (the kernel's extent), as a number of output rows."""
    return -(-_extent(op) // op.stride[0])


def rows_for(step: "Step") -> int | None:
    """The output rows per band of ``step`` (:data:`FORCE_ROWS` or the memory plan's), None: whole."""
    rows = FORCE_ROWS if FORCE_ROWS is not None else step.band_rows
    return rows if rows is not None and tileable(step.op) else None


def _padding(op: Affine) -> tuple[int, int]:
    """Zero rows before and after the input along the first spatial dimension (folded and own padding)."""
    top = bottom = op.padding[0]
    if op.pre_pad is not None:
        i = 2 * (op.nd - 1)
        top, bottom = top + op.pre_pad[i], bottom + op.pre_pad[i + 1]
    return top, bottom


class BandLayer:
    """An affine layer restricted to a band of input rows: the layer's weights, with ``top`` and
    ``bottom`` zero rows (the real padding at the input's borders, none inside) along the first
    spatial dimension. Derived tensors (:meth:`cached`) are kept per band layer, as some depend on
    the geometry (e.g. the response to ones at the borders)."""

    def __init__(self, layer: Affine, top: int, bottom: int) -> None:
        self._layer = layer
        pre = list(layer.pre_pad) if layer.pre_pad is not None else [0] * (2 * layer.nd)
        i = 2 * (layer.nd - 1)
        pre[i], pre[i + 1] = top, bottom
        self.pre_pad = tuple(pre) if any(pre) else None
        self.padding = (0, *layer.padding[1:])
        self._own: dict[str, Tensor] = {}

    def __getattr__(self, name: str):
        return getattr(self._layer, name)

    def cached(self, key: str, make: Callable[[], Tensor]) -> Tensor:
        """As :meth:`Affine.cached`, for this band layer only."""
        found = self._own.get(key)
        if found is None:
            with torch.inference_mode(False), torch.no_grad():
                found = self._own[key] = make().detach()
        return found

    apply = Affine.apply
    transpose = Affine.transpose
    _pointwise = Affine._pointwise
    _patchwise = Affine._patchwise
    _patch_transpose = Affine._patch_transpose


def relevance_in_bands(rule: "AffineRule", step: "Step", r: Tensor, rows: int) -> Tensor:
    """The input relevance of ``step`` under ``rule`` (a local rule for this input), computed over
    bands of ``rows`` output rows and accumulated at the input rows each band reads."""
    if rows < 1:
        raise ValueError(f"a band needs at least one output row, got {rows}")
    layer: Affine = step.op
    x, z = step.inputs[0], step.output
    top, bottom = _padding(layer)
    stride, extent = layer.stride[0], _extent(layer)
    height, out_rows = x.shape[2], z.shape[2]
    result: Tensor | None = None
    bands: dict[tuple[int, int], BandLayer] = {}
    for first in range(0, out_rows, rows):
        last = min(out_rows, first + rows)
        lo, hi = first * stride - top, (last - 1) * stride - top + extent
        a, b = max(lo, 0), min(hi, height)
        if a >= b:  # the band reads padding only: its inputs are zero rows, which get nothing
            continue
        geometry = (a - lo, hi - b)
        band = bands.get(geometry)
        if band is None:
            band = bands[geometry] = BandLayer(layer, *geometry)
        part = rule(band, x.narrow(2, a, b - a), z.narrow(2, first, last - first),  # type: ignore[arg-type]
                    r.narrow(2, first, last - first), step.nonnegative)
        if result is None:
            result = torch.zeros(x.shape, dtype=part.dtype, device=part.device)
        result.narrow(2, a, b - a).add_(part)
        del part
    return result if result is not None else torch.zeros_like(x)


__all__ = ["BAND_BYTES", "FORCE_ROWS", "BandLayer", "band_plan", "relevance_in_bands", "rows_for", "tileable"]
