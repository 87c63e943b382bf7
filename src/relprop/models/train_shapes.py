"""Train and evaluate the shipped synthetic-benchmark models on CPU: ``python -m relprop.models.train_shapes --model shapes_vgg``.

``--model`` picks the model and with it the data set: ``shapes_vgg`` / ``shapes_resnet`` / ``shapes_vit`` train on
``shapes`` (below); ``nodules3d_vgg`` trains on ``nodules3d`` (:mod:`relprop.models.train_nodules3d`,
which also runs the k-fold cross-validation of Nam, Choi and Lee [Nam-RAP-Journal] with ``--folds``).

Everything is seeded: the training images are ``shapes`` train-split samples ``0..train_count-1``
(generated once into memory), the batch order and the horizontal flips come from a seeded generator,
and torch runs on one thread, so the same command on the same software gives the same weights.
The held-out figures are measured on the ``shapes`` test split (a different random stream).

Metrics (multi-label, a class is predicted when its logit is > 0):

* ``mAP``: mean over classes of the average precision of the logits (same definition as
  ``sklearn.metrics.average_precision_score``, macro average);
* ``exact``: fraction of images whose predicted label set equals the true set;
* ``single_top1``: top-1 accuracy on ``shapes-single`` test images (one object each);
* ``difficult_mAP``: mAP on the difficult subset (a small object next to a distractor).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.shapes import SHAPE_CLASSES, ShapesDataset
from ..metrics.segmentation import average_precision
from .shapes_models import SHAPES_MEAN, SHAPES_SIZE, SHAPES_STD, load_shapes_model, weights_path
from .training import train_epochs

__all__ = ["evaluate", "example_figure", "main", "mean_average_precision", "to_batch", "train"]

#: Default recipe per model: epochs, peak learning rate, optionally the AdamW weight decay (default 5e-4).
RECIPES: dict[str, dict[str, float]] = {
    "shapes_vgg": {"epochs": 14, "lr": 3e-3},
    "shapes_resnet": {"epochs": 12, "lr": 3e-3},
    "shapes_vit": {"epochs": 14, "lr": 2e-3, "weight_decay": 0.05},
    "nodules3d_vgg": {"epochs": 8, "lr": 3e-3},
}
#: Models trained on another data set, and the module that trains them (same command-line interface).
OTHER_TRAINERS: dict[str, str] = {"nodules3d_vgg": "relprop.models.train_nodules3d"}


def to_batch(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, normalised like :func:`shapes_preprocess`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Macro mAP over classes (columns) of (N, C) scores and binary targets; classes without positives are skipped."""
    ap = average_precision(scores.double().T, targets.T > 0.5)
    return float(ap[~torch.isnan(ap)].mean())


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> Tensor:
    """Logits (N, C) of ``model`` for uint8 images (N, H, W, 3)."""
    model.eval()
    out = [model(to_batch(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, len(SHAPE_CLASSES))


def evaluate(model: nn.Module, count: int = 2000, seed: int = 0, size: int = SHAPES_SIZE) -> dict[str, float]:
    """Held-out figures on the first ``count`` test images of ``shapes``, ``shapes-single`` and the difficult subset."""
    images, targets = ShapesDataset("test", size=size, count=count, seed=seed).arrays()
    logits = predict(model, images)
    y = torch.from_numpy(targets)
    single_images, single_targets = ShapesDataset("test", size=size, count=count, seed=seed, single=True).arrays()
    single_logits = predict(model, single_images)
    dif_images, dif_targets = ShapesDataset("test", size=size, count=count, seed=seed, difficult=True).arrays()
    return {
        "mAP": mean_average_precision(logits, y),
        "exact": float(((logits > 0).float() == y).all(1).float().mean()),
        "single_top1": float((single_logits.argmax(1) == torch.from_numpy(single_targets).argmax(1)).float().mean()),
        "difficult_mAP": mean_average_precision(predict(model, dif_images), torch.from_numpy(dif_targets)),
    }


def train(name: str, epochs: int, lr: float, train_count: int = 30000, batch_size: int = 64, seed: int = 0,
          weight_decay: float = 5e-4, log: bool = True, init: Path | None = None) -> nn.Module:
    """Train ``name`` on ``shapes`` train images with BCE, AdamW and a one-cycle schedule, from scratch
    or, with ``init``, from the weights in that file (a further cycle)."""
    torch.manual_seed(seed)
    model = load_shapes_model(name, weights=init if init is not None else False).train()
    model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    images, targets = ShapesDataset("train", size=SHAPES_SIZE, count=train_count, seed=seed).arrays()
    val_images, val_targets = ShapesDataset("val", size=SHAPES_SIZE, count=1000, seed=seed).arrays()
    if log:
        print(f"generated {train_count} training images in {time.perf_counter() - t0:.0f} s", flush=True)

    def report(epoch: int, loss: float) -> None:
        if log:
            val = mean_average_precision(predict(model, val_images), torch.from_numpy(val_targets))
            print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}, val mAP {val:.4f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)

    # horizontal flips: every class is mirror-symmetric as a class
    train_epochs(model, lambda idx: to_batch(images[idx.numpy()]), torch.from_numpy(targets),
                 F.binary_cross_entropy_with_logits, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 weight_decay=weight_decay, pct_start=0.15, flip_dims=(-1,), memory_format=torch.channels_last,
                 on_epoch=report)
    return model.to(memory_format=torch.contiguous_format).eval()


def example_figure(model: nn.Module, path: Path, count: int = 12, seed: int = 0, columns: int = 6) -> Path:
    """A PNG of ``count`` test scenes (half ordinary, half difficult) with every object's mask outline,
    the true labels and the model's predicted labels (logit > 0) under each scene."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    half = count // 2
    samples = [ShapesDataset("test", size=SHAPES_SIZE, count=half, seed=seed)[i] for i in range(half)]
    samples += [ShapesDataset("test", size=SHAPES_SIZE, count=count - half, seed=seed, difficult=True)[i]
                for i in range(count - half)]
    images = np.stack([np.asarray(s.image) for s in samples])
    logits = predict(model, images)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.9 * rows), squeeze=False)
    for ax, sample, row in zip(axes.flat, samples, logits):
        ax.imshow(sample.image)
        for obj in sample.objects:
            ax.contour(obj.mask, levels=[0.5], colors="yellow", linewidths=0.8)
        truth = ", ".join(SHAPE_CLASSES[c] for c in sample.labels)
        guess = ", ".join(SHAPE_CLASSES[c] for c in torch.nonzero(row > 0).flatten().tolist()) or "(none)"
        colour = "black" if set(sample.labels) == set(torch.nonzero(row > 0).flatten().tolist()) else "red"
        kind = "difficult" if "difficult" in sample.key else "test"
        ax.set_title(f"{kind} {int(sample.key[-6:])}\ntrue: {truth}\npred: {guess}", fontsize=7, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    fig.suptitle("shapes test scenes (mask outlines in yellow); predictions of the shipped model "
                 "(red: label set wrong)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relprop.models.train_shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, help="default: the model's recipe")
    parser.add_argument("--lr", type=float, help="peak learning rate; default: the model's recipe")
    parser.add_argument("--train-count", type=int, help="default: 30000 (shapes), 3000 (nodules3d)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-count", type=int, help="default: 2000 (shapes), 1000 (nodules3d)")
    parser.add_argument("--out", type=Path, help="where to write the state dict; default: the shipped weights file")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the shipped (or --out) weights")
    parser.add_argument("--init", type=Path, help="start from the weights in this file instead of a random "
                        "initialisation (a further one-cycle run)")
    parser.add_argument("--figure", type=Path, help="also write a PNG of test scenes with the model's predictions")
    parser.add_argument("--folds", type=int, default=0,
                        help="nodules3d_vgg only: k-fold cross-validation on the first --train-count cubes "
                             "instead of training the shipped weights")
    parser.add_argument("--folds-record", type=Path,
                        help="with --folds: a JSON file that keeps each finished fold's scores; a rerun with "
                             "the same settings resumes from it")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.model in OTHER_TRAINERS:
        import importlib

        return int(importlib.import_module(OTHER_TRAINERS[args.model]).run(args))
    if args.folds or args.folds_record:
        parser.error("--folds and --folds-record are for nodules3d_vgg")
    out = args.out or weights_path(args.model)
    if args.evaluate_only:
        model = load_shapes_model(args.model, weights=out if args.out else None)
    else:
        recipe = RECIPES[args.model]
        model = train(args.model, epochs=args.epochs or int(recipe["epochs"]), lr=args.lr or recipe["lr"],
                      train_count=args.train_count or 30000, batch_size=args.batch_size, seed=args.seed,
                      weight_decay=recipe.get("weight_decay", 5e-4), init=args.init)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    print(json.dumps({"model": args.model, **evaluate(model, count=args.eval_count or 2000)}, indent=1))
    if args.figure:
        print(f"wrote {example_figure(model, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
