"""The evaluation runner: SQLite store, resume after SIGKILL, torchrun sharding, corrupt samples, report.

A tiny data set and model (``evaluate_fixtures.py``) keep every run to a few seconds; subprocesses
find them through ``PYTHONPATH``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
from relprop.cli import build_parser, main
from relprop.data.base import to_model_input
from relprop.evaluate import EvaluationConfig, Store, run_evaluation
from relprop.evaluate.cli import config_from_args
from relprop.evaluate.store import BatchRows, to_json
from relprop.metrics import inside_total_ratio, pointing_game

import evaluate_fixtures as fx

TESTS = Path(__file__).resolve().parent
COUNT = 24
METHODS = "gradient,lrp-epsilon"
METRICS = "pointing_game,mu,energy_pointing_game,aopc_morf,maximal_patch_masking"


def _args(store: Path, count: int = COUNT, extra: tuple[str, ...] = ()) -> list[str]:
    return ["evaluate", "--dataset", "evaluate_fixtures:tiny_dataset", "--dataset-option", f"count={count}",
            "--model", "evaluate_fixtures:tiny_model", "--methods", METHODS, "--metrics", METRICS,
            "--metric-option", "aopc_morf.counts=[0,8,16,32]", "--metric-option", "aopc_morf.removal=noise",
            "--batch-size", "2", "--dtype", "float64", "--store", str(store), "--no-progress", *extra]


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a worker that aborts shows where
    env.update(extra)
    return env


def _config(store: Path, count: int = COUNT, extra: tuple[str, ...] = ()) -> EvaluationConfig:
    return config_from_args(build_parser().parse_args(_args(store, count, extra)))


def _records(path: Path) -> dict:
    con = sqlite3.connect(path)
    rows = con.execute("SELECT sample, target, method, metric, scalar, value FROM records").fetchall()
    con.close()
    return {r[:4]: (r[4], json.loads(r[5])) for r in rows}


def _flat(value) -> list[float]:
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _flat(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in _flat(v)]
    return [float(value)]


def _assert_same(a: dict, b: dict, rtol: float = 1e-12) -> None:
    """Same keys; values equal up to float64 rounding, NaN where the other has NaN."""
    assert set(a) == set(b)
    for key in a:
        (sa, va), (sb, vb) = a[key], b[key]
        assert (sa is None) == (sb is None), key
        x, y = np.array(_flat(va)), np.array(_flat(vb))
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12, equal_nan=True, err_msg=str(key))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process run."""
    store = tmp_path_factory.mktemp("ref") / "ref.sqlite"
    summary = run_evaluation(_config(store), store)
    assert summary.processed == COUNT and not summary.errors
    return store


