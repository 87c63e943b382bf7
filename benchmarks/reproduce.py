"""Regenerate docs/results.md: the five papers' evaluation protocols, run with relprop.

    python benchmarks/reproduce.py --store results.sqlite --size small      # wall time: docs/results.md
    python benchmarks/reproduce.py --store results-full.sqlite --size full --device cuda

The same as ``relprop reproduce`` (same options): :func:`relprop.reproduce.run.main`.
"""

from __future__ import annotations

import sys

from relprop.reproduce.run import main

if __name__ == "__main__":
    sys.exit(main())
