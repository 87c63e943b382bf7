"""Tests for relprop.viz: colours, overlays, saved PNGs and the method grid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from relprop import viz


def _half_map(sign: float) -> torch.Tensor:
    """A (16, 16) map with ``sign`` relevance on the left half and zero on the right."""
    r = torch.zeros(16, 16)
    r[:, :8] = sign * torch.linspace(0.5, 1.0, 16)[:, None]
    return r


def test_heatmap_shape_and_dtype_for_2d_and_3d() -> None:
    for relevance in (torch.randn(20, 30), torch.randn(3, 20, 30), np.random.randn(20, 30)):
        rgb = viz.heatmap_rgb(relevance)
        assert rgb.shape == (20, 30, 3)
        assert rgb.dtype == np.uint8


def test_positive_relevance_is_red() -> None:
    rgb = viz.heatmap_rgb(_half_map(+1.0)).astype(int)
    left = rgb[:, :8]
    assert (left[..., 0] > left[..., 2] + 50).all()
    assert (left[..., 0] > left[..., 1] + 50).all()


def test_negative_relevance_is_blue() -> None:
    rgb = viz.heatmap_rgb(_half_map(-1.0)).astype(int)
    left = rgb[:, :8]
    assert (left[..., 2] > left[..., 0] + 50).all()
    assert (left[..., 2] > left[..., 1] + 50).all()


def test_zero_relevance_is_neutral_next_to_signed_relevance() -> None:
    rgb = viz.heatmap_rgb(_half_map(+1.0))
    right = rgb[:, 8:]
    assert (right == right[0, 0]).all()
    assert np.ptp(right[0, 0].astype(int)) < 10  # grey/white, no hue


def test_colour_scale_is_symmetric() -> None:
    r = torch.tensor([[1.0, -1.0, 0.25, -0.25, 0.0]])
    rgb = viz.heatmap_rgb(r, cmap="bwr", clip_percentile=100).astype(int)
    # with the mirrored bwr map, equal magnitudes get red <-> blue swapped colours
    assert np.abs(rgb[0, 0] - rgb[0, 1][::-1]).max() <= 1
    assert np.abs(rgb[0, 2] - rgb[0, 3][::-1]).max() <= 1
    assert (rgb[0, 4] == 255).all()


def test_all_zero_map_is_neutral_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = viz.heatmap_rgb(torch.zeros(3, 8, 8))
    assert (rgb == rgb[0, 0]).all()
    assert np.ptp(rgb[0, 0].astype(int)) < 10


def test_outliers_are_clipped_by_percentile() -> None:
    r = torch.full((10, 10), 0.1)
    r[0, 0] = 1000.0
    rgb = viz.heatmap_rgb(r, clip_percentile=50).astype(int)
    # without clipping, 0.1 would be almost white next to the outlier
    assert rgb[5, 5, 1] < 100


def test_nan_map_raises() -> None:
    r = torch.zeros(4, 4)
    r[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        viz.heatmap_rgb(r)


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3, 4, 5)])
def test_wrong_rank_raises_with_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        viz.heatmap_rgb(torch.zeros(shape))


def test_non_symmetric_scale() -> None:
    rgb = viz.heatmap_rgb(torch.arange(16.0).reshape(4, 4), cmap="viridis", symmetric=False)
    assert rgb.shape == (4, 4, 3)
    assert not (rgb == rgb[0, 0]).all()


def test_overlay_resizes_image_to_map() -> None:
    image = Image.fromarray(np.random.randint(0, 255, (50, 80, 3), dtype=np.uint8))
    out = viz.overlay_rgb(image, torch.randn(3, 32, 32))
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8


def test_overlay_accepts_arrays_and_blends() -> None:
    image = np.full((10, 10, 3), 255, dtype=np.uint8)
    relevance = torch.ones(10, 10)
    heat = viz.heatmap_rgb(relevance).astype(int)
    full = viz.overlay_rgb(image, relevance, alpha=1.0).astype(int)
    none = viz.overlay_rgb(image, relevance, alpha=0.0).astype(int)
    assert np.abs(full - heat).max() <= 1
    assert (none == 255).all()


def test_save_heatmap_writes_png(tmp_path) -> None:
    path = viz.save_heatmap(tmp_path / "sub" / "map.png", torch.randn(3, 24, 24))
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (24, 24)
    image = Image.new("RGB", (40, 30), "white")
    path = viz.save_heatmap(tmp_path / "overlay.png", torch.randn(24, 24), image=image)
    with Image.open(path) as img:
        assert img.size == (24, 24)


def test_method_grid_writes_readable_png(tmp_path) -> None:
    image = Image.fromarray(np.random.randint(0, 255, (40, 60, 3), dtype=np.uint8))
    methods = {f"method-{i}": torch.randn(3, 32, 32) for i in range(25)}
    rows = [
        {"image": image, "label": "chelsea: tabby 0.62", "maps": methods},
        {"image": np.asarray(image), "label": "other: cup 0.40", "maps": {"method-0": torch.randn(32, 32)}},
    ]
    out = viz.method_grid(rows, tmp_path / "grid.png", title="demo")
    assert out == tmp_path / "grid.png"
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        width, height = img.size
    assert width > height > 0
    assert width >= 26 * 100  # one readable tile per column


def test_method_grid_rejects_empty_rows(tmp_path) -> None:
    with pytest.raises(ValueError):
        viz.method_grid([], tmp_path / "grid.png")


def test_method_grid_wraps_methods_onto_lines(tmp_path) -> None:
    image = Image.fromarray(np.random.randint(0, 255, (32, 32, 3), dtype=np.uint8))
    methods = {f"method-{i}": torch.randn(32, 32) for i in range(22)}
    rows = [{"image": image, "label": f"photo {i}", "maps": methods} for i in range(2)]
    flat = viz.method_grid(rows, tmp_path / "flat.png")
    wrapped = viz.method_grid(rows, tmp_path / "wrapped.png", columns=11)
    with Image.open(flat) as a, Image.open(wrapped) as b:
        (wa, ha), (wb, hb) = a.size, b.size
    # 23 tiles wide and 2 lines tall, against 12 tiles wide and 2 x 2 lines tall
    assert wb < 0.6 * wa
    assert hb > 1.8 * ha
    with pytest.raises(ValueError, match="columns"):
        viz.method_grid(rows, tmp_path / "bad.png", columns=0)


def test_display_positive_and_absolute() -> None:
    """A method's ``display``: "positive" drops negative relevance (white), "absolute" shows |R| in red."""
    rmap = np.array([[1.0, -1.0], [0.0, 0.5]])
    signed = viz.heatmap_rgb(rmap)
    positive = viz.heatmap_rgb(rmap, display="positive")
    absolute = viz.heatmap_rgb(rmap, display="absolute")
    assert signed[0, 1, 2] > signed[0, 1, 0]  # blue
    assert tuple(positive[0, 1]) == tuple(positive[1, 0])  # negative shown as zero
    assert tuple(absolute[0, 1]) == tuple(absolute[0, 0])  # |-1| == |1|
    with pytest.raises(ValueError, match="display"):
        viz.heatmap_rgb(rmap, display="abs")


def test_method_grid_honours_displays(tmp_path) -> None:
    from relprop.attribution.registry import get_method

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    rows = [{"image": image, "label": "x", "maps": {"smoothgrad": np.ones((8, 8)), "gradient": -np.ones((8, 8))}}]
    out = viz.method_grid(rows, tmp_path / "grid.png",
                          displays={m: get_method(m).display for m in ("smoothgrad", "gradient")})
    assert out.exists() and get_method("smoothgrad").display == "positive" and get_method("gradient").display == "signed"
