"""Speed of relprop.metrics.region_perturbation against Quantus RegionPerturbation, side by side.

For every model, in one process and with the same settings for both libraries: N images, L regions
perturbed cumulatively in MoRF order (8 x 8 patch grid, removal by the image minimum = Quantus
"black", logits of fixed targets, random float64 maps without ties). Measured, in this order:

1. the bare forward passes the experiment needs: N * (L + 1) images through the model in chunks of
   ``--ibs`` (default: relprop's default chunk for these images and device,
   ``relprop.metrics.perturbation.chunk_size``; the inputs prepared beforehand, nothing else done);
2. relprop ``region_perturbation(..., internal_batch_size=--ibs, incremental=True)`` (incremental
   evaluation, each step recomputing only the feature-map windows its patch reaches; relprop's
   default on the CPU);
3. the same with ``incremental=False`` (all copies pushed through the model in chunks of ``--ibs``;
   relprop's default on other devices);
4. Quantus ``RegionPerturbation`` (``batch_size=N``: one forward pass of the whole batch per step);
5. the bare forward passes again (the machine may be shared: the two forward timings bracket the
   library timings);
6. the floor of exact incremental evaluation: the layers that one patch can reach in full
   (``IncrementalForward.fully_reached``: from resnet50's third stage on, and every layer after the
   last windowed one) have to be computed in full for every image and step by any method that gives
   the same curves; their time for the N * (L + 1) images, in the same chunks, bounds the speed-up any
   such method can have over Quantus on this device. They are timed as cheaply as they can be
   computed: eval-mode batch norms folded into the convolutions before them (as the incremental pass
   computes them), in the faster of the usual and the channels-last memory layout.

The curves of both libraries must agree (the script stops otherwise). Reported: wall and CPU time
(``time.process_time``: all threads of this process, less disturbed by other processes) of each,
relprop's cost relative to the forward passes (mean of the two forward timings) and the speed-up
over Quantus. Writes its section of docs/benchmarks.md (``--no-write`` to only print).

    python benchmarks/metrics_speed.py                      # small CNN and resnet50, 224 px, CPU
    python benchmarks/metrics_speed.py --device cuda --models resnet50
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from relprop.metrics import region_perturbation
from relprop.metrics.incremental import IncrementalForward
from relprop.metrics.perturbation import chunk_size, incremental_by_default

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "small":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, 10)).eval()
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None).eval()
    raise ValueError(f"unknown model {name!r}")


DESCRIPTION = {
    "small": "small CNN (3 conv layers 16/32/64 channels, 2 max-pools, linear head; 10 classes)",
    "resnet50": "torchvision resnet50 (random initialisation, eval mode; 1000 classes)",
}


class LinearProbe(nn.Module):
    """A float64 linear model: its outputs hardly depend on how inputs are batched, so it checks that both
    libraries build exactly the same perturbed images, step by step."""

    def __init__(self, numel: int, classes: int = 10) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("w", torch.randn(numel, classes, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64).flatten(1) @ self.w


def maps_like(rng: np.random.Generator, a: argparse.Namespace) -> np.ndarray:
    """Random maps in float64: in float32, two region sums closer than the rounding of a sum (about
    1e-6 here) can be ordered differently by the two libraries' summation orders."""
    return rng.normal(size=(a.images, 1, a.size, a.size))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Wall and CPU seconds of a block; on a GPU the wall time is read from CUDA events recorded around
    the block (after the queue before it drained), and ``peak_mb`` is the CUDA allocator's peak during
    the block above what was allocated when it began."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None

    def __enter__(self) -> "Timer":
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.begin.record()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.end.record()
            self.end.synchronize()
            self.wall = self.begin.elapsed_time(self.end) / 1e3
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


