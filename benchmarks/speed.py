#!/usr/bin/env python
"""Speed and peak memory of relprop's LRP methods against the plain gradient, zennit and captum.

Run from the repository root::

    python benchmarks/speed.py [--models vgg16,resnet50] [--batch 4] [--size 224] [--repeats 5]
                               [--out docs/benchmarks.md] [--budget 540] [--device cuda]
                               [--transformer vit_b_16|none]

Everything runs on the CPU (``--device cuda``: on the GPU; its section of docs/benchmarks.md is
separate) in float32 with torchvision models at random initialisation in eval mode (nothing is
downloaded). For each model:

* timing, in this process, so that every method shares the machine state: one warm-up round over all
  methods, then ``--repeats`` rounds, each round calling every method once in turn (round robin, so
  slow drift of the machine hits all methods alike), timed with ``time.perf_counter``. Reported: the
  median and the minimum, the ratio of the medians to the plain gradient's median, and as checks
  against a busy machine the ratio of the minima and of the process CPU times;
* peak memory, one fresh subprocess per method (``--_worker``): the increment of
  ``ru_maxrss`` (after running the method once) over the resident set size measured in that process
  after the model and the input were created; on a GPU, the increment of the CUDA caching
  allocator's peak (``torch.cuda.max_memory_allocated``) over what was allocated before the call;
  on a GPU each call is timed with CUDA events (``torch.cuda.Event``) recorded around it;
* sanity checks that relprop and zennit compute the same explanations (cosine similarities per sample).

Then, on the CPU, ``--transformer`` (default ``vit_b_16``) is compared with lxt by
``benchmarks/transformer_speed.py`` on the same relprop snapshot (its own section of the report).

relprop is imported from a copy of ``src/relprop`` taken when the run starts (``--relprop-ref``: the
working tree, or a git revision), so that edits made while the benchmark runs cannot mix code versions.

The markdown report (``--out``) is written entirely from the run: no number in it is typed by hand.
``--budget`` (seconds, whole run) lowers the number of rounds when the requested number would not fit:
rounds of every method first, then extra rounds of the headline methods only (gradient, relprop
lrp-cmp, zennit EpsilonPlusFlat; at least 3 of those); the report gives the count of each method.
``--profile auto`` profiles relprop lrp-cmp (and the gradient) with torch.profiler on a model where a
time target is missed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import hashlib
import io
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_model, dist_version, write_section  # noqa: E402  (benchmarks/_report.py)

#: relprop, imported by ``use_relprop`` from a snapshot of its source taken when the run starts, so
#: that edits made to ``src/`` while the benchmark runs cannot mix code versions within one run
relprop = None

try:
    import zennit
    from zennit import composites as zcomp
    from zennit.attribution import Gradient as ZGradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.rules import Epsilon as ZEpsilon
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Convolution as ZConvolution, Linear as ZLinear
except ImportError:  # pragma: no cover
    zennit = None

try:
    import captum
    from captum.attr import LRP as CaptumLRP
except ImportError:  # pragma: no cover
    captum = None

Tensor = torch.Tensor
Runner = Callable[[Tensor, Tensor], Tensor]

RELPROP_METHODS = ["lrp-cmp", "lrp-epsilon", "lrp-z", "lrp-alpha2beta1", "lrp-preset-b", "rap", "hedge", "sglrp"]
TARGET_OVER_GRAD = {"rap": 2.5, "hedge": 3.0}  # seed methods: time / gradient time
TARGET_CMP_OVER_GRAD = 1.75
TARGET_ZENNIT_OVER_CMP = {"vgg16": 1.5, "resnet50": 2.5}
CORE_METHODS = ("gradient", "relprop:lrp-cmp", "zennit:EpsilonPlusFlat")  # the headline figures
MIN_CORE_REPEATS = 3  # the headline methods get at least this many timed rounds (if that many are requested)
COSINE_EQUIVALENT = 0.99  # below this, two "equivalent" maps are flagged


# --------------------------------------------------------------------------------------------------
# which relprop: a snapshot of src/relprop (working tree, or a git ref)
# --------------------------------------------------------------------------------------------------
def snapshot_relprop(ref: str) -> tuple[Path, str]:
    """Copy relprop's source (``ref``: "worktree" or a git revision) to a temporary folder.
    Returns the folder (to put on sys.path) and a description of what was copied."""
    tmp = Path(tempfile.mkdtemp(prefix="relprop-bench-"))
    if ref == "worktree":
        shutil.copytree(ROOT / "src" / "relprop", tmp / "relprop", ignore=shutil.ignore_patterns("__pycache__"))
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
        what = f"the working tree of git {commit}" + (" with uncommitted changes in src/" if dirty else "")
    else:
        archive = subprocess.run(["git", "archive", ref, "src/relprop"], cwd=ROOT, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        shutil.move(str(tmp / "src" / "relprop"), str(tmp / "relprop"))
        what = f"git {ref} ({git('rev-parse', '--short', ref)}), not the working tree"
    digest = hashlib.sha1()
    for path in sorted((tmp / "relprop").rglob("*.py")):
        digest.update(path.read_bytes())
    return tmp, f"{what}; source digest {digest.hexdigest()[:12]}"


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def use_relprop(folder: Path) -> None:
    global relprop
    sys.path.insert(0, str(folder))
    import relprop as module
    if not Path(module.__file__).resolve().is_relative_to(folder.resolve()):
        raise RuntimeError(f"relprop was imported from {module.__file__}, not from the snapshot in {folder}")
    relprop = module


# --------------------------------------------------------------------------------------------------
# models, inputs and targets
# --------------------------------------------------------------------------------------------------
#: where models, inputs and explanations live (``--device``)
DEVICE = torch.device("cpu")


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval().to(DEVICE)


def make_input(batch: int, size: int) -> tuple[Tensor, Tensor]:
    """A fixed random batch and fixed target classes (no forward pass needed to choose them)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=gen)
    target = (torch.arange(batch) * 97 + 3) % 1000
    return x.to(DEVICE), target.to(DEVICE)


