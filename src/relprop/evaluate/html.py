"""``relprop report STORE --html DIR``: one self-contained ``index.html`` to browse an evaluation.

The page holds the summary table, the report's plots (embedded as data URIs) and a gallery: pick a
run, a method and a metric and the (image, class) pairs are listed best first with their score.
The store keeps metric values, not maps; the gallery shows a thumbnail of each input when the data
set can be built again from the run's stored options (``shapes``; not data sets that need a ``--root``,
as the root is not stored, nor plug-in data sets, whose code a report does not run), else the sample
ids alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Optional, Sequence

from .metricset import NO_METHOD
from .store import Store

__all__ = ["gallery", "sort_items", "write_html"]

#: At most this many thumbnails per run (inputs are re-read from the data set).
MAX_THUMBNAILS = 500
THUMBNAIL = 72


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def gallery(store: Store, run: dict) -> dict:
    """The gallery data of ``run``: methods, scalar metrics (with direction) and one item per
    (sample, class) with ``scores[method][metric]`` (None where the metric gave no value)."""
    metrics = {m["key"]: m for m in store.metrics(run["id"])}
    items: dict[tuple[str, int], dict] = {}
    used: dict[str, set] = {}
    targets = store.targets(run["id"])
    for sample, target, method, metric, scalar, _ in store.records(run["id"]):
        if method == NO_METHOD:
            continue
        item = items.setdefault((sample, target), {"sample": sample, "target": target, "scores": {}})
        item["scores"].setdefault(method, {})[metric] = _finite(scalar)
        used.setdefault(method, set()).add(metric)
    for (sample, target), item in items.items():
        item["predicted"] = targets.get((sample, target), {}).get("predicted")
    keys = sorted({k for ks in used.values() for k in ks})
    return {
        "methods": sorted(used),
        "metrics": [{"key": k, "higher_is_better": metrics.get(k, {}).get("higher_is_better")} for k in keys],
        "items": list(items.values()),
    }


def sort_items(items: Sequence[dict], method: str, metric: str, higher_is_better: Optional[bool]) -> list[dict]:
    """Items with a value for (``method``, ``metric``), best first (largest first when the metric has
    no direction); ties keep the store's order; items without a value come last. The page's script
    sorts the same way."""
    def value(item: dict) -> Optional[float]:
        return item["scores"].get(method, {}).get(metric)

    scored = [i for i in items if value(i) is not None]
    rest = [i for i in items if value(i) is None]
    ascending = higher_is_better is False
    return sorted(scored, key=lambda i: value(i) if ascending else -value(i)) + rest  # type: ignore[operator]


def _class_names_and_thumbnails(run: dict, samples: list[tuple[int, str]]
                                ) -> tuple[Optional[list[str]], dict[str, str]]:
    """Class names and ``{sample key: data URI}`` when the run's data set can be built again, else (None, {})."""
    from .specs import resolve_dataset

    if ":" in run["dataset"]:  # a plug-in: reading a store must not import and run code it names
        return None, {}
    try:
        dataset = resolve_dataset(run["dataset"], dict(run["config"].get("dataset_options", {})))
    except Exception:  # noqa: BLE001 - a data set that needs its root or plug-in code: no pictures
        return None, {}
    names = list(getattr(dataset, "class_names", []) or []) or None
    thumbs: dict[str, str] = {}
    for idx, key in samples[:MAX_THUMBNAILS]:
        try:
            sample = dataset[idx]
        except Exception:  # noqa: BLE001 - a corrupt or missing sample: no picture
            continue
        if sample.key != key:
            continue
        image = sample.image.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        thumbs[key] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return names, thumbs


def _name(names: Optional[list[str]], index: int) -> str:
    return f"{index} {names[index]}" if names and 0 <= index < len(names) else str(index)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _summary_table(path: Path) -> str:
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["statistic"] == "mean"]
    if not rows:
        return "<p>(no records yet)</p>"
    head = ["dataset", "model", "method", "metric", "direction", "mean", "ci_low", "ci_high", "count"]

    def cell(row: dict, key: str) -> str:
        value = row.get(key, "")
        try:
            return f"{float(value):.4g}" if key in ("mean", "ci_low", "ci_high") else html.escape(value)
        except ValueError:
            return html.escape(value)

    lines = ["<table class='summary'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{cell(r, h)}</td>" for h in head) + "</tr>" for r in rows]
    return "\n".join(lines + ["</table>"])


