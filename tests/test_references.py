"""Citations a reader can follow: every reference key used in the sources and documents is defined in
``docs/references.md``, no citation points at an internal paper number, and every metric names its
reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ROOT / "docs" / "references.md"

#: a reference key: ``[Kohlbrenner2020-LRP]``, ``[Nam-Hedge]`` (capitalised name, optional year, a tag)
KEY = re.compile(r"\[([A-Z][A-Za-z]+(?:[0-9]{4})?-[A-Za-z0-9-]+)\]")
#: citations by internal paper number or by file name of the paper collection
INTERNAL = re.compile(r"\bpapers? 00[0-4]\b|\b00[0-4]_[0-9a-f]{16}\.txt\b|\bpapers/00[0-4]\b", re.IGNORECASE)


def _texts() -> list[Path]:
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "docs").rglob("*.md"))
    return files + [ROOT / "README.md"]


def defined_keys(text: str) -> set[str]:
    """Keys defined by ``docs/references.md``: entries start with ``- **[Key]**``."""
    return set(re.findall(r"^- \*\*\[([^\]]+)\]\*\*", text, flags=re.MULTILINE))


def internal_citations(text: str) -> list[str]:
    return INTERNAL.findall(text)


def undefined_keys(text: str, defined: set[str]) -> set[str]:
    return {k for k in KEY.findall(text) if k not in defined}


@pytest.fixture(scope="module")
def defined() -> set[str]:
    keys = defined_keys(REFERENCES.read_text())
    assert len(keys) >= 10
    return keys


def test_core_papers_are_defined(defined) -> None:
    for key in ("Nam2020-RAP", "Nam-RAP-Journal", "Nam-Hedge", "Kohlbrenner2020-LRP", "Iwana2019-SGLRP",
                "Montavon2019-LRP", "Arras2017-LSTM"):
        assert key in defined, key


def test_no_internal_paper_numbers() -> None:
    found = {str(p.relative_to(ROOT)): internal_citations(p.read_text()) for p in _texts()}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"cite by reference key (docs/references.md), not by paper number: {found}"


def test_every_key_used_is_defined(defined) -> None:
    found = {str(p.relative_to(ROOT)): undefined_keys(p.read_text(), defined) for p in _texts()}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"keys not defined in docs/references.md: {found}"


def test_every_metric_names_a_defined_reference(defined) -> None:
    from relprop.metrics import METRICS

    assert METRICS
    bad = {name: info.source for name, info in METRICS.items()
           if not any(k in defined for k in KEY.findall(info.source or ""))}
    assert not bad, f"metric sources without a key of docs/references.md: {bad}"


def test_the_checks_catch_mistakes(defined) -> None:
    assert internal_citations("as in paper 003, Eq. 2") and internal_citations("(Paper 000's Fig. 7)")
    assert internal_citations("source='003_3ffc2cf8b3d12167.txt Eq. 5'")
    assert not internal_citations("Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 2; shapes_vgg_000_fig7.png")
    assert undefined_keys("(Nobody2099-Unknown, [Nobody2099-Unknown])", defined) == {"Nobody2099-Unknown"}
    assert not undefined_keys("[Kohlbrenner2020-LRP] Eq. 5; x[0] [B, H, W]", defined)
