"""The evaluation protocols of the five papers, as runner configurations and the keys of their tables.

One module says what is computed (:func:`jobs`: :class:`~relprop.evaluate.runner.EvaluationConfig`
objects for :func:`relprop.evaluate.runner.run_evaluation`) and where the tables find it
(:data:`OI_ALL`, :data:`TABLE_I_COUNTS`, ... : method and metric keys of the store), so that
the reproduction (:mod:`.run`) and the document (:mod:`.results`) cannot drift apart.

Pixel counts and distances of the papers refer to 224 x 224 inputs; they are scaled to the model's
input side ``s``: counts by the area ratio ``s^2 / 224^2`` (:func:`scaled_count`), distances (the
pointing game's 15-pixel tolerance) by ``s / 224``. Patch sizes of Iwana et al. 2019 [Iwana2019-SGLRP] (p = 1..9) and the
fractions of Nam et al. [Nam-Hedge] are kept as they are. References: ``docs/references.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

from ..data.base import Dataset, Object, Sample
from ..evaluate.runner import EvaluationConfig
from ..evaluate.store import variant_key

__all__ = ["PAPER_SIDE", "SIZES", "Job", "Size", "boxes_only", "jobs", "scaled_count", "input_side",
           "default_dataset", "M000", "M000_VGG", "M001", "M001_POS_VGG", "M002", "M002_TABLE3",
           "M002_INSERTION", "M003", "M003_IMAGENET", "M004", "is_vgg", "table_1_000", "table_i_pos_001", "HEDGE_ABLATION", "HEDGE_GAMMAS", "CMP_VARIANTS",
           "RANDOMISED", "hedge_variants", "localisation_methods", "TRANSFORMER_METHODS", "ATTENTION_ONLY",
           "TRANSFORMER_MODELS", "TRANSFORMER_DATASETS", "faithfulness_options", "transformer_scenes",
           "transformer_boxes", "is_transformer_run", "VOLUME_MODELS", "VOLUME_DATASET", "nodule_cubes",
           "volume_methods", "is_volume_run"]

#: input side of the papers' ImageNet / VOC models; pixel counts are given for it
PAPER_SIDE = 224
#: input side of relprop's models (others: 224)
_SIDES = {"shapes_vgg": 64, "shapes_resnet": 64, "shapes_vit": 64}

#: the map statistics that explain significant reversals (relprop.reproduce.diagnosis), measured in
#: the localisation and segmentation runs
MAP_STATISTICS = ("silent_background", "negative_share")
#: every statistic of a map profile (relprop.reproduce.diagnosis.STATISTICS), measured beside the
#: perturbation, insertion and patch-masking curves on the same images and classes
DIAGNOSTICS = ("mu", "positive_ratio", *MAP_STATISTICS)

# -- methods of each paper ---------------------------------------------------------------------------
#: Nam et al. 2020 [Nam2020-RAP], Table 1 and Fig. 7: the methods measured on VGG-16 and ResNet-50
M000 = ("rap", "lrp-alpha1beta0", "lrp-alpha2beta1", "gradient", "input-x-gradient",
        "integrated-gradients", "guided-backprop")
#: methods that Nam et al. 2020 [Nam2020-RAP] report for VGG-16 only ("Since Pattern Attribution is developed for
#: the VGG network, we do not report the result of it for experiments with Resnet"): Table 1, POS and the
#: ImageNet segmentation columns; evaluated on the VGG models only (:func:`is_vgg`)
M000_VGG = ("pattern-attribution",)
#: Nam, Choi and Lee [Nam-RAP-Journal], Table I: Nam et al.'s [Nam2020-RAP] methods, the LRP presets and the journal RAP
M001 = M000 + ("lrp-preset-a", "lrp-preset-b", "rap-journal")
#: Nam, Choi and Lee [Nam-RAP-Journal], Table I, positive removal only (a VGG-16 table): Pattern Attribution, evaluated
#: on the VGG models only, as for Nam et al. 2020 [Nam2020-RAP]
M001_POS_VGG = ("pattern-attribution",)
#: Nam et al. [Nam-Hedge], Table 1 (pointing game): Grad-CAM, guided backprop, EB, c*EB, c*LRP, Relevance-CAM, RSP, AGF
#: and hedge
M002 = ("gradcam", "guided-backprop", "excitation-backprop", "contrastive-eb", "clrp", "relevance-cam", "rsp", "agf",
        "hedge")
#: Nam et al. [Nam-Hedge], Table 3 (mAP, Out/In on segmentation masks): the class-discriminative methods c*LRP, c*EB,
#: RSP, RCAM, AGF and hedge
M002_TABLE3 = ("clrp", "contrastive-eb", "rsp", "relevance-cam", "agf", "hedge")
#: Nam et al. [Nam-Hedge], Fig. 9 (MoRF insertion): the figure's legend is not in the text; Table 1's methods without
#: Relevance-CAM and AGF, which the text names for Table 1, Table 3 and Fig. 4 only
M002_INSERTION = ("gradcam", "guided-backprop", "excitation-backprop", "contrastive-eb", "clrp", "rsp", "hedge")
#: Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Table I: LRP-z, alpha-beta, guided backprop and the LRP_CMP variants below
M003 = ("lrp-z", "lrp-alpha1beta0", "lrp-alpha2beta1", "guided-backprop", "lrp-cmp")
#: Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Table I, ImageNet (VGG-16) rows only: Pattern Attribution ("for ImageNet
#: with Pattern Attribution (PA) only available in iNNvestigate"); not in the PVOC rows, so shown on single-label
#: data only; computed on the VGG models with :data:`M000_VGG` (the same localisation run)
M003_IMAGENET = ("pattern-attribution",)
#: Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 11 / 13: "LRP" is LRP-alpha1beta0 (the rule CLRP and SGLRP build on)
M004 = ("lrp-alpha1beta0", "clrp", "sglrp", "guided-gradcam")


def is_vgg(model: str) -> bool:
    """Whether ``model`` stands for the papers' VGG-16 (its name says VGG): the model of the VGG-only methods."""
    return "vgg" in model.lower()


