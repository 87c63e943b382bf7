"""``relprop report STORE.sqlite``: markdown and CSV tables and PNG plots of an evaluation store.

Written to the output folder:

* ``report.md``: per run, a table of NaN-aware means per method and metric with the number of
  samples that counted (``n``) out of those evaluated, the direction of each metric, and the
  errors (corrupt samples with their files, failed methods);
* ``summary.csv``: one row per (run, method, metric, statistic) with mean, its 95% bootstrap
  interval (``ci_low``, ``ci_high``: percentile bootstrap over images, Efron & Tibshirani 1993 [Efron1993-Bootstrap]),
  std, count, total and the ``model_digest`` of the weights the records belong to (report.md lists
  the digests per model).
  Statistics: ``mean`` (over pairs); for the pointing game also ``class_macro`` and
  ``difficult_class_macro`` (the mean of per-class accuracies, TorchRay / Nam et al. [Nam-Hedge] Table 1); for
  mu also ``box<=0.25`` and ``box<=0.5`` (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Table I);
* ``pairs.csv``: per run and metric with a headline scalar (the cells' mean), every pair of methods
  with the paired permutation test of their mean difference over the (image, class) pairs both have (images swapped whole), the
  Holm (1979) adjusted p-value within the metric and whether they are significantly apart at 5%;
  report.md lists the significant pairs under each run's table;
* ``curves.csv``: the mean curve of every curve- or vector-valued metric (perturbation scores and
  top-1 accuracy per step, pointing accuracy per energy level, change per patch size, ...);
* ``errors.csv``: every recorded error;
* PNG plots per run: ``<run>_curve_<metric>.png`` (perturbation curves, pointing accuracy against
  energy, ...) and ``<run>_mu_by_box_size.png`` (mu against the relative box size, Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP] Fig. 3).

Means skip NaN (undefined values) and report the count (:mod:`relprop.metrics.aggregate`). Intervals
and tests resample or swap images, with a fixed seed: the report is deterministic.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..metrics.aggregate import (RESAMPLES, Interval, aggregate, aggregate_curves, binned_mean,
                                 bootstrap_sums, holm, paired_test, per_class_mean, sums_by_group)
from .metricset import NO_METHOD
from .store import Store

__all__ = ["write_report", "summarise_run"]

MU_BINS = 10
#: significance level of the pairs in report.md and pairs.csv (after Holm's correction)
ALPHA = 0.05


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "metric"


def _curve_of(value: Any) -> Optional[list]:
    """The curve or vector of a stored value (None for a scalar)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for key in ("scores", "change", "spearman_abs"):
            if key in value:
                return value[key]
    return None


def _stack(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), math.nan, dtype=torch.float64)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor([math.nan if v is None else float(v) for v in r], dtype=torch.float64)
    return out


def _nan(v: Optional[float]) -> float:
    return math.nan if v is None else float(v)


def _interval(values: torch.Tensor, samples: list, index: dict, include: Optional[torch.Tensor] = None,
              classes: Optional[list] = None, resamples: int = RESAMPLES) -> Interval:
    """The bootstrap interval of a mean (or per-class macro mean with ``classes``) over the run's
    images (``index``: sample -> row, shared by all methods, so the resamples are paired); NaN
    bounds without resamples."""
    if resamples <= 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    keep = [True] * len(samples) if include is None else include.tolist()
    v = values[torch.tensor(keep, dtype=torch.bool)]
    s = sums_by_group(v, [x for x, k in zip(samples, keep) if k],
                      None if classes is None else [c for c, k in zip(classes, keep) if k], group_index=index)
    return bootstrap_sums([s], resamples=resamples, seed=0).intervals[0]


def _ci(row: dict, iv: Interval) -> dict:
    return dict(row, ci_low=iv.low, ci_high=iv.high)


