"""Multi-head attention written as plain operations that relprop traces and explains.

``nn.MultiheadAttention`` computes everything inside ``F.multi_head_attention_forward`` from its
packed parameters, so no rule could see its projections, its softmax or its two matrix products.
:class:`DecomposedAttention` computes the same function (equal in float64 up to rounding) from the
same parameter tensors, shared, never copied: the input projection as an :class:`AttentionProjection`
(an ``nn.Linear`` holding the packed ``in_proj_weight``), a split into heads, the scores
``q @ k^T / sqrt(d)``, a softmax, ``attn @ v``, the merged heads and the output projection.
:func:`relprop.structure.inference_copy` puts one in place of every ``nn.MultiheadAttention`` of the
copy it traces; the user's model is never changed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .graph import UnsupportedOperationError

Tensor = torch.Tensor


class AttentionProjection(nn.Linear):
    """A projection inside attention (query/key/value or output), sharing the attention module's
    weight and bias tensors; select it with ``by_type(AttentionProjection)``."""

    #: traced as one linear layer (the tracer keeps it a leaf, as ``nn.Linear`` itself)
    traced_as_leaf = True

    @classmethod
    def sharing(cls, weight: Tensor, bias: Tensor | None) -> "AttentionProjection":
        """A projection whose parameters are ``weight`` and ``bias`` themselves (not copies)."""
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        layer._parameters["weight"] = weight
        layer._parameters["bias"] = bias
        layer.training = False
        return layer


class DecomposedAttention(nn.Module):
    """``nn.MultiheadAttention`` (inference: no dropout) as traceable operations on shared tensors.

    Supported: packed input projections (query, key and value of the same size), with or without
    bias, ``batch_first`` either way, no masks, no ``bias_k``/``bias_v``, no ``add_zero_attn``.
    Anything else raises :class:`relprop.UnsupportedOperationError` naming the module.
    """

    def __init__(self, mha: nn.MultiheadAttention, path: str) -> None:
        super().__init__()
        self.path = path
        problems = []
        if not mha._qkv_same_embed_dim:
            problems.append("separate query/key/value projection weights (kdim or vdim differ)")
        if mha.bias_k is not None or mha.bias_v is not None:
            problems.append("add_bias_kv=True")
        if mha.add_zero_attn:
            problems.append("add_zero_attn=True")
        self.problems = problems
        self.num_heads = mha.num_heads
        self.embed_dim = mha.embed_dim
        self.batch_first = mha.batch_first
        if not problems:
            self.in_proj = AttentionProjection.sharing(mha.in_proj_weight, mha.in_proj_bias)
            self.out_proj = AttentionProjection.sharing(mha.out_proj.weight, mha.out_proj.bias)
        self.training = False

    def _refuse(self, what: str) -> None:
        raise UnsupportedOperationError(
            f"unsupported nn.MultiheadAttention at {self.path!r}: {what}; relprop explains attention "
            "with packed projections and without masks")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if self.problems:
            self._refuse(", ".join(self.problems))
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            self._refuse("a mask (key_padding_mask, attn_mask or is_causal)")
        same = query is key and key is value
        if not self.batch_first:
            query = query.transpose(0, 1)
            key = query if same else key.transpose(0, 1)
            value = query if same else value.transpose(0, 1)
        e, h = self.embed_dim, self.num_heads
        d = e // h
        if same:
            qkv = self.in_proj(query)
            q, k, v = qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
        else:  # the packed projection of each input, of which one third is used
            q = self.in_proj(query)[..., :e]
            k = self.in_proj(key)[..., e:2 * e]
            v = self.in_proj(value)[..., 2 * e:]
        n, length = query.shape[0], query.shape[1]
        source = key.shape[1]
        q = q.reshape(n, length, h, d).transpose(1, 2)
        k = k.reshape(n, source, h, d).transpose(1, 2)
        v = v.reshape(n, source, h, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
        attention = torch.softmax(scores, dim=-1)
        out = torch.matmul(attention, v).transpose(1, 2).reshape(n, length, e)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attention.mean(dim=1) if average_attn_weights else attention


__all__ = ["AttentionProjection", "DecomposedAttention"]
