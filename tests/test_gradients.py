"""Gradient baselines (gradient, input-x-gradient, integrated-gradients, smoothgrad, guided-backprop,
gradcam, guided-gradcam): each against plain autograd on the original model or a hand computation,
batch against per-sample calls, and against Captum where it is installed (optional)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import relprop
from relprop.attribution.gradients import integration_points
from model_init import randn, randomise_batch_norms

F64 = torch.float64
GRADIENT_METHODS = ["gradient", "input-x-gradient", "integrated-gradients", "smoothgrad", "guided-backprop",
                    "gradcam", "guided-gradcam"]


# -- models ----------------------------------------------------------------------------------------


def tiny(classes: int = 10, seed: int = 0, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """Conv-BN-act-maxpool-conv-act-global pool-linear on (B, 3, 8, 8), ReLU modules (not in place)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    )
    return randomise_batch_norms(net, seed).eval()


class FunctionalNet(nn.Module):
    """ReLUs only as functions (F.relu, torch.relu, Tensor.relu), a residual sum and a folded BN.
    ``run`` takes the three relus so that a reference can swap them for the guided one."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, classes)
        randomise_batch_norms(self, 3)
        self.eval()

    def run(self, x, relu_a, relu_b, relu_c):
        h = relu_a(self.bn1(self.conv1(x)))
        h = relu_b(self.conv2(h)) + h
        h = F.max_pool2d(h, 2)
        h = relu_c(self.conv3(h))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc2(relu_a(self.fc1(h)))

    def forward(self, x):
        return self.run(x, F.relu, torch.relu, lambda t: t.relu())


class SmoothNet(nn.Module):
    """Softplus and tanh only: smooth, so that the IG quadrature converges fast."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Softplus(), nn.Conv2d(6, 6, 3, stride=2),
                                  nn.Tanh(), nn.Flatten(), nn.Linear(6 * 3 * 3, 5))
        self.eval()

    def forward(self, x):
        return self.body(x)


class _RefGuided(torch.autograd.Function):
    """Reference guided rectifier, written out: forward clamp(0, upper), backward relu(grad) * active."""

    @staticmethod
    def forward(ctx, x, upper):
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > 0) & (x < ctx.upper)), None


def ref_guided(t):
    return _RefGuided.apply(t, float("inf"))


def plain_grad(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """d logit_target / dx with plain autograd on a copy of the original model in eval mode."""
    model = copy.deepcopy(model).eval()
    leaf = x.detach().clone().requires_grad_(True)
    logits = model(leaf)
    index = torch.as_tensor(target).view(-1, 1).expand(x.shape[0], 1)
    return torch.autograd.grad(logits.gather(1, index).sum(), leaf)[0]


def assert_close(got, expected, rtol=1e-4, scale=1e-5):
    torch.testing.assert_close(got, expected, rtol=rtol, atol=scale * float(expected.abs().max()) + 1e-12)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomise_batch_norms(torchvision.models.resnet18(weights=None, num_classes=10)).eval()


# -- gradient and input x gradient -------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny, FunctionalNet], ids=["modules", "functional"])
def test_gradient_equals_autograd_on_the_original_model(make):
    model = make()
    x = randn(3, 3, 8, 8, seed=1)
    for target in ([1, 4, 7], 2):
        assert_close(relprop.explain(model, x, target=target, method="gradient"), plain_grad(model, x, target))
    model64 = make().double()
    x64 = x.double()
    torch.testing.assert_close(relprop.explain(model64, x64, target=[1, 4, 7], method="gradient"),
                               plain_grad(model64, x64, [1, 4, 7]), rtol=1e-10, atol=1e-12)


def test_gradient_on_resnet18_equals_autograd(resnet18):
    x = randn(2, 3, 64, 64, seed=2)
    assert_close(relprop.explain(resnet18, x, target=[3, 5], method="gradient"), plain_grad(resnet18, x, [3, 5]))


def test_train_mode_model_is_explained_in_eval_mode_and_handed_back():
    model = tiny()
    expected = plain_grad(model, randn(2, 3, 8, 8, seed=4), 3)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = randn(2, 3, 8, 8, seed=4)
    for method in GRADIENT_METHODS:
        got = relprop.explain(model, x, target=3, method=method)
        assert got.shape == x.shape
        assert all(m.training for m in model.modules()), method
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), method
        assert all(p.grad is None for p in model.parameters()), method
    assert_close(relprop.explain(model, x, target=3, method="gradient"), expected)
    assert not x.requires_grad


