"""Incremental evaluation of perturbation curves (relprop.metrics.incremental): the logits of every
step equal a plain forward pass, and region_perturbation gives the same curves either way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relprop.metrics import blurred_insertion, region_perturbation, rise_deletion
from relprop.metrics.incremental import IncrementalForward


class Residual(nn.Module):
    """Strided, dilated, grouped and padded convolutions, batch norm, a residual sum, functional
    activations (one in place) and a scalar multiply: every windowed node kind."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.c = nn.Conv2d(8, 16, (3, 1), stride=2, padding=(1, 0))
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.signed_pool = nn.MaxPool2d(3, stride=1, padding=1)  # pads signed values: -inf, not 0
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(F.relu(self.bn(self.stem(x)), inplace=True))
        z = torch.sigmoid(self.b(F.silu(self.a(y)))) * 2.0 + y
        z = self.c(z) - self.down(y)
        z = self.avg(torch.relu(z)) - self.signed_pool(z)
        return self.head(z.mean(dim=(2, 3)))


class Bottleneck(nn.Module):
    """A resnet-like stem and bottleneck: convolutions without bias, each followed by a batch norm (one
    without affine parameters), a strided 3 x 3 convolution, a strided 1 x 1 shortcut and a residual
    sum; the windows of every convolution are computed with its batch norm folded in."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        self.conv1, self.bn1 = nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4, affine=False)
        self.conv3, self.bn3 = nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.down(x)
        return self.head(self.relu(out).mean(dim=(2, 3)))


class Shared(nn.Module):
    """Maps that share storage (an identity and an eval-mode dropout return their input), chains of
    1 x 1 convolutions and element-wise nodes (windows handed over without a kept map), and sums of
    maps changed in windows of different sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.same, self.drop = nn.Identity(), nn.Dropout()
        self.p, self.q = nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 1, bias=False)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        s = self.same(y)
        z = self.q(torch.tanh(self.p(F.relu(self.drop(s)))))
        w = self.b(y) + z + s
        w = w + self.p(w)
        return self.head(w.mean(dim=(2, 3)))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # ceil: in full
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4))


def randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    return model.double().eval()


@pytest.mark.parametrize("make, windowed", [(Residual, 17), (Bottleneck, 16), (Shared, 12),
                                             (small_cnn, 5)])  # small: stops at ceil_mode
