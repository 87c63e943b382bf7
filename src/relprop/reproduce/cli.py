"""The ``relprop reproduce`` subcommand and the ``--results`` option of ``relprop report``.

Added to :mod:`relprop.cli` by :func:`add_parsers`; the options are declared here without importing
torch, so that ``relprop --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["DEFAULT_MODELS", "DESCRIPTION", "add_arguments", "add_parsers", "cmd_report", "cmd_reproduce"]

DEFAULT_MODELS = "shapes_vgg,shapes_resnet,shapes_vit,efficientnet_lite0,nodules3d_vgg"

DESCRIPTION = """Regenerate docs/results.md: the five papers' evaluation protocols, run with relprop.

    relprop reproduce --store results.sqlite --size small      # wall time: docs/results.md
    relprop reproduce --store results-full.sqlite --size full --device cuda
    python benchmarks/reproduce.py ...                         (the same command, same options)

Runs every job of relprop.reproduce.protocols.jobs through the runner's Python API into the SQLite
store (killed and started again, it continues where it stopped), draws the qualitative figures
(relprop.reproduce.figures) and writes the document (relprop.reproduce.results.write_results).
`relprop report STORE --results docs/results.md` rewrites the document from the store alone.
Real data: --models vgg16 --model-option vgg16.weights=IMAGENET1K_V1 --dataset vgg16=imagenet
--root /data/imagenet (commands for each paper's data set: docs/results.md, last section)."""


def add_arguments(parser: argparse.ArgumentParser, sizes: Optional[Sequence[str]] = None) -> None:
    """Declare the reproduction's options on ``parser`` (``sizes``: the choices of ``--size``, checked
    when the command runs if not given)."""
    parser.add_argument("--store", required=True, help="SQLite store (created or continued)")
    parser.add_argument("--size", default="small", choices=sizes,
                        help="how many images: a size of relprop.reproduce.protocols.SIZES, e.g. small or full "
                             "(default small)")
    parser.add_argument("--out", default="docs/results.md", help="the document (default docs/results.md)")
    parser.add_argument("--images", default=None, help="folder of its PNGs (default <out folder>/images/results)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma separated (default {DEFAULT_MODELS})")
    parser.add_argument("--model-option", action="append", default=[], metavar="MODEL.KEY=VALUE",
                        help="option of a model builder, e.g. shapes_vgg.weights=false (repeatable)")
    parser.add_argument("--dataset", action="append", default=[], metavar="MODEL=DATASET",
                        help="data set of a model (default: shapes for shapes models, photos otherwise)")
    parser.add_argument("--root", default=None, help="folder of the data set files")
    parser.add_argument("--methods", default=None, help="only these methods (comma separated; default: every "
                        "method of the protocols)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-figures", action="store_true", help="skip the qualitative figures")
    parser.add_argument("--no-progress", action="store_true")


def add_parsers(sub: Any) -> None:
    """Add ``reproduce`` to the ``relprop`` subcommand parser ``sub`` and ``--results`` to its ``report``."""
    p = sub.add_parser("reproduce", help="run the five papers' evaluations and write docs/results.md",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_reproduce)

    report = sub.choices["report"]
    report.add_argument("--results", default=None, metavar="FILE.md",
                        help="instead, write the papers' tables and figures (docs/results.md layout; PNGs in "
                             "<FILE folder>/images/results) from the store(s) of `relprop reproduce`")
    report.set_defaults(func=cmd_report)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run (or continue) the reproduction and write the document."""
    from .run import run

    return run(args)


def cmd_report(args: argparse.Namespace) -> int:
    """``relprop report``: the papers' document with ``--results``, else the evaluation report."""
    from ..evaluate.cli import cmd_report as report, on_stores

    if args.results is None:
        return report(args)
    return on_stores(args, _write_results)


def _write_results(args: argparse.Namespace, stores: list[Path]) -> int:
    from .results import write_results

    files = write_results(stores, args.results)
    print(f"wrote {files[0]} and {len(files) - 1} figures")
    return 0