def test_store_keeps_nan_and_ignores_duplicates(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        run = store.register_run({"dataset": "d", "model": "m", "targets": "labels"}, [("g", "g", {})], [])
        rows = BatchRows(samples=[(0, "a", "a.png", 1, "ok")], targets=[("a", 2, 2, 0.5, False)],
                         records=[("a", 2, "g", "mu", math.nan, to_json([1.0, math.nan]))])
        store.write_batch(run, rows)
        store.write_batch(run, rows)
        assert store.register_run({"model": "m", "targets": "labels", "dataset": "d"}, [], []) == run
        got = list(store.records(run))
        assert len(got) == 1 and store.count_records() == 1
        _, _, _, _, scalar, value = got[0]
        assert scalar is None and value[0] == 1.0 and math.isnan(value[1])


def test_records_match_direct_metric_calls(reference: Path) -> None:
    """Targets, masks and values in the store equal a computation by hand for sample 1 (two boxes)."""
    model, _ = fx.tiny_model()
    model = model.double()
    sample = fx.TinyDataset(count=COUNT)[1]
    mi = to_model_input(sample, fx.SIZE, fx.MEAN, fx.STD)
    recs = _records(reference)
    stored_targets = sorted({k[1] for k in recs if k[0] == sample.key})
    assert stored_targets == sample.labels
    for label in sample.labels:
        union = np.any([o.mask for o in sample.objects if o.label == label], axis=0)
        mask = torch.nn.functional.interpolate(torch.tensor(union, dtype=torch.float64)[None, None],
                                               size=(fx.SIZE, fx.SIZE), mode="nearest")[0, 0] > 0.5
        x = mi.image[None].double()
        maps = relprop.explain(model, x, target=label, method="gradient").sum(1)
        mu = float(inside_total_ratio(maps, mask[None])[0])
        hit = float(pointing_game(maps, mask[None])[0])
        assert recs[(sample.key, label, "gradient", "mu")][1] == pytest.approx(mu, rel=1e-12)
        assert recs[(sample.key, label, "gradient", "pointing_game")][1] == hit
    with Store(reference, readonly=True) as store:
        info = store.targets(store.runs()[0]["id"])
    label = sample.labels[0]
    assert info[(sample.key, label)]["predicted"] == int(model(mi.image[None].double()).argmax())


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "killed.sqlite"
    cmd = [sys.executable, "-m", "relprop.cli", *_args(store)]
    total = len(_records(reference))
    proc = subprocess.Popen(cmd, env=_env(TINY_DELAY="0.15"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stored = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    with sqlite3.connect(store, timeout=1) as con:
                        stored = con.execute("SELECT COUNT(*) FROM records").fetchone()[0]
                except sqlite3.OperationalError:  # schema not created yet
                    stored = 0
                if stored:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = _records(store)
    assert 0 < len(partial) < total
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = _records(store)
    assert len(resumed) == total
    _assert_same(resumed, _records(reference), rtol=1e-9)
    for key, value in partial.items():  # records written before the kill were kept, not redone
        assert resumed[key] == value
    con = sqlite3.connect(store)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT idx) FROM samples").fetchone() == (COUNT, COUNT)
    assert con.execute("SELECT hash FROM runs").fetchall() == sqlite3.connect(reference).execute(
        "SELECT hash FROM runs").fetchall()
    con.close()


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "dist.sqlite"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "relprop.cli", *_args(store)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_same(_records(store), _records(reference))
    con = sqlite3.connect(store)
    assert con.execute("SELECT COUNT(DISTINCT idx) FROM samples").fetchone()[0] == COUNT
    con.close()


@pytest.mark.parametrize("world, ends", [("2", True), ("1", False)])
def test_a_torchrun_worker_ends_without_interpreter_finalisation(world: str, ends: bool) -> None:
    """Under torchrun the command line ends its process with os._exit once the command returned
    (interpreter finalisation after a gloo group can abort a finished worker); elsewhere it returns."""
    script = ("import atexit, sys; atexit.register(lambda: print('finalised')); "
              "from relprop.cli import main; sys.argv = ['relprop', 'methods']; print('exit', main())")
    done = subprocess.run([sys.executable, "-c", script], env=_env(WORLD_SIZE=world, RANK="0"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "lrp-cmp" in done.stdout
    assert ("finalised" not in done.stdout and "exit" not in done.stdout) if ends else \
        done.stdout.rstrip().endswith("exit 0\nfinalised")


def test_rerun_with_an_extra_method_computes_only_that_method(reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "more.sqlite"
    shutil.copy(reference, store)
    before = _records(store)
    config = _config(store)
    config.methods = [*config.methods, "input-x-gradient"]
    summary = run_evaluation(config, store)
    after = _records(store)
    added = {k for k in after if k not in before}
    assert added and {k[2] for k in added} == {"input-x-gradient"}
    assert summary.records == len(added)
    assert all(after[k] == v for k, v in before.items())
    assert run_evaluation(config, store).pending == 0


def test_corrupt_sample_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    store = tmp_path / "corrupt.sqlite"
    config = _config(store, count=6, extra=("--dataset-option", "corrupt=[3]"))
    summary = run_evaluation(config, store)
    assert summary.processed == 6
    with Store(store, readonly=True) as db:
        run = db.runs()[0]["id"]
        errors = db.errors(run)
        assert [(e["idx"], e["path"], e["method"]) for e in errors] == [(3, "/data/tiny/003.png", "")]
        assert "truncated" in errors[0]["reason"]
        samples = {s for s, *_ in db.records(run)}
        assert samples == {f"tiny/{i:03d}" for i in (0, 1, 2, 4, 5)}
        assert db.sample_count(run) == {"ok": 5, "error": 1}
    again = run_evaluation(config, store)
    assert again.pending == 0
    with Store(store, readonly=True) as db:
        assert len(db.errors(db.runs()[0]["id"])) == 1


def test_missing_annotations_fail_before_starting(tmp_path: Path) -> None:
    store = tmp_path / "none.sqlite"
    config = _config(store, count=4, extra=("--dataset-option", "objects=false"))
    with pytest.raises(ValueError, match="need object boxes or masks"):
        run_evaluation(config, store)
    assert not store.exists()
    config.metrics = ["positive_ratio", "aopc_morf"]
    config.metric_options = {"aopc_morf": {"counts": [0, 4]}}
    summary = run_evaluation(config, store)  # metrics without masks run on image-level labels
    n_pairs = sum(len(fx.TinyDataset(4)[i].labels) for i in range(4))
    assert summary.records == len(_records(store)) == n_pairs * 2 * 2


def test_cli_reports_bad_options(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "x.sqlite")
    code = main(_args(Path(store), 2, ("--metric-option", "mu.bogus=1")))
    assert code == 2 and "metric 'mu' has no option 'bogus'" in capsys.readouterr().err
    code = main([*_args(Path(store), 2)[:-1], "--method-option", "gradient.eps=1", "--no-progress"])
    assert code == 2 and "'eps'" in capsys.readouterr().err


def test_report_tables_and_plots_match_the_store(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["report", str(reference), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "gradient" in md and "lrp-epsilon" in md and "mu" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any("curve_aopc_morf" in p for p in pngs)
    assert any("curve_energy_pointing_game" in p for p in pngs)
    assert any(p.endswith("mu_by_box_size.png") for p in pngs)
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    recs = _records(reference)
    with open(out / "summary.csv") as fh:
        summary = {(r["method"], r["name"], r["statistic"]): r for r in csv.DictReader(fh)}
    for method in ("gradient", "lrp-epsilon"):
        mu = np.array([np.nan if v[0] is None else v[0] for k, v in recs.items()
                       if k[2] == method and k[3] == "mu"])
        row = summary[(method, "mu", "mean")]
        assert float(row["mean"]) == pytest.approx(np.nanmean(mu), rel=1e-12)
        assert int(row["count"]) == int(np.isfinite(mu).sum()) and int(row["total"]) == len(mu)
        # pointing game: macro mean of per-class accuracies, by hand
        per_class: dict[int, list[float]] = {}
        for k, v in recs.items():
            if k[2] == method and k[3] == "pointing_game" and v[0] is not None:
                per_class.setdefault(k[1], []).append(v[0])
        macro = np.mean([np.mean(v) for v in per_class.values()])
        assert float(summary[(method, "pointing_game", "class_macro")]["mean"]) == pytest.approx(macro)
    with open(out / "curves.csv") as fh:
        curves = [r for r in csv.DictReader(fh) if r["method"] == "gradient" and r["name"] == "aopc_morf"]
    scores = np.array([v[1]["scores"] for k, v in recs.items() if k[2] == "gradient" and k[3].startswith("aopc")])
    got = [float(r["mean"]) for r in curves if r["statistic"] == "scores"]
    np.testing.assert_allclose(got, scores.mean(0), rtol=1e-12)
    assert [int(r["x"]) for r in curves if r["statistic"] == "scores"] == [0, 8, 16, 32]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["shapes_vgg", "shapes_resnet"])
def test_every_method_on_shapes(model: str, tmp_path: Path) -> None:
    """Every method on two ``shapes`` scenes with a shipped architecture: a record for every
    (explained class, method, metric), no error. The shipped weights are used when the package has
    them, random ones otherwise (the pipeline is the same)."""
    from relprop.models.shapes_models import weights_path

    from relprop.attribution.attention_maps import ATTENTION_METHODS

    methods = [m for m in relprop.methods() if m not in ATTENTION_METHODS]  # they refuse CNNs
    store = tmp_path / "shapes.sqlite"
    config = EvaluationConfig(
        dataset="shapes", model=model, methods=methods, dataset_options={"count": 2},
        model_options={} if weights_path(model).is_file() else {"weights": False},
        metrics=["pointing_game", "mu", "energy_pointing_game", "aopc_morf"],
        metric_options={"aopc_morf": {"counts": [0, 100]}}, batch_size=2, progress=False)
    summary = run_evaluation(config, store)
    assert summary.errors == []
    from relprop.data.registry import get_dataset

    data = get_dataset("shapes", count=2)
    pairs = sum(len(data[i].labels) for i in range(2))
    assert summary.records == pairs * len(methods) * 4
    defined = {k[2] for k, v in _records(store).items() if v[0] is not None}
    assert defined == set(methods)  # every method has some defined value


def _targets(store: Path) -> dict:
    with Store(store, readonly=True) as db:
        return db.targets(db.runs()[0]["id"])


def test_difficult_flags_and_predicted_targets(reference: Path, tmp_path: Path) -> None:
    data = fx.TinyDataset(count=COUNT)
    # without a list: EBP's rule (mask < 1/4 of the image and >= 2 classes in the image)
    for (key, label), info in _targets(reference).items():
        sample = data[int(key.split("/")[1])]
        union = np.any([o.mask for o in sample.objects if o.label == label], axis=0)
        small = torch.nn.functional.interpolate(torch.tensor(union, dtype=torch.float64)[None, None],
                                                size=(fx.SIZE, fx.SIZE), mode="nearest")
        assert info["box_fraction"] == float(small.mean())
        assert info["difficult"] == (len(sample.labels) >= 2 and info["box_fraction"] < 0.25)
    # with the data set's list: flagged classes, and every pair of an unlisted image
    store = tmp_path / "listed.sqlite"
    run_evaluation(_config(store, count=6, extra=("--dataset-option", "difficult_list=true")), store)
    for (key, label), info in _targets(store).items():
        assert info["difficult"] == (key == "tiny/000" or label == 0)
    # top-1 class with the foreground (all objects) as its mask
    store = tmp_path / "predicted.sqlite"
    run_evaluation(_config(store, count=6, extra=("--targets", "predicted")), store)
    model, _ = fx.tiny_model()
    got = _targets(store)
    assert len(got) == 6
    for i in range(6):
        sample = data[i]
        x = to_model_input(sample, fx.SIZE, fx.MEAN, fx.STD).image[None].double()
        top = int(model.double()(x).argmax())
        info = got[(sample.key, top)]
        assert info["predicted"] == top
        mask = to_model_input(sample, fx.SIZE, fx.MEAN, fx.STD).masks.any(0)
        assert info["box_fraction"] == float(mask.double().mean())


def test_input_spec_is_read_from_the_preprocessing() -> None:
    from relprop.evaluate.specs import input_spec, parse_options

    _, pre = relprop.load_model("resnet18")  # random weights: resize 256, centre crop 224
    spec = input_spec(pre)
    assert (spec.size, spec.mean, spec.std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    _, pre = fx.tiny_model()
    assert input_spec(pre).size == fx.SIZE and input_spec(pre, size=32).size == 32
    with pytest.raises(ValueError, match="--input-size"):
        input_spec(object())
    assert parse_options(["a=1", "b=[1,2]", "c=x.y"], "opt") == {"a": 1, "b": [1, 2], "c": "x.y"}
    assert parse_options(["lrp-epsilon.epsilon=0.5"], "opt", scoped=True) == {"lrp-epsilon": {"epsilon": 0.5}}
    with pytest.raises(ValueError, match="NAME.KEY=VALUE"):
        parse_options(["epsilon=0.5"], "opt", scoped=True)


def test_segmentation_counts_wiring_pools_like_the_accumulator() -> None:
    from relprop.evaluate.metricset import PairBatch, metric_spec
    from relprop.metrics import SegmentationAccumulator
    from relprop.metrics.segmentation import COUNT_FIELDS, pooled_segmentation

    g = torch.Generator().manual_seed(5)
    maps = torch.randn(6, 8, 8, generator=g)
    masks = torch.rand(6, 8, 8, generator=g) > 0.5
    for options in ({"threshold": "zero"}, {"threshold": "mean", "sign": "positive"}):
        spec = metric_spec("segmentation_counts", options, size=8)
        assert spec.needs_mask and spec.needs_map and spec.category == "segmentation"
        batch = PairBatch(images=torch.zeros(6, 3, 8, 8), masks=masks, targets=torch.zeros(6, dtype=torch.long),
                          seeds=list(range(6)), model=torch.nn.Identity())
        out = spec.compute(batch, maps, spec.options)
        assert len(out) == 6 and all(set(v) == set(COUNT_FIELDS) for _, v in out)
        assert all(s == v["correct"] / v["pixels"] for s, v in out) and out[0][1]["pixels"] == 64
        json.loads(to_json([v for _, v in out]))  # stored as JSON
        acc = SegmentationAccumulator(with_ap=False, **options)
        acc.update(maps, masks)
        ref = acc.compute()
        pix, miou, _ = pooled_segmentation([[v[f] for f in COUNT_FIELDS] for _, v in out])
        assert pix == pytest.approx(ref.pixel_accuracy) and miou == pytest.approx(ref.miou)
    with pytest.raises(ValueError, match="no option"):
        metric_spec("segmentation_counts", {"constant_map": "skip"})


def test_attention_methods_are_left_out_on_a_cnn(tmp_path: Path) -> None:
    """``--methods all`` on a CNN: the methods that read attention probabilities are left out with a
    warning naming them, the others are evaluated without error."""
    store = tmp_path / "all.sqlite"
    config = _config(store, count=2, extra=("--methods", "gradient,attention-rollout,transformer-attribution"))
    with pytest.warns(UserWarning, match="has no attention: attention-rollout, transformer-attribution left out"):
        summary = run_evaluation(config, store)
    assert summary.errors == []
    assert {k[2] for k in _records(store)} == {"gradient"}
