"""Attention rollout (Abnar & Zuidema 2020) and transformer attribution (Chefer, Gur & Wolf 2021) on
small random torchvision ViTs in float64: their defining properties, equality with references
written here from the papers and the reference code, batches, targets and refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from relprop.attribution.attention_maps import class_token_map, joint_attention, rollout_matrices, rollout_matrix
from relprop.composite import Composite, by_type
from relprop.rules import Epsilon, RescaledSum, Unchanged
from test_transformers import image, small_vit

DOUBLE = torch.float64
METHODS = ("attention-rollout", "transformer-attribution")
#: three blocks, so that start_layer=1 still multiplies two of them
THREE = dict(num_layers=3)


def channel_sum(r: torch.Tensor) -> torch.Tensor:
    return r.sum(1)


# -- attention rollout: definition ---------------------------------------------------------------
def test_rollout_rows_sum_to_one():
    model, x = small_vit(**THREE), image()
    matrices = rollout_matrices(model, x, None)
    assert len(matrices) == 3
    ones = torch.ones(2, 17, dtype=DOUBLE)
    for m in matrices:
        assert m.shape == (2, 17, 17) and bool((m >= 0).all())
        torch.testing.assert_close(m.sum(-1), ones, rtol=0, atol=1e-13)
    for start in range(3):
        torch.testing.assert_close(joint_attention(matrices, start).sum(-1), ones, rtol=0, atol=1e-13)


def test_identity_attention_gives_a_uniform_map():
    """Attention to oneself only: every Â is I, so is J, and the class token's row over the patches is
    0 everywhere; uniform attention (no query weights: all scores 0) gives a constant positive row."""
    x = image(batch=1)
    identity = torch.eye(17, dtype=DOUBLE).expand(1, 2, 17, 17)
    joint = joint_attention([rollout_matrix(identity)] * 3)
    torch.testing.assert_close(joint, torch.eye(17, dtype=DOUBLE)[None])
    assert bool((class_token_map(joint, x, "test") == 0).all())
    model = small_vit(**THREE)
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attention.in_proj_weight[:32] = 0  # queries: constant, so every score is equal
            layer.self_attention.in_proj_bias[:32] = 0
    r = channel_sum(relprop.explain(model, image(), target=0, method="attention-rollout", start_layer=0))
    assert float(r.min()) > 0
    torch.testing.assert_close(r, r.mean((1, 2), keepdim=True).expand_as(r), rtol=1e-12, atol=0)


def _hooked_attention(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Head-averaged attention of every block, from nn.MultiheadAttention itself
    (need_weights=True, average_attn_weights=True forced by a pre-hook)."""
    weights, handles = [], []
    for layer in model.encoder.layers:
        attention = layer.self_attention

        def force(module, args, kwargs):
            return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

        handles.append(attention.register_forward_pre_hook(force, with_kwargs=True))
        handles.append(attention.register_forward_hook(lambda module, args, out: weights.append(out[1])))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return weights


@pytest.mark.parametrize("start_layer", [0, 1, 2])
def test_rollout_equals_reference_from_multihead_attention(start_layer):
    """Abnar & Zuidema's attention_graph_util / Chefer's baseline: (Ā + I) / rowsum, J = Â_L ... Â_s,
    J[0, 1:] on the 4x4 patch grid, bilinear upsampling by the patch size (8)."""
    model, x = small_vit(**THREE), image()
    averaged = _hooked_attention(model, x)
    eye = torch.eye(17, dtype=DOUBLE)
    augmented = [(a + eye) / (a + eye).sum(-1, keepdim=True) for a in averaged]
    joint = augmented[start_layer]
    for a in augmented[start_layer + 1:]:
        joint = a @ joint
    want = F.interpolate(joint[:, 0, 1:].reshape(2, 1, 4, 4), scale_factor=8, mode="bilinear")[:, 0]
    got = channel_sum(relprop.explain(model, x, target=None, method="attention-rollout", start_layer=start_layer))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_rollout_does_not_depend_on_the_target():
    model, x = small_vit(), image()
    a = relprop.explain(model, x, target=torch.tensor([0, 1]), method="attention-rollout")
    b = relprop.explain(model, x, target=torch.tensor([7, 4]), method="attention-rollout")
    assert torch.equal(a, b)