def write_html(store_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the report of ``store_path`` into ``out_dir`` with ``index.html``; returns the files written."""
    from .report import write_report

    out = Path(out_dir)
    files = write_report(store_path, out)
    runs_data: list[dict] = []
    with Store(store_path, readonly=True) as store:
        for run in store.runs():
            data = gallery(store, run)
            samples = store.conn.execute("SELECT idx, sample FROM samples WHERE run = ? AND status = 'ok' ORDER BY idx",
                                         (run["id"],)).fetchall()
            names, thumbs = _class_names_and_thumbnails(run, samples)
            for item in data["items"]:
                item["class"] = _name(names, item["target"])
                item["predicted"] = None if item["predicted"] is None else _name(names, item["predicted"])
                item["thumb"] = thumbs.get(item["sample"])
            data["label"] = f"{run['dataset']} / {run['model']} (run {run['hash'][:8]})"
            runs_data.append(data)
    plots = [f for f in files if f.suffix == ".png"]
    figures = [f"<figure><img src='{_data_uri(p)}' alt='{html.escape(p.stem)}'>"
               f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in plots]
    page = _PAGE.format(
        title=html.escape(Path(store_path).name),
        summary=_summary_table(out / "summary.csv"),
        plots="\n".join(figures) or "<p>(no plots)</p>",
        data=json.dumps(runs_data).replace("</", "<\\/"),
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return [index] + files


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>relprop report: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th {{ background: #eee; }}
figure {{ display: inline-block; margin: 0.5em; }} figure img {{ max-width: 420px; }}
#gallery {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.item {{ border: 1px solid #ccc; padding: 4px; width: 150px; font-size: 0.8em; }}
.item img {{ width: 72px; image-rendering: pixelated; }}
.score {{ font-weight: bold; }}
</style></head><body>
<h1>relprop report: {title}</h1>
<h2>Summary</h2>
<p>Mean of each metric over the explained (image, class) pairs, with its 95% bootstrap interval over images.</p>
{summary}
<h2>Plots</h2>
{plots}
<h2>Gallery</h2>
<p>Pick a method and a metric: the (image, class) pairs, best first, with their score. The store keeps
scores, not relevance maps: the pictures are the inputs, shown when the data set could be read again.</p>
<label>run <select id="run"></select></label>
<label>method <select id="method"></select></label>
<label>metric <select id="metric"></select></label>
<p id="count"></p>
<div id="gallery"></div>
<script>
const RUNS = {data};
const $ = (id) => document.getElementById(id);
function options(select, values, labels) {{
  select.innerHTML = "";
  values.forEach((v, i) => {{ const o = document.createElement("option"); o.value = v;
    o.textContent = labels ? labels[i] : v; select.appendChild(o); }});
}}
function sortItems(items, method, metric, higher) {{
  const value = (it) => (it.scores[method] || {{}})[metric];
  const has = (it) => value(it) !== undefined && value(it) !== null;
  const scored = items.filter(has), rest = items.filter((it) => !has(it));
  scored.sort((a, b) => higher === false ? value(a) - value(b) : value(b) - value(a));
  return scored.concat(rest);
}}
function show() {{
  const run = RUNS[Number($("run").value)];
  const method = $("method").value, metric = $("metric").value;
  const info = run.metrics.find((m) => m.key === metric) || {{}};
  const items = sortItems(run.items, method, metric, info.higher_is_better);
  const way = info.higher_is_better === false ? "lower is better"
    : info.higher_is_better ? "higher is better" : "largest first";
  $("count").textContent = items.length + " pairs, " + way;
  const gallery = $("gallery");
  gallery.innerHTML = "";
  for (const it of items) {{
    const v = (it.scores[method] || {{}})[metric];
    const div = document.createElement("div");
    div.className = "item"; div.dataset.sample = it.sample; div.dataset.target = it.target;
    div.innerHTML = (it.thumb ? "<img src='" + it.thumb + "'><br>" : "") +
      "<span class='sample'></span><br>class <span class='cls'></span><span class='pred'></span>" +
      "<br><span class='score'>" + (v === undefined || v === null ? "no value" : Number(v).toPrecision(4)) + "</span>";
    div.querySelector(".sample").textContent = it.sample;
    div.querySelector(".cls").textContent = it.class;
    if (it.predicted !== null && it.predicted !== undefined)
      div.querySelector(".pred").textContent = " (predicted " + it.predicted + ")";
    gallery.appendChild(div);
  }}
}}
function pickRun() {{
  const run = RUNS[Number($("run").value)];
  options($("method"), run.methods);
  options($("metric"), run.metrics.map((m) => m.key));
}}
options($("run"), RUNS.map((r, i) => String(i)), RUNS.map((r) => r.label));
const wanted = new URLSearchParams(location.hash.slice(1));
if (wanted.get("run")) $("run").value = wanted.get("run");
pickRun();
if (wanted.get("method")) $("method").value = wanted.get("method");
if (wanted.get("metric")) $("metric").value = wanted.get("metric");
$("run").onchange = () => {{ pickRun(); show(); }};
$("method").onchange = show;
$("metric").onchange = show;
if (RUNS.length) show();
</script>
</body></html>
"""