def table_1_000(model: str) -> tuple[str, ...]:
    """The methods of Nam et al.'s [Nam2020-RAP] Table 1 for ``model``: :data:`M000`, and :data:`M000_VGG` on a VGG."""
    return M000 + (M000_VGG if is_vgg(model) else ())


def table_i_pos_001(model: str) -> tuple[str, ...]:
    """The methods of Nam, Choi and Lee's [Nam-RAP-Journal] Table I, positive removal, for ``model``."""
    return tuple(_methods(M001 + (M001_POS_VGG if is_vgg(model) else ())))


#: "Beyond the papers: transformers": the methods compared on ``shapes_vit`` and the shipped CNNs
TRANSFORMER_METHODS = ("attnlrp", "cp-lrp", "attention-rollout", "transformer-attribution", "rap", "rap-journal",
                       "hedge", "rsp", "sglrp", "clrp", "gradient", "input-x-gradient", "gradcam")
#: of those, the methods defined on attention only (left out for the CNNs)
ATTENTION_ONLY = ("attention-rollout", "transformer-attribution")
#: models evaluated only in the transformer section (the papers' protocols are for CNNs)
TRANSFORMER_MODELS = ("shapes_vit",)

#: methods of the sanity check (Nam et al. [Nam-Hedge], Fig. 6: hedge; guided backprop is known to fail it)
RANDOMISED = ("hedge", "gradcam", "guided-backprop")

#: Kohlbrenner et al.'s [Kohlbrenner2020-LRP] LRP_CMP variants (label -> lrp-cmp options): alpha 1/2, nothing / flat / z^B first
CMP_VARIANTS: dict[str, dict] = {
    "CMP:a1": {"alpha": 1, "first_rule": "none"},
    "CMP:a2": {"alpha": 2, "first_rule": "none"},
    "CMP:a1+b": {"alpha": 1, "first_rule": "flat"},
    "CMP:a2+b": {"alpha": 2, "first_rule": "flat"},
    "CMP:a1+zB": {"alpha": 1, "first_rule": "zb"},
    "CMP:a2+zB": {"alpha": 2, "first_rule": "zb"},
}
#: Nam et al. [Nam-Hedge], Table 2: rows of the C / A / U / Psi ablation (gamma = 2, hedge's default, as the table says)
HEDGE_ABLATION: dict[str, dict] = {
    "C": {"use_c": True, "use_a": False, "use_u": False, "use_psi": False},
    "C+Psi": {"use_c": True, "use_a": False, "use_u": False, "use_psi": True},
    "C+A+U": {"use_c": True, "use_a": True, "use_u": True, "use_psi": False},
    "A+U+Psi": {"use_c": False, "use_a": True, "use_u": True, "use_psi": True},
    "C+A+U+Psi": {},
}
#: Nam et al. [Nam-Hedge], Fig. 7
HEDGE_GAMMAS = (1.0, 1.25, 1.5, 1.75, 2.0)


