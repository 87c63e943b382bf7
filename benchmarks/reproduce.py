"""Regenerate docs/results.md: the five papers' evaluation protocols, run with relprop.

    python benchmarks/reproduce.py --store results.sqlite --size small      # wall time: docs/results.md
    python benchmarks/reproduce.py --store results-full.sqlite --size full --device cuda

Runs every job of :func:`relprop.evaluate.protocols.jobs` through the runner's Python API into the
SQLite store (killed and started again, it continues where it stopped), draws the qualitative figures
(:mod:`relprop.evaluate.figures`) and writes the document (:func:`relprop.evaluate.results.write_results`).
``relprop report STORE --results docs/results.md`` rewrites the document from the store alone.
Real data: ``--model vgg16 --model-option vgg16.weights=IMAGENET1K_V1 --dataset vgg16=imagenet
--root /data/imagenet`` (commands for each paper's data set: docs/results.md, last section).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from relprop.evaluate import protocols as P
from relprop.evaluate.results import write_results
from relprop.evaluate.runner import Evaluation, run_evaluation
from relprop.evaluate.specs import parse_options, resolve_dataset
from relprop.evaluate.store import Store

DEFAULT_MODELS = "shapes_vgg,shapes_resnet,efficientnet_lite0"


def _count(job: P.Job) -> int:
    c = job.config
    options = dict(c.dataset_options, **({"root": c.root} if c.root else {}))
    n = len(resolve_dataset(c.dataset, options))
    return n if c.limit is None else min(n, c.limit)


def _figures(model_name: str, options: dict, dataset: str, root: Optional[str], out: Path) -> None:
    """The qualitative figures of ``model_name`` on three images of ``dataset``."""
    from relprop.data.base import to_model_input
    from relprop.evaluate.figures import write_figures
    from relprop.evaluate.specs import input_spec, resolve_model

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


def _record_time(store: str, size: str, models: list[str], wall: float) -> None:
    """Record this call's wall time so far in the store (``wall_s`` adds up the calls, so an
    interrupted and continued reproduction reports its whole time)."""
    with Store(store) as db:
        meta = db.get_meta("reproduce", {}) or {}
        calls = dict(meta.get("calls", {}))
        calls[str(_CALL)] = wall
        db.set_meta("reproduce", {"size": size, "models": models, "calls": calls,
                                  "wall_s": sum(calls.values()), "last_wall_s": wall})


_CALL = time.time()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="SQLite store (created or continued)")
    ap.add_argument("--size", default="small", choices=sorted(P.SIZES), help="how many images (default small)")
    ap.add_argument("--out", default="docs/results.md", help="the document (default docs/results.md)")
    ap.add_argument("--images", default=None, help="folder of its PNGs (default <out folder>/images/results)")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma separated (default {DEFAULT_MODELS})")
    ap.add_argument("--model-option", action="append", default=[], metavar="MODEL.KEY=VALUE",
                    help="option of a model builder, e.g. shapes_vgg.weights=false (repeatable)")
    ap.add_argument("--dataset", action="append", default=[], metavar="MODEL=DATASET",
                    help="data set of a model (default: shapes for shapes models, photos otherwise)")
    ap.add_argument("--root", default=None, help="folder of the data set files")
    ap.add_argument("--methods", default=None, help="only these methods (comma separated; default: every "
                    "method of the protocols)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-figures", action="store_true", help="skip the qualitative figures")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
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
        _record_time(args.store, args.size, models, time.perf_counter() - start)
    out = Path(args.out)
    images = Path(args.images) if args.images else out.parent / "images" / "results"
    if not args.no_figures:
        for model in models:
            _figures(model, model_options.get(model, {}), datasets.get(model, P.default_dataset(model)),
                     args.root, images)
    wall = time.perf_counter() - start
    _record_time(args.store, args.size, models, wall)
    files = write_results([args.store], out, images)
    print(f"wrote {out} and {len(files) - 1} figures in {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
