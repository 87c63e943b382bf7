"""Pascal VOC 2007 / 2012 in the devkit layout: annotation XML, JPEG images, segmentation PNGs.

``VOCdevkit/VOC<year>/``: ``Annotations/<id>.xml`` (objects with 1-based inclusive ``<bndbox>`` and the
``<difficult>`` flag), ``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt`` (detection lists) and
``ImageSets/Segmentation/<split>.txt``, ``SegmentationClass/<id>.png`` (palette PNG: index 0 background,
``k`` the k-th class, 255 void) and ``SegmentationObject/<id>.png`` (index ``i`` = the i-th object of the
XML, 255 void). Labels are the 20 classes in the devkit's (alphabetical) order. Boxes become exclusive
0-based ``(xmin - 1, ymin - 1, xmax, ymax)``, which covers the same pixels as TorchRay's
``mask[ymin-1:ymax, xmin-1:xmax]``; objects get a mask where ``SegmentationObject`` exists.
``Sample.segmentation`` keeps VOC's indices (0 background, ``label + 1`` for a class, -1 void);
``segmentation_classes`` names them. Image-level labels include objects marked difficult, as TorchRay's
pointing game does (it skips a class only when all its objects are difficult).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .base import CorruptSampleError, Object, Sample
from ._images import open_rgb, read_index_png
from ._paths import confined, missing, resolve_root
from ._xml import read_voc_xml
from .pointing_lists import flagged_classes, read_difficult_flags
from .registry import register_dataset

__all__ = ["VOC_CLASSES", "VOCDataset"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
_VOID = 255

_HOW = {
    "2007": ("Download VOCtest_06-Nov-2007.tar (and VOCtrainval_06-Nov-2007.tar for the other splits) from "
             "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ and extract them there."),
    "2012": ("Download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ "
             "and extract it there."),
}
_SPLITS = {"2007": ("train", "val", "trainval", "test"), "2012": ("train", "val", "trainval")}
_DIFFICULT_FILE = {"2007": "pointing_game_ebp_voc07_difficult.txt"}


def _year_dir(root: Path, year: str) -> Path | None:
    own = root.name == f"VOC{year}" or not re.fullmatch(r"VOC\d{4}", root.name)  # not another year's folder
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}") + ((root,) if own else ()):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    return None


class VOCDataset:
    """One split of Pascal VOC; ``dataset[i]`` reads the image, its XML and any segmentation PNGs.

    ``difficult_classes(key)`` gives the classes flagged in the pointing game's difficult list (when one
    was given or found next to the data), None for an image the list does not name.
    """

    segmentation_classes = ("background",) + VOC_CLASSES
    class_names = VOC_CLASSES

    def __init__(self, year: str, root: str | Path | None = None, split: str | None = None,
                 task: str = "detection", difficult_flags: str | Path | None = None) -> None:
        if year not in _SPLITS:
            raise ValueError(f"Pascal VOC year must be '2007' or '2012', got {year!r}")
        self.year = year
        self.name = f"voc{year}"
        how = _HOW[year]
        split = split or ("test" if year == "2007" else "val")
        if split not in _SPLITS[year]:
            raise ValueError(f"{self.name}: unknown split {split!r}; known: {', '.join(_SPLITS[year])}")
        if task not in ("detection", "segmentation"):
            raise ValueError(f"{self.name}: task must be 'detection' or 'segmentation', got {task!r}")
        base = resolve_root(root, self.name, "VOCdevkit", how)
        year_dir = _year_dir(base, year)
        if year_dir is None:
            raise missing(self.name, f"VOCdevkit/VOC{year} with Annotations/ and JPEGImages/", base, how)
        self.dir = year_dir
        self.split, self.task = split, task
        list_file = year_dir / "ImageSets" / ("Main" if task == "detection" else "Segmentation") / f"{split}.txt"
        if not list_file.is_file():
            raise missing(self.name, f"the {split} list of the {task} task", list_file, how)
        self.list_file = list_file
        self.ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        flags_path = Path(difficult_flags) if difficult_flags is not None else None
        if flags_path is None and year in _DIFFICULT_FILE:
            found = [p / _DIFFICULT_FILE[year] for p in (base, year_dir) if (p / _DIFFICULT_FILE[year]).is_file()]
            flags_path = found[0] if found else None
        self.difficult_flags = (read_difficult_flags(flags_path, len(VOC_CLASSES)) if flags_path is not None
                                else None)

    def __len__(self) -> int:
        return len(self.ids)

    def difficult_classes(self, key: str) -> frozenset[int] | None:
        """Classes of image ``key`` in the pointing game's difficult subset; None if unlisted or no list."""
        return flagged_classes(self.difficult_flags, key)

    def _file(self, folder: str, name: str) -> Path:
        """``<VOC folder>/folder/name`` for an image id of the split list, which must stay inside ``folder``."""
        return confined(self.dir / folder, name, self.list_file)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        key = self.ids[index]
        xml_path = self._file("Annotations", f"{key}.xml")
        image_path = self._file("JPEGImages", f"{key}.jpg")
        ann = read_voc_xml(xml_path)
        image = open_rgb(image_path)
        w, h = image.size
        if (ann.width, ann.height) != (w, h):
            raise CorruptSampleError(str(xml_path), f"annotation is for a {ann.width}x{ann.height} image, "
                                                    f"{image_path.name} is {w}x{h}")
        objects = []
        for obj in ann.objects:
            if obj.name not in _INDEX:
                raise CorruptSampleError(str(xml_path), f"unknown class {obj.name!r}; VOC classes: "
                                                        f"{', '.join(VOC_CLASSES)}")
            x0, y0 = max(0, int(round(obj.xmin)) - 1), max(0, int(round(obj.ymin)) - 1)
            x1, y1 = min(w, int(round(obj.xmax))), min(h, int(round(obj.ymax)))
            if x1 <= x0 or y1 <= y0:
                raise CorruptSampleError(str(xml_path), f"box {obj[1:5]} of {obj.name!r} is empty or outside "
                                                        f"the {w}x{h} image")
            objects.append(Object(label=_INDEX[obj.name], box=(x0, y0, x1, y1), difficult=obj.difficult))
        segmentation = None
        class_png = self._file("SegmentationClass", f"{key}.png")
        if class_png.is_file():
            classes = read_index_png(class_png)
            _check_size(classes, (h, w), class_png)
            bad = np.setdiff1d(np.unique(classes), np.r_[np.arange(len(VOC_CLASSES) + 1), _VOID])
            if bad.size:
                raise CorruptSampleError(str(class_png), f"class indices {bad.tolist()} outside 0-20 and 255")
            segmentation = classes.astype(np.int64)
            segmentation[classes == _VOID] = -1
        elif self.task == "segmentation":
            raise CorruptSampleError(str(class_png), "segmentation PNG is missing")
        object_png = self._file("SegmentationObject", f"{key}.png")
        if object_png.is_file():
            _attach_instance_masks(object_png, objects, segmentation, (h, w))
        return Sample(key=key, image=image, labels=sorted({o.label for o in objects}), objects=objects,
                      segmentation=segmentation, path=str(image_path))