def summarise_run(store: Store, run: int, resamples: int = RESAMPLES, uncertainty: bool = True) -> dict:
    """Aggregates of one run: ``summary`` rows (with 95% bootstrap intervals over images), ``curves``
    rows, per-method data for the plots and ``pairs``: the paired tests between methods.
    ``uncertainty=False``: no intervals (NaN) and no pairs, for callers that only need the means."""
    targets = store.targets(run)
    metrics = {m["key"]: m for m in store.metrics(run)}
    summary: list[dict] = []
    curves: list[dict] = []
    plots: dict[str, dict[str, dict]] = {}  # metric key -> method -> {"x", "y"}
    mu_points: dict[str, tuple[list, list]] = {}
    grouped: dict[tuple[str, str], list] = {}
    for sample, target, method, metric, scalar, value in store.records(run):
        grouped.setdefault((method, metric), []).append((sample, target, scalar, value))
    index = {x: i for i, x in enumerate(sorted({r[0] for rows in grouped.values() for r in rows}))}
    resamples = resamples if uncertainty else 0
    for (method, mkey), rows in sorted(grouped.items(), key=lambda kv: (kv[0][0] == NO_METHOD, kv[0])):
        info = metrics.get(mkey, {"name": mkey, "higher_is_better": None, "x": None, "x_label": None})
        base = dict(method=method, metric=mkey, name=info["name"],
                    direction={True: "higher", False: "lower", None: "none"}[info["higher_is_better"]])
        values = torch.tensor([_nan(r[2]) for r in rows], dtype=torch.float64)
        agg = aggregate(values)
        samples = [r[0] for r in rows]
        summary.append(_ci(dict(base, statistic="mean", mean=agg.mean, std=agg.std, count=agg.count,
                                total=agg.total), _interval(values, samples, index, resamples=resamples)))
        info_rows = [targets.get((r[0], r[1]), {}) for r in rows]
        if info["name"] == "pointing_game":
            cls = torch.tensor([r[1] for r in rows], dtype=torch.long)
            difficult = torch.tensor([bool(i.get("difficult", False)) for i in info_rows])
            for stat, include in (("class_macro", None), ("difficult_class_macro", difficult)):
                ca = per_class_mean(values, cls, include=include)
                iv = _interval(values, samples, index, include, cls.tolist(), resamples)
                summary.append(_ci(dict(base, statistic=stat, mean=ca.macro, std=math.nan,
                                        count=int(ca.counts.sum()), total=ca.total), iv))
        if info["name"] == "mu":
            frac = torch.tensor([_nan(i.get("box_fraction")) for i in info_rows], dtype=torch.float64)
            for stat, limit in (("box<=0.25", 0.25), ("box<=0.5", 0.5)):
                a = aggregate(values, include=frac <= limit)
                iv = _interval(values, samples, index, frac <= limit, resamples=resamples)
                summary.append(_ci(dict(base, statistic=stat, mean=a.mean, std=a.std, count=a.count,
                                        total=a.total), iv))
            mu_points[method] = (frac.tolist(), values.tolist())
        vectors = [_curve_of(r[3]) for r in rows]
        if all(v is not None for v in vectors) and vectors:
            ca = aggregate_curves(_stack(vectors))  # type: ignore[arg-type]
            x = info.get("x") or list(range(ca.mean.shape[0]))
            if len(x) != ca.mean.shape[0]:
                x = list(range(ca.mean.shape[0]))
            stat = "scores" if isinstance(rows[0][3], dict) and "scores" in rows[0][3] else "mean"
            for xi, m, c in zip(x, ca.mean.tolist(), ca.count.tolist()):
                curves.append(dict(base, statistic=stat, x=xi, mean=m, count=c))
            plots.setdefault(mkey, {})[method] = {"x": x, "y": ca.mean.tolist(),
                                                  "x_label": info.get("x_label") or "step",
                                                  "y_label": f"{info['name']} ({stat})"}
            if stat == "scores":
                acc = aggregate_curves(_stack([r[3]["correct"] for r in rows]))
                for xi, m, c in zip(x, acc.mean.tolist(), acc.count.tolist()):
                    curves.append(dict(base, statistic="accuracy", x=xi, mean=m, count=c))
    pairs = _pairs(grouped, metrics, resamples) if uncertainty else []
    return {"summary": summary, "curves": curves, "plots": plots, "mu": mu_points, "pairs": pairs}


