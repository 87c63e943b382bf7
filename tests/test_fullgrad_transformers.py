"""FullGrad (Srinivas & Fleuret 2019) on token sequences and channels-last maps: the full-gradient
decomposition is complete on a token MLP (linear layers on tokens, ReLU, a class token and a
positional embedding, no layer norm or softmax), a token part lands on its patch and a channels-last
part is permuted by its bias's dimension, and the map on vision transformers (shapes_vit, a small
torchvision ViT, Swin and ConvNeXt) is finite, non-negative, shaped like the input and per sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.swin_transformer import SwinTransformer

import relprop
from relprop.attribution.fullgrad import (CHANNELS_FIRST, CHANNELS_LAST, NO_MAP, _decomposition, bias_map,
                                          fullgrad_parts, postprocess)

DOUBLE = torch.float64
#: tests/test_transformers.py's small ViT and tests/test_swin.py's small Swin
SMALL_VIT = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
SMALL_SWIN = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


def randomise_biases(model: nn.Module, seed: int, names: tuple[str, ...] = ()) -> nn.Module:
    """Every bias (and the parameters named in ``names``) drawn from N(0, 0.1^2), in float64, eval mode."""
    torch.manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in names:
                p.normal_(0, 0.1)
    return model


class TokenMLP(nn.Module):
    """Patch-embedding convolution, class token, positional embedding, linear layers with ReLU on the
    tokens, the mean over tokens and a linear head: piecewise linear in the input and the biases."""

    def __init__(self, side: int = 16, patch: int = 4, dim: int = 8, classes: int = 5) -> None:
        super().__init__()
        tokens = (side // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim), nn.ReLU())
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.class_token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos_embedding
        return self.head(self.mlp(t).mean(dim=1))


class ChannelsLastMLP(nn.Module):
    """Patch-embedding convolution, then a linear layer with ReLU on the channels-last map
    ``(B, H, W, C)`` (as ConvNeXt's blocks), the mean over positions and a linear head."""

    def __init__(self, dim: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.linear = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.linear(self.embed(x).permute(0, 2, 3, 1)))
        return self.head(t.mean(dim=(1, 2)))


def token_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_biases(TokenMLP(), seed, ("class_token", "pos_embedding"))


def logits_of(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, targets.view(-1, 1)).squeeze(1)


# -- the decomposition ---------------------------------------------------------------------------
@pytest.mark.parametrize("build", [token_mlp, lambda: randomise_biases(ChannelsLastMLP(), 1)])
def test_completeness_on_token_and_channels_last_mlps(build):
    """Sec. 3: x df/dx + sum_b b df/db = f(x) for f piecewise linear in the input and the biases."""
    model, x = build(), randn(3, 3, 16, 16, seed=2)
    targets = torch.tensor([0, 3, 4])
    input_part, parts, indices = fullgrad_parts(model, x, targets)
    assert indices.tolist() == targets.tolist() and all(p.abs().sum() > 0 for p in parts.values())
    total = input_part.flatten(1).sum(dim=1) + sum(p.flatten(1).sum(dim=1) for p in parts.values())
    torch.testing.assert_close(total, logits_of(model, x, targets), rtol=1e-10, atol=0)


def test_the_class_token_and_positional_embedding_are_biases():
    """Completeness needs the constants added to the tokens: leaving them out misses the logit."""
    model, x = token_mlp(), randn(2, 3, 16, 16, seed=3)
    input_part, parts, indices = fullgrad_parts(model, x, [1, 2])
    layouts = {name: layout for name, (_, layout) in _decomposition(model, x, [1, 2])[1].items()}
    assert layouts == {"embed": CHANNELS_FIRST, "cat": NO_MAP, "add": CHANNELS_LAST, "mlp.0": CHANNELS_LAST,
                       "mlp.2": CHANNELS_LAST, "head": CHANNELS_LAST}
    # the class token's part is its own row of the concatenation
    assert parts["cat"][:, 1:].abs().max() == 0 and parts["cat"][:, 0].abs().sum() > 0
    logits = logits_of(model, x, indices)
    kept = [p for name, p in parts.items() if name not in ("cat", "add")]
    without = input_part.flatten(1).sum(1) + sum(p.flatten(1).sum(1) for p in kept)
    assert ((without - logits).abs() > 1e-3 * logits.abs()).all()


def test_a_layer_norm_beta_is_a_bias():
    """A layer norm's shift enters as ``beta * df/dz`` at its output, channels last."""
    model = randomise_biases(nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.Linear(4, 3)), 4)
    x = randn(2, 6, seed=5)
    z = model[:2](x).detach().requires_grad_(True)
    grad, = torch.autograd.grad(model[2](z)[:, 1].sum(), z)
    _, parts, _ = fullgrad_parts(model, x, 1)
    torch.testing.assert_close(parts["1"], grad * model[1].bias.detach(), rtol=1e-12, atol=1e-15)