def _check_size(array: np.ndarray, size: tuple[int, int], path: Path) -> None:
    if array.shape != size:
        raise CorruptSampleError(str(path), f"mask of size {array.shape} for an image of {size} (height, width)")


def _attach_instance_masks(path: Path, objects: list[Object], segmentation: np.ndarray | None,
                           size: tuple[int, int]) -> None:
    """Give object ``i`` the pixels of instance ``i + 1``; check them against the class PNG."""
    instances = read_index_png(path)
    _check_size(instances, size, path)
    ids = [int(v) for v in np.unique(instances) if v not in (0, _VOID)]
    if ids and ids[-1] > len(objects):
        raise CorruptSampleError(str(path), f"instance {ids[-1]} but the annotation lists {len(objects)} objects")
    for i in ids:
        mask = instances == i
        obj = objects[i - 1]
        if segmentation is not None and not np.all(segmentation[mask] == obj.label + 1):
            raise CorruptSampleError(str(path), f"instance {i} is not labelled {VOC_CLASSES[obj.label]!r} in "
                                                "SegmentationClass; objects and instances are out of order")
        obj.mask = mask


@register_dataset("voc2007", "Pascal VOC 2007 (default split: test) with boxes, difficult flags, segmentations")
def voc2007(root: str | Path | None = None, split: str = "test", **options) -> VOCDataset:
    """Build VOC 2007 from ``root`` (holding ``VOCdevkit/VOC2007``; default ``$RELPROP_DATA/VOCdevkit``)."""
    return VOCDataset("2007", root, split, **options)


@register_dataset("voc2012", "Pascal VOC 2012 (default split: val) with boxes, difficult flags, segmentations")
def voc2012(root: str | Path | None = None, split: str = "val", **options) -> VOCDataset:
    """Build VOC 2012 from ``root`` (holding ``VOCdevkit/VOC2012``; default ``$RELPROP_DATA/VOCdevkit``)."""
    return VOCDataset("2012", root, split, **options)
