"""The ``relprop evaluate`` and ``relprop report`` subcommands (added to :mod:`relprop.cli`)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["add_parsers", "cmd_evaluate", "cmd_report", "on_stores"]

_EPILOG = """examples:
  relprop evaluate --dataset shapes --dataset-option count=200 --model shapes_vgg \\
      --methods all --metrics pointing_game,mu,energy_pointing_game,aopc_morf --store shapes.sqlite
  torchrun --nproc_per_node 2 -m relprop.cli evaluate ... (same options: shards the samples)
  relprop report shapes.sqlite --out shapes-report
  relprop report results.sqlite --results docs/results.md   (the papers' tables: relprop reproduce)

Killed and started again with the same options, it continues where it stopped.
Option values are JSON where they parse: --metric-option aopc_morf.counts=[0,10,20]

plug-in code: --model package.module:factory and --dataset package.module:factory import the module,
which runs its code, and call the factory; name only code you trust. The module is found on the Python
import path (PYTHONPATH, installed packages); the relprop command also searches the current folder, after
installed packages (python -m relprop.cli puts it first)."""


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def _names(text: str | None, all_names: list[str], what: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(all_names)
    if not names:
        raise ValueError(f"--{what} needs at least one name")
    return names


def add_parsers(sub: Any) -> None:
    """Add ``evaluate`` and ``report`` to the ``relprop`` subcommand parser ``sub``."""
    p = sub.add_parser("evaluate", help="evaluate methods with metrics on a data set into a SQLite store",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--dataset", required=True,
                   help="data set name (shapes, shapes-single, imagenet, imagenet-seg, voc2007, voc2012, "
                        "coco2014, ...) or package.module:factory")
    g.add_argument("--root", default=None, help="folder of the data set files")
    g.add_argument("--split", default=None, help="data set split (default: the data set's own)")
    g.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the data set, e.g. count=100 (repeatable)")
    g.add_argument("--model", required=True,
                   help="model name (see relprop.load_model) or package.module:factory (imports and runs that "
                        "code, see below)")
    g.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the model builder, e.g. weights=IMAGENET1K_V1 (repeatable)")
    g.add_argument("--methods", required=True, help="comma separated methods, or 'all'")
    g.add_argument("--method-option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="option of a method, e.g. lrp-epsilon.epsilon=0.1 (repeatable)")
    g.add_argument("--metrics", default=None,
                   help="comma separated metrics, or 'all' (default: pointing_game, energy_pointing_game, "
                        "mu, mu_w, outside_inside_ratio, positive_ratio, aopc_morf)")
    g.add_argument("--metric-option", action="append", default=[], metavar="METRIC.KEY=VALUE",
                   help="option of a metric, e.g. pointing_game.tolerance=0 (repeatable)")
    g.add_argument("--targets", default="labels", choices=["labels", "predicted", "second"],
                   help="explained classes: every ground-truth class (default), the top-1 class, "
                        "or the second most probable class")
    g = p.add_argument_group("how")
    g.add_argument("--store", required=True, help="SQLite file receiving the per-sample records")
    g.add_argument("--batch-size", type=int, default=16, help="samples per batch (default 16)")
    g.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g.add_argument("--input-size", type=int, default=None, help="model input side (default: from the model)")
    g.add_argument("--mean", type=_floats, default=None, help="input normalisation mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats, default=None, help="input normalisation std")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="tables (markdown, CSV) and plots of an evaluation store")
    p.add_argument("store", nargs="+", help="SQLite file(s) written by `relprop evaluate` (several with --results)")
    p.add_argument("--out", default=None, help="output folder (default: <store name>-report)")
    p.add_argument("--html", default=None, metavar="DIR",
                   help="write the report into DIR with index.html: summary, plots and a gallery of the "
                        "(image, class) pairs sorted by a chosen method and metric (self-contained, no server)")
    p.set_defaults(func=cmd_report)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~relprop.evaluate.runner.EvaluationConfig` of parsed ``evaluate`` arguments."""
    from ..attribution.registry import methods
    from .metricset import DEFAULT_METRICS, metric_names
    from .runner import EvaluationConfig
    from .specs import parse_options

    dataset_options = parse_options(args.dataset_option, "--dataset-option")
    if args.split is not None:
        dataset_options["split"] = args.split
    metrics = _names(args.metrics, metric_names(), "metrics") or list(DEFAULT_METRICS)
    return EvaluationConfig(
        dataset=args.dataset, model=args.model,
        methods=_names(args.methods, methods(), "methods") or [],
        metrics=metrics, dataset_options=dataset_options, root=args.root,
        model_options=parse_options(args.model_option, "--model-option"),
        method_options=parse_options(args.method_option, "--method-option", scoped=True),
        metric_options=parse_options(args.metric_option, "--metric-option", scoped=True),
        targets=args.targets, batch_size=args.batch_size, limit=args.limit, device=args.device,
        dtype=args.dtype, input_size=args.input_size, mean=args.mean, std=args.std,
        progress=not args.no_progress)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run (or continue) an evaluation; prints what was done and the errors per sample."""
    from .distributed import torchrun_env
    from .runner import run_evaluation
    from .specs import allow_plugins_from_cwd

    allow_plugins_from_cwd(args.dataset, args.model)
    store = Path(args.store)
    if store.is_dir():
        raise ValueError(f"store {store} is not a readable relprop store (it is a folder; give the "
                         f"SQLite file to write, e.g. {store / 'eval.sqlite'})")
    config = config_from_args(args)
    try:
        summary = run_evaluation(config, args.store)
    except FileNotFoundError as err:  # a data set or weights file that is not there
        raise ValueError(str(err)) from None
    except sqlite3.DatabaseError as err:  # damage found past the checks on opening
        raise ValueError(f"store {args.store} is not a readable relprop store ({err})") from None
    env = torchrun_env()
    if env is not None and env[0] != 0:
        return 0
    print(f"run {summary.hash}: {summary.processed} of {summary.pending} pending samples processed, "
          f"{summary.records} records written to {args.store}")
    data_errors = [e for e in summary.errors if not e[2]]
    method_errors = [e for e in summary.errors if e[2]]
    for idx, key, _, _, path, reason in data_errors:
        print(f"  unreadable sample {idx} ({key}): {path}: {reason}", file=sys.stderr)
    failed: dict[tuple[str, str], list] = {}
    for e in method_errors:
        failed.setdefault((e[2], e[3]), []).append(e)
    for (method, metric), errs in failed.items():
        what = method + (f" / {metric}" if metric else "")
        print(f"  {what} failed on {len(errs)} sample(s), e.g. {errs[0][1]}: {errs[0][5]}", file=sys.stderr)
    if summary.timing:
        print("throughput per process, images per second (maps alone; maps + metrics):")
        width = max(len(k) for k in summary.timing)
        for key, t in summary.timing.items():
            print(f"  {key:<{width}}  {_rate(t['images'], t['explain_s']):9.2f}  "
                  f"{_rate(t['images'], t['total_s']):9.2f}   ({t['images']} images, {t['pairs']} explained classes)")
    return 1 if method_errors else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the tables and plots of a store."""
    return on_stores(args, _report)


def on_stores(args: argparse.Namespace, write: Callable[[argparse.Namespace, list[Path]], int]) -> int:
    """Run ``write(args, stores)`` on the stores ``args.store`` once they exist; a store found damaged
    while reading is reported as a :class:`ValueError`."""
    stores = [Path(s) for s in args.store]
    for store in stores:
        if not store.exists():
            raise ValueError(f"evaluation store not found: {store}")
    try:
        return write(args, stores)
    except sqlite3.DatabaseError as err:  # damage found past the checks on opening
        raise ValueError(f"store {' '.join(args.store)} is not a readable relprop store ({err})") from None


def _report(args: argparse.Namespace, stores: list[Path]) -> int:
    from .report import write_report

    if len(stores) > 1:
        raise ValueError("several stores are read only with --results")
    store = stores[0]
    if args.html is not None and args.out is not None:
        raise ValueError("give either --out or --html (the HTML report's folder also receives the other files)")
    out = Path(args.html or args.out or store.with_name(store.stem + "-report"))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the report is a folder of files: give a new or existing folder")
    if args.html is not None:
        from .html import write_html

        files = write_html(store, out)
        print(f"wrote {files[0]} and {len(files) - 1} files beside it")
        return 0
    files = write_report(store, out)
    print(f"wrote {len(files)} files to {out}: {', '.join(f.name for f in files)}")
    return 0
