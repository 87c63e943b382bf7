"""The reproduction: every job of :func:`.protocols.jobs` through the runner, the figures, the document.

:func:`main` is ``relprop reproduce`` (and ``python benchmarks/reproduce.py``): it runs the jobs
through :func:`relprop.evaluate.run_evaluation` into one SQLite store (killed and started again, it
continues where it stopped), records its wall time there, draws the qualitative figures
(:mod:`.figures`) and writes the document (:func:`.results.write_results`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..evaluate.runner import Evaluation, run_evaluation
from ..evaluate.specs import parse_options, resolve_dataset
from ..evaluate.store import Store
from . import protocols as P
from .cli import DESCRIPTION, add_arguments
from .results import write_results

__all__ = ["main", "run"]


def _count(job: P.Job) -> int:
    c = job.config
    options = dict(c.dataset_options, **({"root": c.root} if c.root else {}))
    n = len(resolve_dataset(c.dataset, options))
    return n if c.limit is None else min(n, c.limit)


def _figures(model_name: str, options: dict, dataset: str, root: Optional[str], out: Path) -> None:
    """The qualitative figures of ``model_name`` on three images of ``dataset``."""
    from ..data.base import to_model_input
    from ..evaluate.specs import input_spec, resolve_model
    from .figures import write_figures

    model, preprocess = resolve_model(model_name, dict(options))
    spec = input_spec(preprocess)
    data = resolve_dataset(dataset, {"root": root} if root else {})
    picked: list[int] = []
    two = next((i for i in range(min(len(data), 40)) if len(set(data[i].labels)) >= 2), None)
    if two is not None:
        picked.append(two)
    picked += [i for i in range(min(len(data), 3)) if i not in picked][:3 - len(picked)]
    samples = [data[i] for i in picked]
    inputs = [to_model_input(s, spec.size, spec.mean, spec.std) for s in samples]
    images = torch.stack([m.image for m in inputs])
    write_figures(model, images, [list(s.labels) for s in samples], list(data.class_names), spec.mean, spec.std,
                  out, model_name.replace("/", "_"))


def _volume_figure(model_name: str, options: dict, out: Path) -> None:
    """Nam, Choi and Lee's [Nam-RAP-Journal] Fig. 8 of ``model_name`` on the first ``nodules3d`` test cubes."""
    from ..data.nodules3d import Nodules3DDataset
    from ..evaluate.specs import resolve_model
    from .figures import write_volume_figure

    model, preprocess = resolve_model(model_name, dict(options))
    write_volume_figure(model, preprocess, Nodules3DDataset("test", count=24), out, model_name.replace("/", "_"))


def _record_time(store: str, size: str, models: list[str], call: float, wall: float) -> None:
    """Record the wall time so far of the call started at ``call`` in the store (``wall_s`` adds up
    the calls, so an interrupted and continued reproduction reports its whole time)."""
    with Store(store) as db:
        meta = db.get_meta("reproduce", {}) or {}
        calls = dict(meta.get("calls", {}))
        calls[str(call)] = wall
        db.set_meta("reproduce", {"size": size, "models": models, "calls": calls,
                                  "wall_s": sum(calls.values()), "last_wall_s": wall})


def run(args: argparse.Namespace) -> int:
    """Run the reproduction of parsed arguments (:func:`.cli.add_arguments`); returns the exit code."""
    if args.size not in P.SIZES:
        raise ValueError(f"unknown size {args.size!r}; known: {', '.join(sorted(P.SIZES))}")
    call = time.time()
    torch.manual_seed(0)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    model_options = parse_options(args.model_option, "--model-option", scoped=True)
    datasets = parse_options(args.dataset, "--dataset")
    only = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    jobs = P.jobs(args.size, models, model_options, args.batch_size, args.device, datasets, args.root, only)
    start = time.perf_counter()
    total = sum(_count(j) for j in jobs)
    print(f"{len(jobs)} evaluations, {total} images in all, into {args.store}", file=sys.stderr)
    for i, job in enumerate(jobs, 1):
        config = replace(job.config, progress=not args.no_progress, share_model=True,
                         progress_label=f"[{i}/{len(jobs)}] {job.label}")
        try:
            Evaluation(config)  # validates (annotations the data set lacks, ...) before running
        except ValueError as err:
            print(f"skipped {job.label}: {err}", file=sys.stderr)
            continue
        summary = run_evaluation(config, args.store)
        for e in summary.errors[:3]:
            print(f"  {job.label}: {e[1]} {e[2]} {e[3]}: {e[5]}", file=sys.stderr)
        _record_time(args.store, args.size, models, call, time.perf_counter() - start)
    out = Path(args.out)
    images = Path(args.images) if args.images else out.parent / "images" / "results"
    if not args.no_figures:
        for model in [m for m in models if m not in P.TRANSFORMER_MODELS + P.VOLUME_MODELS]:  # the papers' figures
            _figures(model, model_options.get(model, {}), datasets.get(model, P.default_dataset(model)),
                     args.root, images)
        for model in [m for m in models if m in P.VOLUME_MODELS]:
            _volume_figure(model, model_options.get(model, {}), images)
    wall = time.perf_counter() - start
    _record_time(args.store, args.size, models, call, wall)
    files = write_results([args.store], out, images)
    print(f"wrote {out} and {len(files) - 1} figures in {wall / 60:.1f} min")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python benchmarks/reproduce.py``: parse ``argv`` and run; returns the exit code."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, sizes=sorted(P.SIZES))
    return run(parser.parse_args(argv))
