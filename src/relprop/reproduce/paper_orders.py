"""The papers' orderings of methods, and the comparison of a reproduced ordering with them.

Each :class:`Order` is read from a paper's table or figure (cited by the keys of ``docs/references.md``): groups of
methods from best to worst (methods within a group are not ordered against each other). Only the
order is kept, not the papers' numbers. :func:`verdict` counts the pairwise orders of the paper that
the reproduced values keep and says why they may differ (``why``: data, model or method). Given the
p-values of paired tests of the pairs (:func:`relprop.metrics.aggregate.permutation_test` over the
images), a pair counts as ``agrees`` or ``reversed`` only when its difference is significant after
Holm's (1979) correction over the table's pairs, and as ``undecided`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..metrics.aggregate import holm

__all__ = ["DATA_PHOTOS", "Order", "ORDERS", "verdict", "pairs", "decide", "reversal_why", "ALPHA"]

#: family-wise significance level of a verdict's pairs (Holm over the table's pairs)
ALPHA = 0.05

#: the reasons that speak of noise: stated for undecided pairs, dropped for significant reversals
_NOISE = ", so differences of a few points are within the noise"
_PHOTO_NOISE = ", so one photo moves a mean by a tenth"
_DATA = ("data: 64 x 64 synthetic shapes with at most three objects, against thousands of ImageNet / VOC photos"
         + _NOISE)
#: the data reason for a model evaluated on the photos (replaces the shapes one)
DATA_PHOTOS = ("data: a handful of photos (one explained class each, one or two outlined objects)" + _PHOTO_NOISE
               + ", against thousands of ImageNet / VOC images")
_MODEL = "model: a small 5-convolution VGG / bottleneck ResNet (or EfficientNet-Lite0) instead of VGG-16 / ResNet-50"


@dataclass(frozen=True)
class Order:
    """``groups``: method labels from best to worst; ``source``: where in the paper; ``why``: the
    reasons a reproduction may order them differently."""

    source: str
    groups: tuple[tuple[str, ...], ...]
    why: str = ""


def _o(source: str, *groups: str | tuple[str, ...], why: str = "") -> Order:
    return Order(source, tuple((g,) if isinstance(g, str) else tuple(g) for g in groups), why)


ORDERS: dict[str, Order] = {
    "000-oi-all": _o("Nam et al. 2020 [Nam2020-RAP], Table 1, VGG-16, ALL", "rap", "lrp-alpha2beta1", "input-x-gradient",
                     "guided-backprop", "integrated-gradients",
                     why=f"{_DATA}; {_MODEL}; method: ALL counts negative relevance inside the box against "
                         "a method, and gradient-type maps are signed noise around objects (ratio near 1)"),
    "000-oi-pos": _o("Nam et al. 2020 [Nam2020-RAP], Table 1, VGG-16, POS", "rap", "pattern-attribution", "guided-backprop",
                     "lrp-alpha1beta0", "lrp-alpha2beta1", "gradient", "input-x-gradient", "integrated-gradients",
                     why=f"{_DATA}; {_MODEL}; method: RAP's uniform shift (Nam et al. 2020 [Nam2020-RAP], Eq. 8-9) spreads a small "
                         "positive floor over the background at every layer; POS counts it in full, ALL "
                         "weighs it against the negative relevance there, where RAP is best"),
    "000-pixacc": _o("Nam et al. 2020 [Nam2020-RAP], Table 1, ImageNet segmentation, pixel accuracy", "rap",
                     "pattern-attribution", "lrp-alpha1beta0", "lrp-alpha2beta1", "guided-backprop", "gradient",
                     ("integrated-gradients", "input-x-gradient"),
                     why=f"{_DATA}; {_MODEL}; method: the better of the two thresholds is compared"),
    "000-miou": _o("Nam et al. 2020 [Nam2020-RAP], Table 1, ImageNet segmentation, mIoU", "rap", "pattern-attribution",
                   "lrp-alpha1beta0", "lrp-alpha2beta1", "guided-backprop", "gradient", "integrated-gradients",
                   "input-x-gradient",
                   why=f"{_DATA}; {_MODEL}; method: per-image IoU, not accumulated over the data set"),
    "000-lerf": _o("Nam et al. 2020 [Nam2020-RAP], Fig. 7 (RAP keeps the accuracy, the others drop)", "rap",
                   ("lrp-alpha1beta0", "lrp-alpha2beta1", "gradient", "input-x-gradient", "integrated-gradients",
                    "guided-backprop"),
                   why=f"{_DATA}; {_MODEL}; method: mean accuracy over the curve is compared"),
    "001-pos": _o("Nam, Choi and Lee [Nam-RAP-Journal], Table I, positive removal at 4,000 pixels (lower accuracy = the removed "
                  "pixels mattered)", "gradient", ("lrp-preset-b", "lrp-alpha2beta1", "lrp-alpha1beta0",
                                                   "lrp-preset-a"), "pattern-attribution", "rap-journal",
                  "integrated-gradients",
                  why=f"{_DATA}; {_MODEL}; method: relprop's gradient is signed, the paper's sensitivity "
                      "analysis ranks |gradient|"),
    "001-neg": _o("Nam, Choi and Lee [Nam-RAP-Journal], Table I, negative removal at 10,000 pixels (higher accuracy = negative "
                  "relevance was irrelevant)", "rap-journal", "lrp-alpha2beta1", "input-x-gradient",
                  why=f"{_DATA}; {_MODEL}; method: scaled to 64 x 64, 10,000 pixels of 224² are a "
                      "fifth of the image, and maps with few negative pixels stop early"),
    "001-dk": _o("Nam, Choi and Lee [Nam-RAP-Journal], Fig. 7 (b) (RAP's positive pixels lie closest to its maximum)", "rap-journal",
                 ("rap", "lrp-alpha1beta0", "lrp-alpha2beta1", "gradient", "input-x-gradient",
                  "integrated-gradients", "guided-backprop", "lrp-preset-a", "lrp-preset-b"),
                 why=f"{_DATA}; {_MODEL}; method: mean over K is compared"),
    "002-pg-L-all": _o("Nam et al. [Nam-Hedge], Table 1, VOC07, VGG-16, L ALL", "hedge", "gradcam", "rsp", "agf",
                       "contrastive-eb", "guided-backprop", "excitation-backprop", "clrp", "relevance-cam",
                       why=f"{_DATA}; {_MODEL}; data: with 10 classes and objects on a plain background "
                           "almost every method points into the boxes (most above 0.95), so the order "
                           "among them is a few pairs"),
    "002-pg-L-dif": _o("Nam et al. [Nam-Hedge], Table 1, VOC07, VGG-16, L DIF", "hedge", "gradcam", "rsp", "agf",
                       "contrastive-eb", "guided-backprop", ("clrp", "excitation-backprop"), "relevance-cam",
                       why=f"{_DATA}; {_MODEL}; data: DIF uses EBP's definition (box < 1/4 of the image, >= 2 "
                           "classes), which holds for most multi-object shapes scenes, so DIF is close to ALL"),
    "002-pg-P-all": _o("Nam et al. [Nam-Hedge], Table 1, VOC07, VGG-16, P ALL", "hedge", ("rsp", "gradcam"), "agf",
                       "guided-backprop", ("excitation-backprop", "contrastive-eb"), "clrp", "relevance-cam",
                       why=f"{_DATA}; {_MODEL}; method: relprop's CLRP (Eq. 6-7, ReLU'd) keeps only the "
                           "target's evidence and is nearly perfect on predicted classes"),
    "002-ablation": _o("Nam et al. [Nam-Hedge], Table 2 (all four components best)", "C+A+U+Psi", ("C", "C+Psi", "C+A+U", "A+U+Psi"),
                       why=f"{_DATA}; {_MODEL}; method: the rows' component sets are uncertain in the paper's text"),
    "002-gamma": _o("Nam et al. [Nam-Hedge], Fig. 7 (accuracy rises as gamma falls)", "1.0", "1.25", "1.5", "1.75", "2.0",
                    why=f"{_DATA}; {_MODEL}; the paper's differences are 0.6 points, below the noise of this run"),
    "002-insertion": _o("Nam et al. [Nam-Hedge], Fig. 9 (hedge rises fastest)", "hedge",
                        ("gradcam", "guided-backprop", "excitation-backprop", "contrastive-eb", "clrp", "rsp"),
                        why=f"{_DATA}; {_MODEL}; method: mean accuracy over the curve is compared; on a "
                            "blurred 64 x 64 scene a few inserted pixels of any method restore the small "
                            "object, so the curves saturate within 5%"),
    "002-map": _o("Nam et al. [Nam-Hedge], Table 3, VGG-16, mAP", "rsp", "agf", "hedge", "relevance-cam", "clrp",
                  "contrastive-eb",
                  why=f"{_DATA}; {_MODEL}; data: the exact shape masks are much tighter than ImageNet's "
                      "object masks, which favours maps concentrated on the object (hedge, CLRP)"),
    "002-outin": _o("Nam et al. [Nam-Hedge], Table 3, VGG-16, Out/In", "hedge", "rsp", "agf", "relevance-cam", "clrp",
                    "contrastive-eb",
                    why=f"{_DATA}; {_MODEL}; method: relprop's CLRP default is Iwana et al.'s [Iwana2019-SGLRP] Eq. 6-7 with "
                        "the final ReLU (variant='paper'), which leaves the background at exactly 0"),
    "003-muw-pvoc": _o("Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Table I, PVOC (multi-label, like shapes)", "lrp-cmp (CMP:a2+b)",
                       "lrp-cmp (CMP:a1)", "lrp-cmp (CMP:a1+b)", "lrp-cmp (CMP:a2)", "lrp-z", "guided-backprop",
                       "lrp-alpha2beta1", "lrp-alpha1beta0", "uniform baseline",
                       why=f"{_DATA}; {_MODEL}: the shapes models have 5 convolutions, so LRP-z suffers "
                           "little from gradient shattering and the composites gain less (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. IV-C)"),
    "003-muw-imagenet": _o("Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Table I, ImageNet", "lrp-cmp (CMP:a2+b)", "lrp-cmp (CMP:a2)",
                           ("lrp-cmp (CMP:a1)", "lrp-cmp (CMP:a1+b)"), "lrp-alpha2beta1", "guided-backprop",
                           "lrp-alpha1beta0", "pattern-attribution", "lrp-z", "uniform baseline",
                           why=f"data: a handful of photos instead of 50,000 images; {_MODEL}"),
    "004-patch-gt": _o("Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 11 (a) at the largest patch (guided Grad-CAM, then SGLRP lowest)",
                       "guided-gradcam", "sglrp", ("clrp", "lrp-alpha1beta0"), "random",
                       why=f"{_DATA}; {_MODEL}; method: relprop's SGLRP is the paper's Eq. 9-10 (variant='paper')"),
    "004-patch-second": _o("Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 11 (b) at the largest patch", "sglrp", "clrp", "guided-gradcam",
                           ("lrp-alpha1beta0", "random"),
                           why=f"{_DATA}; {_MODEL}: the second most probable class of a multi-label shapes "
                               "image is often present in the image, unlike ImageNet's"),
    "004-energy-high": _o("Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 13 at E = 100%", "sglrp", ("guided-gradcam", "clrp", "lrp-alpha1beta0"),
                          "random", why=f"{_DATA}; {_MODEL}"),
    "004-energy-low": _o("Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 13 at E = 10%", "guided-gradcam", "sglrp", ("clrp", "lrp-alpha1beta0"),
                         "random", why=f"{_DATA}; {_MODEL}"),
    "vit-faithfulness": _o("Achtibat et al. 2024 [Achtibat2024-AttnLRP], faithfulness of ViT explanations (area between "
                           "the MoRF and LeRF perturbation curves, ViT-B-16 on ImageNet)", "attnlrp",
                           ("transformer-attribution", "attention-rollout"),
                           why="data and model: 64 x 64 synthetic shapes and a 4-block ViT with a convolutional "
                               "stem (8 x 8 tokens) instead of ImageNet and ViT-B-16, so attention spans few tokens "
                               "and few blocks"),
}


def _pairs(order: Order) -> list[tuple[str, str]]:
    return [(a, b) for i, ga in enumerate(order.groups) for gb in order.groups[i + 1:] for a in ga for b in gb]


def pairs(order: Order, ours: dict[str, float]) -> list[tuple[str, str]]:
    """The paper's pairwise orders ``(better, worse)`` whose two methods both have a value in ``ours``."""
    ok = {k for k, v in ours.items() if v is not None and not math.isnan(v)}
    return [(a, b) for a, b in _pairs(order) if a in ok and b in ok]


