"""PatternNet and PatternAttribution (Kindermans et al., ICLR 2018): the pattern estimator against a
per-patch float64 reference and its defining property on a linear signal + distractor model, the
backward passes against an explicit backward written here, the patterns file, the default patterns
of the shipped models and the ``relprop patterns`` command."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop.attribution.attention_maps import applicable_methods
from relprop.cli import main
from relprop.patterns import (Patterns, PatternsError, compute_patterns, register_patterns, shipped_patterns)
from engine_checks import assert_unchanged, snapshot
from user_cnns import MobileNet

torch.set_num_threads(1)
F64 = torch.float64
METHODS = ("patternnet", "pattern-attribution")


# -- a tiny conv + BN + relu + maxpool + linear network, float64 -------------------------------------
def tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(2, 3, 3, padding=1)), ("bn1", nn.BatchNorm2d(3)), ("relu1", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(3, 4, 2)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(16, 5)),
    ]))
    with torch.no_grad():
        net.bn1.running_mean.copy_(torch.randn(3) * 0.3)
        net.bn1.running_var.copy_(torch.rand(3) + 0.5)
        net.bn1.weight.copy_(torch.rand(3) + 0.5)
        net.bn1.bias.copy_(torch.randn(3) * 0.2)
        net.conv2.bias.add_(0.3)  # most units active on most samples: maps that are not all zero
        net.fc.bias.add_(1.0)
    return net.to(F64).eval()


def data(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=F64)


def folded(net: nn.Sequential) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The layers' weights and biases with the batch norm folded into conv1 (numpy, float64)."""
    bn = net.bn1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    w1 = net.conv1.weight.detach().numpy() * scale[:, None, None, None]
    b1 = (net.conv1.bias.detach().numpy() - bn.running_mean.numpy()) * scale + bn.bias.detach().numpy()
    return {"conv1": (w1, b1), "conv2": (net.conv2.weight.detach().numpy(), net.conv2.bias.detach().numpy()),
            "fc": (net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy())}