def scaled_count(count: int, side: int) -> int:
    """A pixel count of a 224 x 224 image scaled to ``side`` x ``side`` (area ratio, rounded)."""
    return int(math.floor(count * side * side / (PAPER_SIDE * PAPER_SIDE) + 0.5))


def input_side(model: str) -> int:
    return _SIDES.get(model, PAPER_SIDE)


# -- a data set without masks: boxes for the box-based protocols ----------------------------------------


class _BoxesOnly:
    """``dataset`` with object masks dropped, so the runner uses the boxes ([Nam2020-RAP], [Nam-Hedge], [Kohlbrenner2020-LRP], [Iwana2019-SGLRP]
    score against bounding boxes); segmentation maps are dropped too."""

    def __init__(self, dataset: Dataset) -> None:
        self.inner = dataset
        self.name = f"{getattr(dataset, 'name', 'dataset')}-boxes"
        self.class_names = dataset.class_names

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Sample:
        s = self.inner[index]
        objects = [Object(label=o.label, box=o.box, mask=None, difficult=o.difficult) for o in s.objects]
        return replace(s, objects=objects, segmentation=None)


def boxes_only(dataset: str = "shapes", **options: Any) -> Dataset:
    """The registered data set ``dataset`` (with ``options``) scored against boxes instead of masks;
    used as ``--dataset relprop.reproduce.protocols:boxes_only --dataset-option dataset=shapes``."""
    from ..data.registry import get_dataset

    return _BoxesOnly(get_dataset(dataset, **options))  # type: ignore[return-value]


class _Renamed:
    """``dataset`` under another name, so that the transformer section's runs are told apart from the
    papers' runs of the same model in one store."""

    def __init__(self, dataset: Dataset, name: str) -> None:
        self.inner = dataset
        self.name = name
        self.class_names = dataset.class_names

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Sample:
        return self.inner[index]


def transformer_scenes(dataset: str = "shapes", **options: Any) -> Dataset:
    """The registered data set ``dataset`` for the transformer section's perturbation job."""
    from ..data.registry import get_dataset

    return _Renamed(get_dataset(dataset, **options), f"{dataset}-transformers")  # type: ignore[return-value]


def transformer_boxes(dataset: str = "shapes", **options: Any) -> Dataset:
    """``dataset`` scored against boxes, for the transformer section's localisation job."""
    return _Renamed(boxes_only(dataset, **options), f"{dataset}-transformers-boxes")  # type: ignore[return-value]


#: the dataset specs of the transformer section's jobs
TRANSFORMER_DATASETS = ("relprop.reproduce.protocols:transformer_scenes",
                        "relprop.reproduce.protocols:transformer_boxes")


def is_transformer_run(dataset_spec: str) -> bool:
    """Whether a run's dataset spec is one of the transformer section's."""
    return dataset_spec in TRANSFORMER_DATASETS


# -- volumes: the positive nodules3d cubes -------------------------------------------------------------

#: 3-D models, evaluated only in the volume section (localisation in the nodule's voxel mask)
VOLUME_MODELS = ("nodules3d_vgg",)
#: the dataset spec of the volume section's job
VOLUME_DATASET = "relprop.reproduce.protocols:nodule_cubes"


class _Positives:
    """The positive samples (label ``label``) among the first ``count`` of ``dataset``, in order."""

    def __init__(self, dataset: Any, label: int, name: str) -> None:
        self.inner = dataset
        self.name = name
        self.class_names = dataset.class_names
        self.indices = [i for i in range(len(dataset)) if dataset.label(i) == label]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.inner[self.indices[index]]


def nodule_cubes(split: str = "test", count: Optional[int] = None, seed: int = 0) -> Dataset:
    """The cubes with a nodule among the first ``count`` ``nodules3d`` cubes of ``split`` (half of them:
    labels are balanced in every pair of indices); their keys are the ``nodules3d`` keys. Localisation
    in the nodule mask is defined on these only (a negative cube's mask is empty)."""
    from ..data.nodules3d import Nodules3DDataset

    return _Positives(Nodules3DDataset(split, count=count, seed=seed), 1, "nodules3d-positives")  # type: ignore[return-value]


