"""Rewrites of a traced ``torch.fx`` graph into operations that relprop's rules apply to.

* ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)`` becomes
  ``softmax(q @ k^T * scale + bias) @ v``, where ``bias`` is the attention mask as an additive
  constant (a boolean mask gives ``-inf`` where attention is not allowed, ``is_causal`` the causal
  mask), computed from sizes and constants only (Vaswani et al. 2017 [Vaswani2017-Attention],
  Eq. 1; PyTorch's reference implementation of the function). The softmax and both products are
  then ordinary nodes: CP-LRP's and AttnLRP's attention rules apply, and the relevance at the heads
  can be recorded. Dropout (``dropout_p > 0``), grouped-query attention (``enable_gqa=True``) and a
  mask computed from the input are refused with a clear error.
* ``unbind``, ``chunk`` and ``split`` followed by indexing become one ``select`` or ``narrow`` per used part,
  so each part is an indexing of the tensor (whose rule moves relevance back).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def default_scale(head_dim: int) -> float:
    """``1 / sqrt(d)``, the default scale of the attention scores."""
    return 1.0 / math.sqrt(head_dim)


def attention_bias(mask: torch.Tensor | None, is_causal: bool, queries: int, keys: int,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive bias of the attention scores: 0 where attention is allowed, ``-inf`` where a
    boolean mask (or the causal mask) forbids it, the mask itself when it is a float mask."""
    bias = torch.zeros(queries, keys, dtype=dtype, device=device)
    if is_causal:
        allowed = torch.ones(queries, keys, dtype=torch.bool, device=device).tril()
        bias = bias.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask
    return bias


def chunk_bounds(size: int, chunks: int, index: int) -> tuple[int, int]:
    """``(start, length)`` of part ``index`` of ``torch.chunk`` of a dimension of ``size`` values."""
    step = -(-size // chunks)
    start = min(index * step, size)
    return start, min(step, size - start)


def split_bounds(size: int, split: int | list[int] | tuple[int, ...], index: int) -> tuple[int, int]:
    """``(start, length)`` of part ``index`` of ``torch.split`` (parts of ``split`` values each, the
    last one shorter, or of the listed sizes) of a dimension of ``size`` values."""
    if isinstance(split, int):
        start = index * split
        return start, min(split, size - start)
    return sum(split[:index]), split[index]


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return f"node {node.name!r} in module {path[0] if isinstance(path, tuple) else path!r}"
    return f"node {node.name!r}"


def _bound(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any], skip: int = 0) -> dict[str, Any]:
    given = dict(zip(names, node.args[skip:]))
    given.update(node.kwargs)
    return {**defaults, **given}


def decompose_attention(graph: fx.Graph) -> None:
    """Replace every ``F.scaled_dot_product_attention`` call by its operations (module docstring)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
            continue
        from .graph import UnsupportedOperationError  # graph.trace calls this module

        a = _bound(node, _SDPA_ARGS, _SDPA_DEFAULTS)
        where = _where(node)
        if isinstance(a["dropout_p"], fx.Node) or a["dropout_p"] != 0:
            raise UnsupportedOperationError(
                f"unsupported scaled_dot_product_attention at {where}: dropout_p={a['dropout_p']!r}; relprop "
                "explains inference without attention dropout (pass dropout_p=0.0 outside training)")
        if a["enable_gqa"] is not False:
            raise UnsupportedOperationError(
                f"unsupported scaled_dot_product_attention at {where}: enable_gqa=True (grouped-query "
                "attention) is not decomposed by relprop")
        if isinstance(a["is_causal"], fx.Node):
            raise UnsupportedOperationError(
                f"unsupported scaled_dot_product_attention at {where}: is_causal computed in the forward")
        q, k, v = a["query"], a["key"], a["value"]
        with graph.inserting_before(node):
            scale = a["scale"]
            if scale is None:
                scale = graph.call_function(default_scale, (graph.call_method("size", (q, -1)),))
            scores = graph.call_function(operator.matmul, (q, graph.call_method("transpose", (k, -2, -1))))
            scores = graph.call_function(operator.mul, (scores, scale))
            if a["attn_mask"] is not None or a["is_causal"]:
                dtype = graph.call_function(getattr, (q, "dtype"))
                device = graph.call_function(getattr, (q, "device"))
                bias = graph.call_function(attention_bias, (
                    a["attn_mask"], bool(a["is_causal"]), graph.call_method("size", (q, -2)),
                    graph.call_method("size", (k, -2)), dtype, device))
                scores = graph.call_function(operator.add, (scores, bias))
            weights = graph.call_function(F.softmax, (scores,), {"dim": -1})
            out = graph.call_function(operator.matmul, (weights, v))
        for new in (scores, weights, out):
            new.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def _is_split(node: fx.Node) -> str | None:
    if node.op == "call_function" and node.target in (torch.unbind, torch.chunk, torch.split):
        return node.target.__name__
    if node.op == "call_method" and node.target in ("unbind", "chunk", "split"):
        return str(node.target)
    return None


def split_into_selections(graph: fx.Graph) -> None:
    """Replace ``unbind``/``chunk``/``split`` followed by integer indexing with one
    ``select``/``narrow`` per part used; splits used otherwise are left (and refused when
    classified)."""
    for node in list(graph.nodes):
        kind = _is_split(node)
        if kind is None:
            continue
        users = list(node.users)
        if not users or not all(u.op == "call_function" and u.target is operator.getitem
                                and isinstance(u.args[1], int) for u in users):
            continue
        if kind == "unbind":
            a = _bound(node, ("input", "dim"), {"dim": 0})
        elif kind == "chunk":
            a = _bound(node, ("input", "chunks", "dim"), {"dim": 0})
        else:
            a = _bound(node, ("input", "split_size_or_sections", "dim"), {"dim": 0})
            if "split_size" in a:  # Tensor.split's name of the argument
                a["split_size_or_sections"] = a.pop("split_size")
        x, dim = a["input"], a["dim"]
        for user in users:
            with graph.inserting_before(user):
                if kind == "unbind":
                    part = graph.call_function(torch.select, (x, dim, user.args[1]))
                else:
                    size = graph.call_method("size", (x, dim))
                    bounds = graph.call_function(chunk_bounds, (size, a["chunks"], user.args[1])) if kind == "chunk" \
                        else graph.call_function(split_bounds, (size, a["split_size_or_sections"], user.args[1]))
                    start = graph.call_function(operator.getitem, (bounds, 0))
                    length = graph.call_function(operator.getitem, (bounds, 1))
                    part = graph.call_function(torch.narrow, (x, dim, start, length))
            part.meta = dict(user.meta)
            user.replace_all_uses_with(part)
            graph.erase_node(user)
        graph.erase_node(node)


__all__ = ["attention_bias", "chunk_bounds", "decompose_attention", "default_scale", "split_bounds",
           "split_into_selections"]
