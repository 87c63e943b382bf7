"""``F.scaled_dot_product_attention`` called in a model's forward is decomposed while tracing into
``softmax(q @ k^T * scale + mask) @ v``: the traced graph computes what the model computes (with
every kind of mask), CP-LRP conserves through it, the relevance at the heads can be recorded,
``unbind``, ``chunk`` and ``split`` split the packed projection, and what relprop cannot explain is refused
clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import relprop
from engine_checks import assert_cp_lrp_conserves  # noqa: E402
from relprop.propagate import propagator_for
from relprop.rewrite import attention_bias, chunk_bounds, split_bounds

DOUBLE = torch.float64
TOKENS = 5


class _Attending(nn.Module):
    """Packed projection split by ``unbind`` (or ``chunk``), SDPA, output projection, mean-pooled
    linear head; ``mask``: None, ``"bool"``, ``"float"`` or ``"causal"``."""

    def __init__(self, mask: str | None = None, split: str = "unbind", scale: float | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.split, self.scale, self.dropout, self.causal = split, scale, dropout, mask == "causal"
        generator = torch.Generator().manual_seed(5)
        if mask == "bool":
            allowed = torch.rand(TOKENS, TOKENS, generator=generator) > 0.4
            self.register_buffer("mask", allowed | torch.eye(TOKENS, dtype=torch.bool))
        elif mask == "float":
            self.register_buffer("mask", torch.randn(TOKENS, TOKENS, generator=generator))
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x)
        if self.split == "unbind":
            q, k, v = qkv.reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = qkv.chunk(3, dim=-1) if self.split == "chunk" else qkv.split([8, 8, 8], dim=-1)
            q, k, v = [t.reshape(b, n, 2, 4).transpose(1, 2) for t in (q, k, v)]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=self.dropout,
                                           is_causal=self.causal, scale=self.scale)
        return self.head(self.proj(o.transpose(1, 2).reshape(b, n, c)).mean(1))


def _model(conservative: bool = False, **options) -> nn.Module:
    torch.manual_seed(0)
    model = _Attending(**options).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_() if conservative else p.normal_(0, 0.1)
    return model


def _tokens(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, TOKENS, 8, dtype=DOUBLE, generator=torch.Generator().manual_seed(1))


CASES = [dict(), dict(mask="bool"), dict(mask="float"), dict(mask="causal"), dict(scale=0.3), dict(split="chunk"),
         dict(split="split")]


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(map(str, o.values())) or "plain")
def test_decomposition_equals_the_function(options):
    model = _model(**options)
    x = _tokens()
    propagator = propagator_for(model)
    kinds = [n.op.kind for n in propagator.graph.nodes]
    assert kinds.count("softmax") == 1 and kinds.count("matmul") == 2
    traced = propagator._walk(x, lambda pos, op, args, kwargs: op.forward(args, kwargs))
    with torch.no_grad():
        torch.testing.assert_close(traced, model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(map(str, o.values())) or "plain")
def test_cp_lrp_conserves_through_sdpa(options):
    """Without biases and stabilisers, CP-LRP's map sums to the logit (measured: below 1e-14
    relative); a mask, added as a constant before the softmax, takes nothing under CP-LRP."""
    model = _model(conservative=True, **options)
    x = _tokens()
    assert_cp_lrp_conserves(model, x, 1)


def test_relevance_at_the_heads_is_recorded():
    """The softmax of the decomposition is a node: AttnLRP's relevance at the attention
    probabilities and at the scores can be recorded; CP-LRP gives the scores nothing."""
    model = _model()
    graph = propagator_for(model).graph
    softmax = next(n for n in graph.nodes if n.op.kind == "softmax")
    scores = graph.nodes[softmax.inputs[0]].name
    for method in ("attnlrp", "cp-lrp"):
        _, rec = relprop.Explainer(model, method).explain(_tokens(), target=2, record=[softmax.name, scores])
        assert rec[softmax.name].shape == (2, 2, TOKENS, TOKENS)
        assert bool(rec[scores].isfinite().all())
        assert (rec[scores].abs().sum() > 0) == (method == "attnlrp")


def test_masked_scores_take_no_relevance():
    """Under AttnLRP, a boolean mask's forbidden entries (``-inf`` scores) receive exactly 0."""
    model = _model(mask="bool")
    graph = propagator_for(model).graph
    softmax = next(n for n in graph.nodes if n.op.kind == "softmax")
    scores = graph.nodes[softmax.inputs[0]].name
    _, rec = relprop.Explainer(model, "attnlrp").explain(_tokens(), target=2, record=[scores])
    forbidden = ~model.mask.expand_as(rec[scores])
    assert bool(rec[scores].isfinite().all()) and bool((rec[scores][forbidden] == 0).all())
    assert rec[scores][~forbidden].abs().sum() > 0