def is_volume_run(dataset_spec: str) -> bool:
    """Whether a run's dataset spec is the volume section's."""
    return dataset_spec == VOLUME_DATASET


def volume_methods() -> list[str]:
    """Every registered method that explains a 3-D CNN: all but those that need attention layers."""
    from ..attribution.attention_maps import ATTENTION_METHODS
    from ..attribution.registry import methods

    return [m for m in methods() if m not in ATTENTION_METHODS]


def volume_pointing_options() -> dict:
    """The pointing game on 32^3 cubes: TorchRay's 15-pixel tolerance scaled by the side ratio."""
    from ..data.nodules3d import VOLUME_SIZE

    return pointing_options(VOLUME_SIZE)


# -- metric variants ------------------------------------------------------------------------------------


def _counts(paper: Sequence[int], side: int, all_pixels: bool = True) -> list[int]:
    out = [scaled_count(c, side) for c in paper]
    return out + ([side * side] if all_pixels else [])


def table_i_options(side: int) -> dict[str, dict]:
    """Nam, Choi and Lee [Nam-RAP-Journal], Table I: positive (MoRF) / negative (LeRF) removal and shuffling, "All" = every pixel."""
    pos = _counts((250, 500, 1000, 2000, 4000), side)
    neg = _counts((2000, 4000, 6000, 8000, 10000), side)
    return {
        "pos_removal": {"counts": pos, "restrict": "positive", "removal": "min"},
        "pos_shuffle": {"counts": pos, "restrict": "positive", "removal": "shuffle"},
        "neg_removal": {"counts": neg, "restrict": "negative", "removal": "min"},
        "neg_shuffle": {"counts": neg, "restrict": "negative", "removal": "shuffle"},
    }


def lerf_000_options(side: int, step: int = 100) -> dict:
    """Nam et al. 2020 [Nam2020-RAP], Fig. 7: LeRF, ``step`` pixels (of 224^2) set to zero per step, 4,000 in all."""
    return {"counts": sorted({scaled_count(c, side) for c in range(step, 4001, step)}), "removal": "zero"}


def topk_ks(side: int) -> list[int]:
    """K of Nam, Choi and Lee's [Nam-RAP-Journal] D_K curve (Fig. 7b): 10 .. 5,000 positive pixels of 224^2, scaled."""
    return sorted({max(2, scaled_count(k, side)) for k in (10, 100, 500, 1000, 2000, 5000)})


