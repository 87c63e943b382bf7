"""Small classifiers for the synthetic ``shapes`` benchmark, with weights shipped in the package.

Both are multi-label models for the ``shapes`` data set (:mod:`relprop.data.shapes`): 64x64 RGB in,
one logit per shape class out (trained with a sigmoid / binary cross-entropy loss; a class is
present when its logit is > 0). Training: :mod:`relprop.models.train_shapes`; accuracy: docs/shapes.md.

* :class:`ShapesVGG`: conv-BN-ReLU blocks with max pooling and a two-layer classifier.
* :class:`ShapesResNet`: a stem, bottleneck blocks (1x1 reduce, 3x3, 1x1 expand, each with BN) with
  functional ``+`` residuals, global average pooling and a linear classifier.
* :class:`ShapesViT`: a small vision transformer (torchvision's :class:`VisionTransformer` with a
  convolutional stem, an 8x8 token grid, a class token read by a linear head), so that the
  transformer methods have a trained model.

Every layer is its own module (no module is called twice), so rules can be attached by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

from ..data.shapes import SHAPE_CLASSES
from ._weights import fit_state, read_state_file

__all__ = ["SHAPES_MEAN", "SHAPES_STD", "SHAPES_SIZE", "Bottleneck", "ShapesResNet", "ShapesVGG", "ShapesViT",
           "load_shapes_model", "shapes_preprocess", "weights_path"]

#: Normalisation of [0, 1] pixels: (x - 0.5) / 0.25.
SHAPES_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SHAPES_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)
#: Input side in pixels.
SHAPES_SIZE = 64


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShapesVGG(nn.Module):
    """VGG-style: [conv3x3-BN-ReLU]xk + max-pool blocks (16, 32, 64x2, 128 channels), a global max
    pool (is the class anywhere?), then flatten -> Linear 128 -> ReLU -> Dropout -> Linear (classes)."""

    def __init__(self, num_classes: int = len(SHAPE_CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(3, 16), nn.MaxPool2d(2),  # 64 -> 32
            *_conv_bn_relu(16, 32), nn.MaxPool2d(2),  # 32 -> 16
            *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),  # 16 -> 8
            *_conv_bn_relu(64, 128), nn.AdaptiveMaxPool2d(1),  # 8 -> 1
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(128, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.features(x)))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce -> 3x3 (stride) -> 1x1 expand, BN after each, ``relu(out + shortcut)``.

    The shortcut is the identity, or a strided 1x1 conv + BN where the shape changes.
    """

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + shortcut)


class ShapesResNet(nn.Module):
    """ResNet-style: stem conv5x5/2 (32 ch)-BN-ReLU (64 -> 32), bottleneck stages
    32x32: 1 block -> 64 ch; 16x16: 2 blocks -> 128 ch; 8x8: 2 blocks -> 256 ch (bottleneck width 1/4),
    global average pooling, Linear (classes)."""

    def __init__(self, num_classes: int = len(SHAPE_CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = nn.Sequential(Bottleneck(32, 16, 64))
        self.layer2 = nn.Sequential(Bottleneck(64, 32, 128, stride=2), Bottleneck(128, 32, 128))
        self.layer3 = nn.Sequential(Bottleneck(128, 64, 256, stride=2), Bottleneck(256, 64, 256))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(256, num_classes)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)  # each residual branch starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class ShapesViT(VisionTransformer):
    """ViT (Dosovitskiy et al. 2021 [Dosovitskiy2021-ViT]) for 64x64 scenes with a convolutional stem
    (Xiao et al. 2021 [Xiao2021-ConvStem]): tokens on an 8x8 grid (one per 8x8 patch) plus the class
    token, 4 pre-norm encoder blocks of width 64 with 4 heads and an MLP of 128, learned position
    embeddings, a linear head on the class token; no dropout.

    The stem replaces the single 8x8 patch convolution: conv 7x7 stride 4 (32 channels)-BN-ReLU,
    conv 3x3 stride 2 (64)-BN-ReLU, then torchvision's 1x1 projection to the width. Each token then
    sees its patch and a margin around it (a 15-pixel receptive field); with a plain patch embedding
    (width 96) the validation mAP after two epochs was 0.28, with the stem 0.32.

    It is torchvision's :class:`~torchvision.models.vision_transformer.VisionTransformer` (its
    ``nn.MultiheadAttention`` is what :mod:`relprop.attention` decomposes), built with these sizes.
    """

    def __init__(self, num_classes: int = len(SHAPE_CLASSES), image_size: int = SHAPES_SIZE, num_layers: int = 4,
                 num_heads: int = 4, hidden_dim: int = 64, mlp_dim: int = 128) -> None:
        stem = [ConvStemConfig(32, 7, 4), ConvStemConfig(64, 3, 2)]
        super().__init__(image_size=image_size, patch_size=8, num_layers=num_layers, num_heads=num_heads,
                         hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes, conv_stem_configs=stem)


_ARCHS: dict[str, type[nn.Module]] = {"shapes_vgg": ShapesVGG, "shapes_resnet": ShapesResNet, "shapes_vit": ShapesViT}


def weights_path(name: str) -> Path:
    """Location of the shipped weights of ``name`` inside the package."""
    if name not in _ARCHS:
        raise ValueError(f"unknown shapes model {name!r}; known: {', '.join(sorted(_ARCHS))}")
    return Path(__file__).resolve().parent / "weights" / f"{name}.pt"


def shapes_preprocess() -> T.Compose:
    """PIL image -> (3, 64, 64) tensor: resize to 64x64 (bilinear, antialiased), then (x - 0.5) / 0.25."""
    return T.Compose([
        T.Resize((SHAPES_SIZE, SHAPES_SIZE), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.ToTensor(),
        T.Normalize(SHAPES_MEAN, SHAPES_STD),
    ])


def load_shapes_model(name: str, weights: object = None, **kwargs: Any) -> nn.Module:
    """Build ``name`` (``"shapes_vgg"``, ``"shapes_resnet"`` or ``"shapes_vit"``) with the shipped weights, in eval mode.

    ``weights``: None for the shipped file, a path to another state dict, or ``False`` for random
    initialisation. Files are read with ``torch.load(..., weights_only=True)``. ``kwargs`` go to the
    constructor.
    """
    if name not in _ARCHS:
        raise ValueError(f"unknown shapes model {name!r}; known: {', '.join(sorted(_ARCHS))}")
    model = _ARCHS[name](**kwargs)
    if weights is not False:
        if weights is None:
            path = weights_path(name)
            if not path.is_file():
                raise FileNotFoundError(f"shipped weights of {name!r} missing at {path}; reinstall relprop "
                                        f"or train them with `python -m relprop.models.train_shapes --model {name}`")
        else:
            path = weights  # type: ignore[assignment]
        fit_state(model, read_state_file(path, name), path, name)
    return model.eval()
