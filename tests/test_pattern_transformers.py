"""PatternNet and PatternAttribution on transformers (Kindermans et al., ICLR 2018; the constant
treatment of layer norms and attention of Ali et al. 2022): the estimator on tokens and channels-last
maps against a per-token float64 loop, the backward pass of a small ViT against one written here with
autograd, the signal direction on tokens, ``shapes_vit`` with its shipped patterns and a torchvision
ViT with patterns computed here, and the pointing game on shapes scenes."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import relprop
from relprop.patterns import compute_patterns, layer_estimators, shipped_patterns
from relprop.propagate import propagator_for

torch.set_num_threads(1)
F64 = torch.float64
METHODS = ("patternnet", "pattern-attribution")


# -- the estimator on tokens -----------------------------------------------------------------------
class TokenNet(nn.Module):
    """Linear -> GELU -> Linear on the last dimension of (B, T, C) tokens or (B, H, W, C) maps; the
    first token (position) of the second layer's output is the model output."""

    def __init__(self, maps: bool) -> None:
        super().__init__()
        self.maps = maps
        self.fc1 = nn.Linear(4, 3)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(x)))
        return y[:, 0, 0] if self.maps else y[:, 0]


def loop_patterns(w: np.ndarray, b: np.ndarray, samples: np.ndarray, two_component: bool) -> np.ndarray:
    """A = cov / (w^T cov), cov = E+[x y] - E+[x] E[y] per output unit, every row of ``samples`` (one
    token or position) a sample; E+ over the samples with ``w^T x + b > 0`` (two-component) or all."""
    a = np.zeros_like(w)
    for o in range(w.shape[0]):
        y = np.array([w[o] @ s for s in samples])
        active = [k for k in range(len(samples)) if not two_component or y[k] + b[o] > 0]
        count = max(len(active), 1)
        exy = sum(samples[k] * y[k] for k in active) / count
        ex = sum(samples[k] for k in active) / count
        cov = exy - ex * y.mean()
        den = w[o] @ cov
        a[o] = cov / (den if den != 0 else 1.0)
    return a


@pytest.mark.parametrize("shape", [(5, 7, 4), (3, 4, 3, 4)], ids=["tokens", "channels-last"])
@pytest.mark.parametrize("kind", ["relu", "linear"])
def test_the_estimator_treats_every_token_as_a_sample(kind, shape):
    torch.manual_seed(0)
    net = TokenNet(maps=len(shape) == 4).to(F64).eval()
    x = torch.randn(shape, dtype=F64)
    patterns = compute_patterns(net, x.split(2), kind=kind)
    chosen = layer_estimators(propagator_for(net), kind)
    assert chosen == ({"fc1": "relu", "fc2": "linear"} if kind == "relu" else {"fc1": "linear", "fc2": "linear"})
    tokens = x.reshape(-1, 4).numpy()
    hidden = F.gelu(net.fc1(torch.from_numpy(tokens))).detach().numpy()
    for name, samples in (("fc1", tokens), ("fc2", hidden)):
        layer = getattr(net, name)
        expected = loop_patterns(layer.weight.detach().numpy(), layer.bias.detach().numpy(), samples,
                                 chosen[name] == "relu")
        np.testing.assert_allclose(patterns[name].numpy(), expected, rtol=1e-10, atol=1e-12)
    assert patterns.samples == shape[0]
    if kind == "relu":  # the two estimators differ on the GELU layer only
        other = compute_patterns(net, [x], kind="linear")
        assert not torch.allclose(other["fc1"], patterns["fc1"])
        torch.testing.assert_close(other["fc2"], patterns["fc2"])


def test_the_pattern_recovers_the_signal_direction_on_tokens():
    """x = a_s s + e d on every token; w^T d = 0 and w^T a_s = 1: the pattern is a_s, the weight is not."""
    gen = torch.Generator().manual_seed(0)
    d = 6
    a_s = torch.randn(d, generator=gen, dtype=F64)
    distractor = a_s + 0.7 * torch.randn(d, generator=gen, dtype=F64)
    w = a_s - (a_s @ distractor) / (distractor @ distractor) * distractor
    w = w / (w @ a_s)
    s = torch.randn(4000, 10, generator=gen, dtype=F64)
    e = 3.0 * torch.randn(4000, 10, generator=gen, dtype=F64)
    x = s[..., None] * a_s + e[..., None] * distractor
    model = nn.Sequential(nn.Linear(d, 1, bias=False), nn.Flatten()).to(F64).eval()
    with torch.no_grad():
        model[0].weight.copy_(w[None])
        torch.testing.assert_close(model(x), s)
    cos = lambda u, v: float(u.flatten() @ v.flatten() / (u.norm() * v.norm()))  # noqa: E731
    for kind in ("relu", "linear"):
        a = compute_patterns(model, x.split(1000), kind=kind)["0"]
        assert cos(a, a_s) > 0.99
    assert cos(w, a_s) < 0.9


