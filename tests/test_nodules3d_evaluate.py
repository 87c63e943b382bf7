"""``relprop evaluate`` on the ``nodules3d`` volumes: records in the store, the 3-D metrics against
hand-worked cases, resuming, and a clear error for metrics without a 3-D form."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch

from relprop import Explainer
from relprop.data.nodules3d import Nodules3DDataset
from relprop.evaluate import EvaluationConfig, run_evaluation
from relprop.metrics import (METRICS, inside_total_ratio, outside_inside_ratio, pointing_game, positive_ratio,
                             region_perturbation, weighted_inside_total_ratio)
from relprop.models import load_model

COUNT = 6
METHODS = ("rap", "gradient")
VOLUME_METRICS = ("mu", "pointing_game", "outside_inside_ratio", "positive_ratio", "aopc_morf")
AOPC = {"patch_size": 8, "counts": [0, 1, 2, 4]}


def _config(**kw) -> EvaluationConfig:
    base = dict(dataset="nodules3d", dataset_options={"count": COUNT}, model="nodules3d_vgg", methods=METHODS,
                metrics=VOLUME_METRICS, metric_options={"aopc_morf": AOPC, "pointing_game": {"tolerance": 0}},
                progress=False, batch_size=4)
    base.update(kw)
    return EvaluationConfig(**base)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    store = tmp_path_factory.mktemp("n3") / "n3.sqlite"
    first = run_evaluation(_config(), store)
    return store, first


def _rows(store, sql, *args):
    with sqlite3.connect(store) as db:
        return db.execute(sql, args).fetchall()


def test_runner_writes_the_volume_records(evaluated):
    store, first = evaluated
    assert first.errors == [] and first.processed == COUNT
    assert first.records == COUNT * len(METHODS) * len(VOLUME_METRICS)
    ds = Nodules3DDataset("test", count=COUNT)
    targets = {k: (t, frac) for k, t, frac in _rows(store, "select sample, target, box_fraction from targets")}
    assert len(targets) == COUNT
    model, preprocess = load_model("nodules3d_vgg")
    for i in range(COUNT):
        vol, mask, label = ds.render(i)
        target, frac = targets[ds[i].key]
        assert target == label  # the ground-truth class is explained
        assert frac == pytest.approx(mask.sum() / mask.size)  # the exact voxel mask
        recs = {k.split("{")[0]: v for k, v in
                _rows(store, "select metric, scalar from records where sample = ? and method = 'rap'", ds[i].key)}
        if label == 0:  # negative cube: empty mask, localisation undefined; the perturbation curve is not
            assert recs["mu"] is None and recs["pointing_game"] is None and recs["outside_inside_ratio"] is None
            assert recs["aopc_morf"] is not None
            continue
        x = preprocess(vol)
        maps = Explainer(model, "rap").explain(x, torch.tensor([1])).detach().sum(1)  # (1, 32, 32, 32)
        m = torch.from_numpy(mask)[None]
        assert recs["mu"] == pytest.approx(inside_total_ratio(maps, m).item(), rel=1e-5)
        assert recs["outside_inside_ratio"] == pytest.approx(outside_inside_ratio(maps, m).item(), rel=1e-5)
        assert recs["pointing_game"] == pointing_game(maps, m, tolerance=0).item()
        assert recs["positive_ratio"] == pytest.approx(positive_ratio(maps).item())


def test_a_resumed_run_computes_nothing_new(evaluated):
    store, first = evaluated
    before = _rows(store, "select count(*) from records")[0][0]
    again = run_evaluation(_config(), store)
    assert again.run == first.run and again.pending == 0 and again.processed == 0 and again.records == 0
    assert _rows(store, "select count(*) from records")[0][0] == before


@pytest.mark.parametrize("metric", ["blurred_insertion", "maximal_patch_masking", "topk_distance"])
def test_a_2d_only_metric_on_volumes_is_a_clear_error_before_any_work(tmp_path, metric):
    store = tmp_path / "s.sqlite"
    with pytest.raises(ValueError, match=rf"metric\(s\) {metric} have no 3-D form: .* 'nodules3d' gives volumes"):
        run_evaluation(_config(metrics=("mu", metric), metric_options={}), store)
    assert not store.exists()  # refused before the store was written


def test_the_volume_metrics_are_declared():
    assert {n for n in VOLUME_METRICS} <= {n for n, info in METRICS.items() if info.volumes}
    assert not METRICS["blurred_insertion"].volumes


def test_a_volume_metric_needs_a_3d_model(tmp_path):
    with pytest.raises(ValueError, match="needs a 3-D model such as nodules3d_vgg"):
        run_evaluation(_config(model="shapes_vgg"), tmp_path / "s.sqlite")


# ---- the 3-D metrics against hand-worked cases ---------------------------------------------


def test_mass_in_mask_of_a_4x4x4_volume():
    r = torch.zeros(1, 4, 4, 4)
    r[0, 1, 1, 1], r[0, 1, 2, 1], r[0, 3, 3, 3], r[0, 0, 0, 3] = 3.0, 1.0, 4.0, -2.0
    m = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    m[0, 1:3, 1:3, 1:3] = True  # 8 voxels of 64
    # positive mass 3 + 1 inside, 4 outside: mu = 4 / 8; mu_w = mu * 64 / 8
    torch.testing.assert_close(inside_total_ratio(r, m), torch.tensor([0.5]))
    torch.testing.assert_close(weighted_inside_total_ratio(r, m), torch.tensor([4.0]))
    torch.testing.assert_close(positive_ratio(r), torch.tensor([3 / 64], dtype=torch.float64))
    # signed ratio (Nam et al. 2020, Eq. 11): (mean_out R+ + mean_in |R-|) / (mean_in R+ + mean_out |R-|)
    torch.testing.assert_close(outside_inside_ratio(r, m), torch.tensor([(4 / 56) / (4 / 8 + 2 / 56)]))
    assert pointing_game(r, m, tolerance=0).item() == 0.0  # the maximum (4) lies outside
    assert torch.isnan(inside_total_ratio(r, torch.zeros_like(m))).all()  # a negative cube's empty mask


class _Linear3D(torch.nn.Module):
    """Logits ``(sum(w * x), 0)``: a removed voxel lowers the class-0 logit by its weight times its value."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1, keepdim=True)
        return torch.cat([s, torch.zeros_like(s)], 1)


