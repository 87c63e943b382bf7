"""``relprop report --html``: the gallery's data and order, and the page in headless Chromium."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relprop.cli import main
from relprop.evaluate.html import gallery, sort_items
from relprop.evaluate.store import BatchRows, Store, to_json

# (sample, class) -> (mu, outside_inside_ratio) of method "a"; method "b" has only mu
SCORES = {("s0", 0): (0.2, 1.5), ("s1", 1): (0.9, math.nan), ("s2", 0): (0.5, 0.3), ("s2", 2): (0.7, 0.9)}
B_MU = {("s0", 0): 0.6, ("s1", 1): 0.1, ("s2", 0): 0.3, ("s2", 2): 0.9}


def _metric(key: str, higher: bool | None) -> dict:
    return dict(key=key, name=key, options={}, higher_is_better=higher, category="test", x=None, x_label=None)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A store with known values (data set ``shapes``, whose class names the page shows)."""
    path = tmp_path / "known.sqlite"
    config = {"dataset": "shapes", "dataset_options": {"count": 3}, "model": "m", "targets": "labels",
              "input": {"size": 64}, "dtype": "float32"}
    with Store(path) as s:
        run = s.register_run(config, [("a", "a", {}), ("b", "b", {})],
                             [_metric("mu", True), _metric("outside_inside_ratio", False)])
        rows = BatchRows(samples=[(i, f"s{i}", f"s{i}.png", 1, "ok") for i in range(3)],
                         targets=[(smp, t, t, 0.1, False) for smp, t in SCORES])
        for (smp, t), (mu, oir) in SCORES.items():
            rows.records += [(smp, t, "a", "mu", mu, to_json(mu)),
                             (smp, t, "a", "outside_inside_ratio", oir, to_json(oir)),
                             (smp, t, "b", "mu", B_MU[(smp, t)], to_json(B_MU[(smp, t)]))]
        s.write_batch(run, rows)
    return path


def _order(items: list[dict]) -> list[tuple[str, int]]:
    return [(i["sample"], i["target"]) for i in items]


def test_gallery_sorts_best_first_and_missing_last(store: Path) -> None:
    with Store(store, readonly=True) as s:
        data = gallery(s, s.runs()[0])
    assert data["methods"] == ["a", "b"]
    assert data["metrics"] == [{"key": "mu", "higher_is_better": True},
                               {"key": "outside_inside_ratio", "higher_is_better": False}]
    items = data["items"]
    assert _order(sort_items(items, "a", "mu", True)) == [("s1", 1), ("s2", 2), ("s2", 0), ("s0", 0)]
    assert _order(sort_items(items, "b", "mu", True)) == [("s2", 2), ("s0", 0), ("s2", 0), ("s1", 1)]
    # lower is better; the NaN value comes last
    assert _order(sort_items(items, "a", "outside_inside_ratio", False)) == [("s2", 0), ("s2", 2), ("s0", 0), ("s1", 1)]
    assert _order(sort_items(items, "b", "outside_inside_ratio", False)) == _order(items)  # no values: store order


def test_report_html_writes_self_contained_page(store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "html"
    assert main(["report", str(store), "--html", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "index.html" in capsys.readouterr().out
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing fetched from the network
    assert "<table class='summary'>" in page and "outside_inside_ratio" in page
    assert "data:image/png;base64," in page  # shapes can be read again: thumbnails embedded


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install -y chromium)")
@pytest.mark.parametrize(("method", "metric", "expected"), [
    ("a", "outside_inside_ratio", [("s2", 0), ("s2", 2), ("s0", 0), ("s1", 1)]),
    ("b", "mu", [("s2", 2), ("s0", 0), ("s2", 0), ("s1", 1)]),
])
def test_browser_shows_gallery_in_metric_order(store: Path, tmp_path: Path, method, metric, expected) -> None:
    out = tmp_path / "html"
    assert main(["report", str(store), "--html", str(out)]) == 0
    url = (out / "index.html").as_uri() + f"#method={method}&metric={metric}"
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    shown = re.findall(r'class="item" data-sample="([^"]+)" data-target="(\d+)"', dom)
    assert [(s, int(t)) for s, t in shown] == expected
    assert "4 pairs" in dom


def test_plugin_data_set_is_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.evaluate import specs
    from relprop.evaluate.html import _class_names_and_thumbnails

    calls: list = []
    monkeypatch.setattr(specs, "resolve_dataset", lambda *a: calls.append(a))
    run = {"dataset": "evaluate_fixtures:tiny_dataset", "config": {"dataset_options": {}}}
    assert _class_names_and_thumbnails(run, [(0, "a")]) == (None, {})
    assert calls == []