def decide(pairs_: list[tuple[str, str]], ours: dict[str, float], higher: bool,
           p_values: dict[tuple[str, str], float], alpha: float = ALPHA) -> dict[tuple[str, str], tuple[str, float]]:
    """Each pair ``(better, worse)`` of the paper: ``("agrees" | "reversed" | "undecided", Holm p)``.

    Holm's (1979) correction runs over all ``pairs_`` (the table's family); a pair without a p-value
    counts with p = 1. A pair is decided when its adjusted p <= ``alpha``, in the direction of the
    observed values."""
    raw = [p_values.get(pq, 1.0) for pq in pairs_]
    adjusted = holm(torch.tensor(raw, dtype=torch.float64)).tolist() if raw else []
    out = {}
    for (a, b), q in zip(pairs_, adjusted):
        diff = ours[a] - ours[b] if higher else ours[b] - ours[a]
        word = "undecided" if not q <= alpha or diff == 0 else ("agrees" if diff > 0 else "reversed")
        out[(a, b)] = (word, q)
    return out


def _word(k: int, r: int) -> str:
    if k == 0 and r == 0:
        return "undecided"
    return "agrees" if r == 0 else ("partly agrees" if k > r else "disagrees")


def verdict(order: Order, ours: dict[str, float], higher: bool, photos: bool = False,
            p_values: Optional[dict[tuple[str, str], float]] = None, alpha: float = ALPHA,
            measured: Optional[Callable[[list[tuple[str, str]]], str]] = None) -> str:
    """One markdown paragraph: does ``ours`` (label -> value) keep the paper's pairwise orders?
    ``photos``: the values come from the photos, not from shapes (changes the stated reasons).

    ``p_values``: ``(better, worse) -> p`` of a paired test of the pair over the images; with them
    each pair agrees, is reversed (significant after Holm over the table's pairs, :func:`decide`)
    or is undecided, and the verdict word follows the decided pairs only. Without them (no per-image
    values) the point estimates are compared. ``measured``: the measured reasons for the significantly
    reversed pairs (:func:`relprop.reproduce.diagnosis.reversal_reasons`); a significant reversal is
    not put down to noise, and without a measured reason the text says that none was measured."""
    if photos:
        order = Order(order.source, order.groups, order.why.replace(_DATA, DATA_PHOTOS))
    ok = {k: v for k, v in ours.items() if v is not None and not math.isnan(v)}
    pairs_ = pairs(order, ok)
    better = (lambda a, b: ok[a] > ok[b]) if higher else (lambda a, b: ok[a] < ok[b])
    held = [p for p in pairs_ if better(*p)]
    reversed_ = [p for p in pairs_ if better(p[1], p[0])]
    ranked = sorted(ok, key=lambda k: -ok[k] if higher else ok[k])
    paper = " > ".join("{" + ", ".join(g) + "}" if len(g) > 1 else g[0]
                       for g in order.groups if any(m in ok for m in g))
    if not pairs_:
        return f"**Ordering vs paper** ({order.source}): not comparable (no method in common has a value)."
    k, r, n = len(held), len(reversed_), len(pairs_)
    ties = f", {n - k - r} tied" if n - k - r else ""
    if p_values is not None:
        return _tested(order, ok, higher, pairs_, p_values, alpha, f"{k} hold, {r} reversed{ties}", ranked, paper,
                       measured)
    word = "agrees" if r == 0 and k > 0 else ("partly agrees" if k > r else "disagrees")
    text = (f"**Ordering vs paper** ({order.source}): **{word}** — {k} of {n} pairwise orders hold, "
            f"{r} reversed{ties}. Here (best first): {' > '.join(ranked)}. Paper: {paper}.")
    if r:
        broken = [f"{b} before {a}" for a, b in reversed_]
        text += f" Reversed: {', '.join(broken[:6])}{' ...' if len(broken) > 6 else ''}. Why: {order.why}."
    elif k < n:
        text += f" Why the ties: {order.why}."
    return text