def patches(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """(positions, C*k*k) input patches of one sample (C, H, W), row-major positions, stride 1."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    h, w = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    return np.array([xp[:, i:i + k, j:j + k].reshape(-1) for i in range(h) for j in range(w)])


def maxpool(a: np.ndarray) -> tuple[np.ndarray, list]:
    """2x2 max pooling of (C, H, W), and the winner of every output (c, i, j) -> (c, h, w)."""
    c, h, w = a.shape
    out = np.zeros((c, h // 2, w // 2))
    winners = []
    for ch in range(c):
        for i in range(h // 2):
            for j in range(w // 2):
                window = a[ch, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                di, dj = np.unravel_index(np.argmax(window), (2, 2))
                out[ch, i, j] = window[di, dj]
                winners.append(((ch, i, j), (ch, 2 * i + di, 2 * j + dj)))
    return out, winners


def reference_forward(layers, x: np.ndarray) -> dict:
    """Every layer's samples (patches / input vectors), outputs without and with bias, and the
    intermediate values of one input sample, by explicit loops."""
    w1, b1 = layers["conv1"]
    p1 = patches(x, 3, 1)
    y1 = p1 @ w1.reshape(3, -1).T
    z1 = (y1 + b1).T.reshape(3, 6, 6)
    a1 = np.maximum(z1, 0)
    m, winners = maxpool(a1)
    w2, b2 = layers["conv2"]
    p2 = patches(m, 2, 0)
    y2 = p2 @ w2.reshape(4, -1).T
    z2 = (y2 + b2).T.reshape(4, 2, 2)
    f = np.maximum(z2, 0).reshape(-1)
    wf, bf = layers["fc"]
    y3 = f @ wf.T
    return {"samples": {"conv1": (p1, y1, y1 + b1), "conv2": (p2, y2, y2 + b2), "fc": (f[None], y3[None], (y3 + bf)[None])},
            "z1": z1, "z2": z2, "winners": winners, "logits": y3 + bf}


def reference_patterns(layers, xs: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """A = cov / (w^T cov), cov = E+[x y] - E+[x] E[y], per output unit, from all samples (patches)."""
    runs = [reference_forward(layers, x)["samples"] for x in xs]
    out = {}
    for name, (w, _) in layers.items():
        xsamples = np.concatenate([r[name][0] for r in runs])
        y = np.concatenate([r[name][1] for r in runs])
        z = np.concatenate([r[name][2] for r in runs])
        wm = w.reshape(w.shape[0], -1)
        a = np.zeros_like(wm)
        for o in range(wm.shape[0]):
            active = z[:, o] > 0 if kind == "relu" else np.ones(len(z), bool)
            count = max(active.sum(), 1)
            exy = (xsamples[active] * y[active, o, None]).sum(axis=0) / count
            ex = xsamples[active].sum(axis=0) / count
            cov = exy - ex * y[:, o].mean()
            denominator = wm[o] @ cov
            a[o] = cov / (denominator if denominator != 0 else 1.0)
        out[name] = a.reshape(w.shape)
    return out


def reference_backward(layers, backward: dict[str, np.ndarray], x: np.ndarray, target: int) -> np.ndarray:
    """Gradient-like backward of the target logit's unit with the backward weights ``backward``:
    ReLU gates and max-pool winners of the forward pass, no biases."""
    fwd = reference_forward(layers, x)
    g = backward["fc"][target].copy()  # (16,): B_fc^T e_target
    g = g.reshape(4, 2, 2) * (fwd["z2"] > 0)
    gm = _transposed_conv(backward["conv2"], g, (3, 3, 3))
    ga = np.zeros((3, 6, 6))
    for (c, i, j), (cw, h, w) in fwd["winners"]:
        ga[cw, h, w] += gm[c, i, j]
    ga *= fwd["z1"] > 0
    return _transposed_conv(backward["conv1"], ga, (2, 8, 8))[:, 1:-1, 1:-1]


def _transposed_conv(weights: np.ndarray, g: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Each output position's gradient ``g[o, i, j]`` times the kernel ``weights[o]`` added into its
    (stride 1) patch of an array of ``shape``."""
    out = np.zeros(shape)
    k = weights.shape[-1]
    for o in range(g.shape[0]):
        for i in range(g.shape[1]):
            for j in range(g.shape[2]):
                out[:, i:i + k, j:j + k] += weights[o] * g[o, i, j]
    return out


@pytest.mark.parametrize("kind", ["relu", "linear"])
def test_patterns_match_the_per_patch_reference(kind):
    net = tiny_net()
    xs = data(12, seed=1)
    batches = [xs[:5], xs[5:]]
    patterns = compute_patterns(net, batches, kind=kind)
    expected = reference_patterns(folded(net), xs.numpy(), kind)
    assert list(patterns.patterns) == ["conv1", "conv2", "fc"]
    for name, a in expected.items():
        got = patterns[name].numpy()
        assert got.shape == a.shape
        np.testing.assert_allclose(got, a, rtol=1e-10, atol=1e-10 * np.abs(a).max(), err_msg=name)
        # the patterns differ from the weights, and the two estimators from each other (the check can fail)
        assert not np.allclose(got, folded(net)[name][0])
    other = compute_patterns(net, batches, kind="linear" if kind == "relu" else "relu")
    assert not torch.allclose(other["conv1"], patterns["conv1"])
    assert patterns.samples == 12 and patterns.kind == kind


@pytest.mark.parametrize("method", METHODS)
def test_backward_matches_the_explicit_backward(method):
    net = tiny_net()
    patterns = compute_patterns(net, [data(16, seed=2)])
    layers = folded(net)
    backward = {n: (layers[n][0] * patterns[n].numpy() if method == "pattern-attribution" else patterns[n].numpy())
                for n in layers}
    x = data(3, seed=3)
    targets = [0, 3, 4]
    got = relprop.explain(net, x, target=targets, method=method, patterns=patterns)
    assert got.dtype == F64 and got.shape == x.shape
    for b, t in enumerate(targets):
        expected = reference_backward(layers, backward, x[b].numpy(), t)
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
    # the gradient itself differs: the weights were replaced
    grad = relprop.explain(net, x, target=targets, method="gradient")
    assert not torch.allclose(grad, got)
    # normalize="max": each sample's map scaled to an absolute maximum of 1 (iNNvestigate's scale)
    scaled = relprop.explain(net, x, target=targets, method=method, patterns=patterns, normalize="max")
    peak = got.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(scaled, got / peak, rtol=1e-12, atol=1e-12)
    # seed="logit" starts from the target logit's value (iNNvestigate): the map times y_c
    with torch.no_grad():
        y = net(x)[torch.arange(3), torch.tensor(targets)].view(-1, 1, 1, 1)
    from_logit = relprop.explain(net, x, target=targets, method=method, patterns=patterns, seed="logit")
    torch.testing.assert_close(from_logit, got * y, rtol=1e-12, atol=1e-12 * float((got * y).abs().max()))


# -- the defining property: signal + distractor -----------------------------------------------------
def signal_and_distractor(n: int = 200000, d: int = 8, seed: int = 0):
    """x = a_s s + d e: the filter w (w^T d = 0, w^T a_s = 1) gives y = s; the pattern is a_s."""
    gen = torch.Generator().manual_seed(seed)
    a_s = torch.randn(d, generator=gen, dtype=F64)
    distractor = a_s + 0.7 * torch.randn(d, generator=gen, dtype=F64)  # far from orthogonal to a_s
    w = a_s - (a_s @ distractor) / (distractor @ distractor) * distractor
    w = w / (w @ a_s)
    s = torch.randn(n, generator=gen, dtype=F64)
    e = 3.0 * torch.randn(n, generator=gen, dtype=F64)
    x = s[:, None] * a_s + e[:, None] * distractor
    model = nn.Sequential(nn.Linear(d, 1, bias=False)).to(F64).eval()
    with torch.no_grad():
        model[0].weight.copy_(w[None])
    return model, x, s, a_s


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u.flatten() @ v.flatten() / (u.norm() * v.norm()))


