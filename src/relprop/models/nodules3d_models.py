"""A small 3-D VGG for the synthetic ``nodules3d`` benchmark, with weights shipped in the package.

The RAP journal version (Nam, Choi and Lee [Nam-RAP-Journal]) explains a 3-D CNN with VGG-16's layer order and
batch normalisation instead of biases, trained on 32x32x32 CT cubes (LUNA 2016) to tell nodules from
non-nodules. :class:`Nodules3DVGG` follows that design at a size trainable on a CPU:
[Conv3d 3x3x3 (no bias) - BatchNorm3d - ReLU] blocks in VGG order (8 | 16 | 32, 32 | 64, 64 channels,
max pooling after each group), a global max pool (is there a nodule anywhere in the cube? the
synthetic nodules are not centred like LUNA's candidates), then Linear (no bias) - BatchNorm1d -
ReLU - Linear: two logits
(``NODULE_CLASSES``: no nodule, nodule). Input: (B, 1, 32, 32, 32) cubes normalised as
``(x - NODULES_MEAN) / NODULES_STD``. Training: ``python -m relprop.models.train_shapes --model
nodules3d_vgg``; cross-validated accuracy: docs/shapes.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.nodules3d import NODULE_CLASSES, VOLUME_SIZE
from ._weights import fit_state, read_state_file

__all__ = ["NODULES_MEAN", "NODULES_STD", "Nodules3DVGG", "load_nodules3d_model", "nodules3d_preprocess",
           "weights_path"]

#: Normalisation of the cubes' intensities: (x - 0.3) / 0.2.
NODULES_MEAN = 0.3
NODULES_STD = 0.2
NAME = "nodules3d_vgg"


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU()]


class Nodules3DVGG(nn.Module):
    """3-D VGG with batch norm instead of biases: 32^3 -> 16^3 -> 8^3 -> 4^3 -> 1 x 64 -> 64 -> classes."""

    def __init__(self, num_classes: int = len(NODULE_CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(1, 8), nn.MaxPool3d(2),  # 32 -> 16
            *_block(8, 16), nn.MaxPool3d(2),  # 16 -> 8
            *_block(16, 32), *_block(32, 32), nn.MaxPool3d(2),  # 8 -> 4
            *_block(32, 64), *_block(64, 64), nn.AdaptiveMaxPool3d(1),  # 4 -> 1
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.features(x)))


def weights_path(name: str = NAME) -> Path:
    """Location of the shipped weights inside the package."""
    if name != NAME:
        raise ValueError(f"unknown nodules3d model {name!r}; known: {NAME}")
    return Path(__file__).resolve().parent / "weights" / f"{name}.pt"


def nodules3d_preprocess(volume: Any) -> Tensor:
    """A cube (D, H, W) or (1, D, H, W) (array or tensor, raw intensities) -> normalised (1, 1, D, H, W) float32."""
    x = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"a nodules3d volume must have shape (D, H, W) or (1, D, H, W), got {tuple(x.shape)}")
    if tuple(x.shape[1:]) != (VOLUME_SIZE,) * 3:
        raise ValueError(f"{NAME} takes {VOLUME_SIZE}^3 cubes, got {tuple(x.shape[1:])}")
    return ((x - NODULES_MEAN) / NODULES_STD)[None]


def load_nodules3d_model(name: str = NAME, weights: object = None, **kwargs: Any) -> nn.Module:
    """Build ``nodules3d_vgg`` with the shipped weights (``weights=None``), a state-dict path, or random
    initialisation (``weights=False``), in eval mode."""
    path = weights_path(name)
    model = Nodules3DVGG(**kwargs)
    if weights is not False:
        if weights is not None:
            path = weights  # type: ignore[assignment]
        elif not path.is_file():
            raise FileNotFoundError(f"shipped weights of {name!r} missing at {path}; train them with "
                                    f"`python -m relprop.models.train_shapes --model {name}`")
        fit_state(model, read_state_file(path, name), path, name)
    return model.eval()