def test_voxel_cube_perturbation_on_a_linear_model():
    w = torch.arange(64.0).view(1, 1, 4, 4, 4)  # weight of voxel (z, y, x) = 16 z + 4 y + x
    x = torch.ones(1, 1, 4, 4, 4)
    model = _Linear3D(w).eval()
    # 2x2x2 cubes scored by their summed map (= weights): MoRF removes the cube at (2:4, 2:4, 2:4)
    # (sum 4 * (32 + 48) + 4 * (8 + 12) + 4 * (2 + 3) = 420), then (2:4, 2:4, 0:2) (420 - 16 = 404)
    c = region_perturbation(model, x, w[:, 0], torch.tensor([0]), counts=[0, 1, 2, 8], patch_size=2, removal="zero")
    torch.testing.assert_close(c.scores, torch.tensor([[2016.0, 1596.0, 1192.0, 0.0]], dtype=torch.float64))
    assert c.n_perturbed.tolist() == [[0, 8, 16, 64]]
    torch.testing.assert_close(c.aopc(), torch.tensor([(0 + 420 + 824 + 2016) / 4], dtype=torch.float64))
    lerf = region_perturbation(model, x, w[:, 0], torch.tensor([0]), counts=[0, 1], order="lerf", patch_size=2,
                               removal=-1.0)
    # the cube at the origin: weights sum to 4 * 16 + 4 * 4 + 4 * 1 = 84; x goes from 1 to -1 there
    torch.testing.assert_close(lerf.scores, torch.tensor([[2016.0, 2016.0 - 2 * 84]], dtype=torch.float64))
    # cubes of 3 on a 5-voxel side: no padding before, 1 after, so 8 regions of 27, 18, 12 or 8 voxels;
    # by their mean weight the first (0:3, 0:3, 0:3) is the least relevant: weights 25 z + 5 y + x sum
    # to 9 * 25 * 3 + 9 * 5 * 3 + 9 * 3 = 837 there, of 0 + ... + 124 = 7750
    w5 = torch.arange(125.0).view(1, 1, 5, 5, 5)
    c5 = region_perturbation(_Linear3D(w5).eval(), torch.ones(1, 1, 5, 5, 5), w5[:, 0], torch.tensor([0]),
                             counts=[0, 1, 8], order="lerf", patch_size=3, region_score="mean", removal="zero")
    assert c5.n_perturbed.tolist() == [[0, 27, 125]]
    torch.testing.assert_close(c5.scores, torch.tensor([[7750.0, 7750.0 - 837.0, 0.0]], dtype=torch.float64))