def test_gradient_under_no_grad_and_with_a_grad_requiring_input():
    model = tiny()
    x = randn(2, 3, 8, 8, seed=5)
    expected = relprop.explain(model, x, target=1, method="gradient")
    with torch.no_grad():
        assert torch.equal(relprop.explain(model, x, target=1, method="gradient"), expected)
    leaf = x.clone().requires_grad_(True)
    assert torch.equal(relprop.explain(model, leaf, target=1, method="gradient"), expected)
    assert leaf.grad is None


def test_gradient_is_signed():
    grad = relprop.explain(tiny(), randn(2, 3, 8, 8, seed=6), target=0, method="gradient")
    assert (grad < 0).any() and (grad > 0).any()


def test_input_x_gradient_is_input_times_gradient():
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=7)
    torch.testing.assert_close(relprop.explain(model, x, target=[2, 5], method="input-x-gradient"),
                               x * relprop.explain(model, x, target=[2, 5], method="gradient"), rtol=0, atol=0)


# -- integrated gradients ----------------------------------------------------------------------------
def test_integration_points():
    for method in ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"):
        alphas, weights = integration_points(7, method)
        assert alphas.shape == weights.shape == (7,)
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(alphas.min()) >= 0 and float(alphas.max()) <= 1
        # exact for f(a) = a (and, except the left/right sums, midpoint and trapezoid also for constants)
        if method in ("riemann_middle", "riemann_trapezoid", "gausslegendre"):
            assert float((alphas * weights).sum()) == pytest.approx(0.5, abs=1e-12)
    assert integration_points(4, "riemann_right")[0].tolist() == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="simpson"):
        integration_points(4, "simpson")
    with pytest.raises(ValueError, match="steps"):
        integration_points(0)


@pytest.mark.parametrize("method,steps,rtol", [("gausslegendre", 64, 1e-8), ("riemann_trapezoid", 400, 1e-4),
                                               ("riemann_right", 2000, 5e-3)])
def test_integrated_gradients_completeness(method, steps, rtol):
    model = SmoothNet().double()
    x = randn(2, 3, 8, 8, dtype=F64, seed=8)
    baseline = 0.3 * randn(1, 3, 8, 8, dtype=F64, seed=9)  # broadcast over the batch
    target = [1, 3]
    ig = relprop.explain(model, x, target=target, method="integrated-gradients", steps=steps, baseline=baseline,
                         integration=method)
    with torch.no_grad():
        gap = (model(x) - model(baseline.expand_as(x))).gather(1, torch.tensor([[1], [3]])).view(-1)
    sums = ig.reshape(2, -1).sum(1)
    torch.testing.assert_close(sums, gap, rtol=rtol, atol=rtol * float(gap.abs().max()))
    assert (ig.reshape(2, -1).abs().sum(1) > 0).all()


def test_integrated_gradients_completeness_on_a_relu_net():
    model = FunctionalNet().double()
    x = randn(2, 3, 8, 8, dtype=F64, seed=10)
    ig = relprop.explain(model, x, target=[0, 6], method="integrated-gradients", steps=1000,
                         integration="riemann_trapezoid")
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x)))[[0, 1], [0, 6]]
    torch.testing.assert_close(ig.reshape(2, -1).sum(1), gap, rtol=5e-3, atol=5e-3 * float(gap.abs().max()))


def test_integrated_gradients_batched_over_steps_equals_a_loop():
    model, x = FunctionalNet(), randn(3, 3, 8, 8, seed=11)
    target, steps, baseline = [1, 2, 3], 6, -0.5
    alphas, weights = integration_points(steps, "riemann_right")
    expected = torch.zeros_like(x)
    for a, w in zip(alphas.tolist(), weights.tolist()):
        expected += w * relprop.explain(model, baseline + a * (x - baseline), target=target, method="gradient")
    expected *= x - baseline
    for chunk in (None, 4):
        got = relprop.explain(model, x, target=target, method="integrated-gradients", steps=steps,
                              baseline=baseline, internal_batch_size=chunk)
        assert_close(got, expected)


