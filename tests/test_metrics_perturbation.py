"""Hand-computed toy cases for relprop.metrics.perturbation, patch masking, occlusion, D_K and the
randomisation sanity check."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import relprop.metrics as M
from relprop.metrics import perturbation as P

nan = float("nan")


def same(a, b, tol=1e-9):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0, equal_nan=True), (a, b)


class SumModel(nn.Module):
    """Class 0 logit = sum of all inputs, class 1 logit = 0; records inputs and rows seen."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        self.rows += x.shape[0]
        s = x.flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2), sum 10, min 1
MAP = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])  # MoRF: (0,1) (1,0) (1,1) (0,0)
T0 = torch.tensor([0])


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, classes)).eval()


# ---------------------------------------------------------------------------------- region perturbation


def test_morf_lerf_min_removal_hand_computed() -> None:
    c = M.region_perturbation(SumModel(), X, MAP, T0, counts=[0, 1, 2, 4], order="morf", removal="min")
    same(c.scores, [[10, 9, 7, 4]])
    same(c.drop(), [[0, 1, 3, 6]])
    same(c.aopc(), [2.5])
    assert c.n_perturbed.tolist() == [[0, 1, 2, 4]] and c.counts.tolist() == [0, 1, 2, 4]
    c = M.region_perturbation(SumModel(), X, MAP, T0, counts=[1, 2, 4], order="lerf", removal="min")
    same(c.scores, [[10, 10, 7, 4]])  # 0 is prepended
    c = M.region_perturbation(SumModel(), X, MAP, T0, counts=[0, 1, 2, 4], removal="zero")
    same(c.scores, [[10, 8, 5, 0]])
    c = M.region_perturbation(SumModel(), X, MAP, T0, counts=[0, 1], removal=-5.0)
    same(c.scores, [[10, 3]])
    assert c.correct.tolist() == [[True, True]] and c.accuracy().tolist() == [1.0, 1.0]


def test_ties_follow_row_major_order_for_morf_and_lerf() -> None:
    flat = torch.ones(1, 2, 2)
    for order in ("morf", "lerf"):
        c = M.region_perturbation(SumModel(), X, flat, T0, counts=[0, 1, 2, 3], order=order, removal="zero")
        same(c.scores, [[10, 9, 7, 4]])


def test_restrict_positive_and_negative() -> None:
    maps = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]])
    c = M.region_perturbation(SumModel(), X, maps, T0, counts=[0, 1, 2, 4], removal="zero", restrict="positive")
    same(c.scores, [[10, 7, 6, 6]])  # only (1,0) then (0,0); capped at 2 eligible pixels
    assert c.n_perturbed.tolist() == [[0, 1, 2, 2]]
    c = M.region_perturbation(SumModel(), X, maps, T0, counts=[0, 1, 4], order="lerf", removal="zero",
                              restrict="negative")
    same(c.scores, [[10, 8, 8]])
    c = M.region_perturbation(SumModel(), X, maps, T0, counts=[0, 4], order="random", removal="zero",
                              restrict="positive", seed=3)
    same(c.scores, [[10, 6]])


def test_mean_blur_noise_substrates_come_from_the_original_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 5, generator=g)
    maps = torch.rand(2, 6, 5, generator=g)
    for removal in ("mean", "blur", "noise", torch.tensor([0.1, 0.2, 0.3])):
        model = SumModel()
        M.region_perturbation(model, x, maps, torch.tensor([0, 0]), counts=[30], removal=removal,
                              blur_kernel_size=3, blur_sigma=1.0)
        xs = torch.cat(model.seen)  # the clean images (step 0), then the fully removed ones
        same(xs[:2], x)
        full = xs[2:]
        if isinstance(removal, torch.Tensor):
            same(full, removal.view(1, 3, 1, 1).expand(2, 3, 6, 5), tol=1e-7)
        elif removal == "mean":
            same(full, x.mean((2, 3), keepdim=True).expand_as(x), tol=1e-6)
        elif removal == "blur":
            same(full, P.gaussian_blur(x, 3, 1.0), tol=1e-6)
        else:
            lo = x.amin((1, 2, 3))[:, None, None, None]
            hi = x.amax((1, 2, 3))[:, None, None, None]
            assert ((full >= lo) & (full <= hi)).all()
            assert not torch.allclose(full, x)


