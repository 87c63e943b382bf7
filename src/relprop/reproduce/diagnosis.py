"""Measured reasons for the reversals of a paper's ordering: the map statistics of the two methods.

A localisation table ranks maps by where their relevance lies. When the reproduction reverses one of
the paper's pairs significantly, the two methods' maps are compared on the same images by the
statistics that such metrics respond to: the share of positive relevance inside the objects
(``mu``, Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 5), the share of the background left
at zero (``silent_background``), the share of negative relevance (``negative_share``) and of
positive pixels (``positive_ratio``, Nam et al. [Nam-Hedge], Table 1). A difference larger than
:data:`MARGINS` is named as the measured property behind the reversal; when none is, the text says
that no measured property separates the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from . import protocols as P
from .rundata import RunData

__all__ = ["MARGINS", "STATISTICS", "Profile", "profiles", "reversal_reasons"]

#: the statistics of a map profile: (field, metric key in the store)
STATISTICS = (("inside", P.key("mu")), ("silent", P.key("silent_background")),
              ("negative", P.key("negative_share")), ("positive", P.key("positive_ratio")))
#: the smallest difference (absolute, as a share) that counts as separating two methods
MARGINS = {"inside": 0.05, "silent": 0.15, "negative": 0.10, "positive": 0.10}


@dataclass(frozen=True)
class Profile:
    """Means over the run's (image, class) pairs of a method's maps: positive relevance inside the
    objects, background at zero, negative share of |R|, positive pixels (shares in [0, 1]; NaN
    where the run lacks the statistic)."""

    inside: float
    silent: float
    negative: float
    positive: float


def profiles(run: Optional[RunData], methods: Mapping[str, str]) -> dict[str, Profile]:
    """The :class:`Profile` of each label of ``methods`` (label -> method key in ``run``) whose method
    has at least one statistic in ``run``."""
    if run is None:
        return {}
    out = {}
    for label, m in methods.items():
        values = {f: run.mean(m, k) if run.has(m, k) else math.nan for f, k in STATISTICS}
        if any(not math.isnan(v) for v in values.values()):
            out[label] = Profile(**values)
    return out


def _pct(v: float) -> str:
    return f"{v:.0%}"


#: how each statistic is stated for the method ranked ahead, with its value
_PHRASES = {"inside": "keeps {} of its positive relevance inside the objects",
            "silent": "leaves {} of the background at zero",
            "negative": "has {} of its |R| negative",
            "positive": "marks {} of the pixels positive"}


def _separating(p: Profile, q: Profile) -> list[str]:
    """The statistics on which ``p`` (the method ranked ahead here) differs from ``q`` by their margin:
    more inside the objects or more background at zero, or a different negative or positive share."""
    out = []
    for f, margin in MARGINS.items():
        d = getattr(p, f) - getattr(q, f)
        if d >= margin or (f in ("negative", "positive") and -d >= margin):
            out.append(f)
    return out


def reversal_reasons(reversed_pairs: Sequence[tuple[str, str]], found: dict[str, Profile],
                     limit: int = 8) -> str:
    """The measured properties behind the reversed pairs ``(paper's better, here better)``: for each
    method ranked ahead, the statistics that separate it from the methods it passed (grouped), and the
    pairs that no statistic separates; empty when no pair has both profiles."""
    grouped: dict[str, dict[str, list[str]]] = {}
    unexplained = []
    for a, b in reversed_pairs:
        if a not in found or b not in found:
            continue
        p, q = found[b], found[a]
        if any(math.isnan(v) for v in (p.inside, q.inside, p.silent, q.silent)):
            continue
        fields = _separating(p, q)
        for f in fields:
            grouped.setdefault(b, {}).setdefault(f, []).append(f"{a}: {_pct(getattr(q, f))}")
        if not fields:
            unexplained.append(f"no measured map property favours {b} over {a} (inside the objects {_pct(p.inside)} vs "
                               f"{_pct(q.inside)}, background at zero {_pct(p.silent)} vs {_pct(q.silent)})")
    parts = [f"{b} " + " and ".join(f"{_PHRASES[f].format(_pct(getattr(found[b], f)))} ({', '.join(losers)})"
                                     for f, losers in stats.items())
             for b, stats in grouped.items()] + unexplained
    if not parts:
        return ""
    shown_parts = parts[:limit]
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "measured on the same images and classes: " + "; ".join(shown_parts) + more