def test_integrated_gradients_target_none_is_the_prediction_at_x():
    model, x = tiny(), randn(3, 3, 8, 8, seed=12)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    torch.testing.assert_close(relprop.explain(model, x, method="integrated-gradients", steps=4),
                               relprop.explain(model, x, target=predicted, method="integrated-gradients", steps=4),
                               rtol=0, atol=0)


def test_integrated_gradients_bad_options():
    model, x = tiny(), randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="baseline"):
        relprop.explain(model, x, method="integrated-gradients", baseline=torch.zeros(2, 3, 7, 7))
    with pytest.raises(ValueError, match="simpson"):
        relprop.explain(model, x, method="integrated-gradients", integration="simpson")
    with pytest.raises(ValueError, match="internal_batch_size"):
        relprop.explain(model, x, method="integrated-gradients", internal_batch_size=0)
    with pytest.raises(ValueError, match="steps"):
        relprop.explain(model, x, method="integrated-gradients", steps=0)


# -- smoothgrad --------------------------------------------------------------------------------------
def test_smoothgrad_deterministic_and_seeded():
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=13)
    a = relprop.explain(model, x, target=1, method="smoothgrad", samples=4)
    assert torch.equal(a, relprop.explain(model, x, target=1, method="smoothgrad", samples=4))
    assert not torch.allclose(a, relprop.explain(model, x, target=1, method="smoothgrad", samples=4, seed=1))
    assert not torch.allclose(a, relprop.explain(model, x, target=1, method="gradient"))


def test_smoothgrad_without_noise_is_the_gradient():
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=14)
    grad = relprop.explain(model, x, target=[3, 4], method="gradient")
    signed = dict(noise_level=0.0, magnitude="signed")
    assert_close(relprop.explain(model, x, target=[3, 4], method="smoothgrad", samples=1, **signed), grad)
    assert_close(relprop.explain(model, x, target=[3, 4], method="smoothgrad", samples=5, **signed), grad)
    assert_close(relprop.explain(model, x, target=[3, 4], method="smoothgrad", samples=1, multiply_by_input=True,
                                 **signed), x * grad)
    # the paper's display (default): |mean gradient|; SmoothGrad-Squared: mean of squared gradients
    assert_close(relprop.explain(model, x, target=[3, 4], method="smoothgrad", samples=5, noise_level=0.0),
                 grad.abs())
    assert_close(relprop.explain(model, x, target=[3, 4], method="smoothgrad", samples=5, noise_level=0.0,
                                 magnitude="squared"), grad * grad)
    assert_close(relprop.explain(model, x, target=[3, 4], method="smoothgrad", samples=2, noise_level=0.0,
                                 magnitude="squared", multiply_by_input=True), (x * grad) ** 2)


def test_smoothgrad_defaults_follow_the_paper():
    """Smilkov et al. 2017: about 50 samples, noise 10-20% of the input range, absolute values shown."""
    from relprop.attribution.registry import get_method

    assert get_method("smoothgrad").display == "positive"
    options = get_method("smoothgrad").options()
    assert options["samples"] == 50 and 0.1 <= options["noise_level"] <= 0.2 and options["magnitude"] == "absolute"