def test_shuffle_moves_all_channels_of_a_pixel_together_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 5, 6, generator=g)
    maps = torch.rand(1, 5, 6, generator=g)
    model = SumModel()
    c = M.region_perturbation(model, x, maps, T0, counts=[0, 10, 30], removal="shuffle", seed=7)
    xs = torch.cat(model.seen)
    order = torch.sort(maps.flatten(), descending=True, stable=True).indices
    orig_px = x[0].flatten(1).T  # (30, 3) colour vectors
    for step, k in ((1, 10), (2, 30)):
        px = xs[step].flatten(1).T
        sel = order[:k]
        rest = order[k:]
        same(px[rest], orig_px[rest])
        # the selected pixels hold a permutation of the selected colour vectors (channels coupled)
        a = sorted(map(tuple, px[sel].tolist()))
        b = sorted(map(tuple, orig_px[sel].tolist()))
        assert a == b
        assert not torch.equal(px[sel], orig_px[sel])
    same(c.scores[:, 0], c.scores[:, 2], tol=1e-5)  # shuffling every pixel keeps the sum
    again = M.region_perturbation(SumModel(), x, maps, T0, counts=[0, 10, 30], removal="shuffle", seed=7,
                                  internal_batch_size=1)
    same(again.scores, c.scores)
    other = SumModel()
    M.region_perturbation(other, x, maps, T0, counts=[0, 10], removal="shuffle", seed=8)
    assert not torch.equal(other.seen[-1], xs[1])


def test_patches_and_padding_follow_quantus_grid() -> None:
    ids, n, gw = P.region_ids(7, 7, 3)  # padding 2 -> 1 before, 1 after
    assert n == 9 and gw == 3
    assert ids.view(7, 7)[:, 0].tolist() == [0, 0, 3, 3, 3, 6, 6]
    ids, n, _ = P.region_ids(5, 5, 2)  # padding 1 -> 0 before, 1 after
    assert ids.view(5, 5)[0].tolist() == [0, 0, 1, 1, 2] and n == 9
    x = torch.arange(16.0).view(1, 1, 4, 4)
    maps = torch.zeros(1, 4, 4)
    maps[0, 2:, 2:] = 1.0  # bottom-right 2x2 region first
    c = M.region_perturbation(SumModel(), x, maps, T0, counts=[0, 1], patch_size=2, removal="zero")
    same(c.scores, [[120, 120 - (10 + 11 + 14 + 15)]])
    assert c.n_perturbed.tolist() == [[0, 4]]


def test_targets_none_forward_pass_count_and_batching_invariance() -> None:
    model = small_cnn()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, 8, 9, generator=g)
    maps = torch.randn(5, 8, 9, generator=g)
    counter = SumModel()

    def counted(inp):
        counter.rows += inp.shape[0]
        return model(inp)

    c = M.region_perturbation(counted, x, maps, None, counts=range(0, 72, 8), internal_batch_size=7)
    assert counter.rows == 5 * 9  # exactly the forward passes needed
    assert torch.equal(c.targets, model(x).argmax(1)) and torch.equal(c.predicted, c.targets)
    for removal in ("shuffle", "noise"):
        kw = dict(counts=(0, 9, 40, 72), removal=removal, seed=5, score="softmax")
        a = M.region_perturbation(model, x, maps, c.targets, internal_batch_size=64, **kw)
        b = torch.cat([M.region_perturbation(model, x[i:i + 1], maps[i:i + 1], c.targets[i:i + 1],
                                             internal_batch_size=3, **kw).scores for i in (0, 3)])
        same(a.scores[[0, 3]], b, tol=1e-5)
    with pytest.raises(ValueError, match="seed"):
        M.region_perturbation(model, x, maps, None, counts=[1], seed=[1, 2])


