"""The library does not depend on the papers' reproduction: only the command line imports relprop.reproduce."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "relprop"
#: the modules allowed to import relprop.reproduce besides the package itself
ALLOWED = {"relprop.cli"}


def module_name(path: Path) -> str:
    """``src/relprop/evaluate/cli.py`` -> ``relprop.evaluate.cli`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of the modules (and of ``from X import name``: ``X.name``) imported by ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            out.add(stem)
            out.update(f"{stem}.{a.name}" for a in node.names)
    return out


def imports_reproduce(source: str, module: str, is_package: bool = False) -> bool:
    return any(m == "relprop.reproduce" or m.startswith("relprop.reproduce.")
               for m in imported_modules(source, module, is_package))


def test_only_the_command_line_imports_reproduce() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name in ALLOWED or name == "relprop.reproduce" or name.startswith("relprop.reproduce."):
            continue
        if imports_reproduce(path.read_text(), name, path.name == "__init__.py"):
            offenders.append(name)
    assert not offenders, f"modules of the library import relprop.reproduce: {offenders}"
    assert (PACKAGE / "reproduce" / "__init__.py").is_file()


def test_the_scan_finds_every_form_of_import() -> None:
    found = lambda src, mod="relprop.evaluate.report", pkg=False: imports_reproduce(src, mod, pkg)  # noqa: E731
    assert found("import relprop.reproduce.results")
    assert found("from relprop.reproduce import protocols")
    assert found("from relprop import reproduce")
    assert found("def f():\n    from ..reproduce.results import write_results\n")
    assert found("from ..reproduce import run")
    assert found("from .reproduce import run", "relprop", pkg=True)
    assert found("from . import reproduce", "relprop.api")
    assert not found("from ..evaluate import report")
    assert not found("from .results import write_results")  # relprop.evaluate.results, not reproduce
    assert not found('NAME = "relprop.reproduce.protocols:boxes_only"')