# -- the backward pass of a small ViT ----------------------------------------------------------------
def small_vit(seed: int = 0) -> nn.Module:
    """A random float64 torchvision ViT: patch convolution, class token, one block, 3 heads."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=1, num_heads=3,
                                                 hidden_dim=12, mlp_dim=20, num_classes=5).to(F64).eval()
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.5)
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("class_token", "encoder.pos_embedding"):
                p.normal_(0, 0.1)
            if name.endswith(".weight") and "ln" in name:
                p.uniform_(0.5, 1.5)
    return model


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _swapped(value: torch.Tensor, through: torch.Tensor) -> torch.Tensor:
    """``value`` forward, the gradient of ``through`` backward."""
    return value.detach() + through - through.detach()


def reference_backward(model: nn.Module, patterns, x: torch.Tensor, target: torch.Tensor,
                       attribution: bool) -> torch.Tensor:
    """The ViT's forward written out, with every layer's backward weight ``A`` (or ``W * A``), layer
    norms' sigma and attention probabilities detached; the gradient of the target logits."""
    def back(name: str, w: torch.Tensor) -> torch.Tensor:
        return w * patterns[name] if attribution else patterns[name]

    def linear(t: torch.Tensor, layer_w: torch.Tensor, layer_b: torch.Tensor, name: str) -> torch.Tensor:
        return _swapped(F.linear(t, layer_w, layer_b), F.linear(t, back(name, layer_w)))

    def layer_norm(t: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
        centred = t - t.mean(-1, keepdim=True)
        sigma = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + ln.eps).detach()
        return centred / sigma * ln.weight + ln.bias

    x = x.detach().requires_grad_(True)
    conv = model.conv_proj
    z = _swapped(conv(x), F.conv2d(x, back("conv_proj", conv.weight), stride=conv.stride))
    tokens = z.flatten(2).transpose(1, 2)
    tokens = torch.cat([model.class_token.expand(x.shape[0], -1, -1), tokens], dim=1) + model.encoder.pos_embedding
    block = model.encoder.layers[0]
    attention = block.self_attention
    h = layer_norm(tokens, block.ln_1)
    qkv = linear(h, attention.in_proj_weight, attention.in_proj_bias,
                 "encoder.layers.encoder_layer_0.self_attention.in_proj")
    heads, width = attention.num_heads, tokens.shape[-1]
    q, k, v = (t.reshape(x.shape[0], -1, heads, width // heads).transpose(1, 2) for t in qkv.split(width, -1))
    probabilities = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), -1).detach()
    mixed = (probabilities @ v).transpose(1, 2).reshape(x.shape[0], -1, width)
    tokens = tokens + linear(mixed, attention.out_proj.weight, attention.out_proj.bias,
                             "encoder.layers.encoder_layer_0.self_attention.out_proj")
    mlp = block.mlp
    hidden = F.gelu(linear(layer_norm(tokens, block.ln_2), mlp[0].weight, mlp[0].bias,
                           "encoder.layers.encoder_layer_0.mlp.0"))
    tokens = tokens + linear(hidden, mlp[3].weight, mlp[3].bias, "encoder.layers.encoder_layer_0.mlp.3")
    head = model.heads.head
    logits = linear(layer_norm(tokens, model.encoder.ln)[:, 0], head.weight, head.bias, "heads.head")
    torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)  # the forward is the model's
    score = logits.gather(1, target.view(-1, 1)).sum()
    return torch.autograd.grad(score, x)[0]


@pytest.fixture(scope="module")
def vit_and_patterns():
    model = small_vit()
    return model, compute_patterns(model, [images(6, seed=1), images(6, seed=2)])


