"""The synthetic ``shapes`` benchmark (generator, masks, variants) and its shipped models."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
from relprop.data.base import to_model_input
from relprop.data.registry import dataset_names, get_dataset
from relprop.data.shapes import (MIN_GAP, NEAR_GAP, SHAPE_CLASSES, SMALL_MAX, ShapesDataset, mask_gap,
                                 shape_mask)
from relprop.models import load_model, model_names
from relprop.models.shapes_models import ShapesResNet, ShapesVGG, ShapesViT, weights_path
from relprop.models.train_shapes import mean_average_precision, predict, to_batch


def _same(a, b):
    assert a.key == b.key
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.labels == b.labels
    assert len(a.objects) == len(b.objects)
    for oa, ob in zip(a.objects, b.objects):
        assert oa.label == ob.label and oa.box == ob.box and np.array_equal(oa.mask, ob.mask)


def test_registered_and_options_checked():
    assert {"shapes", "shapes-single"} <= set(dataset_names())
    ds = get_dataset("shapes", split="val", count=3, size=48)
    assert len(ds) == 3 and ds[0].size == (48, 48) and ds.class_names == SHAPE_CLASSES
    assert get_dataset("shapes-single", split="train").name == "shapes-single"
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("validation")
    with pytest.raises(ValueError, match="size"):
        ShapesDataset(size=16)
    with pytest.raises(ValueError, match="seed"):
        ShapesDataset(seed=-1)
    with pytest.raises(ValueError, match="shapes-single"):
        get_dataset("shapes-single", difficult=True)
    with pytest.raises(IndexError):
        ds[3]


def test_deterministic_per_index_and_independent_of_order():
    a = ShapesDataset("test", count=8, seed=3)
    b = ShapesDataset("test", count=8, seed=3)
    forward = [a[i] for i in range(8)]
    backward = [b[i] for i in reversed(range(8))][::-1]
    for x, y in zip(forward, backward):
        _same(x, y)
    _same(a[-1], a[7])
    images, _ = a.arrays(2, 5)
    assert np.array_equal(images[1], np.asarray(a[3].image))
    # other split, seed or variant: other images
    for other in (ShapesDataset("train", count=8, seed=3), ShapesDataset("test", count=8, seed=4),
                  ShapesDataset("test", count=8, seed=3, single=True)):
        assert not np.array_equal(np.asarray(other[0].image), np.asarray(forward[0].image))


def test_shape_rasterisation_matches_hand_computed_pixels():
    # square: half side 0.7 r = 7 px around (32, 32): pixel centres 25.5 .. 38.5
    square = shape_mask(SHAPE_CLASSES.index("square"), 64, 32.0, 32.0, 10.0)
    expected = np.zeros((64, 64), bool)
    expected[25:39, 25:39] = True
    assert np.array_equal(square, expected)
    # circle: pixel centres within r of the centre, counted independently
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    circle = shape_mask(SHAPE_CLASSES.index("circle"), 64, 30.3, 33.1, 9.5)
    assert np.array_equal(circle, (xx - 30.3) ** 2 + (yy - 33.1) ** 2 <= 9.5 ** 2)
    # diamond |u| / 0.55 + |v| <= 1 at r = 10: the pixel centres nearest the axes are 0.5 px off, so
    # half-widths 5.5 * 0.95 = 5.2 (5 pixels) and 10 * (1 - 0.05 / 0.55) = 9.1 (9 pixels) -> 10 x 18
    diamond = shape_mask(SHAPE_CLASSES.index("diamond"), 64, 32.0, 32.0, 10.0)
    ys, xs = np.nonzero(diamond)
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (10, 18)
    assert np.array_equal(diamond, np.abs(xx - 32) / 5.5 + np.abs(yy - 32) / 10 <= 1)
    # a 90 degree turn of the cross gives the transposed mask about the centre
    cross = SHAPE_CLASSES.index("cross")
    assert np.array_equal(shape_mask(cross, 64, 32.0, 32.0, 12.0, 90.0), shape_mask(cross, 64, 32.0, 32.0, 12.0).T)
    # every shape fits in its enclosing circle and is not empty
    for label in range(len(SHAPE_CLASSES)):
        m = shape_mask(label, 64, 32.0, 32.0, 12.0, 37.0)
        assert m.sum() > 40
        assert ((xx[m] - 32) ** 2 + (yy[m] - 32) ** 2).max() <= 12.0 ** 2 + 1e-9


def test_mask_gap_against_brute_force():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[1, 1] = a[2, 2] = True
    b[5, 6] = b[9, 0] = True
    assert mask_gap(a, b) == pytest.approx(5.0)  # (2, 2) -> (5, 6)
    assert mask_gap(a, np.zeros_like(a)) == math.inf


@pytest.mark.parametrize("single", [False, True])
def test_masks_boxes_and_labels_exact(single):
    ds = ShapesDataset("val", count=40, single=single, seed=1)
    counts = set()
    for i in range(len(ds)):
        s = ds[i]
        counts.add(len(s.objects))
        assert s.image.mode == "RGB" and s.size == (64, 64)
        assert s.labels == sorted({o.label for o in s.objects})
        for o in s.objects:
            assert o.mask.shape == (64, 64) and o.mask.dtype == bool and not o.difficult
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # the shape lies inside the image: no mask pixel on the border
            assert not (o.mask[0].any() or o.mask[-1].any() or o.mask[:, 0].any() or o.mask[:, -1].any())
        for j, a in enumerate(s.objects):  # disjoint, at least MIN_GAP apart
            for b in s.objects[j + 1:]:
                assert not (a.mask & b.mask).any()
                assert mask_gap(a.mask, b.mask) >= MIN_GAP
    assert counts == ({1} if single else {1, 2, 3})


def test_objects_are_painted_over_the_background():
    ds = ShapesDataset("val", count=30, seed=2)
    diffs = []
    for i in range(len(ds)):
        s = ds[i]
        rgb = np.asarray(s.image, dtype=np.float64) / 255
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            around = np.zeros_like(o.mask)
            around[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
            for other in s.objects:
                around &= ~other.mask
            if around.any():
                diffs.append(np.linalg.norm(rgb[o.mask].mean(0) - rgb[around].mean(0)))
    # the paint is chosen 0.4 away (RGB distance) from the background under it
    assert np.median(diffs) > 0.25


def test_difficult_subset_small_object_next_to_distractor():
    ds = get_dataset("shapes", split="test", count=25, difficult=True)
    for i in range(len(ds)):
        s = ds[i]
        small, distractor = s.objects
        assert small.label != distractor.label and s.labels == sorted({small.label, distractor.label})
        x0, y0, x1, y1 = small.box
        assert max(x1 - x0, y1 - y0) <= SMALL_MAX * 64
        assert small.mask.sum() < 64 * 64 / 4  # the pointing game's "difficult" area bound
        assert distractor.mask.sum() > small.mask.sum()
        assert MIN_GAP <= mask_gap(small.mask, distractor.mask) <= NEAR_GAP
        assert not small.difficult and not distractor.difficult


def test_model_input_keeps_exact_masks():
    s = ShapesDataset("test", count=1)[0]
    mi = to_model_input(s, 64, (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(mi.masks, torch.from_numpy(np.stack([o.mask for o in s.objects])))
    _, preprocess = load_model("shapes_vgg")
    x = preprocess(s.image)
    assert torch.allclose(x, to_batch(np.asarray(s.image)[None]), atol=1e-6)
    assert torch.allclose(x[0], mi.image, atol=1e-5)


def test_map_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(50, 6, generator=g) < 0.3).double()
    targets[0] = 1.0
    scores = torch.randn(50, 6, generator=g, dtype=torch.float64).round(decimals=1)  # with ties
    expected = sklearn.average_precision_score(targets.numpy(), scores.numpy(), average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)


#: held-out mAP of the shipped models on 2,000 test scenes (docs/shapes.md)
SHIPPED_MAP = {"shapes_vgg": 0.998, "shapes_resnet": 0.997, "shapes_vit": 0.960}


@pytest.mark.parametrize("name,cls", [("shapes_vgg", ShapesVGG), ("shapes_resnet", ShapesResNet),
                                      ("shapes_vit", ShapesViT)])
def test_shipped_models_are_trained(name, cls):
    assert name in model_names()
    path = weights_path(name)
    assert path.stat().st_size < 1.5e6
    state = torch.load(path, map_location="cpu", weights_only=True)
    model, preprocess = load_model(name)
    assert isinstance(model, cls) and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert sum(p.numel() for p in model.parameters()) * 4 < 1e6
    # a fresh test batch (a seed the documented figures do not use)
    images, targets = ShapesDataset("test", count=64, seed=777).arrays()
    trained = mean_average_precision(predict(model, images), torch.from_numpy(targets))
    assert trained >= SHIPPED_MAP[name] - 0.1  # 64 scenes: the documented mAP (2,000 scenes) within 0.1
    torch.manual_seed(0)
    untrained = mean_average_precision(predict(cls().eval(), images), torch.from_numpy(targets))
    assert untrained < 0.6
    # the preprocessing of a PIL image feeds the same numbers
    assert torch.equal(model(preprocess(Image.fromarray(images[0]))).argmax(), predict(model, images[:1])[0].argmax())


@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp", "attention-rollout", "gradcam",
                                    pytest.param("transformer-attribution", marks=pytest.mark.slow)])
def test_transformer_methods_explain_shapes_vit(method):
    """The shipped ViT explained on two test scenes for each scene's first label: maps shaped like the
    input, finite, not all zero; in float64 each sample as on its own (in float32, transformer
    attribution's batch and single maps differ by about 2% of the maximum: rounding, amplified by
    its 1e-9 stabilisers)."""
    model, _ = load_model("shapes_vit")
    images, targets = ShapesDataset("test", count=2, seed=5).arrays()
    x = to_batch(images)
    target = torch.from_numpy(targets).argmax(1)
    r = relprop.explain(model, x, target=target, method=method)
    assert r.shape == x.shape and bool(r.isfinite().all())
    assert bool((r.flatten(1).abs().sum(1) > 0).all())
    model, x = model.double(), x.double()
    r = relprop.explain(model, x, target=target, method=method)
    one = relprop.explain(model, x[1:], target=target[1:], method=method)
    torch.testing.assert_close(r[1:], one, rtol=1e-7, atol=1e-9 * float(one.abs().max()))