def on_gpu() -> bool:
    return DEVICE.type == "cuda"


def device_label() -> str:
    """``CPU`` or the GPU's name."""
    return torch.cuda.get_device_name(DEVICE) if on_gpu() else "CPU"


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --------------------------------------------------------------------------------------------------
# the methods: each builds a runner ``(x, target) -> relevance shaped like x``
# --------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    key: str
    label: str
    library: str
    build: Callable[[nn.Module, str, bool], Runner]  # (model, model name, own the model?) -> runner
    unsupported: dict[str, str] = field(default_factory=dict)  # model name -> reason


def build_gradient(model: nn.Module, name: str, own: bool) -> Runner:
    def run(x: Tensor, target: Tensor) -> Tensor:
        x = x.detach().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
        return grad
    return run


def build_relprop(method: str, **options) -> Callable[[nn.Module, str, bool], Runner]:
    def build(model: nn.Module, name: str, own: bool) -> Runner:
        def run(x: Tensor, target: Tensor) -> Tensor:
            return relprop.explain(model, x, target=target, method=method, **options)
        return run
    return build


def one_hot_logit(target: Tensor) -> Callable[[Tensor], Tensor]:
    """zennit's output relevance: the target logit, as relprop's (zennit's default would be one-hot)."""
    def fn(output: Tensor) -> Tensor:
        return torch.zeros_like(output).scatter_(1, target[:, None], output.gather(1, target[:, None]))
    return fn


def zennit_canonizers(name: str, model: nn.Module) -> list:
    if name.startswith("resnet"):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()] if has_batchnorm(model) else []


def zennit_epsilon(canonizers: list) -> "zcomp.Composite":
    """Plain LRP-epsilon (0.25, as relprop's lrp-epsilon) on every conv and dense layer."""
    return zcomp.LayerMapComposite(
        layer_map=zcomp.layer_map_base() + [(ZConvolution, ZEpsilon(0.25)), (ZLinear, ZEpsilon(0.25))],
        canonizers=canonizers)


ZENNIT_COMPOSITES = {
    "EpsilonPlusFlat": lambda c: zcomp.EpsilonPlusFlat(canonizers=c),
    "EpsilonAlpha2Beta1": lambda c: zcomp.EpsilonAlpha2Beta1(canonizers=c),
    "Epsilon": zennit_epsilon,
}

#: per model name: how zennit's canonization went (filled by ``check_zennit_canonizers``)
ZENNIT_NOTES: dict[str, str] = {}


