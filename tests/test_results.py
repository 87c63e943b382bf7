"""docs/results.md pipeline: protocols -> runner -> store -> results document (tiny, random weights)."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import sys
from pathlib import Path

import pytest
import torch

from relprop.reproduce import protocols as P
from relprop.reproduce.paper_orders import Order, verdict
from relprop.reproduce.results import write_results
from relprop.evaluate.runner import Evaluation, EvaluationConfig, run_evaluation
from relprop.evaluate.store import Store

ROOT = Path(__file__).resolve().parents[1]
METHODS = "guided-backprop,sglrp,gradient"


def _reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """benchmarks/reproduce.py on two shapes images, random weights, two methods."""
    tmp = tmp_path_factory.mktemp("results")
    P.SIZES["test"] = P.Size(shapes={"shapes_vgg": 2}, randomisation=0, lerf_step=1000)
    try:
        torch.set_num_threads(2)
        rc = _reproduce().main(["--store", str(tmp / "r.sqlite"), "--size", "test", "--models", "shapes_vgg",
                                "--model-option", "shapes_vgg.weights=false", "--methods", METHODS,
                                "--out", str(tmp / "results.md"), "--no-figures", "--no-progress"])
    finally:
        del P.SIZES["test"]
    assert rc == 0
    return tmp


def _row(text: str, heading: str, first_cell: str) -> list[str]:
    """The cells of the row starting with ``first_cell`` in the table after ``heading``."""
    part = text[text.index(heading):]
    for line in part.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r} after {heading!r}")


def test_document_has_the_papers_tables(pipeline) -> None:
    text = (pipeline / "results.md").read_text()
    for heading in ("## Nam et al. 2020 [Nam2020-RAP]", "## Nam, Choi and Lee [Nam-RAP-Journal]",
                    "## Nam et al. [Nam-Hedge]", "## Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP]",
                    "## Iwana et al. 2019 [Iwana2019-SGLRP]", "Table 1 — outside-inside ratio",
                    "Table I — positive (MoRF) removal", "Table 1 — pointing game", "Table I — mu_w", "Fig. 11 (a)", "Fig. 11 (b)",
                    "Fig. 13", "With ImageNet, VOC and COCO"):
        assert heading in text, heading
    assert text.count("**Ordering vs paper**") >= 10
    pngs = re.findall(r"\]\((images/results/[^)]+\.png)\)", text)
    assert pngs and all((pipeline / p).is_file() for p in pngs)
    assert "Fig. 7 — accuracy under LeRF" in text and "Fig. 13 — energy-based pointing game" in text


def test_numbers_come_from_the_store(pipeline, tmp_path) -> None:
    store, out = pipeline / "r.sqlite", tmp_path / "again.md"
    write_results([store], out)
    before = _row(out.read_text(), "Table I — mu_w", "guided-backprop")
    conn = sqlite3.connect(store)
    with conn:
        n = conn.execute("UPDATE records SET scalar = 0.777 WHERE method = 'guided-backprop' AND metric = 'mu'").rowcount
    conn.close()
    assert n > 0
    from relprop.cli import main

    assert main(["report", str(store), "--results", str(out)]) == 0
    after = _row(out.read_text(), "Table I — mu_w", "guided-backprop")
    # column mu: every pair 0.777, so its 95% interval is that point
    assert after[4] == "0.777 [0.777, 0.777]" and before[4].split(" [")[0] != "0.777"
    assert after[1] == before[1]  # mu_w has its own records


def test_table_1_pools_segmentation_counts(pipeline, tmp_path) -> None:
    import json
    import shutil

    from relprop.metrics.segmentation import COUNT_FIELDS, pooled_segmentation

    store, out = tmp_path / "seg.sqlite", tmp_path / "seg.md"
    shutil.copy(pipeline / "r.sqlite", store)
    heading = "Table 1 — outside-inside ratio, pixel accuracy and mIoU (shapes_vgg)"
    zero = P.key("segmentation_counts", {"threshold": "zero"})
    mean = P.key("segmentation_counts", {"threshold": "mean", "sign": "positive"})
    conn = sqlite3.connect(store)
    rows = conn.execute("SELECT value FROM records WHERE method = 'gradient' AND metric = ?", (zero,)).fetchall()
    conn.close()
    assert len(rows) == 2
    pix, miou, _ = pooled_segmentation([[json.loads(v)[f] for f in COUNT_FIELDS] for (v,) in rows])
    write_results([store], out)
    before = _row(out.read_text(), heading, "gradient")
    assert [c.split(" [")[0] for c in before[3:5]] == [f"{pix * 100:.1f}", f"{miou * 100:.1f}"]
    assert before[-1] == "2/2"
    # hand-set counts: pooled pixel accuracy 4/8, mIoU (1/10 + 1/2) / 2, per-image mean IoU (1 + 0) / 2
    counts = [dict(correct=4, pixels=4, intersection_bg=1, union_bg=1, intersection_fg=1, union_fg=1),
              dict(correct=0, pixels=4, intersection_bg=0, union_bg=9, intersection_fg=0, union_fg=1)]
    conn = sqlite3.connect(store)
    with conn:
        keys = conn.execute("SELECT sample, target FROM records WHERE method = 'gradient' AND metric = ? "
                            "ORDER BY sample", (mean,)).fetchall()
        for (sample, target), c in zip(keys, counts):
            conn.execute("UPDATE records SET value = ? WHERE method = 'gradient' AND metric = ? AND sample = ? "
                         "AND target = ?", (json.dumps(c), mean, sample, target))
    conn.close()
    write_results([store], out)
    after = _row(out.read_text(), heading, "gradient")
    # bootstrap over the two images: both first (100%), both second (0%) or one of each (the estimate)
    assert after[5:7] == ["50.0 [0.0, 100.0]", "30.0 [0.0, 100.0]"]
    assert after[3:5] == before[3:5] and after[7:9] == before[7:9]  # other columns: their own records
    text = out.read_text()
    assert "not intersections and unions accumulated" not in text and "per-image IoU" in text


def test_pointing_p_subset_uses_target_scores(pipeline, tmp_path) -> None:
    store, out = pipeline / "r.sqlite", tmp_path / "p.md"
    conn = sqlite3.connect(store)
    with conn:  # no class predicted: the P columns become undefined, L stays
        conn.execute("UPDATE records SET scalar = -1.0, value = '-1.0' WHERE metric = 'target_score'")
    conn.close()
    write_results([store], out)
    row = _row(out.read_text(), "Table 1 — pointing game", "guided-backprop")
    assert row[3] == "–" and row[1] != "–"


def test_run_variants_of_one_method_and_metric(tmp_path) -> None:
    cfg = EvaluationConfig(dataset="shapes", model="shapes_vgg", model_options={"weights": False},
                           methods=["lrp-cmp"], method_options={"lrp-cmp": [{}, {"alpha": 2}]},
                           metrics=["outside_inside_ratio", "target_score"],
                           metric_options={"outside_inside_ratio": [{}, {"sign": "positive"}]},
                           limit=1, progress=False)
    run_evaluation(cfg, tmp_path / "v.sqlite")
    with Store(tmp_path / "v.sqlite", readonly=True) as db:
        keys = {(r[2], r[3]) for r in db.records(db.runs()[0]["id"])}
    assert {m for m, _ in keys} == {"lrp-cmp", 'lrp-cmp{"alpha":2}', "-"}
    assert ("lrp-cmp", 'outside_inside_ratio{"sign":"positive"}') in keys
    with pytest.raises(ValueError, match="named twice"):
        Evaluation(EvaluationConfig(dataset="shapes", model="shapes_vgg", model_options={"weights": False},
                                    methods=["lrp-cmp"], method_options={"lrp-cmp": [{}, {}]}, limit=1))
    with pytest.raises(ValueError, match="list of dicts"):
        Evaluation(EvaluationConfig(dataset="shapes", model="shapes_vgg", model_options={"weights": False},
                                    methods=["lrp-cmp"], method_options={"lrp-cmp": []}, limit=1))


def test_target_score_is_the_logit() -> None:
    import relprop.metrics as M

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x, t = torch.randn(4, 3, 2, 2), torch.tensor([0, 2, 1, 1])
    expected = model(x).gather(1, t[:, None])[:, 0]
    assert torch.allclose(M.target_score(model, x, t), expected)
    assert torch.allclose(M.target_score(model, x, t, score="softmax"),
                          model(x).softmax(1).gather(1, t[:, None])[:, 0])


def test_boxes_only_drops_masks() -> None:
    data = P.boxes_only("shapes", count=2)
    s = data[0]
    assert s.objects and all(o.mask is None for o in s.objects)
    assert [o.box for o in s.objects] == [o.box for o in P.boxes_only("shapes", count=2).inner[0].objects]


def test_scaling_of_paper_counts() -> None:
    assert P.scaled_count(250, 224) == 250 and P.scaled_count(250, 64) == 20
    assert P.table_i_options(64)["pos_removal"]["counts"] == [20, 41, 82, 163, 327, 4096]
    assert P.pointing_options(64) == {"tolerance": 4} and P.pointing_options(224) == {"tolerance": 15}


def test_verdict_counts_pairwise_orders() -> None:
    order = Order("test", (("a",), ("b", "c"), ("d",)), why="reason")
    assert "**agrees**" in verdict(order, {"a": 3, "b": 2, "c": 2.5, "d": 1}, higher=True)
    text = verdict(order, {"a": 3, "b": 2, "c": 2.5, "d": 1}, higher=False)
    assert "**disagrees**" in text and "Why: reason" in text
    part = verdict(order, {"a": 3, "b": 4, "c": 2, "d": 1}, higher=True)
    assert "**partly agrees**" in part and "4 of 5" in part and "b before a" in part
    assert "not comparable" in verdict(order, {"x": 1.0}, higher=True)


def test_jobs_cover_every_protocol() -> None:
    jobs = P.jobs("small", ["shapes_vgg", "efficientnet_lite0"])
    papers = {p for j in jobs for p in j.papers}
    assert papers == {"000", "001", "002", "003", "004", "transformers"}
    loc = next(j for j in jobs if "localisation" in j.label and j.config.model == "shapes_vgg")
    assert len(loc.config.method_options["lrp-cmp"]) == len(P.CMP_VARIANTS)
    hv = next(j for j in jobs if "hedge" in j.label and j.config.model == "shapes_vgg")
    assert hv.config.dataset == loc.config.dataset and hv.config.targets == loc.config.targets  # same run
    hedge = hv.config.method_options["hedge"]  # Table 2 rows and Fig. 7's gammas
    assert len(hedge) == len(P.HEDGE_ABLATION) + len(P.HEDGE_GAMMAS) - 1
    assert {h.get("gamma", 2.0) for h in hedge} == set(P.HEDGE_GAMMAS)
    assert {"second", "labels", "predicted"} <= {j.config.targets for j in jobs}
    assert all(j.config.limit == 64 for j in jobs if j.config.model == "shapes_vgg"
               and ("localisation" in j.label or "segmentation" in j.label) and "transformers" not in j.papers)
    only = P.jobs("small", ["shapes_vgg"], methods=["sglrp"])
    assert only and all(j.config.methods == ["sglrp"] for j in only)



def _order_tables() -> dict[str, set[str]]:
    """ORDERS key -> the labels that its table or figure shows (for a VGG, which has every method)."""
    from relprop.reproduce.sections.paper003 import _cmp_rows

    vgg = "shapes_vgg"
    out = {k: set(P.table_1_000(vgg)) for k in ("000-oi-all", "000-oi-pos", "000-pixacc", "000-miou")}
    out["000-lerf"] = set(P.M000)
    out["001-pos"] = set(P.table_i_pos_001(vgg))
    out["001-neg"] = out["001-dk"] = set(P.M001)
    out.update({k: set(P.M002) for k in ("002-pg-L-all", "002-pg-L-dif", "002-pg-P-all")})
    out["002-insertion"] = set(P.M002_INSERTION)
    out["002-map"] = out["002-outin"] = set(P.M002_TABLE3)
    out["002-ablation"] = set(P.HEDGE_ABLATION)
    out["002-gamma"] = {str(g) for g in P.HEDGE_GAMMAS}
    out["003-muw-pvoc"] = {label for label, _ in _cmp_rows("shapes")} | {"uniform baseline"}
    out["003-muw-imagenet"] = {label for label, _ in _cmp_rows("photos")} | {"uniform baseline"}
    out.update({k: set(P.M004) | {"random"} for k in ("004-patch-gt", "004-patch-second", "004-energy-high",
                                                       "004-energy-low")})
    out["vit-faithfulness"] = set(P.TRANSFORMER_METHODS)
    return out


def test_orders_rank_only_their_tables_methods() -> None:
    """Every method of a paper's ordering is among the methods its table shows: a method put into the wrong
    ORDERS entry, or left out of its protocol's methods, fails here."""
    from relprop.reproduce.paper_orders import ORDERS

    tables = _order_tables()
    assert set(tables) == set(ORDERS)
    for key, order in ORDERS.items():
        named = [m for g in order.groups for m in g]
        assert len(named) == len(set(named)), key
        assert set(named) <= tables[key], (key, sorted(set(named) - tables[key]))
    # the baselines the papers report beside their own methods
    assert "pattern-attribution" in ORDERS["000-oi-pos"].groups[1]
    assert {"agf", "relevance-cam"} <= {m for g in ORDERS["002-map"].groups for m in g}


