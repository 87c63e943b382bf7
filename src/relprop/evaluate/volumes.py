"""Volume data sets in the evaluation runner: samples that carry a cube (``nodules3d``).

A volume sample has ``volume`` (C, D, H, W) raw intensities and ``mask`` (D, H, W) bool, the voxels
of its objects (:class:`relprop.data.nodules3d.NoduleSample`). The runner feeds the cube through the
model's own preprocess (a callable returning a (1, C, D, H, W) tensor, e.g.
:func:`relprop.models.nodules3d_models.nodules3d_preprocess`) instead of resizing a 2-D image, and
scores the metrics that have a 3-D form (:attr:`relprop.metrics.MetricInfo.volumes`: the same formula
over voxels, regions of ``patch_size`` cubes) with the exact voxel masks, as Nam, Choi and Lee
[Nam-RAP-Journal] do on CT cubes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..data.base import CorruptSampleError, ModelInput, Sample

__all__ = ["VolumeSpec", "first_sample", "is_volume_sample", "volume_input", "volume_spec", "check_volume_metrics"]


@dataclass(frozen=True)
class VolumeSpec:
    """The model's input for volumes: ``shape`` (C, D, H, W) as made by ``preprocess`` from a sample's cube."""

    shape: tuple[int, ...]
    preprocess: Callable[[Any], torch.Tensor]

    @property
    def size(self) -> int:
        """The cube's depth (the side of a cube), for metric axes that ask for a side."""
        return self.shape[1]

    @property
    def pixels(self) -> int:
        """Voxels per input."""
        return math.prod(self.shape[1:])

    def as_dict(self) -> dict:
        p = self.preprocess
        name = f"{getattr(p, '__module__', '')}.{getattr(p, '__qualname__', type(p).__name__)}"
        return {"volume": list(self.shape), "preprocess": name}


def is_volume_sample(sample: Sample) -> bool:
    """Whether ``sample`` carries a cube (``volume``) rather than only a 2-D image."""
    return getattr(sample, "volume", None) is not None


def first_sample(dataset: Any, tries: int = 5) -> Optional[Sample]:
    """The first readable sample among the first ``tries`` (None if none is readable or the set is empty)."""
    for idx in range(min(len(dataset), tries)):
        try:
            return dataset[idx]
        except CorruptSampleError:
            continue
    return None


def volume_input(sample: Sample, preprocess: Callable[[Any], torch.Tensor]) -> ModelInput:
    """A volume sample as the runner's model input: ``image`` (C, D, H, W) from ``preprocess(volume)``,
    ``masks`` (K, D, H, W): every object's mask is the sample's voxel mask (the union of its objects;
    a sample whose objects have different classes cannot be told apart and is refused)."""
    x = preprocess(sample.volume)
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[0] != 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"the model's preprocess must turn a volume into a (1, C, D, H, W) tensor, got {got}")
    image = x[0].to(torch.float32)
    mask = torch.from_numpy(np.ascontiguousarray(getattr(sample, "mask"), dtype=bool))
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise CorruptSampleError(sample.path or sample.key,
                                 f"voxel mask of shape {tuple(mask.shape)} for a volume of {tuple(image.shape[1:])}")
    labels = [o.label for o in sample.objects]
    if len(set(labels)) > 1:
        raise CorruptSampleError(sample.path or sample.key, "a volume sample holds one voxel mask, but its objects "
                                 f"have several classes {sorted(set(labels))}")
    masks = torch.stack([mask] * len(labels)) if labels else torch.zeros((0,) + tuple(mask.shape), dtype=torch.bool)
    return ModelInput(image=image, labels=list(sample.labels), object_labels=labels,
                      boxes=torch.zeros(0, 4), masks=masks, difficult=[o.difficult for o in sample.objects])


def volume_spec(preprocess: Any, sample: Sample, model: str, explicit: Sequence[Any]) -> VolumeSpec:
    """The :class:`VolumeSpec` of ``model``'s ``preprocess`` on ``sample``; ``explicit`` holds the
    image-only settings (input size, mean, std), which must be unset."""
    if any(v is not None for v in explicit):
        raise ValueError("--input-size, --mean and --std are for 2-D images; a volume is normalised by the "
                         f"preprocess of model {model!r}")
    if not callable(preprocess):
        raise ValueError(f"model {model!r} has no preprocess to turn a volume into its input; a volume data "
                         "set needs a 3-D model such as nodules3d_vgg")
    try:
        x = preprocess(sample.volume)
    except Exception as err:  # noqa: BLE001 - an image preprocess fails on a cube in many ways
        raise ValueError(f"model {model!r} does not take the volume of sample {sample.key} "
                         f"({type(err).__name__}: {err}); a volume "
                         "data set needs a 3-D model such as nodules3d_vgg") from None
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[0] != 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"model {model!r}: its preprocess must turn a volume into a (1, C, D, H, W) tensor, "
                         f"got {got}; a volume data set needs a 3-D model such as nodules3d_vgg")
    return VolumeSpec(tuple(int(n) for n in x.shape[1:]), preprocess)


def check_volume_metrics(names: Sequence[str], dataset: str) -> None:
    """Refuse, before any work, metrics without a 3-D form (:attr:`relprop.metrics.MetricInfo.volumes`)."""
    from .. import metrics as M

    flat = [n for n in dict.fromkeys(names) if n in M.METRICS and not M.METRICS[n].volumes]
    if flat:
        ok = sorted(n for n, info in M.METRICS.items() if info.volumes)
        raise ValueError(f"metric(s) {', '.join(flat)} have no 3-D form: they are defined on 2-D images "
                         f"(pixels, image patches or 2-D filters), and data set {dataset!r} gives volumes; "
                         f"on volumes use: {', '.join(ok)}")
