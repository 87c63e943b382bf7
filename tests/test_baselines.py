"""Baselines of the relevance-propagation papers: Grad-CAM++, Relevance-CAM, DeepLIFT (rescale) and
FullGrad. Each against its reference implementation or a defining identity, batch against per-sample
calls, and on the shipped models (shapes_vgg, shapes_resnet, efficientnet_lite0)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import relprop
from relprop.composite import Composite, by_type
from relprop.rules import Epsilon
from relprop.attribution.cam import gradcam_plus_plus_map, relevance_cam_map
from relprop.attribution.deeplift import deeplift_reference
from relprop.attribution.fullgrad import fullgrad_parts, postprocess
from model_init import randn, randomise_batch_norms

F64 = torch.float64
NEW_METHODS = ["gradcam-plus-plus", "relevance-cam", "deeplift", "fullgrad"]




def cnn(classes: int = 10, seed: int = 0, bias: bool = True, maxpool: bool = True, batchnorm: bool = True) -> nn.Module:
    """Conv-(BN)-ReLU-(maxpool)-conv-ReLU-global avg pool-linear on (B, 3, 8, 8)."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1, bias=bias)]
    layers += [nn.BatchNorm2d(6)] if batchnorm else []
    layers += [nn.ReLU()] + ([nn.MaxPool2d(2)] if maxpool else [])
    layers += [nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(8, classes, bias=bias)]
    return randomise_batch_norms(nn.Sequential(*layers), seed).eval()


def assert_close(got, expected, rtol=1e-5, scale=1e-5):
    torch.testing.assert_close(got, expected, rtol=rtol, atol=scale * float(expected.abs().max()) + 1e-12)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomise_batch_norms(torchvision.models.resnet18(weights=None, num_classes=10)).eval()


@pytest.fixture(scope="module")
def shipped():
    return {name: relprop.load_model(name)[0] for name in ("shapes_vgg", "shapes_resnet", "efficientnet_lite0")}