@pytest.mark.parametrize("kind", ["relu", "linear"])
def test_the_pattern_recovers_the_signal_direction(kind):
    model, x, s, a_s = signal_and_distractor()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, 0], s)  # the filter cancels the distractor
    patterns = compute_patterns(model, x.split(20000), kind=kind)
    a = patterns["0"]
    assert _cos(a, a_s) > 0.99
    assert _cos(model[0].weight.detach(), a_s) < 0.9  # the weight does not show the signal
    # PatternNet from the logit's value: the signal estimate a y, which is the signal s
    k = 20
    signal = relprop.explain(model, x[:k], target=0, method="patternnet", patterns=patterns, seed="logit")
    expected = s[:k, None] * a_s
    assert float((signal - expected).norm() / expected.norm()) < 0.03
    gradient = relprop.explain(model, x[:k], target=0, method="gradient") * s[:k, None]
    assert float((gradient - expected).norm() / expected.norm()) > 0.3  # w y is not the signal
    # from the unit (default): the pattern itself, for every sample
    unit = relprop.explain(model, x[:3], target=0, method="patternnet", patterns=patterns)
    torch.testing.assert_close(unit, a.view(1, -1).expand(3, -1), rtol=1e-12, atol=1e-12)


# -- batches, the model, the default patterns -----------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_samples(method):
    net = tiny_net(seed=4)
    patterns = compute_patterns(net, [data(16, seed=5)])
    x = data(4, seed=6)
    targets = torch.tensor([1, 0, 4, 2])
    together = relprop.explain(net, x, target=targets, method=method, patterns=patterns)
    assert together.abs().sum() > 0
    for b in range(4):
        alone = relprop.explain(net, x[b:b + 1], target=int(targets[b]), method=method, patterns=patterns)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-12, atol=1e-12 * float(alone.abs().max()))


def test_the_data_pass_is_batched_and_order_free():
    net = tiny_net()
    xs = data(10, seed=7)
    whole = compute_patterns(net, xs)
    pieces = compute_patterns(net, [xs[7:], xs[:3], xs[3:7]])
    for name in whole.patterns:
        torch.testing.assert_close(pieces[name], whole[name], rtol=1e-12, atol=1e-12)
    # (input, label) pairs as a DataLoader gives
    pairs = compute_patterns(net, [(xs[:5], torch.zeros(5)), (xs[5:], torch.zeros(5))])
    torch.testing.assert_close(pairs["fc"], whole["fc"], rtol=1e-12, atol=1e-12)


def test_the_model_is_unchanged():
    net = tiny_net()
    net.train()
    net.pool.eval()  # a mix of flags
    before = snapshot(net)
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
             for name, m in net.named_modules()}
    patterns = compute_patterns(net, [data(8, seed=8)])
    assert_unchanged(net, before)
    for method in METHODS:
        relprop.explain(net, data(2, seed=9), target=1, method=method, patterns=patterns)
        assert_unchanged(net, before)
    assert net.training and not net.pool.training and net.bn1.training
    assert hooks == {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
                     for name, m in net.named_modules()}
    # computed in eval mode: the batch norm uses its running statistics, not the batch's
    torch.testing.assert_close(patterns["conv1"], compute_patterns(tiny_net().eval(), [data(8, seed=8)])["conv1"],
                               rtol=0, atol=0)


