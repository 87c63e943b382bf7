"""Train, evaluate and cross-validate ``nodules3d_vgg`` on CPU (reached through
``python -m relprop.models.train_shapes --model nodules3d_vgg [--folds 10]``).

As for ``shapes``, everything is seeded (cubes generated from the seed, batch order and flips from a
seeded generator, torch on one thread). The RAP journal version (Nam, Choi and Lee [Nam-RAP-Journal]) reports 10-fold
cross-validation with accuracy, precision, recall, specificity and F1 (nodule = positive class);
:func:`cross_validate` does the same on the first ``train_count`` ``nodules3d`` train cubes
(contiguous folds, each balanced because labels are balanced within every index pair).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.nodules3d import Nodules3DDataset
from .nodules3d_models import NAME, NODULES_MEAN, NODULES_STD, Nodules3DVGG, weights_path
from .training import train_epochs

__all__ = ["binary_scores", "cross_validate", "fit", "predict", "run", "to_batch"]

_KEYS = ("ACC", "PRE", "REC", "SPEC", "F1")


def to_batch(vols: np.ndarray) -> Tensor:
    """(N, 1, D, H, W) raw cubes -> normalised float32 tensor."""
    return (torch.from_numpy(np.ascontiguousarray(vols)) - NODULES_MEAN) / NODULES_STD


@torch.no_grad()
def predict(model: nn.Module, vols: np.ndarray, batch_size: int = 64) -> Tensor:
    """Predicted classes (N,) of ``model`` for raw cubes."""
    model.eval()
    out = [model(to_batch(vols[i:i + batch_size])).argmax(1) for i in range(0, len(vols), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def binary_scores(pred: Tensor, truth: Tensor) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity and F1 with class 1 (nodule) positive."""
    p, t = pred.bool(), truth.bool()
    tp, tn = float((p & t).sum()), float((~p & ~t).sum())
    fp, fn = float((p & ~t).sum()), float((~p & t).sum())
    pre = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    return {"ACC": (tp + tn) / max(len(p), 1), "PRE": pre, "REC": rec,
            "SPEC": tn / (tn + fp) if tn + fp else float("nan"),
            "F1": 2 * pre * rec / (pre + rec) if pre + rec else float("nan")}


def fit(vols: np.ndarray, labels: np.ndarray, epochs: int, lr: float, batch_size: int = 32, seed: int = 0,
        weight_decay: float = 5e-4, log: bool = True) -> nn.Module:
    """Train a fresh :class:`Nodules3DVGG` with cross-entropy, AdamW, a one-cycle schedule and random
    flips along the three axes (the classes do not depend on orientation)."""
    torch.manual_seed(seed)
    model = Nodules3DVGG().train()
    t0 = time.perf_counter()

    def report(epoch: int, loss: float) -> None:
        if log:
            print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}, {time.perf_counter() - t0:.0f} s", flush=True)

    train_epochs(model, lambda idx: to_batch(vols[idx.numpy()]), torch.from_numpy(labels), F.cross_entropy,
                 epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, weight_decay=weight_decay,
                 pct_start=0.2, flip_dims=(2, 3, 4), on_epoch=report)
    return model.eval()


def cross_validate(vols: np.ndarray, labels: np.ndarray, folds: int, epochs: int, lr: float, batch_size: int = 32,
                   seed: int = 0, log: bool = True, record: Optional[Path] = None) -> dict[str, object]:
    """k-fold cross-validation over contiguous folds; per-fold scores, their mean and standard deviation.

    With ``record``, each finished fold's scores are written to that JSON file at once, and a rerun
    with the same settings and cubes takes them from there instead of training the fold again, so a
    killed run loses at most the fold it was training. A record written with other settings is refused.
    """
    bounds = np.linspace(0, len(vols), folds + 1).round().astype(int)
    settings = {"folds": folds, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "cubes": len(vols), "labels": hashlib.sha256(np.ascontiguousarray(labels)).hexdigest()[:16]}
    done = _read_record(record, settings) if record is not None else {}
    per_fold = []
    for k in range(folds):
        resumed = str(k) in done
        if resumed:
            scores = done[str(k)]
        else:
            test = np.arange(bounds[k], bounds[k + 1])
            train = np.setdiff1d(np.arange(len(vols)), test)
            model = fit(vols[train], labels[train], epochs, lr, batch_size, seed + k, log=False)
            scores = binary_scores(predict(model, vols[test]), torch.from_numpy(labels[test]))
            if record is not None:
                done[str(k)] = scores
                _write_record(record, settings, done)
        per_fold.append(scores)
        if log:
            print(f"fold {k + 1}/{folds}: " + ", ".join(f"{key} {v:.3f}" for key, v in scores.items())
                  + (f" (from {record})" if resumed else ""), flush=True)
    table = np.array([[f[key] for key in _KEYS] for f in per_fold])
    return {"folds": per_fold, "mean": dict(zip(_KEYS, np.nanmean(table, 0).tolist())),
            "std": dict(zip(_KEYS, np.nanstd(table, 0, ddof=1).tolist() if folds > 1 else [0.0] * 5))}


def _read_record(path: Path, settings: dict[str, object]) -> dict[str, dict[str, float]]:
    """The folds already finished in ``path`` (none if it does not exist yet)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        saved, folds = data["settings"], data["folds"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a cross-validation record ({err}); remove it or pass another file") from None
    if saved != settings:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise ValueError(f"{path} records a cross-validation with other settings ({', '.join(changed)} differ); "
                         "remove it or pass another file")
    return {str(k): {key: float(v) for key, v in scores.items()} for k, scores in folds.items()}


def _write_record(path: Path, settings: dict[str, object], done: dict[str, dict[str, float]]) -> None:
    """Write the finished folds atomically (a kill mid-write leaves the previous record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "folds": done}, indent=1))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """The ``train_shapes`` command for ``--model nodules3d_vgg``."""
    from .nodules3d_models import load_nodules3d_model

    count = args.train_count or 3000
    epochs = args.epochs or 8
    lr = args.lr or 3e-3
    t0 = time.perf_counter()
    if args.folds_record and not args.folds:
        raise SystemExit("--folds-record needs --folds")
    if args.folds:
        vols, labels, _ = Nodules3DDataset("train", count=count, seed=args.seed).arrays()
        print(f"generated {count} cubes in {time.perf_counter() - t0:.0f} s", flush=True)
        result = cross_validate(vols, labels, args.folds, epochs, lr, args.batch_size, args.seed,
                                record=args.folds_record)
        print(json.dumps({"model": NAME, "folds": args.folds, "cubes": count, "epochs": epochs,
                          "seconds": round(time.perf_counter() - t0), **result}, indent=1))
        return 0
    out = args.out or weights_path()
    if args.evaluate_only:
        model = load_nodules3d_model(weights=out if args.out else None)
    else:
        vols, labels, _ = Nodules3DDataset("train", count=count, seed=args.seed).arrays()
        print(f"generated {count} cubes in {time.perf_counter() - t0:.0f} s", flush=True)
        model = fit(vols, labels, epochs, lr, args.batch_size, args.seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) after {time.perf_counter() - t0:.0f} s")
    test_vols, test_labels, _ = Nodules3DDataset("test", count=args.eval_count or 1000, seed=args.seed).arrays()
    scores = binary_scores(predict(model, test_vols), torch.from_numpy(test_labels))
    print(json.dumps({"model": NAME, "test": scores}, indent=1))
    return 0
