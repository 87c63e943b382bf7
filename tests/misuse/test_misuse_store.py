"""Misuse of the evaluation store: changed weights, read-only, corrupt and foreign store files.

Every refusal of the command line is one line ``relprop: error: ...`` and exit code 2; a refused
store file is left exactly as it was (bytes, modification time, no ``-wal`` / ``-shm`` beside it).
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import evaluate_fixtures as fx  # noqa: E402

from relprop.cli import main  # noqa: E402
from relprop.evaluate.store import Store, canonical_json, config_hash, model_digest  # noqa: E402

COUNT = 4


def weights_model(weights: str):
    """The tiny model of ``evaluate_fixtures`` with its parameters loaded from the file ``weights``."""
    model, preprocess = fx.tiny_model()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval(), preprocess


def _save_weights(path: Path, seed: int) -> None:
    model, _ = fx.tiny_model(seed=seed)
    torch.save(model.state_dict(), path)


def _evaluate(store: Path, weights: Path, *extra: str) -> list[str]:
    return ["evaluate", "--dataset", "evaluate_fixtures:tiny_dataset", "--dataset-option", f"count={COUNT}",
            "--model", f"{__name__}:weights_model", "--model-option", f"weights={weights}",
            "--methods", "gradient", "--metrics", "mu,pointing_game", "--batch-size", "2",
            "--store", str(store), "--no-progress", *extra]


def _state(path: Path) -> tuple:
    """What must not change: the file's bytes, its mtime and the SQLite side files beside it."""
    side = sorted(p.name for p in path.parent.glob(path.name + "-*"))
    if path.is_dir():
        return ("dir", sorted(p.name for p in path.iterdir()), path.stat().st_mtime_ns, side)
    return (path.read_bytes(), path.stat().st_mtime_ns, side)


def _one_error_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("relprop: error: "), err
    for w in words:
        assert w in err[0], err
    return err[0]


@pytest.fixture()
def store(tmp_path: Path, capsys) -> Path:
    """A finished store, closed (its WAL checkpointed: no side files)."""
    weights = tmp_path / "mine.pt"
    _save_weights(weights, 0)
    path = tmp_path / "eval.sqlite"
    assert main(_evaluate(path, weights)) == 0
    capsys.readouterr()
    assert not list(tmp_path.glob("eval.sqlite-*"))
    return path


# ---- case 8: stale records after retraining --------------------------------------------------


def test_overwritten_weights_get_new_records_and_the_report_names_both_digests(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "mine.pt"
    path = tmp_path / "eval.sqlite"
    _save_weights(weights, 0)
    assert main(_evaluate(path, weights)) == 0
    assert f"{COUNT} of {COUNT} pending" in capsys.readouterr().out
    _save_weights(weights, 1)  # retrained: same file name, other weights
    assert main(_evaluate(path, weights)) == 0
    assert f"{COUNT} of {COUNT} pending" in capsys.readouterr().out
    assert main(_evaluate(path, weights)) == 0  # the same weights again: nothing to do
    assert "0 of 0 pending" in capsys.readouterr().out

    digests = {model_digest(weights_model(str(weights))[0])}
    _save_weights(weights, 0)
    digests.add(model_digest(weights_model(str(weights))[0]))
    assert len(digests) == 2
    with Store(path, readonly=True) as db:
        runs = db.runs()
        assert {r["model_digest"] for r in runs} == digests
        assert all(db.count_records(r["id"]) > 0 for r in runs)
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out)]) == 0
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model_digest"] for r in rows} == digests
    md = (out / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("Model digests"))
    assert all(d in line for d in digests)


def test_digest_covers_parameters_and_buffers_and_is_stable() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    d0 = model_digest(model)
    assert d0 == model_digest(model) and len(d0) == 16
    with torch.no_grad():
        model[1].running_mean[0] += 1e-6  # a buffer
    d1 = model_digest(model)
    assert d1 != d0
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-3  # a parameter
    assert model_digest(model) not in (d0, d1)


