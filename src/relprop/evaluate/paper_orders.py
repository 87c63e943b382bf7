"""The papers' orderings of methods, and the comparison of a reproduced ordering with them.

Each :class:`Order` is read from a paper's table or figure (files in ``../shared/papers``): groups of
methods from best to worst (methods within a group are not ordered against each other). Only the
order is kept, not the papers' numbers. :func:`verdict` counts the pairwise orders of the paper that
the reproduced values keep and says why they may differ (``why``: data, model or method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DATA_PHOTOS", "Order", "ORDERS", "verdict"]

_DATA = ("data: 64 x 64 synthetic shapes with at most three objects and a few dozen images, against "
         "thousands of ImageNet / VOC photos, so differences of a few points are within the noise")
#: the data reason for a model evaluated on the photos (replaces the shapes one)
DATA_PHOTOS = ("data: a handful of photos (one explained class each, one or two outlined objects), so one "
               "photo moves a mean by a tenth, against thousands of ImageNet / VOC images")
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
    "000-oi-all": _o("paper 000, Table 1, VGG-16, ALL", "rap", "lrp-alpha2beta1", "input-x-gradient",
                     "guided-backprop", "integrated-gradients",
                     why=f"{_DATA}; {_MODEL}; method: ALL counts negative relevance inside the box against "
                         "a method, and gradient-type maps are signed noise around objects (ratio near 1)"),
    "000-oi-pos": _o("paper 000, Table 1, VGG-16, POS", "rap", "guided-backprop", "lrp-alpha1beta0",
                     "lrp-alpha2beta1", "gradient", "input-x-gradient", "integrated-gradients",
                     why=f"{_DATA}; {_MODEL}; method: RAP's uniform shift (paper 000, Eq. 8-9) spreads a small "
                         "positive floor over the background at every layer; POS counts it in full, ALL "
                         "weighs it against the negative relevance there, where RAP is best"),
    "000-pixacc": _o("paper 000, Table 1, ImageNet segmentation, pixel accuracy", "rap", "lrp-alpha1beta0",
                     "lrp-alpha2beta1", "guided-backprop", "gradient", ("integrated-gradients", "input-x-gradient"),
                     why=f"{_DATA}; {_MODEL}; method: the better of the two thresholds is compared"),
    "000-miou": _o("paper 000, Table 1, ImageNet segmentation, mIoU", "rap", "lrp-alpha1beta0", "lrp-alpha2beta1",
                   "guided-backprop", "gradient", "integrated-gradients", "input-x-gradient",
                   why=f"{_DATA}; {_MODEL}; method: per-image IoU, not accumulated over the data set"),
    "000-lerf": _o("paper 000, Fig. 7 (RAP keeps the accuracy, the others drop)", "rap",
                   ("lrp-alpha1beta0", "lrp-alpha2beta1", "gradient", "input-x-gradient", "integrated-gradients",
                    "guided-backprop"),
                   why=f"{_DATA}; {_MODEL}; method: mean accuracy over the curve is compared"),
    "001-pos": _o("paper 001, Table I, positive removal at 4,000 pixels (lower accuracy = the removed "
                  "pixels mattered)", "gradient", ("lrp-preset-b", "lrp-alpha2beta1", "lrp-alpha1beta0",
                                                   "lrp-preset-a"), "rap-journal", "integrated-gradients",
                  why=f"{_DATA}; {_MODEL}; method: relprop's gradient is signed, the paper's sensitivity "
                      "analysis ranks |gradient|; with a few dozen images one image moves the accuracy by points"),
    "001-neg": _o("paper 001, Table I, negative removal at 10,000 pixels (higher accuracy = negative "
                  "relevance was irrelevant)", "rap-journal", "lrp-alpha2beta1", "input-x-gradient",
                  why=f"{_DATA}; {_MODEL}; method: scaled to 64 x 64, 10,000 pixels of 224² are a "
                      "fifth of the image, and maps with few negative pixels stop early"),
    "001-dk": _o("paper 001, Fig. 7 (b) (RAP's positive pixels lie closest to its maximum)", "rap-journal",
                 ("rap", "lrp-alpha1beta0", "lrp-alpha2beta1", "gradient", "input-x-gradient",
                  "integrated-gradients", "guided-backprop", "lrp-preset-a", "lrp-preset-b"),
                 why=f"{_DATA}; {_MODEL}; method: mean over K is compared"),
    "002-pg-L-all": _o("paper 002, Table 1, VOC07, VGG-16, L ALL", "hedge", "gradcam", "rsp", "contrastive-eb",
                       "guided-backprop", "excitation-backprop", "clrp",
                       why=f"{_DATA}; {_MODEL}; data: with 10 classes and objects on a plain background "
                           "almost every method points into the boxes (most above 0.95), so the order "
                           "among them is a few pairs"),
    "002-pg-L-dif": _o("paper 002, Table 1, VOC07, VGG-16, L DIF", "hedge", "gradcam", "rsp", "contrastive-eb",
                       "guided-backprop", ("clrp", "excitation-backprop"),
                       why=f"{_DATA}; {_MODEL}; data: DIF uses EBP's definition (box < 1/4 of the image, >= 2 "
                           "classes), which holds for most multi-object shapes scenes, so DIF is close to ALL"),
    "002-pg-P-all": _o("paper 002, Table 1, VOC07, VGG-16, P ALL", "hedge", ("rsp", "gradcam"),
                       "guided-backprop", ("excitation-backprop", "contrastive-eb"), "clrp",
                       why=f"{_DATA}; {_MODEL}; method: relprop's CLRP (Eq. 6-7, ReLU'd) keeps only the "
                           "target's evidence and is nearly perfect on predicted classes"),
    "002-ablation": _o("paper 002, Table 2 (all four components best)", "C+A+U+Psi", ("C", "C+Psi", "C+A+U", "A+U+Psi"),
                       why=f"{_DATA}; {_MODEL}; method: the rows' component sets are uncertain in the paper's text"),
    "002-gamma": _o("paper 002, Fig. 7 (accuracy rises as gamma falls)", "1.0", "1.25", "1.5", "1.75", "2.0",
                    why=f"{_DATA}; {_MODEL}; the paper's differences are 0.6 points, below the noise of this run"),
    "002-insertion": _o("paper 002, Fig. 9 (hedge rises fastest)", "hedge",
                        ("gradcam", "guided-backprop", "excitation-backprop", "contrastive-eb", "clrp", "rsp"),
                        why=f"{_DATA}; {_MODEL}; method: mean accuracy over the curve is compared; on a "
                            "blurred 64 x 64 scene a few inserted pixels of any method restore the small "
                            "object, so the curves saturate within 5%"),
    "002-map": _o("paper 002, Table 3, VGG-16, mAP", "rsp", "hedge", "clrp", "contrastive-eb",
                  why=f"{_DATA}; {_MODEL}; data: the exact shape masks are much tighter than ImageNet's "
                      "object masks, which favours maps concentrated on the object (hedge, CLRP)"),
    "002-outin": _o("paper 002, Table 3, VGG-16, Out/In", "hedge", "rsp", "clrp", "contrastive-eb",
                    why=f"{_DATA}; {_MODEL}; method: relprop's CLRP default is paper 004's Eq. 6-7 with "
                        "the final ReLU (variant='paper'), which leaves the background at exactly 0"),
    "003-muw-pvoc": _o("paper 003, Table I, PVOC (multi-label, like shapes)", "lrp-cmp (CMP:a2+b)",
                       "lrp-cmp (CMP:a1)", "lrp-cmp (CMP:a1+b)", "lrp-cmp (CMP:a2)", "lrp-z", "guided-backprop",
                       "lrp-alpha2beta1", "lrp-alpha1beta0", "uniform baseline",
                       why=f"{_DATA}; {_MODEL}: the shapes models have 5 convolutions, so LRP-z suffers "
                           "little from gradient shattering and the composites gain less (paper 003, Sec. IV-C)"),
    "003-muw-imagenet": _o("paper 003, Table I, ImageNet", "lrp-cmp (CMP:a2+b)", "lrp-cmp (CMP:a2)",
                           ("lrp-cmp (CMP:a1)", "lrp-cmp (CMP:a1+b)"), "lrp-alpha2beta1", "guided-backprop",
                           "lrp-alpha1beta0", "lrp-z", "uniform baseline",
                           why=f"data: a handful of photos instead of 50,000 images; {_MODEL}"),
    "004-patch-gt": _o("paper 004, Fig. 11 (a) at the largest patch (guided Grad-CAM, then SGLRP lowest)",
                       "guided-gradcam", "sglrp", ("clrp", "lrp-alpha1beta0"), "random",
                       why=f"{_DATA}; {_MODEL}; method: relprop's SGLRP is the paper's Eq. 9-10 (variant='paper')"),
    "004-patch-second": _o("paper 004, Fig. 11 (b) at the largest patch", "sglrp", "clrp", "guided-gradcam",
                           ("lrp-alpha1beta0", "random"),
                           why=f"{_DATA}; {_MODEL}: the second most probable class of a multi-label shapes "
                               "image is often present in the image, unlike ImageNet's"),
    "004-energy-high": _o("paper 004, Fig. 13 at E = 100%", "sglrp", ("guided-gradcam", "clrp", "lrp-alpha1beta0"),
                          "random", why=f"{_DATA}; {_MODEL}"),
    "004-energy-low": _o("paper 004, Fig. 13 at E = 10%", "guided-gradcam", "sglrp", ("clrp", "lrp-alpha1beta0"),
                         "random", why=f"{_DATA}; {_MODEL}"),
}


def _pairs(order: Order) -> list[tuple[str, str]]:
    return [(a, b) for i, ga in enumerate(order.groups) for gb in order.groups[i + 1:] for a in ga for b in gb]


def verdict(order: Order, ours: dict[str, float], higher: bool, photos: bool = False) -> str:
    """One markdown paragraph: does ``ours`` (label -> value) keep the paper's pairwise orders?
    ``photos``: the values come from the photos, not from shapes (changes the stated reasons)."""
    if photos:
        order = Order(order.source, order.groups, order.why.replace(_DATA, DATA_PHOTOS))
    ok = {k: v for k, v in ours.items() if v is not None and not math.isnan(v)}
    pairs = [(a, b) for a, b in _pairs(order) if a in ok and b in ok]
    better = (lambda a, b: ok[a] > ok[b]) if higher else (lambda a, b: ok[a] < ok[b])
    held = [p for p in pairs if better(*p)]
    reversed_ = [p for p in pairs if better(p[1], p[0])]
    ranked = sorted(ok, key=lambda k: -ok[k] if higher else ok[k])
    paper = " > ".join("{" + ", ".join(g) + "}" if len(g) > 1 else g[0]
                       for g in order.groups if any(m in ok for m in g))
    if not pairs:
        return f"**Ordering vs paper** ({order.source}): not comparable (no method in common has a value)."
    k, r, n = len(held), len(reversed_), len(pairs)
    word = "agrees" if r == 0 and k > 0 else ("partly agrees" if k > r else "disagrees")
    ties = f", {n - k - r} tied" if n - k - r else ""
    text = (f"**Ordering vs paper** ({order.source}): **{word}** — {k} of {n} pairwise orders hold, "
            f"{r} reversed{ties}. Here (best first): {' > '.join(ranked)}. Paper: {paper}.")
    if r:
        broken = [f"{b} before {a}" for a, b in reversed_]
        text += f" Reversed: {', '.join(broken[:6])}{' ...' if len(broken) > 6 else ''}. Why: {order.why}."
    elif k < n:
        text += f" Why the ties: {order.why}."
    return text
