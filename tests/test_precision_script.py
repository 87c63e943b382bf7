"""benchmarks/precision.py: the reproduction's jobs in float32 and float64, paired record by record."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from relprop.evaluate.store import Store

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("precision_bench", ROOT / "benchmarks" / "precision.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("precision_bench", bench)
_spec.loader.exec_module(bench)


@pytest.mark.slow
def test_each_job_runs_in_both_float_types_and_every_record_is_paired(tmp_path):
    path = str(tmp_path / "precision.sqlite")
    labels = bench.run_jobs(["shapes_resnet"], ["rsp"], 2, path)
    assert labels and not any(word in label for label in labels for word in bench.SKIPPED)
    store = Store(path, readonly=True)
    try:
        runs = store.runs()
        # jobs on the same images and targets share a run: each run exists in both types
        dtypes = [r["config"]["dtype"] for r in runs]
        assert dtypes.count("float32") == dtypes.count("float64") >= 1 and len(dtypes) % 2 == 0
        pairs = bench.paired_records(store)
        # every finite scalar record of a float32 run has its float64 partner
        single = [r for r in runs if r["config"]["dtype"] == "float32"]
        finite = sum(1 for r in single for *_, v, _ in store.records(r["id"])
                     if v is not None and v == v and abs(v) != float("inf"))
        assert sum(len(v) for v in pairs.values()) == finite
        assert {key[2] for key in pairs} <= {"rsp", "-"}
        # the float64 run is a different computation: some figure differs, however little
        assert any(a != b for values in pairs.values() for a, b in values)
        text = bench.table(pairs, ["rsp"])
    finally:
        store.close()
    assert text.count("\n") + 1 == 2 + sum(1 for key in pairs if key[2] == "rsp")
    assert "| shapes_resnet |" in text and "`rsp`" in text
