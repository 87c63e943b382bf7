"""ImageNet (ILSVRC2012) validation set: images, the ILSVRC bounding-box XML, synset -> class index.

Class ``i`` is the ``i``-th of the 1000 WordNet ids in sorted order (``imagenet_wnids.txt``, shipped;
the order of torchvision's ImageNet and of ``LOC_synset_mapping.txt``), so labels index the outputs of
the torchvision / EfficientNet classifiers. Accepted layouts under ``root``:

* Kaggle ``imagenet-object-localization-challenge``: ``ILSVRC/Data/CLS-LOC/val/*.JPEG``,
  ``ILSVRC/Annotations/CLS-LOC/val/*.xml``, ``LOC_val_solution.csv``;
* the image-net.org archives: ``ILSVRC2012_img_val/`` (or ``val/``, flat or one folder per synset as
  torchvision arranges it), boxes from ``ILSVRC2012_bbox_val_v3.tgz`` in ``ILSVRC2012_bbox_val/``,
  ``bbox_val/`` or next to the images, labels optionally from the devkit
  (``ILSVRC2012_devkit_t12/data/{ILSVRC2012_validation_ground_truth.txt,meta.mat}``).

The label of an image comes from its XML, else its synset folder, else ``LOC_val_solution.csv``, else the
devkit. The XML coordinates are 0-based inclusive pixel indices; boxes here are ``(x0, y0, x1, y1)`` with
``x1 = xmax + 1`` (exclusive), clipped to the image.
"""

from __future__ import annotations

import csv
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from .base import CorruptSampleError, Object, Sample
from ._images import open_rgb
from ._paths import missing, resolve_root
from ._xml import read_voc_xml
from .registry import register_dataset

__all__ = ["ImageNetVal", "imagenet_wnids", "wnid_to_index"]

HOW_TO_GET = ("Get the ILSVRC2012 validation images (ILSVRC2012_img_val.tar) and bounding boxes "
              "(ILSVRC2012_bbox_val_v3.tgz) from https://image-net.org/download-images, or the Kaggle "
              "'imagenet-object-localization-challenge' archive, and extract them there.")

_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_WNID = re.compile(r"^n\d{8}$")
_VAL_NUMBER = re.compile(r"_val_(\d+)$")