@pytest.mark.parametrize("method", METHODS)
def test_backward_through_a_vit_equals_the_written_out_backward(method, vit_and_patterns):
    model, patterns = vit_and_patterns
    tensors = dict(patterns.patterns)
    x, target = images(3, seed=3), torch.tensor([0, 3, 4])
    got = relprop.explain(model, x, target=target, method=method, patterns=patterns)
    expected = reference_backward(model, tensors, x, target, method == "pattern-attribution")
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))
    # the choice per layer: S_a+ before the GELU, the linear estimator elsewhere
    estimators = patterns.info["estimators"]
    assert [name for name, kind in estimators.items() if kind == "relu"] == ["encoder.layers.encoder_layer_0.mlp.0"]


def _check_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, **options) -> None:
    """Finite, shaped like the input, not all zero per sample, and the batch equals its samples."""
    together = relprop.explain(model, x, target=target, method=method, **options)
    assert together.shape == x.shape and together.dtype == x.dtype and bool(torch.isfinite(together).all())
    assert bool((together.flatten(1).abs().amax(1) > 0).all())
    for b in range(x.shape[0]):
        alone = relprop.explain(model, x[b:b + 1], target=int(target[b]), method=method, **options)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-9, atol=1e-9 * float(alone.abs().max()))


@pytest.mark.parametrize("method", METHODS)
def test_a_torchvision_vit_with_computed_patterns(method, vit_and_patterns):
    model, patterns = vit_and_patterns
    _check_maps(model, images(3, seed=4), torch.tensor([1, 2, 0]), method, patterns=patterns)


def test_random_models_without_patterns_say_how_to_compute_them():
    with pytest.raises(ValueError, match="signal patterns of VisionTransformer.*compute_patterns"):
        relprop.explain(small_vit(), images(1, seed=5), method="pattern-attribution")


def test_products_of_two_tensors_are_refused_naming_the_node():
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) * x)

    with pytest.raises(ValueError, match=r"patternnet .*Bilinear has node 'mul'.*product of two tensors"):
        relprop.explain(Bilinear().eval(), torch.randn(2, 4), method="patternnet")


# -- shapes_vit ---------------------------------------------------------------------------------------
def _faithfulness():
    if "faithfulness_bench" in sys.modules:
        return sys.modules["faithfulness_bench"]
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "faithfulness.py"
    spec = importlib.util.spec_from_file_location("faithfulness_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["faithfulness_bench"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def shapes_vit_and_cases():
    bench = _faithfulness()
    model, _ = relprop.load_model("shapes_vit")
    return bench, model, bench.shapes_cases(count=4)


def test_shapes_vit_has_shipped_patterns():
    patterns = shipped_patterns("shapes_vit")
    assert patterns.info["data"] == "shapes" and patterns.info["split"] == "train" and patterns.samples >= 1000
    assert all(a.dtype == torch.float16 for a in patterns.patterns.values())
    from relprop.patterns import SHIPPED_DIR

    assert (SHIPPED_DIR / "shapes_vit.pt").stat().st_size < 600_000


@pytest.mark.parametrize("method", METHODS)
def test_shapes_vit_explains_with_its_shipped_patterns(method, shapes_vit_and_cases):
    _, model, cases = shapes_vit_and_cases
    _check_maps(model.to(F64), cases.images[:3].to(F64), cases.targets[:3], method)
    model.float()


@pytest.mark.parametrize("method", METHODS)
def test_shapes_vit_maps_point_into_the_objects(method, shapes_vit_and_cases):
    """A cheap pointing game on the first shapes test scenes with two classes (benchmarks/faithfulness.py
    on 19 cases: patternnet 3/19, pattern-attribution 10/19, as on shapes_vgg 4/19 and 11/19): the two
    classes' maps of a scene differ, and PatternAttribution's maxima fall on the explained object
    in a third of the cases at least and favour its box in half the class contrasts."""
    bench, model, cases = shapes_vit_and_cases
    maps, _ = bench.explain(model.float(), cases, method)
    row = bench.measure(maps, cases)
    print(bench.format_row(method, row))
    assert row.finite and row.corr_mean < 0.9
    if method == "pattern-attribution":
        assert row.hits >= row.cases // 3 and row.wins >= row.pairs // 2
