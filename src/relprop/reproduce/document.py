"""The markdown document being written: its lines, figures and verdicts, and the formatting of values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from ..metrics.aggregate import Interval
from . import protocols as P
from .paper_orders import ORDERS, Order, decide, pairs, verdict
from .diagnosis import Profile, profiles, reversal_reasons
from .rundata import Item, RunData, pair_p_values

__all__ = ["Doc", "fmt", "fmt_ci", "md_table", "method_label", "series_plot"]


def fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_ci(v: float, iv: Optional[Interval], digits: int = 3, scale: float = 1.0) -> str:
    """``value [low, high]`` with the 95% interval when there is one (``scale``: e.g. 100 for %)."""
    text = fmt(v, digits)
    if iv is None or text == "–" or math.isnan(iv.low) or math.isnan(iv.high):
        return text
    return f"{text} [{fmt(iv.low * scale, digits)}, {fmt(iv.high * scale, digits)}]"


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(r) + " |" for r in rows] + [""]


def method_label(method: str) -> str:
    """A readable label of a method key: ``lrp-cmp{"alpha":2,...}`` -> ``lrp-cmp alpha=2 ...``."""
    for label, opts in P.CMP_VARIANTS.items():
        if method == P.key("lrp-cmp", opts):
            return f"lrp-cmp ({label})"
    if "{" not in method:
        return method
    import json

    name, _, rest = method.partition("{")
    opts = json.loads("{" + rest)
    return name + " " + ",".join(f"{k}={v}" for k, v in opts.items())


class Doc:
    """The markdown lines and the figures written so far."""

    def __init__(self, image_dir: Path, rel: str) -> None:
        self.lines: list[str] = []
        self.image_dir = image_dir
        self.rel = rel
        self.files: list[Path] = []
        self.context = ""
        self.dataset = ""
        self.verdicts: list[tuple[str, str, str, Optional[tuple[int, int, int]]]] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, name: str, caption: str, draw: Any) -> None:
        """Draw a matplotlib Figure with ``draw(fig)`` into ``name`` and link it."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.2), dpi=110)
        draw(fig)
        fig.tight_layout()
        path = self.image_dir / name
        fig.savefig(path)
        self.files.append(path)
        self.add(f"![{caption}]({self.rel}/{name})", "", f"*{caption}*", "")

    def order(self, order_key: str, ours: dict[str, float], higher: bool,
              items: Optional[dict[str, list[Item]]] = None, maps_run: Optional[RunData] = None,
              method_keys: Optional[dict[str, str]] = None, baselines: Optional[dict[str, Profile]] = None) -> None:
        """The verdict line comparing ``ours`` (label -> value) with the paper's order; ``items``:
        the per-image values of each label, for the paired tests (pairs without them: undecided);
        ``maps_run``: the run whose map statistics explain significant reversals
        (:mod:`relprop.reproduce.diagnosis`), with ``method_keys`` (label -> method key; default:
        the label); ``baselines``: the profiles of labels without maps in the run (a random map's
        expected statistics)."""
        order: Order = ORDERS[order_key]
        comparable = pairs(order, ours)
        p = pair_p_values(items or {}, comparable)
        found = profiles(maps_run, {label: (method_keys or {}).get(label, label) for label in ours})
        found.update(baselines or {})
        text = verdict(order, ours, higher, photos=self.dataset == "photos", p_values=p,
                       measured=lambda rev: reversal_reasons(rev, found))
        self.add(text, "")
        word = text.split("**")[3] if text.count("**") >= 4 else "not comparable"
        counts = None
        if comparable:
            ok = {k: v for k, v in ours.items() if v is not None and not math.isnan(v)}
            words = [w for w, _ in decide(comparable, ok, higher, p).values()]
            counts = (words.count("agrees"), words.count("reversed"), words.count("undecided"))
        self.verdicts.append((self.context, order.source, word, counts))


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "-.", ":")


def series_plot(fig: Any, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
                 hline: Optional[tuple[float, str]] = None, xticks: Optional[list[str]] = None) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, (x, y)) in enumerate(series.items()):
        style = "--" if label.startswith(("random", "uniform")) else LINESTYLES[i // len(MARKERS) % len(LINESTYLES)]
        extra = {"color": "black"} if label.startswith(("random", "uniform")) else {}
        ax.plot(x, y, style, marker=MARKERS[i % len(MARKERS)] if len(x) <= 25 else None, markersize=4,
                markerfacecolor="none", label=label, alpha=0.85, **extra)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle=":", label=hline[1])
    if xticks is not None:
        ax.set_xticks(range(len(xticks)))
        ax.set_xticklabels(xticks, rotation=60, ha="right", fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