def test_helpers_against_torch():
    x = torch.arange(10.0)
    for chunks in (1, 3, 4, 6, 10):
        parts = x.chunk(chunks)
        for i, part in enumerate(parts):
            start, length = chunk_bounds(10, chunks, i)
            torch.testing.assert_close(x.narrow(0, start, length), part)
    for split in (1, 3, 4, 10, [2, 5, 3], (10,)):
        for i, part in enumerate(x.split(split)):
            start, length = split_bounds(10, split, i)
            torch.testing.assert_close(x.narrow(0, start, length), part)
    causal = attention_bias(None, True, 3, 3, DOUBLE, torch.device("cpu"))
    assert torch.equal(causal.isinf(), torch.ones(3, 3).triu(1).bool())


@pytest.mark.parametrize("case, message", [
    (dict(dropout=0.1), "dropout_p=0.1"),
])
def test_unsupported_arguments_are_refused_clearly(case, message):
    with pytest.raises(relprop.UnsupportedOperationError, match=message):
        relprop.explain(_model(**case), _tokens(), target=0, method="cp-lrp")


def test_a_mask_computed_from_the_input_is_refused_clearly():
    class InputMask(_Attending):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=x[:, None, :, :n])
            return self.head(o.transpose(1, 2).reshape(b, n, c).mean(1))

    model = InputMask().double().eval()
    with pytest.raises(relprop.UnsupportedOperationError, match="mask of scaled_dot_product_attention is computed from the input"):
        relprop.explain(model, _tokens(), target=0, method="cp-lrp")


def test_gqa_is_refused_clearly():
    class Grouped(_Attending):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
            o = F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True)
            return self.head(o.transpose(1, 2).reshape(b, n, c).mean(1))

    with pytest.raises(relprop.UnsupportedOperationError, match="enable_gqa=True"):
        relprop.explain(Grouped().double().eval(), _tokens(), target=0, method="cp-lrp")


@pytest.mark.parametrize("split", ["unbind", "chunk", "split"])
def test_split_parts_move_relevance_back(split):
    """Each part of ``unbind``/``chunk``/``split`` is an indexing of the packed projection: the relevance at
    the projection's output is the parts' relevances put back in place (AttnLRP, so that queries,
    keys and values all receive some)."""
    model = _model(split=split)
    graph = propagator_for(model).graph
    kind = "select" if split == "unbind" else "narrow"
    parts = [n.name for n in graph.nodes if n.name.startswith(kind)]
    assert len(parts) == 3
    _, rec = relprop.Explainer(model, "attnlrp").explain(_tokens(), target=2, record=["qkv", *parts])
    if split == "unbind":  # (3, batch, heads, tokens, 4) back to (batch, tokens, 3 * heads * 4)
        packed = torch.stack([rec[p] for p in parts]).permute(1, 3, 0, 2, 4).reshape(2, TOKENS, 24)
    else:
        packed = torch.cat([rec[p] for p in parts], dim=-1)
    assert all(rec[p].abs().sum() > 0 for p in parts)
    torch.testing.assert_close(rec["qkv"], packed, rtol=0, atol=0)
