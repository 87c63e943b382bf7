"""Gradient hedging (Nam et al. [Nam-Hedge]) and RSP's initial map on vision transformers: the default
start layer is Grad-CAM's (the tokens entering the last attention block, after its layer norm), the
channel weights are the gradient's mean over the tokens per feature (Grad-CAM's weights, Selvaraju
et al. 2017, Eq. 1, on the ViT layout of Chefer et al. 2021 and pytorch-grad-cam), and the hedge
rule runs on linear layers over tokens. CNNs keep their pooling default and their exact maps.

The totals (float64): each hedged layer renormalises its relevance to ``gamma - 2`` per sample
(Nam et al. Eq. 6-13), the layer norms (epsilon 0), the residual sums (``add="absolute"``), the
reshapes and the first layer (z^B, no bias) conserve. So on a ViT whose biases, class token and
positional embedding are zero the totals obey, per sample and per block below the start layer,
``R(stream before a branch) = R(stream after it) - R(branch output) + (gamma - 2)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import relprop
from relprop import composite
from relprop.attribution.hedge import initial_contribution
from relprop.feature_maps import last_attention_tokens
from relprop.layer_gradient import channel_weights, channels_last, default_layer, gradient_at_layer
from relprop.propagate import forward_for, propagator_for
from relprop.rules import LayerNormEpsilon
from test_transformers import small_vit  # noqa: E402 - the small random ViT of the transformer tests

DOUBLE = torch.float64
#: the small ViT's layers: the start layer (tokens entering block 1) and block 0 below it
START = "encoder.layers.encoder_layer_1.ln_1"
BLOCK0 = "encoder.layers.encoder_layer_0"
#: float64 totals of at most a few thousand terms of order one: rounding stays below 1e-13
TOTAL_ATOL = 1e-11


def image(batch: int = 3, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


def totals(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


@pytest.fixture(scope="module")
def shapes_vit() -> nn.Module:
    return relprop.load_model("shapes_vit")[0]


# -- start layer and channel weights ---------------------------------------------------------------------
def test_default_layer_is_grad_cams_on_a_vit_and_the_pooling_input_elsewhere(shapes_vit):
    for model, tokens in ((shapes_vit, "encoder.layers.encoder_layer_3.ln_1"), (small_vit(), START)):
        propagator = propagator_for(model, fold_batchnorm=False)
        assert default_layer(propagator.graph) == last_attention_tokens(propagator) == tokens
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10).double().eval()
    convnext = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10).double().eval()
    for model in (swin, convnext):  # both end in avgpool over (B, C, H, W) (swin: after a permute)
        propagator = propagator_for(model, fold_batchnorm=False)
        graph = propagator.graph
        pooled = graph.nodes[graph.nodes[graph.find("avgpool")].inputs[0]].name
        assert last_attention_tokens(propagator) != pooled
        assert default_layer(propagator.graph) == pooled
        x = image(2, 40 if model is swin else 32)
        r = relprop.explain(model, x, 3, "hedge")
        assert torch.isfinite(r).all() and r.abs().sum() > 0
        assert torch.equal(r, relprop.explain(model, x, 3, "hedge", layer=pooled))


def test_no_pooling_and_no_attention_names_both():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError, match="neither: pass layer="):
        relprop.explain(mlp, torch.rand(2, 3, 2, 2), 0, "hedge")


def test_channel_weights_on_tokens_are_the_mean_over_the_tokens():
    g = torch.randn(2, 17, 32, dtype=DOUBLE)
    alpha = channel_weights(g, channels_last=True)
    by_hand = torch.stack([torch.stack([g[b, :, c].sum() / 17 for c in range(32)]) for b in range(2)])
    torch.testing.assert_close(alpha, by_hand[:, None, :], rtol=1e-14, atol=0)
    h = torch.randn(2, 5, 6, 8, dtype=DOUBLE)  # channels-last (B, H, W, C)
    torch.testing.assert_close(channel_weights(h, True), h.mean(dim=(1, 2), keepdim=True), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (3, 4, 2, 3, 3), (2, 6, 7), (2, 10)])
def test_channels_first_maps_keep_the_old_formula_exactly(shape):
    """``R0 = A * mean_{2..}(dA)`` divided by ``|sum R0|`` per sample, as hedge computed it before
    the token layout existed: bit for bit."""
    gen = torch.Generator().manual_seed(len(shape))
    a, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    spatial = tuple(range(2, a.dim()))
    r0 = a * (g.mean(dim=spatial, keepdim=True) if spatial else g)
    old = r0 / r0.flatten(1).sum(1).abs().view(-1, *([1] * (a.dim() - 1)))
    assert torch.equal(initial_contribution(a, g), old)
    assert torch.equal(initial_contribution(a, g, channels_last=False), old)


def test_the_layout_is_read_from_the_layer(shapes_vit):
    """Token and layer-norm outputs and inputs of linear layers are channels-last; a CNN's pooling input
    and a ViT's patch-embedding convolution are channels-first (the shape alone would not say)."""
    x = image(1, 64).float()
    propagator, cache = forward_for(shapes_vit, x, fold_batchnorm=False)
    assert channels_last(propagator, cache, "encoder.layers.encoder_layer_3.ln_1")
    assert channels_last(propagator, cache, "reshape_16")  # the input of out_proj
    assert channels_last(propagator, cache, "add_6")  # the residual stream: (B, T, C) tokens of the image
    assert not channels_last(propagator, cache, "conv_proj.conv_last")
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    propagator, cache = forward_for(cnn, torch.rand(2, 3, 8, 8), fold_batchnorm=False)
    assert not channels_last(propagator, cache, default_layer(propagator.graph))


