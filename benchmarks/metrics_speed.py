"""Speed of relprop.metrics.region_perturbation against Quantus RegionPerturbation, side by side.

Same settings for both: N images, L regions perturbed one at a time in MoRF order (patch grid,
"black" = image-minimum removal, logits), random maps without ties. Reports wall time of each, the
speed-up, the cost relative to the bare forward passes the experiment needs (N * (L + 1) images in
chunks of ``--ibs``), and the largest difference between the two sets of curves.

    python benchmarks/metrics_speed.py --model small --size 96
    python benchmarks/metrics_speed.py --model resnet50 --size 224 --device cuda

Prints one markdown table row per model (Quantus is skipped when it is not installed).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from torch import nn

from relprop.metrics import region_perturbation


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "small":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, 10)).eval()
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None).eval()
    raise ValueError(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def forward_only(model, x: torch.Tensor, steps: int, ibs: int) -> float:
    n = x.shape[0] * (steps + 1)
    sync(x.device)
    t0 = time.perf_counter()
    for start in range(0, n, ibs):
        idx = torch.arange(start, min(start + ibs, n), device=x.device) % x.shape[0]
        model(x[idx])
    sync(x.device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small", choices=["small", "resnet50"])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--ibs", type=int, default=128, help="internal batch size of relprop")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-quantus", action="store_true")
    a = p.parse_args()
    if (a.size // a.patch) ** 2 < a.steps:
        p.error("the image has fewer regions than --steps")

    device = torch.device(a.device)
    model = build_model(a.model).to(device)
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(a.images, 3, a.size, a.size)).astype(np.float32)
    a_np = rng.normal(size=(a.images, 1, a.size, a.size)).astype(np.float32)
    x = torch.tensor(x_np, device=device)
    maps = torch.tensor(a_np[:, 0], device=device)
    with torch.no_grad():
        y = model(x).argmax(1)

    forward_only(model, x[:2], 1, a.ibs)  # warm-up
    t_fwd = forward_only(model, x, a.steps, a.ibs)
    sync(device)
    t0 = time.perf_counter()
    curves = region_perturbation(model, x, maps, y, counts=range(a.steps + 1), patch_size=a.patch,
                                 removal="min", score="logit", internal_batch_size=a.ibs)
    sync(device)
    t_ours = time.perf_counter() - t0
    ours = curves.drop()[:, 1:].cpu().numpy()

    t_q, diff = float("nan"), float("nan")
    if not a.no_quantus:
        try:
            import quantus
        except ImportError:
            quantus = None
        if quantus is not None:
            metric = quantus.RegionPerturbation(patch_size=a.patch, order="morf", regions_evaluation=a.steps,
                                                perturb_baseline="black", normalise=False, abs=False,
                                                disable_warnings=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sync(device)
                t0 = time.perf_counter()
                ref = metric(model=model, x_batch=x_np, y_batch=y.cpu().numpy(), a_batch=a_np,
                             softmax=False, device=str(device), batch_size=a.images)
                sync(device)
                t_q = time.perf_counter() - t0
            diff = float(np.abs(np.asarray(ref) - ours).max())

    print("| model | device | images x steps | size | forward only (s) | relprop (s) | relprop / forward "
          "| Quantus (s) | speed-up | max curve diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.model} | {device.type} | {a.images} x {a.steps} | {a.size} | {t_fwd:.2f} | {t_ours:.2f} "
          f"| {t_ours / t_fwd:.2f} | {t_q:.2f} | {t_q / t_ours:.1f}x | {diff:.2e} |")


if __name__ == "__main__":
    main()