# -- transformer attribution: an independent reference -----------------------------------------
def _safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """layers_ours.py's safe_divide."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def _linear_alpha1_beta0(r: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """layers_ours.py Linear.relprop with alpha=1: over x+ W+ and x- W-, no bias."""
    def f(w1, w2, x1, x2):
        s = _safe_divide(r, F.linear(x1, w1) + F.linear(x2, w2))
        return x1 * (s @ w1) + x2 * (s @ w2)
    return f(w.clamp(min=0), w.clamp(max=0), x.clamp(min=0), x.clamp(max=0))


def _add(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """layers_ours.py Add.relprop: LRP-0, then each share rescaled to |its sum| / (|a| + |b|) of sum(R)."""
    s = _safe_divide(r, a + b)
    ra, rb = a * s, b * s
    a_sum, b_sum = ra.sum(), rb.sum()
    a_fact = _safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    b_fact = _safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    return ra * _safe_divide(a_fact, ra.sum()), rb * _safe_divide(b_fact, rb.sum())


def _product(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """layers_ours.py einsum.relprop (RelPropSimple) for ``a @ b``, each share then halved (ViT_LRP.py)."""
    s = _safe_divide(r, a @ b)
    return a * (s @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ s) / 2


def chefer_reference(model: nn.Module, x: torch.Tensor, target: int, start_layer: int) -> torch.Tensor:
    """Transformer attribution of one image (batch 1) on a torchvision ViT, written from
    ViT_LRP.py / layers_ours.py / ViT_explanation_generator.py: a forward pass that keeps every
    block's attention probabilities (with their gradient), the LRP pass from one-hot 1 at the target
    down to the first block, ``mean_h[(grad * cam)+]``, ``+ I``, the product, the class row."""
    e, h = model.hidden_dim, model.encoder.layers[0].self_attention.num_heads
    d = e // h
    tape = []
    t = model._process_input(x)
    t = torch.cat([model.class_token.expand(1, -1, -1), t], dim=1) + model.encoder.pos_embedding
    for layer in model.encoder.layers:
        mha = layer.self_attention
        h1 = layer.ln_1(t)
        qkv = F.linear(h1, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = (p.reshape(1, -1, h, d).transpose(1, 2) for p in qkv.split(e, dim=-1))
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        attention.retain_grad()
        merged = (attention @ v).transpose(1, 2).reshape(1, -1, e)
        out = F.linear(merged, mha.out_proj.weight, mha.out_proj.bias)
        t1 = t + out
        h2 = layer.ln_2(t1)
        hidden = layer.mlp[0](h2)
        mlp = layer.mlp[3](layer.mlp[1](hidden))
        tape.append(dict(t=t, out=out, h1=h1, q=q, k=k, v=v, attention=attention, merged=merged, t1=t1, h2=h2,
                         hidden=hidden, act=layer.mlp[1](hidden), mlp=mlp, mha=mha, layer=layer))
        t = t1 + mlp
    final = model.encoder.ln(t)
    logits = model.heads.head(final[:, 0])
    logits[0, target].backward()
    # the LRP pass: head (alpha1beta0), class-token selection, final norm (identity), blocks
    r_cls = _linear_alpha1_beta0(torch.eye(logits.shape[1], dtype=DOUBLE)[target:target + 1], final[:, 0].detach(),
                                 model.heads.head.weight)
    r = torch.zeros_like(final)
    r[:, 0] = r_cls
    cams = []
    with torch.no_grad():
        for step in reversed(tape):
            layer, mha = step["layer"], step["mha"]
            r_skip, r_mlp = _add(r, step["t1"], step["mlp"])
            r_mlp = _linear_alpha1_beta0(r_mlp, step["act"], layer.mlp[3].weight)  # fc2; GELU identity
            r_mlp = _linear_alpha1_beta0(r_mlp, step["h2"], layer.mlp[0].weight)  # fc1; norm2 identity
            r = r_skip + r_mlp
            r_skip, r_attn = _add(r, step["t"], step["out"])
            r_attn = _linear_alpha1_beta0(r_attn, step["merged"], mha.out_proj.weight)
            r_attn = r_attn.reshape(1, -1, h, d).transpose(1, 2)
            r_a, r_v = _product(r_attn, step["attention"], step["v"])
            cams.insert(0, (step["attention"].grad[0] * r_a[0]).clamp(min=0).mean(0, keepdim=True))
            r_q, r_k = _product(r_a, step["q"], step["k"].transpose(-2, -1))  # softmax: identity
            r_qkv = torch.cat([p.transpose(1, 2).reshape(1, -1, e) for p in (r_q, r_k.transpose(-2, -1), r_v)], -1)
            r = r_skip + _linear_alpha1_beta0(r_qkv, step["h1"], mha.in_proj_weight)  # norm1 identity
    eye = torch.eye(cams[0].shape[-1], dtype=DOUBLE)
    joint = cams[start_layer] + eye
    for cam in cams[start_layer + 1:]:
        joint = (cam + eye).bmm(joint)
    side = int(math.isqrt(joint.shape[-1] - 1))
    return F.interpolate(joint[:, 0, 1:].reshape(1, 1, side, side), scale_factor=x.shape[-1] // side,
                         mode="bilinear")[:, 0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 3])
def test_transformer_attribution_equals_reference(seed):
    """Relative L2 error below 1e-6 (measured: 1.4e-7 to 4e-7, from the stabilisers, which differ: z + 1e-9
    in the reference, z + 1e-9 sign(z) here; with epsilon=1e-3 instead the error is 0.15 to 1.3)."""
    model, x = small_vit(seed, **THREE), image(batch=1, seed=seed + 1)
    target = 4
    for start_layer in (0, 1):
        want = chefer_reference(model, x, target, start_layer)
        got = channel_sum(relprop.explain(model, x, target=target, method="transformer-attribution",
                                          start_layer=start_layer))
        assert float(want.abs().max()) > 0
        error = float((got - want).norm() / want.norm())
        assert error < 1e-6, (start_layer, error)


def test_transformer_attribution_depends_on_the_target():
    model, x = small_vit(1, **THREE), image(batch=1)
    maps = [channel_sum(relprop.explain(model, x, target=c, method="transformer-attribution")) for c in (0, 5, 9)]
    for i in range(3):
        for j in range(i):
            assert float((maps[i] - maps[j]).norm() / maps[i].norm()) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_by_one(method):
    model, x = small_vit(2, **THREE), image(batch=3)
    target = torch.tensor([1, 6, 3])
    r = relprop.explain(model, x, target=target, method=method)
    assert r.shape == x.shape and bool(r.isfinite().all())
    for i in range(3):
        one = relprop.explain(model, x[i:i + 1], target=target[i:i + 1], method=method)
        torch.testing.assert_close(r[i:i + 1], one, rtol=1e-10, atol=1e-14)


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_a_model_without_attention_is_refused(method):
    model = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(ValueError, match="ResNet has no attention"):
        relprop.explain(model, torch.randn(1, 3, 32, 32), target=1, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_start_layer_beyond_the_blocks_is_refused(method):
    with pytest.raises(ValueError, match="start_layer=2 is not a block of this model, which has 2"):
        relprop.explain(small_vit(), image(), target=1, method=method, start_layer=2)


# -- the rules of the LRP pass -------------------------------------------------------------------
class _TwoBranches(nn.Module):
    """``a(x) + b(x)`` followed by a linear head: a residual-like sum of two signed terms."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x) + self.b(x) + 0.3)