def faithfulness_options(side: int, patch: int = 8) -> dict:
    """Region perturbation of ``patch`` x ``patch`` squares (a ViT patch of ``shapes_vit``), removed by
    zero (the data set's mean after normalisation), every 1/16 of the squares, most (MoRF) or least
    (LeRF) relevant first: the AOPC of both orders and their difference, the area between the curves
    that Achtibat et al. 2024 [Achtibat2024-AttnLRP] report as faithfulness."""
    regions = (side // patch) ** 2
    step = max(1, regions // 16)
    return {"patch_size": patch, "counts": list(range(0, regions + 1, step)), "removal": "zero"}


def pointing_options(side: int) -> dict:
    """TorchRay's 15-pixel tolerance scaled to the input side."""
    return {"tolerance": max(1, int(round(15 * side / PAPER_SIDE)))}


_OI = [{}, {"sign": "positive"}]  # Nam et al. 2020 [Nam2020-RAP] Table 1: ALL, POS
_SEG = [{"threshold": "zero"}, {"threshold": "mean", "sign": "positive"}]  # Nam et al. 2020 [Nam2020-RAP]: two thresholds


@dataclass(frozen=True)
class Size:
    """How much a run computes: images per shapes model, photos, randomisation images, curve steps."""

    shapes: dict[str, Optional[int]]
    randomisation: int
    #: images of the hedge variants (Table 2, Fig. 7 of Nam et al. [Nam-Hedge]), per model; None: as ``shapes``
    hedge_variants: Optional[dict[str, Optional[int]]] = None
    #: images of the perturbation, insertion and patch-masking jobs, per model; None: as ``shapes``
    perturbation: Optional[dict[str, Optional[int]]] = None
    lerf_step: int = 100
    photos: Optional[int] = None
    photo_lerf_step: int = 400
    photo_randomisation: int = 0
    #: images of the transformer section, per model (``shapes_vit`` and the shipped CNNs)
    transformers: Optional[dict[str, Optional[int]]] = None
    #: cubes of the volume section (half of them hold a nodule and are explained), per 3-D model;
    #: None: the whole ``nodules3d`` test split
    volumes: Optional[dict[str, Optional[int]]] = None


SIZES: dict[str, Size] = {
    "tiny": Size(shapes={"shapes_vgg": 4, "shapes_resnet": 2}, randomisation=2, photos=1,
                 lerf_step=1000, photo_lerf_step=1000,
                 transformers={"shapes_vit": 4, "shapes_vgg": 2, "shapes_resnet": 2}, volumes={"nodules3d_vgg": 8}),
    "small": Size(shapes={"shapes_vgg": 64, "shapes_resnet": 16}, randomisation=4, lerf_step=400,
                  hedge_variants={"shapes_vgg": 32, "shapes_resnet": 16},
                  perturbation={"shapes_vgg": 40, "shapes_resnet": 12}, photo_lerf_step=800,
                  transformers={"shapes_vit": 64, "shapes_vgg": 32, "shapes_resnet": 16},
                  volumes={"nodules3d_vgg": 80}),
    # Nam, Choi and Lee [Nam-RAP-Journal] evaluate 500 images: 500 scenes per shipped model, every photo
    "paper": Size(shapes={"shapes_vgg": 500, "shapes_resnet": 500}, randomisation=50, lerf_step=100,
                  photo_lerf_step=100, photo_randomisation=9,
                  transformers={"shapes_vit": 500, "shapes_vgg": 500, "shapes_resnet": 500},
                  volumes={"nodules3d_vgg": 1000}),
    "full": Size(shapes={"shapes_vgg": None, "shapes_resnet": None}, randomisation=200, photo_lerf_step=100,
                 photo_randomisation=9, transformers={"shapes_vit": None, "shapes_vgg": None, "shapes_resnet": None},
                 volumes={"nodules3d_vgg": None}),
}


@dataclass(frozen=True)
class Job:
    """One evaluation of a protocol: the papers it serves, a label for the progress bar, its config."""

    papers: tuple[str, ...]
    label: str
    config: EvaluationConfig = field(repr=False)


def _methods(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def localisation_methods(model: Optional[str] = None) -> tuple[list[str], dict]:
    """Methods (and variants) of the box-based tables: [Nam2020-RAP], [Nam-Hedge] (Table 1), [Kohlbrenner2020-LRP], [Iwana2019-SGLRP];
    with ``model``, also those the papers report for VGG-16 only (:data:`M000_VGG`, which covers
    :data:`M003_IMAGENET`) when ``model`` is a VGG."""
    extra = table_1_000(model) if model is not None else ()
    return _methods(M000 + extra + M002 + M003 + M004), {"lrp-cmp": list(CMP_VARIANTS.values())}


def hedge_variants() -> list[dict]:
    """hedge's options for Nam et al.'s [Nam-Hedge] Table 2 (ablation) and Fig. 7 (gamma); ``{}`` is the default."""
    return [{}] + [v for v in HEDGE_ABLATION.values() if v] + [{"gamma": g} for g in HEDGE_GAMMAS if g != 2.0]


def default_dataset(model: str) -> str:
    """``shapes`` for the shapes models, ``photos`` for the others."""
    return "shapes" if model.startswith("shapes_") else "photos"


def jobs(size: str | Size = "small",
         models: Sequence[str] = ("shapes_vgg", "shapes_resnet", "shapes_vit", "efficientnet_lite0", "nodules3d_vgg"),
         model_options: Optional[dict] = None, batch_size: int = 16, device: str = "cpu",
         datasets: Optional[dict[str, str]] = None, root: Optional[str] = None,
         methods: Optional[Sequence[str]] = None) -> list[Job]:
    """Every evaluation of the five protocols for ``models`` at ``size`` (:data:`SIZES`), each on
    ``datasets[model]`` (default :func:`default_dataset`; ``root``: its folder); ``methods``
    restricts every job to those methods (jobs left without one are dropped)."""
    sz = SIZES[size] if isinstance(size, str) else size
    out: list[Job] = []
    for job in _all_jobs(sz, models, model_options, batch_size, device, datasets, root):
        if methods is not None:
            keep = [m for m in job.config.methods if m in methods]
            if not keep:
                continue
            job = Job(job.papers, job.label, replace(job.config, methods=keep, method_options={
                k: v for k, v in job.config.method_options.items() if k in keep}))
        out.append(job)
    return out


def _transformer_jobs(sz: Size, model: str, dataset: str, base: dict) -> list[Job]:
    """The transformer section's localisation and faithfulness jobs of ``model`` on ``dataset``."""
    if sz.transformers is None or model not in sz.transformers or not dataset.startswith("shapes"):
        return []
    side = input_side(model)
    methods = [m for m in TRANSFORMER_METHODS if model in TRANSFORMER_MODELS or m not in ATTENTION_ONLY]
    limit = sz.transformers[model]
    faith = faithfulness_options(side)
    return [
        Job(("transformers",), f"{model}: transformers, localisation (boxes)", EvaluationConfig(
            dataset=TRANSFORMER_DATASETS[1], dataset_options={"dataset": dataset}, methods=methods,
            targets="labels", limit=limit, metrics=["pointing_game", "outside_inside_ratio"],
            metric_options={"pointing_game": pointing_options(side), "outside_inside_ratio": _OI}, **base)),
        Job(("transformers",), f"{model}: transformers, faithfulness (MoRF / LeRF)", EvaluationConfig(
            dataset=TRANSFORMER_DATASETS[0], dataset_options={"dataset": dataset}, methods=methods,
            targets="predicted", limit=limit, metrics=["aopc_morf", "aopc_lerf", *DIAGNOSTICS],
            metric_options={"aopc_morf": faith, "aopc_lerf": faith}, **base)),
    ]


def _volume_jobs(sz: Size, model: str, base: dict) -> list[Job]:
    """The volume section's job: localisation in the nodule's voxel mask on the positive cubes."""
    if sz.volumes is None or model not in sz.volumes:
        return []
    count = sz.volumes[model]
    return [Job(("volumes",), f"{model}: localisation in the nodule mask (volumes)", EvaluationConfig(
        dataset=VOLUME_DATASET, dataset_options={} if count is None else {"count": count},
        methods=volume_methods(), targets="labels",
        metrics=["mu", "pointing_game", "outside_inside_ratio", "positive_ratio"],
        metric_options={"pointing_game": volume_pointing_options(), "outside_inside_ratio": _OI}, **base))]


def _all_jobs(sz: Size, models: Sequence[str], model_options: Optional[dict], batch_size: int, device: str,
              datasets: Optional[dict[str, str]], root: Optional[str]) -> list[Job]:
    out: list[Job] = []
    transformer_jobs: list[Job] = []  # after the papers' jobs
    for model in models:
        dataset = (datasets or {}).get(model, default_dataset(model))
        opts = dict((model_options or {}).get(model, {}))
        base = dict(model=model, model_options=opts, batch_size=batch_size, device=device, progress=False,
                    root=root)
        transformer_jobs += _transformer_jobs(sz, model, dataset, base)
        if model in VOLUME_MODELS:
            transformer_jobs += _volume_jobs(sz, model, dict(base, root=None))
            continue
        if model in TRANSFORMER_MODELS:
            continue
        side = input_side(model)
        dataset = (datasets or {}).get(model, default_dataset(model))
        shapes = dataset.startswith("shapes")
        limit = sz.shapes.get(model) if shapes else (sz.photos if dataset == "photos" else None)
        opts = dict((model_options or {}).get(model, {}))
        base = dict(model=model, model_options=opts, batch_size=batch_size, device=device, progress=False,
                    root=root)
        # photos: labels name several ImageNet classes per photo, most without an outline -> top-1 class
        labels = "predicted" if dataset in ("photos", "imagenet-seg") else "labels"
        names, method_options = localisation_methods(model)
        out.append(Job(("000", "002", "003", "004"), f"{model}: localisation (boxes)", EvaluationConfig(
            dataset="relprop.reproduce.protocols:boxes_only", dataset_options={"dataset": dataset},
            methods=names, method_options=method_options, targets=labels, limit=limit,
            metrics=["pointing_game", "positive_ratio", "outside_inside_ratio", "mu", "mu_w",
                     "energy_pointing_game", "target_score", "object_context_occlusion", *MAP_STATISTICS],
            metric_options={"pointing_game": pointing_options(side), "outside_inside_ratio": _OI}, **base)))
        if shapes:  # hedge's ablation and gamma sweep: pointing game only, into the same run
            hv = (sz.hedge_variants or {}).get(model, limit)
            out.append(Job(("002",), f"{model}: hedge ablation and gamma", EvaluationConfig(
                dataset="relprop.reproduce.protocols:boxes_only", dataset_options={"dataset": dataset},
                methods=["hedge"], method_options={"hedge": hedge_variants()}, targets=labels,
                limit=hv if limit is None or hv is None else min(hv, limit),
                metrics=["pointing_game", "target_score"],
                metric_options={"pointing_game": pointing_options(side)}, **base)))
        out.append(Job(("000", "002"), f"{model}: segmentation (masks)", EvaluationConfig(
            dataset=dataset, methods=_methods(table_1_000(model) + M002 + M002_TABLE3), targets="predicted", limit=limit,
            metrics=["pixel_accuracy", "image_iou", "segmentation_counts", "stacked_map",
                     "normalised_outside_inside_ratio", "mu", "positive_ratio", *MAP_STATISTICS],
            metric_options={"pixel_accuracy": _SEG, "image_iou": _SEG, "segmentation_counts": _SEG}, **base)))
        if shapes and sz.perturbation is not None and sz.perturbation.get(model) is not None:
            pl = sz.perturbation[model] if limit is None else min(limit, sz.perturbation[model])
        else:
            pl = limit
        t1 = table_i_options(side)
        lerf_step = sz.photo_lerf_step if dataset == "photos" else sz.lerf_step
        out.append(Job(("000", "001"), f"{model}: perturbation (Table I, LeRF, D_K)", EvaluationConfig(
            dataset=dataset, methods=list(M001), targets="predicted", limit=pl,
            metrics=["aopc_morf", "aopc_lerf", "topk_distance", *DIAGNOSTICS],
            metric_options={"aopc_morf": [t1["pos_removal"], t1["pos_shuffle"]],
                            "aopc_lerf": [t1["neg_removal"], t1["neg_shuffle"], lerf_000_options(side, lerf_step)],
                            "topk_distance": {"ks": topk_ks(side)}}, **base)))
        pos_only = [m for m in table_i_pos_001(model) if m not in M001]
        if pos_only:  # Table I's positive removal alone, into the same run
            out.append(Job(("001",), f"{model}: perturbation (Table I, positive removal only)", EvaluationConfig(
                dataset=dataset, methods=pos_only, targets="predicted", limit=pl,
                metrics=["aopc_morf", *DIAGNOSTICS],
                metric_options={"aopc_morf": [t1["pos_removal"], t1["pos_shuffle"]]}, **base)))
        out.append(Job(("002",), f"{model}: blurred insertion", EvaluationConfig(
            dataset=dataset, methods=list(M002_INSERTION), targets="predicted", limit=pl,
            metrics=["blurred_insertion", *DIAGNOSTICS], **base)))
        for targets in (labels, "second"):
            out.append(Job(("004",), f"{model}: patch masking ({targets})", EvaluationConfig(
                dataset=dataset, methods=list(M004), targets=targets, limit=pl,
                metrics=["maximal_patch_masking", *DIAGNOSTICS],
                metric_options={"maximal_patch_masking": [{}, {"location": "random"}]}, **base)))
        rnd = sz.randomisation if shapes else sz.photo_randomisation
        rnd = rnd if limit is None else min(limit, rnd)
        if rnd == 0:
            continue
        out.append(Job(("002",), f"{model}: cascading randomisation", EvaluationConfig(
            dataset=dataset, methods=list(RANDOMISED), targets="predicted",
            limit=rnd, metrics=["cascading_randomisation"], **base)))
    return out + transformer_jobs


# -- keys the tables read -------------------------------------------------------------------------------


def key(name: str, options: Optional[dict] = None) -> str:
    """The store key of a method or metric variant."""
    return variant_key(name, dict(options or {}))


def hedge_key(options: dict) -> str:
    return key("hedge", options)
