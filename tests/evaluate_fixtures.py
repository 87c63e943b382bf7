"""A tiny data set and model for the evaluation-runner tests.

Importable as ``evaluate_fixtures:tiny_dataset`` / ``evaluate_fixtures:tiny_model`` by the runner in
a subprocess (with this folder on ``PYTHONPATH``). ``TINY_DELAY`` (seconds, environment) slows every
sample read down, so a test can kill a run half way; it is not an option of the data set, so it does
not change the configuration (and the store's run).
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from relprop.data.base import CorruptSampleError, Object, Sample
from relprop.models import Preprocess

CLASS_NAMES = ("red", "green", "blue")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
SIZE = 16


class TinyDataset:
    """Noise images of 20 x 24 pixels with one or two coloured rectangles (class = colour channel).

    ``corrupt``: indices whose read raises :class:`CorruptSampleError` naming the file; ``objects``:
    False drops the boxes (image-level labels only).
    """

    name = "tiny"
    class_names = CLASS_NAMES

    def __init__(self, count: int = 12, corrupt: Sequence[int] = (), objects: bool = True, seed: int = 0,
                 difficult_list: bool = False):
        self.count, self.corrupt, self.objects, self.seed = count, set(corrupt), objects, seed
        # a TorchRay-style difficult list: image 0 unlisted, every other image flags class 0 only
        self.difficult_flags = ({f"tiny/{i:03d}": (True, False, False) for i in range(1, count)}
                                if difficult_list else None)

    def difficult_classes(self, key: str) -> frozenset[int] | None:
        if self.difficult_flags is None or key not in self.difficult_flags:
            return None
        return frozenset(i for i, f in enumerate(self.difficult_flags[key]) if f)

    def __len__(self) -> int:
        return self.count

    def path(self, index: int) -> str:
        return f"/data/tiny/{index:03d}.png"

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.count:
            raise IndexError(index)
        delay = float(os.environ.get("TINY_DELAY", "0"))
        if delay:
            time.sleep(delay)
        if index in self.corrupt:
            raise CorruptSampleError(self.path(index), "image file is truncated")
        rng = np.random.default_rng([self.seed, index])
        h, w = 20, 24
        img = rng.uniform(0.3, 0.5, (h, w, 3))
        objects = []
        for _ in range(1 + index % 2):
            label = int(rng.integers(3))
            bh, bw = int(rng.integers(4, 9)), int(rng.integers(4, 9))
            y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            img[y0:y0 + bh, x0:x0 + bw] = 0.1
            img[y0:y0 + bh, x0:x0 + bw, label] = 0.95
            mask = np.zeros((h, w), dtype=bool)
            mask[y0:y0 + bh, x0:x0 + bw] = True
            objects.append(Object(label=label, box=(x0, y0, x0 + bw, y0 + bh), mask=mask))
        image = Image.fromarray((img * 255).round().astype(np.uint8), "RGB")
        labels = sorted({o.label for o in objects})
        return Sample(key=f"tiny/{index:03d}", image=image, labels=labels,
                      objects=objects if self.objects else [], path=self.path(index))


def tiny_dataset(count: int = 12, corrupt: Sequence[int] = (), objects: bool = True, seed: int = 0,
                 difficult_list: bool = False, split: str = "test", root: object = None) -> TinyDataset:
    return TinyDataset(count=count, corrupt=corrupt, objects=objects, seed=seed, difficult_list=difficult_list)


def tiny_model(seed: int = 0) -> tuple[nn.Module, Preprocess]:
    """A small CNN (conv-ReLU-maxpool x 2, linear) with seeded random weights, 16 x 16 input."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, len(CLASS_NAMES)),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    transform = T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize(MEAN, STD)])
    return model.eval(), Preprocess(transform, MEAN, STD)
