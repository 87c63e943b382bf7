#!/usr/bin/env python
"""Several targets per image: one call with K classes per sample against K separate calls.

Run from the repository root::

    python benchmarks/multi_target.py [--models vgg16,resnet50] [--methods lrp-cmp,rap,sglrp]
                                      [--batch 4] [--k 5] [--size 224] [--repeats 3] [--budget 0]
                                      [--out docs/benchmarks.md]

Everything runs on the CPU in float32 with torchvision models at random initialisation in eval mode
(nothing is downloaded), as ``benchmarks/speed.py``. For each model and method two runners explain
the same batch for the same K classes per sample: ``relprop.explain(model, x, target=(B, K))``
(one call) and K calls ``relprop.explain(model, x, target=column k)`` (separate). Timing is in this
process: one warm-up round over all runners on a small image (tracing, per-layer weight caches), then
``--repeats`` rounds, each calling every runner once in turn (round robin), timed with
``time.perf_counter`` and ``time.process_time``. Reported: medians and minima, the ratio of the
one call's median to the separate calls' median, and as checks against a busy machine the ratio of
the minima and of the median CPU times; and, for the last round's maps, the largest relative difference,
``max |one - separate| / max |separate|`` over every (sample, target) map.

relprop is imported from a copy of ``src/relprop`` taken when the run starts (as speed.py). The
markdown section (``--out``) is written entirely from the run. ``--budget`` (seconds, whole run; 0:
none) stops starting timed rounds that would not fit (at least one round per model is timed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (benchmarks/speed.py: source snapshot, models, machine description)
from _report import allocator, allocator_settings, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Tensor = torch.Tensor
TARGET = 0.5  #: the one call should take at most this fraction of the separate calls' time
REFERENCE = "(reference passes)"  #: the key of the forward pass and the plain gradient in the results


#: gradient-sized backward passes per target: RAP's hidden rule maps its relevance back through the
#: stacked weight parts [w+; |w-|] (Nam et al. 2020, Eq. 8-9), a transposed product twice the gradient's
BACKWARD_PASSES = {"rap": 2}


def floor_ratio(forward: float, gradient: float, k: int, separate: float, passes: int = 1) -> float:
    """A lower bound on the one call's time over the separate calls': one forward pass shared by the K
    targets, then per target at least ``passes`` backward passes as expensive as the plain gradient's
    (``gradient - forward``): ``(forward + K passes (gradient - forward)) / separate``."""
    return (forward + k * passes * max(gradient - forward, 0.0)) / separate


@dataclass
class Row:
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    output: Tensor | None = None

    def median(self) -> float:
        return statistics.median(self.times)

    def cpu(self) -> float:
        return statistics.median(self.cpu_times)


def targets_for(batch: int, k: int) -> Tensor:
    """K distinct fixed classes per sample (no forward pass needed to choose them)."""
    return (torch.arange(batch)[:, None] * 97 + torch.arange(k)[None, :] * 131 + 3) % 1000


def runners(method: str, model: nn.Module, x: Tensor, targets: Tensor) -> dict[str, Callable[[], Tensor]]:
    relprop = speed.relprop

    def one() -> Tensor:
        return relprop.explain(model, x, target=targets, method=method)

    def separate() -> Tensor:
        return torch.stack([relprop.explain(model, x, target=targets[:, k], method=method)
                            for k in range(targets.shape[1])], 1)
    return {"one call": one, "separate": separate}


def reference_runners(model: nn.Module, x: Tensor, targets: Tensor) -> dict[str, Callable[[], Tensor]]:
    """The two passes that bound any one call from below: the forward pass alone, and the plain gradient
    of one class per sample (a forward pass and one backward pass of autograd to the input alone: no
    parameter gradients)."""
    def forward() -> Tensor:
        with torch.no_grad():
            return model(x)

    plain_gradient = speed.build_gradient(model, "", False)  # the 1.00x reference of speed.py

    def gradient() -> Tensor:
        with torch.enable_grad():
            return plain_gradient(x, targets[:, 0])
    return {"forward": forward, "gradient": gradient}


def timed(run: Callable[[], Tensor]) -> tuple[float, float, Tensor]:
    cpu, start = time.process_time(), time.perf_counter()
    out = run()
    return time.perf_counter() - start, time.process_time() - cpu, out


def relative_error(one: Tensor, separate: Tensor) -> float:
    """``max |one - separate| / max |separate|`` over every (sample, target) map."""
    diff = (one - separate).abs().flatten(2).amax(2)
    scale = separate.abs().flatten(2).amax(2).clamp(min=torch.finfo(separate.dtype).tiny)
    return float((diff / scale).max())


def bench_model(name: str, args: argparse.Namespace, deadline: float | None) -> dict[str, dict[str, Row]]:
    model = speed.make_model(name)
    x, _ = speed.make_input(args.batch, args.size)
    targets = targets_for(args.batch, args.k)
    jobs = {(m, kind): run for m in args.methods for kind, run in runners(m, model, x, targets).items()}
    jobs.update({(REFERENCE, kind): run for kind, run in reference_runners(model, x, targets).items()})
    rows = {key: Row() for key in jobs}
    round_times = []
    small = speed.make_input(1, 64)[0]
    with torch.no_grad():
        for method in args.methods:  # warm-up on a small image: tracing and the per-layer weight caches
            for run in runners(method, model, small, targets[:1]).values():
                run()
        for r in range(args.repeats):
            if r > 0 and deadline is not None and time.time() + statistics.mean(round_times) > deadline:
                print(f"{name}: budget reached after {r} timed rounds", flush=True)
                break
            start = time.perf_counter()
            for key, run in jobs.items():
                seconds, cpu, rows[key].output = timed(run)  # the last round's maps are compared
                rows[key].times.append(seconds)
                rows[key].cpu_times.append(cpu)
            round_times.append(time.perf_counter() - start)
            print(f"{name} round {r + 1}: {round_times[-1]:.1f} s", flush=True)
    results: dict[str, dict[str, Row]] = {}
    for (method, kind), row in rows.items():
        results.setdefault(method, {})[kind] = row
    return results


def report(all_results: dict[str, dict[str, dict[str, Row]]], args: argparse.Namespace, what: str,
           command: str, seconds: float) -> str:
    lines = [
        "## Several targets per image: one call against separate calls"
        + (f" ({', '.join(allocator_settings())})" if allocator_settings() else ""),
        "",
        f"One `relprop.explain(model, x, target=...)` call with K = {args.k} classes per image (a (B, K) "
        f"target; maps shaped (B, K, 3, H, W)) against {args.k} calls with one class per image, on the "
        f"CPU in float32, torchvision models at random initialisation, batch {args.batch}, "
        f"{args.size} x {args.size}. The one call runs the forward pass once and one backward pass over "
        "the B x K rows, which goes on in groups of targets from the first layer whose maps would pass "
        "32 MiB for the B x K rows (`relprop.propagate.PASS_BYTES`); the rules' terms that depend on "
        "the forward values alone (z+ responses, stabilised denominators, z^B's bounds) are computed "
        "once per image, for every group, and the rules broadcast each image's cached values over its "
        "K rows instead of copying them. Target: at most "
        f"{TARGET:g} x the time of the separate calls. *max rel. diff.*: the largest "
        "`max |one - separate| / max |separate|` over every (image, target) map (float32 rounding).",
        "",
        "| model | method | one call (median) | separate (median) | ratio of medians | ratio of minima | "
        "ratio of CPU times | floor | rounds | max rel. diff. | target met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for model, methods in all_results.items():
        ref = methods[REFERENCE]
        for method, rows in methods.items():
            if method == REFERENCE:
                continue
            one, sep = rows["one call"], rows["separate"]
            assert one.output is not None and sep.output is not None
            r = one.median() / sep.median()
            floor = floor_ratio(ref['forward'].median(), ref['gradient'].median(), args.k, sep.median(),
                                BACKWARD_PASSES.get(method, 1))
            lines.append(
                f"| {model} | `{method}` | {one.median():.2f} s | {sep.median():.2f} s | {r:.2f} | "
                f"{min(one.times) / min(sep.times):.2f} | {one.cpu() / sep.cpu():.2f} | "
                f"{floor:.2f} | "
                f"{len(one.times)} | "
                f"{relative_error(one.output, sep.output):.1e} | {'yes' if r <= TARGET else 'no'} |")
    lines += [
        "",
        "*floor*: `(F + K P (G - F)) / separate`, with F the forward pass alone and G the plain gradient of "
        "one class per image (autograd, to the input alone), timed in the same rounds ("
        + "; ".join(f"{model}: F {m[REFERENCE]['forward'].median():.2f} s, G {m[REFERENCE]['gradient'].median():.2f} s"
                    for model, m in all_results.items())
        + "): what the one call would take if it shared the forward pass and everything that does not "
        "depend on the target, and then cost each target no more than P backward passes of the gradient. "
        "The LRP rules' backward pass per target is one transposed product per layer like the "
        "gradient's (P = 1), plus its element-wise ratios; RAP's maps its relevance through two stacked "
        "weight parts [w+; |w-|], twice the transposed product (P = 2). A ratio below the floor is out of "
        "reach; a target below the floor is out of reach for that method.",
        "",
        *([("Allocator: glibc hands out a block over its mmap threshold (32 MB at most, adjusted as blocks "
            "are freed) as a fresh memory map, which the kernel zeroes page by page on first touch. Without "
            "the groups of targets, the one call's temporaries would hold B x K rows of a feature map and "
            "pass that size (a 256-channel 56 x 56 map for 20 rows: 64 MB), where the separate calls' hold "
            "B rows and are reused from the heap. With the settings above the heap serves every size; the "
            "maps are the same.")] if allocator_settings() else []),
        *([""] if allocator_settings() else []),
        f"Command: `{command}` ({seconds / 60:.0f} min). Machine: {speed.cpu_model()}, "
        f"{os.cpu_count()} logical CPUs, {speed.total_ram_gib()} RAM, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {allocator()}; relprop from {what}; "
        f"run {datetime.date.today().isoformat()}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--methods", default="lrp-cmp,rap,sglrp")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0, help="seconds for the whole run (0: no limit)")
    parser.add_argument("--relprop-ref", default="worktree", help="'worktree' or a git revision")
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown file, or - for none")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    command = " ".join([*allocator_settings(), "python benchmarks/multi_target.py", shlex.join(sys.argv[1:])])
    folder, what = speed.snapshot_relprop(args.relprop_ref)
    speed.use_relprop(folder)
    started = time.time()
    deadline = started + args.budget if args.budget else None
    results = {name: bench_model(name, args, deadline) for name in args.models.split(",")}
    text = report(results, args, what, command.strip(), time.time() - started)
    if args.out != "-":
        path = ROOT / args.out if not os.path.isabs(args.out) else Path(args.out)
        # a run with allocator settings has a section of its own, beside the default one
        write_section(path, "multi_target.py" + (" allocator" if allocator_settings() else ""), text)
        print(f"wrote {path}")
    print(text)


if __name__ == "__main__":
    main()