def test_a_version_1_store_is_migrated_and_its_runs_are_not_reused(store: Path, tmp_path: Path, capsys) -> None:
    """A run written by a relprop without digests: its configuration lacks the digest and version."""
    con = sqlite3.connect(store)
    config = json.loads(con.execute("SELECT config FROM runs").fetchone()[0])
    for key in ("model_digest", "relprop_version"):
        del config[key]
    con.execute("UPDATE runs SET hash = ?, config = ?", (config_hash(config), canonical_json(config)))
    con.execute("ALTER TABLE runs DROP COLUMN model_digest")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Store(store, readonly=True) as db:  # read as it is
        assert [r["model_digest"] for r in db.runs()] == [None]
    weights = tmp_path / "mine.pt"
    assert main(_evaluate(store, weights)) == 0
    assert f"{COUNT} of {COUNT} pending" in capsys.readouterr().out
    with Store(store, readonly=True) as db:
        assert [r["model_digest"] is None for r in db.runs()] == [True, False]


# ---- case 11: read-only, corrupt and foreign stores ------------------------------------------


def test_report_on_a_read_only_store_leaves_no_side_files(store: Path, tmp_path: Path, capsys) -> None:
    store.chmod(0o444)
    before = _state(store)
    assert main(["report", str(store), "--out", str(tmp_path / "r")]) == 0
    assert _state(store) == before
    assert (tmp_path / "r" / "report.md").is_file()


def test_report_on_a_writable_store_leaves_no_side_files(store: Path, tmp_path: Path) -> None:
    before = _state(store)
    assert main(["report", str(store), "--out", str(tmp_path / "r")]) == 0
    assert _state(store) == before


def test_evaluate_refuses_a_store_without_write_permission(store: Path, tmp_path: Path, capsys) -> None:
    store.chmod(0o444)
    before = _state(store)
    assert main(_evaluate(store, tmp_path / "mine.pt", "--limit", "2")) == 2
    _one_error_line(capsys, str(store), "read-only")
    assert _state(store) == before


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 50)


def _zero(path: Path) -> None:
    path.write_bytes(b"")


def _folder(path: Path) -> None:
    path.mkdir()


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE photos (name TEXT)")
    con.commit()
    con.close()


BROKEN = {"garbage": _garbage, "zero-byte": _zero, "folder": _folder, "foreign sqlite": _foreign}


@pytest.mark.parametrize("kind", [*BROKEN, "truncated"])
@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_a_corrupt_or_foreign_store_is_refused_untouched(kind: str, command: str, store: Path,
                                                         tmp_path: Path, capsys) -> None:
    if kind == "truncated":
        path = store
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path = tmp_path / f"{kind.replace(' ', '_')}.sqlite"
        BROKEN[kind](path)
    old = time.time() - 1000
    os.utime(path, (old, old))
    before = _state(path)
    argv = (["report", str(path), "--out", str(tmp_path / "r")] if command == "report"
            else _evaluate(path, tmp_path / "mine.pt"))
    assert main(argv) == 2
    _one_error_line(capsys, f"store {path} is not a readable relprop store")
    assert _state(path) == before


def test_a_newer_schema_is_refused(store: Path, tmp_path: Path, capsys) -> None:
    con = sqlite3.connect(store)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    before = _state(store)
    assert main(_evaluate(store, tmp_path / "mine.pt")) == 2
    _one_error_line(capsys, "schema version 99", "newer relprop")
    assert main(["report", str(store)]) == 2
    _one_error_line(capsys, "schema version 99")
    assert _state(store) == before


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """The same refusal through a real process: exit code 2, one line on stderr, nothing else."""
    import subprocess

    path = tmp_path / "garbage.sqlite"
    _garbage(path)
    before = _state(path)
    done = subprocess.run([sys.executable, "-m", "relprop.cli", "report", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"relprop: error: store {path} is not a readable relprop store (not an SQLite database)"]
    assert _state(path) == before and not (tmp_path / "garbage-report").exists()