# -- grad-cam++ ------------------------------------------------------------------------------------
def _grad_cam_pp_reference(model, layer, x, targets):
    """pytorch-grad-cam's GradCAMPlusPlus: its final (min-max normalised, resized) map and its raw
    weighted sum ``sum_k w_k A_k`` at the layer's resolution."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = pgc.GradCAMPlusPlus(model=model, target_layers=[layer])
    wanted = [ClassifierOutputTarget(t) for t in targets]
    final = cam(input_tensor=x, targets=wanted)
    activations = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy()
    raw = cam.get_cam_image(x, layer, wanted, activations, grads)
    cam.activations_and_grads.release()
    return torch.from_numpy(final), torch.from_numpy(raw)


def _minmax(cam):
    flat = cam.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (cam.dim() - 1))
    cam = cam - low
    return cam / (1e-7 + cam.flatten(1).max(dim=1).values.view(-1, *[1] * (cam.dim() - 1)))


def test_gradcam_plus_plus_equals_pytorch_grad_cam_on_a_small_cnn():
    model = cnn(maxpool=False)  # the default layer (the last ReLU) keeps the input resolution
    x = randn(3, 3, 8, 8, seed=1)
    targets = [2, 5, 7]
    final, raw = _grad_cam_pp_reference(model, model[4], x, targets)
    ours, _ = gradcam_plus_plus_map(model, x, targets)
    assert_close(ours[:, 0], raw.float())
    explained = relprop.explain(model, x, targets, method="gradcam-plus-plus")
    assert_close(_minmax(explained.sum(dim=1)), final.float())


def test_gradcam_plus_plus_equals_pytorch_grad_cam_on_resnet18(resnet18):
    x = randn(2, 3, 64, 64, seed=2)
    targets = [1, 4]
    _, raw = _grad_cam_pp_reference(resnet18, resnet18.layer4[-1], x, targets)
    ours, _ = gradcam_plus_plus_map(resnet18, x, targets)
    assert_close(ours[:, 0], raw.float())


def test_gradcam_plus_plus_closed_form_on_an_exp_linear_score():
    """For a score linear in the feature map, alpha = 1 / (2 + sum_ab A_ab g) per channel (g constant)."""
    model = cnn(maxpool=False).double()
    x = randn(2, 3, 8, 8, seed=3, dtype=F64)
    with torch.no_grad():
        features = model[:5](x)
    weight = model[7].weight[4].detach().view(1, -1, 1, 1) / 64  # dS/dA: the avg pool spreads each weight
    alpha = 1 / (2 + features.sum(dim=(2, 3), keepdim=True) * weight + 1e-6 / weight ** 2)
    expected = ((alpha * weight.clamp(min=0) * 64) * features).sum(dim=1, keepdim=True)
    ours, _ = gradcam_plus_plus_map(model, x, 4)
    assert_close(ours, expected, scale=1e-10)


class _SignedFeatures(torch.nn.Module):
    """A 1 x 1 convolution without ReLU (signed features ``A = x``), average pooling and a linear head:
    ``g = dS/dA = w_t / (H W)``, so the target's alpha is ``1 / (2 + sum A g)``, with a pole where the
    features sum to ``-2 / g``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(1, 1, 1, bias=False)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([[16.0], [-1.0]]))  # g = 1 for class 0 on 4 x 4 maps

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def test_gradcam_plus_plus_reports_the_pole_of_alpha_on_signed_features():
    """On signed features ``2 + S g`` can cancel; near that pole float32 rounding of ``S`` moves alpha
    (here by ~1e-2 of itself), which Grad-CAM++ reports once per model and float type; features after a
    ReLU (``2 + S g >= 2``), float64 and a well-conditioned input stay silent."""
    import warnings

    x = torch.full((1, 1, 4, 4), -0.125)
    x[0, 0, 0, 0] += 4e-6  # S = -2 + 4e-6, 2 + S g = 4e-6: gain (2 + sum |A|) / 4e-6 = 1e6
    model = _SignedFeatures().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relprop.explain(model, torch.full((1, 1, 4, 4), 0.5), target=0, method="gradcam-plus-plus")
        relprop.explain(model.double(), x.double(), target=0, method="gradcam-plus-plus")
    model = _SignedFeatures().eval()
    with pytest.warns(RuntimeWarning, match=r"Grad-CAM\+\+ at 'features'.*2 \+ S g.*float32"):
        relprop.explain(model, x, target=0, method="gradcam-plus-plus")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relprop.explain(model, x, target=0, method="gradcam-plus-plus")  # reported already
        relu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        relprop.explain(relu, randn(2, 3, 8, 8, seed=5), target=0, method="gradcam-plus-plus")


# -- relevance-cam ---------------------------------------------------------------------------------
def _recorded(model, x, target, layer):
    _, recorded = relprop.Explainer(model, method="lrp-alpha1beta0").explain(x, target, record=[layer])
    return recorded[layer]


def test_relevance_cam_is_the_cam_of_recorded_lrp_relevance():
    model = cnn().double()
    x = randn(2, 3, 8, 8, seed=4, dtype=F64)
    layer, targets = "5", [3, 8]
    features = model[:6](x).detach()
    relevance = _recorded(model, x, targets, layer)
    weights = relevance.mean(dim=(2, 3), keepdim=True)
    ours, _ = relevance_cam_map(model, x, targets, layer=layer, initial="logit")
    assert_close(ours, (weights * features).sum(dim=1, keepdim=True), scale=1e-10)
    # the authors' initial relevance (1 at the target, -1/C elsewhere) by linearity of z+ propagation
    logits = model(x).detach()
    classes = logits.shape[1]
    mixed = torch.zeros_like(relevance)
    for c in range(classes):
        per_class = _recorded(model, x, c, layer) / logits[:, c].view(-1, 1, 1, 1)
        coefficient = torch.tensor([1.0 if c == t else -1.0 / classes for t in targets], dtype=F64)
        mixed += coefficient.view(-1, 1, 1, 1) * per_class
    ours, _ = relevance_cam_map(model, x, targets, layer=layer)
    expected = (mixed.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True)
    assert_close(ours, expected, scale=1e-9)
    upsampled = relprop.explain(model, x, targets, method="relevance-cam", layer=layer, relu=False)
    assert_close(upsampled.sum(dim=1, keepdim=True),
                 torch.nn.functional.interpolate(expected, size=(8, 8), mode="bilinear", align_corners=False),
                 scale=1e-9)


