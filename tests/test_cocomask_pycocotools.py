"""relprop.data.cocomask against pycocotools: RLE (both encodings) and polygons, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest

from relprop.data.cocomask import (decode_rle, encode_rle_string, mask_to_rle_counts, polygon_to_mask,
                                   segmentation_to_mask)

coco = pytest.importorskip("pycocotools.mask", reason="pycocotools is in the test extra")
# pycocotools' own numpy 2 deprecation warning, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [np.zeros((7, 5), bool), np.ones((7, 5), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool)]
    single = np.zeros((9, 11), bool)
    single[0, 0] = True
    masks.append(single)
    last = np.zeros((9, 11), bool)
    last[-1, -1] = True
    masks.append(last)
    for shape, p in [((20, 30), 0.5), ((64, 48), 0.05), ((50, 50), 0.95), ((300, 200), 0.5)]:
        masks.append(rng.random(shape) < p)
    blob = np.zeros((480, 640), bool)  # long runs: counts above 2**16 and large differences
    blob[100:400, 50:600] = True
    masks.append(blob)
    return masks


def _coco_encode(mask: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))


@pytest.mark.parametrize("index", range(len(_masks())))
def test_compressed_rle_matches(index: int) -> None:
    mask = _masks()[index]
    h, w = mask.shape
    reference = _coco_encode(mask)
    ours = encode_rle_string(mask_to_rle_counts(mask))
    assert ours == reference["counts"].decode()
    assert np.array_equal(decode_rle(reference["counts"].decode(), h, w), coco.decode(reference).astype(bool))
    assert np.array_equal(segmentation_to_mask({"size": [h, w], "counts": ours}, h, w), mask)


@pytest.mark.parametrize("index", range(len(_masks())))
def test_uncompressed_rle_matches(index: int) -> None:
    mask = _masks()[index]
    h, w = mask.shape
    counts = mask_to_rle_counts(mask)
    reference = coco.decode(coco.frPyObjects({"size": [h, w], "counts": counts}, h, w)).astype(bool)
    assert np.array_equal(reference, mask)
    assert np.array_equal(segmentation_to_mask({"size": [h, w], "counts": counts}, h, w), reference)


def _polygons() -> list[tuple[list[float], int, int]]:
    rng = np.random.default_rng(1)
    cases = [
        ([2, 2, 8, 2, 8, 6, 2, 6], 10, 12),                       # axis-aligned rectangle
        ([3.0, 3.0, 3.9, 3.0, 3.9, 3.9, 3.0, 3.9], 8, 8),         # about one pixel
        ([4.4, 4.4, 4.6, 4.4, 4.5, 4.6], 8, 8),                   # below one pixel
        ([0, 0, 11, 0, 11, 9, 0, 9], 10, 12),                     # on the border
        ([-5, -5, 20, -3, 18, 25, -2, 14], 10, 12),               # past the border
        ([0, 0, 0, 9, 0.4, 9, 0.4, 0], 10, 12),                   # a sliver on the left edge
        ([5, 5, 5, 5, 5, 5], 10, 10),                             # degenerate: one point
        ([1, 1, 9, 9, 1, 9, 9, 1], 12, 12),                       # self-intersecting bow tie
    ]
    for k in range(150):
        h, w = (int(v) for v in rng.integers(5, 60, 2))
        n = int(rng.integers(3, 12))
        xy = np.stack([rng.uniform(-3, w + 3, n), rng.uniform(-3, h + 3, n)], 1).reshape(-1)
        # every third polygon on the half-pixel grid, where rounding ties are decided
        cases.append(((np.round(xy * 2) / 2 if k % 3 == 0 else np.round(xy, 2)).tolist(), h, w))
    return cases


@pytest.mark.parametrize("index", range(len(_polygons())))
def test_polygon_matches(index: int) -> None:
    poly, h, w = _polygons()[index]
    reference = coco.decode(coco.merge(coco.frPyObjects([poly], h, w))).astype(bool)
    assert np.array_equal(polygon_to_mask(poly, h, w), reference)


def test_several_polygons_are_united_like_pycocotools() -> None:
    polys = [[1, 1, 6, 1, 6, 6, 1, 6], [4, 4, 12, 4, 12, 9, 4, 9]]
    reference = coco.decode(coco.merge(coco.frPyObjects(polys, 10, 14))).astype(bool)
    assert np.array_equal(segmentation_to_mask(polys, 10, 14), reference)
