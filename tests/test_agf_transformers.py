"""AGF (Gur, Ali & Wolf 2021) on transformers: linear layers on tokens (B, T, C) and channels-last
maps (B, H, W, C) with the channels last and the positions between batch and channels; layer norms,
attention products and sums by AGF's |z| term with CP-LRP's constants (Ali et al. 2022). Runs on
ViTs, Swin and ConvNeXt, one sample at a time as in a batch, conserves the head's relevance where
nothing absorbs it, and its maps depend on the class on the shapes ViT."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
import relprop.attribution.agf as agf_method
import relprop.rules.agf as agf_rules
from relprop.attribution.agf import agf_relevance, agf_score
from relprop.rules.agf import AGFLayerNorm, AGFValueMix, channel_mean_map, factorization
from test_swin import small_swin
from test_transformers import small_vit

DT = torch.float64


def _image(batch: int, side: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, dtype=DT, generator=torch.Generator().manual_seed(seed))


# -- the generalised pieces against a hand computation and the channels-first code ------------------
def _old_channel_mean_map(t):
    m = F.relu(t.mean(dim=1, keepdim=True)).expand_as(t)
    return agf_rules.agf_divide(m, agf_rules.sample_max(m))


def _old_factorization(x, gradient, phi):
    """The channels-first factorisation as it was written for convolutions (the authors' code)."""
    spatial = tuple(range(2, x.dim()))
    regions = []
    for part in (phi.clamp(max=0), phi.clamp(min=0)):
        inside = (part != 0).to(x.dtype)
        regions.append((inside, inside.sum(dim=tuple(range(1, x.dim())), keepdim=True)))

    def factor(t):
        h = torch.sigmoid(10 * agf_rules.agf_divide(t, agf_rules.sample_max(t)))
        reps = torch.cat([agf_rules.agf_divide((h * inside).sum(dim=spatial, keepdim=True), count).flatten(2)
                          for inside, count in regions], dim=-1)
        gram = reps.transpose(1, 2) @ reps + torch.eye(2, dtype=x.dtype)
        weights = F.relu(torch.linalg.solve(gram, reps.transpose(1, 2) @ h.flatten(2)))
        weights = weights.view(x.shape[0], 2, *x.shape[2:])
        return (weights[:, 1:2] - weights[:, 0:1]).expand_as(x)

    return factor(x), factor(gradient)


def test_channel_mean_over_the_last_dimension_by_hand():
    tokens = torch.tensor([[[1.0, 3.0], [-4.0, 0.0], [2.0, 2.0]]], dtype=DT)  # (1, T=3, C=2)
    # per-token channel means 2, -2, 2 -> relu 2, 0, 2 -> divided by the maximum 2
    expected = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]], dtype=DT)
    torch.testing.assert_close(channel_mean_map(tokens, channels_last=True), expected, rtol=0, atol=1e-8)


def test_factorization_over_tokens_by_hand():
    """Two channels, three tokens; the foreground is token 0, the background tokens 1 and 2."""
    x = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]]], dtype=DT)
    phi = torch.tensor([[[1.0], [-1.0], [-2.0]]], dtype=DT)
    f_x, f_dx = factorization(x, 2 * x, phi, channels_last=True)
    h = torch.sigmoid(10 * x / 2)[0]  # (T, C)
    r = torch.stack([h[1:].mean(0), h[:1].mean(0)], dim=1)  # per-channel means: background, foreground
    w = F.relu(torch.linalg.solve(r.T @ r + torch.eye(2, dtype=DT), r.T @ h.T))  # (2, T)
    expected = (w[1] - w[0])[None, :, None].expand(1, 3, 2)
    # up to the 1e-9 stabiliser of the normalisation x / max x
    torch.testing.assert_close(f_x, expected, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(f_dx, expected, rtol=1e-8, atol=1e-8)  # 2 x normalises to the same


@pytest.mark.parametrize("shape", [(2, 4, 5, 6), (3, 5, 7)])
def test_channels_last_equals_channels_first_moved(shape):
    """On a channels-last map (or tokens) the pieces are the channels-first ones with the channels
    moved, and on channels-first maps they are the code written for convolutions, bit for bit."""
    g = torch.Generator().manual_seed(3)
    x, grad, c = (torch.randn(*shape, dtype=DT, generator=g) for _ in range(3))
    phi = c.mean(dim=1, keepdim=True)
    assert torch.equal(channel_mean_map(x), _old_channel_mean_map(x))
    for new, old in zip(factorization(x, grad, phi), _old_factorization(x, grad, phi)):
        assert torch.equal(new, old)
    last = [t.movedim(1, -1) for t in (x, grad, phi)]
    torch.testing.assert_close(channel_mean_map(last[0], channels_last=True), _old_channel_mean_map(x).movedim(1, -1))
    for new, old in zip(factorization(*last, channels_last=True), _old_factorization(x, grad, phi)):
        torch.testing.assert_close(new, old.movedim(1, -1), rtol=1e-12, atol=1e-12)


def test_layer_norm_and_value_mix_rules_are_the_absolute_rule_on_their_linear_maps():
    """``R(x_i) = |x_i| sum_k |D_ki| R_k / sum_j |x_j| |D_kj|`` with ``D`` the layer norm's linear map at
    constant scale, and the same on ``V -> P V``, written out with explicit matrices."""
    g = torch.Generator().manual_seed(5)
    norm = nn.LayerNorm(5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0]))
    x, r = torch.randn(2, 3, 5, dtype=DT, generator=g), torch.randn(2, 3, 5, dtype=DT, generator=g)
    d = torch.diag(norm.weight.detach()) @ (torch.eye(5, dtype=DT) - 1 / 5)  # D up to 1/sigma, which cancels
    den = x.abs() @ d.abs().T
    expected = x.abs() * (torch.where(norm.weight != 0, r / den, torch.zeros_like(r)) @ d.abs())
    got = _rule_on(norm, x, r, AGFLayerNorm())
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)  # the 1e-9 stabiliser
    torch.testing.assert_close(got.sum((1, 2)), r.sum((1, 2)) - (r * (norm.weight == 0)).sum((1, 2)))

    p = torch.softmax(torch.randn(2, 4, 4, dtype=DT, generator=g), -1)
    v, r = torch.randn(2, 4, 3, dtype=DT, generator=g), torch.randn(2, 4, 3, dtype=DT, generator=g)
    expected = v.abs() * (p.transpose(1, 2) @ (r / (p @ v.abs())))
    shares = AGFValueMix().relevance(_matmul_step(p, v), r)
    assert shares[0] is None
    torch.testing.assert_close(shares[1], expected, rtol=1e-8, atol=1e-8)


