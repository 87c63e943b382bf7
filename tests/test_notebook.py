"""Runs docs/tutorial.ipynb from top to bottom (about a minute on a 2-core CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import relprop

nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra: pip install -e '.[test]'")
nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e '.[test]'")

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


@pytest.mark.notebook
def test_tutorial_runs_and_shows_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel imports the relprop under test, whatever the folder it starts in
    source = str(Path(relprop.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(TUTORIAL.parent)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the method grid, the table, the overlay and the custom composite
    text = "".join(o.get("text", "") for o in outputs)
    assert "predicted: espresso" in text
    assert "lrp-cmp    pointing_game" in text