def test_missing_patterns_say_how_to_compute_them():
    net = tiny_net(seed=10)
    for method in METHODS:
        with pytest.raises(ValueError, match=r"compute_patterns.*relprop patterns MODEL --data"):
            relprop.explain(net, data(1, seed=1), method=method)
    kept, skipped, reason = applicable_methods(net, ["gradient", *METHODS])
    assert kept == ["gradient"] and skipped == list(METHODS) and "compute_patterns" in reason
    # given patterns, they are applicable
    kept, _, _ = applicable_methods(net, list(METHODS), {"patternnet": {"patterns": "x.pt"}})
    assert kept == ["patternnet"]


def test_registered_patterns_are_the_default():
    net = tiny_net(seed=11)
    patterns = compute_patterns(net, [data(8, seed=12)])
    register_patterns(net, patterns)
    x = data(2, seed=13)
    torch.testing.assert_close(relprop.explain(net, x, target=1, method="patternnet"),
                               relprop.explain(net, x, target=1, method="patternnet", patterns=patterns), rtol=0, atol=0)
    with torch.no_grad():  # changed weights: the registered patterns no longer fit
        net.fc.weight.mul_(2)
    with pytest.raises(ValueError, match="other weights"):
        relprop.explain(net, x, target=1, method="patternnet")
    register_patterns(net, None)
    with pytest.raises(ValueError, match="compute_patterns"):
        relprop.explain(net, x, target=1, method="patternnet")


# -- the file -------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    net = tiny_net()
    patterns = compute_patterns(net, [data(8, seed=14)], kind="linear", info={"data": "test"})
    path = patterns.save(tmp_path / "p.pt")
    loaded = Patterns.load(path)
    assert loaded.kind == "linear" and loaded.fingerprint == patterns.fingerprint and loaded.samples == 8
    assert loaded.digest == patterns.digest and loaded.info == {"data": "test"}
    for name in patterns.patterns:
        assert torch.equal(loaded[name], patterns[name])
    x = data(2, seed=15)
    for method in METHODS:
        torch.testing.assert_close(relprop.explain(net, x, target=2, method=method, patterns=str(path)),
                                   relprop.explain(net, x, target=2, method=method, patterns=patterns), rtol=0, atol=0)
    # float16 halves the file and keeps the patterns to float16 precision
    small = patterns.save(tmp_path / "half.pt", dtype=torch.float16)
    assert small.stat().st_size < path.stat().st_size
    half = Patterns.load(small)
    assert half["fc"].dtype == torch.float16
    torch.testing.assert_close(half["fc"].double(), patterns["fc"], rtol=1e-3, atol=1e-3 * float(patterns["fc"].abs().max()))


def test_patterns_of_another_model_are_refused(tmp_path):
    net = tiny_net()
    patterns = compute_patterns(net, [data(8, seed=16)])
    other = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(2, 3, 3, padding=1)), ("relu1", nn.ReLU()),
                                       ("flatten", nn.Flatten()), ("fc", nn.Linear(108, 5))])).to(F64).eval()
    for given in (patterns, str(patterns.save(tmp_path / "p.pt"))):
        with pytest.raises(ValueError, match=r"another model.*conv2.*which the model lacks") as info:
            relprop.explain(other, data(1, seed=1), method="patternnet", patterns=given)
        assert "fc linear [5, 108]" in str(info.value)
    # the same architecture with other weights
    with pytest.raises(ValueError, match="other weights"):
        relprop.explain(tiny_net(seed=17), data(1, seed=1), method="pattern-attribution", patterns=patterns)
    # a float32 copy of the same model is the same model
    relprop.explain(tiny_net().float(), data(1, seed=1).float(), method="patternnet", patterns=patterns)


def test_corrupt_files_are_refused_clearly(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(PatternsError, match="garbage.pt is not a readable relprop patterns file"):
        Patterns.load(garbage)
    with pytest.raises(ValueError, match="garbage.pt"):
        relprop.explain(tiny_net(), data(1, seed=1), method="patternnet", patterns=str(garbage))
    other = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(2)}, other)
    with pytest.raises(PatternsError, match="not a relprop patterns file"):
        Patterns.load(other)
    good = compute_patterns(tiny_net(), [data(4, seed=18)]).save(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(PatternsError, match="truncated.pt"):
        Patterns.load(truncated)
    blob = torch.load(good, weights_only=True)
    blob["patterns"]["fc"] = torch.zeros(3, 3)
    damaged = tmp_path / "damaged.pt"
    torch.save(blob, damaged)
    with pytest.raises(PatternsError, match="damaged"):
        Patterns.load(damaged)
    with pytest.raises(FileNotFoundError):
        Patterns.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="patterns.*must be"):
        relprop.explain(tiny_net(), data(1, seed=1), method="patternnet", patterns=3)


