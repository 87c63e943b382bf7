#!/usr/bin/env python
"""Speed and peak memory of relprop's transformer methods against the plain gradient and lxt 2.1.

Run from the repository root (lxt is installed by the README's set-up, ``pip install --no-deps lxt==2.1``)::

    python benchmarks/transformer_speed.py [--model vit_b_16] [--batch 4] [--repeats 3] [--gamma 0.1]
                                           [--budget 400MB] [--out docs/benchmarks.md]

torchvision's ``vit_b_16`` at random initialisation (nothing is downloaded), float32, eval mode, CPU,
parameters frozen, batch ``--batch`` of 224-pixel images, one target class per image. Compared:

* ``forward``: the forward pass alone, without autograd: every method here runs it, and then a
  backward pass through the same linear layers, which costs about as much again;
* ``gradient``: one forward and one backward pass of plain autograd;
* relprop's ``cp-lrp`` and ``attnlrp`` (defaults: LRP-epsilon 1e-6 on every linear layer), both
  with ``gamma=--gamma`` on the convolution and linear layers outside attention, and both with
  ``memory_budget=--budget`` (segment-wise recomputation of the forward pass);
* lxt 2.1's efficient (gradient x input) implementation: its torchvision ViT configuration (CP-LRP:
  GELU identity rule, layer norm with sigma detached, query and key detached), alone and with a zennit
  ``Gamma(--gamma)`` composite on ``nn.Conv2d`` and ``nn.Linear`` as lxt's ViT example does (through
  ``lxt.efficient.zennit_patches.monkey_patch_zennit``); and lxt's AttnLRP attention wrapper
  (``wrap_attention_forward``) around torchvision's attention arithmetic, the configuration that
  tests/test_transformers.py shows equal to relprop's ``attnlrp``.

lxt patches torch classes (``nn.GELU``, ``nn.LayerNorm``, ``nn.MultiheadAttention``) process-wide.
This script keeps both the original and the patched ``forward`` of each class and installs the right
ones before every call, so that all methods run in one process, round robin (one warm-up round, then
``--repeats`` timed rounds, each calling every method once): a slow drift of the machine hits every
method alike. Reported: median and minimum time, the ratio of the medians to the gradient's, and the
process CPU time as a check against a busy machine. Peak memory: one fresh subprocess per method,
the increase of the peak resident set size over the size after the model and the input were made.
Sanity: the cosine similarity of each lxt map to its relprop counterpart.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
# the relprop to measure: src/ of this checkout, or the snapshot benchmarks/speed.py hands over
sys.path.insert(0, os.environ.get("RELPROP_BENCH_PATH") or str(ROOT / "src"))
from _report import cpu_model, dist_version, status_kib, write_section  # noqa: E402

import relprop  # noqa: E402

Tensor = torch.Tensor
Runner = Callable[[Tensor, Tensor], Tensor]

#: target ratios of the issue this benchmark answers
ATTNLRP_OVER_GRADIENT = 1.5
LXT_OVER_RELPROP = 1.5


# --------------------------------------------------------------------------------------------------
# lxt: its patches, kept beside the original forwards so that either can be installed per call
# --------------------------------------------------------------------------------------------------
class LxtPatches:
    """The original and lxt-patched ``forward`` of the classes lxt patches for torchvision's ViT."""

    CLASSES = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)

    def __init__(self) -> None:
        import lxt

        if "lxt.efficient" not in sys.modules:  # its __init__ imports the language models (transformers)
            efficient = types.ModuleType("lxt.efficient")
            efficient.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
            sys.modules["lxt.efficient"] = efficient
        from lxt.efficient import patches as P

        self.version = getattr(lxt, "__version__", None) or dist_version("lxt")
        self.original = {cls: cls.forward for cls in self.CLASSES}
        P.patch_method(P.non_linear_forward, nn.GELU, keep_original=True)
        P.patch_method(P.layer_norm_forward, nn.LayerNorm)
        P.patch_method(P.cp_multi_head_attention_forward, nn.MultiheadAttention, keep_original=True)
        self.cp = {cls: cls.forward for cls in self.CLASSES}
        nn.MultiheadAttention.original_forward = self.original[nn.MultiheadAttention]

        def eager_attention(module, query, key, value):
            scores = torch.matmul(query, key.transpose(-2, -1)) / query.shape[-1] ** 0.5
            return torch.matmul(torch.softmax(scores, dim=-1), value)

        wrapped = P.wrap_attention_forward(eager_attention)

        def attnlrp_attention(self, query, key, value, *args, **kwargs):
            e, h = self.embed_dim, self.num_heads
            n, length = query.shape[:2]
            q, k, v = torch.nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias).split(e, dim=-1)
            q, k, v = (t.reshape(n, length, h, e // h).transpose(1, 2) for t in (q, k, v))
            out = wrapped(self, q, k, v).transpose(1, 2).reshape(n, length, e)
            # the output projection as torch's own attention applies it (no module call: no zennit hook)
            return torch.nn.functional.linear(out, self.out_proj.weight, self.out_proj.bias), None

        self.attnlrp = {**self.cp, nn.MultiheadAttention: attnlrp_attention}
        self.install(self.original)

    @staticmethod
    def install(forwards: dict) -> None:
        for cls, forward in forwards.items():
            cls.forward = forward

    def zennit_gamma(self, gamma: float):
        """lxt's ViT example: zennit ``Gamma`` on convolutions and linear layers, through lxt's bridge."""
        from lxt.efficient.zennit_patches import monkey_patch_zennit
        from zennit.composites import LayerMapComposite
        from zennit.rules import Gamma

        if not getattr(self, "zennit_patched", False):  # once: a second call only warns that it is patched
            monkey_patch_zennit(verbose=False)
            self.zennit_patched = True
        return LayerMapComposite([(nn.Conv2d, Gamma(gamma)), (nn.Linear, Gamma(gamma))])


def gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    y.gather(1, target[:, None]).sum().backward()
    return x * x.grad


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    key: str
    label: str
    counterpart: str | None = None  # the relprop method an lxt row is compared with


def specs(gamma: float, budget: str) -> list[Spec]:
    g = f"gamma={gamma:g}"
    return [
        Spec("forward", "forward pass alone (no gradient)"),
        Spec("gradient", "gradient (plain autograd)"),
        Spec("relprop-cp", "relprop cp-lrp"),
        Spec("relprop-attn", "relprop attnlrp"),
        Spec("relprop-cp-gamma", f"relprop cp-lrp, {g}"),
        Spec("relprop-attn-gamma", f"relprop attnlrp, {g}"),
        Spec("relprop-cp-budget", f"relprop cp-lrp, memory_budget={budget}", "relprop-cp"),
        Spec("relprop-attn-budget", f"relprop attnlrp, memory_budget={budget}", "relprop-attn"),
        Spec("lxt-cp", "lxt CP-LRP (its ViT configuration)", "relprop-cp"),
        Spec("lxt-attn", "lxt AttnLRP attention wrapper", "relprop-attn"),
        Spec("lxt-cp-gamma", f"lxt CP-LRP + zennit Gamma({gamma:g})", "relprop-cp-gamma"),
        Spec("lxt-attn-gamma", f"lxt AttnLRP attention wrapper + zennit Gamma({gamma:g})", "relprop-attn-gamma"),
    ]


def build(key: str, model: nn.Module, gamma: float, lxt: LxtPatches | None, budget: str) -> Runner:
    if key == "forward":
        def run(x, t):
            if lxt is not None:
                lxt.install(lxt.original)
            with torch.no_grad():
                return model(x)
        return run
    if key == "gradient":
        def run(x, t):
            if lxt is not None:
                lxt.install(lxt.original)
            x = x.detach().clone().requires_grad_(True)
            model(x).gather(1, t[:, None]).sum().backward()
            return x.grad
        return run
    if key.startswith("relprop"):
        method = "cp-lrp" if "-cp" in key else "attnlrp"
        options: dict = {"gamma": gamma} if key.endswith("gamma") else {}
        if key.endswith("budget"):
            options["memory_budget"] = budget

        def run(x, t):
            if lxt is not None:
                lxt.install(lxt.original)
            return relprop.explain(model, x, target=t, method=method, **options)
        return run
    if lxt is None:
        raise RuntimeError("lxt is not installed (pip install --no-deps lxt==2.1)")
    forwards = lxt.attnlrp if key.startswith("lxt-attn") else lxt.cp
    composite = lxt.zennit_gamma(gamma) if key.endswith("gamma") else None

    def run(x, t):
        lxt.install(forwards)
        try:
            if composite is None:
                return gradient_x_input(model, x, t)
            with composite.context(model):
                return gradient_x_input(model, x, t)
        finally:
            lxt.install(lxt.original)
    return run


def make(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    with torch.no_grad():  # torchvision zeroes the head: draw it, so that the target logit depends on the input
        nn.init.normal_(model.heads.head.weight, std=0.02)
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 224, 224, generator=generator)
    target = torch.randint(0, 1000, (args.batch,), generator=generator)
    return model, x, target


def load_lxt() -> LxtPatches | None:
    try:
        return LxtPatches()
    except ImportError:
        return None


# --------------------------------------------------------------------------------------------------
# memory: one subprocess per method
# --------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    lxt = load_lxt()
    model, x, target = make(args)
    runner = build(args.method, model, args.gamma, lxt, args.budget)
    gc.collect()
    base = status_kib("VmRSS")
    out = runner(x, target)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (peak - base) / 1024, "finite": bool(torch.isfinite(out).all())}))