@torch.no_grad()
def forward_only(model: nn.Module, x: torch.Tensor, n: int, ibs: int) -> None:
    """``n`` images through the model in chunks of ``ibs``; the chunks are prepared beforehand."""
    reps = -(-ibs // x.shape[0])
    chunk = x.repeat(reps, 1, 1, 1)[:ibs].contiguous()
    for start in range(0, n, ibs):
        model(chunk[:min(ibs, n - start)])


@torch.no_grad()
def floor_time(model: nn.Module, x: torch.Tensor, patch: int, n: int, device: torch.device,
               batches: int = 6) -> tuple[float, float, int, int]:
    """Wall and CPU seconds that the nodes one ``patch`` x ``patch`` change can reach in full take for ``n``
    images, at a batch of ``len(x)`` (timed on ``batches`` batches, scaled to ``n`` images); and how many
    of the model's computing nodes those are, of how many. Eval-mode batch norms are folded into the
    convolutions before them (``torch.fx.experimental.optimization.fuse``), and of the usual and the
    channels-last layout the faster one counts."""
    model = fuse(copy.deepcopy(model).eval())
    inc = IncrementalForward(model, (patch, patch), max_fraction=1.0)
    inc.reset(x[:1])
    reached = set(inc.fully_reached())
    computing = [nd for nd in inc.nodes if nd.op not in ("placeholder", "output", "get_attr")]

    class Timed(torch.fx.Interpreter):
        wall = cpu = 0.0

        def run_node(self, node: torch.fx.Node):
            if node not in reached:
                return super().run_node(node)
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            out = super().run_node(node)
            sync(device)
            self.wall += time.perf_counter() - w0
            self.cpu += time.process_time() - c0
            return out

    best: tuple[float, float] | None = None
    for layout in (torch.contiguous_format, torch.channels_last):
        inputs = x.contiguous(memory_format=layout)
        timed = Timed(inc.graph_module)
        timed.run(inputs)  # warm-up
        timed.wall = timed.cpu = 0.0
        for _ in range(batches):
            timed.run(inputs)
        if best is None or timed.cpu < best[1]:
            best = (timed.wall, timed.cpu)
    scale = n / (batches * x.shape[0])
    return best[0] * scale, best[1] * scale, len(reached), len(computing)


def run_model(name: str, a: argparse.Namespace, device: torch.device, quantus) -> dict:
    model = build_model(name).to(device)
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(a.images, 3, a.size, a.size)).astype(np.float32)
    a_np = maps_like(rng, a)
    x = torch.tensor(x_np, device=device)
    maps = torch.tensor(a_np[:, 0], device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    n_fwd = a.images * (a.steps + 1)
    kw = dict(counts=range(a.steps + 1), patch_size=a.patch, removal="min", score="logit",
              internal_batch_size=a.ibs)
    chunk = chunk_size(a.ibs, x)
    res: dict = {"model": name, "n_forward": n_fwd, "chunk": chunk}
    # warm-up (first calls, allocator, oneDNN primitives) on a short run of both libraries
    forward_only(model, x, min(n_fwd, 2 * chunk), chunk)
    region_perturbation(model, x[:2], maps[:2], y[:2], **{**kw, "counts": range(3)})
    if quantus is not None:
        q = quantus.RegionPerturbation(patch_size=a.patch, order="morf", regions_evaluation=2,
                                       perturb_baseline="black", normalise=False, abs=False,
                                       disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q(model=model, x_batch=x_np[:2], y_batch=y[:2].cpu().numpy(), a_batch=a_np[:2], softmax=False,
              device=str(device), batch_size=2)

    with Timer(device) as t:
        forward_only(model, x, n_fwd, chunk)
    res["fwd1"] = t
    with Timer(device) as t:
        curves = region_perturbation(model, x, maps, y, incremental=True, **kw)
    res["incremental"] = t
    ours = curves.drop()[:, 1:].cpu().numpy()
    with Timer(device) as t:
        batched = region_perturbation(model, x, maps, y, incremental=False, **kw)
    res["batched"] = t
    scale = float(curves.scores.abs().max())
    gap = float((batched.scores - curves.scores).abs().max())
    if not gap <= 1e-4 * scale:
        raise SystemExit(f"{name}: incremental and batched curves differ by {gap:.3g} (logit scale {scale:.3g})")
    res["gap"] = gap
    res["qtime"] = None
    if quantus is not None:
        metric = quantus.RegionPerturbation(patch_size=a.patch, order="morf", regions_evaluation=a.steps,
                                            perturb_baseline="black", normalise=False, abs=False,
                                            disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Timer(device) as t:
                ref = np.asarray(metric(model=model, x_batch=x_np, y_batch=y.cpu().numpy(), a_batch=a_np,
                                        softmax=False, device=str(device), batch_size=a.images))
        res["qtime"] = t
        if ref.shape != ours.shape:
            raise SystemExit(f"{name}: curve shapes differ: Quantus {ref.shape}, relprop {ours.shape}")
        diff = float(np.abs(ref - ours).max())
        scale = float(curves.scores.abs().max())  # the logits' magnitude
        res["diff"], res["scale"] = diff, scale
        # float32 convolutions: oneDNN picks kernels by batch size, so the logits of one image differ
        # slightly between the two libraries' batches (the perturbed images themselves are identical,
        # see probe_check)
        if not diff <= 1e-4 * scale:
            raise SystemExit(f"{name}: the curves differ: max |difference| {diff:.3g} (logit scale {scale:.3g})")
    with Timer(device) as t:
        forward_only(model, x, n_fwd, chunk)
    res["fwd2"] = t
    res["floor"] = floor_time(model, x[:chunk], a.patch, n_fwd, device)
    return res


def probe_check(a: argparse.Namespace, device: torch.device, quantus) -> float:
    """Both libraries on the float64 linear probe, same images and maps as the timed runs: the curves
    must agree to 1e-9 relative, i.e. every perturbed image is the same. Returns the max difference."""
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(a.images, 3, a.size, a.size)).astype(np.float32)
    a_np = maps_like(rng, a)
    probe = LinearProbe(3 * a.size * a.size).to(device).eval()
    x = torch.tensor(x_np, device=device)
    with torch.no_grad():
        y = probe(x).argmax(1)
    curves = region_perturbation(probe, x, torch.tensor(a_np[:, 0], device=device), y,
                                 counts=range(a.steps + 1), patch_size=a.patch, removal="min",
                                 internal_batch_size=a.ibs)
    metric = quantus.RegionPerturbation(patch_size=a.patch, order="morf", regions_evaluation=a.steps,
                                        perturb_baseline="black", normalise=False, abs=False,
                                        disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(metric(model=probe, x_batch=x_np, y_batch=y.cpu().numpy(), a_batch=a_np,
                                softmax=False, device=str(device), batch_size=a.images))
    diff = float(np.abs(ref - curves.drop()[:, 1:].cpu().numpy()).max())
    if not diff <= 1e-9 * float(curves.scores.abs().max()):
        raise SystemExit(f"linear probe: the perturbed images differ (max curve difference {diff:.3g})")
    return diff


def fmt_s(v: float) -> str:
    return f"{v:,.1f}"


def report(results: list[dict], a: argparse.Namespace, device: torch.device, load0, load1, started: str,
           elapsed: float, quantus_version: str, probe_diff: float) -> str:
    chunks = " / ".join(f"{r['chunk']} images ({r['model']})" for r in results)
    lines = [
        "## Metrics: region perturbation, relprop vs Quantus",
        "",
        f"Generated by `python benchmarks/metrics_speed.py` on {started}.",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.get_num_threads()} threads (its default), device `{device}`; load average (1/5/15 min) "
        f"{' / '.join(f'{v:.2f}' for v in load0)} at the start and {' / '.join(f'{v:.2f}' for v in load1)} "
        f"at the end ({elapsed / 60:.1f} min in all).",
        *([f"- GPU: {torch.cuda.get_device_name(device)}; wall times from CUDA events recorded around each "
           "timed block, peak memory from the CUDA allocator (increase of `max_memory_allocated` over the "
           "memory allocated when the block began)."] if device.type == "cuda" else []),
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, quantus {quantus_version}.",
        f"- Work: {a.images} random images of {a.size}x{a.size}, random maps (no ties), {a.steps} steps of "
        f"MoRF region perturbation (float64 maps, patch {a.patch}x{a.patch}, removal by the image minimum = Quantus "
        f"\"black\", logits of fixed targets): {a.images} x ({a.steps} + 1) = {a.images * (a.steps + 1):,} "
        f"images through the model. relprop: `region_perturbation(..., internal_batch_size={a.ibs})` "
        f"({'its default chunk: ' if a.ibs is None else ''}{chunks}); Quantus: "
        f"`RegionPerturbation(patch_size={a.patch}, regions_evaluation={a.steps}, perturb_baseline=\"black\", "
        f"normalise=False, abs=False)` called with `batch_size={a.images}` (one forward pass of the whole "
        f"batch per step).",
        f"- Forward passes: the same {a.images * (a.steps + 1):,} images through the bare model in chunks of "
        f"{chunks}, inputs prepared beforehand; timed before relprop and again after Quantus (columns "
        f"\"forward\": first / second); ratios use their mean. One timed run each after a warm-up; wall time "
        f"(`perf_counter`) and CPU time of the process (`process_time`, all threads).",
        "- Same curves: the script stops unless the two libraries' curves `f(x) - f(x^(k))`, k = 1..L, agree "
        "within 1e-4 of the logits' magnitude (float32 convolutions: oneDNN picks kernels by batch size, and "
        "the two libraries batch differently; max difference below), and unless, on a float64 linear probe "
        "model with the same images, maps and settings, they agree to 1e-9 relative, i.e. both build the "
        f"same perturbed images at every step (max difference on the probe: {probe_diff:.1e}).",
        "",
        "| model | forward s (1st / 2nd) | relprop s (incremental / batched) | Quantus s "
        "| speed-up vs Quantus, wall (incremental / batched) | CPU (incremental / batched) "
        "| relprop / forward, wall (incremental / batched) | CPU | max curve difference vs Quantus "
        "| floor s (layers reached in full) | incremental / floor, wall / CPU | speed-up bound, wall / CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        fw = (r["fwd1"].wall + r["fwd2"].wall) / 2
        fc = (r["fwd1"].cpu + r["fwd2"].cpu) / 2
        rp, bt = r["incremental"], r["batched"]
        q = r["qtime"]
        qs = fmt_s(q.wall) if q else "n/a"
        sw = f"{q.wall / rp.wall:.2f}x / {q.wall / bt.wall:.2f}x" if q else "n/a"
        sc = f"{q.cpu / rp.cpu:.2f}x / {q.cpu / bt.cpu:.2f}x" if q else "n/a"
        d = f"{r['diff']:.1e} (logits up to {r['scale']:.2g})" if q else "n/a"
        fl_w, fl_c, n_reached, n_nodes = r["floor"]
        bound = f"{q.wall / fl_w:.1f}x / {q.cpu / fl_c:.1f}x" if q else "n/a"
        lines.append(f"| {DESCRIPTION[r['model']]} | {fmt_s(r['fwd1'].wall)} / {fmt_s(r['fwd2'].wall)} | "
                     f"{fmt_s(rp.wall)} / {fmt_s(bt.wall)} | {qs} | {sw} | {sc} | "
                     f"{rp.wall / fw:.3f}x / {bt.wall / fw:.3f}x | {rp.cpu / fc:.3f}x / {bt.cpu / fc:.3f}x | {d} | "
                     f"{fmt_s(fl_w)} ({n_reached} of {n_nodes} nodes) | {rp.wall / fl_w:.2f}x / {rp.cpu / fl_c:.2f}x "
                     f"| {bound} |")
    lines += [
        "",
        "Targets: speed-up >= 5x, relprop / forward <= 1.25x, incremental <= 1.5x its floor. Reading: batched, both libraries push the same "
        f"{a.images * (a.steps + 1):,} images through the model (Quantus 0.6 already batches the images of a "
        "step), so where the forward passes dominate (CPU, these models at 224 px) that speed-up is bounded by "
        "(Quantus's own overhead + forward) / (relprop's overhead + forward). Incremental evaluation (the "
        "default) does less arithmetic than those forward passes: a step changes one patch, and only the "
        "windows of the feature maps that the patch reaches are recomputed, so its cost is below 1x the "
        "forward passes. How much it saves depends on how fast the receptive field grows: in the small CNN "
        "a patch reaches a small part of every map; in resnet50 it covers the whole map from the third "
        "stage on, and those stages (about half of the arithmetic) are computed in full at every step.",
        "",
        "Floor: the nodes a patch can reach in full (`IncrementalForward.fully_reached()`: their whole map, or "
        "not evaluated window by window) timed alone, for the same number of images in chunks of "
        f"{chunks}, with eval-mode batch norms folded into their convolutions and in the faster of the usual "
        "and the channels-last layout. Any method that gives the same curves computes them for every image and step, so "
        "Quantus's time over the floor bounds the speed-up any exact method can reach on this device, "
        "however the rest is done.",
    ]
    if device.type == "cuda":
        lines.append("")
        lines.append("Peak GPU memory (MB), relprop incremental / batched / Quantus: " + "; ".join(
            f"{r['model']}: " + " / ".join("n/a" if t is None or t.peak_mb is None else f"{t.peak_mb:,.0f}"
                                           for t in (r["incremental"], r["batched"], r["qtime"]))
            for r in results) + ".")
    default = "incremental" if incremental_by_default(device) else "batched"  # incremental=None's choice
    lines.append("")
    lines.append(f"relprop's default (`incremental=None`) on device `{device.type}` is the {default} path; "
                 f"the target applies to it.")
    missed = [DESCRIPTION[r["model"]].split(" (")[0] for r in results
              if r["qtime"] and r["qtime"].wall / r[default].wall < 5]
    if missed:
        lines.append("")
        lines.append(f"**The speed-up target is not met on this device** for: {', '.join(missed)}.")
    over = [DESCRIPTION[r["model"]].split(" (")[0] for r in results
            if r["incremental"].wall / r["floor"][0] > 1.5 and r["incremental"].cpu / r["floor"][1] > 1.5]
    if over:
        lines.append("")
        lines.append(f"**Incremental evaluation is above 1.5x its floor** (wall and CPU) for: {', '.join(over)}.")
    if max(load0[0], load1[0]) > (os.cpu_count() or 1):
        lines.append("")
        lines.append(f"**WARNING**: the machine was busy (1-minute load up to {max(load0[0], load1[0]):.1f} on "
                     f"{os.cpu_count()} cores); the CPU-time ratios are the more reliable ones.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small", "resnet50"], choices=["small", "resnet50"])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--ibs", type=int, default=None,
                   help="relprop's internal batch size and the forward chunks (default: relprop's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-quantus", action="store_true")
    p.add_argument("--no-write", action="store_true", help="print the section, do not write docs/benchmarks.md")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    a = p.parse_args()
    if (-(-a.size // a.patch)) ** 2 < a.steps:
        p.error("the image has fewer regions than --steps")
    quantus, qv = None, "not installed"
    if not a.no_quantus:
        try:
            import quantus  # type: ignore[no-redef]

            qv = quantus.__version__
        except ImportError:
            quantus = None
    device = torch.device(a.device)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    probe_diff = probe_check(a, device, quantus) if quantus is not None else float("nan")
    print(f"linear probe: same perturbed images (max curve difference {probe_diff:.1e})", flush=True)
    results = []
    for name in a.models:
        r = run_model(name, a, device, quantus)
        results.append(r)
        q = r["qtime"]
        print(f"{name}: forward {r['fwd1'].wall:.1f} / {r['fwd2'].wall:.1f} s, relprop {r['incremental'].wall:.1f} s "
              f"(incremental) / {r['batched'].wall:.1f} s (batched), Quantus {q.wall if q else float('nan'):.1f} s", flush=True)
    load1 = os.getloadavg()
    md = report(results, a, device, load0, load1, started, time.perf_counter() - t0, qv, probe_diff)
    print(md)
    if not a.no_write:
        write_section(a.out, "metrics_speed.py" if device.type == "cpu" else "metrics_speed.py --device cuda", md)
        print(f"wrote the metrics_speed.py section of {a.out}")


if __name__ == "__main__":
    main()
