"""CPU time of the reproduction on ``shapes``: a slice of ``relprop reproduce`` per shipped model, old code vs new.

Runs every job of :func:`relprop.reproduce.protocols.jobs` for ``--models`` with the ``full`` size cut
to ``--scenes`` scenes per model (the cascading randomisation scaled as in ``full``: 200 of 500
scenes), into a fresh store, timing each job, the explanations and each metric. With ``--baseline
SRC`` the same slice first runs on the code under ``SRC`` (e.g. an export of an earlier commit's
``src``) in a subprocess, one run right after the other on this machine, and the two stores' values
are compared. Writes its section of docs/benchmarks.md (``--no-write`` to only print).

    OMP_NUM_THREADS=2 python benchmarks/reproduce_speed.py --scenes 40 --baseline /tmp/base/src
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import io
import json
import math
import os
import platform
import pstats
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

#: the cascading randomisation's share of the scenes in the ``full`` size (200 of 500)
RANDOMISATION_SHARE = 200 / 500

#: the clock of every figure: CPU time of the process (robust to other jobs on a shared machine)
clock = time.process_time


def _method_key(explainer) -> str:
    """A method variant's name: the registered method and its options (or the Composite's name)."""
    method = getattr(explainer, "method", None)
    if getattr(explainer, "composite", None) is not None or method is None:
        return f"composite {getattr(getattr(explainer, 'composite', None), 'name', '')}".strip()
    options = getattr(explainer, "options", {}) or {}
    return method.name + (" " + json.dumps(options, sort_keys=True, default=str) if options else "")


def _instrument(timing: dict, by_method: dict | None = None) -> None:
    """Time every metric computation and every explanation into ``timing`` (seconds by name), and each
    method variant's explanations into ``by_method``."""
    import relprop.evaluate.metricset as MS
    from relprop.api import Explainer

    compute = MS._compute

    def timed_compute(info):
        fn = compute(info)

        def run(b, maps, o):
            t0 = clock()
            try:
                return fn(b, maps, o)
            finally:
                timing["metric " + info.name] += clock() - t0
        return run

    MS._compute = timed_compute
    explain = Explainer.explain

    def timed_explain(self, *a, **k):
        t0 = clock()
        try:
            return explain(self, *a, **k)
        finally:
            spent = clock() - t0
            timing["explain (all)"] += spent
            if by_method is not None:
                by_method[_method_key(self)] += spent
    Explainer.explain = timed_explain


def run_slice(scenes: int, models: list[str], store: str, profile: bool) -> dict:
    """Run the slice into ``store``; per-job, per-phase timing and the profile's top entries."""
    import torch

    from relprop.evaluate.runner import run_evaluation
    from relprop.reproduce import protocols as P

    timing: dict = collections.defaultdict(float)
    by_method: dict = collections.defaultdict(float)
    _instrument(timing, by_method)
    rnd = max(1, round(scenes * RANDOMISATION_SHARE))
    size = replace(P.SIZES["full"], shapes={m: scenes for m in models}, randomisation=rnd,
                   transformers={m: scenes for m in models})
    torch.manual_seed(0)
    prof = cProfile.Profile() if profile else None
    jobs_t = []
    start = clock()
    for job in P.jobs(size, models):
        config = replace(job.config, progress=False, share_model=True)
        t0 = clock()
        if prof:
            prof.enable()
        run_evaluation(config, store)
        if prof:
            prof.disable()
        jobs_t.append((job.label, clock() - t0))
    wall = clock() - start
    top = ""
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
        top = out.getvalue()
    return {"wall": wall, "jobs": jobs_t, "phases": dict(timing), "methods": dict(by_method), "profile": top,
            "randomisation": rnd, "torch": torch.__version__, "threads": torch.get_num_threads()}