def test_perturbation_validation() -> None:
    with pytest.raises(ValueError, match="images"):
        M.region_perturbation(SumModel(), X[0], MAP, T0, counts=[1])
    with pytest.raises(ValueError, match=r"\(1, 2, 3\).*\(1, 1, 2, 2\)"):
        M.region_perturbation(SumModel(), X, torch.rand(1, 2, 3), T0, counts=[1])
    with pytest.raises(ValueError, match="removal"):
        M.region_perturbation(SumModel(), X, MAP, T0, counts=[1], removal="black")
    with pytest.raises(ValueError, match="order"):
        M.region_perturbation(SumModel(), X, MAP, T0, counts=[1], order="MoRF")
    with pytest.raises(ValueError, match="targets"):
        M.region_perturbation(SumModel(), X, MAP, torch.tensor([0.5]), counts=[1])
    bad = MAP.clone()
    bad[0, 0, 0] = nan
    with pytest.raises(ValueError, match="NaN"):
        M.region_perturbation(SumModel(), X, bad, T0, counts=[1])


def test_aopc_and_auc_formulas() -> None:
    same(P.aopc(torch.tensor([[4.0, 3.0, 1.0]], dtype=torch.float64)), [(0 + 1 + 3) / 3])
    same(P.trapezoid_auc(torch.tensor([[1.0, 0.5, 0.0]])), [0.5])
    s = torch.tensor([[0.9, 0.7, 0.2, 0.1]])
    n = 3
    same(P.trapezoid_auc(s), (s.sum(1) - (s[:, 0] + s[:, -1]) / 2) / n)  # RISE's formula


# ---------------------------------------------------------------------------------- insertion


def test_blurred_insertion_counts_and_end_states() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 10, 10, generator=g)
    maps = torch.rand(2, 10, 10, generator=g)
    model = SumModel()
    c = M.blurred_insertion(model, x, maps, torch.tensor([0, 0]), fractions=(0.01, 0.05, 0.2, 1.0),
                            kernel_size=5, sigma=2.0)
    assert c.counts.tolist() == [0, 1, 5, 20, 100] and c.mode == "insertion"
    blurred = P.gaussian_blur(x, 5, 2.0)
    same(c.scores[:, 0], blurred.flatten(1).sum(1), tol=1e-4)
    same(c.scores[:, -1], x.flatten(1).sum(1), tol=1e-4)
    # the first inserted pixel is the map's maximum
    top = maps.flatten(1).argmax(1)
    diff = (x - blurred).flatten(2).sum(1)
    same(c.scores[:, 1] - c.scores[:, 0], diff.gather(1, top[:, None])[:, 0], tol=1e-4)
    assert P.PAPER_002_INSERTION_FRACTIONS[0] == 0.01 and len(P.PAPER_002_INSERTION_FRACTIONS) == 20
    # targets=None: B extra passes for the clean prediction
    counter = SumModel()
    M.blurred_insertion(counter, x, maps, None, fractions=(0.5,), kernel_size=5, sigma=2.0)
    assert counter.rows == 2 * 2 + 2


def test_rise_deletion_insertion() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 2, 5, generator=g)
    maps = torch.rand(2, 2, 5, generator=g)
    d = M.rise_deletion(SumModel(), x, maps, torch.tensor([0, 0]), step=3, score="logit")
    assert d.counts.tolist() == [0, 3, 6, 9, 10]
    same(d.scores[:, -1], torch.zeros(2))
    same(d.scores[:, 0], x.flatten(1).sum(1), tol=1e-5)
    ins = M.rise_insertion(SumModel(), x, maps, torch.tensor([0, 0]), step=3, score="logit",
                           substrate=0.0)
    same(ins.scores[:, 0], torch.zeros(2))
    same(ins.auc(), P.trapezoid_auc(ins.scores))
    assert M.METRICS["rise_deletion_auc"].higher_is_better is False
    assert M.METRICS["rise_insertion_auc"].higher_is_better is True
    model = small_cnn()
    auc = M.METRICS["rise_insertion_auc"].fn(model, torch.randn(2, 3, 12, 12), torch.rand(2, 12, 12), step=16)
    assert auc.shape == (2,) and ((auc >= 0) & (auc <= 1)).all()