def test_smoothgrad_equals_the_documented_noise():
    """Mean gradient at x + sigma * eps_k, eps from Generator(seed) in float64, sigma per sample."""
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=15)
    samples, level, seed = 3, 0.2, 7
    noise = torch.randn((samples, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=F64).float()
    sigma = level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    expected = sum(relprop.explain(model, x + sigma.view(-1, 1, 1, 1) * noise[k], target=[0, 9], method="gradient")
                   for k in range(samples)) / samples
    for chunk in (None, 2):
        got = relprop.explain(model, x, target=[0, 9], method="smoothgrad", samples=samples, noise_level=level,
                              seed=seed, internal_batch_size=chunk, magnitude="signed")
        assert_close(got, expected)
    got = relprop.explain(model, x, target=[0, 9], method="smoothgrad", samples=samples, noise_level=level,
                          seed=seed, multiply_by_input=True, magnitude="signed")
    assert_close(got, x * expected)
    assert_close(relprop.explain(model, x, target=[0, 9], method="smoothgrad", samples=samples, noise_level=level,
                                 seed=seed), expected.abs())


def test_smoothgrad_bad_options():
    model, x = tiny(), randn(2, 3, 8, 8)
    for options, word in (({"samples": 0}, "samples"), ({"noise_level": -1.0}, "noise_level"),
                          ({"internal_batch_size": 2.5}, "internal_batch_size"), ({"magnitude": "abs"}, "magnitude")):
        with pytest.raises(ValueError, match=word):
            relprop.explain(model, x, method="smoothgrad", **options)


# -- guided backprop ---------------------------------------------------------------------------------
def _reference_guided(model: FunctionalNet, x: torch.Tensor, target) -> torch.Tensor:
    model = copy.deepcopy(model).eval()
    leaf = x.clone().requires_grad_(True)
    logits = model.run(leaf, ref_guided, ref_guided, ref_guided)
    return torch.autograd.grad(logits.gather(1, torch.as_tensor(target).view(-1, 1)).sum(), leaf)[0]


def test_guided_backprop_reaches_functional_relus():
    model, x = FunctionalNet(), randn(3, 3, 8, 8, seed=16)
    target = [2, 5, 8]
    got = relprop.explain(model, x, target=target, method="guided-backprop")
    assert_close(got, _reference_guided(model, x, target))
    # ... and it is not the plain gradient (which is what module hooks would silently give here)
    assert not torch.allclose(got, relprop.explain(model, x, target=target, method="gradient"), atol=1e-6)


def test_guided_backprop_on_relu_modules_equals_reference():
    model, x = tiny(), randn(2, 3, 8, 8, seed=17)
    reference = copy.deepcopy(model)
    reference[2], reference[5] = _Lambda(ref_guided), _Lambda(ref_guided)
    leaf = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(reference(leaf)[:, 4].sum(), leaf)[0]
    assert_close(relprop.explain(model, x, target=4, method="guided-backprop"), expected)


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_guided_backprop_relu6_masks_both_ends():
    model = tiny(act=nn.ReLU6)
    with torch.no_grad():
        model[0].weight.mul_(6.0)  # drive some units past 6
    x = randn(2, 3, 8, 8, seed=18)
    with torch.no_grad():
        assert (model[:2](x) > 6).any()
    reference = copy.deepcopy(model)
    guided6 = _Lambda(lambda t: _RefGuided.apply(t, 6.0))
    reference[2], reference[5] = guided6, guided6
    leaf = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(reference(leaf)[:, 1].sum(), leaf)[0]
    assert_close(relprop.explain(model, x, target=1, method="guided-backprop"), expected)


def test_guided_backprop_keeps_other_activations():
    """SmoothNet has no rectifier: guided backprop is the gradient."""
    model, x = SmoothNet(), randn(2, 3, 8, 8, seed=19)
    torch.testing.assert_close(relprop.explain(model, x, target=1, method="guided-backprop"),
                               relprop.explain(model, x, target=1, method="gradient"), rtol=0, atol=0)


# -- grad-cam ----------------------------------------------------------------------------------------
def _hand_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target, relu=True, mode="bilinear"):
    """Grad-CAM from the activations and gradients of ``layer`` in the plain model (forward hook)."""
    model = copy.deepcopy(model).eval()
    layer = dict(model.named_modules())[layer]
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    logits = model(x)
    handle.remove()
    a = store["a"]
    g = torch.autograd.grad(logits.gather(1, torch.as_tensor(target).view(-1, 1)).sum(), a)[0]
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    cam = cam.clamp(min=0) if relu else cam
    align = False if mode == "bilinear" else None
    return F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=align).detach()