def compare(old: str, new: str) -> dict:
    """Records of both stores matched by (run hash, sample, target, method, metric): counts and the
    largest differences of the scalars (absolute, and relative to the scalar's magnitude)."""
    def load(path: str) -> dict:
        con = sqlite3.connect(path)
        rows = con.execute("SELECT r.hash, c.sample, c.target, c.method, c.metric, c.scalar, c.value "
                           "FROM records c JOIN runs r ON r.id = c.run").fetchall()
        con.close()
        return {row[:5]: row[5:] for row in rows}
    a, b = load(old), load(new)
    same = sum(1 for k in a if k in b and a[k][1] == b[k][1])
    diffs = [(abs(a[k][0] - b[k][0]), abs(a[k][0] - b[k][0]) / max(1e-3, abs(a[k][0])), k[4]) for k in a
             if k in b and a[k][0] is not None and b[k][0] is not None
             and not (math.isnan(a[k][0]) and math.isnan(b[k][0]))]
    worst = max(diffs, default=(0.0, 0.0, ""))
    by_method: dict[str, float] = {}
    for k in a:
        if k in b and a[k][0] is not None and b[k][0] is not None and not (
                math.isnan(a[k][0]) and math.isnan(b[k][0])):
            rel = abs(a[k][0] - b[k][0]) / max(1e-3, abs(a[k][0]))
            by_method[k[3]] = max(by_method.get(k[3], 0.0), rel)
    return {"old": len(a), "new": len(b), "common": len(set(a) & set(b)), "identical": same,
            "max_abs": worst[0], "max_abs_metric": worst[2],
            "max_rel": max((d[1] for d in diffs), default=0.0),
            "differing": sum(1 for d in diffs if d[0] > 0),
            "by_method": sorted(by_method.items(), key=lambda kv: -kv[1])}