def test_jobs_compute_what_the_tables_show() -> None:
    """The jobs compute every method of the tables, the VGG-only methods on a VGG only, and the figures
    keep the methods they had."""
    jobs = P.jobs("small", ["shapes_vgg", "shapes_resnet"])

    def methods(model: str, label: str) -> set[str]:
        return {m for j in jobs if j.config.model == model and label in j.label for m in j.config.methods}

    loc, seg = methods("shapes_vgg", "localisation (boxes)"), methods("shapes_vgg", "segmentation")
    assert set(P.table_1_000("shapes_vgg")) | set(P.M002) | set(P.M003) | set(P.M004) <= loc
    assert set(P.table_1_000("shapes_vgg")) | set(P.M002_TABLE3) <= seg
    assert set(P.table_i_pos_001("shapes_vgg")) <= methods("shapes_vgg", "perturbation (Table I")
    pos_only = next(j for j in jobs if j.config.model == "shapes_vgg" and "positive removal only" in j.label)
    assert pos_only.config.metrics == ["aopc_morf", *P.DIAGNOSTICS] and pos_only.config.methods == list(P.M001_POS_VGG)
    # the map statistics behind a reversal are measured beside every curve, on the same images and classes
    curves = {"aopc_morf", "aopc_lerf", "blurred_insertion", "maximal_patch_masking"}
    for job in P.jobs("small", ["shapes_vgg", "efficientnet_lite0", "shapes_vit"]):
        if curves & set(job.config.metrics):
            assert set(P.DIAGNOSTICS) <= set(job.config.metrics), job.label
    for label in ("localisation (boxes)", "segmentation", "perturbation"):
        assert "pattern-attribution" not in methods("shapes_resnet", label), label
    assert methods("shapes_vgg", "blurred insertion") == set(P.M002_INSERTION)
    assert not {"agf", "relevance-cam"} & set(P.M002_INSERTION)


