"""Faithfulness of every registered method: does the map depend on the explained class, is it spread
over more than a handful of pixels, does it point into the explained object, and does it survive the
model-randomisation sanity check?

Models and data (all offline): efficientnet_lite0 on the annotated ``photos`` (every outlined object's
class is explained; the three photos with two objects of different classes - astronaut, camera,
grace_hopper - give the class-contrast cases), ``shapes_vgg``, ``shapes_resnet`` and ``shapes_vit`` on
``shapes`` test scenes with two or more classes (each model with the methods that explain it:
``relprop.attribution.attention_maps.applicable_methods``). Columns of the main table, per method and model:

- ``finite``: every map finite;
- ``point``: pointing game hits (maximum of the channel-summed map within 15 px of the object's mask);
- ``corr``: mean (max) Pearson correlation of the two classes' maps of the same image;
- ``wins``: class-contrast cases where the explained object's box holds more positive relevance per
  pixel than the other object's box (each box without the other, since grace_hopper's tie lies inside
  the box of the uniform);
- ``shift``: mean of (positive share in the explained object's box when explaining it) minus (the same
  share when explaining the other class) - how much positive relevance moves towards the object;
- ``top1%``: mean share of |R| held by the top 1% of pixels.

``--variants`` adds the alternatives compared in docs/methods.md (hedge's residual-sum rule, rap-journal's
batch-norm term, SmoothGrad's defaults), on efficientnet_lite0 and on random-weight resnet50 / vgg16;
``--randomisation`` adds the cascading model-randomisation check (Spearman of |R| with the original map
after randomising the top 1..6 of six evenly spaced layers).

Usage: ``PYTHONPATH=src python benchmarks/faithfulness.py [--models lite0,shapes_vgg,shapes_resnet,shapes_vit]
[--methods a,b] [--variants] [--randomisation]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

import relprop
from relprop.attribution.attention_maps import applicable_methods
from relprop.data.base import to_model_input
from relprop.metrics import pointing_game

#: efficientnet_lite0's input scaling (255 x - 127) / 128 as mean / std on [0, 1] pixels
LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3
#: the pointing game's tolerance in pixels at 224 (TorchRay: 15 px at the original resolution)
TOLERANCE = {224: 15, 64: 4}


@dataclass
class Cases:
    """A batch of (image, explained class) cases with the class's mask and box, and the contrast pairs
    (index of the case explaining A, index of the case explaining B on the same image)."""

    images: torch.Tensor
    targets: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    pairs: list[tuple[int, int]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _box_mask(box: Sequence[float], size: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    x0, y0, x1, y1 = box
    m[int(math.floor(y0)):int(math.ceil(y1)), int(math.floor(x0)):int(math.ceil(x1))] = True
    return m


def _cases(samples: Sequence[Any], size: int, mean, std) -> Cases:
    images, targets, masks, boxes, pairs, names = [], [], [], [], [], []
    for sample in samples:
        mi = to_model_input(sample, size, mean, std)
        first = len(targets)
        for label in dict.fromkeys(mi.object_labels):
            idx = [k for k, lab in enumerate(mi.object_labels) if lab == label]
            images.append(mi.image)
            targets.append(label)
            masks.append(torch.stack([mi.masks[k] for k in idx]).any(0))
            boxes.append(torch.stack([_box_mask(mi.boxes[k].tolist(), size) for k in idx]).any(0))
            names.append(f"{sample.key}:{label}")
        count = len(targets) - first
        pairs += [(first + a, first + b) for a in range(count) for b in range(count) if a != b]
    return Cases(torch.stack(images), torch.tensor(targets), torch.stack(masks), torch.stack(boxes), pairs, names)


def photo_cases(size: int = 224) -> Cases:
    """Every outlined object class of every annotated photo, for efficientnet_lite0."""
    from relprop.data.photos_dataset import PhotosDataset

    ds = PhotosDataset()
    return _cases([ds[i] for i in range(len(ds))], size, LITE0_MEAN, LITE0_STD)


def shapes_cases(count: int = 8, size: int = 64) -> Cases:
    """The first ``count`` ``shapes`` test scenes holding two or more classes."""
    from relprop.data.shapes import ShapesDataset
    from relprop.models.shapes_models import SHAPES_MEAN, SHAPES_STD

    ds = ShapesDataset(split="test", size=size)
    chosen, i = [], 0
    while len(chosen) < count:
        s = ds[i]
        if len(set(s.labels)) >= 2:
            chosen.append(s)
        i += 1
    return _cases(chosen, size, SHAPES_MEAN, SHAPES_STD)


def channel_map(r: torch.Tensor) -> torch.Tensor:
    return r.detach().double().sum(1)


def top_share(m: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """(B,) share of sum |m| held by the top ``fraction`` of pixels."""
    a = m.abs().flatten(1)
    k = max(1, int(math.ceil(fraction * a.shape[1])))
    total = a.sum(1)
    return torch.where(total > 0, a.topk(k, dim=1).values.sum(1) / total.clamp(min=1e-300), torch.ones_like(total))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    den = float((a.norm() * b.norm()))
    return float((a * b).sum()) / den if den > 0 else float("nan")


def positive_share(m: torch.Tensor, region: torch.Tensor) -> float:
    p = m.clamp(min=0)
    total = float(p.sum())
    return float(p[region].sum()) / total if total > 0 else 0.0


def win(m: torch.Tensor, own: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether the explained object's box holds more positive relevance per pixel than the other
    object's box, each without the other box where that leaves pixels (grace_hopper's tie lies inside
    the box of the uniform: the tie's box is compared with the rest of the uniform's box)."""
    p = m.clamp(min=0)
    mine, theirs = own & ~other, other & ~own
    mine = mine if mine.any() else own
    theirs = theirs if theirs.any() else other
    return float(p[mine].mean()) > float(p[theirs].mean())