def _pairs(grouped: dict, metrics: dict, resamples: int = RESAMPLES) -> list[dict]:
    """Per metric with a headline scalar (the cells' mean), the paired permutation test of every
    pair of methods over the (sample, class) pairs both have a value for (images swapped whole),
    Holm-adjusted within the metric (:func:`relprop.metrics.aggregate.paired_test`,
    :func:`~relprop.metrics.aggregate.holm`)."""
    by_metric: dict[str, dict[str, dict]] = {}
    for (method, mkey), rows in grouped.items():
        if method == NO_METHOD or all(r[2] is None or math.isnan(r[2]) for r in rows):
            continue  # no headline scalar (e.g. pooled counts)
        by_metric.setdefault(mkey, {})[method] = {(r[0], r[1]): _nan(r[2]) for r in rows}
    out: list[dict] = []
    for mkey in sorted(by_metric):
        info = metrics.get(mkey, {"name": mkey, "higher_is_better": None})
        methods = sorted(by_metric[mkey])
        rows = []
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                va, vb = by_metric[mkey][a], by_metric[mkey][b]
                keys = sorted(set(va) & set(vb))
                x = torch.tensor([va[k] for k in keys], dtype=torch.float64)
                y = torch.tensor([vb[k] for k in keys], dtype=torch.float64)
                t = paired_test(x, y, groups=[k[0] for k in keys], resamples=resamples, seed=0)
                ok = ~torch.isnan(x) & ~torch.isnan(y)
                rows.append(dict(metric=mkey, name=info["name"], method_a=a, method_b=b,
                                 direction={True: "higher", False: "lower", None: "none"}[info["higher_is_better"]],
                                 mean_a=float(x[ok].mean()) if ok.any() else math.nan,
                                 mean_b=float(y[ok].mean()) if ok.any() else math.nan,
                                 difference=t.difference, n_images=t.n, n_pairs=int(ok.sum()),
                                 p_value=t.p_value, exact=t.exact))
        for r, q in zip(rows, holm([r["p_value"] for r in rows]).tolist()):
            r["p_holm"] = q
            r["significant"] = bool(q <= ALPHA)
        out += rows
    return out


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _bracket(row: dict) -> str:
    """``[lo, hi]``: the row's 95% interval (empty without one)."""
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _pairs_markdown(pairs: list[dict]) -> list[str]:
    """Per metric, the method pairs that are significantly apart (better one first)."""
    if not pairs:
        return []
    lines = [f"Significantly apart (paired permutation test over the shared images, Holm-corrected within "
             f"each metric, {ALPHA:.0%}; better method first where the metric has a direction):", ""]
    for mkey in dict.fromkeys(p["metric"] for p in pairs):
        rows = [p for p in pairs if p["metric"] == mkey]
        sig = []
        for p in rows:
            if not p["significant"]:
                continue
            first, second = (p["method_a"], p["method_b"])
            if (p["difference"] < 0) == (p["direction"] != "lower") and p["direction"] != "none":
                first, second = second, first
            sep = " > " if p["direction"] != "none" else " ≠ "
            sig.append(f"{first}{sep}{second} (Δ={_fmt(abs(p['difference']))}, p_Holm={p['p_holm']:.3g})")
        lines.append(f"- {mkey}: " + ("; ".join(sig) if sig else f"none of {len(rows)} pairs"))
    return lines + [""]