def measure_memory(keys: list[str], args: argparse.Namespace) -> dict[str, dict]:
    out = {}
    for key in keys:
        print(f"== peak memory: {key}", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--method", key, "--model", args.model,
               "--batch", str(args.batch), "--gamma", str(args.gamma), "--budget", args.budget]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        found = [line for line in done.stdout.splitlines() if line.startswith("{")]
        out[key] = json.loads(found[-1]) if found else {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return out


# --------------------------------------------------------------------------------------------------
# timing and report
# --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    spec: Spec
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    output: Tensor | None = None
    error: str = ""
    memory: dict = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.sum(1).flatten(1).double(), b.sum(1).flatten(1).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


def report(rows: list[Row], args: argparse.Namespace, seconds: float, load: list[float]) -> str:
    by = {r.spec.key: r for r in rows}
    grad = by["gradient"].median

    def ratio(key: str, over: str | None = None) -> float | None:
        a, b = by[key].median, (by[over].median if over else grad)
        return a / b if a and b else None

    def f(v: float | None, fmt: str = "{:.2f}x") -> str:
        return "n/a" if v is None else fmt.format(v)

    lines = ["## Transformers: relprop against lxt on a ViT", "",
             f"`python benchmarks/transformer_speed.py --model {args.model} --batch {args.batch} "
             f"--repeats {args.repeats} --gamma {args.gamma:g} --budget {args.budget}`"
             + (f", run by `{args.invoked_by}`" if args.invoked_by else "")
             + f" ({datetime.date.today().isoformat()}; "
             f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, lxt {dist_version('lxt')}, "
             f"zennit {dist_version('zennit')}; {seconds / 60:.1f} min; 1-minute load average during timing "
             f"{min(load):.1f}-{max(load):.1f}).", "",
             f"torchvision `{args.model}`, random weights, float32, CPU, batch {args.batch} at 224 px, one target per "
             "image; all methods in one process, round robin (lxt's class patches installed before each lxt call "
             "and removed after); one warm-up round, then the timed rounds. Peak memory: a fresh process per method, "
             "increase of the peak resident set over the size after the model and the input exist. `cos` is the "
             "smallest per-image cosine similarity of the channel-summed map to its relprop counterpart.", "",
             "| method | median | min | CPU time | / gradient | peak memory | cos to relprop |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.spec.label} | failed: {r.error} | | | | | |")
            continue
        cos = cosine(r.output, by[r.spec.counterpart].output) if r.spec.counterpart and by[r.spec.counterpart].output is not None else None
        mem = r.memory.get("peak_mb")
        lines.append(f"| {r.spec.label} | {r.median * 1e3:.0f} ms | {min(r.times) * 1e3:.0f} ms | "
                     f"{statistics.median(r.cpu) * 1e3:.0f} ms | {f(ratio(r.spec.key))} | "
                     f"{'n/a' if mem is None else f'{mem:.0f} MB'} | {'' if cos is None else f'{cos:.6f}'} |")
    lines += ["", "Targets (relprop time / gradient <= "
              f"{ATTNLRP_OVER_GRADIENT}x, lxt time / relprop time >= {LXT_OVER_RELPROP}x, relprop peak memory / lxt "
              "<= 1x), each pair with the same rules on both sides:", "",
              "| relprop | lxt | relprop / gradient | lxt / relprop (time) | relprop / lxt (memory) | all met |",
              "|---|---|---:|---:|---:|---|"]
    pairs = [("relprop-cp", "lxt-cp"), ("relprop-attn", "lxt-attn"),
             ("relprop-cp-budget", "lxt-cp"), ("relprop-attn-budget", "lxt-attn"),
             ("relprop-cp-gamma", "lxt-cp-gamma"), ("relprop-attn-gamma", "lxt-attn-gamma")]
    for ours, theirs in pairs:
        if by[ours].error or by[theirs].error:
            continue
        own, speedup = ratio(ours), ratio(theirs, ours)
        mem_l, mem_r = by[theirs].memory.get("peak_mb"), by[ours].memory.get("peak_mb")
        memory = mem_r / mem_l if mem_l and mem_r else None
        checks = [own is not None and own <= ATTNLRP_OVER_GRADIENT,
                  speedup is not None and speedup >= LXT_OVER_RELPROP, memory is not None and memory <= 1]
        lines.append(f"| {by[ours].spec.label} | {by[theirs].spec.label} | {f(own)} | {f(speedup)} | {f(memory)} | "
                     f"{'yes' if all(checks) else 'no'} |")
    forward = by["forward"].median if not by["forward"].error else None
    floor = ""
    if forward and not by["lxt-cp"].error:
        passes = by["lxt-cp"].median / forward
        floor = (f" Here it takes {passes:.1f} forward passes' time (the forward pass alone: "
                 f"{forward * 1e3:.0f} ms); 1.5x faster would be {passes / 1.5:.1f}, less than a forward pass "
                 "and a backward pass through the same linear layers.")
    lines += ["", "lxt's efficient mode is a modified gradient: one forward and one backward pass of autograd with "
              "a few patched functions, so with LRP-0 on its linear layers (no zennit composite) it costs about a "
              "plain gradient, and no method that also forms the LRP ratios can be 1.5x faster than it." + floor +
              f" Under `memory_budget={args.budget}` relprop keeps only the boundaries of segments of the graph "
              "in the forward pass and evaluates each segment again during the backward pass "
              "(docs/methods.md, Memory): the same maps (`cos` to the unbounded call) for about one more forward "
              "pass; lxt's autograd graph keeps what every patched function saves for its backward pass." +
              " With the gamma rules of lxt's ViT example, lxt hands each convolution and linear layer to zennit, "
              "whose hooks recompute the layer's forward pass five times inside the backward pass (four raised "
              "copies on the split input and the plain one); relprop forms LRP-gamma from the layer's output and "
              "one product of |x| and |W|, and propagates it with two transposed products: the one extra product "
              "each way is the floor of LRP-gamma on a signed input."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_b_16")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--budget", default="400MB",
                   help="the memory_budget of the bounded relprop rows (default 400MB)")
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--invoked-by", default="", help=argparse.SUPPRESS)  # benchmarks/speed.py's command
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        return worker(args)
    started = time.perf_counter()
    all_specs = specs(args.gamma, args.budget)
    memory = {} if args.no_memory else measure_memory([s.key for s in all_specs], args)
    lxt = load_lxt()
    model, x, target = make(args)
    rows = [Row(s, memory=memory.get(s.key, {})) for s in all_specs]
    runners: dict[str, Runner] = {}
    for row in rows:
        try:
            runners[row.spec.key] = build(row.spec.key, model, args.gamma, lxt, args.budget)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            row.error = f"{type(exc).__name__}: {exc}"[:160]
    load: list[float] = []
    for round_ in range(args.repeats + 1):
        print(f"== round {round_} of {args.repeats} (0 = warm-up)", flush=True)
        for row in rows:
            if row.error:
                continue
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                out = runners[row.spec.key](x, target)
            except Exception as exc:  # noqa: BLE001
                row.error = f"{type(exc).__name__}: {exc}"[:160]
                continue
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_ == 0:
                row.output = out.detach()
            else:
                row.times.append(wall)
                row.cpu.append(cpu)
                load.append(os.getloadavg()[0])
    text = report(rows, args, time.perf_counter() - started, load or [float("nan")])
    print(text)
    if args.out != "-":
        write_section(ROOT / args.out, "transformer_speed.py", text)


if __name__ == "__main__":
    main()
