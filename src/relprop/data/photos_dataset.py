"""The ``photos`` data set: the annotated photos of :mod:`relprop.data.photos` with ImageNet labels,
boxes and object masks.

The annotations (``photos_annotations.json``, kept in the package) were drawn by hand: for every photo the
ImageNet-1k classes that describe it, and for each main object its class, a box and a polygon outline.
Masks are rasterised from the outlines when a sample is read, like COCO polygons
(:func:`relprop.data.cocomask.polygon_to_mask`). Keys are the photo names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import numpy as np

from .base import CorruptSampleError, DatasetNotFoundError, Object, Sample
from .cocomask import polygon_to_mask
from .photos import load_photo, photo_names
from .registry import register_dataset

__all__ = ["AnnotatedObject", "PhotoAnnotation", "PhotosDataset", "photo_annotations"]

_FILE = "photos_annotations.json"


@dataclass(frozen=True)
class AnnotatedObject:
    """One outlined object: ImageNet ``label``, a short ``name``, ``box`` (x0, y0, x1, y1), ``polygons``."""

    label: int
    name: str
    box: tuple[int, int, int, int]
    polygons: tuple[tuple[float, ...], ...]

    def mask(self, height: int, width: int) -> np.ndarray:
        """The (height, width) bool mask of the union of the polygons."""
        m = np.zeros((height, width), dtype=bool)
        for poly in self.polygons:
            m |= polygon_to_mask(poly, height, width)
        return m


@dataclass(frozen=True)
class PhotoAnnotation:
    """The annotation of one photo: image ``size`` (height, width), its ImageNet ``labels``, its ``objects``."""

    name: str
    size: tuple[int, int]
    labels: tuple[int, ...]
    objects: tuple[AnnotatedObject, ...]


def _parse(data: object) -> dict[str, PhotoAnnotation]:
    where = f"relprop/data/{_FILE}"
    if not isinstance(data, dict) or not isinstance(data.get("photos"), dict):
        raise ValueError(f"{where}: expected an object with a 'photos' mapping")
    out = {}
    for name, entry in data["photos"].items():
        try:
            h, w = (int(v) for v in entry["size"])
            labels = tuple(sorted({int(v) for v in entry["labels"]}))
            objects = tuple(AnnotatedObject(int(o["label"]), str(o["name"]), tuple(int(v) for v in o["box"]),
                                            tuple(tuple(float(c) for c in p) for p in o["polygons"]))
                            for o in entry["objects"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: photo {name!r} is malformed ({err!r})") from None
        for o in objects:
            if o.label not in labels or len(o.box) != 4 or not o.polygons:
                raise ValueError(f"{where}: photo {name!r}, object {o.name!r}: label outside the photo's labels, "
                                 "box not (x0, y0, x1, y1) or no polygon")
        out[name] = PhotoAnnotation(name, (h, w), labels, objects)
    return out


@lru_cache(maxsize=1)
def _annotations() -> dict[str, PhotoAnnotation]:
    text = resources.files(__package__).joinpath(_FILE).read_text(encoding="utf-8")
    return _parse(json.loads(text))


def photo_annotations() -> dict[str, PhotoAnnotation]:
    """Annotated photo name -> its annotation (sorted by name)."""
    return dict(sorted(_annotations().items()))


def _available(name: str) -> bool:
    try:
        load_photo(name)
    except FileNotFoundError:
        return False
    return True


class PhotosDataset:
    """The annotated photos; ``dataset[i]`` opens the photo and rasterises its object masks."""

    name = "photos"

    def __init__(self, names: Sequence[str] | None = None) -> None:
        from ..models import imagenet_categories

        self.class_names: list[str] = imagenet_categories()
        annotations = photo_annotations()
        if names is None:  # every annotated photo whose package is installed
            self.names = [n for n in annotations if _available(n)]
        else:
            unknown = [n for n in names if n not in annotations]
            if unknown:
                raise ValueError(f"photos without annotations: {unknown}; annotated: {', '.join(annotations)} "
                                 f"(all photos: {', '.join(photo_names())})")
            self.names = list(names)
            for n in self.names:
                try:
                    load_photo(n)
                except FileNotFoundError as err:
                    raise DatasetNotFoundError(str(err)) from None
        self._annotations = annotations

    def __len__(self) -> int:
        return len(self.names)

    def annotation(self, key: str) -> PhotoAnnotation:
        """The annotation of photo ``key``."""
        return self._annotations[key]

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} photos")
        name = self.names[index]
        photo = load_photo(name)
        ann = self._annotations[name]
        image = photo.image()
        h, w = image.height, image.width
        if (h, w) != ann.size:
            raise CorruptSampleError(str(photo.path), f"photo is {h}x{w} (height x width) but was annotated at "
                                                      f"{ann.size[0]}x{ann.size[1]}; the shipped file changed")
        objects = [Object(label=o.label, box=o.box, mask=o.mask(h, w)) for o in ann.objects]
        return Sample(key=name, image=image, labels=list(ann.labels), objects=objects, path=str(photo.path))


@register_dataset("photos", "Photos shipped by scikit-image, matplotlib and scikit-learn, annotated by hand")
def photos(root: Any = None, split: str = "all", names: Sequence[str] | None = None) -> PhotosDataset:
    """Build the ``photos`` data set; ``root`` is ignored: the photos come with installed packages."""
    if split != "all":
        raise ValueError(f"the photos data set has one split, 'all'; got {split!r}")
    return PhotosDataset(names)