def test_rise_kernel_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    inp = np.zeros((11, 11))
    inp[5, 5] = 1
    ref = ndimage.gaussian_filter(inp, 5)
    k = P.gaussian_kernel(11, 5.0, kind="rise")
    same(torch.outer(k, k), ref, tol=1e-12)
    k = P.gaussian_kernel(7, 1.5)
    assert k.sum().item() == pytest.approx(1.0) and torch.equal(k, k.flip(0))


# ---------------------------------------------------------------------------------- patch masking


def test_maximal_patch_masking_hand_computed() -> None:
    x = torch.arange(1.0, 26.0).view(1, 1, 5, 5)
    maps = torch.zeros(1, 5, 5)
    maps[0, 2, 3] = 1.0
    r = M.maximal_patch_masking(SumModel(), x, maps, T0, patch_sizes=(1, 3), score="logit")
    # p=1 removes x[2,3] = 14; p=3 removes rows 1-3, cols 2-4
    block = x[0, 0, 1:4, 2:5].sum()
    same(r.change, [[-14.0, -block]])
    same(r.clean, [325.0])
    assert r.centers.tolist() == [[2, 3]]
    # border clipping and even sizes; the fill value is the data-set mean
    maps2 = torch.zeros(1, 5, 5)
    maps2[0, 0, 0] = 1.0
    r = M.maximal_patch_masking(SumModel(), x, maps2, T0, patch_sizes=(3, 2), fill=1.0, score="logit")
    same(r.change, [[(1 - 1) + (1 - 2) + (1 - 6) + (1 - 7), (1 - 1)]])
    assert M.patch.patch_window(2, 4, 10) == (0, 4)
    # constant map: undefined centre
    r = M.maximal_patch_masking(SumModel(), x, torch.ones(1, 5, 5), T0, patch_sizes=(1,))
    assert torch.isnan(r.change).all()


def test_patch_masking_random_baseline_and_second_class() -> None:
    model = small_cnn()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 3, 9, 9, generator=g)
    maps = torch.randn(3, 9, 9, generator=g)
    second = M.ranked_classes(model, x, 2)[:, 1]
    assert torch.equal(second, model(x).topk(2, 1).indices[:, 1])
    a = M.maximal_patch_masking(model, x, maps, second, location="random", seed=[1, 2, 3])
    b = M.maximal_patch_masking(model, x, maps, second, location="random", seed=[1, 2, 3],
                                internal_batch_size=2)
    same(a.change, b.change, tol=1e-6)
    assert a.change.shape == (3, 5)
    single = M.maximal_patch_masking(model, x[1:2], maps[1:2], second[1:2], location="random", seed=[2])
    same(single.change, a.change[1:2], tol=1e-6)


# ---------------------------------------------------------------------------------- D_K, occlusion


def test_topk_distance_hand_computed() -> None:
    maps = torch.zeros(1, 4, 5)
    maps[0, 0, 0] = 5.0
    maps[0, 0, 3] = 4.0  # distance 3
    maps[0, 3, 4] = 3.0  # distance 5
    maps[0, 2, 2] = -9.0
    same(M.topk_distance(maps, ks=(1, 2, 3)), [[0.0, 1.5, 8 / 3]])
    same(M.topk_distance(maps, ks=(3,), squared=True), [[(0 + 9 + 25) / 3]])
    same(M.topk_distance(maps, ks=(2,), normalise=True), [[1.5 / math.sqrt(16 + 25)]])
    out = M.topk_distance(maps, ks=(3, 4))
    assert math.isnan(out[0, 1])  # only 3 positive pixels
    same(M.topk_distance(maps, ks=(4,), fewer="all"), [[8 / 3]])
    assert torch.isnan(M.topk_distance(-maps.abs() - 1, ks=(1,))).all()
    # ties at the maximum: top-1 is the first in row-major order
    tie = torch.zeros(1, 3, 3)
    tie[0, 0, 2] = 1.0
    tie[0, 2, 0] = 1.0
    same(M.topk_distance(tie, ks=(2,)), [[math.sqrt(8) / 2]])