def reversal_why(order: Order, measured: str) -> str:
    """The reasons given for significantly reversed pairs: the measured ones first (or the statement
    that none was measured), then the differences from the paper's setting, without the noise."""
    setting = order.why.replace(_NOISE, "").replace(_PHOTO_NOISE, "")
    head = measured if measured else "no cause specific to this table was measured"
    return f"{head}. Differences from the paper's setting: {setting}" if setting else head


def _tested(order: Order, ok: dict[str, float], higher: bool, pairs_: list[tuple[str, str]],
            p_values: dict[tuple[str, str], float], alpha: float, points: str, ranked: list[str], paper: str,
            measured: Optional[Callable[[list[tuple[str, str]]], str]] = None) -> str:
    """The verdict paragraph with each pair decided by its Holm-corrected paired test."""
    d = decide(pairs_, ok, higher, p_values, alpha)
    agree = [p for p, (w, _) in d.items() if w == "agrees"]
    rev = [p for p, (w, _) in d.items() if w == "reversed"]
    n, k, r = len(pairs_), len(agree), len(rev)
    text = (f"**Ordering vs paper** ({order.source}): **{_word(k, r)}** — of {n} pairwise orders, {k} agree, "
            f"{r} reversed, {n - k - r} undecided (paired permutation test over the images, Holm-corrected "
            f"over the {n} pairs, {alpha:.0%}; point estimates: {points}). Here (best first): "
            f"{' > '.join(ranked)}. Paper: {paper}.")
    if r:
        broken = [f"{b} before {a} (p_Holm={d[(a, b)][1]:.2g})" for a, b in rev]
        why = reversal_why(order, measured(rev) if measured is not None else "")
        text += f" Reversed: {', '.join(broken[:6])}{' ...' if len(broken) > 6 else ''}. Why: {why}."
    elif k < n:
        text += f" Why undecided: {order.why}."
    return text
