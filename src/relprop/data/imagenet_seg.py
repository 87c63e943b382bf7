"""ImageNet segmentation (Guillaumin et al. 2014 [Guillaumin2014-ImageNetSeg]): 4,276 ImageNet images with foreground masks.

The data come as one MATLAB v7.3 file, ``gtsegs_ijcv.mat`` (HDF5), laid out as MATLAB writes cell
arrays: ``/value/img`` holds N object references, each to an image stored transposed (3, W, H) uint8;
``/value/gt`` holds N references, each to a 1x1 cell whose element references the (W, H) mask with
values 0 (background) and 1 (foreground); ``/value/id`` (optional) references the synset id of each
image as UTF-16 characters. This is the file read by the ImageNet-segmentation evaluation of Chefer et
al. (``imagenet_seg_eval.py``). ``Sample.segmentation`` is the 0/1 mask; the one object carries the mask,
its bounding box and the ImageNet class of the synset (``-1`` for a synset outside the 1000 classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import CorruptSampleError, Object, Sample
from ._paths import missing, resolve_root
from .imagenet import wnid_to_index
from .registry import register_dataset

__all__ = ["ImageNetSegmentation"]

FILE_NAME = "gtsegs_ijcv.mat"
HOW_TO_GET = ("Download gtsegs_ijcv.mat from http://calvin-vision.net/bigstuff/proj-imagenet/data/gtsegs_ijcv.mat "
              "(the ImageNet segmentation ground truth of Guillaumin et al., as used by Chefer et al. [Chefer2021-Transformer]).")


def _h5py() -> Any:
    from .._extras import require

    return require("h5py", "the imagenet-seg data set (gtsegs_ijcv.mat is an HDF5 file)")


class ImageNetSegmentation:
    """Images and foreground masks of ``gtsegs_ijcv.mat``, read lazily (one HDF5 handle per process)."""

    name = "imagenet-seg"
    segmentation_classes = ("background", "foreground")

    def __init__(self, root: str | Path | None = None, *, file: str = FILE_NAME) -> None:
        if root is not None and Path(root).is_file():
            path = Path(root)
        else:
            folder = resolve_root(root, self.name, "imagenet-seg", HOW_TO_GET)
            path = folder / file
            if not path.is_file():
                raise missing(self.name, file, path, HOW_TO_GET)
        self.path = path
        from ..models import imagenet_categories

        self.class_names: list[str] = imagenet_categories()
        h5py = _h5py()
        if not h5py.is_hdf5(str(path)):
            raise ValueError(f"{path}: not a MATLAB v7.3 (HDF5) file; gtsegs_ijcv.mat is saved with -v7.3")
        with h5py.File(path, "r") as f:
            self._length = len(self._read_refs(f)[0])
        self._file: Any = None
        self._refs: tuple[Any, Any, Any] | None = None

    def _read_refs(self, f: Any) -> tuple[Any, Any, Any]:
        """The reference arrays ``/value/img``, ``/value/gt`` and (if usable) ``/value/id``, flattened."""
        h5py = _h5py()
        refs = {}
        for field in ("img", "gt"):
            node = f.get(f"/value/{field}")
            if not isinstance(node, h5py.Dataset) or node.dtype != h5py.ref_dtype:
                raise ValueError(f"{self.path}: no /value/{field} array of object references; is this {FILE_NAME}?")
            refs[field] = node[()].reshape(-1)
        if len(refs["img"]) != len(refs["gt"]):
            raise ValueError(f"{self.path}: /value/img has {len(refs['img'])} entries but /value/gt "
                             f"{len(refs['gt'])}")
        ids = f.get("/value/id")
        usable = isinstance(ids, h5py.Dataset) and ids.dtype == h5py.ref_dtype and ids.size == len(refs["img"])
        return refs["img"], refs["gt"], ids[()].reshape(-1) if usable else None

    def __len__(self) -> int:
        return self._length

    def _handle(self) -> Any:
        if self._file is None:
            self._file = _h5py().File(self.path, "r")
            self._refs = self._read_refs(self._file)
        return self._file

    def _ref(self, which: int, index: int) -> Any:
        self._handle()
        assert self._refs is not None
        return self._refs[which][index] if self._refs[which] is not None else None

    def close(self) -> None:
        """Close the HDF5 handle (reopened on the next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._refs = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = state["_refs"] = None  # HDF5 handles and references do not cross processes
        return state

    def _deref(self, ref: Any, index: int, what: str) -> np.ndarray:
        f = self._handle()
        h5py = _h5py()
        try:
            node = f[ref]
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptSampleError(str(self.path), f"sample {index}: {what} reference does not resolve ({err})") \
                from None
        if not isinstance(node, h5py.Dataset):
            raise CorruptSampleError(str(self.path), f"sample {index}: {what} reference points to a group")
        return node[()]

    def _synset(self, index: int) -> str | None:
        ref = self._ref(2, index)
        if ref is None:
            return None
        chars = self._deref(ref, index, "synset id")
        if chars.dtype.kind not in "ui":
            return None
        return "".join(chr(int(c)) for c in chars.reshape(-1) if int(c))

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        where = str(self.path)
        pixels = self._deref(self._ref(0, index), index, "image")
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[0] != 3):
            raise CorruptSampleError(where, f"sample {index}: image array of dtype {pixels.dtype} and stored shape "
                                            f"{pixels.shape}; expected uint8 (3, W, H) or (W, H)")
        rgb = pixels.transpose(2, 1, 0) if pixels.ndim == 3 else pixels.T
        image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
        cell = self._deref(self._ref(1, index), index, "mask cell")
        h5py = _h5py()
        if cell.dtype != h5py.ref_dtype or cell.size < 1:
            raise CorruptSampleError(where, f"sample {index}: /value/gt entry is not a cell of references")
        stored = self._deref(cell.reshape(cell.shape[0], -1)[0, 0], index, "mask")
        if stored.ndim != 2:
            raise CorruptSampleError(where, f"sample {index}: mask has {stored.ndim} dimensions, expected 2")
        mask_values = stored.T
        if mask_values.shape != (image.height, image.width):
            raise CorruptSampleError(where, f"sample {index}: mask of size {mask_values.shape} for an image of "
                                            f"{(image.height, image.width)} (height, width)")
        values = np.unique(mask_values)
        if not np.isin(values, (0, 1)).all():
            raise CorruptSampleError(where, f"sample {index}: mask values {values[:6].tolist()} are not 0/1")
        mask = mask_values.astype(bool)
        wnid = self._synset(index)
        label = wnid_to_index().get(wnid, -1) if wnid else -1
        objects = []
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            objects.append(Object(label=label, box=box, mask=mask))
        return Sample(key=f"{index:05d}" + (f"_{wnid}" if wnid else ""), image=image,
                      labels=[label] if label >= 0 else [], objects=objects,
                      segmentation=mask.astype(np.int64), path=f"{self.path}#{index}")


@register_dataset("imagenet-seg", "ImageNet segmentation (gtsegs_ijcv.mat): 4,276 images with foreground masks")
def imagenet_seg(root: str | Path | None = None, split: str = "test", **options) -> ImageNetSegmentation:
    """Build the ImageNet-segmentation set from ``root`` (the .mat file, or a folder holding it;
    default ``$RELPROP_DATA/imagenet-seg``). It has a single split."""
    if split != "test":
        raise ValueError(f"imagenet-seg has one split, 'test'; got {split!r}")
    return ImageNetSegmentation(root, **options)

