"""Tests for the notebook objects of relprop.viz: Heatmap, Overlay and Grid."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from relprop import viz


def _png(obj) -> Image.Image:
    image = Image.open(io.BytesIO(obj._repr_png_()))
    image.load()
    return image


def _signed() -> torch.Tensor:
    r = torch.zeros(3, 16, 16)
    r[:, :, :8] = 1.0
    r[:, :, 8:] = -1.0
    return r


def test_heatmap_rgb_symmetric_and_positive() -> None:
    signed = viz.Heatmap(_signed()).rgb().astype(int)
    assert signed[0, 0, 0] > signed[0, 0, 2] + 50  # red on the positive half
    assert signed[0, -1, 2] > signed[0, -1, 0] + 50  # blue on the negative half
    positive = viz.Heatmap(_signed(), norm="positive").rgb().astype(int)
    assert (positive[:, 8:] >= 235).all()  # negative relevance dropped: the colour map's white end
    assert positive[0, 0, 0] > positive[0, 0, 1] + 50
    assert np.array_equal(viz.Heatmap(_signed(), cmap="bwr").rgb(), viz.heatmap_rgb(_signed(), cmap="bwr"))


def test_overlay_strength() -> None:
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    assert (viz.Overlay(white, _signed(), alpha=0.0).rgb() == 255).all()
    full = viz.Overlay(white, _signed(), alpha=1.0).rgb().astype(int)
    assert np.abs(full - viz.Heatmap(_signed()).rgb().astype(int)).max() <= 1
    with pytest.raises(ValueError, match="alpha"):
        viz.Overlay(white, _signed(), alpha=2.0)


def test_objects_have_png_representations(tmp_path) -> None:
    image = Image.new("RGB", (40, 30), "green")
    for obj in (viz.Heatmap(_signed(), title="m"), viz.Overlay(image, _signed())):
        assert _png(obj).format == "PNG"
    grid = viz.Grid([image, image], {"a": [_signed(), _signed()], "b": [_signed(), None]}, labels=["x", "y"])
    assert grid.shape == (4, 3)
    assert grid.save(tmp_path / "sub" / "grid.png").exists()
    table = viz.Grid([image, image], {"a": [_signed()] * 2, "b": [_signed()] * 2}, layout="table",
                     panels=("overlay",), norm="positive")
    assert table.shape == (2, 3)
    wide, tall = _png(table).size, _png(grid).size
    assert wide[0] > wide[1] and tall[1] > tall[0]


@pytest.mark.parametrize("kwargs", [{"norm": "absolute"}, {"layout": "diagonal"}, {"panels": ("photo",)}])
def test_grid_rejects_bad_options(kwargs) -> None:
    with pytest.raises(ValueError):
        viz.Grid([Image.new("RGB", (8, 8))], {"a": [_signed()]}, **kwargs)


def test_grid_needs_one_map_per_image() -> None:
    with pytest.raises(ValueError, match="2 maps for 1 images"):
        viz.Grid([Image.new("RGB", (8, 8))], {"a": [_signed(), _signed()]})
