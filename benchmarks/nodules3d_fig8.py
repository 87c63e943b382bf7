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

import torch

import relprop
from relprop.data.nodules3d import Nodules3DDataset
from relprop.reproduce.figures import write_volume_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/nodules3d_fig8.png"))
    parser.add_argument("--count", type=int, default=6, help="cubes shown (the first test cubes)")
    parser.add_argument("--method", default="rap")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, preprocess = relprop.load_model("nodules3d_vgg")
    data = Nodules3DDataset("test", count=4 * args.count)
    path, facts = write_volume_figure(model, preprocess, data, args.out.parent, "tmp", args.count, args.method)
    for f in facts:
        if "pointing" in f:  # localisation of the nodule in 3-D (voxels), for the positive cubes shown
            print(f"test {f['cube']}: pointing game (tolerance 0) {f['pointing']:.0f}, energy pointing game at "
                  f"E=0.5 {f['energy']:.2f}, outside-inside ratio {f['outside_inside']:.3f}, "
                  f"mask fraction {f['mask_fraction']:.3f}")
    print(f"wrote {path.replace(args.out)}")


if __name__ == "__main__":
    main()
