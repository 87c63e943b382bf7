"""Float32 against float64 on the reproduction's protocols: how far do the published figures move?

Runs the jobs of :func:`relprop.reproduce.protocols.jobs` that use ``--methods`` on ``--models``, once
in float32 (the reproduction's type) and once in float64 (model and images cast; the exact arithmetic
of the same weights), into one store, and compares the two records of every (image, class, method,
metric) pair. Per method and metric scalar it prints the mean of each type, the mean paired
difference with its 95% interval (1.96 standard errors), the 95% half-width of the float64 mean itself
(the figure's sampling uncertainty) and how many records changed by more than 1e-6 relative.

A method whose float32 maps are ill-conditioned (``rap``, ``rsp``: docs/methods.md, RAP) moves its
maps by up to tens of percent of their maximum; this script measures what that does to the published
figures. ``shapes`` models run on ``--scenes`` test scenes (the full protocols cut to that many),
``efficientnet_lite0`` on every annotated photo.

    OMP_NUM_THREADS=1 python benchmarks/precision.py --models shapes_resnet,efficientnet_lite0 \\
        --methods rap,rsp,rap-journal --scenes 100
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from relprop.evaluate.runner import run_evaluation
from relprop.evaluate.store import Store, canonical_json
from relprop.reproduce import protocols as P

#: jobs that evaluate the model at several randomised layers or another data set's transformers
#: section are left out: their maps come from the same rules as the jobs kept
SKIPPED = ("randomisation", "transformers")


def run_jobs(models: Sequence[str], methods: Sequence[str], scenes: int, store: str) -> list[str]:
    """Every kept job, in float32 then float64, into ``store``; the jobs' labels."""
    shapes = {m: scenes for m in models if m.startswith("shapes")}
    size = replace(P.SIZES["paper"], shapes=shapes, transformers=shapes, volumes={})
    labels = []
    for job in P.jobs(size, list(models), methods=list(methods)):
        if any(word in job.label for word in SKIPPED):
            continue
        labels.append(job.label)
        for dtype in ("float32", "float64"):
            t0 = time.perf_counter()
            torch.manual_seed(0)
            run_evaluation(replace(job.config, progress=False, share_model=True, dtype=dtype), store)
            print(f"{job.label}, {dtype}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return labels


def paired_records(store: Store) -> dict[tuple[str, str, str, str], list[tuple[float, float]]]:
    """``{(model, data set, method, metric): [(float32 scalar, float64 scalar), ...]}`` over the
    records both runs of a job hold (finite scalars only)."""
    by_config: dict[str, dict[str, int]] = collections.defaultdict(dict)
    info = {}
    for run in store.runs():
        config = dict(run["config"])
        dtype = config.pop("dtype")
        key = canonical_json(config)
        by_config[key][dtype] = run["id"]
        info[key] = (run["model"], run["dataset"])
    out: dict = collections.defaultdict(list)
    for key, runs in by_config.items():
        if set(runs) != {"float32", "float64"}:
            continue
        names = {m["key"]: m["name"] for m in store.methods(runs["float32"])}
        single = {(s, t, m, k): v for s, t, m, k, v, _ in store.records(runs["float32"])}
        double = {(s, t, m, k): v for s, t, m, k, v, _ in store.records(runs["float64"])}
        for rec, a in single.items():
            b = double.get(rec)
            if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
                continue
            model, dataset = info[key]
            out[(model, dataset, names.get(rec[2], rec[2]), rec[3])].append((a, b))
    return out


def table(pairs: dict, methods: Sequence[str]) -> str:
    """The comparison as a markdown table (rows of ``methods`` only, metrics with a scalar)."""
    lines = ["| model | data | method | metric | n | float32 | float64 | difference (95%) | "
             "float64 mean's 95% | changed |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (model, dataset, method, metric), values in sorted(pairs.items()):
        if method not in methods:
            continue
        n = len(values)
        single = sum(a for a, _ in values) / n
        double = sum(b for _, b in values) / n
        diffs = [a - b for a, b in values]
        mean = sum(diffs) / n
        spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, n - 1))
        sampling = math.sqrt(sum((b - double) ** 2 for _, b in values) / max(1, n - 1))
        changed = sum(abs(d) > 1e-6 * max(1.0, abs(b)) for d, (_, b) in zip(diffs, values))
        lines.append(f"| {model} | {dataset.rsplit(':', 1)[-1]} | `{method}` | {metric} | {n} | {single:.4g} | "
                     f"{double:.4g} | {mean:+.2g} ± {1.96 * spread / math.sqrt(n):.2g} | "
                     f"± {1.96 * sampling / math.sqrt(n):.2g} | {changed} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="shapes_resnet,efficientnet_lite0")
    p.add_argument("--methods", default="rap,rsp,rap-journal")
    p.add_argument("--scenes", type=int, default=100, help="test scenes per shapes model (default 100)")
    p.add_argument("--store", default=None, help="store file (default: a new one in the current folder)")
    args = p.parse_args(argv)
    models, methods = args.models.split(","), args.methods.split(",")
    store_path = args.store or f"precision-{int(time.time())}.sqlite"
    if args.store is None and Path(store_path).exists():
        raise SystemExit(f"{store_path} exists")
    labels = run_jobs(models, methods, args.scenes, store_path)
    store = Store(store_path, readonly=True)
    try:
        print(f"Jobs: {'; '.join(labels)}. torch {torch.__version__}, {torch.get_num_threads()} threads.\n")
        print(table(paired_records(store), methods))
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
