"""MS COCO 2014 with its instances JSON: boxes and instance masks (polygons and RLE, decoded here).

Layout under ``root``: ``annotations/instances_<split>.json`` and the images in ``<split>/`` (e.g.
``val2014/COCO_val2014_000000000042.jpg``). Labels are the 80 categories ordered by category id (the
contiguous indices TorchRay and most detectors use); ``class_names`` are the JSON's category names.
Boxes ``[x, y, w, h]`` (float pixels) become ``(floor x, floor y, ceil(x + w), ceil(y + h))``; masks are
decoded with :mod:`relprop.data.cocomask` exactly as pycocotools' ``annToMask`` (polygons of one object
united; crowd regions as uncompressed RLE). Crowd annotations are kept by default, as in TorchRay's
pointing game, which unites every instance of a class into its mask.

A JSON that cannot be parsed, or lacks ``images`` / ``annotations`` / ``categories``, fails when the data set
is built; a bad image entry, annotation or image file fails only its sample, with a
:class:`CorruptSampleError` naming the file.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .base import CorruptSampleError, Object, Sample
from ._images import open_rgb
from ._paths import confined, missing, resolve_root
from .cocomask import segmentation_to_mask
from .pointing_lists import flagged_classes, read_difficult_flags
from .registry import register_dataset

__all__ = ["COCODataset"]

HOW_TO_GET = ("Download '2014 Val images' (val2014.zip) and '2014 Train/Val annotations' "
              "(annotations_trainval2014.zip) from https://cocodataset.org/#download and extract both there.")
_SPLITS = ("val2014", "train2014")
_DIFFICULT_FILE = "pointing_game_ebp_coco_difficult.txt"


def _load_instances(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the instances JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path}: cannot read the instances JSON (nested too deeply to be COCO "
                         "annotations)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the instances JSON must be an object, got {type(data).__name__}")
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise ValueError(f"{path}: the instances JSON has no {field!r} list")
    return data


class COCODataset:
    """One split of COCO 2014 (instances); ``dataset[i]`` reads image ``i`` and decodes its masks."""

    def __init__(self, root: str | Path | None = None, split: str = "val2014", *,
                 annotations: str | Path | None = None, images: str | Path | None = None,
                 include_crowd: bool = True, difficult_flags: str | Path | None = None) -> None:
        if split not in _SPLITS:
            raise ValueError(f"coco2014: unknown split {split!r}; known: {', '.join(_SPLITS)}")
        self.name = "coco2014"
        base = resolve_root(root, self.name, "coco", HOW_TO_GET)
        ann_path = Path(annotations) if annotations is not None else base / "annotations" / f"instances_{split}.json"
        if not ann_path.is_file():
            raise missing(self.name, f"instances_{split}.json", ann_path, HOW_TO_GET)
        image_dir = Path(images) if images is not None else next(
            (d for d in (base / split, base / "images" / split) if d.is_dir()), base / split)
        if not image_dir.is_dir():
            raise missing(self.name, f"the {split} image folder", image_dir, HOW_TO_GET)
        self.annotation_file, self.image_dir, self.split = ann_path, image_dir, split
        self.include_crowd = include_crowd
        data = _load_instances(ann_path)
        categories = []
        for c in data["categories"]:
            if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
                raise ValueError(f"{ann_path}: malformed category entry {c!r}")
            categories.append((c["id"], c["name"]))
        categories.sort()
        self.category_ids = [cid for cid, _ in categories]
        self.class_names = [name for _, name in categories]
        self._label = {cid: i for i, cid in enumerate(self.category_ids)}
        images = data["images"]
        if all(isinstance(e, dict) and isinstance(e.get("id"), int) for e in images):
            images = sorted(images, key=lambda e: e["id"])  # ordered by image id; otherwise as in the file
        self._images: list[Any] = list(images)
        by_image: dict[Any, list[Any]] = defaultdict(list)
        for a in data["annotations"]:
            if not isinstance(a, dict) or "image_id" not in a:
                raise ValueError(f"{ann_path}: an annotation without 'image_id' cannot be assigned to an image: "
                                 f"{str(a)[:80]}")
            by_image[a["image_id"]].append(a)
        self._annotations = by_image
        flags_path = Path(difficult_flags) if difficult_flags is not None else (
            base / _DIFFICULT_FILE if (base / _DIFFICULT_FILE).is_file() else None)
        self.difficult_flags = (read_difficult_flags(flags_path, len(self.class_names)) if flags_path is not None
                                else None)

    def __len__(self) -> int:
        return len(self._images)

    def difficult_classes(self, key: str) -> frozenset[int] | None:
        """Classes of image ``key`` in the pointing game's difficult subset; None if unlisted or no list."""
        return flagged_classes(self.difficult_flags, key)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        where = str(self.annotation_file)
        entry = self._images[index]
        if not (isinstance(entry, dict) and isinstance(entry.get("file_name"), str)
                and all(isinstance(entry.get(k), int) and entry[k] > 0 for k in ("height", "width"))):
            raise CorruptSampleError(where, f"image entry {index} lacks a file_name and positive integer "
                                            f"height/width: {str(entry)[:80]}")
        file_name, h, w = entry["file_name"], entry["height"], entry["width"]
        image_path = confined(self.image_dir, file_name, where)
        image = open_rgb(image_path)
        if image.size != (w, h):
            raise CorruptSampleError(str(image_path), f"is {image.width}x{image.height} but {Path(where).name} "
                                                      f"says {w}x{h}")
        objects = []
        for a in self._annotations.get(entry.get("id"), []):
            if a.get("iscrowd", 0) and not self.include_crowd:
                continue
            what = f"annotation {a.get('id')} of {file_name}"
            if a.get("category_id") not in self._label:
                raise CorruptSampleError(where, f"{what}: unknown category_id {a.get('category_id')!r}")
            box = _box(a.get("bbox"), w, h)
            if box is None:
                raise CorruptSampleError(where, f"{what}: bbox must be [x, y, width, height] inside the image, "
                                                f"got {a.get('bbox')!r}")
            try:
                mask = segmentation_to_mask(a.get("segmentation"), h, w)
            except ValueError as err:
                raise CorruptSampleError(where, f"{what}: {err}") from None
            objects.append(Object(label=self._label[a["category_id"]], box=box, mask=mask))
        return Sample(key=Path(file_name).stem, image=image, labels=sorted({o.label for o in objects}),
                      objects=objects, path=str(image_path))


def _box(bbox: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return None
    x, y, bw, bh = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw < 0 or bh < 0:
        return None
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, max(math.ceil(x + bw), x0 + 1)), min(height, max(math.ceil(y + bh), y0 + 1))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


@register_dataset("coco2014", "MS COCO 2014 (default split: val2014) with boxes and instance masks")
def coco2014(root: str | Path | None = None, split: str = "val2014", **options) -> COCODataset:
    """Build COCO 2014 from ``root`` (holding ``annotations/`` and ``val2014/``; default ``$RELPROP_DATA/coco``)."""
    return COCODataset(root, split, **options)
