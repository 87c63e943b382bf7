"""The evaluation runner: methods x metrics x data set -> per-sample records in a SQLite store.

For every batch of samples not yet stored, the runner reads the samples, resizes them with their
masks to the model's input (:func:`relprop.data.base.to_model_input`; volume samples such as
``nodules3d`` cubes go through the model's preprocess instead and keep their exact voxel masks,
:mod:`relprop.evaluate.volumes`), predicts, forms the explained
(sample, class) pairs, computes each method's maps once per batch and every requested metric from
them, and writes the batch in one transaction (:mod:`relprop.evaluate.store`). Started again with
the same configuration it skips what is stored; under ``torchrun`` the samples are sharded over the
processes (:mod:`relprop.evaluate.distributed`).

Explained classes (``targets``):

* ``"labels"``: every ground-truth class of the image (the pointing-game protocol of TorchRay and
  Nam et al. [Nam-Hedge], "L"); the mask is the union of the class's objects (difficult ones included), a class
  whose objects are all marked difficult is skipped; classes without objects use the segmentation
  map (``segmentation == class``) or an empty mask;
* ``"predicted"``: the top-1 class; the mask is the foreground (all objects, or ``segmentation > 0``),
  as in the ImageNet-segmentation protocol of Chefer et al. [Chefer2021-Transformer];
* ``"second"``: the second most probable class (Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 11 b); mask as for ``"labels"``.

A pair is "difficult" (pointing game) when the data set's difficult list flags it (TorchRay's files
for VOC07 and COCO, ``difficult_classes(key)``; an image missing from the list keeps its pairs), or,
without a list, when its mask covers less than a quarter of the image and the image has at least two
ground-truth classes (EBP's definition, :func:`relprop.metrics.pointing.pointing_pairs`).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import Explainer
from ..data.base import CorruptSampleError, ModelInput, Sample, to_model_input
from ..metrics.inference import MemoisedForward, frozen_forward, weights_state
from . import distributed
from .mapcache import MapCache, image_digests
from .metricset import (DEFAULT_METRICS, NO_METHOD, PairBatch, check_metric_specs,
                        metric_spec, pair_seed)
from .specs import InputSpec, check_logits, input_spec, resolve_dataset, resolve_model
from .store import BatchRows, Store, canonical_json, config_hash, model_digest, to_json, variant_key
from .volumes import VolumeSpec, check_volume_metrics, first_sample, is_volume_sample, volume_input, volume_spec

__all__ = ["TARGET_MODES", "EvaluationConfig", "Evaluation", "EvaluationSummary", "run_evaluation"]

TARGET_MODES = ("labels", "predicted", "second")
#: models (their explainers and explanation maps) kept by ``EvaluationConfig(share_model=True)``, by model identity
_SHARED: dict[str, tuple[nn.Module, Any, dict, str, MapCache]] = {}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: pointing game "difficult": the mask covers less than this fraction and >= 2 classes are present
DIFFICULT_FRACTION = 0.25
#: methods that expand every image into many rows (integrated gradients' steps, SmoothGrad's samples)
#: run them on the CPU in chunks of about this many pixels unless their options say otherwise: the
#: same maps (each row's gradient is its own), two to three times sooner than all rows at once. Three
#: 224 x 224 images or four 32^3 volumes: on nodules3d_vgg (one thread, 16 volumes) SmoothGrad took
#: 7.4 s of CPU time in chunks of 4 rows and 9.3 s in chunks of 12, integrated gradients 4.8 s and
#: 5.0-5.5 s; efficientnet_lite0's integrated gradients 21-22 s in chunks of 2-4 rows, 22-29 s in 8
EXPLAIN_CHUNK_PIXELS = 3 * 224 * 224
#: the most rows of such a chunk: small images run fastest in small chunks, whose activations stay in
#: the CPU's caches (one thread, 16 images of 64 x 64: integrated gradients 1.41 s of CPU time on
#: shapes_resnet and 0.99 s on shapes_vgg in chunks of 16 rows, 1.49 s and 1.31 s in chunks of 64;
#: SmoothGrad on shapes_resnet 2.39 s instead of 3.41 s; the same maps to the bit)
EXPLAIN_CHUNK_ROWS = 16


@dataclass
class EvaluationConfig:
    """Everything ``relprop evaluate`` is given; see ``relprop evaluate --help``.

    ``method_options`` / ``metric_options`` map a name to its options, or to a list of option sets:
    every set is a variant evaluated from the same maps and stored under its own key.
    """

    dataset: str
    model: str
    methods: Sequence[str]
    metrics: Sequence[str] = DEFAULT_METRICS
    dataset_options: dict = field(default_factory=dict)
    root: Optional[str] = None
    model_options: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    metric_options: dict = field(default_factory=dict)
    targets: str = "labels"
    batch_size: int = 16
    limit: Optional[int] = None
    device: str = "cpu"
    dtype: str = "float32"
    input_size: Optional[int] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    progress: bool = True
    #: the progress bar's text (default "evaluate <dataset>"); does not enter the run's identity
    progress_label: Optional[str] = None
    #: keep the model and its prepared explainers in this process for later evaluations of the same
    #: model (relprop reproduce runs many jobs on one model: preparing an explainer of a large
    #: model costs seconds), and the maps computed, for later evaluations of the same methods on the
    #: same images and classes (:mod:`.mapcache`); does not enter the run's identity
    share_model: bool = False
    #: metrics that only run the model forward use a frozen, inference-optimised copy of it on the CPU
    #: (:mod:`relprop.metrics.inference`: the same logits up to float round-off); does not enter
    #: the run's identity
    frozen_forward: bool = True
    #: those metrics push each distinct image of a batch of pairs through the model once
    #: (:class:`~relprop.metrics.inference.MemoisedForward`: the clean images of every method's curves,
    #: the copies that do not depend on the map); does not enter the run's identity
    memoised_forward: bool = True


@dataclass
class EvaluationSummary:
    """What a call of :func:`run_evaluation` did (filled on rank 0; other ranks get counts only)."""

    run: int
    hash: str
    pending: int
    processed: int = 0
    records: int = 0
    errors: list = field(default_factory=list)
    #: method key -> {"explain_s", "total_s" (maps + metrics), "pairs", "images"}, summed over ranks
    timing: dict = field(default_factory=dict)


@dataclass
class _Item:
    idx: int
    sample: Sample
    input: ModelInput


class Evaluation:
    """A prepared evaluation: data set, model, input, methods and metrics, validated up front."""

    def __init__(self, config: EvaluationConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        if config.targets not in TARGET_MODES:
            raise ValueError(f"targets must be one of {', '.join(TARGET_MODES)}, got {config.targets!r}")
        if config.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
        if config.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {config.batch_size}")
        if config.limit is not None and config.limit < 0:
            raise ValueError(f"limit must be >= 0, got {config.limit}")
        if not config.methods:
            raise ValueError("no method given; name at least one (see `relprop methods`)")
        self.device = torch.device(device)
        self.dtype = DTYPES[config.dtype]
        options = dict(config.dataset_options)
        if config.root is not None:
            options["root"] = config.root
        self.dataset = resolve_dataset(config.dataset, options)
        probe = first_sample(self.dataset)
        #: the data set gives volumes (cubes through the model's preprocess, voxel masks)
        self.volumes = probe is not None and is_volume_sample(probe)
        if self.volumes:
            check_volume_metrics(config.metrics, config.dataset)
        shared_key = canonical_json([config.model, config.model_options, str(self.device), config.dtype])
        #: maps kept across the evaluations of a shared model (None: not shared)
        self.map_cache: Optional[MapCache] = None
        if config.share_model and shared_key in _SHARED:
            model, preprocess, self._explainers, self.model_digest, self.map_cache = _SHARED[shared_key]
        else:
            model, preprocess = resolve_model(config.model, dict(config.model_options))
            #: the weights as loaded (before the dtype cast): changed weights never reuse old records
            self.model_digest = model_digest(model)
            model = model.to(device=self.device, dtype=self.dtype)
            self._explainers: dict[str, Explainer] = {}
            if config.share_model:
                self.map_cache = MapCache()
                _SHARED[shared_key] = (model, preprocess, self._explainers, self.model_digest, self.map_cache)
        self.model: nn.Module = model.eval()
        self.input: InputSpec | VolumeSpec
        if self.volumes:
            self.input = volume_spec(preprocess, probe, config.model, (config.input_size, config.mean, config.std))
        else:
            self.input = input_spec(preprocess, config.input_size, config.mean, config.std)
        self.methods = self._methods()
        self.metrics = [metric_spec(name, opts, self.input.size) for name in dict.fromkeys(config.metrics)
                        for opts in _variants(config.metric_options.get(name, {}))]
        check_metric_specs(self.metrics)
        unused = sorted(set(config.metric_options) - {m.name for m in self.metrics})
        if unused:
            raise ValueError(f"options given for metric(s) not evaluated: {', '.join(unused)}")
        self._check_annotations()

    # -- setup ----------------------------------------------------------------------------------

    def _methods(self) -> list[tuple[str, str, dict, Explainer]]:
        from ..attribution.attention_maps import applicable_methods
        from ..attribution.registry import methods as known

        names = list(dict.fromkeys(self.config.methods))
        unused = sorted(set(self.config.method_options) - set(names))
        if unused:
            raise ValueError(f"options given for method(s) not evaluated: {', '.join(unused)}")
        names, skipped, reason = applicable_methods(self.model, names, self.config.method_options)
        if skipped:
            warnings.warn(f"model {self.config.model!r} {reason}", stacklevel=2)
        out = []
        for name in names:
            if name not in known():
                raise ValueError(f"unknown method {name!r}; known: {', '.join(known())}")
            for opts in _variants(self.config.method_options.get(name, {})):
                key = variant_key(name, opts)
                explainer = self._explainers.get(key) or Explainer(
                    self.model, name, **_explain_options(name, opts, self.input.pixels, self.device))  # validates
                if self.config.share_model:
                    self._explainers[key] = explainer
                out.append((key, name, opts, explainer))
        keys = [k for k, _, _, _ in out]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"method variant(s) named twice: {', '.join(dup)}")
        return out

    def _check_annotations(self) -> None:
        """Fail before starting when a metric needs masks and the data set has none, or when the
        data set's classes do not fit the model's outputs (checked on the first readable sample)."""
        needing = [m.name for m in self.metrics if m.needs_mask]
        n = len(self.dataset)
        for idx in range(min(n, 5)):
            try:
                sample = self.dataset[idx]
            except CorruptSampleError:
                continue
            if self.config.targets == "labels" and not sample.labels:
                raise ValueError(f"data set {self.config.dataset!r} has no labels (sample {sample.key}); "
                                 "use --targets predicted")
            if needing and not sample.objects and sample.segmentation is None and not self.volumes:
                raise ValueError(f"metric(s) {', '.join(needing)} need object boxes or masks, but data set "
                                 f"{self.config.dataset!r} gives none (sample {sample.key})")
            mi = self._model_input(sample)
            with torch.no_grad():
                out = check_logits(self.model(mi.image[None].to(self.device, self.dtype)), self.config.model)
            if out.dim() != 2:
                raise ValueError(f"model {self.config.model!r} must return (N, classes) logits, "
                                 f"got shape {tuple(out.shape)}")
            n_names = len(getattr(self.dataset, "class_names", ()) or ())
            if n_names and n_names != out.shape[1]:
                raise ValueError(f"data set {self.config.dataset!r} has {n_names} classes but model "
                                 f"{self.config.model!r} has {out.shape[1]} outputs; give a model trained on "
                                 "this data set (--model package.module:factory)")
            too_big = [c for c in sample.labels if c >= out.shape[1]]
            if too_big:
                raise ValueError(f"data set {self.config.dataset!r} has class {too_big[0]} (sample "
                                 f"{sample.key}) but model {self.config.model!r} has {out.shape[1]} outputs")
            return

    def run_config(self) -> dict:
        """The configuration that determines the values: it names the run in the store.

        The model enters by name, options and :func:`~relprop.evaluate.store.model_digest` of its
        weights, with the relprop version; method and metric options enter the records' keys."""
        from .. import __version__

        options = {k: v for k, v in self.config.dataset_options.items() if k != "root"}
        return {"dataset": self.config.dataset, "dataset_options": options, "model": self.config.model,
                "model_options": self.config.model_options, "model_digest": self.model_digest,
                "relprop_version": __version__, "input": self.input.as_dict(),
                "dtype": self.config.dtype, "targets": self.config.targets}

    def method_rows(self) -> list[tuple[str, str, dict]]:
        rows = [(k, n, o) for k, n, o, _ in self.methods]
        if any(not m.needs_map for m in self.metrics):
            rows.append((NO_METHOD, NO_METHOD, {}))
        return rows

    def metrics_by_method(self) -> dict[str, list[str]]:
        out = {k: [m.key for m in self.metrics if m.needs_map] for k, _, _, _ in self.methods}
        free = [m.key for m in self.metrics if not m.needs_map]
        if free:
            out[NO_METHOD] = free
        return {k: v for k, v in out.items() if v}

    def indices(self) -> list[int]:
        n = len(self.dataset)
        return list(range(n if self.config.limit is None else min(n, self.config.limit)))

    # -- one batch ------------------------------------------------------------------------------

    def _load(self, idx: int, rows: BatchRows) -> Optional[_Item]:
        sample: Optional[Sample] = None
        try:
            sample = self.dataset[idx]
            mi = self._model_input(sample)
        except CorruptSampleError as err:
            key = sample.key if sample is not None else f"#{idx}"
            rows.samples.append((idx, key, err.path, 0, "error"))
            rows.errors.append((idx, key, "", "", err.path, err.reason))
            return None
        except OSError as err:  # e.g. a truncated image decoded lazily by PIL
            key = sample.key if sample is not None else f"#{idx}"
            path = (sample.path or sample.key) if sample is not None else f"#{idx}"
            rows.samples.append((idx, key, path, 0, "error"))
            rows.errors.append((idx, key, "", "", path, f"{type(err).__name__}: {err}"))
            return None
        return _Item(idx, sample, mi)

    def _model_input(self, sample: Sample) -> ModelInput:
        """The sample at the model's input: a volume through the model's preprocess, else an image resized."""
        if isinstance(self.input, VolumeSpec):
            return volume_input(sample, self.input.preprocess)
        return to_model_input(sample, self.input.size, self.input.mean, self.input.std)

    def _class_mask(self, item: _Item, cls: Optional[int]) -> Tensor:
        """Union of the objects of ``cls`` (all objects when None), else from the segmentation map
        (images only), else empty (at the input's spatial shape: (S, S) or (D, H, W))."""
        size = self.input.size
        mi = item.input
        labels = torch.as_tensor(mi.object_labels, dtype=torch.long)
        if mi.masks.shape[0]:
            sel = torch.ones_like(labels, dtype=torch.bool) if cls is None else labels == cls
            if bool(sel.any()):
                return mi.masks[sel].any(0)
        seg = item.sample.segmentation
        if seg is not None and not self.volumes:
            s = torch.as_tensor(seg, dtype=torch.float32)[None, None]
            s = F.interpolate(s, size=(size, size), mode="nearest")[0, 0]
            return s > 0 if cls is None else s == cls
        return torch.zeros(tuple(mi.image.shape[1:]), dtype=torch.bool)

    def _pairs(self, item: _Item, ranked: list[int]) -> list[tuple[int, Tensor, bool]]:
        """The explained (class, mask, difficult) of one sample."""
        mi = item.input
        gt = sorted({int(c) for c in item.sample.labels if int(c) >= 0})
        mode = self.config.targets
        if mode == "labels":
            chosen = []
            for c in gt:
                flags = [d for lab, d in zip(mi.object_labels, mi.difficult) if lab == c]
                if flags and all(flags):
                    continue  # every object of the class is marked difficult (TorchRay, VOC07)
                chosen.append((c, self._class_mask(item, c)))
        elif mode == "predicted":
            chosen = [(ranked[0], self._class_mask(item, None))]
        else:
            if len(ranked) < 2:
                raise ValueError("targets 'second' needs a model with at least two classes")
            chosen = [(ranked[1], self._class_mask(item, ranked[1]))]
        return [(c, mask, self._difficult(item, c, mask, len(gt))) for c, mask in chosen]

    def _difficult(self, item: _Item, cls: int, mask: Tensor, n_classes: int) -> bool:
        """The pointing game's difficult flag: from the data set's list (TorchRay's files) when it
        has one (an image missing from the list keeps all its pairs, as TorchRay does), else the EBP
        definition: mask below a quarter of the image and at least two classes in the image."""
        lookup = getattr(self.dataset, "difficult_classes", None)
        if getattr(self.dataset, "difficult_flags", None) is not None and callable(lookup):
            listed = lookup(item.sample.key)
            return True if listed is None else cls in listed
        return float(mask.sum()) / mask.numel() < DIFFICULT_FRACTION and n_classes >= 2

    def process(self, indices: Sequence[int], done: dict[int, set],
                timing: Optional[dict] = None) -> BatchRows:
        """Compute the rows of the samples ``indices``; ``done[idx]`` lists ``(method, metric)``
        pairs already stored for every target of sample ``idx`` (they are not recomputed)."""
        rows = BatchRows()
        items = [it for it in (self._load(i, rows) for i in indices) if it is not None]
        if not items:
            return rows
        images = torch.stack([it.input.image for it in items]).to(self.device, self.dtype)
        with torch.no_grad():
            logits = self.model(images)
        if logits.dim() != 2:
            raise ValueError(f"the model must return (N, classes) logits, got {tuple(logits.shape)}")
        ranked = torch.topk(logits, min(2, logits.shape[1]), dim=1).indices.cpu().tolist()
        owner, classes, masks, seeds = [], [], [], []
        for i, it in enumerate(items):
            pairs = self._pairs(it, ranked[i])
            rows.samples.append((it.idx, it.sample.key, it.sample.path, len(pairs), "ok"))
            for c, mask, difficult in pairs:
                if c >= logits.shape[1]:
                    raise ValueError(f"sample {it.sample.key}: class {c} out of range for model "
                                     f"{self.config.model!r} with {logits.shape[1]} outputs")
                owner.append(i)
                classes.append(c)
                masks.append(mask)
                seeds.append(pair_seed(it.sample.key, c))
                rows.targets.append((it.sample.key, c, ranked[i][0], float(mask.sum()) / mask.numel(),
                                     difficult))
        if not owner:
            return rows
        owner_t = torch.tensor(owner)
        x = images[owner_t.to(self.device)]
        t = torch.tensor(classes, dtype=torch.long, device=self.device)
        mask_t = torch.stack(masks).to(self.device)
        digests = image_digests(x) if self.map_cache is not None else []
        forward = frozen_forward(self.model, images) if self.config.frozen_forward else None
        if self.config.memoised_forward:
            forward = MemoisedForward(self.model if forward is None else forward)
        wanted = self.metrics_by_method()
        specs = {m.key: m for m in self.metrics}
        method_list: list[tuple[str, Optional[Explainer]]] = [(k, e) for k, _, _, e in self.methods]
        if NO_METHOD in wanted:
            method_list.append((NO_METHOD, None))
        for mkey, explainer in method_list:
            if mkey not in wanted:
                continue
            start = time.perf_counter()
            need = [[k for k in wanted[mkey] if (mkey, k) not in done.get(items[o].idx, ())] for o in owner]
            sel = [p for p, n in enumerate(need) if n]
            if not sel:
                continue
            sel_t = torch.tensor(sel, device=self.device)
            batch = PairBatch(images=x[sel_t], masks=mask_t[sel_t], targets=t[sel_t],
                              seeds=[seeds[p] for p in sel], model=self.model, forward=forward)
            maps = None
            if explainer is not None:
                batch.explain = _explain_fn(explainer)
                try:
                    maps = self._maps(mkey, explainer, batch, [owner[p] for p in sel],
                                      [digests[p] for p in sel] if digests else None)
                except Exception as err:  # noqa: BLE001 - recorded per sample; the run goes on
                    self._fail(rows, [items[owner[p]] for p in sel], mkey, "", err)
                    continue
            explained = time.perf_counter()
            for k in dict.fromkeys(k for p in sel for k in need[p]):
                try:
                    values = specs[k].compute(batch, maps, specs[k].options)
                except Exception as err:  # noqa: BLE001 - recorded per sample; the run goes on
                    self._fail(rows, [items[owner[p]] for p in sel], mkey, k, err)
                    continue
                for p, (scalar, value) in zip(sel, values):
                    if k in need[p]:
                        it = items[owner[p]]
                        rows.records.append((it.sample.key, classes[p], mkey, k, scalar, to_json(value)))
            if timing is not None:
                tm = timing.setdefault(mkey, {"explain_s": 0.0, "total_s": 0.0, "pairs": 0, "images": 0})
                tm["explain_s"] += explained - start
                tm["total_s"] += time.perf_counter() - start
                tm["pairs"] += len(sel)
                tm["images"] += len({owner[p] for p in sel})
        return rows

    def _maps(self, key: str, explainer: Explainer, batch: PairBatch, owners: list[int],
              digests: Optional[list[bytes]]) -> Tensor:
        """(N, S, S) maps of ``explainer`` for ``batch`` (pair i shows image ``owners[i]``), from the
        shared model's cache when it holds this very batch."""
        def explain() -> Tensor:
            return explain_pairs(explainer, batch.images, batch.targets, owners)
        if self.map_cache is None or digests is None:
            return explain()
        self.map_cache.follow(weights_state(self.model))
        return self.map_cache.maps(key, digests, batch.targets, explain)

    @staticmethod
    def _fail(rows: BatchRows, items: list[_Item], method: str, metric: str, err: Exception) -> None:
        reason = f"{type(err).__name__}: {err}"
        for it in {id(i): i for i in items}.values():
            rows.errors.append((it.idx, it.sample.key, method, metric, it.sample.path or it.sample.key, reason))