def test_gradcam_equals_hand_computation():
    model, x = tiny(), randn(3, 3, 8, 8, seed=20)
    target = [0, 4, 9]
    got = relprop.explain(model, x, target=target, method="gradcam")
    assert got.shape == x.shape and (got >= 0).all()
    cam = _hand_gradcam(model, "5", x, target)  # the input of the global average pool
    assert cam.abs().sum() > 0
    assert_close(got.sum(1, keepdim=True), cam)
    assert_close(got, (cam / 3).expand_as(x))  # each channel carries cam / C
    signed = relprop.explain(model, x, target=target, method="gradcam", relu=False)
    assert (signed < 0).any()
    assert_close(signed.sum(1, keepdim=True), _hand_gradcam(model, "5", x, target, relu=False))
    nearest = relprop.explain(model, x, target=target, method="gradcam", interpolation="nearest")
    assert_close(nearest.sum(1, keepdim=True), _hand_gradcam(model, "5", x, target, mode="nearest"))


def test_gradcam_on_functional_model_defaults_to_last_feature_map():
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=21)
    default = relprop.explain(model, x, target=[1, 2], method="gradcam")
    # the input of F.adaptive_avg_pool2d is the relu after conv3 (a method call, fx name "relu_1")
    names = [n.name for n in relprop.propagate.propagator_for(model).graph.nodes]
    pool = next(i for i, n in enumerate(names) if n.startswith("adaptive_avg_pool2d"))
    layer = names[pool - 1]
    torch.testing.assert_close(default, relprop.explain(model, x, target=[1, 2], method="gradcam", layer=layer),
                               rtol=0, atol=0)


def test_gradcam_resnet18_layers(resnet18):
    x = randn(2, 3, 64, 64, seed=22)
    default = relprop.explain(resnet18, x, target=[1, 2], method="gradcam")
    assert default.shape == x.shape and (default >= 0).all() and default.abs().sum() > 0
    torch.testing.assert_close(default, relprop.explain(resnet18, x, target=[1, 2], method="gradcam", layer="layer4"),
                               rtol=0, atol=0)
    assert_close(default.sum(1, keepdim=True), _hand_gradcam(resnet18, "layer4", x, [1, 2]))
    layer3 = relprop.explain(resnet18, x, target=[1, 2], method="gradcam", layer="layer3")
    assert layer3.shape == x.shape and (layer3 >= 0).all()
    assert_close(layer3.sum(1, keepdim=True), _hand_gradcam(resnet18, "layer3", x, [1, 2]))
    assert not torch.allclose(layer3, default)


def test_gradcam_bad_layers(resnet18):
    x = randn(1, 3, 64, 64)
    for method in ("gradcam", "guided-gradcam"):
        with pytest.raises(ValueError, match="no_such_layer"):
            relprop.explain(resnet18, x, method=method, layer="no_such_layer")
    with pytest.raises(ValueError, match="fc"):
        relprop.explain(resnet18, x, method="gradcam", layer="fc")  # no spatial dimensions
    with pytest.raises(ValueError, match="cubist"):
        relprop.explain(resnet18, x, method="gradcam", interpolation="cubist")


def test_guided_gradcam_is_guided_backprop_times_cam():
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=23)
    got = relprop.explain(model, x, target=[3, 4], method="guided-gradcam")
    guided = relprop.explain(model, x, target=[3, 4], method="guided-backprop")
    cam = relprop.explain(model, x, target=[3, 4], method="gradcam").sum(1, keepdim=True)
    assert_close(got, guided * cam)


# -- batch against per-sample calls, every new method ------------------------------------------------
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("make", [tiny, FunctionalNet], ids=["modules", "functional"])
def test_batch_equals_per_sample_calls(make, method):
    model, x = make(), randn(4, 3, 8, 8, seed=24)
    options = {"steps": 5} if method == "integrated-gradients" else {"samples": 3} if method == "smoothgrad" else {}
    targets = [3, 7, 0, 9]
    together = relprop.explain(model, x, target=targets, method=method, **options)
    assert together.shape == x.shape and torch.isfinite(together).all()
    for b, t in enumerate(targets):
        alone = relprop.explain(model, x[b:b + 1], target=t, method=method, **options)
        assert_close(together[b:b + 1], alone)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_resnet18_finite_maps_and_dtype(resnet18, method):
    options = {"steps": 4} if method == "integrated-gradients" else {"samples": 2} if method == "smoothgrad" else {}
    x = randn(1, 3, 64, 64, seed=25)
    relevance = relprop.explain(resnet18, x, method=method, **options)
    assert relevance.shape == x.shape and relevance.dtype == x.dtype and torch.isfinite(relevance).all()
    assert relevance.abs().sum() > 0