# -- what the methods refuse ----------------------------------------------------------------------------------
def test_other_activations_are_refused_and_the_shipped_vit_is_explained():
    net = MobileNet().eval()  # ReLU6, SiLU, Hardswish
    with pytest.raises(ValueError, match=r"patternnet is defined for networks of affine layers, ReLU.*ReLU6"):
        relprop.explain(net, torch.randn(1, 3, 16, 16), method="patternnet")
    vit, _ = relprop.load_model("shapes_vit")  # its shipped patterns (tests/test_pattern_transformers.py)
    r = relprop.explain(vit, torch.randn(1, 3, 64, 64), method="pattern-attribution")
    assert r.shape == (1, 3, 64, 64) and bool(r.isfinite().all())
    kept, skipped, reason = applicable_methods(vit, ["gradient", *METHODS])
    assert kept == ["gradient", *METHODS] and skipped == []


# -- the shipped models ---------------------------------------------------------------------------------------
SHIPPED = [("shapes_vgg", "shapes"), ("shapes_resnet", "shapes"), ("shapes_vit", "shapes"), ("nodules3d_vgg", "nodules3d")]


@pytest.mark.parametrize("name,dataset", SHIPPED)
def test_shipped_models_explain_with_their_shipped_patterns(name, dataset):
    patterns = shipped_patterns(name)
    assert patterns.info["data"] == dataset and patterns.info["split"] == "train" and patterns.samples >= 1000
    model, preprocess = relprop.load_model(name)
    if dataset == "shapes":
        from relprop.data.shapes import ShapesDataset

        x = torch.cat([preprocess(ShapesDataset("test", count=2)[i].image) for i in range(2)])
    else:
        from relprop.data.nodules3d import Nodules3DDataset

        x = torch.cat([preprocess(Nodules3DDataset("test", count=2)[i].volume) for i in range(2)])
    before = snapshot(model)
    for method in METHODS:
        r = relprop.explain(model, x, method=method)
        assert r.shape == x.shape and r.dtype == x.dtype and bool(torch.isfinite(r).all())
        assert (r.flatten(1).abs().amax(1) > 0).all()
    assert_unchanged(model, before)
    kept, _, _ = applicable_methods(model, list(METHODS))
    assert kept == list(METHODS)


def test_shipped_files_are_small():
    from relprop.patterns import SHIPPED_DIR

    for name, _ in SHIPPED:
        assert (SHIPPED_DIR / f"{name}.pt").stat().st_size < 600_000


# -- the command --------------------------------------------------------------------------------------------
def test_patterns_command_writes_the_training_split_patterns(tmp_path, capsys):
    from relprop.data.shapes import ShapesDataset
    from relprop.models.train_shapes import to_batch

    out = tmp_path / "sub" / "vgg.pt"
    code = main(["patterns", "shapes_vgg", "--data", "shapes", "--dataset-option", "count=6", "--batch-size", "4",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "patterns" in captured.err and "2/2" in captured.err  # the progress bar
    assert f"wrote {out}" in captured.out
    loaded = Patterns.load(out)
    assert loaded.samples == 6 and loaded.kind == "relu" and loaded.info["split"] == "train"
    # the training script's inputs: train split samples 0..5, normalised the same way
    model, _ = relprop.load_model("shapes_vgg")
    images, _ = ShapesDataset("train", count=6).arrays()
    expected = compute_patterns(model, [to_batch(images)])
    for name in expected.patterns:
        torch.testing.assert_close(loaded[name].double(), expected[name], rtol=1e-4,
                                   atol=1e-4 * float(expected[name].abs().max()))
    x = to_batch(images[:1])
    r = relprop.explain(model, x, method="patternnet", patterns=str(out))
    assert r.shape == x.shape and bool(torch.isfinite(r).all())


def test_patterns_command_errors(tmp_path, capsys):
    assert main(["patterns", "shapes_vgg", "--data", "no-such-data", "--out", str(tmp_path / "p.pt")]) == 2
    assert "no-such-data" in capsys.readouterr().err
    assert main(["patterns", "shapes_vgg", "--data", "shapes", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["patterns", "efficientnet_lite0", "--data", "shapes", "--dataset-option", "count=2",
                 "--out", str(tmp_path / "lite0.pt"), "--no-progress"]) == 2
    assert "ReLU6" in capsys.readouterr().err
    assert not (tmp_path / "lite0.pt").exists()