def _variants(options: dict | list) -> list[dict]:
    """The option sets of one method or metric: a dict is one variant, a list of dicts several
    (each is evaluated and stored under its own key, e.g. ``outside_inside_ratio`` with
    ``[{}, {"sign": "positive"}]``: Nam et al.'s [Nam2020-RAP] ALL and POS from the same maps)."""
    if isinstance(options, dict):
        return [dict(options)]
    if isinstance(options, (list, tuple)) and options and all(isinstance(o, dict) for o in options):
        return [dict(o) for o in options]
    raise ValueError(f"options must be a dict or a non-empty list of dicts, got {options!r}")


def _explain_options(name: str, options: dict, pixels: int, device: torch.device) -> dict:
    """``options`` of method ``name``, with the CPU chunk of its rows (:data:`EXPLAIN_CHUNK_PIXELS`)
    when the method has an ``internal_batch_size`` that the options leave unset."""
    from ..attribution.registry import get_method

    if device.type != "cpu" or "internal_batch_size" in options:
        return options
    if "internal_batch_size" not in get_method(name).option_specs:
        return options
    rows = max(1, min(EXPLAIN_CHUNK_ROWS, EXPLAIN_CHUNK_PIXELS // max(1, pixels)))
    return dict(options, internal_batch_size=rows)


def explain_pairs(explainer: Explainer, images: Tensor, targets: Tensor, owners: Sequence[int]) -> Tensor:
    """(N, S, S) maps (channels summed) of the pairs ``(images[i], targets[i])``, where pair i shows
    image ``owners[i]``. A method that explains several targets per sample at once
    (:mod:`relprop.multi_target`) explains the K classes of an image in one call: its forward pass
    runs once per image, not once per pair (images with the same K go together)."""
    by_image: dict[int, list[int]] = {}
    for pair, image in enumerate(owners):
        by_image.setdefault(image, []).append(pair)
    at_once = explainer.composite is not None or explainer.method.multi_target
    if not at_once or len(by_image) == len(owners):
        return explainer.explain(images, targets).detach().sum(1)  # type: ignore[union-attr]
    by_count: dict[int, list[list[int]]] = {}
    for pairs in by_image.values():
        by_count.setdefault(len(pairs), []).append(pairs)
    maps = torch.empty((len(owners),) + tuple(images.shape[2:]), dtype=images.dtype, device=images.device)
    for count, groups in sorted(by_count.items()):
        rows = torch.tensor(groups, device=images.device)  # (G, K) pairs, one row per image
        first = rows[:, 0]
        if count == 1:
            maps[first] = explainer.explain(images[first], targets[first]).detach().sum(1)  # type: ignore[union-attr]
        else:
            found = explainer.explain(images[first], targets[rows]).detach().sum(2)  # type: ignore[union-attr]
            maps[rows.reshape(-1)] = found.reshape((-1,) + tuple(found.shape[2:]))
    return maps


def _explain_fn(explainer: Explainer):
    """``(model, x, targets) -> (N, H, W)`` maps of ``explainer``'s method on another model."""
    def fn(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
        other = Explainer(model, explainer.method.name, **explainer.options)
        return other.explain(x, targets).detach().sum(1)  # type: ignore[union-attr]
    return fn


def run_evaluation(config: EvaluationConfig, store: str | Path) -> EvaluationSummary:
    """Evaluate ``config`` into the SQLite file ``store``; resumable and shardable under torchrun."""
    ctx = distributed.setup(config.device)
    try:
        return _run(config, Path(store), ctx)
    finally:
        ctx.close()


def _run(config: EvaluationConfig, store_path: Path, ctx: distributed.Context) -> EvaluationSummary:
    Store.check(store_path)  # a read-only, broken or foreign store is refused before any work
    ev = Evaluation(config, ctx.device)
    db: Optional[Store] = None
    plan: Any = None
    run_cfg = ev.run_config()
    if ctx.is_main:
        db = Store(store_path)
        run = db.register_run(run_cfg, ev.method_rows(), [m.as_row() for m in ev.metrics])
        wanted = ev.metrics_by_method()
        complete, partial = db.progress(run, list(wanted), wanted)
        pending = [i for i in ev.indices() if i not in complete]
        plan = (run, pending, {i: d for i, d in partial.items() if i in set(pending)})
    run, pending, partial = ctx.broadcast(plan)
    summary = EvaluationSummary(run=run, hash=config_hash(run_cfg), pending=len(pending))
    bs = config.batch_size
    # batches are cut from the pending list first and then dealt out, so every sample is computed in
    # the same batch as in a single-process run (identical arithmetic, not just equal up to rounding)
    batches = [pending[i:i + bs] for i in range(0, len(pending), bs)]
    mine = batches[ctx.rank::ctx.world]
    steps = math.ceil(len(batches) / ctx.world)
    bar = None
    if ctx.is_main and config.progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), unit="img", desc=config.progress_label or f"evaluate {config.dataset}",
                   file=sys.stderr)
    timing: dict = {}
    try:
        for step in range(steps):
            rows = ev.process(mine[step] if step < len(mine) else [], partial, timing)
            gathered = ctx.gather(rows)
            if db is not None and gathered is not None:
                merged = BatchRows()
                for part in gathered:
                    merged.extend(part)
                db.write_batch(run, merged)
                summary.processed += len(merged)
                summary.records += len(merged.records)
                summary.errors += merged.errors
                if bar is not None:
                    bar.update(len(merged))
        all_timing = ctx.gather(timing)
        if all_timing is not None:
            for part in all_timing:
                for k, t in part.items():
                    acc = summary.timing.setdefault(k, dict.fromkeys(t, 0))
                    for name, v in t.items():
                        acc[name] += v
        ctx.barrier()
    finally:
        if bar is not None:
            bar.close()
        if db is not None:
            db.close()
    return summary