def test_object_context_occlusion() -> None:
    x = torch.arange(1.0, 13.0).view(1, 1, 3, 4)
    masks = torch.zeros(1, 3, 4, dtype=torch.bool)
    masks[0, 0, :2] = True
    d = M.object_context_occlusion(SumModel(), x, masks, T0, fill=0.0)
    same(d, [[-3.0, -(78.0 - 3.0)]])
    d = M.object_context_occlusion(SumModel(), x.expand(2, 1, 3, 4),
                                   torch.stack([torch.zeros(3, 4), torch.ones(3, 4)]), torch.tensor([0, 0]))
    assert math.isnan(d[0, 0]) and not math.isnan(d[0, 1])
    assert math.isnan(d[1, 1]) and not math.isnan(d[1, 0])


# ---------------------------------------------------------------------------------- randomisation


def test_spearman_and_ssim() -> None:
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    same(M.spearman(a, a), [1.0])
    same(M.spearman(a, -a), [-1.0])
    same(M.spearman(a, torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])), [0.894427190999916])  # scipy value
    assert math.isnan(M.spearman(a, torch.ones(1, 2, 2)).item())
    g = torch.Generator().manual_seed(8)
    b = torch.rand(2, 12, 10, generator=g, dtype=torch.float64)
    same(M.ssim(b, b), [1.0, 1.0])
    same(M.ssim(b, 3 * b + 1), [1.0, 1.0])  # per-sample min-max normalisation
    assert torch.isnan(M.ssim(b, torch.ones_like(b))).all()


def test_spearman_ssim_match_scipy_skimage() -> None:
    stats = pytest.importorskip("scipy.stats")
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(3, 9, 8)).astype(float)
    b = rng.normal(size=(3, 9, 8))
    ours = M.spearman(torch.tensor(a), torch.tensor(b))
    for i in range(3):
        assert ours[i].item() == pytest.approx(stats.spearmanr(a[i].ravel(), b[i].ravel())[0], abs=1e-12)
    ours = M.ssim(torch.tensor(a), torch.tensor(b))
    for i in range(3):
        na = (a[i] - a[i].min()) / (a[i].max() - a[i].min())
        nb = (b[i] - b[i].min()) / (b[i].max() - b[i].min())
        assert ours[i].item() == pytest.approx(skm.structural_similarity(na, nb, data_range=1.0), abs=1e-10)


def test_cascading_randomisation() -> None:
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)

    def explain(m, inp, tgt):
        inp = inp.clone().requires_grad_(True)
        out = m(inp).gather(1, tgt[:, None]).sum()
        (grad,) = torch.autograd.grad(out, inp)
        return (grad * inp).sum(1)

    assert M.randomisation.execution_order(model, x) == ["0", "4"]
    r = M.cascading_randomisation(model, x, torch.tensor([1, 2]), explain, return_maps=True)
    assert r.layers == ["4", "0"]  # top-down
    assert r.spearman.shape == (2, 2) and r.ssim.shape == (2, 2) and r.maps.shape == (2, 2, 8, 8)
    assert (r.spearman_abs < 0.99).all()
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])
    r2 = M.cascading_randomisation(model, x, torch.tensor([1, 2]), explain)
    same(r2.spearman, r.spearman)  # seeded
    r3 = M.cascading_randomisation(model, x, torch.tensor([1, 2]), explain, order="bottom_up",
                                   independent=True, layers=["0"], init="normal")
    assert r3.layers == ["0"]
    with pytest.raises(ValueError, match="unknown layers"):
        M.cascading_randomisation(model, x, torch.tensor([1, 2]), explain, layers=["fc"])


# ---------------------------------------------------------------------------------- registry