def test_runs_of_prefers_the_current_box_run() -> None:
    """A store continued across the rename of the box data set holds both runs; the tables read the
    current one (it has the methods added since), the earlier one only when alone."""
    from relprop.reproduce.rundata import RunData
    from relprop.reproduce.sections.common import runs_of

    old = RunData(dataset="shapes", model="m", targets="labels", boxes=True, run=1, legacy=True)
    new = RunData(dataset="shapes", model="m", targets="labels", boxes=True, run=12)
    assert runs_of([old, new], "m")["boxes"] is new
    assert runs_of([old], "m")["boxes"] is old

def test_reproduce_is_a_subcommand() -> None:
    from relprop.cli import build_parser

    args = build_parser().parse_args(["reproduce", "--store", "r.sqlite", "--size", "small"])
    assert args.store == "r.sqlite" and args.size == "small" and args.models.startswith("shapes_vgg")
    args = build_parser().parse_args(["report", "r.sqlite", "--results", "out.md"])
    assert args.results == "out.md"


def test_reproduce_command_checks_the_size(tmp_path, capsys) -> None:
    from relprop.cli import main

    assert main(["reproduce", "--store", str(tmp_path / "r.sqlite"), "--size", "huge"]) == 2
    assert "unknown size 'huge'; known: full, paper, small, tiny" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_share_model_reuses_model_and_explainers() -> None:
    from relprop.evaluate import runner

    cfg = EvaluationConfig(dataset="shapes", model="shapes_vgg", model_options={"weights": False},
                           methods=["gradient"], limit=1, share_model=True)
    try:
        a, b = Evaluation(cfg), Evaluation(cfg)
        assert a.model is b.model and a.methods[0][3] is b.methods[0][3]
        c = Evaluation(EvaluationConfig(dataset="shapes", model="shapes_vgg", model_options={"weights": False},
                                        methods=["gradient"], limit=1))
        assert c.model is not a.model and c.methods[0][3] is not a.methods[0][3]
    finally:
        runner._SHARED.clear()


