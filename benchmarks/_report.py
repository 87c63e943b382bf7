"""Each benchmark script owns one section of docs/benchmarks.md and rewrites only that section."""

from __future__ import annotations

import platform
import re
from pathlib import Path

HEADER = (
    "# Benchmarks\n\n"
    "Every number below comes from a run of the script that owns its section (named in the section's "
    "marker); re-run the script rather than edit this file. Ratios are the figures to compare: absolute "
    "times depend on the machine.\n"
)


def write_section(path: Path, owner: str, markdown: str) -> None:
    """Replace the section of ``owner`` (e.g. ``"speed.py"``) in ``path``, appending it if absent."""
    begin, end = f"<!-- BEGIN {owner} -->", f"<!-- END {owner} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    if not text.startswith("# Benchmarks\n"):
        text = HEADER  # an old single-script report: start afresh
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def dist_version(name: str) -> str:
    """The installed version of the distribution ``name``, or "not installed"."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def status_kib(name: str) -> int:
    """A field of /proc/self/status in KiB (e.g. ``VmHWM``, the peak resident set)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no field {name!r}")


#: environment variables that change how the C allocator serves large tensors (glibc's tunables, a
#: preloaded allocator such as jemalloc or tcmalloc)
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "LD_PRELOAD")


def allocator_settings() -> list[str]:
    """The allocator variables that are set, as ``NAME=value``."""
    import os
    return [f"{name}={os.environ[name]}" for name in ALLOCATOR_VARIABLES if os.environ.get(name)]


def allocator() -> str:
    """How the process allocates memory: the allocator variables that are set, or the default."""
    return ", ".join(allocator_settings()) or "the C library's default allocator settings"