def test_registry_metadata() -> None:
    for name, info in M.METRICS.items():
        assert info.name == name and callable(info.fn)
        assert info.higher_is_better in (True, False, None)
        assert info.direction in ("higher", "lower", "none")
        assert info.source and info.category
    assert M.METRICS["pointing_game"].higher_is_better is True
    assert M.METRICS["outside_inside_ratio"].higher_is_better is False
    assert "Eq. 11" in M.METRICS["outside_inside_ratio"].source
    assert "Eq. 5" in M.METRICS["mu_w"].source
    assert M.METRICS["positive_ratio"].higher_is_better is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_run_on_cuda() -> None:
    dev = torch.device("cuda")
    model = small_cnn().to(dev)
    x = torch.randn(3, 3, 10, 12, device=dev)
    maps = torch.randn(3, 10, 12, device=dev)
    masks = torch.rand(3, 10, 12, device=dev) > 0.5
    cpu = M.region_perturbation(model.cpu(), x.cpu(), maps.cpu(), None, counts=(0, 5, 50), removal="shuffle")
    gpu = M.region_perturbation(model.to(dev), x, maps, None, counts=(0, 5, 50), removal="shuffle")
    same(gpu.scores.cpu(), cpu.scores, tol=1e-4)
    for fn in (M.pointing_game, M.energy_pointing_game, M.outside_inside_ratio, M.inside_total_ratio,
               M.pixel_accuracy, M.stacked_average_precision):
        same(fn(maps, masks).cpu(), fn(maps.cpu(), masks.cpu()), tol=1e-5)
    M.blurred_insertion(model, x, maps, None, kernel_size=3, sigma=1.0)
    M.maximal_patch_masking(model, x, maps, torch.zeros(3, dtype=torch.long, device=dev))


# ---------------------------------------------------------------------------------- added checks


def test_paper_pixel_counts_and_chunking() -> None:
    """Nam, Choi and Lee [Nam-RAP-Journal] Table I counts, with a model that records every input: step k holds exactly the first
    counts[k] pixels in MoRF order set to the image minimum, and no call sees more than the chunk."""
    g = torch.Generator().manual_seed(12)
    x = torch.rand(2, 3, 70, 80, generator=g, dtype=torch.float64)  # 5,600 pixels
    maps = torch.randn(2, 70, 80, generator=g, dtype=torch.float64)
    model = SumModel()
    counts = P.PAPER_001_POSITIVE_COUNTS + (70 * 80,)
    c = M.region_perturbation(model, x, maps, torch.tensor([0, 0]), counts=counts, restrict="positive",
                              internal_batch_size=5)
    assert max(s.shape[0] for s in model.seen) <= 5
    npos = (maps > 0).flatten(1).sum(1)
    expect_n = torch.minimum(torch.tensor(counts)[None], npos[:, None])  # "All" = every positive pixel
    assert torch.equal(c.n_perturbed, expect_n)
    for b in range(2):
        order = torch.sort(maps[b].flatten(), descending=True, stable=True).indices
        px = x[b].flatten(1)  # (3, HW)
        lo = x[b].min()
        for k, n in enumerate(expect_n[b].tolist()):
            removed = (px[:, order[:n]] - lo).sum()
            assert c.scores[b, k].item() == pytest.approx((px.sum() - removed).item(), abs=1e-9)
    assert P.PAPER_001_NEGATIVE_COUNTS == (0, 2000, 4000, 6000, 8000, 10000)
    assert P.PAPER_000_LERF_COUNTS[1] == 100 and P.PAPER_000_LERF_COUNTS[-1] == 4000
    with pytest.raises(ValueError, match="internal_batch_size"):
        M.region_perturbation(model, x, maps, None, counts=[1], internal_batch_size=0)


def _rise_reference(model, img, sal, mode, step, substrate, n_classes):
    """RISE's CausalMetric.single_run (official evaluation.py), for one image, written out as a loop."""
    hw = img.shape[-1] * img.shape[-2]
    n = (hw + step - 1) // step
    pred = model(img).softmax(-1)
    c = int(pred.argmax())
    if mode == "del":
        start, finish = img.clone(), substrate
    else:
        start, finish = substrate.clone(), img.clone()
    scores = []
    order = torch.tensor(np.argsort(sal.reshape(-1).numpy(), kind="stable")[::-1].copy())
    for i in range(n + 1):
        scores.append(float(model(start).softmax(-1)[0, c]))
        if i < n:
            coords = order[step * i:step * (i + 1)]
            s = start.view(1, 3, hw)
            s[0, :, coords] = finish.view(1, 3, hw)[0, :, coords]
    arr = np.array(scores)
    auc = (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)
    return arr, auc