def test_every_step_equals_a_plain_forward_pass(make, windowed):
    model = randomised(make())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 37, 45, generator=gen, dtype=torch.float64)  # odd, non-square sizes
    inc = IncrementalForward(model, (6, 6), max_fraction=1.0)  # every node that can be, windowed
    with torch.no_grad():
        torch.testing.assert_close(inc.reset(x.clone()), model(x), rtol=1e-12, atol=1e-12)
    assert inc.n_windowed == windowed  # the plan is made on the first pass
    state = x.clone()
    for step in range(12):
        boxes = []
        for i in range(3):
            if (step + i) % 4 == 0:
                boxes.append(None)  # this sample does not change
                continue
            r = int(torch.randint(-3, 37, (), generator=gen))  # boxes at and across the borders
            c = int(torch.randint(-3, 45, (), generator=gen))
            box = (max(r, 0), min(r + 6, 37), max(c, 0), min(c + 6, 45))
            state[i, :, box[0]:box[1], box[2]:box[3]] = torch.randn(3, box[1] - box[0], box[3] - box[2],
                                                                    generator=gen, dtype=torch.float64)
            boxes.append(box)
        with torch.no_grad():
            torch.testing.assert_close(inc.step(state, boxes), model(state), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("max_fraction", [0.05, 0.3])
def test_nodes_computed_in_full_fold_batch_norms_and_reuse_fresh_maps(max_fraction):
    # the bottleneck (0.05: everything) is computed in full: its convolutions with their batch norms
    # folded in, its ReLUs and residual sum overwriting fresh maps; kept maps stay untouched
    model = randomised(Bottleneck())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 40, 36, generator=gen, dtype=torch.float64)
    inc = IncrementalForward(model, (4, 4), max_fraction=max_fraction)
    with torch.no_grad():
        torch.testing.assert_close(inc.reset(x.clone()), model(x), rtol=1e-12, atol=1e-12)
        assert any(n not in inc.windowed for n in inc._absorbed) and inc._in_place
        assert all(n not in inc.windowed for n in inc._in_place)
        for step in range(6):
            r, c = 7 * step % 37, 11 * step % 33
            x[step % 2, :, r:r + 4, c:c + 4] = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
            boxes = [None, None]
            boxes[step % 2] = (r, min(r + 4, 40), c, min(c + 4, 36))
            torch.testing.assert_close(inc.step(x, boxes), model(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(inc.reset(x.clone()), model(x), rtol=1e-12, atol=1e-12)  # a second reset


class ScaledConv(nn.Conv2d):
    """A convolution whose forward changes its weight: it must be called, not replaced by F.conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, 2.0 * self.weight, self.bias, self.stride, self.padding)


def test_nodes_computed_in_full_call_convolution_subclasses_and_hooked_modules():
    model = randomised(nn.Sequential(ScaledConv(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                                     nn.Linear(4 * 10 * 10, 3)))
    model[3].register_forward_hook(lambda module, args, out: out * 3.0)
    inc = IncrementalForward(model, (2, 2), max_fraction=0.01)  # everything in full
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(inc.reset(x.clone()), model(x), rtol=1e-12, atol=1e-12)
        x[1, :, 2:4, 2:4] = 0.0
        torch.testing.assert_close(inc.step(x, [None, (2, 4, 2, 4)]), model(x), rtol=1e-10, atol=1e-10)


class Viewed(nn.Module):
    """A head that views the last windowed map and the input (possible in their usual layout only)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.b(F.relu(self.a(x)))
        return self.head(z.view(z.shape[0], -1)) + x.view(x.shape[0], -1).sum(1, keepdim=True)


@pytest.mark.parametrize("max_fraction, windowed", [(0.5, 3), (0.2, 2)])  # 0.2: b computed in full
def test_nodes_computed_in_full_get_maps_in_the_usual_layout(max_fraction, windowed):
    model = randomised(Viewed())
    inc = IncrementalForward(model, (2, 2), max_fraction=max_fraction)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(inc.reset(x.clone()), model(x), rtol=1e-12, atol=1e-12)
        assert inc.n_windowed == windowed
        x[1, :, 3:5, 7:9] = 0.5
        torch.testing.assert_close(inc.step(x, [None, (3, 5, 7, 9)]), model(x), rtol=1e-10, atol=1e-10)


def test_adaptive_pooling_takes_channels_last_maps_and_its_users_get_the_usual_layout():
    model = randomised(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                     nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(36, 3)))
    inc = IncrementalForward(model, (2, 2), max_fraction=0.5)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(inc.reset(x.clone()), model(x), rtol=1e-12, atol=1e-12)
        assert inc.n_windowed == 3
        x[0, :, 5:7, 1:3] = -1.0
        torch.testing.assert_close(inc.step(x, [(5, 7, 1, 3), None]), model(x), rtol=1e-10, atol=1e-10)


def test_kept_maps_have_their_own_storage():
    model = randomised(Shared())
    inc = IncrementalForward(model, (4, 4), max_fraction=1.0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    inc.reset(x)
    kept = [v for n, v in inc.values.items() if n in inc.windowed and n not in inc.transient]
    assert len(kept) > 2
    assert len({v.untyped_storage().data_ptr() for v in kept + [x]}) == len(kept) + 1


def test_in_place_flags_are_restored_and_model_untouched():
    model = randomised(small_cnn())
    relu = model[1]
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    inc = IncrementalForward(model, (4, 4))
    inc.reset(x)
    inc.step(x, [None, (0, 4, 0, 4)])
    assert relu.inplace is True


def test_a_model_that_flattens_first_has_no_windowed_node():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).double().eval()
    inc = IncrementalForward(model, (2, 2))
    inc.reset(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert inc.n_windowed == 0


def test_step_before_reset_and_wrong_box_count_raise():
    inc = IncrementalForward(randomised(small_cnn()), (2, 2))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="reset"):
        inc.step(x, [None, None])
    inc.reset(x)
    with pytest.raises(ValueError, match="2 boxes for a batch of 3|boxes"):
        inc.step(torch.randn(3, 3, 16, 16, dtype=torch.float64), [None, None])


@pytest.mark.parametrize("options", [
    dict(removal="min", order="morf"),
    dict(removal="mean", order="lerf", restrict="negative"),
    dict(removal="blur", order="random", seed=[3, 4, 5, 6]),
    dict(removal="noise", order="morf", restrict="positive", score="softmax"),
    dict(removal=0.5, order="lerf", region_score="mean"),
])
@pytest.mark.parametrize("with_targets", [True, False])
def test_region_perturbation_curves_agree_with_batched_passes(options, with_targets):
    model = randomised(Residual())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 72, 64, generator=gen, dtype=torch.float64)
    maps = torch.randn(4, 72, 64, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3]) if with_targets else None
    # counts must increase strictly; equal steps still occur where restrict caps them
    kw = dict(counts=[0, 1, 2, 3, 4, 5, 6, 8], patch_size=5, internal_batch_size=3, **options)
    fast = region_perturbation(model, x, maps, targets, incremental=True, **kw)
    plain = region_perturbation(model, x, maps, targets, incremental=False, **kw)
    torch.testing.assert_close(fast.scores, plain.scores, rtol=1e-10, atol=1e-10)
    assert torch.equal(fast.correct, plain.correct)
    assert torch.equal(fast.targets, plain.targets)
    assert torch.equal(fast.n_perturbed, plain.n_perturbed)
    assert (fast.predicted is None) == (plain.predicted is None)
    if plain.predicted is not None:
        assert torch.equal(fast.predicted, plain.predicted)


