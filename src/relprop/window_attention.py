"""Swin transformers' shifted-window attention and patch merging as operations relprop traces.

torchvision's ``ShiftedWindowAttention`` computes everything inside ``shifted_window_attention``, a
function that ``torch.fx`` keeps opaque (``torch.fx.wrap``), and so does ``PatchMerging`` with
``_patch_merging_pad``. :class:`DecomposedWindowAttention` computes the same function (Liu et al.
2021 [Liu2021-Swin], Sec. 3.2: windowed multi-head self-attention with a relative position bias,
cyclic shift and its mask) from the same parameter tensors, shared: zero padding to whole windows,
a cyclic shift (``torch.roll``, a permutation), the window partition (view and permute), the
query/key/value projection (an :class:`relprop.attention.AttentionProjection`), the scaled query,
``q @ k^T``, the relative position bias and the shift mask added as constants (they absorb their
share as a bias does), a softmax, ``@ v``, the merged heads, the output projection, the windows put
back, the shift undone and the padding cropped. :class:`TraceablePatchMerging` concatenates the
four strided sub-grids with plain indexing. :func:`relprop.structure.inference_copy` puts them in
place of torchvision's modules in the copy it traces; the user's model is never changed.

The geometry (padding amounts, shifts that vanish for windows as large as the feature map, the
shift mask) depends on the feature map's size only: it is computed by helpers that ``torch.fx``
records as calls on sizes, so the trace holds for every image size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionProjection

Tensor = torch.Tensor


def window_geometry(height: int, width: int, window: Sequence[int],
                    shift: Sequence[int]) -> tuple[int, int, int, int]:
    """``(pad_bottom, pad_right, shift_h, shift_w)`` for a ``height x width`` feature map: the zero
    padding to whole windows, and the cyclic shift (none along a side no longer than one window)."""
    pad_b = (window[0] - height % window[0]) % window[0]
    pad_r = (window[1] - width % window[1]) % window[1]
    shift_h = 0 if window[0] >= height + pad_b else shift[0]
    shift_w = 0 if window[1] >= width + pad_r else shift[1]
    return pad_b, pad_r, shift_h, shift_w


def shift_mask(height: int, width: int, window: Sequence[int], shift_h: int, shift_w: int,
               dtype: torch.dtype, device: torch.device) -> Tensor:
    """The additive mask of shifted windows, shaped ``(1, windows, 1, N, N)`` with ``N`` tokens per
    window: ``-100`` between tokens that come from different regions before the cyclic shift, else 0
    (torchvision's ``shifted_window_attention``); all zeros without a shift."""
    mask = torch.zeros((height, width), dtype=dtype, device=device)
    if shift_h or shift_w:
        h_slices = ((0, -window[0]), (-window[0], -shift_h), (-shift_h, None))
        w_slices = ((0, -window[1]), (-window[1], -shift_w), (-shift_w, None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                mask[h[0]:h[1], w[0]:w[1]] = count
                count += 1
    windows = (height // window[0]) * (width // window[1])
    mask = mask.view(height // window[0], window[0], width // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(windows, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    return mask.unsqueeze(1).unsqueeze(0)


torch.fx.wrap("window_geometry")
torch.fx.wrap("shift_mask")


def _relative_position_bias(table: Tensor, index: Tensor, window: Sequence[int]) -> Tensor:
    """The bias of each head between the tokens of a window, ``(1, heads, N, N)``, from the learned
    table (torchvision's ``_get_relative_position_bias``)."""
    n = window[0] * window[1]
    bias = table[index].view(n, n, -1)
    return bias.permute(2, 0, 1).contiguous().unsqueeze(0)


torch.fx.wrap("_relative_position_bias")


def _cosine_position_bias(coords: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, index: Tensor,
                          window: Sequence[int], heads: int) -> Tensor:
    """Swin V2's continuous relative position bias: ``16 sigmoid(mlp(coords))`` (Liu et al. 2022
    [Liu2022-SwinV2], Sec. 3.3; torchvision's ``cpb_mlp``: linear, ReLU, linear), by head and pair."""
    table = F.linear(F.relu(F.linear(coords, weight1, bias1)), weight2).view(-1, heads)
    return 16 * torch.sigmoid(_relative_position_bias(table, index, window))


def _query_value_bias(bias: Tensor) -> Tensor:
    """The packed query/key/value bias with the key's third zero (Swin V2 has no key bias)."""
    third = bias.numel() // 3
    return torch.cat([bias[:third], torch.zeros_like(bias[third:2 * third]), bias[2 * third:]])


torch.fx.wrap("_cosine_position_bias")
torch.fx.wrap("_query_value_bias")


class DecomposedWindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` or ``ShiftedWindowAttentionV2`` (inference: no
    dropout) as traceable operations on the module's own tensors (shared, never copied).

    Swin V2's cosine attention (Liu et al. 2022 [Liu2022-SwinV2], Sec. 3.2) normalises queries and
    keys (``F.normalize``: a division by the norm, held constant as a layer norm's scale), multiplies
    the scores by the learned logit scale (a constant) and adds the bias of a small MLP over the
    relative coordinates (a constant); its packed query/key/value bias, without the key's third, is
    added to the projection as a constant."""

    def __init__(self, attention: nn.Module, path: str) -> None:
        super().__init__()
        self.path = path
        self.window_size = [int(w) for w in attention.window_size]
        self.shift_size = [int(s) for s in attention.shift_size]
        self.num_heads = int(attention.num_heads)
        self.cosine = hasattr(attention, "logit_scale")
        qkv_bias = None if self.cosine else attention.qkv.bias
        self.qkv = AttentionProjection.sharing(attention.qkv.weight, qkv_bias)
        self.proj = AttentionProjection.sharing(attention.proj.weight, attention.proj.bias)
        self._buffers["relative_position_index"] = attention.relative_position_index
        if self.cosine:
            mlp = attention.cpb_mlp
            self._parameters["logit_scale"] = attention.logit_scale
            self._parameters["qkv_bias"] = attention.qkv.bias
            self._parameters["cpb_weight1"] = mlp[0].weight
            self._parameters["cpb_bias1"] = mlp[0].bias
            self._parameters["cpb_weight2"] = mlp[2].weight
            self._buffers["relative_coords_table"] = attention.relative_coords_table
        else:
            self._parameters["relative_position_bias_table"] = attention.relative_position_bias_table
        self.training = False

    def _scores(self, q: Tensor, k: Tensor, head_dim: int) -> Tensor:
        """Attention logits of each head, with the relative position bias."""
        if self.cosine:
            scores = F.normalize(q, dim=-1).matmul(F.normalize(k, dim=-1).transpose(-2, -1))
            scores = scores * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
            return scores + _cosine_position_bias(self.relative_coords_table, self.cpb_weight1, self.cpb_bias1,
                                                  self.cpb_weight2, self.relative_position_index,
                                                  self.window_size, self.num_heads)
        scores = (q * head_dim ** -0.5).matmul(k.transpose(-2, -1))
        return scores + _relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                                self.window_size)

    def forward(self, x: Tensor) -> Tensor:
        window, heads = self.window_size, self.num_heads
        batch, height, width, channels = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        geometry = window_geometry(height, width, window, self.shift_size)
        pad_b, pad_r, shift_h, shift_w = geometry[0], geometry[1], geometry[2], geometry[3]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        padded_h, padded_w = x.shape[1], x.shape[2]
        x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
        # partition into windows: (batch * windows, tokens, channels)
        rows, columns = padded_h // window[0], padded_w // window[1]
        tokens = window[0] * window[1]
        x = x.view(batch, rows, window[0], columns, window[1], channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, tokens, channels)
        qkv = self.qkv(x)
        if self.cosine and self.qkv_bias is not None:
            qkv = qkv + _query_value_bias(self.qkv_bias)
        qkv = qkv.reshape(x.shape[0], tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = self._scores(q, k, channels // heads)
        mask = shift_mask(padded_h, padded_w, window, shift_h, shift_w, x.dtype, x.device)
        scores = scores.view(-1, rows * columns, heads, tokens, tokens) + mask
        scores = scores.view(-1, heads, tokens, tokens)
        attention = F.softmax(scores, dim=-1)
        x = attention.matmul(v).transpose(1, 2).reshape(x.shape[0], tokens, channels)
        x = self.proj(x)
        # windows back into the feature map, the shift undone, the padding cropped
        x = x.view(batch, rows, columns, window[0], window[1], channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)
        x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        return x[:, :height, :width, :]


class TraceablePatchMerging(nn.Module):
    """torchvision's ``PatchMerging`` (``v2=False``: norm, then reduction) or ``PatchMergingV2``
    (``v2=True``: reduction, then norm), with the 2x2 neighbourhoods concatenated by strided
    indexing; ``norm`` and ``reduction`` are the original's layers."""

    def __init__(self, norm: nn.Module, reduction: nn.Module, v2: bool) -> None:
        super().__init__()
        self.norm = norm
        self.reduction = reduction
        self.v2 = v2
        self.training = False

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-3], x.shape[-2]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                       x[..., 1::2, 1::2, :]], -1)
        if self.v2:
            return self.norm(self.reduction(x))
        return self.reduction(self.norm(x))


def swin_replacement(module: nn.Module, path: str) -> str | None:
    """Which replacement torchvision's swin module ``module`` gets: ``"attention"``, ``"merging"``,
    ``"merging-v2"`` or None (not a swin module)."""
    cls = type(module)
    if cls.__module__ != "torchvision.models.swin_transformer":
        return None
    return {"ShiftedWindowAttention": "attention", "ShiftedWindowAttentionV2": "attention",
            "PatchMerging": "merging", "PatchMergingV2": "merging-v2"}.get(cls.__name__)


__all__ = ["DecomposedWindowAttention", "TraceablePatchMerging", "shift_mask",
           "swin_replacement", "window_geometry"]