def test_rise_curves_and_auc_match_the_official_loop() -> None:
    model = small_cnn(classes=6)
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 9, 11, generator=g)
    maps = torch.randn(2, 9, 11, generator=g)  # no ties: RISE's reversed argsort and ours agree
    step = 10
    with torch.no_grad():
        d = M.rise_deletion(model, x, maps, step=step)
        ins = M.rise_insertion(model, x, maps, step=step)
        blurred = P.gaussian_blur(x, 11, 5.0, padding="zeros", kind="rise")
        for b in range(2):
            ref, auc = _rise_reference(model, x[b:b + 1], maps[b], "del", step, torch.zeros_like(x[b:b + 1]), 6)
            same(d.scores[b], ref, tol=1e-6)
            assert d.auc()[b].item() == pytest.approx(auc, abs=1e-6)
            ref, auc = _rise_reference(model, x[b:b + 1], maps[b], "ins", step, blurred[b:b + 1], 6)
            same(ins.scores[b], ref, tol=1e-6)
            assert ins.auc()[b].item() == pytest.approx(auc, abs=1e-6)
    assert torch.equal(d.targets, model(x).argmax(1))


def test_rise_blur_is_a_zero_padded_2d_convolution() -> None:
    """RISE blurs with conv2d(x, kern, padding=klen // 2) where kern[i, i] = gkern: check the separable
    version against that dense convolution."""
    g = torch.Generator().manual_seed(14)
    x = torch.rand(2, 3, 13, 12, generator=g, dtype=torch.float64)
    k1 = P.gaussian_kernel(11, 5.0, kind="rise")
    kern = torch.zeros(3, 3, 11, 11, dtype=torch.float64)
    for i in range(3):
        kern[i, i] = torch.outer(k1, k1)
    ref = torch.nn.functional.conv2d(x, kern, padding=5)
    same(P.gaussian_blur(x, 11, 5.0, padding="zeros", kind="rise"), ref, tol=1e-12)


def test_patch_masking_flags_maps_without_positive_values() -> None:
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3).expand(2, 1, 3, 3)
    maps = -torch.arange(1.0, 10.0).view(1, 3, 3).repeat(2, 1, 1)
    maps[1, 2, 2] = 0.5
    r = M.maximal_patch_masking(SumModel(), x, maps, torch.tensor([0, 0]), patch_sizes=(1,), score="logit")
    assert r.no_positive.tolist() == [True, False]
    assert r.centers.tolist() == [[0, 0], [2, 2]]  # the maximum is still defined and used
    same(r.change, [[-1.0], [-9.0]])