def test_automatic_choice_gives_the_same_curves():
    model = randomised(small_cnn())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    maps = torch.randn(2, 32, 32, dtype=torch.float64)
    for kw in (dict(patch_size=4, counts=range(10)), dict(patch_size=1, counts=[0, 100, 500])):
        auto = region_perturbation(model, x, maps, None, **kw)
        plain = region_perturbation(model, x, maps, None, incremental=False, **kw)
        torch.testing.assert_close(auto.scores, plain.scores, rtol=1e-10, atol=1e-10)
    ins = blurred_insertion(model, x, maps, None, patch_size=4, fractions=[0.0, 1 / 64, 2 / 64])
    ref = blurred_insertion(model, x, maps, None, patch_size=4, fractions=[0.0, 1 / 64, 2 / 64],
                            incremental=False)
    torch.testing.assert_close(ins.scores, ref.scores, rtol=1e-10, atol=1e-10)
    assert torch.equal(ins.predicted, ref.predicted)


def test_incremental_true_explains_why_it_is_impossible():
    model = randomised(small_cnn())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    maps = torch.randn(2, 32, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="shuffling"):
        region_perturbation(model, x, maps, None, counts=range(4), patch_size=4, removal="shuffle",
                            incremental=True)
    with pytest.raises(ValueError, match="not an nn.Module"):
        region_perturbation(lambda t: model(t), x, maps, None, counts=range(4), patch_size=4,
                            incremental=True)
    with pytest.raises(ValueError, match="reaches more than 90%"):
        rise_deletion(model, x, maps, None, step=300, incremental=True)

    class Branchy(nn.Module):  # data-dependent control flow cannot be traced
        def __init__(self) -> None:
            super().__init__()
            self.inner = small_cnn()

        def forward(self, t):
            return self.inner(t) if t.sum() > 0 else -self.inner(t)

    branchy = randomised(Branchy())
    with pytest.raises(ValueError, match="cannot be traced"):
        region_perturbation(branchy, x, maps, None, counts=range(4), patch_size=4, incremental=True)
    auto = region_perturbation(branchy, x, maps, None, counts=range(4), patch_size=4)  # falls back
    plain = region_perturbation(branchy, x, maps, None, counts=range(4), patch_size=4, incremental=False)
    torch.testing.assert_close(auto.scores, plain.scores)


@pytest.mark.parametrize("max_fraction", [0.1, 0.5, 1.0])
def test_fully_reached_nodes_follow_the_receptive_field(max_fraction):
    # 8 x 8 input, 2 x 2 change: conv 3x3 reaches 4 of 8, the strided conv 3 of 4, the last conv 5 -> all 4
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 2)).double()
    inc = IncrementalForward(model.eval(), (2, 2), max_fraction=max_fraction)
    with pytest.raises(RuntimeError, match="reset"):
        inc.fully_reached()
    inc.reset(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert [n.target for n in inc.fully_reached()] == ["4", "5", "6"]  # independent of max_fraction
    assert inc.n_windowed == {0.1: 0, 0.5: 2, 1.0: 5}[max_fraction]  # 3 x 3 of 4 x 4 > 0.5


def test_automatic_choice_is_batched_off_the_cpu_and_incremental_on_it(monkeypatch):
    from relprop.metrics import perturbation
    from relprop.metrics.perturbation import _incremental_evaluator

    model = randomised(small_cnn())
    rank = torch.arange(16 * 16).view(1, 16, 16)
    k = torch.tensor([[0, 4, 8]])
    steps = torch.arange(3)
    on_cpu = _incremental_evaluator(model, torch.zeros(1, 3, 16, 16, dtype=torch.float64), rank, k, steps,
                                    None, False)
    assert isinstance(on_cpu, IncrementalForward)
    # a "meta" tensor stands in for a GPU: the automatic choice looks at the device before tracing
    built = []
    monkeypatch.setattr(perturbation, "IncrementalForward", lambda *a, **kw: built.append(a))
    assert _incremental_evaluator(model, torch.zeros(1, 3, 16, 16, device="meta"), rank, k, steps,
                                  None, False) is None
    assert built == []
