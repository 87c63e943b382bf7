"""timm models (random weights, nothing downloaded) explained with CP-LRP and AttnLRP: DeiT and ViT
(attention through ``F.scaled_dot_product_attention`` or written out, ``unbind``, class token,
positional embedding, layer scale), ConvNeXt (``LayerNorm2d``) and Swin (window attention with a
relative position bias and a shift mask); ``relprop.load_model("timm/...")`` with timm's own
preprocessing."""

from __future__ import annotations

import re
import sys

import pytest
import torch
import torch.nn as nn

import relprop
from engine_checks import REFUSALS_ON_TRANSFORMERS, assert_batch_equals_samples, assert_explains_or_refuses  # noqa: E402

timm = pytest.importorskip("timm")
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "misuse"))
from model_state import assert_unchanged, snapshot  # noqa: E402

DOUBLE = torch.float64
#: parameters that act as biases: zeroed for the conservation checks
_BIASES = ("cls_token", "pos_embed", "reg_token")


def timm_model(name: str, seed: int = 0, conservative: bool = False, fused: bool | None = None,
               **kwargs) -> nn.Module:
    """A random float64 timm model; ``conservative``: every bias, relative position bias table,
    class token and positional embedding zero; ``fused``: the attention path (timm's
    ``fused_attn``: SDPA or written out), None to keep timm's choice."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).double().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or pname.endswith("relative_position_bias_table") or pname in _BIASES:
                p.zero_() if conservative else p.normal_(0, 0.1)
            if pname.endswith("gamma"):  # layer scale: not timm's tiny initial value
                p.uniform_(0.5, 1.5)
    if fused is not None:
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused
    return model


def image(batch: int = 2, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


def _relative_error(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    r = relprop.explain(model, x, target=target, method="cp-lrp", epsilon=0.0)
    assert r.shape == x.shape
    with torch.no_grad():
        logit = model(x).gather(1, target[:, None])[:, 0]
    return float(((r.sum((1, 2, 3)) - logit) / logit).abs().max())


# -- conservation --------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "written-out"])
def test_cp_lrp_conserves_on_deit_tiny(fused):
    """DeiT-tiny at 32 pixels (4 patches), both attention paths: the map sums to the logit
    (measured: about 3e-15 relative)."""
    model = timm_model("deit_tiny_patch16_224", conservative=True, fused=fused, img_size=32)
    assert _relative_error(model, image(), torch.tensor([1, 7])) < 1e-6


def test_both_attention_paths_give_the_same_maps():
    """timm's SDPA path, decomposed by relprop, and its written-out path are one function: CP-LRP's
    and AttnLRP's maps agree (without stabilisers: the SDPA scales the scores, timm's written-out
    path the queries, so a stabiliser of ``q @ k^T`` would see a different product)."""
    x, target = image(), torch.tensor([2, 4])
    sdpa = timm_model("deit_tiny_patch16_224", fused=True, img_size=32, depth=4)
    written = timm_model("deit_tiny_patch16_224", fused=False, img_size=32, depth=4)
    for method in ("cp-lrp", "attnlrp"):
        a = relprop.explain(sdpa, x, target=target, method=method, epsilon=0.0)
        b = relprop.explain(written, x, target=target, method=method, epsilon=0.0)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * float(a.abs().max()))


@pytest.mark.slow
def test_cp_lrp_conserves_on_deit_tiny_at_224():
    model = timm_model("deit_tiny_patch16_224", conservative=True)
    assert _relative_error(model, image(1, 224), torch.tensor([3])) < 1e-6


@pytest.mark.slow
def test_cp_lrp_conserves_on_vit_small():
    model = timm_model("vit_small_patch16_224", conservative=True, img_size=32)
    assert _relative_error(model, image(), torch.tensor([0, 9])) < 1e-6


@pytest.mark.slow
def test_cp_lrp_conserves_on_convnext_nano():
    """timm's ConvNeXt-nano at 64 pixels: ``LayerNorm2d`` (permute, layer norm, permute) and the
    layer scale (a product with a parameter)."""
    model = timm_model("convnext_nano", conservative=True)
    assert _relative_error(model, image(1, 64), torch.tensor([5])) < 1e-6


@pytest.mark.slow
def test_cp_lrp_conserves_on_timm_swin():
    """timm's Swin-tiny at 56 pixels (14 x 14 patches, two 7-token windows a side, shifted and
    masked in every second block)."""
    model = timm_model("swin_tiny_patch4_window7_224", conservative=True, img_size=56)
    assert _relative_error(model, image(1, 56), torch.tensor([6])) < 1e-6


# -- every method, batches, the user's model ------------------------------------------------------
#: methods that are not defined on token sequences, and the words of their clear refusal
REFUSED_ON_TOKENS = {**REFUSALS_ON_TRANSFORMERS}


@pytest.fixture(scope="module")
def deit() -> nn.Module:
    """DeiT-tiny at 32 pixels with 4 of its 12 blocks (to keep the tests fast)."""
    return timm_model("deit_tiny_patch16_224", img_size=32, depth=4)


@pytest.mark.parametrize("method", sorted(relprop.methods()))
def test_every_method_explains_a_deit_or_refuses_clearly(method, deit):
    x = image()
    assert_explains_or_refuses(deit, x, method, REFUSED_ON_TOKENS)


@pytest.mark.parametrize("method", sorted(set(relprop.methods()) - set(REFUSED_ON_TOKENS)))
def test_a_batch_equals_its_samples(method, deit):
    """Every method that explains the model gives each sample of a batch the map of its own call
    (cheap settings of tests/engine_checks.py; the sampling methods draw per sample)."""
    assert_batch_equals_samples(deit, image(3), torch.tensor([2, 5, 9]), method)


def test_model_unchanged_after_explaining():
    model = timm_model("deit_tiny_patch16_224", img_size=32, fused=True, depth=2)
    model.train()
    before = snapshot(model)
    for method in ("cp-lrp", "attnlrp"):
        relprop.explain(model, image(), target=3, method=method)
        assert_unchanged(model, before)
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))


@pytest.mark.slow
@pytest.mark.parametrize("name, side", [("convnext_nano", 32), ("swin_tiny_patch4_window7_224", 56)])
@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp"])
def test_convnext_and_swin_explained(name, side, method):
    kwargs = {"img_size": side} if "swin" in name else {}
    model = timm_model(name, **kwargs)
    x = image(1, side)
    r = relprop.explain(model, x, target=2, method=method)
    assert r.shape == x.shape and bool(r.isfinite().all()) and r.abs().sum() > 0


# -- loading -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_load_model_builds_a_random_timm_model_with_timms_preprocessing(tmp_path):
    from PIL import Image

    model, preprocess = relprop.load_model("timm/deit_tiny_patch16_224", num_classes=4)
    assert type(model).__name__ == "VisionTransformer" and not model.training
    batch = preprocess(Image.new("RGB", (300, 260), (120, 30, 200)))
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == torch.float32
    config = timm.data.resolve_data_config({}, model=model)
    assert preprocess.mean == tuple(config["mean"]) and preprocess.std == tuple(config["std"])
    path = tmp_path / "deit.pt"
    torch.save(model.state_dict(), path)
    again, _ = relprop.load_model("timm/deit_tiny_patch16_224", weights=str(path), num_classes=4)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_load_model_refuses_timm_names_and_weights_clearly():
    with pytest.raises(ValueError, match="Did you mean 'timm/deit_tiny_patch16_224'"):
        relprop.load_model("timm/deit_tiny_patch16")
    with pytest.raises(relprop.models.WeightsError, match="downloads nothing"):
        relprop.load_model("timm/deit_tiny_patch16_224", weights="IMAGENET")


def test_load_model_without_timm_names_the_extra(monkeypatch):
    from relprop._extras import MissingDependencyError

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingDependencyError, match=re.escape("relprop[timm]")):
        relprop.load_model("timm/deit_tiny_patch16_224")