# -- where the parts enter the map -----------------------------------------------------------------
def test_a_token_part_lands_on_its_patch():
    """On a non-square grid (2 x 4 patches of 4 px), token ``1 + 4 r + c`` of a (B, 1 + T, C) part is
    patch (r, c): compared with placing each token by hand; the class token's row is left out."""
    model = TokenMLP(side=16, patch=4)
    model.pos_embedding = nn.Parameter(torch.randn(1, 9, 8))
    model = randomise_biases(model, 6, ("class_token", "pos_embedding"))
    x = randn(2, 3, 8, 16, seed=7)
    _, parts, _ = _decomposition(model, x, [0, 2])
    part, layout = parts["mlp.0"]
    assert part.shape == (2, 9, 16) and layout == CHANNELS_LAST
    placed = bias_map(part, layout, x)
    by_hand = torch.zeros(2, 16, 2, 4, dtype=DOUBLE)
    for r in range(2):
        for c in range(4):
            by_hand[:, :, r, c] = part[:, 1 + 4 * r + c]
    assert torch.equal(placed, by_hand)
    assert bias_map(*parts["cat"], x) is None and bias_map(*parts["head"], x) is None


def test_the_map_places_a_channels_last_part_by_its_bias_dimension():
    """A linear layer on (B, H, W, C) with H = 2, W = C = 4 (shapes that also read as channels-first
    (B, C', H', W')): its part is permuted to (B, C, H, W), and the map is the sum of the normalised,
    resized parts placed by hand."""
    model, x = randomise_biases(ChannelsLastMLP(dim=4), 8), randn(2, 3, 8, 16, seed=9)
    input_part, parts, _ = _decomposition(model, x, [1, 4])
    part, layout = parts["linear"]
    assert part.shape == (2, 2, 4, 4) and layout == CHANNELS_LAST
    assert torch.equal(bias_map(part, layout, x), part.permute(0, 3, 1, 2))
    expected = postprocess(input_part).sum(dim=1, keepdim=True)
    for name in ("embed", "linear"):
        grid = parts[name][0] if name == "embed" else parts[name][0].permute(0, 3, 1, 2)
        resized = nn.functional.interpolate(postprocess(grid), size=(8, 16), mode="bilinear", align_corners=True)
        expected = expected + resized.sum(dim=1, keepdim=True)
    ours = relprop.explain(model, x, [1, 4], method="fullgrad")
    torch.testing.assert_close(ours, (expected / 3).expand_as(x), rtol=1e-12, atol=1e-12)


def test_a_window_partition_is_not_a_map():
    """(B, windows, positions, C) with no common stride on the image (MaxViT's partitions) stays out."""
    x = torch.zeros(1, 3, 224, 224)
    assert bias_map(torch.ones(1, 64, 49, 8), CHANNELS_LAST, x) is None
    assert bias_map(torch.ones(1, 56, 56, 8), CHANNELS_LAST, x).shape == (1, 8, 56, 56)
    assert bias_map(torch.ones(18, 16, 8), CHANNELS_LAST, torch.zeros(2, 3, 16, 16)) is None  # Swin's windows


# -- vision transformers -------------------------------------------------------------------------
def shapes_vit() -> nn.Module:
    return relprop.load_model("shapes_vit")[0].double().eval()


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(**SMALL_VIT)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return randomise_biases(model, 0, ("class_token", "encoder.pos_embedding"))


def small_swin() -> nn.Module:
    torch.manual_seed(0)
    return randomise_biases(SwinTransformer(**SMALL_SWIN), 0)


def small_convnext() -> nn.Module:
    torch.manual_seed(0)
    return randomise_biases(torchvision.models.convnext_tiny(num_classes=10), 0)


@pytest.mark.parametrize("build, side", [(shapes_vit, 64), (small_vit, 32), (small_swin, 40), (small_convnext, 32)],
                         ids=["shapes_vit", "vit", "swin", "convnext"])
def test_fullgrad_on_vision_transformers(build, side):
    model, x = build(), randn(2, 3, side, side, seed=10)
    targets = [1, 7]
    saliency = relprop.explain(model, x, targets, method="fullgrad")
    assert saliency.shape == x.shape and torch.isfinite(saliency).all()
    assert (saliency >= 0).all() and saliency.abs().sum() > 0
    alone = torch.cat([relprop.explain(model, x[b:b + 1], targets[b], method="fullgrad") for b in range(2)])
    torch.testing.assert_close(saliency, alone, rtol=1e-9, atol=1e-12)


def test_token_parts_enter_the_vit_map():
    """Every linear layer and layer norm on the ViT's tokens and the positional embedding give a map
    on the 4 x 4 patch grid; the class token and the head's bias do not."""
    model, x = small_vit(), randn(1, 3, 32, 32, seed=11)
    _, parts, _ = _decomposition(model, x, 0)
    maps = {name: bias_map(part, layout, x) for name, (part, layout) in parts.items()}
    assert {name for name, m in maps.items() if m is None} == {"cat", "heads.head"}
    assert all(m.shape[2:] == (4, 4) for m in maps.values() if m is not None)
