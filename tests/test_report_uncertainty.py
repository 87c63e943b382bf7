"""``relprop report``: 95% intervals of the cells and the pairs of methods that are significantly apart."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from relprop.evaluate.report import write_report
from relprop.evaluate.store import BatchRows, Store
from relprop.metrics.aggregate import bootstrap_interval

IMAGES = 16


def _store(path: Path) -> dict[str, list[float]]:
    """A store with one scalar metric (``mu``, higher is better), 16 images, two classes for the
    first four: ``good`` about 0.9, ``bad`` about 0.2, ``twin`` exactly ``good``; ``noisy`` = good
    plus a symmetric +-0.01 (no real difference)."""
    config = {"dataset": "toy", "model": "toy", "targets": "labels", "input": {"size": 8}, "dtype": "float32"}
    metric = dict(key="mu", name="mu", options={}, higher_is_better=True, category="localisation", x=None,
                  x_label=None)
    g = torch.Generator().manual_seed(0)
    values: dict[str, list[float]] = {"good": [], "bad": [], "twin": [], "noisy": []}
    rows = BatchRows()
    with Store(path) as db:
        run = db.register_run(config, [(m, m, {}) for m in values], [metric])
        for i in range(IMAGES):
            sample = f"img{i:02d}"
            rows.samples.append((i, sample, f"{sample}.png", 2 if i < 4 else 1, "ok"))
            for t in range(2 if i < 4 else 1):
                rows.targets.append((sample, t, t, 0.2, False))
                good = 0.9 + 0.05 * float(torch.randn(1, generator=g))
                v = {"good": good, "bad": 0.2 + 0.05 * float(torch.randn(1, generator=g)), "twin": good,
                     "noisy": good + (0.01 if (i + t) % 2 else -0.01)}
                if i == 5:
                    v["bad"] = math.nan  # an undefined value: dropped from its pairs
                for m, x in v.items():
                    values[m].append(x)
                    rows.records.append((sample, t, m, "mu", x, json.dumps(x if not math.isnan(x) else None)))
        db.write_batch(run, rows)
    return values


def test_report_intervals_and_significant_pairs(tmp_path: Path) -> None:
    values = _store(tmp_path / "s.sqlite")
    out = tmp_path / "report"
    files = write_report(tmp_path / "s.sqlite", out)
    assert out / "pairs.csv" in files
    with open(out / "summary.csv") as fh:
        summary = {r["method"]: r for r in csv.DictReader(fh) if r["statistic"] == "mean"}
    groups = [f"img{i:02d}" for i in range(IMAGES) for _ in range(2 if i < 4 else 1)]
    for method, v in values.items():
        row = summary[method]
        iv = bootstrap_interval(torch.tensor(v), groups=groups, seed=0)
        assert float(row["ci_low"]) == pytest.approx(iv.low) and float(row["ci_high"]) == pytest.approx(iv.high)
        assert float(row["ci_low"]) < float(row["mean"]) < float(row["ci_high"])
    assert float(summary["bad"]["ci_high"]) < 0.3 < 0.85 < float(summary["good"]["ci_low"])
    with open(out / "pairs.csv") as fh:
        pairs = {(r["method_a"], r["method_b"]): r for r in csv.DictReader(fh)}
    assert len(pairs) == 6
    gb = pairs[("bad", "good")]
    assert gb["significant"] == "True" and float(gb["p_holm"]) <= 0.05
    assert int(gb["n_images"]) == IMAGES - 1 and int(gb["n_pairs"]) == len(groups) - 1  # the NaN pair dropped
    assert float(gb["difference"]) == pytest.approx(float(gb["mean_a"]) - float(gb["mean_b"]))
    twin = pairs[("good", "twin")]
    assert twin["significant"] == "False" and float(twin["p_value"]) == 1.0 and float(twin["difference"]) == 0.0
    assert pairs[("good", "noisy")]["significant"] == "False"
    assert float(pairs[("good", "noisy")]["p_holm"]) >= float(pairs[("good", "noisy")]["p_value"])
    md = (out / "report.md").read_text()
    cell = f"{float(summary['good']['mean']):.4f} [{float(summary['good']['ci_low']):.4f}, " \
           f"{float(summary['good']['ci_high']):.4f}] (n=20/20)"
    assert cell in md
    line = next(l for l in md.splitlines() if l.startswith("- mu:"))
    assert "good > bad" in line and "twin > bad" in line and "noisy > bad" in line
    assert "good > twin" not in line and "twin > good" not in line and "noisy" not in line.replace("noisy > bad", "")