def test_hedge_on_a_cnn_starts_from_the_old_map():
    """The recorded start map of hedge on a small CNN is the old channels-first formula, exactly."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).double().eval()
    x, t = image(2, 8), torch.tensor([1, 3])
    layer = default_layer(propagator_for(cnn, fold_batchnorm=False).graph)
    attribution = relprop.get_method("hedge").fn(cnn, x, t, record=(layer,))
    captured = {}
    handle = cnn[4].register_forward_hook(lambda m, i, o: captured.update(a=o))
    logits = cnn(x)
    handle.remove()
    g, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), captured["a"])
    r0 = captured["a"].detach() * g.mean(dim=(2, 3), keepdim=True)
    r0 = r0 / r0.flatten(1).sum(1).abs().view(-1, 1, 1, 1)
    torch.testing.assert_close(attribution.recorded[layer], r0, rtol=1e-12, atol=1e-15)


# -- hedge on vision transformers -------------------------------------------------------------------------
def test_hedge_on_shapes_vit_sums_to_gamma_minus_two():
    """shapes_vit embeds its patches with a small convolutional stem: its second convolution is a
    hedged layer, so the input map sums to gamma - 2 = 0 per sample, as on CNNs."""
    model = relprop.load_model("shapes_vit")[0].double()
    x = image(2, 64)
    r = relprop.explain(model, x, None, "hedge")
    assert r.shape == x.shape and torch.isfinite(r).all()
    assert (r.flatten(1).abs().sum(1) > 0).all()
    assert totals(r).abs().max() < TOTAL_ATOL
    r15 = relprop.explain(model, x, None, "hedge", gamma=1.5)
    torch.testing.assert_close(totals(r15), torch.full((2,), -0.5, dtype=DOUBLE), rtol=0, atol=TOTAL_ATOL)


def test_hedge_on_shapes_vit_in_float32(shapes_vit):
    r = relprop.explain(shapes_vit, image(2, 64).float(), [0, 3], "hedge")
    assert r.shape == (2, 3, 64, 64) and r.dtype == torch.float32
    assert torch.isfinite(r).all() and (r.flatten(1).abs().sum(1) > 0).all()


def test_hedge_on_a_torchvision_vit():
    x = image()
    r = relprop.explain(small_vit(), x, None, "hedge")
    assert r.shape == x.shape and torch.isfinite(r).all()
    assert (r.flatten(1).abs().sum(1) > 0).all()


#: the layer-norm rule's stabiliser (epsilon 1e-6, Ali et al. 2022 LN-rule) absorbs about
#: ``epsilon / |y|`` of each term: 2.1e-6 of totals of order one measured on the conservative ViT
LN_STABILISER_ATOL = 1e-4


@pytest.mark.parametrize("gamma", [2.0, 1.5])
@pytest.mark.parametrize("ln_epsilon", [0.0, None])
def test_hedge_totals_on_a_conservative_vit(gamma, ln_epsilon, monkeypatch):
    """From the start map (total +-1) to the input the totals change only where a hedged branch hands
    back its fixed ``gamma - 2`` in place of the share it received (module docstring): exactly with an
    unstabilised layer-norm rule (``ln_epsilon=0``), up to the stabiliser's share with hedge's own."""
    if ln_epsilon is not None:
        monkeypatch.setitem(composite.DEFAULT_RULES, "layernorm", LayerNormEpsilon(ln_epsilon))
    model, x = small_vit(conservative=True), image()
    names = (START, "add_2", f"{BLOCK0}.mlp.4", f"{BLOCK0}.ln_2", "add_1", f"{BLOCK0}.dropout",
             f"{BLOCK0}.ln_1", "encoder.dropout")
    out = relprop.get_method("hedge").fn(model, x, None, gamma=gamma, record=names)
    r = {name: totals(out.recorded[name]) for name in names}
    exact = dict(rtol=0, atol=TOTAL_ATOL)
    through_ln = dict(rtol=0, atol=TOTAL_ATOL if ln_epsilon == 0 else LN_STABILISER_ATOL)
    torch.testing.assert_close(r[START].abs(), torch.ones(3, dtype=DOUBLE), **exact)
    for branch in ("ln_2", "ln_1"):  # each hedged branch hands back gamma - 2
        torch.testing.assert_close(r[f"{BLOCK0}.{branch}"], torch.full((3,), gamma - 2, dtype=DOUBLE), **exact)
    torch.testing.assert_close(r["add_2"], r[START], **through_ln)  # the start layer's layer norm
    torch.testing.assert_close(r["add_1"], r["add_2"] - r[f"{BLOCK0}.mlp.4"] + (gamma - 2), **through_ln)
    torch.testing.assert_close(r["encoder.dropout"], r["add_1"] - r[f"{BLOCK0}.dropout"] + (gamma - 2),
                               **through_ln)
    torch.testing.assert_close(totals(out.relevance), r["encoder.dropout"], **exact)  # the patch embedding


def test_hedged_branches_hand_back_gamma_minus_two_on_a_random_vit():
    out = relprop.get_method("hedge").fn(small_vit(), image(), None, gamma=1.5,
                                         record=(f"{BLOCK0}.ln_1", f"{BLOCK0}.ln_2"))
    for value in out.recorded.values():
        torch.testing.assert_close(totals(value), torch.full((3,), -0.5, dtype=DOUBLE), rtol=0, atol=TOTAL_ATOL)


@pytest.mark.parametrize("which", ["torchvision", "shapes_vit"])
def test_hedge_batch_equals_its_samples_on_a_vit(which):
    model, x = (small_vit(), image()) if which == "torchvision" else (
        relprop.load_model("shapes_vit")[0].double(), image(3, 64))
    t = [2, 5, 1]
    together = relprop.explain(model, x, t, "hedge")
    alone = torch.cat([relprop.explain(model, x[i:i + 1], [t[i]], "hedge") for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-12)


def test_hedge_maps_of_two_classes_differ_on_shapes_scenes():
    """A weak class-sensitivity check on real shapes scenes with two classes each."""
    from relprop.data.shapes import ShapesDataset

    model, preprocess = relprop.load_model("shapes_vit")
    data = ShapesDataset(split="test", count=40)
    scenes = [s for s in (data[i] for i in range(len(data))) if len(set(s.labels)) >= 2][:3]
    x = torch.cat([preprocess(s.image) for s in scenes])
    first = relprop.explain(model, x, [s.labels[0] for s in scenes], "hedge").sum(1).flatten(1)
    second = relprop.explain(model, x, [s.labels[1] for s in scenes], "hedge").sum(1).flatten(1)
    for a, b in zip(first, second):
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] < 0.99


# -- RSP on vision transformers -------------------------------------------------------------------------
def test_rsp_initial_map_on_a_vit_uses_the_token_weights():
    """RSP's start (as hedge's): Grad-CAM's token layer and the gradient's mean over the tokens."""
    model, x, t = small_vit(), image(), torch.tensor([0, 4, 7])
    propagator, cache = forward_for(model, x, fold_batchnorm=False)
    start, a, g = gradient_at_layer(propagator, cache, None, t)
    assert start == START and a.shape == (3, 17, 32)
    assert channels_last(propagator, cache, start)
    leaf = x.clone()
    captured = {}
    handle = model.encoder.layers[1].ln_1.register_forward_hook(lambda m, i, o: captured.update(a=o))
    logits = model(leaf)
    handle.remove()
    g_ref, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), captured["a"])
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(channel_weights(g, channels_last=True), g_ref.mean(1, keepdim=True),
                               rtol=1e-12, atol=1e-15)


def test_rsp_runs_on_a_vit():
    """End to end: needs the RSP rule on linear layers over tokens."""
    model, x, t = small_vit(), image(), [0, 4, 7]
    out = relprop.get_method("rsp").fn(model, x, t, record=(START,))
    assert out.relevance.shape == x.shape and torch.isfinite(out.relevance).all()
    propagator, cache = forward_for(model, x, fold_batchnorm=False)
    _, a, g = gradient_at_layer(propagator, cache, None, t)
    r0 = a * g.mean(1, keepdim=True)
    r0 = r0 / (r0.flatten(1).amax(1).view(-1, 1, 1) + 1e-9)
    torch.testing.assert_close(out.recorded[START], r0, rtol=1e-10, atol=1e-12)
