"""Evaluation metrics for attribution maps: pure, batched torch functions.

Maps are ``(B, H, W)`` float tensors, masks ``(B, H, W)`` binary tensors; every metric returns
per-sample values with NaN where the value is undefined, and :mod:`relprop.metrics.aggregate`
averages them NaN-aware, reporting how many samples counted. :data:`METRICS` maps each metric's
name to a :class:`MetricInfo` with the function, its direction (``higher_is_better``: True, False,
or None for descriptive statistics), its source (reference key of ``docs/references.md`` and equation)
and its :class:`Wiring` (how ``relprop evaluate`` computes it); each metric is declared once, with
:func:`register` next to its function (:mod:`.registry`). See ``docs/metrics.md`` and
``docs/extending.md``.
"""

from __future__ import annotations

from . import (aggregate, distance, localisation, map_statistics, patch, perturbation, pointing, randomisation,
               registry, segmentation)
from ._common import SIGNS, apply_sign, check_maps, check_masks, check_pair, reduce_channels
from .aggregate import (Aggregate, ClassAggregate, CurveAggregate, aggregate_curves, binned_mean,
                        per_class_mean)
from .aggregate import aggregate as aggregate_values
from .distance import topk_distance
from .localisation import (box_fraction, energy_pointing_game, inside_total_ratio,
                           inside_total_summary, max_points, normalised_outside_inside_ratio,
                           outside_inside_ratio, pointing_game, pointing_hits, positive_ratio,
                           relevance_mass_accuracy, relevance_rank_accuracy, top_k_intersection,
                           weighted_inside_total_ratio)
from .map_statistics import negative_share, silent_background
from .occlusion import object_context_occlusion, target_score
from .patch import maximal_patch_masking, ranked_classes
from .pointing import PointingPairs, PointingReport, pointing_game_report, pointing_pairs
from .perturbation import (PerturbationCurves, aopc, blurred_insertion, gaussian_blur,
                           region_perturbation, rise_deletion, rise_insertion, trapezoid_auc)
from .randomisation import cascading_randomisation, spearman, ssim
from .registry import (INPUTS, METRICS, MetricInfo, Wiring, register, scalar_records, unregister,
                       vector_records)
from .segmentation import (SegmentationAccumulator, average_precision, foreground_average_precision,
                           image_iou, otsu_thresholds, percentile_thresholds, pixel_accuracy,
                           pooled_segmentation, segmentation_counts, stacked_average_precision,
                           threshold_maps)

__all__ = [
    "METRICS", "MetricInfo", "Wiring", "INPUTS", "register", "unregister", "scalar_records", "vector_records",
    "SIGNS", "Aggregate", "ClassAggregate", "CurveAggregate",
    "PerturbationCurves", "SegmentationAccumulator", "PointingPairs", "PointingReport",
    "aggregate", "aggregate_values", "aggregate_curves", "per_class_mean", "binned_mean",
    "apply_sign", "check_maps", "check_masks", "check_pair", "reduce_channels",
    "max_points", "pointing_hits", "pointing_game", "pointing_pairs", "pointing_game_report",
    "energy_pointing_game", "outside_inside_ratio",
    "normalised_outside_inside_ratio", "inside_total_ratio", "weighted_inside_total_ratio",
    "inside_total_summary", "box_fraction", "positive_ratio", "top_k_intersection",
    "relevance_rank_accuracy", "relevance_mass_accuracy", "silent_background", "negative_share",
    "threshold_maps", "otsu_thresholds", "percentile_thresholds", "pixel_accuracy", "image_iou",
    "segmentation_counts", "pooled_segmentation",
    "average_precision", "stacked_average_precision",
    "foreground_average_precision",
    "region_perturbation", "aopc", "trapezoid_auc", "blurred_insertion", "rise_deletion",
    "rise_insertion", "gaussian_blur",
    "maximal_patch_masking", "ranked_classes", "topk_distance", "object_context_occlusion", "target_score",
    "cascading_randomisation", "spearman", "ssim",
    "distance", "localisation", "map_statistics", "patch", "perturbation", "pointing", "randomisation", "registry",
    "segmentation",
]
