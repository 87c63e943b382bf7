"""Fig. 8 of the RAP journal version (Nam, Choi and Lee [Nam-RAP-Journal]) on the synthetic ``nodules3d`` cubes:
for several test cubes, one axial slice of the input and of RAP's positive and negative relevance
for the predicted class, with the nodule's exact mask outlined.

    PYTHONPATH=src python benchmarks/nodules3d_fig8.py [--out docs/images/nodules3d_fig8.png]

The paper shows the centre slice of each LUNA 2016 candidate cube, which is centred on its candidate;
``nodules3d`` puts nodules anywhere in the cube, so the slice shown is the one through the nodule's
centroid (positives) or the one holding the largest |relevance| (negatives).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import relprop
from relprop.data.nodules3d import NODULE_CLASSES, Nodules3DDataset
from relprop.metrics.localisation import energy_pointing_game, outside_inside_ratio, pointing_game
from relprop.viz3d import VolumeRow, save_volume_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/nodules3d_fig8.png"))
    parser.add_argument("--count", type=int, default=6, help="cubes shown (half positive, half negative)")
    parser.add_argument("--method", default="rap")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, preprocess = relprop.load_model("nodules3d_vgg")
    data = Nodules3DDataset("test", count=4 * args.count)
    rows = []
    for i in range(args.count):
        vol, mask, label = data.render(i)
        x = preprocess(vol)
        with torch.no_grad():
            probs = torch.softmax(model(x), 1)[0]
        pred = int(probs.argmax())
        rel = relprop.explain(model, x, target=pred, method=args.method)[0, 0]
        k = (int(round(np.argwhere(mask)[:, 0].mean())) if mask.any()
             else int(rel.abs().amax((1, 2)).argmax()))
        title = f"test {i}: {NODULE_CLASSES[label]}; predicted {NODULE_CLASSES[pred]} ({float(probs[pred]):.2f})"
        rows.append(VolumeRow(vol, rel, title, slice=k, mask=mask))
        if mask.any():  # localisation of the nodule in 3-D (voxels), for the positive cubes shown
            r, m = rel[None].double(), torch.from_numpy(mask)[None]
            print(f"test {i}: pointing game (tolerance 0) {pointing_game(r, m, tolerance=0).item():.0f}, "
                  f"energy pointing game at E=0.5 {energy_pointing_game(r, m, energies=(0.5,)).item():.2f}, "
                  f"outside-inside ratio {outside_inside_ratio(r, m).item():.3f}, "
                  f"mask fraction {mask.mean():.3f}")
    print(f"wrote {save_volume_slices(args.out, rows)}")


if __name__ == "__main__":
    main()