def test_relevance_cam_default_layer_is_gradcams(resnet18):
    x = randn(1, 3, 64, 64, seed=5)
    default = relprop.explain(resnet18, x, 2, method="relevance-cam", relu=False)
    named = relprop.explain(resnet18, x, 2, method="relevance-cam", relu=False, layer="layer4")
    assert_close(default, named)


# -- deeplift --------------------------------------------------------------------------------------
def test_deeplift_zero_reference_is_lrp_on_a_bias_free_relu_net():
    """Ancona et al. 2018: zero reference, no biases, ReLU: DeepLIFT = LRP-0 = LRP-epsilon (epsilon -> 0)
    = gradient x input (max pool included: winner and gradient agree)."""
    model = cnn(bias=False, batchnorm=False).double()
    x = randn(3, 3, 8, 8, seed=6, dtype=F64)
    targets = [1, 6, 9]
    ours = relprop.explain(model, x, targets, method="deeplift")
    epsilon = Composite([(by_type("conv", "linear"), Epsilon(1e-12))], norm_epsilon=0.0)
    assert_close(ours, relprop.explain(model, x, targets, method=epsilon), scale=1e-10)
    # the registered lrp-epsilon also stabilises pooling denominators (1e-6): equal to about 1e-4
    assert_close(ours, relprop.explain(model, x, targets, method="lrp-epsilon", epsilon=1e-12), scale=1e-4)
    assert_close(ours, relprop.explain(model, x, targets, method="lrp-z"), scale=1e-10)
    assert_close(ours, relprop.explain(model, x, targets, method="input-x-gradient"), scale=1e-10)


@pytest.mark.parametrize("reference", ["blur", "mean", "tensor"])
def test_deeplift_summation_to_delta(reference):
    model = cnn(maxpool=False).double()  # biases and a folded batch norm
    x = randn(3, 3, 8, 8, seed=7, dtype=F64)
    options = {"baseline": randn(1, 3, 8, 8, seed=8, dtype=F64)} if reference == "tensor" else {"reference": reference}
    targets = [0, 4, 8]
    ours = relprop.explain(model, x, targets, method="deeplift", **options)
    x0 = deeplift_reference(x, **options) if reference != "tensor" else options["baseline"].expand_as(x)
    with torch.no_grad():
        delta = (model(x) - model(x0))[torch.arange(3), targets]
    torch.testing.assert_close(ours.sum(dim=(1, 2, 3)), delta, rtol=1e-10, atol=1e-10)
    assert (x0 != 0).any()


def test_deeplift_references():
    x = randn(2, 3, 8, 8, seed=9)
    assert torch.equal(deeplift_reference(x), torch.zeros_like(x))
    mean = deeplift_reference(x, "mean")
    assert_close(mean[:, :, 3, 5], x.mean(dim=(2, 3)))
    blur = deeplift_reference(x, "blur", blur_sigma=1.0)
    assert_close(blur.mean(dim=(2, 3)), x.mean(dim=(2, 3)), rtol=0.3, scale=0.3)  # smoothing keeps the level
    assert blur.std() < x.std()
    assert torch.equal(deeplift_reference(x, "blur", blur_sigma=0.0), x)
    with pytest.raises(ValueError, match="broadcast"):
        deeplift_reference(x, baseline=torch.zeros(5))