@dataclass
class Row:
    finite: bool
    hits: int
    cases: int
    corr_mean: float
    corr_max: float
    wins: int
    pairs: int
    shift: float
    top1: float
    seconds: float


def measure(maps: torch.Tensor, cases: Cases, seconds: float = 0.0) -> Row:
    """The table row of ``maps`` (N, C, H, W), one per case."""
    finite = bool(torch.isfinite(maps).all())
    m = channel_map(torch.nan_to_num(maps))
    hits = pointing_game(m.float(), cases.masks, tolerance=TOLERANCE.get(m.shape[-1], 15))
    corrs = [pearson(m[a], m[b]) for a, b in cases.pairs if a < b]
    wins = sum(win(m[a], cases.boxes[a], cases.boxes[b]) for a, b in cases.pairs)
    shift = [positive_share(m[a], cases.boxes[a]) - positive_share(m[b], cases.boxes[a]) for a, b in cases.pairs]
    corrs_ok = [c for c in corrs if not math.isnan(c)]
    return Row(finite, int(torch.nan_to_num(hits, 0.0).sum()), len(cases.targets),
               float(np.mean(corrs_ok)) if corrs_ok else float("nan"), max(corrs_ok, default=float("nan")),
               int(wins), len(cases.pairs), float(np.mean(shift)) if shift else float("nan"),
               float(top_share(m).mean()), seconds)


#: options that only bound memory (the noisy / interpolated copies run in chunks of this many rows)
CHUNKED = {"integrated-gradients": {"internal_batch_size": 32}, "smoothgrad": {"internal_batch_size": 32}}


def explain(model, cases: Cases, method: str, **options) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    options = {**CHUNKED.get(method, {}), **options}
    r = relprop.explain(model, cases.images, target=cases.targets, method=method, **options)
    return r.detach(), time.perf_counter() - start


def format_row(name: str, row: Row) -> str:
    return (f"| {name} | {'yes' if row.finite else 'NO'} | {row.hits}/{row.cases} | {row.corr_mean:.2f} "
            f"({row.corr_max:.2f}) | {row.wins}/{row.pairs} | {row.shift:+.2f} | {row.top1:.3f} | {row.seconds:.1f} |")


HEADER = ("| method | finite | point | corr mean (max) | wins | shift | top1% | s |\n"
          "|---|---|---|---|---|---|---|---|")


def load(name: str):
    if name == "lite0":
        model, _ = relprop.load_model("efficientnet_lite0")
        return model, photo_cases()
    model, _ = relprop.load_model(name)
    return model, shapes_cases()


def table(model, cases: Cases, methods: Sequence[str], variants: Sequence[tuple[str, str, dict]] = ()) -> str:
    lines = [HEADER]
    for method in methods:
        maps, seconds = explain(model, cases, method)
        lines.append(format_row(method, measure(maps, cases, seconds)))
        print(lines[-1], file=sys.stderr, flush=True)
    for label, method, options in variants:
        maps, seconds = explain(model, cases, method, **options)
        lines.append(format_row(label, measure(maps, cases, seconds)))
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


#: the alternatives measured for the choices in docs/methods.md
HEDGE_VARIANTS = [("hedge add=proportional (old)", "hedge", {"add": "proportional"}),
                  ("hedge add=equal", "hedge", {"add": "equal"}),
                  ("hedge add=absolute (default)", "hedge", {"add": "absolute"})]
RAPJ_VARIANTS = [("rap-journal add=proportional bn_term=literal (old)", "rap-journal",
                  {"add": "proportional", "bn_term": "literal"}),
                 ("rap-journal add=proportional bn_term=scaled", "rap-journal", {"add": "proportional"}),
                 ("rap-journal bn_term=literal", "rap-journal", {"bn_term": "literal"}),
                 ("rap-journal bn_term=off", "rap-journal", {"bn_term": "off"}),
                 ("rap-journal add=absolute bn_term=scaled (default)", "rap-journal", {})]