# -- captum cross-checks (optional) ------------------------------------------------------------------
def test_captum_saliency_and_input_x_gradient():
    captum_attr = pytest.importorskip("captum.attr")
    model, x = tiny(), randn(3, 3, 8, 8, seed=26)
    target = torch.tensor([1, 5, 8])
    assert_close(relprop.explain(model, x, target=target, method="gradient"),
                 captum_attr.Saliency(model).attribute(x, target=target, abs=False))
    assert_close(relprop.explain(model, x, target=target, method="input-x-gradient"),
                 captum_attr.InputXGradient(model).attribute(x, target=target))


@pytest.mark.parametrize("method", ["riemann_right", "riemann_trapezoid", "gausslegendre"])
def test_captum_integrated_gradients(method):
    captum_attr = pytest.importorskip("captum.attr")
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=27)
    target = torch.tensor([2, 6])
    baseline = 0.1 * randn(2, 3, 8, 8, seed=28)
    expected = captum_attr.IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=16,
                                                                method=method)
    got = relprop.explain(model, x, target=target, method="integrated-gradients", steps=16, baseline=baseline,
                          integration=method)
    if method == "riemann_trapezoid":
        # Captum 0.9 uses the trapezoid nodes linspace(0, 1, n) with weights 1/n (halved at the ends),
        # which sum to (n - 1)/n; relprop's weights 1/(n - 1) (halved at the ends) sum to 1.
        got = got * 15 / 16
    assert_close(got, expected)


def test_captum_guided_backprop():
    captum_attr = pytest.importorskip("captum.attr")
    model, x = tiny(), randn(3, 3, 8, 8, seed=29)
    target = torch.tensor([0, 3, 6])
    expected = captum_attr.GuidedBackprop(model).attribute(x, target=target)
    assert_close(relprop.explain(model, x, target=target, method="guided-backprop"), expected)


def test_captum_guided_backprop_misses_functional_relus():
    """Why relprop overrides activations in its graph: Captum's module hooks find no nn.ReLU here."""
    captum_attr = pytest.importorskip("captum.attr")
    model, x = FunctionalNet(), randn(2, 3, 8, 8, seed=30)
    target = torch.tensor([1, 2])
    captum_map = captum_attr.GuidedBackprop(model).attribute(x, target=target)
    assert_close(captum_map, relprop.explain(model, x, target=target, method="gradient"))
    assert_close(relprop.explain(model, x, target=target, method="guided-backprop"),
                 _reference_guided(model, x, target))


def test_captum_gradcam_on_resnet18(resnet18):
    captum_attr = pytest.importorskip("captum.attr")
    x = randn(2, 3, 64, 64, seed=31)
    target = torch.tensor([4, 7])
    for name, layer in (("layer4", resnet18.layer4),):
        cam = captum_attr.LayerGradCam(resnet18, layer).attribute(x, target=target, relu_attributions=True)
        expected = captum_attr.LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode="bilinear")
        got = relprop.explain(resnet18, x, target=target, method="gradcam", layer=name)
        assert_close(got.sum(1, keepdim=True), expected)


def test_captum_guided_gradcam():
    captum_attr = pytest.importorskip("captum.attr")
    model, x = tiny(), randn(2, 3, 8, 8, seed=32)
    target = torch.tensor([2, 8])
    expected = captum_attr.GuidedGradCam(model, model[5]).attribute(x, target=target, interpolate_mode="nearest")
    got = relprop.explain(model, x, target=target, method="guided-gradcam", layer="5", interpolation="nearest")
    assert_close(got, expected)
