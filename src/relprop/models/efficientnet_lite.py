"""EfficientNet-Lite0 built from plain modules, so that it can be traced with torch.fx.

The network follows the TensorFlow EfficientNet-Lite0 reference: ReLU6 activations,
no squeeze-and-excitation, a fixed 32-channel stem and 1280-channel head, batch norm
with eps 1e-3. Strided convolutions use TensorFlow "same" padding, computed statically
for ``image_size`` and applied by an ``nn.ZeroPad2d`` in front of an unpadded
``nn.Conv2d`` (for even sizes one pixel more at the bottom/right than at the top/left),
as in the reference the weights were trained with. Symmetric ``k // 2`` padding gives similar
predictions on the demo photos (cat, espresso, moped, missile) but shifts every strided
layer by one pixel, so the reference padding is kept. Stride-1 convolutions use ordinary ``k // 2`` padding,
which equals "same" padding for odd kernels.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "EfficientNetLite0",
    "MBConvBlock",
    "LITE0_BLOCKS",
    "convert_lukemelas_state_dict",
    "load_efficientnet_lite0_weights",
]

#: Stage configuration: (repeats, kernel size, first stride, expand ratio, out channels).
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) along one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _conv_bn_act(
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int,
    image_size: int,
    groups: int = 1,
    act: bool = True,
    prefix: str = "",
) -> "OrderedDict[str, nn.Module]":
    """Modules for conv -> BN (-> ReLU6), with static TF same padding for stride > 1."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if stride > 1:
        before, after = _same_padding(image_size, kernel_size, stride)
        layers[f"{prefix}pad"] = nn.ZeroPad2d((before, after, before, after))
        padding = 0
    else:
        padding = kernel_size // 2
    layers[f"{prefix}conv"] = nn.Conv2d(
        in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
    )
    layers[f"{prefix}bn"] = nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    if act:
        layers[f"{prefix}act"] = nn.ReLU6()
    return layers


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise conv, 1x1 project (+ identity)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        image_size: int,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if expand_ratio != 1:
            layers.update(_conv_bn_act(in_channels, hidden, 1, 1, image_size, prefix="expand_"))
        layers.update(
            _conv_bn_act(hidden, hidden, kernel_size, stride, image_size, groups=hidden, prefix="depthwise_")
        )
        layers.update(_conv_bn_act(hidden, out_channels, 1, 1, image_size, act=False, prefix="project_"))
        self.body = nn.Sequential(layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.use_residual:  # fixed at construction, not data dependent
            out = out + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (width 1.0, depth 1.0, 224x224 input, dropout 0.2).

    Args:
        num_classes: size of the classifier output.
        image_size: input side length used to compute the static same padding.
    """

    def __init__(self, num_classes: int = 1000, image_size: int = 224, dropout: float = 0.2) -> None:
        super().__init__()
        self.image_size = image_size
        size = image_size
        self.stem = nn.Sequential(_conv_bn_act(3, 32, 3, 2, size))
        size = math.ceil(size / 2)

        blocks: list[nn.Module] = []
        in_ch = 32
        for repeats, kernel_size, stride, expand, out_ch in LITE0_BLOCKS:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConvBlock(in_ch, out_ch, kernel_size, s, expand, size))
                size = math.ceil(size / s)
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)

        self.head = nn.Sequential(_conv_bn_act(in_ch, 1280, 1, 1, size))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.blocks(x)
        x = self.head(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.classifier(x)


_BLOCK_KEYS = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "depthwise_conv",
    "_bn1": "depthwise_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_TOP_KEYS = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "classifier",
}


def convert_lukemelas_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas/EfficientNet-PyTorch keys (``_blocks.3._bn1.weight``) to this module's names.

    Keys that do not follow the scheme are passed through unchanged (and then show up
    as unexpected keys when loading).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        new = key
        if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in _BLOCK_KEYS:
            new = f"blocks.{parts[1]}.body.{_BLOCK_KEYS[parts[2]]}.{parts[3]}"
        elif len(parts) == 2 and parts[0] in _TOP_KEYS:
            new = f"{_TOP_KEYS[parts[0]]}.{parts[1]}"
        out[new] = value
    return out


def load_efficientnet_lite0_weights(model: EfficientNetLite0, path: str | os.PathLike) -> EfficientNetLite0:
    """Load a lukemelas-style EfficientNet-Lite0 checkpoint into ``model`` (in place).

    Raises:
        WeightsError: (a ValueError and a RuntimeError) if the file is not a state dict, keys are
            missing or unexpected, or shapes do not match.
    """
    from ._weights import fit_state, read_state_file

    converted = convert_lukemelas_state_dict(dict(read_state_file(path, "efficientnet_lite0")))
    fit_state(model, converted, path, "efficientnet_lite0")
    return model
