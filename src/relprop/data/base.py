"""What every data set yields: annotated samples, in the image's own pixel coordinates.

A data set (ImageNet, VOC, COCO, ``shapes``, ``photos``) is a sequence of :class:`Sample`. Boxes and
masks are in the coordinates of ``Sample.image``; :func:`to_model_input` resizes the image and its
annotations together to the square input of a model, so metrics compare maps and masks pixel by pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["CorruptSampleError", "DatasetNotFoundError", "Dataset", "ModelInput", "Object", "Sample",
           "to_model_input"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where it is expected; the message says where and how to get it."""


class CorruptSampleError(ValueError):
    """One sample cannot be read (truncated image, malformed annotation, wrong mask size).

    ``path`` names the offending file; a runner records the error for this sample and goes on.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Object:
    """One annotated object: its class, box ``(x0, y0, x1, y1)`` (pixels, x1/y1 exclusive), optional mask."""

    label: int
    box: tuple[int, int, int, int]
    mask: np.ndarray | None = None  # (H, W) bool, in image coordinates
    difficult: bool = False


@dataclass
class Sample:
    """An image with its annotations. ``key`` is unique and stable within its data set."""

    key: str
    image: Image.Image  # RGB
    labels: list[int]  # image-level class indices (sorted, unique); single-label sets have one
    objects: list[Object] = field(default_factory=list)
    segmentation: np.ndarray | None = None  # (H, W) int class map for semantic segmentation; -1 ignore
    path: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return self.image.height, self.image.width


@runtime_checkable
class Dataset(Protocol):
    """A finite, indexable collection of samples with named classes."""

    name: str
    class_names: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...  # may raise CorruptSampleError


@dataclass
class ModelInput:
    """A sample resized to a model's square input: image (3, S, S) normalised, masks (K, S, S) bool."""

    image: torch.Tensor
    labels: list[int]
    object_labels: list[int]
    boxes: torch.Tensor  # (K, 4) float, x0 y0 x1 y1 in input pixels
    masks: torch.Tensor  # (K, S, S) bool; a box mask where the object has no mask
    difficult: list[bool]


def to_model_input(sample: Sample, size: int, mean: Sequence[float], std: Sequence[float]) -> ModelInput:
    """Resize the image (bilinear, antialiased) and its annotations (nearest) to ``size`` x ``size``."""
    from ._images import to_rgb8  # here: _images imports this module

    rgb = np.asarray(to_rgb8(sample.image, sample.path or sample.key), dtype=np.float32) / 255.0
    h, w = rgb.shape[:2]
    image = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    image = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    sx, sy = size / w, size / h
    boxes, masks = [], []
    for obj in sample.objects:
        x0, y0, x1, y1 = obj.box
        boxes.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
        if obj.mask is not None:
            if obj.mask.shape != (h, w):
                raise CorruptSampleError(sample.path or sample.key,
                                         f"mask of shape {obj.mask.shape} for an image of {(h, w)}")
            m = torch.from_numpy(np.ascontiguousarray(obj.mask, dtype=np.uint8))[None, None].float()
            masks.append(F.interpolate(m, size=(size, size), mode="nearest")[0, 0] > 0.5)
        else:
            m = torch.zeros(size, size, dtype=torch.bool)
            m[int(np.floor(y0 * sy)):int(np.ceil(y1 * sy)), int(np.floor(x0 * sx)):int(np.ceil(x1 * sx))] = True
            masks.append(m)
    return ModelInput(
        image=image,
        labels=list(sample.labels),
        object_labels=[o.label for o in sample.objects],
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        masks=torch.stack(masks) if masks else torch.zeros(0, size, size, dtype=torch.bool),
        difficult=[o.difficult for o in sample.objects],
    )