def test_rescaled_sum_equals_its_formula():
    """LRP-0 shares u = t R / z (z the sum with its constant), each rescaled to
    |U_k| / (|U_a| + |U_b| + |U_c|) * sum(R), per sample; the constant 0.3 absorbs its part."""
    torch.manual_seed(0)
    model = _TwoBranches().double().eval()
    x = torch.randn(3, 4, dtype=DOUBLE)
    composite = Composite([(by_type("linear"), Epsilon(0.0)), (by_type("add"), RescaledSum(0.0))], norm_epsilon=0.0)
    _, recorded = relprop.Explainer(model, composite).explain(x, target=1, record=["a", "b", "add_1"])
    with torch.no_grad():
        a, b = model.a(x), model.b(x)
    r = recorded["add_1"]
    s = r / (a + b + 0.3)
    u = [a * s, b * s, 0.3 * s]
    totals = [t.sum(1, keepdim=True) for t in u]
    magnitude = sum(t.abs() for t in totals)
    for name, share, total in zip("ab", u, totals):
        want = share * (total.abs() / magnitude) * r.sum(1, keepdim=True) / total
        torch.testing.assert_close(recorded[name], want, rtol=1e-12, atol=1e-14)
    # the branch totals are in the ratio of the magnitudes of their LRP-0 totals
    torch.testing.assert_close(recorded["a"].sum(1) / recorded["b"].sum(1), (totals[0] / totals[1]).abs()[:, 0]
                               * torch.sign(r.sum(1)) ** 2, rtol=1e-12, atol=0)