def test_verdict_reasons_follow_the_data() -> None:
    from relprop.reproduce.paper_orders import DATA_PHOTOS, ORDERS

    order = ORDERS["002-map"]
    ours = {"rsp": 0.1, "hedge": 0.9, "clrp": 0.5, "contrastive-eb": 0.2}
    assert "synthetic shapes" in verdict(order, ours, higher=True)
    text = verdict(order, ours, higher=True, photos=True)
    assert DATA_PHOTOS in text and "synthetic shapes" not in text


@pytest.fixture(scope="module")
def transformer_pipeline(tmp_path_factory):
    """The transformer section's jobs alone (sizes with ``transformers`` only), two scenes, random weights."""
    tmp = tmp_path_factory.mktemp("transformers")
    P.SIZES["test-transformers"] = P.Size(shapes={"shapes_vgg": 2}, randomisation=0, lerf_step=1000,
                                          transformers={"shapes_vgg": 2})
    try:
        torch.set_num_threads(2)
        rc = _reproduce().main(["--store", str(tmp / "r.sqlite"), "--size", "test-transformers", "--models",
                                "shapes_vgg", "--model-option", "shapes_vgg.weights=false", "--methods",
                                "cp-lrp,gradient,sglrp", "--out", str(tmp / "results.md"), "--no-figures",
                                "--no-progress"])
    finally:
        del P.SIZES["test-transformers"]
    assert rc == 0
    return tmp


