"""The document's section of each paper: ``section(doc, model, runs, tag, dataset)`` writes its tables,
figures and ordering verdicts for one model (``runs``: :func:`.common.runs_of`)."""

from __future__ import annotations

from typing import Callable

from . import paper000, paper001, paper002, paper003, paper004

__all__ = ["SECTIONS"]

#: paper -> the function writing its section
SECTIONS: dict[str, Callable[..., None]] = {
    "000": paper000.section, "001": paper001.section, "002": paper002.section, "003": paper003.section,
    "004": paper004.section,
}