SMOOTHGRAD_VARIANTS = [("smoothgrad samples=16 signed (old)", "smoothgrad", {"samples": 16, "magnitude": "signed"}),
                       ("smoothgrad samples=50 absolute (default)", "smoothgrad", {}),
                       ("smoothgrad samples=50 squared", "smoothgrad", {"magnitude": "squared"})]


def smoothgrad_seed_correlation(model, cases: Cases, count: int = 4, **options) -> float:
    """Mean correlation of the channel-summed maps of two seeds, over the first ``count`` cases."""
    few = Cases(cases.images[:count], cases.targets[:count], cases.masks[:count], cases.boxes[:count])
    a = channel_map(explain(model, few, "smoothgrad", seed=0, **options)[0])
    b = channel_map(explain(model, few, "smoothgrad", seed=1, **options)[0])
    return float(np.mean([pearson(a[i], b[i]) for i in range(len(a))]))


def random_model_concentration(arch: str, methods: Sequence[tuple[str, str, dict]], images: int = 2) -> str:
    """Top-1% share of |R| on a random-weight torchvision ``arch`` at 224 px, random images."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    lines = [f"| {arch} (random weights) | top1% |", "|---|---|"]
    for label, method, options in methods:
        r = relprop.explain(model, x, target=[1, 2][:images], method=method, **options)
        lines.append(f"| {label} | {float(top_share(channel_map(r)).mean()):.3f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


#: methods that read signal patterns estimated for the trained weights (relprop.patterns)
NEEDS_PATTERNS = ("patternnet", "pattern-attribution")


def randomisation_table(model, cases: Cases, methods: Sequence[str], images: int = 2, steps: int = 6) -> str:
    """Cascading randomisation (top down) of ``steps`` evenly spaced layers: mean Spearman of |R|."""
    from relprop.metrics import cascading_randomisation
    from relprop.metrics.randomisation import execution_order

    x, t = cases.images[:images], cases.targets[:images]
    names = execution_order(model, x)
    chosen = [names[i] for i in np.linspace(0, len(names) - 1, steps).round().astype(int)]
    lines = ["| method | " + " | ".join(f"to {n}" for n in reversed(chosen)) + " |",
             "|---|" + "---|" * steps]
    skipped = [m for m in methods if m in NEEDS_PATTERNS]
    for method in (m for m in methods if m not in NEEDS_PATTERNS):
        def fn(m, xx, tt, method=method):
            return relprop.explain(m, xx, target=tt, method=method, **CHUNKED.get(method, {})).detach().sum(1)
        res = cascading_randomisation(model, x, t, fn, layers=chosen)
        values = res.spearman_abs.nanmean(0)
        lines.append(f"| {method} | " + " | ".join(f"{float(v):.2f}" for v in values) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    if skipped:
        lines.append(f"\n{', '.join(skipped)} left out: their signal patterns are estimated for the trained weights, "
                     "and a randomised model needs its own, computed on training data")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lite0,shapes_vgg,shapes_resnet,shapes_vit")
    p.add_argument("--methods", default=None)
    p.add_argument("--variants", action="store_true")
    p.add_argument("--randomisation", action="store_true")
    p.add_argument("--rand-images", type=int, default=2, help="images in the randomisation check (default 2)")
    p.add_argument("--no-table", action="store_true", help="skip the main table (e.g. randomisation only)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        model, cases = load(name)
        print(f"\n## {name}: {len(cases.targets)} cases, {len(cases.pairs)} class-contrast cases\n")
        methods, _, reason = applicable_methods(model, args.methods.split(",") if args.methods else relprop.methods())
        if reason:
            print(f"{name} {reason}\n")
        variants = []
        if args.variants and name == "lite0":
            variants = HEDGE_VARIANTS + RAPJ_VARIANTS + SMOOTHGRAD_VARIANTS
        elif args.variants:
            variants = HEDGE_VARIANTS + RAPJ_VARIANTS
        if not args.no_table:
            print(table(model, cases, methods, variants), flush=True)
        if args.variants and name == "lite0":
            old = smoothgrad_seed_correlation(model, cases, samples=16, magnitude="signed")
            new = smoothgrad_seed_correlation(model, cases)
            print(f"\nsmoothgrad, correlation of seed 0 and seed 1 maps (first 4 cases): samples=16 signed "
                  f"{old:.2f}, samples=50 absolute {new:.2f}", flush=True)
        if args.randomisation:
            print(f"\ncascading randomisation on {name}, Spearman of |R| with the original map:\n")
            print(randomisation_table(model, cases, methods, images=args.rand_images), flush=True)
    if args.variants:
        for arch in ("resnet50", "vgg16"):
            print()
            print(random_model_concentration(arch, HEDGE_VARIANTS + [("lrp-cmp", "lrp-cmp", {})]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