def test_perturbation_on_volumes_refuses_what_has_no_3d_form():
    model = _Linear3D(torch.ones(1, 1, 4, 4, 4)).eval()
    x, r = torch.ones(1, 1, 4, 4, 4), torch.rand(1, 4, 4, 4)
    with pytest.raises(ValueError, match="removal 'blur' has no 3-D form"):
        region_perturbation(model, x, r, [0], counts=[0, 1], removal="blur")
    with pytest.raises(ValueError, match="incremental evaluation is impossible here: .* volumes"):
        region_perturbation(model, x, r, [0], counts=[0, 1], patch_size=2, incremental=True)
    with pytest.raises(ValueError, match=r"must be \(B, D, H, W\) matching"):
        region_perturbation(model, x, r[:, :2], [0], counts=[0, 1])
    assert math.isfinite(region_perturbation(model, x, r, [0], counts=[0, 5], removal="noise").aopc().item())


def test_the_report_names_the_volume_input(evaluated, tmp_path):
    from relprop.evaluate.report import write_report

    store, _ = evaluated
    write_report(store, tmp_path / "rep")
    assert "input volume 1 x 32 x 32 x 32" in (tmp_path / "rep" / "report.md").read_text()


# ---- the reproduction's volume section ---------------------------------------------------------


def test_the_volume_job_explains_the_positive_cubes_with_every_3d_method():
    from relprop.reproduce import protocols as P

    jobs = P.jobs("small", ["nodules3d_vgg"])
    assert [j.papers for j in jobs] == [("volumes",)]
    c = jobs[0].config
    assert c.dataset == P.VOLUME_DATASET and c.targets == "labels" and c.dataset_options == {"count": 80}
    assert {"rap", "rap-journal", "lrp-epsilon", "lrp-alpha1beta0", "lrp-cmp", "gradient",
            "input-x-gradient", "integrated-gradients", "smoothgrad"} <= set(c.methods)
    assert not {"attention-rollout", "transformer-attribution"} & set(c.methods)
    cubes = P.nodule_cubes(count=10)
    assert len(cubes) == 5 and all(s.labels == [1] and s.mask.any() for s in cubes)
    assert not any(j.papers == ("volumes",) for j in P.jobs("small", ["shapes_vgg"]))


def test_the_volume_section_of_the_results(tmp_path):
    from relprop.reproduce import protocols as P
    from relprop.reproduce.run import main
    from relprop.reproduce.rundata import load_runs, scalar_items

    P.SIZES["test-volumes"] = P.Size(shapes={}, randomisation=0, volumes={"nodules3d_vgg": 4})
    try:
        rc = main(["--store", str(tmp_path / "r.sqlite"), "--size", "test-volumes", "--models", "nodules3d_vgg",
                   "--methods", "rap,gradient", "--out", str(tmp_path / "results.md"), "--no-progress"])
    finally:
        del P.SIZES["test-volumes"]
    assert rc == 0
    text = (tmp_path / "results.md").read_text()
    section = text[text.index("## Beyond the papers: 3-D volumes"):text.index("## With ImageNet")]
    assert "#### Localisation in the nodule mask (nodules3d_vgg, 2 cubes with a nodule)" in section
    runs = load_runs([tmp_path / "r.sqlite"])
    assert [r.protocol for r in runs] == ["volumes"] and runs[0].dataset == "nodules3d"
    run = runs[0]
    mu = P.key("mu")
    items = scalar_items(run, "rap", mu)
    assert len(items) == 2  # both positive cubes, nothing else
    mean = sum(i[2] for i in items) / 2
    row = next(line for line in section.splitlines() if line.startswith("| rap |"))
    cell = row.strip("|").split("|")[1].strip()
    assert cell.startswith(f"{mean:.3f} [")
    low, high = (float(v) for v in cell.split("[")[1].rstrip("]").split(","))
    assert low - 1e-3 <= mean <= high + 1e-3
    assert "| gradient |" in section and "pointing game" in section
    # Fig. 8, drawn by the reproduction and linked in the section
    assert (tmp_path / "images" / "results" / "nodules3d_vgg_001_fig8_volumes.png").is_file()
    assert "(images/results/nodules3d_vgg_001_fig8_volumes.png)" in section
