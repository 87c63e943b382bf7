#!/usr/bin/env python
"""Bounded memory: peak memory and time of lrp-cmp on VGG-16 under a memory budget, against the run
without one.

Run from the repository root::

    python benchmarks/memory.py [--cases 1x2048:4GB+9GB,64x224:4GB+8GB] [--fallback 1x1024]
                                [--out docs/benchmarks.md]

torchvision VGG-16 at random initialisation (float32, CPU, nothing downloaded) explains a batch of
random images (``BxSIZE``: B images of SIZE x SIZE) with ``relprop.explain(..., method="lrp-cmp",
memory_budget=...)``, once per budget of the case and once with ``memory_budget="unlimited"``. Every
measurement runs in a fresh subprocess: a warm-up call on a 32 x 32 image (tracing, per-layer weight
caches), then the timed call (``time.perf_counter``). Peak memory is the process's peak resident set
(``ru_maxrss``); the explanation's share is the peak minus the resident set just before the timed
call (the Python runtime, torch and the model's weights, which the budget does not cover). A run
without a budget that is killed or fails (e.g. out of memory) is reported as such, and the
``--fallback`` case is measured too (with the same budgets). The two runs' maps are compared (largest absolute
difference). relprop is imported from the working tree's ``src``. The markdown section (``--out``)
is written entirely from the run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_model, dist_version, status_kib, write_section  # noqa: E402

TIME_TARGET = 1.5  #: the bounded run may take at most this multiple of the unbounded run's time


def worker(args: argparse.Namespace) -> None:
    """One measurement (in a fresh process): prints a JSON line."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    import torchvision
    import relprop

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    batch, size = (int(v) for v in args.case.split("x"))
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    target = (torch.arange(batch) * 97 + 3) % 1000
    relprop.explain(model, torch.randn(1, 3, 32, 32), 0, method="lrp-cmp", memory_budget=args.budget)
    gc.collect()
    base = status_kib("VmRSS")
    start = time.perf_counter()
    relevance = relprop.explain(model, x, target, method="lrp-cmp", memory_budget=args.budget)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(relevance, args.save)
    print(json.dumps({"seconds": seconds, "peak_gb": peak * 1024 / 1e9, "base_gb": base * 1024 / 1e9,
                      "explanation_gb": (peak - base) * 1024 / 1e9}))


def measure(case: str, budget: str, folder: Path) -> dict:
    """Run one measurement in a subprocess; ``{"error": ...}`` if it fails."""
    save = folder / f"{case}-{budget}.pt"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--case", case, "--budget", budget,
           "--save", str(save)]
    print(f"== {case} budget {budget}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    found = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not found:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:300]
        if done.returncode < 0:
            why = f"killed by signal {-done.returncode} (out of memory?)"
        print("   failed:", why, flush=True)
        return {"error": why}
    result = json.loads(found[-1])
    result["save"] = str(save)
    print("  ", result, flush=True)
    return result


def difference(a: dict, b: dict) -> float | None:
    """Largest absolute difference of two runs' maps."""
    if "save" not in a or "save" not in b:
        return None
    import torch

    return float((torch.load(a["save"]) - torch.load(b["save"])).abs().max())


def rows_for(case: str, budgets: list[str], folder: Path) -> tuple[list[str], bool]:
    """The report rows of one case (one row per budget, then the unbounded run); whether the
    unbounded run succeeded."""
    unbounded = measure(case, "unlimited", folder)
    rows = []
    for budget in budgets:
        r = measure(case, budget, folder)
        if "error" in r:
            rows.append(f"| {case} | {budget} | refused or failed: {r['error']} | | | | | |")
            continue
        ratio = f"{r['seconds'] / unbounded['seconds']:.2f}x" if "error" not in unbounded else "n/a"
        diff = difference(r, unbounded)
        rows.append(f"| {case} | {budget} | {r['seconds']:.1f} | {ratio} | {r['peak_gb']:.2f} | "
                    f"{r['explanation_gb']:.2f} | {r['base_gb']:.2f} | {'n/a' if diff is None else f'{diff:.3g}'} |")
    if "error" in unbounded:
        rows.append(f"| {case} | unlimited | failed: {unbounded['error']} | | | | | |")
    else:
        rows.append(f"| {case} | unlimited | {unbounded['seconds']:.1f} | 1.00x | {unbounded['peak_gb']:.2f} | "
                    f"{unbounded['explanation_gb']:.2f} | {unbounded['base_gb']:.2f} | |")
    return rows, "error" not in unbounded


def _load(averages: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in averages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="1x2048:4GB+9GB,64x224:4GB+8GB",
                        help="comma separated BxSIZE:BUDGET+BUDGET...")
    parser.add_argument("--fallback", default="1x1024", help="case measured when an unbounded run fails")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--budget", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        return worker(args)
    began = time.perf_counter()
    load_before = os.getloadavg()
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="relprop-memory-") as tmp:
        for spec in args.cases.split(","):
            case, budgets = spec.split(":")
            case_rows, ok = rows_for(case, budgets.split("+"), Path(tmp))
            rows += case_rows
            if not ok and args.fallback:
                rows += rows_for(args.fallback, budgets.split("+"), Path(tmp))[0]
    import torch

    command = "python benchmarks/memory.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    markdown = "\n".join([
        "## Bounded memory (benchmarks/memory.py)",
        "",
        f"`{command.strip()}` on {datetime.date.today()}: lrp-cmp on torchvision VGG-16 (random weights, "
        f"float32, CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, torchvision "
        f"{dist_version('torchvision')}), {time.perf_counter() - began:.0f} s in all. One fresh process per row; "
        "time of one call after a warm-up call on a 32 x 32 image; peak = the process's peak resident set; "
        "explanation = peak minus the resident set before the call (runtime, torch and weights: base). "
        f"Load average (1/5/15 min): {_load(load_before)} at the start, {_load(os.getloadavg())} at the end "
        f"on {os.cpu_count()} cores; other work on the machine shows in the times, not in the memory figures.",
        "",
        "| batch x size | memory_budget | time (s) | time / unlimited | peak (GB) | explanation (GB) | base (GB) "
        "| max abs difference to unlimited |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Target: time at most {TIME_TARGET}x the unlimited run's, explanation's peak within the budget.",
    ])
    write_section(Path(args.out), "memory.py", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
