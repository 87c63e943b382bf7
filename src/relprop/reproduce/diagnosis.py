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


def _clauses(won: str, lost: str, p: Profile, q: Profile) -> list[str]:
    """What separates ``won`` (profile ``p``), ranked ahead here, from ``lost`` (``q``)."""
    out = []
    d = {f: getattr(p, f) - getattr(q, f) for f in MARGINS}
    if d["inside"] >= MARGINS["inside"]:
        out.append(f"keeps {_pct(p.inside)} of its positive relevance inside the objects ({lost}: {_pct(q.inside)})")
    if d["silent"] >= MARGINS["silent"]:
        out.append(f"leaves {_pct(p.silent)} of the background at zero ({lost}: {_pct(q.silent)})")
    if abs(d["negative"]) >= MARGINS["negative"]:
        out.append(f"has {_pct(p.negative)} of its |R| negative ({lost}: {_pct(q.negative)})")
    if abs(d["positive"]) >= MARGINS["positive"]:
        out.append(f"marks {_pct(p.positive)} of the pixels positive ({lost}: {_pct(q.positive)})")
    return out


def reversal_reasons(reversed_pairs: Sequence[tuple[str, str]], found: dict[str, Profile],
                     limit: int = 6) -> str:
    """One sentence per reversed pair ``(paper's better, here better)``, from the measured profiles;
    empty when no pair has both profiles."""
    parts = []
    for a, b in reversed_pairs:
        if a not in found or b not in found:
            continue
        p, q = found[b], found[a]
        if any(math.isnan(v) for v in (p.inside, q.inside, p.silent, q.silent)):
            continue
        clauses = _clauses(b, a, p, q)
        if clauses:
            parts.append(f"{b} " + " and ".join(clauses))
        else:
            parts.append(f"no measured map property separates {b} from {a} (positive relevance inside the "
                         f"objects {_pct(p.inside)} vs {_pct(q.inside)}, background at zero {_pct(p.silent)} vs "
                         f"{_pct(q.silent)})")
        if len(parts) == limit:
            break
    if not parts:
        return ""
    more = len(reversed_pairs) - len(parts)
    return ("measured on the same images and classes: " + "; ".join(parts)
            + (f"; ({more} more reversed pairs)" if more > 0 else ""))