def _rule_on(norm, x, r, rule):
    from relprop.ops import LayerNorm
    from relprop.rules.base import Step
    op = LayerNorm(norm)
    return rule.relevance(Step(op, [x], (x,), {}, norm(x), None, False), r)[0]


def _matmul_step(p, v):
    from types import SimpleNamespace
    from relprop.rules.base import Step
    return Step(SimpleNamespace(attention=0), [p, v], (p, v), {}, p @ v, None, False)


# -- models ----------------------------------------------------------------------------------------
def _convnext() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny(num_classes=10).double().eval()


MODELS = {"vit": (small_vit, 32), "swin": (small_swin, 40), "convnext": (_convnext, 32)}


@pytest.mark.parametrize("name", list(MODELS))
def test_runs_and_batch_equals_samples(name):
    make, side = MODELS[name]
    model, x, target = make(), _image(2, side), [1, 3]
    together = relprop.explain(model, x, target=target, method="agf")
    assert together.shape == x.shape and bool(torch.isfinite(together).all())
    assert float(together.abs().amax()) > 0
    alone = torch.cat([relprop.explain(model, x[i:i + 1], target=[t], method="agf") for i, t in enumerate(target)])
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-12)


def test_runs_on_the_shapes_vit():
    model = relprop.load_model("shapes_vit")[0]
    r = relprop.explain(model, torch.rand(2, 3, 64, 64), target=[0, 1], method="agf")
    assert r.shape == (2, 3, 64, 64) and bool(torch.isfinite(r).all()) and float(r.abs().amax()) > 0


def _head_relevance(model, x, target):
    """The head's relevance ``x * dy^_t/dx`` (AGF's start, Gur, Ali & Wolf 2021)."""
    kept = {}
    handle = model.heads.head.register_forward_hook(lambda m, i, o: kept.setdefault("x", i[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    h = kept["x"].detach().requires_grad_(True)
    g, = torch.autograd.grad(agf_score(model.heads.head(h), torch.tensor(target)), h)
    return (h * g).detach()


def test_conservation_on_a_vit(monkeypatch):
    """Every rule on the way conserves (|z| terms, zero-sum shifts, LRP-0 and z^B without bias): with
    biases, the class token and the positional embedding zero, the input relevance sums to the head's,
    but for what the 1e-9 stabilisers absorb (rounding alone with 1e-15). With them, the sum is still
    the head's at the encoder's input; the positional embedding and the class token then absorb shares
    of a relevance whose entries are large and of both signs, and the input sum is not the head's."""
    x, target = _image(2, 32), [1, 3]

    def lost(model, at=None):
        head = _head_relevance(model, x, target)
        if at is None:
            total = agf_relevance(model, x, target)[0].sum((1, 2, 3))
        else:
            _, recorded = relprop.Explainer(model, "agf").explain(x, target=target, record=[at])
            total = recorded[at].flatten(1).sum(1)
        return (total - head.sum(1)).abs() / head.abs().sum(1)

    conservative, biased = small_vit(conservative=True), small_vit()
    assert float(lost(conservative).max()) < 1e-4
    assert float(lost(biased, "encoder.dropout").max()) < 1e-4
    assert float(lost(biased).max()) > 1.0  # absorbed by the constants
    monkeypatch.setattr(agf_rules, "AGF_EPSILON", 1e-15)
    monkeypatch.setattr(agf_method, "AGF_EPSILON", 1e-15)
    assert float(lost(conservative).max()) < 1e-9


def test_class_sensitivity_on_the_shapes_vit():
    """Scenes with two classes, each class explained: the maps differ by class (mean correlation of
    the two maps of a scene well below 1), the explained object's box wins most pairs and the
    maximum lies on the object in most cases (the pointing game)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import faithfulness as bench
    model, _ = relprop.load_model("shapes_vit")
    cases = bench.shapes_cases(count=4)
    maps, _ = bench.explain(model, cases, "agf")
    row = bench.measure(maps, cases)
    assert row.finite and row.corr_mean < 0.6
    assert row.wins >= 0.7 * row.pairs and row.hits >= 0.6 * row.cases  # 11/12 and 7/9


def test_refuses_a_transformer_without_a_head():
    model = small_vit()
    model.heads = nn.Identity()
    with pytest.raises(ValueError, match="agf: the model must end in a linear or convolution layer.*getitem"):
        relprop.explain(model, _image(1, 32), target=0, method="agf")


def test_a_zero_head_gives_a_zero_map():
    """torchvision's ViTs start with a zero head: no relevance anywhere, and no 0/0 in the shift."""
    model = small_vit()
    nn.init.zeros_(model.heads.head.weight)
    r = relprop.explain(model, _image(2, 32), target=[1, 2], method="agf")
    assert bool(torch.isfinite(r).all()) and float(r.abs().amax()) == 0.0