@pytest.mark.parametrize("reference", ["zero", "tensor"])
def test_deeplift_equals_captum(reference):
    captum_attr = pytest.importorskip("captum.attr")
    model = cnn(maxpool=False)
    x = randn(3, 3, 8, 8, seed=10)
    baseline = randn(1, 3, 8, 8, seed=11) * 0.5 if reference == "tensor" else torch.zeros(1, 3, 8, 8)
    targets = [2, 3, 5]
    expected = captum_attr.DeepLift(model).attribute(x, baselines=baseline.expand_as(x), target=targets)
    ours = relprop.explain(model, x, targets, method="deeplift", baseline=baseline)
    assert_close(ours, expected.detach())


# -- fullgrad --------------------------------------------------------------------------------------
def test_fullgrad_completeness_on_a_relu_net_with_biases():
    """Full-gradient decomposition: sum(x * df/dx) + sum over biases of b * df/db = f(x)."""
    model = cnn().double()  # conv biases, a batch norm folded into them, max pool, dense bias
    x = randn(3, 3, 8, 8, seed=12, dtype=F64)
    targets = [0, 5, 9]
    input_part, parts, indices = fullgrad_parts(model, x, targets)
    assert len(parts) == 3 and indices.tolist() == targets
    total = input_part.sum(dim=(1, 2, 3)) + sum(p.flatten(1).sum(dim=1) for p in parts.values())
    with torch.no_grad():
        logits = model(x)[torch.arange(3), targets]
    torch.testing.assert_close(total, logits, rtol=1e-10, atol=1e-10)
    assert input_part.abs().sum() > 0 and all(p.abs().sum() > 0 for p in parts.values())


def test_fullgrad_equals_the_authors_saliency_on_the_original_model():
    """The authors' saliency with plain autograd: batch-norm bias-gradient maps at full and half
    resolution (the convolutions have no bias, as in ResNets; the dense bias stays out of the map)."""
    torch.manual_seed(13)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model = randomise_batch_norms(model, 13).eval().double()
    x = randn(2, 3, 8, 8, seed=14, dtype=F64)
    targets = [3, 6]
    leaf = x.clone().requires_grad_(True)
    bn1 = model[:2](leaf)
    bn2 = model[2:6](bn1)
    logits = model[6:](bn2)
    grads = torch.autograd.grad(logits[torch.arange(2), targets].sum(), [leaf, bn1, bn2])
    expected = postprocess(grads[0] * x).sum(dim=1, keepdim=True)
    for bn, grad in zip([model[1], model[5]], grads[1:]):
        bias = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        part = postprocess(grad * bias.view(1, -1, 1, 1))
        part = torch.nn.functional.interpolate(part, size=(8, 8), mode="bilinear", align_corners=True)
        expected = expected + part.sum(dim=1, keepdim=True)
    ours = relprop.explain(model, x, targets, method="fullgrad")
    assert_close(ours.sum(dim=1, keepdim=True), expected, scale=1e-10)


# -- every new method ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", NEW_METHODS)
def test_batch_equals_per_sample_calls(method):
    model, x = cnn(), randn(3, 3, 8, 8, seed=24)
    targets = [3, 7, 0]
    together = relprop.explain(model, x, target=targets, method=method)
    assert together.shape == x.shape and torch.isfinite(together).all()
    for b, t in enumerate(targets):
        alone = relprop.explain(model, x[b:b + 1], target=t, method=method)
        assert_close(together[b:b + 1], alone, rtol=1e-4)


@pytest.mark.parametrize("method", NEW_METHODS)
@pytest.mark.parametrize("name", ["shapes_vgg", "shapes_resnet", "efficientnet_lite0"])
def test_shipped_models(shipped, name, method):
    x = randn(1, 3, 64, 64, seed=25)
    relevance = relprop.explain(shipped[name], x, method=method)
    assert relevance.shape == x.shape and relevance.dtype == x.dtype and torch.isfinite(relevance).all()
