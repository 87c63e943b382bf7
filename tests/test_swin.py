"""Swin transformers (torchvision's ``SwinTransformer``, V1 and V2, random weights) explained with
CP-LRP and AttnLRP: the window-attention and patch-merging stand-ins equal torchvision's modules,
CP-LRP conserves, every method explains a swin or refuses it clearly, a batch equals its samples and
the user's model is left as it was."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
from torchvision.models import swin_t, swin_v2_t
from torchvision.models.swin_transformer import (PatchMerging, PatchMergingV2, ShiftedWindowAttention,
                                                ShiftedWindowAttentionV2, SwinTransformer, SwinTransformerBlockV2)

import relprop
from engine_checks import (REFUSALS_ON_TRANSFORMERS, assert_batch_equals_samples, assert_cp_lrp_conserves,  # noqa: E402
                           assert_explains_or_refuses)
from relprop.structure import inference_copy
from relprop.window_attention import DecomposedWindowAttention, TraceablePatchMerging

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "misuse"))
from model_state import assert_unchanged, snapshot  # noqa: E402

DOUBLE = torch.float64
#: two stages of two blocks, 4-token windows: a 40-pixel image gives a 10 x 10 map (padded to 12 for
#: the windows, shifted in every second block), merged into an odd 5 x 5 map (padded to 8)
SMALL = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10)


V2 = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


def small_swin(seed: int = 0, conservative: bool = False, v2: bool = False) -> nn.Module:
    """A random float64 swin (``v2``: Swin V2's blocks and merging); ``conservative``: every bias
    and relative position bias table zero (layer-norm betas are biases)."""
    torch.manual_seed(seed)
    model = SwinTransformer(**SMALL, **(V2 if v2 else {})).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("relative_position_bias_table"):
                p.zero_() if conservative else p.normal_(0, 0.1)
    return model


def image(batch: int = 2, side: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


# -- the stand-ins equal torchvision's modules ---------------------------------------------------
@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("shift", [[0, 0], [2, 2], [2, 1]])
@pytest.mark.parametrize("size", [(8, 8), (10, 7), (3, 3)])
def test_window_attention_equals_torchvision(shift, size, v2):
    """Whole windows, padded windows, and a map smaller than a window (the shift vanishes); Swin V1
    and V2 (cosine attention)."""
    torch.manual_seed(0)
    cls = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
    original = cls(12, [4, 4], shift, num_heads=3).double().eval()
    with torch.no_grad():
        if v2:
            original.logit_scale.normal_(2.0, 0.5)
        else:
            original.relative_position_bias_table.normal_()
        original.qkv.bias.normal_()
    x = torch.randn(2, *size, 12, dtype=DOUBLE)
    decomposed = DecomposedWindowAttention(original, "attn")
    with torch.no_grad():
        torch.testing.assert_close(decomposed(x), original(x), rtol=1e-12, atol=1e-12)
    assert decomposed.qkv.weight is original.qkv.weight and decomposed.proj.bias is original.proj.bias
    if v2:
        assert decomposed.cpb_weight1 is original.cpb_mlp[0].weight and decomposed.qkv_bias is original.qkv.bias
    else:
        assert decomposed.relative_position_bias_table is original.relative_position_bias_table


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("size", [(6, 6), (5, 7)])
def test_patch_merging_equals_torchvision(size, v2):
    torch.manual_seed(0)
    original = (PatchMergingV2 if v2 else PatchMerging)(6).double().eval()
    x = torch.randn(2, *size, 6, dtype=DOUBLE)
    merged = TraceablePatchMerging(original.norm, original.reduction, v2=v2)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), original(x), rtol=0, atol=0)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_inference_copy_replaces_swin_modules_and_computes_the_same(v2):
    model = small_swin(v2=v2)
    copy = inference_copy(model)
    assert isinstance(copy.features[1][1].attn, DecomposedWindowAttention)
    assert isinstance(copy.features[2], TraceablePatchMerging)
    assert type(model.features[1][1].attn) is (ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention)
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-12, atol=1e-12)


def test_roll_moves_relevance_back():
    """The cyclic shift is a permutation: the relevance at its input is the relevance at its output
    rolled back (reference: ``torch.roll`` by the opposite shifts)."""

    class Rolled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.head = nn.Linear(4 * 5 * 3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.roll(self.a(x), shifts=(-1, 2), dims=(1, 2)).flatten(1))

    torch.manual_seed(0)
    model = Rolled().double().eval()
    x = torch.randn(2, 4, 5, 3, dtype=DOUBLE)
    _, rec = relprop.Explainer(model, "lrp-epsilon").explain(x, target=1, record=["roll", "a"])
    torch.testing.assert_close(rec["a"], torch.roll(rec["roll"], shifts=(1, -2), dims=(1, 2)), rtol=0, atol=0)


# -- conservation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_cp_lrp_conserves_on_a_small_swin(v2):
    """Without biases, relative position biases and layer-norm betas, and without stabilisers,
    CP-LRP is conservative through shifted windows, masks and patch merging (measured: about 1e-15
    relative; the shift mask's -100 entries, a constant added before the softmax, take nothing
    under CP-LRP because the softmax gets nothing). Swin V2: the normalised queries and keys, the
    logit scale and the MLP's position bias all sit before the softmax."""
    model = small_swin(conservative=True, v2=v2)
    x = image()
    target = torch.tensor([1, 7])
    assert_cp_lrp_conserves(model, x, target)


@pytest.mark.slow
def test_cp_lrp_conserves_on_swin_t():
    """torchvision's ``swin_t`` architecture (random weights, nothing downloaded) at 64 pixels:
    16 x 16 patches, 7-token windows padded and shifted, three merges."""
    torch.manual_seed(0)
    model = swin_t(num_classes=20).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("relative_position_bias_table"):
                p.zero_()
    x = image(1, 64)
    assert_cp_lrp_conserves(model, x, 3)


# -- every method, batches, the user's model ------------------------------------------------------
#: methods that are not defined on token maps, and the words of their clear refusal
REFUSED_ON_SWIN = {"attention-rollout": "global self-attention", "transformer-attribution": "global self-attention",
                   **REFUSALS_ON_TRANSFORMERS}


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    return small_swin()


@pytest.mark.parametrize("method", sorted(relprop.methods()))
def test_every_method_explains_a_swin_or_refuses_clearly(method, swin):
    x = image()
    assert_explains_or_refuses(swin, x, method, REFUSED_ON_SWIN)


@pytest.mark.parametrize("method", sorted(set(relprop.methods()) - set(REFUSED_ON_SWIN)))
def test_a_batch_equals_its_samples(method, swin):
    """Every method that explains the model gives each sample of a batch the map of its own call
    (cheap settings of tests/engine_checks.py; the sampling methods draw per sample)."""
    assert_batch_equals_samples(swin, image(3), torch.tensor([2, 5, 9]), method)


def test_model_unchanged_after_explaining():
    model = small_swin()
    model.train()
    before = snapshot(model)
    for method in ("cp-lrp", "attnlrp"):
        relprop.explain(model, image(), target=3, method=method)
        assert_unchanged(model, before)
    assert isinstance(model.features[1][0].attn, ShiftedWindowAttention)


@pytest.mark.slow
def test_cp_lrp_conserves_on_swin_v2_t():
    """torchvision's ``swin_v2_t`` architecture (random weights) at 64 pixels."""
    torch.manual_seed(0)
    model = swin_v2_t(num_classes=20).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "cpb_mlp" not in name:
                p.zero_()
    x = image(1, 64)
    assert_cp_lrp_conserves(model, x, 3)


@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp"])
def test_swin_v2_is_explained(method):
    model = small_swin(v2=True)
    x = image()
    r = relprop.explain(model, x, target=4, method=method)
    assert r.shape == x.shape and bool(r.isfinite().all()) and r.abs().sum() > 0


def test_gradcam_reads_swins_channels_last_maps():
    """Grad-CAM's default layer on a Swin is a layer norm's (B, H, W, C) output: its channels are the
    last dimension (read from the graph), so the weights are means over H and W per channel, as a
    hand computation with a forward hook on the module gives (reading it channels-first would take
    H as the channels)."""
    import torch.nn.functional as F

    from relprop.attribution.gradients import default_gradcam_layer

    model, x = small_swin(), image()
    layer = default_gradcam_layer(model, x)
    assert layer.endswith("norm1")
    kept = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    features = kept["a"]  # (B, H, W, C)
    assert features.dim() == 4 and features.shape[-1] != features.shape[1]
    target = torch.tensor([1, 4])
    grads, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), features)
    weights = grads.mean(dim=(1, 2), keepdim=True)
    cam = (weights * features).sum(-1).clamp(min=0)[:, None].detach()
    expected = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False) / x.shape[1]
    r = relprop.explain(model, x, target=target, method="gradcam")
    torch.testing.assert_close(r, expected.expand_as(x), rtol=1e-9, atol=1e-12)