def _child(args: argparse.Namespace, src: str, store: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    cmd = [sys.executable, __file__, "--scenes", str(args.scenes), "--models", args.models, "--child", store]
    if args.profile:
        cmd.append("--profile")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown(args: argparse.Namespace, runs: dict, cmp: dict | None, load: tuple, load_end: tuple) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    new = runs["new"]
    lines = [
        "## Reproduction: CPU time on `shapes`", "",
        f"Generated by `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python "
        f"benchmarks/reproduce_speed.py --scenes {args.scenes} --models {args.models}"
        f"{' --baseline SRC' if args.baseline else ''}` on {now}.", "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{new['threads']}; load average (1/5/15 min) {' / '.join(f'{v:.2f}' for v in load)} at the start, "
        f"{' / '.join(f'{v:.2f}' for v in load_end)} at the end. Software: Python {platform.python_version()}, "
        f"torch {new['torch']}.",
        f"- Work: every job of `relprop reproduce` for {args.models} with the `full` size cut to {args.scenes} "
        f"scenes per model ({new['randomisation']} for the cascading randomisation, 200 of 500 as in `full`), "
        "batch size 16, float32, CPU, into a fresh store; seconds of CPU time (`time.process_time`, one "
        "process). \"old\": the code under `--baseline` (run first, in a subprocess); \"main\": the code "
        "under `--main` when given; \"new\": this tree, right after.",
    ]
    names = list(runs)
    vs_main = "main" in runs and len(names) > 2
    lines += ["", "| job | " + " | ".join(f"{n} s" for n in names) + " | speed-up |"
              + (" vs main |" if vs_main else ""), "|---|" + "---:|" * (len(names) + 1 + vs_main)]

    def ratios(t: list, bold: str = "") -> str:
        out = f" {bold}{t[0] / t[-1]:.2f}x{bold} |"
        return out + (f" {bold}{t[names.index('main')] / t[-1]:.2f}x{bold} |" if vs_main else "")
    for i, (label, _) in enumerate(new["jobs"]):
        t = [runs[n]["jobs"][i][1] for n in names]
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in t) + " |" + ratios(t))
    w = [runs[n]["wall"] for n in names]
    lines.append("| **all** | " + " | ".join(f"**{v:.1f}**" for v in w) + " |" + ratios(w, "**"))
    phases = sorted({p for n in names for p in runs[n]["phases"]}, key=lambda p: -new["phases"].get(p, 0))
    lines += ["", "Time inside the explanations and each metric (the explanations of the cascading "
              "randomisation are counted in both):", "",
              "| phase | " + " | ".join(f"{n} s" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for p in phases:
        vals = [runs[n]["phases"].get(p, 0.0) for n in names]
        if max(vals) >= 0.05:
            lines.append(f"| {p} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    variants = sorted(new.get("methods", {}).items(), key=lambda kv: -kv[1])
    if variants:
        lines += ["", f"Explanations per method variant (the {min(12, len(variants))} costliest of the new code's "
                  f"{len(variants)}; options as given to `relprop.Explainer`):", "",
                  "| method | " + " | ".join(f"{n} s" for n in names) + " |", "|---|" + "---:|" * len(names)]
        for key, _ in variants[:12]:
            vals = [runs[n].get("methods", {}).get(key) for n in names]
            lines.append(f"| `{key}` | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    w = [runs[n]["wall"] for n in names]
    lines += ["", 'Reading: the runner keeps the maps of a shared model per batch of pairs across the jobs '
              '(`relprop.evaluate.mapcache`; the segmentation, perturbation, insertion and faithfulness jobs '
              'explain the same batches of predicted classes, the localisation, hedge, patch-masking and '
              'transformer-localisation jobs those of the labels; the same maps to the bit), the metrics that '
              'only run the model forward (perturbation curves, insertion, patch masking, occlusion) use a '
              'frozen TorchScript copy of it (`relprop.metrics.inference`: conv and batch norm folded; logits '
              'equal up to round-off) and push each distinct image of a batch through it once '
              '(`MemoisedForward`: the clean image of every method\'s curves, the randomly placed patches, '
              'the images with every pixel removed), the label pairs of an image are explained in one call '
              'with its K classes by the methods that take several targets (one forward pass per image), '
              'batched forward passes on the CPU go in chunks of at most 16 images, '
              'integrated gradients / SmoothGrad run their rows in chunks of at most 16 (three 224-pixel images, '
              'four 32^3 volumes; the same maps), and a curve step that repeats the copy before it (the '
              'eligible pixels ran out) takes its scores without a forward pass. The 3x '
              f'target is {"met" if w[0] / w[-1] >= 3 else "not met"}: what is left is the explanations '
              '(each method variant once per image and class; the '
              'localisation job explains 31 variants per labelled pair), one forward pass per distinct image '
              'and step of every curve (at the frozen copy\'s speed) and the cascading randomisation (a map per '
              'randomised layer, untouched).']
    per_scene = w[-1] / args.scenes
    lines += ["", f"Extrapolated to 500 scenes per model (linear in the scenes): old "
              f"{w[0] / args.scenes * 500 / 60:.0f} min, new {per_scene * 500 / 60:.0f} min."]
    if cmp is not None:
        for label, c in cmp.items():
            top = ", ".join(f"{m} {v:.1e}" for m, v in c["by_method"][:5])
            rest = c["by_method"][5][1] if len(c["by_method"]) > 5 else 0.0
            lines += ["", f"Same values ({label}): {c['common']} of {c['old']} / {c['new']} records matched; "
                      f"{c['identical']} identical to the bit; scalars differ in {c['differing']}, by at most "
                      f"{c['max_abs']:.2e} ({c['max_abs_metric'] or '-'}; relative to the scalar, at least 1e-3: "
                      f"{c['max_rel']:.2e}). Largest relative difference per method: {top}; every other method "
                      f"{rest:.1e} or less."]
        lines += ["", "Differences beyond float round-off come from methods whose maps changed on purpose between the "
                  "versions (sglrp's 1 - p_t, summed from the other classes since 0ea2bba) or whose float32 maps are "
                  "ill-conditioned, where any other batch of images moves them (rap's signed residual split on "
                  "shapes_resnet: docs/methods.md, RAP)."]
    for n in names:
        if runs[n]["profile"]:
            body = "\n".join(ln for ln in runs[n]["profile"].splitlines()
                             if ln.strip() and not ln.lstrip().startswith(("Ordered", "List", "ncalls"))
                             or "tottime" in ln)
            lines += ["", f"cProfile, {n}, top entries by own time:", "", "```", body.strip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--models", default="shapes_vgg,shapes_resnet")
    parser.add_argument("--baseline", default=None, help="the `src` folder of the code to compare with")
    parser.add_argument("--main", default=None, help="a second `src` folder (e.g. today's main), run between")
    parser.add_argument("--profile", action="store_true", help="add cProfile's top entries")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if args.child:
        print(json.dumps(run_slice(args.scenes, models, args.child, args.profile)))
        return 0
    load = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="reproduce_speed_")
    runs, cmp = {}, None
    if args.baseline:
        runs["old"] = _child(args, args.baseline, f"{tmp}/old.sqlite")
    if args.main:
        runs["main"] = _child(args, args.main, f"{tmp}/main.sqlite")
    runs["new"] = _child(args, str(ROOT / "src"), f"{tmp}/new.sqlite")
    if args.baseline or args.main:
        cmp = {f"{n} vs new": compare(f"{tmp}/{n}.sqlite", f"{tmp}/new.sqlite") for n in ("old", "main") if n in runs}
    text = markdown(args, runs, cmp, load, os.getloadavg())
    print(text)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", "reproduce_speed.py", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