@lru_cache(maxsize=1)
def _wnids() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_wnids.txt").read_text(encoding="ascii")
    wnids = tuple(text.split())
    if len(wnids) != 1000 or list(wnids) != sorted(set(wnids)):
        raise RuntimeError("imagenet_wnids.txt must hold 1000 sorted, distinct WordNet ids")
    return wnids


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC2012 WordNet ids; position = class index."""
    return list(_wnids())


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    """WordNet id -> ImageNet-1k class index."""
    return {w: i for i, w in enumerate(_wnids())}


def _first_dir(candidates: Sequence[Path]) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def _list_images(folder: Path) -> list[tuple[Path, str | None]]:
    """(path, synset of its folder or None) for the images directly in ``folder`` or in synset folders."""
    found: list[tuple[Path, str | None]] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and _WNID.match(entry.name):
            found.extend((p, entry.name) for p in sorted(entry.iterdir())
                         if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        elif entry.is_file() and entry.suffix.lower() in _IMAGE_SUFFIXES:
            found.append((entry, None))
    return found


def _read_solution_csv(path: Path) -> dict[str, str]:
    """Kaggle ``LOC_val_solution.csv``: ``ImageId,PredictionString`` with ``"wnid x0 y0 x1 y1 ..."``."""
    labels: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                words = (row.get("PredictionString") or "").split()
                if row.get("ImageId") and words:
                    labels[row["ImageId"]] = words[0]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: cannot read the label list ({err})") from None
    return labels


def _read_devkit(devkit: Path) -> dict[int, str]:
    """Devkit ground truth: image number (1-based) -> synset, via ``meta.mat``'s ILSVRC2012_ID -> WNID."""
    import scipy.io

    data = devkit / "data"
    gt_file, meta_file = data / "ILSVRC2012_validation_ground_truth.txt", data / "meta.mat"
    try:
        meta = scipy.io.loadmat(str(meta_file), squeeze_me=True)["synsets"]
        id_to_wnid = {int(i): str(w) for i, w in zip(meta["ILSVRC2012_ID"], meta["WNID"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_file}: not a devkit meta.mat with synsets(ILSVRC2012_ID, WNID) ({err})") from None
    try:
        ids = [int(line) for line in gt_file.read_text(encoding="ascii").split()]
    except (OSError, ValueError) as err:
        raise ValueError(f"{gt_file}: cannot read the validation ground truth ({err})") from None
    unknown = sorted(set(ids) - set(id_to_wnid))
    if unknown:
        raise ValueError(f"{gt_file}: ILSVRC2012_IDs {unknown[:5]} are not in {meta_file}")
    return {n: id_to_wnid[i] for n, i in enumerate(ids, start=1)}


class ImageNetVal:
    """ImageNet validation images with their class and boxes; ``dataset[i]`` reads one image lazily.

    A sample whose image or XML is missing or unreadable raises :class:`CorruptSampleError` naming the file.
    """

    name = "imagenet"

    def __init__(self, root: str | Path | None = None, *, images: str | Path | None = None,
                 boxes: str | Path | None = None, devkit: str | Path | None = None,
                 require_boxes: bool = True) -> None:
        self.root = resolve_root(root, self.name, "imagenet", HOW_TO_GET)
        from ..models import imagenet_categories

        self.class_names: list[str] = imagenet_categories()
        r = self.root
        image_dir = Path(images) if images is not None else _first_dir(
            [r / "ILSVRC" / "Data" / "CLS-LOC" / "val", r / "ILSVRC2012_img_val", r / "val", r])
        if image_dir is None or not image_dir.is_dir():
            raise missing(self.name, "the validation image folder", Path(images or r), HOW_TO_GET)
        self.images = _list_images(image_dir)
        if not self.images:
            raise missing(self.name, "validation images (*.JPEG)", image_dir, HOW_TO_GET)
        self.image_dir = image_dir
        box_candidates = [Path(boxes)] if boxes is not None else [
            r / "ILSVRC" / "Annotations" / "CLS-LOC" / "val", r / "ILSVRC2012_bbox_val", r / "bbox_val",
            r / "val", image_dir]
        self.box_dir = next((c for c in box_candidates if c.is_dir() and any(c.glob("*.xml"))), None)
        if self.box_dir is None and (require_boxes or boxes is not None):
            raise missing(self.name, "the bounding-box XML files (ILSVRC2012_val_*.xml)",
                          Path(boxes) if boxes is not None else r, HOW_TO_GET)
        solution = r / "LOC_val_solution.csv"
        self._csv_labels = _read_solution_csv(solution) if solution.is_file() else {}
        devkit_dir = Path(devkit) if devkit is not None else r / "ILSVRC2012_devkit_t12"
        if devkit is not None and not devkit_dir.is_dir():
            raise missing(self.name, "the ILSVRC2012 devkit", devkit_dir, HOW_TO_GET)
        self._devkit_labels = (_read_devkit(devkit_dir) if (devkit_dir / "data" / "meta.mat").is_file()
                               else {})

    def __len__(self) -> int:
        return len(self.images)

    def _label_from_lists(self, stem: str, folder_wnid: str | None) -> str | None:
        if folder_wnid is not None:
            return folder_wnid
        if stem in self._csv_labels:
            return self._csv_labels[stem]
        number = _VAL_NUMBER.search(stem)
        if number is not None:
            return self._devkit_labels.get(int(number.group(1)))
        return None

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        path, folder_wnid = self.images[index]
        stem = path.stem
        image = open_rgb(path)
        lookup = wnid_to_index()
        objects: list[Object] = []
        xml_path = self.box_dir / f"{stem}.xml" if self.box_dir is not None else None
        if xml_path is not None and xml_path.is_file():
            ann = read_voc_xml(xml_path)
            if (ann.width, ann.height) != image.size:
                raise CorruptSampleError(str(xml_path), f"annotation is for a {ann.width}x{ann.height} image, "
                                                        f"{path.name} is {image.width}x{image.height}")
            for obj in ann.objects:
                if obj.name not in lookup:
                    raise CorruptSampleError(str(xml_path), f"object {obj.name!r} is not an ILSVRC2012 synset")
                box = _inclusive_to_box(obj.xmin, obj.ymin, obj.xmax, obj.ymax, image.width, image.height)
                if box is None:
                    raise CorruptSampleError(str(xml_path), f"box {obj[1:5]} lies outside the "
                                                            f"{image.width}x{image.height} image")
                objects.append(Object(label=lookup[obj.name], box=box, difficult=obj.difficult))
        if objects:
            labels = sorted({o.label for o in objects})
        else:
            wnid = self._label_from_lists(stem, folder_wnid)
            if wnid is None:
                where = xml_path if xml_path is not None else path
                raise CorruptSampleError(str(where), "no label: no bounding-box XML and no label list names "
                                                     f"{stem}")
            if wnid not in lookup:
                raise CorruptSampleError(str(path), f"label {wnid!r} is not an ILSVRC2012 synset")
            labels = [lookup[wnid]]
        if folder_wnid is not None and objects and lookup.get(folder_wnid) not in labels:
            raise CorruptSampleError(str(xml_path), f"boxes are of {sorted(labels)} but the image lies in "
                                                    f"the folder of {folder_wnid}")
        return Sample(key=stem, image=image, labels=labels, objects=objects, path=str(path))


def _inclusive_to_box(xmin: float, ymin: float, xmax: float, ymax: float, width: int,
                      height: int) -> tuple[int, int, int, int] | None:
    """0-based inclusive pixel coordinates -> exclusive ``(x0, y0, x1, y1)`` clipped to the image."""
    x0, y0 = max(0, int(round(xmin))), max(0, int(round(ymin)))
    x1, y1 = min(width, int(round(xmax)) + 1), min(height, int(round(ymax)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


@register_dataset("imagenet", "ImageNet (ILSVRC2012) validation images with their class and bounding boxes")
def imagenet(root: str | Path | None = None, split: str = "val", **options) -> ImageNetVal:
    """Build the ImageNet validation set (only ``split="val"``, the annotated one, is supported)."""
    if split != "val":
        raise ValueError(f"imagenet: only split='val' is supported (bounding boxes exist for it), got {split!r}")
    return ImageNetVal(root, **options)