def _markdown_table(rows: list[dict]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    columns = list(dict.fromkeys((r["metric"], r["statistic"], r["direction"]) for r in rows))
    cell = {(r["method"], r["metric"], r["statistic"]): r for r in rows}
    arrow = {"higher": " ↑", "lower": " ↓", "none": ""}
    head = ["method"] + [f"{m}{'' if s == 'mean' else ' [' + s + ']'}{arrow[d]}" for m, s, d in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        out = [method if method != NO_METHOD else "(no method)"]
        for m, s, _ in columns:
            r = cell.get((method, m, s))
            out.append("" if r is None else f"{_fmt(r['mean'])} {_bracket(r)} (n={r['count']}/{r['total']})")
        lines.append("| " + " | ".join(out) + " |")
    return lines


def _plot_curves(path: Path, title: str, series: dict[str, dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    any_series = next(iter(series.values()))
    for method, s in series.items():
        x = s["x"] if all(isinstance(v, (int, float)) for v in s["x"]) else list(range(len(s["y"])))
        ax.plot(x, s["y"], marker="." if len(x) <= 30 else None, label=method)
    ax.set_xlabel(any_series["x_label"])
    ax.set_ylabel(any_series["y_label"])
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _plot_mu(path: Path, title: str, points: dict[str, tuple[list, list]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for method, (frac, mu) in points.items():
        b = binned_mean(torch.tensor(mu, dtype=torch.float64), torch.tensor(frac, dtype=torch.float64),
                        bins=MU_BINS)
        ok = b.count > 0
        ax.plot(b.centers[ok].tolist(), b.mean[ok].tolist(), marker="o", label=method)
    ax.set_xlabel("relative box size (mask area / image area)")
    ax.set_ylabel("mean mu")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _digest(run: dict) -> str:
    """The run's model digest, or ``unknown`` for runs stored before digests (schema version 1)."""
    return run.get("model_digest") or "unknown"


def _digest_line(runs: list[dict]) -> str:
    """``Model digests (weights of each run): model: d1 (run h1), d2 (run h2); ...``."""
    by_model: dict[str, list[str]] = {}
    for run in runs:
        by_model.setdefault(run["model"], []).append(f"`{_digest(run)}` (run {run['hash'][:8]})")
    parts = [f"{model}: {', '.join(d)}" for model, d in by_model.items()]
    return "Model digests (parameters and buffers of each run's model): " + "; ".join(parts)


def _input_text(spec: dict) -> str:
    """The model input of a run: ``S x S`` for images, the volume's shape for volumes."""
    if "volume" in spec:
        return "volume " + " x ".join(str(n) for n in spec["volume"])
    return f"{spec['size']}x{spec['size']}"


def write_report(store_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the report of every run in ``store_path`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    written: list[Path] = []
    md: list[str] = [f"# Evaluation report: {Path(store_path).name}", ""]
    all_summary: list[dict] = []
    all_curves: list[dict] = []
    all_errors: list[dict] = []
    all_pairs: list[dict] = []
    with Store(store_path, readonly=True) as store:
        runs = store.runs()
        if not runs:
            raise ValueError(f"{store_path}: the store holds no evaluation run")
        md += [_digest_line(runs), ""]
        out.mkdir(parents=True, exist_ok=True)  # only for a readable store
        for run in runs:
            tag = run["hash"][:8]
            cfg = run["config"]
            res = summarise_run(store, run["id"])
            counts = store.sample_count(run["id"])
            errors = store.errors(run["id"])
            for rows, dest in ((res["summary"], all_summary), (res["curves"], all_curves),
                               (res["pairs"], all_pairs)):
                dest += [dict(r, run=run["hash"], dataset=run["dataset"], model=run["model"],
                              model_digest=_digest(run)) for r in rows]
            all_errors += [dict(e, run=run["hash"]) for e in errors]
            opts = ", ".join(f"{k}={v}" for k, v in sorted(cfg.get("dataset_options", {}).items()))
            md += [f"## {run['dataset']}{' (' + opts + ')' if opts else ''} / {run['model']} "
                   f"(run {run['hash']}, model digest {_digest(run)})", "",
                   f"Targets: {run['targets']}; input {_input_text(cfg['input'])}, "
                   f"{cfg['dtype']}. Samples: {counts.get('ok', 0)} evaluated, {counts.get('error', 0)} "
                   "unreadable. Cells: NaN-aware mean [95% bootstrap interval over images] (n = values that "
                   "counted / values computed); ↑ higher is better, ↓ lower is better.", ""]
            md += _markdown_table(res["summary"]) if res["summary"] else ["(no records yet)"]
            md.append("")
            md += _pairs_markdown(res["pairs"])
            for mkey, series in sorted(res["plots"].items()):
                png = out / f"{tag}_curve_{_slug(mkey)}.png"
                _plot_curves(png, f"{run['dataset']} / {run['model']}\n{mkey}", series)
                written.append(png)
                md.append(f"![{mkey}]({png.name})")
            if res["mu"]:
                png = out / f"{tag}_mu_by_box_size.png"
                _plot_mu(png, f"{run['dataset']} / {run['model']}\nmu by box size", res["mu"])
                written.append(png)
                md.append(f"![mu by box size]({png.name})")
            md.append("")
            if errors:
                md += [f"### Errors ({len(errors)})", "", "| index | sample | method | metric | file | reason |",
                       "|---|---|---|---|---|---|"]
                for e in errors[:50]:
                    reason = str(e["reason"]).replace("|", "\\|").replace("\n", " ")
                    md.append(f"| {e['idx']} | {e['sample']} | {e['method'] or '(data)'} | {e['metric']} | "
                              f"{e['path']} | {reason} |")
                if len(errors) > 50:
                    md.append(f"| ... | {len(errors) - 50} more in errors.csv | | | | |")
                md.append("")
    _write_csv(out / "summary.csv", all_summary, ["run", "dataset", "model", "model_digest", "method", "metric",
                                                  "name", "statistic", "direction", "mean", "ci_low", "ci_high", "std",
                                                  "count", "total"])
    _write_csv(out / "pairs.csv", all_pairs, ["run", "dataset", "model", "model_digest", "metric", "name", "direction",
                                              "method_a", "method_b", "mean_a", "mean_b", "difference", "n_images",
                                              "n_pairs", "p_value", "exact", "p_holm", "significant"])
    _write_csv(out / "curves.csv", all_curves, ["run", "dataset", "model", "model_digest", "method", "metric",
                                                "name", "statistic", "x", "mean", "count"])
    _write_csv(out / "errors.csv", all_errors, ["run", "idx", "sample", "method", "metric", "path", "reason"])
    (out / "report.md").write_text("\n".join(md) + "\n")
    return [out / "report.md", out / "summary.csv", out / "pairs.csv", out / "curves.csv",
            out / "errors.csv"] + written