def fold_batch_norms_by_hand(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv (``convN``/``bnN`` attributes and
    ``Sequential(conv, bn, ...)``) into the conv and replace it by Identity. Returns the count."""
    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight.detach() * scale[:, None, None, None])
        conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach())

    count = 0
    with torch.no_grad():
        for module in list(model.modules()):
            for i in range(1, 10):
                conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    fold(conv, bn)
                    setattr(module, f"bn{i}", nn.Identity())
                    count += 1
            if isinstance(module, nn.Sequential):
                for i in range(len(module) - 1):
                    if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                        fold(module[i], module[i + 1])
                        module[i + 1] = nn.Identity()
                        count += 1
    return count


def check_zennit_canonizers(model: nn.Module, name: str, in_place: bool = False) -> None:
    """Does zennit's canonization keep the model's function? If its batch-norm merge breaks the model
    (zennit issue #234: BN eps set to 0 on recent torch), batch norms get folded by hand instead.
    ``in_place`` (the memory worker): register on ``model`` itself and remove again, no copy."""
    work = model if in_place else copy.deepcopy(model)
    canonizers = zennit_canonizers(name, work)
    composite = zcomp.EpsilonPlusFlat(canonizers=canonizers)
    probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(probe)
        composite.register(work)
        try:
            canonized = work(probe)
        finally:
            composite.remove()
    del work
    diff = (canonized - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)
    names = ", ".join(type(c).__name__ for c in canonizers) or "none needed"
    if diff > 1e-3:
        ZENNIT_FOLD.add(name)
        ZENNIT_NOTES[name] = (f"zennit canonizers: {names}; they changed the logits (max relative difference "
                              f"{diff:.2e}), so the batch norms were folded by hand into zennit's copy of the "
                              f"model before registering the composite")
    else:
        ZENNIT_NOTES[name] = (f"zennit canonizers: {names}; the canonized model's logits match the original's "
                              f"(max relative difference {diff:.1e}), no workaround needed")


#: models whose batch norms are folded by hand for zennit (see ``check_zennit_canonizers``)
ZENNIT_FOLD: set[str] = set()


def prepare_zennit_model(model: nn.Module, name: str, own: bool, composite_name: str):
    """The model for zennit (a copy unless ``own``) and a fresh composite with its canonizers."""
    if own:
        work = model  # the memory worker: checked (and folded if need be) before its baseline
    else:
        if name not in ZENNIT_NOTES:
            check_zennit_canonizers(model, name)
        work = copy.deepcopy(model)
        if name in ZENNIT_FOLD:
            fold_batch_norms_by_hand(work)
    return work, ZENNIT_COMPOSITES[composite_name](zennit_canonizers(name, work))


def build_zennit(composite_name: str) -> Callable[[nn.Module, str, bool], Runner]:
    def build(model: nn.Module, name: str, own: bool) -> Runner:
        work, composite = prepare_zennit_model(model, name, own, composite_name)
        if own:  # a user's single call: the composite is registered and removed around it
            def run_once(x: Tensor, target: Tensor) -> Tensor:
                with ZGradient(model=work, composite=composite) as attributor:
                    return attributor(x, one_hot_logit(target))[1]
            return run_once
        attributor = ZGradient(model=work, composite=composite)
        attributor.__enter__()  # registered once, as relprop's trace is cached once per model

        def run(x: Tensor, target: Tensor) -> Tensor:
            return attributor(x, one_hot_logit(target))[1]
        return run
    return build


def build_captum(model: nn.Module, name: str, own: bool) -> Runner:
    work = model if own else copy.deepcopy(model)
    lrp = CaptumLRP(work)

    def run(x: Tensor, target: Tensor) -> Tensor:
        return lrp.attribute(x, target=target)
    return run


def all_specs() -> list[Spec]:
    specs = [Spec("gradient", "gradient (1 forward + 1 backward)", "torch", build_gradient)]
    specs += [Spec(f"relprop:{m}", m, "relprop", build_relprop(m)) for m in RELPROP_METHODS]
    if zennit is not None:
        specs += [Spec(f"zennit:{c}", c, "zennit", build_zennit(c)) for c in ZENNIT_COMPOSITES]
    if captum is not None:
        specs.append(Spec(
            "captum:LRP", "LRP (captum's default rules: epsilon 1e-9 everywhere)", "captum", build_captum,
            unsupported={"resnet50": "unsupported: captum's LRP cannot propagate through ResNet's functional "
                                     "residual `+` without changing the model's code"}))
    return specs


# --------------------------------------------------------------------------------------------------
# peak memory: one fresh subprocess per (model, method)
# --------------------------------------------------------------------------------------------------
def status_kib(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    set_device(args.device)
    use_relprop(Path(args.relprop_path))
    spec = {s.key: s for s in all_specs()}[args.method]
    model = make_model(args.model)
    x, target = make_input(args.batch, args.size)
    if spec.library == "zennit":  # the canonizer check and any workaround, outside the measurement
        check_zennit_canonizers(model, args.model, in_place=True)
        if args.model in ZENNIT_FOLD:
            fold_batch_norms_by_hand(model)
    gc.collect()
    if on_gpu():
        torch.cuda.synchronize(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base_gpu = torch.cuda.memory_allocated(DEVICE)
    base_rss = status_kib("VmRSS")
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runner = spec.build(model, args.model, True)
    start = time.perf_counter()
    out = runner(x, target)
    if on_gpu():
        torch.cuda.synchronize(DEVICE)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = status_kib("VmHWM")  # the same peak as the kernel keeps it for this address space: a cross-check
    found = {"peak_mb": (peak - base_rss) / 1024, "base_rss_mb": base_rss / 1024,
             "base_maxrss_mb": base_max / 1024, "maxrss_mb": peak / 1024, "vmhwm_mb": hwm / 1024,
             "seconds": seconds, "finite": bool(torch.isfinite(out).all())}
    if on_gpu():  # the GPU's allocator, not the host's resident set, is what bounds a GPU run
        found["host_peak_mb"] = found["peak_mb"]
        found["peak_mb"] = (torch.cuda.max_memory_allocated(DEVICE) - base_gpu) / 2**20
    print(json.dumps(found))


def measure_memory(jobs: list[tuple[str, str]], args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """Peak memory of each (model, method key), each in a fresh subprocess, ``args.memory_jobs`` at a time.

    Run before this process builds any model: a child's ``ru_maxrss`` starts from its parent's peak
    resident size (Linux keeps it across fork and exec), so the parent must stay small."""
    results: dict[tuple[str, str], dict] = {}
    pending = list(jobs)
    running: list[tuple[tuple[str, str], subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < max(1, args.memory_jobs):
            model, key = pending.pop(0)
            print(f"== peak memory: {model} {key}", flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--model", model, "--method", key,
                   "--batch", str(args.batch), "--size", str(args.size), "--relprop-path", args.relprop_path,
                   "--device", args.device]
            running.append(((model, key), subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                           text=True, cwd=ROOT)))
        job, proc = running.pop(0)
        stdout, stderr = proc.communicate()
        found = [line for line in stdout.splitlines() if line.startswith("{")]
        if found:
            results[job] = json.loads(found[-1])
        else:
            lines = [line for line in stderr.strip().splitlines() if line.strip()] or ["no output"]
            results[job] = {"error": f"worker failed (exit {proc.returncode}): {lines[-1][:200]}"}
    return results


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    spec: Spec
    runner: Runner | None = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time (all threads) of each call
    warmup: float | None = None
    output: Tensor | None = None
    error: str = ""
    memory: dict = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def min(self) -> float | None:
        return min(self.times) if self.times else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(self.cpu_times) if self.cpu_times else None


#: the 1-minute load average after each timed call: how busy the machine was while timing
LOAD_SAMPLES: list[float] = []


def timed(runner: Runner, x: Tensor, target: Tensor) -> tuple[float, float, Tensor]:
    """(wall seconds, CPU seconds of this process, output) of one call; on a GPU the seconds are
    those between two CUDA events recorded around the call (after the queue before it drained)."""
    if on_gpu():
        torch.cuda.synchronize(DEVICE)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cpu = time.process_time()
        begin.record()
        out = runner(x, target)
        end.record()
        end.synchronize()
        seconds, cpu = begin.elapsed_time(end) / 1e3, time.process_time() - cpu
    else:
        cpu, start = time.process_time(), time.perf_counter()
        out = runner(x, target)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    try:
        LOAD_SAMPLES.append(os.getloadavg()[0])
    except OSError:
        pass
    return seconds, cpu, out


def short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]} (at {where})"


def cosines(a: Tensor, b: Tensor) -> list[float]:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1).tolist()


@dataclass
class ModelResult:
    name: str
    rows: list[Row]
    repeats: int
    checks: list[tuple[str, list[float], float | None]] = field(default_factory=list)  # (what, cosines, threshold)
    profile: dict | None = None
    profile_gradient: dict | None = None
    profile_reason: str = ""
    core_repeats: int = 0
    warmup_round: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.spec.key == key), None)


def bench_model(name: str, args: argparse.Namespace, deadline: float, models_left: int,
                memory: dict[tuple[str, str], dict]) -> ModelResult:
    print(f"== {name}: building model and methods", flush=True)
    model = make_model(name)
    x, target = make_input(args.batch, args.size)
    rows = [Row(spec, memory=memory.get((name, spec.key), {})) for spec in all_specs()]
    for row in rows:
        if name in row.spec.unsupported:
            row.error = row.spec.unsupported[name]
            continue
        try:
            row.runner = row.spec.build(model, name, False)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            row.error = short_error(exc)
    live = [r for r in rows if r.runner is not None]

    print(f"== {name}: warm-up round", flush=True)
    start_round = time.perf_counter()
    for row in live:
        try:
            row.warmup, _, out = timed(row.runner, x, target)
            row.output = out.detach()
            print(f"   {row.spec.library:8s} {row.spec.label[:40]:40s} warm-up {row.warmup * 1e3:9.0f} ms", flush=True)
        except Exception as exc:  # noqa: BLE001
            row.error = short_error(exc)
            row.runner = None
            print(f"   {row.spec.library:8s} {row.spec.label[:40]:40s} FAILED {row.error}", flush=True)
    warmup_round = time.perf_counter() - start_round
    live = [r for r in rows if r.runner is not None]
    result = ModelResult(name, rows, 0, warmup_round=warmup_round)

    # sanity checks on the warm-up outputs (and one extra relprop run with zennit's dense epsilon)
    out = {r.spec.key: r.output for r in rows if r.output is not None}
    if "relprop:lrp-cmp" in out and "zennit:EpsilonPlusFlat" in out:
        result.checks.append(("relprop lrp-cmp (dense epsilon 0.1) vs zennit EpsilonPlusFlat (dense epsilon 1e-6)",
                              cosines(out["relprop:lrp-cmp"], out["zennit:EpsilonPlusFlat"]), None))
        try:
            same = build_relprop("lrp-cmp", epsilon=1e-6)(model, name, False)(x, target)
            result.checks.append(("relprop lrp-cmp with epsilon=1e-6 vs zennit EpsilonPlusFlat (identical rules)",
                                  cosines(same, out["zennit:EpsilonPlusFlat"]), COSINE_EQUIVALENT))
        except Exception as exc:  # noqa: BLE001
            result.notes.append(f"relprop lrp-cmp with epsilon=1e-6 failed: {short_error(exc)}")
    if "relprop:lrp-epsilon" in out and "zennit:Epsilon" in out:
        result.checks.append(("relprop lrp-epsilon vs zennit Epsilon (both epsilon 0.25)",
                              cosines(out["relprop:lrp-epsilon"], out["zennit:Epsilon"]), COSINE_EQUIVALENT))
    if "relprop:lrp-preset-b" in out and "zennit:EpsilonAlpha2Beta1" in out:
        result.checks.append(("relprop lrp-preset-b (dense epsilon 0.1) vs zennit EpsilonAlpha2Beta1 (1e-6)",
                              cosines(out["relprop:lrp-preset-b"], out["zennit:EpsilonAlpha2Beta1"]), None))
    if "relprop:lrp-z" in out and "gradient" in out:
        result.checks.append(("relprop lrp-z vs gradient x input", cosines(out["relprop:lrp-z"],
                                                                         out["gradient"] * x), COSINE_EQUIVALENT))
    if "captum:LRP" in out and "relprop:lrp-z" in out:
        result.checks.append(("captum LRP (epsilon 1e-9 everywhere) vs relprop lrp-z",
                              cosines(out["captum:LRP"], out["relprop:lrp-z"]), COSINE_EQUIVALENT))
    for row in rows:
        row.output = None
    gc.collect()

    # How many rounds fit this model's share of the time left (later models need a warm-up round too).
    # Rounds of every method first; if not all requested rounds fit, the headline methods (gradient,
    # relprop lrp-cmp, zennit EpsilonPlusFlat) get extra rounds of their own, at least MIN_CORE_REPEATS.
    share = (deadline - time.perf_counter()) / models_left
    if models_left > 1:
        share -= warmup_round
    full = sum(r.warmup for r in live)
    core = [r for r in live if r.spec.key in CORE_METHODS]
    core_round = sum(r.warmup for r in core)
    n_all = max(1, min(args.repeats, int(share // max(full, 1e-9))))
    n_core = n_all
    if n_all < args.repeats and core:
        extra = int(max(share - n_all * full, 0.0) // max(core_round, 1e-9))
        n_core = min(args.repeats, max(n_all + extra, MIN_CORE_REPEATS))
    result.repeats = n_all
    result.core_repeats = n_core
    if n_all < args.repeats:
        result.notes.append(
            f"{args.repeats} timed rounds were requested; to keep the run near its --budget of {args.budget:.0f} s "
            f"(a round of every method took {full:.0f} s in the warm-up) every method ran {n_all} and the headline "
            f"methods ({', '.join(r.spec.key for r in core)}) {n_core}: see the n column")

    for k in range(n_core):
        members = live if k < n_all else core
        print(f"== {name}: round {k + 1}/{n_core} ({len(members)} methods)", flush=True)
        order = members if k % 2 == 0 else members[::-1]  # alternate the order too, against position effects
        for row in order:
            seconds, cpu, _ = timed(row.runner, x, target)
            row.times.append(seconds)
            row.cpu_times.append(cpu)

    cmp_row, grad_row, z_row = (result.row(k) for k in ("relprop:lrp-cmp", "gradient", "zennit:EpsilonPlusFlat"))
    missed = [] if args.profile != "auto" else [
        what for what, value, bad in (
            ("relprop lrp-cmp / gradient", ratio(cmp_row, grad_row), lambda v: v > TARGET_CMP_OVER_GRAD),
            ("zennit EpsilonPlusFlat / relprop lrp-cmp", ratio(z_row, cmp_row),
             lambda v: name in TARGET_ZENNIT_OVER_CMP and v < TARGET_ZENNIT_OVER_CMP[name]))
        if value is not None and bad(value)]
    if (args.profile == "always" or missed) and cmp_row is not None and cmp_row.runner is not None:
        print(f"== {name}: profiling relprop lrp-cmp and the gradient", flush=True)
        result.profile_reason = (f"time target missed ({'; '.join(missed)})" if missed else "--profile always")
        result.profile = profile_runner(cmp_row.runner, x, target)
        if grad_row is not None and grad_row.runner is not None:
            result.profile_gradient = profile_runner(grad_row.runner, x, target)

    for row in rows:  # free the zennit/captum model copies before the memory subprocesses run
        row.runner = None
    del model
    gc.collect()
    return result


def profile_runner(runner: Runner, x: Tensor, target: Tensor) -> dict:
    """One call under torch.profiler: {"ops": {name: (calls, self CPU us)}, "total": us, "wall": s}."""
    from torch.profiler import ProfilerActivity, profile
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner(x, target)
        if on_gpu():
            torch.cuda.synchronize(DEVICE)
    wall = time.perf_counter() - start
    ops = {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return {"ops": ops, "total": sum(us for _, us in ops.values()), "wall": wall}


def profile_table(main: dict, reference: dict | None, top: int = 12) -> str:
    """Top ops of relprop lrp-cmp by self CPU time, next to the same ops in the gradient's profile."""
    names = sorted(main["ops"], key=lambda k: main["ops"][k][1], reverse=True)[:top]
    if reference:
        names += [k for k in sorted(reference["ops"], key=lambda k: reference["ops"][k][1], reverse=True)[:4]
                  if k not in names]
    head = "| op | lrp-cmp calls | lrp-cmp self CPU ms | share |"
    rule = "|---|---:|---:|---:|"
    if reference:
        head += " gradient calls | gradient self CPU ms | share |"
        rule += "---:|---:|---:|"
    lines = [head, rule]

    def cells(prof: dict, name: str) -> str:
        calls, us = prof["ops"].get(name, (0, 0))
        return f" {calls} | {us / 1e3:,.0f} | {100 * us / prof['total']:.1f}% |" if calls else " | | |"
    for name in names:
        lines.append(f"| `{name}` |" + cells(main, name) + (cells(reference, name) if reference else ""))
    total = f"| all ops (wall time of the profiled call) | | {main['total'] / 1e3:,.0f} ({main['wall'] * 1e3:,.0f}) | 100% |"
    if reference:
        total += f" | {reference['total'] / 1e3:,.0f} ({reference['wall'] * 1e3:,.0f}) | 100% |"
    lines.append(total)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def total_ram_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        return "unknown"


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def fmt_ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def ratio(a: Row | None, b: Row | None, of: str = "median") -> float | None:
    if a is None or b is None or not getattr(a, of) or not getattr(b, of):
        return None
    return getattr(a, of) / getattr(b, of)


def peak(row: Row | None) -> float | None:
    return None if row is None or "peak_mb" not in row.memory else row.memory["peak_mb"]


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def model_table(result: ModelResult) -> str:
    grad = result.row("gradient")
    lines = ["| method | library | n | median ms | min ms | ratio to gradient (median) | ratio (min / min) "
             "| ratio (CPU time) | peak memory MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result.rows:
        if row.error:
            lines.append(f"| {row.spec.label} | {row.spec.library} | | {row.error} | | | | | |")
            continue
        r = ratio(row, grad)
        rmin = ratio(row, grad, "min")
        rcpu = ratio(row, grad, "cpu")
        mem = row.memory.get("peak_mb")
        mem_s = f"{mem:,.0f}" if mem is not None else row.memory.get("error", "not measured")
        name = f"**{row.spec.label}**" if row.spec.key == "relprop:lrp-cmp" else row.spec.label
        lines.append(f"| {name} | {row.spec.library} | {len(row.times)} | {fmt_ms(row.median)} | {fmt_ms(row.min)} | "
                     f"{'1.00x (reference)' if row.spec.key == 'gradient' else fmt_ratio(r)} | "
                     f"{fmt_ratio(rmin)} | {fmt_ratio(rcpu)} | {mem_s} |")
    return "\n".join(lines)


def write_report(results: list[ModelResult], args: argparse.Namespace, meta: dict) -> str:
    out: list[str] = []
    add = out.append
    add("## Explanation methods: speed and peak memory")
    add("")
    add(f"Generated by `{meta['command']}` on {meta['date']}.")
    add("")
    add("### What was measured")
    add("")
    if on_gpu():
        add(f"- Device: {device_label()} (`--device {args.device}`); times from CUDA events, peak memory from the "
            "CUDA allocator; the CPU-time columns count this process's host threads only.")
    add(f"- Machine: {meta['cpu']}, {meta['cores']} CPU cores (torch uses {meta['threads']} threads, its default), "
        f"{meta['ram']} RAM; load average (1/5/15 min) {meta['load_start']} at the start and "
        f"{meta['load_end']} at the end of the run.")
    add(f"- Software: Python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, relprop {dist_version('relprop') if dist_version('relprop') != 'not installed' else '(source tree)'}, "
        f"zennit {dist_version('zennit')}, captum {dist_version('captum')}.")
    add(f"- Work: torchvision {', '.join(r.name for r in results)} at random initialisation in eval mode, "
        f"float32, {device_label()}, a batch of {args.batch} random images of {args.size}x{args.size}, one fixed target class "
        f"per image; every method explains the same targets. Relevance at the output is the target logit "
        f"(one-hot times logit) for relprop and zennit alike.")
    add(f"- relprop code: {meta['source']}, copied when the run started; the timing process and every memory "
        "subprocess import that copy.")
    add("- Gradient (the 1.00x reference): `torch.autograd.grad(model(x).gather(1, target).sum(), x)`, "
        "one forward and one backward pass.")
    add("- relprop: `relprop.explain(model, x, target=target, method=...)`. Its trace of the model is cached per "
        "model, so the warm-up call pays for it. zennit: `zennit.attribution.Gradient` with the composite "
        "registered once before timing (the fair counterpart of relprop's cached trace). captum: "
        "`captum.attr.LRP(model).attribute(x, target=target)` with its default rules.")
    rounds = "; ".join(f"{r.name}: {r.repeats}" if r.core_repeats == r.repeats else
                       f"{r.name}: {r.repeats} with every method + {r.core_repeats - r.repeats} with the headline "
                       "methods only" for r in results)
    add(f"- Time: one warm-up round, then timed rounds ({rounds}; `--repeats {args.repeats}` requested; column n); "
        "each round calls every method once, in turn (round robin, order reversed every other round), so all "
        "methods share the same machine state. `time.perf_counter` around each call; the tables give the median "
        "and the minimum over the rounds; the ratio to the gradient is median / median (also given: min / min, "
        "and the ratio of the median CPU time of this process, all threads, which other processes competing "
        "for the cores disturb less).")
    if args.no_memory:
        add("- Peak memory: not measured (`--no-memory`).")
    elif on_gpu():
        add("- Peak memory: each method once in a fresh subprocess (`benchmarks/speed.py --_worker`): "
            "`torch.cuda.max_memory_allocated` after the call minus `torch.cuda.memory_allocated` before it "
            "(peak statistics reset after the model and the input were on the GPU), in MB (MiB). This includes "
            "the method's own set-up (relprop's tracing and weight caches, zennit's composite registration and "
            "canonizers, captum's hooks).")
    else:
        add("- Peak memory: each method once in a fresh subprocess (`benchmarks/speed.py --_worker`): "
            "`resource.getrusage(RUSAGE_SELF).ru_maxrss` after the call minus the resident set size (VmRSS) "
            "measured after the model and the input were built, in MB (MiB). This includes the method's own "
            "set-up (relprop's tracing and weight caches, zennit's composite registration and canonizers, "
            "captum's hooks). The subprocesses run before the timing, while the parent is small (a child's "
            f"`ru_maxrss` starts from its parent's peak on Linux), {args.memory_jobs} at a time "
            f"({meta.get('memory_seconds', 0):.0f} s in all); VmHWM is checked to agree with `ru_maxrss`.")
    add("")

    # key ratios
    add("### Key figures")
    add("")
    add("| figure | " + " | ".join(r.name for r in results) + " | target | met |")
    add("|---|" + "---:|" * len(results) + "---|---|")
    cmp_grad = [ratio(r.row("relprop:lrp-cmp"), r.row("gradient")) for r in results]
    ok = None if any(v is None for v in cmp_grad) else all(v <= TARGET_CMP_OVER_GRAD for v in cmp_grad)
    add("| relprop lrp-cmp / gradient (time, median / median) | " + " | ".join(fmt_ratio(v) for v in cmp_grad)
        + f" | <= {TARGET_CMP_OVER_GRAD}x on every model | {met(ok)} |")
    for of, what in (("min", "min / min"), ("cpu", "CPU time")):
        add(f"| &nbsp;&nbsp;the same, {what} | "
            + " | ".join(fmt_ratio(ratio(r.row("relprop:lrp-cmp"), r.row("gradient"), of)) for r in results)
            + " | | |")
    z_cmp = [ratio(r.row("zennit:EpsilonPlusFlat"), r.row("relprop:lrp-cmp")) for r in results]
    targets = [TARGET_ZENNIT_OVER_CMP.get(r.name) for r in results]
    checks = [None if v is None or t is None else v >= t for v, t in zip(z_cmp, targets)]
    ok = None if any(c is None for c in checks) else all(checks)
    add("| zennit EpsilonPlusFlat / relprop lrp-cmp (time, median / median) | "
        + " | ".join(fmt_ratio(v) for v in z_cmp)
        + " | " + ", ".join(f">= {t}x on {r.name}" for r, t in zip(results, targets) if t is not None)
        + f" | {met(ok)} |")
    for of, what in (("min", "min / min"), ("cpu", "CPU time")):
        add(f"| &nbsp;&nbsp;the same, {what} | "
            + " | ".join(fmt_ratio(ratio(r.row("zennit:EpsilonPlusFlat"), r.row("relprop:lrp-cmp"), of))
                         for r in results) + " | | |")
    mem_cmp = [peak(r.row("relprop:lrp-cmp")) for r in results]
    mem_z = [peak(r.row("zennit:EpsilonPlusFlat")) for r in results]
    add("| peak memory, relprop lrp-cmp (MB) | " + " | ".join("n/a" if v is None else f"{v:,.0f}" for v in mem_cmp)
        + " | | |")
    add("| peak memory, zennit EpsilonPlusFlat (MB) | " + " | ".join("n/a" if v is None else f"{v:,.0f}" for v in mem_z)
        + " | | |")
    mem_ratio = [None if a is None or b is None or b <= 0 else a / b for a, b in zip(mem_cmp, mem_z)]
    mchecks = [None if a is None or b is None else a <= b for a, b in zip(mem_cmp, mem_z)]
    ok = None if any(c is None for c in mchecks) else all(mchecks)
    add("| peak memory, relprop lrp-cmp / zennit EpsilonPlusFlat | " + " | ".join(fmt_ratio(v) for v in mem_ratio)
        + f" | <= 1x (relprop <= zennit) | {met(ok)} |")
    for method, target in TARGET_OVER_GRAD.items():
        values = [ratio(r.row(f"relprop:{method}"), r.row("gradient")) for r in results]
        ok = None if any(v is None for v in values) else all(v <= target for v in values)
        add(f"| relprop {method} / gradient (time, median / median) | " + " | ".join(fmt_ratio(v) for v in values)
            + f" | <= {target}x on every model | {met(ok)} |")
        mem = [peak(r.row(f"relprop:{method}")) for r in results]
        add(f"| peak memory, relprop {method} (MB) | " + " | ".join("n/a" if v is None else f"{v:,.0f}" for v in mem)
            + " | | |")
    grad_mem = [peak(r.row("gradient")) for r in results]
    add("| peak memory, gradient (MB) | " + " | ".join("n/a" if v is None else f"{v:,.0f}" for v in grad_mem)
        + " | | |")
    add("")
    add("Targets are judged on the medians (time) and on the peak-memory increments.")
    add("")

    warnings = []
    if LOAD_SAMPLES:
        mean_load = statistics.mean(LOAD_SAMPLES)
        spreads = [(r.name, row.spec.label, max(row.times) / min(row.times)) for r in results for row in r.rows
                   if row.spec.key in CORE_METHODS and len(row.times) > 1]
        worst = max(spreads, key=lambda t: t[2]) if spreads else None
        busy = mean_load > (meta["cores"] or 1) + 1 or (worst is not None and worst[2] > 1.25)
        line = (f"While timing, the 1-minute load average was {mean_load:.1f} on average and "
                f"{max(LOAD_SAMPLES):.1f} at most on {meta['cores']} cores (the benchmark itself accounts for about "
                f"{meta['threads']})")
        if worst is not None:
            line += f"; the slowest / fastest timed call of a headline method differ by up to {worst[2]:.2f}x " \
                    f"({worst[1]}, {worst[0]})"
        if busy:
            warnings.append(f"**WARNING**: the machine was busy with other work. {line}. Single timings are "
                            "noisy; the min / min and CPU-time ratios, and the agreement between them, say how "
                            "far to trust the medians.")
        else:
            add(line + ".")
            add("")
    for r in results:
        for what, values, threshold in r.checks:
            if threshold is not None and min(values) < threshold:
                warnings.append(f"**WARNING ({r.name})**: {what}: cosine similarity down to {min(values):.4f} "
                                f"(< {threshold}): these methods may not compute the same explanation.")
    for w in warnings:
        add(w)
        add("")

    for r in results:
        add(f"### {r.name}")
        add("")
        add(model_table(r))
        add("")
        add("Same explanation? Cosine similarity of the flattened maps, per image (min / mean over the batch). "
            "relprop's composites use epsilon 0.1 on dense layers where zennit's use 1e-6; the pairs marked "
            f"with a threshold ({COSINE_EQUIVALENT}) use the same rules and must agree:")
        add("")
        for what, values, threshold in r.checks:
            flag = "" if threshold is None else (" (ok)" if min(values) >= threshold else " (**below "
                                                                                       f"{threshold}**)")
            add(f"- {what}: {min(values):.4f} / {sum(values) / len(values):.4f}{flag}")
        if not r.checks:
            add("- (no pair of methods to compare ran)")
        add("")
        notes = list(r.notes)
        if r.name in ZENNIT_NOTES:
            notes.append(ZENNIT_NOTES[r.name])
        for row in r.rows:
            m = row.memory
            if "base_maxrss_mb" in m and m["base_maxrss_mb"] > m["base_rss_mb"] + 50:
                notes.append(f"{row.spec.key}: the memory subprocess had already peaked "
                             f"{m['base_maxrss_mb'] - m['base_rss_mb']:.0f} MB above its baseline before the call; "
                             f"its figure is an upper bound")
            if "vmhwm_mb" in m and abs(m["vmhwm_mb"] - m["maxrss_mb"]) > 50:
                notes.append(f"{row.spec.key}: ru_maxrss ({m['maxrss_mb']:.0f} MB) and VmHWM "
                             f"({m['vmhwm_mb']:.0f} MB) disagree")
            if m.get("finite") is False:
                notes.append(f"{row.spec.key}: its map had non-finite values in the memory subprocess")
        notes.append(f"the warm-up round (every method once, first calls included) took {r.warmup_round:.0f} s")
        add("Notes: " + "; ".join(notes) + ".")
        add("")
        if r.profile:
            add(f"Where relprop lrp-cmp spends its time on {r.name} ({r.profile_reason}): torch.profiler, one call "
                "of each, top ops by self CPU time (summed over threads), next to the plain gradient's:")
            add("")
            add(profile_table(r.profile, r.profile_gradient))
            add("")
    add(f"Total run time: {meta['elapsed']:.0f} s.")
    add("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vgg16,resnet50", help="comma-separated torchvision model names")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    p.add_argument("--budget", type=float, default=540.0,
                   help="seconds for the whole run; fewer repeats are run if the requested ones do not fit")
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown report ('-' for stdout only)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-jobs", type=int, default=2,
                   help="peak-memory subprocesses run at once (memory is per process, so this only saves time)")
    p.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                   help="profile relprop lrp-cmp (auto: when it misses its time target)")
    p.add_argument("--relprop-ref", default="worktree",
                   help="relprop source to benchmark: 'worktree' (default: src/relprop as it is when the run "
                        "starts, copied so that later edits do not affect the run) or a git revision, e.g. HEAD")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where models and inputs live")
    p.add_argument("--transformer", default="vit_b_16",
                   help="torchvision ViT compared with lxt after the CNNs, by benchmarks/transformer_speed.py "
                        "on the same relprop snapshot, with the same --batch and --repeats (at most 3) "
                        "('none' to skip; CPU only)")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--relprop-path", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def set_device(name: str) -> None:
    """Use ``name`` for models and inputs; a GPU that is not there is one clear error."""
    global DEVICE
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: only cpu and cuda are supported")
    DEVICE = device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_device(args.device)
    if args._worker:
        worker(args)
        return
    started = time.perf_counter()
    deadline = started + args.budget
    folder, source = snapshot_relprop(args.relprop_ref)
    try:
        use_relprop(folder)
        args.relprop_path = str(folder)
        run(args, started, deadline, source)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, started: float, deadline: float, source: str) -> None:
    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "ram": total_ram_gib(),
        "load_start": load_average(), "source": source,
    }
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    memory: dict[tuple[str, str], dict] = {}
    if not args.no_memory:  # first, while this process is still small (see measure_memory)
        start = time.perf_counter()
        memory = measure_memory([(m, s.key) for m in models for s in all_specs() if m not in s.unsupported], args)
        meta["memory_seconds"] = time.perf_counter() - start
    results = []
    for i, name in enumerate(models):
        results.append(bench_model(name, args, deadline, len(models) - i, memory))
    meta["load_end"] = load_average()
    meta["elapsed"] = time.perf_counter() - started
    report = write_report(results, args, meta)
    out_path = (ROOT / args.out if not os.path.isabs(args.out) else Path(args.out)) if args.out != "-" else None
    if not on_gpu() and (out_path is None or not out_path.is_file()
                         or "<!-- BEGIN speed.py --device cuda -->" not in out_path.read_text()):
        report += ("\n\nGPU: `python benchmarks/speed.py --device cuda` (and `benchmarks/metrics_speed.py "
                   "--device cuda`) write sections of their own, timed with CUDA events and with peak memory "
                   "from the CUDA allocator; no GPU run has been recorded in this file yet (none was available "
                   "to the runs above).")
    if args.out != "-":
        path = ROOT / args.out if not os.path.isabs(args.out) else Path(args.out)
        write_section(path, "speed.py" if not on_gpu() else "speed.py --device cuda", report)
        print(f"wrote {path}")
    print(report)
    if args.transformer != "none" and not on_gpu():
        run_transformer(args, meta["command"])


def run_transformer(args: argparse.Namespace, command: str) -> None:
    """The ViT comparison with lxt (benchmarks/transformer_speed.py) on this run's relprop snapshot. It
    runs in a process of its own: lxt patches torch classes process-wide."""
    cmd = [sys.executable, str(Path(__file__).resolve().with_name("transformer_speed.py")),
           "--model", args.transformer, "--batch", str(args.batch), "--repeats", str(min(args.repeats, 3)),
           "--out", args.out, "--invoked-by", command]
    print("== transformer comparison: " + " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    env = {**os.environ, "RELPROP_BENCH_PATH": args.relprop_path}
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    if done.returncode:
        print(f"transformer comparison failed (exit {done.returncode})", file=sys.stderr)


if __name__ == "__main__":
    main()