class TwoBranch(nn.Module):
    """Defines its layers in the reverse of their execution order; fc_a and fc_b share one shape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc_b = nn.Linear(6, 6)
        self.fc_a = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        h = self.conv(x).relu().mean((2, 3))
        return self.head(self.fc_b(self.fc_a(h).relu()).relu())


def _grad_x_input(m, inp, tgt):
    inp = inp.clone().requires_grad_(True)
    out = m(inp).gather(1, tgt[:, None]).sum()
    (grad,) = torch.autograd.grad(out, inp)
    return (grad * inp).sum(1)


def test_randomisation_execution_order_and_per_layer_seeds() -> None:
    model = TwoBranch().eval()
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(15))
    t = torch.tensor([0, 2])
    assert [n for n, _ in model.named_children()] == ["fc_b", "fc_a", "head", "conv"]  # definition
    assert M.randomisation.execution_order(model, x) == ["conv", "fc_a", "fc_b", "head"]
    r = M.cascading_randomisation(model, x, t, _grad_x_input, seed=100, return_maps=True)
    assert r.layers == ["head", "fc_b", "fc_a", "conv"]  # from the top, in execution order
    # rebuild every cascade step by hand: layer i of the execution order is reset under seed 100 + i
    work = TwoBranch().eval()
    work.load_state_dict(model.state_dict())
    seen = []
    for step, (name, index) in enumerate((("head", 3), ("fc_b", 2), ("fc_a", 1), ("conv", 0))):
        torch.manual_seed(100 + index)
        getattr(work, name).reset_parameters()
        seen.append(getattr(work, name).weight.detach().clone())
        same(r.maps[step], _grad_x_input(work, x, t), tol=1e-6)
        same(r.spearman[:, step], M.spearman(r.original, r.maps[step]))
        same(r.spearman_abs[:, step], M.spearman(r.original.abs(), r.maps[step].abs()))
        same(r.ssim[:, step], M.ssim(r.original, r.maps[step]))
    assert not torch.equal(seen[1], seen[2])  # same-shaped fc_b and fc_a get different weights
    # independent: one layer at a time from the original weights
    ind = M.cascading_randomisation(model, x, t, _grad_x_input, seed=100, independent=True,
                                    layers=["fc_a", "conv"], return_maps=True)
    assert ind.layers == ["fc_a", "conv"]
    solo = TwoBranch().eval()
    solo.load_state_dict(model.state_dict())
    torch.manual_seed(101)
    solo.fc_a.reset_parameters()
    same(ind.maps[0], _grad_x_input(solo, x, t), tol=1e-6)
    # per-layer curves: mean over samples per step, NaN-aware with counts
    curve = M.aggregate_curves(r.spearman)
    assert curve.mean.shape == (4,) and curve.count.tolist() == [2, 2, 2, 2]


def test_batchnorm_randomisation_is_explicit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 2)).eval()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(2.0)
        model[1].weight.fill_(2.0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(16))
    t = torch.tensor([0, 1])
    # init="default": reset_parameters() -> weight 1, bias 0, running mean 0, running variance 1
    r = M.cascading_randomisation(model, x, t, _grad_x_input, layers=["1"], return_maps=True)
    work = copy.deepcopy(model)
    with torch.no_grad():
        work[1].weight.fill_(1.0)
        work[1].bias.zero_()
        work[1].running_mean.zero_()
        work[1].running_var.fill_(1.0)
    same(r.maps[0], _grad_x_input(work, x, t), tol=1e-6)
    # init="normal": N(0, std) for weight and bias from seed + execution index, statistics kept
    nrm = M.cascading_randomisation(model, x, t, _grad_x_input, layers=["1"], init="normal", std=0.5,
                                    seed=3, return_maps=True)
    work = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(3 + 1)  # "1" is the second layer in execution order
    with torch.no_grad():
        for p in work[1].parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    same(nrm.maps[0], _grad_x_input(work, x, t), tol=1e-6)
    assert model[1].running_mean.eq(0.5).all()  # the user's model is untouched
    # maps smaller than the SSIM window: choose a smaller window, or the SSIM cannot be computed
    small = x[:, :, :5, :5]
    lin = nn.Sequential(nn.Flatten(), nn.Linear(75, 2)).eval()
    with pytest.raises(ValueError, match="win_size"):
        M.cascading_randomisation(lin, small, t, _grad_x_input)
    r = M.cascading_randomisation(lin, small, t, _grad_x_input, ssim_win_size=3)
    assert r.ssim.shape == (2, 1)


def test_default_chunk_size_follows_the_device_and_the_image_size():
    from relprop.metrics.perturbation import chunk_size

    assert chunk_size(None, torch.zeros(1, 3, 224, 224)) == 8
    assert chunk_size(None, torch.zeros(1, 3, 32, 32)) == 16  # capped (CPU_MAX_CHUNK)
    assert chunk_size(None, torch.zeros(1, 3, 1000, 1000)) == 1
    assert chunk_size(None, torch.zeros(1, 3, 224, 224, device="meta")) == 64
    assert chunk_size(5, torch.zeros(1, 3, 224, 224)) == 5
    for bad in (0, -2, True, 2.5):
        with pytest.raises(ValueError, match="internal_batch_size"):
            chunk_size(bad, torch.zeros(1, 3, 8, 8))