def test_transformer_section_is_apart_from_the_papers(transformer_pipeline) -> None:
    """The transformer jobs are runs of their own: the papers' tables do not read them, the section does,
    and its MoRF - LeRF column is the per-pair difference of the two AOPCs in the store."""
    from relprop.reproduce.rundata import load_runs
    from relprop.reproduce.sections.transformers import area_between_items

    text = (transformer_pipeline / "results.md").read_text()
    section = text[text.index("## Beyond the papers: transformers"):text.index("## With ImageNet")]
    assert "#### Localisation (shapes_vgg" in section and "#### Faithfulness (shapes_vgg" in section
    runs = load_runs([transformer_pipeline / "r.sqlite"])
    mine = [r for r in runs if r.protocol == "transformers"]
    assert len(mine) == 2 and {r.boxes for r in mine} == {True, False}
    assert all(r.dataset == "shapes" for r in mine)
    papers = [r for r in runs if r.protocol == "papers"]
    assert papers and all(not P.is_transformer_run(r.dataset) for r in papers)
    pred = next(r for r in mine if not r.boxes)
    options = P.faithfulness_options(64)
    morf, lerf = P.key("aopc_morf", options), P.key("aopc_lerf", options)
    items = area_between_items(pred, "gradient", morf, lerf)
    assert len(items) == 2
    gap = sum(i[2] for i in items) / len(items)
    assert gap == pytest.approx(pred.mean("gradient", morf) - pred.mean("gradient", lerf), rel=1e-9)
    row = _row(section, "#### Faithfulness (shapes_vgg", "gradient")
    assert row[3].startswith(f"{gap:.3f}")
    low, high = (float(v) for v in row[3].split("[")[1].rstrip("]").split(","))
    assert low - 1e-3 <= gap <= high + 1e-3  # the interval is of the same statistic


def test_transformer_jobs() -> None:
    """shapes_vit gets the transformer section's jobs only; the CNNs get them without the attention-only
    methods, beside the papers' jobs."""
    jobs = P.jobs("small", ["shapes_vit", "shapes_vgg"])
    vit = [j for j in jobs if j.config.model == "shapes_vit"]
    assert vit and all(j.papers == ("transformers",) for j in vit)
    assert set(vit[0].config.methods) == set(P.TRANSFORMER_METHODS)
    cnn = [j for j in jobs if j.config.model == "shapes_vgg" and j.papers == ("transformers",)]
    assert len(cnn) == 2 and not set(P.ATTENTION_ONLY) & set(cnn[0].config.methods)
    assert {j.config.dataset for j in cnn} == set(P.TRANSFORMER_DATASETS)
    assert any(j.papers != ("transformers",) for j in jobs if j.config.model == "shapes_vgg")
