"""Output selectors and torchvision's segmentation models.

* Conservation: with LRP-0 (``lrp-z``), every bias and batch-norm shift zero, the input relevance
  of ``Output("out", Region(c, mask))`` sums to the class-c logits inside the mask, on FCN,
  DeepLabV3 (ASPP with its pooling branch) and LR-ASPP (sigmoid-gated products, Hardswish) in
  float64 with random weights; bilinear resizing conserves on its own.
* A batch equals its samples one by one; a class index, a full-image region and a linear callable
  agree; the model is never changed.
* Every registered method runs on FCN with a region target, or refuses it with a ValueError that
  says why; bad selectors are refused naming the problem. The paper variants of SGLRP and CLRP
  start from their per-pixel contrast over the class axis.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import segmentation

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.targets import Output, Region
from engine_checks import CHEAP_OPTIONS, make_conservative, randn
from misuse.model_state import assert_unchanged, snapshot
from relprop.attribution.registry import get_method

F64 = torch.float64
CLASSES = 5
#: (builder, input side, batch): LR-ASPP's depthwise float64 convolutions are slow on a CPU
SEGMENTERS = [("fcn_resnet50", 64, 2), ("deeplabv3_resnet50", 64, 2), ("lraspp_mobilenet_v3_large", 32, 1)]


def build(name: str, aux_loss: bool = True) -> nn.Module:
    """A random-init torchvision segmentation model (no download)."""
    torch.manual_seed(0)
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": CLASSES}
    if not name.startswith("lraspp"):
        kwargs["aux_loss"] = aux_loss
    return getattr(segmentation, name)(**kwargs).eval()


def box(side: int, batch: int | None = None) -> torch.Tensor:
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[side // 8: side // 2, side // 4: 3 * side // 4] = True
    return mask if batch is None else torch.stack([mask.roll(k * 3, dims=1) for k in range(batch)])


def region_logits(model: nn.Module, x: torch.Tensor, c: int, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)["out"]
    return (out[:, c] * mask).flatten(1).sum(1)


@pytest.fixture(scope="module")
def fcn() -> nn.Module:
    return build("fcn_resnet50")


@pytest.mark.parametrize("name,side,batch", SEGMENTERS)
def test_lrp_z_conserves_the_region_logits(name, side, batch):
    model = make_conservative(build(name)).to(F64)
    x = randn(batch, 3, side, side, dtype=F64, seed=1)
    mask = box(side, batch)
    relevance = relprop.explain(model, x, Output("out", Region(2, mask)), method="lrp-z")
    assert relevance.shape == x.shape
    sums = relevance.flatten(1).sum(1)
    expected = region_logits(model, x, 2, mask)
    assert (expected != 0).all()
    torch.testing.assert_close(sums, expected, rtol=1e-6, atol=0)


def test_class_index_on_a_classifier_starts_from_its_logit():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5, bias=False)).to(F64).eval()
    x = randn(2, 3, 8, 8, dtype=F64)
    relevance = relprop.explain(model, x, [1, 3], method="lrp-z")
    with torch.no_grad():
        expected = model(x).gather(1, torch.tensor([[1], [3]])).view(-1)
    torch.testing.assert_close(relevance.flatten(1).sum(1), expected, rtol=1e-9, atol=0)


def test_interpolation_conserves_relevance():
    """Bilinear and nearest resizing (functional and module) pass relevance on without loss."""
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.head = nn.Conv2d(4, 3, 1, bias=False)

        def forward(self, x):
            y = F.interpolate(self.conv(x).relu(), scale_factor=0.5, mode="bilinear", align_corners=False)
            return F.interpolate(self.head(self.up(y)), size=x.shape[-2:], mode="bilinear", align_corners=False)

    model = Up().to(F64).eval()
    x = randn(2, 3, 12, 12, dtype=F64)
    mask = box(12)
    relevance = relprop.explain(model, x, Region(1, mask), method="lrp-z")
    with torch.no_grad():
        expected = (model(x)[:, 1] * mask).flatten(1).sum(1)
    torch.testing.assert_close(relevance.flatten(1).sum(1), expected, rtol=1e-9, atol=0)


def test_batch_equals_samples_one_by_one(fcn):
    model = build("fcn_resnet50").to(F64)
    x = randn(2, 3, 48, 48, dtype=F64, seed=2)
    mask = box(48, 2)
    batch = relprop.explain(model, x, Output("out", Region(1, mask)), method="lrp-epsilon")
    for b in range(2):
        alone = relprop.explain(model, x[b:b + 1], Output("out", Region(1, mask[b])), method="lrp-epsilon")
        torch.testing.assert_close(batch[b:b + 1], alone, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["lrp-z", "gradient"])
def test_class_index_full_region_and_linear_callable_agree(method):
    model = build("fcn_resnet50", aux_loss=False).to(F64)
    x = randn(1, 3, 32, 32, dtype=F64, seed=3)
    full = torch.ones(32, 32, dtype=torch.bool)
    by_class = relprop.explain(model, x, Output("out", 3), method=method)
    by_region = relprop.explain(model, x, Output("out", Region(3, full)), method=method)
    by_callable = relprop.explain(model, x, Output("out", lambda z: z[:, 3].sum((1, 2))), method=method)
    torch.testing.assert_close(by_class, by_region, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(by_class, by_callable, rtol=1e-9, atol=1e-12)


def test_callable_start_is_gradient_times_output():
    """For LRP methods a callable's initial relevance is d score/d output times the output, so
    lrp-z on a conservative model sums to sum(output * grad score)."""
    model = make_conservative(build("fcn_resnet50", aux_loss=False)).to(F64)
    x = randn(1, 3, 32, 32, dtype=F64, seed=4)

    def score(z):
        return (z[:, 1] ** 2).mean((1, 2))

    relevance = relprop.explain(model, x, Output("out", score), method="lrp-z")
    with torch.no_grad():
        out = model(x)["out"]
    expected = 2 * score(out)  # z * d(z^2)/dz = 2 z^2
    torch.testing.assert_close(relevance.flatten(1).sum(1), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", [m for m in relprop.methods() if m not in ATTENTION_METHODS])
def test_every_method_runs_or_refuses_a_region(fcn, method):
    x = randn(1, 3, 32, 32, seed=5)
    options = {k: v for k, v in CHEAP_OPTIONS.items() if k in get_method(method).options()}
    target = Output("out", Region(2, box(32)))
    try:
        relevance = relprop.explain(fcn, x, target, method=method, **options)
    except ValueError as error:
        reasons = ("needs one class per sample of a (batch, classes) output",  # names the method
                   "RAP's first propagation needs a linear output layer",      # rap's start="one-hot"
                   f"{method} is defined for networks of affine layers, ReLU",  # the pattern methods: resize
                   "agf: the model must end in a linear or convolution layer")  # AGF reweights a classifier head
        assert any(reason in str(error) for reason in reasons), str(error)
        assert repr(method) in str(error) or method in ("rap", "patternnet", "pattern-attribution", "agf")
        return
    assert relevance.shape == x.shape
    assert torch.isfinite(relevance).all()


def test_model_unchanged(fcn):
    before = snapshot(fcn)
    x = randn(1, 3, 32, 32, seed=6)
    for method in ("lrp-cmp", "sglrp", "gradient"):
        relprop.explain(fcn, x, Output("out", Region(1, box(32))), method=method)
    relprop.explain(fcn, x, Output("out", Region(1, box(32))), method="rap", start="logit")
    with pytest.raises(ValueError):
        relprop.explain(fcn, x, Output("out", Region(9, box(32))), method="lrp-z")
    assert_unchanged(fcn, before)


# -- refusals ----------------------------------------------------------------------------------------
def test_dict_output_needs_a_selector(fcn):
    x = randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"forward must return one tensor of shape \(batch, classes\); for "
                                         r"models with several outputs pass target=relprop.targets.Output"):
        relprop.explain(fcn, x, 1, method="lrp-z")
    with pytest.raises(ValueError, match="no entry 'logits'; its entries are 'out', 'aux'"):
        relprop.explain(fcn, x, Output("logits", Region(1, box(32))), method="lrp-z")


def test_aux_output_can_be_explained(fcn):
    x = randn(1, 3, 32, 32)
    relevance = relprop.explain(fcn, x, Output("aux", Region(0, box(32))), method="lrp-epsilon")
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()


def test_output_on_a_single_tensor_model_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    with pytest.raises(ValueError, match="returns one tensor; pass the target without Output"):
        relprop.explain(model, torch.randn(1, 3, 2, 2), Output("out", 0), method="lrp-z")


@pytest.mark.parametrize("target,message", [
    (Output("out", Region(1, torch.ones(16, 16, dtype=torch.bool))), r"Region mask has shape \(16, 16\)"),
    (Output("out", Region(1, torch.ones(3, 32, 32, dtype=torch.bool))), r"for a batch of 1"),
    (Output("out", Region(7, torch.ones(32, 32, dtype=torch.bool))), "Region class 7 out of range"),
    (Output("out", Region(1, torch.zeros(32, 32, dtype=torch.bool))), r"Region mask is empty .* sample\(s\) \[0\]"),
    (Output("out", None), "target=None .* is ambiguous"),
    (Output("out", 9), r"target \[9\] out of range"),
    (Output("out", lambda z: z.sum()), r"one score per sample, shape \(1,\)"),
])
def test_bad_selectors_are_refused(fcn, target, message):
    with pytest.raises(ValueError, match=message):
        relprop.explain(fcn, randn(1, 3, 32, 32), target, method="lrp-z")


def test_region_arguments_are_checked():
    with pytest.raises(ValueError, match="mask must be a boolean tensor"):
        Region(1, torch.ones(4, 4))
    with pytest.raises(ValueError, match="class_index must be an int"):
        Region(1.5, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be \(H, W\) or \(B, H, W\)"):
        Region(1, torch.ones(4, dtype=torch.bool))


def test_region_on_a_classifier_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    with pytest.raises(ValueError, match="a Region needs an output with spatial dimensions"):
        relprop.explain(model, torch.randn(1, 3, 2, 2), Region(0, torch.ones(2, 2, dtype=torch.bool)),
                        method="lrp-z")


def test_rap_logit_start_runs_on_a_region(fcn):
    x = randn(1, 3, 32, 32)
    relevance = relprop.explain(fcn, x, Output("out", Region(2, box(32))), method="rap", start="logit")
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()


def test_region_sglrp_and_clrp_start_per_pixel():
    """Per pixel of the region the contrast runs over the class axis: SGLRP from the softmax gradient
    (Eq. 10), CLRP from z_c and -z_c / (N - 1) (Eq. 7); both conserve their start with zero biases
    in the signed variant (z+ and z^B without bias conserve)."""
    from relprop.attribution.contrastive import _region_clrp, _region_sglrp

    logits = randn(1, CLASSES, 4, 4, dtype=F64)
    weights = torch.zeros_like(logits)
    weights[0, 1, :2] = 1
    sg = _region_sglrp(logits, weights)
    p = logits.softmax(1)
    torch.testing.assert_close(sg[0, 1, 0, 0], p[0, 1, 0, 0] * (1 - p[0, 1, 0, 0]))
    torch.testing.assert_close(sg[0, 3, 1, 2], -p[0, 1, 1, 2] * p[0, 3, 1, 2])
    assert (sg[:, :, 2:] == 0).all()
    cl = _region_clrp(logits, weights)
    torch.testing.assert_close(cl[0, 1, :2], logits[0, 1, :2])
    torch.testing.assert_close(cl[0, 0, :2], -logits[0, 1, :2] / (CLASSES - 1))
    assert (cl[:, :, 2:] == 0).all() and abs(float(cl.sum())) < 1e-12


@pytest.mark.parametrize("method,options,message", [
    ("sglrp", {"variant": "official"}, "use variant='paper' for a region"),
    ("clrp", {"variant": "official-type1"}, "use variant='paper' for a region"),
])
def test_official_contrastive_variants_refuse_a_region(fcn, method, options, message):
    with pytest.raises(ValueError, match=message):
        relprop.explain(fcn, randn(1, 3, 32, 32), Output("out", Region(1, box(32))), method=method, **options)


def test_contrastive_methods_refuse_a_callable(fcn):
    with pytest.raises(ValueError, match="cannot start from a callable score"):
        relprop.explain(fcn, randn(1, 3, 32, 32), Output("out", lambda z: z[:, 0].sum((1, 2))), method="clrp")


def test_rap_one_hot_refuses_a_callable(fcn):
    with pytest.raises(ValueError, match="a callable target needs start='logit'"):
        relprop.explain(fcn, randn(1, 3, 32, 32), Output("out", lambda z: z[:, 0].sum((1, 2))), method="rap")