class _NormSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.head = nn.LayerNorm(6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.softmax(self.norm(x), dim=-1))


def test_unchanged_passes_relevance_through_softmax_and_layer_norm():
    torch.manual_seed(1)
    model = _NormSoftmax().double().eval()
    x = torch.randn(2, 6, dtype=DOUBLE)
    composite = Composite([(by_type("linear"), Epsilon(0.0)), (by_type("softmax", "layernorm"), Unchanged())])
    r, recorded = relprop.Explainer(model, composite).explain(x, target=0, record=["softmax"])
    torch.testing.assert_close(r, recorded["softmax"], rtol=0, atol=0)
    assert float(r.abs().sum()) > 0



# -- Grad-CAM on a transformer's tokens ---------------------------------------------------------------
def test_gradcam_on_tokens_equals_reshaped_reference():
    """By default Grad-CAM reads the tokens entering the last attention block (after its layer norm),
    laid out on the patch grid without the class token, as pytorch-grad-cam's ViT recipe
    (``target_layers=[blocks[-1].norm1]`` with a ``reshape_transform``)."""
    model, x = small_vit(**THREE), image()
    kept = {}

    def keep(module, args, out):
        out.retain_grad()
        kept["tokens"] = out

    handle = model.encoder.layers[-1].ln_1.register_forward_hook(keep)
    model(x).gather(1, torch.tensor([[1], [6]])).sum().backward()
    handle.remove()
    tokens = kept["tokens"]

    def grid(t):
        return t[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)

    weights = grid(tokens.grad).mean((2, 3), keepdim=True)
    cam = (weights * grid(tokens.detach())).sum(1, keepdim=True).clamp(min=0)
    want = F.interpolate(cam, size=(32, 32), mode="bilinear")[:, 0]
    got = channel_sum(relprop.explain(model, x, target=torch.tensor([1, 6]), method="gradcam"))
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    named = relprop.explain(model, x, target=torch.tensor([1, 6]), method="gradcam",
                            layer="encoder.layers.encoder_layer_2.ln_1")
    torch.testing.assert_close(named.sum(1), want, rtol=1e-10, atol=1e-14)


def test_gradcam_refuses_tokens_that_do_not_tile_the_image():
    model = small_vit()
    with pytest.raises(ValueError, match="outputs shape"):
        relprop.explain(model, image(), target=1, method="gradcam", layer="getitem_17")
