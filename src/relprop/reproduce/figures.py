"""Qualitative figures of the papers (maps, not metrics), computed from a model and a few images.

* Nam, Choi and Lee [Nam-RAP-Journal], Fig. 4: normal, inversion and final maps of ``rap-journal`` (option ``flow=``);
* Nam, Choi and Lee [Nam-RAP-Journal]: relevance at intermediate layers (``Explainer(...).explain(x, record=[...])``);
* Nam et al. [Nam-Hedge], Fig. 6: hedge's maps as the layers are re-initialised from the output down
  (:func:`relprop.metrics.cascading_randomisation` with ``return_maps=True``);
* Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 6: LRP, CLRP, SGLRP and guided Grad-CAM for each of the two classes of an image;
* Nam, Choi and Lee [Nam-RAP-Journal], Fig. 8: slices of RAP's positive and negative relevance on volumes
  (:func:`write_volume_figure`, on ``nodules3d``).

Written by the reproduction (:mod:`.run`) next to the tables; :mod:`.results` links the
files it finds (:data:`FIGURES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..api import Explainer
from ..viz import heatmap_rgb

__all__ = ["FIGURES", "VOLUME_FIGURE", "write_figures", "write_volume_figure"]

#: paper -> (file suffix, caption) of the qualitative figures
FIGURES: dict[str, list[tuple[str, str]]] = {
    "001": [("001_fig4_flows.png", "Nam, Choi and Lee [Nam-RAP-Journal], Fig. 4: rap-journal's normal, inversion and final maps"),
            ("001_layers.png", "Nam, Choi and Lee [Nam-RAP-Journal]: rap-journal relevance at intermediate layers (summed over channels)")],
    "002": [("002_fig6_maps.png", "Nam et al. [Nam-Hedge], Fig. 6: hedge maps after cascading randomisation of the layers")],
    "004": [("004_fig6_contrast.png", "Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 6: maps of each of the two classes of an image")],
}

#: (file suffix, caption) of Nam, Choi and Lee's [Nam-RAP-Journal] Fig. 8 on a volume model
VOLUME_FIGURE = ("001_fig8_volumes.png", "Nam, Choi and Lee [Nam-RAP-Journal], Fig. 8: one slice of each test cube, "
                 "RAP's positive and negative relevance for the predicted class, the nodule's voxel mask outlined")


def write_volume_figure(model: nn.Module, preprocess: Callable[[Any], Tensor], data: Any, out_dir: str | Path,
                        tag: str, count: int = 6, method: str = "rap") -> tuple[Path, list[dict]]:
    """Nam, Choi and Lee's [Nam-RAP-Journal] Fig. 8 on the first ``count`` cubes of the volume data set
    ``data`` (``render(i) -> (volume, mask, label)``): one axial slice of the input and of ``method``'s
    positive and negative relevance for the predicted class, the mask outlined. The paper shows the
    centre slice of candidate-centred cubes; here the slice goes through the nodule's centroid
    (positive cubes) or holds the largest |relevance| (negative ones). Returns the file and, per
    cube, its label, prediction, slice and (positive cubes) the 3-D localisation of the map."""
    from ..metrics.localisation import energy_pointing_game, outside_inside_ratio, pointing_game
    from ..viz3d import VolumeRow, save_volume_slices

    names = getattr(data, "class_names", None) or [str(c) for c in range(2)]
    rows, facts = [], []
    for i in range(count):
        vol, mask, label = data.render(i)
        x = preprocess(vol)
        with torch.no_grad():
            probs = torch.softmax(model(x), 1)[0]
        pred = int(probs.argmax())
        rel = Explainer(model, method).explain(x, pred)[0, 0]  # type: ignore[index]
        k = (int(round(np.argwhere(mask)[:, 0].mean())) if mask.any() else int(rel.abs().amax((1, 2)).argmax()))
        title = f"test {i}: {names[label]}; predicted {names[pred]} ({float(probs[pred]):.2f})"
        rows.append(VolumeRow(vol, rel, title, slice=k, mask=mask))
        fact: dict = {"cube": i, "label": int(label), "predicted": pred, "slice": k}
        if mask.any():
            r, m = rel[None].double(), torch.from_numpy(mask)[None]
            fact.update(pointing=float(pointing_game(r, m, tolerance=0)),
                        energy=float(energy_pointing_game(r, m, energies=(0.5,))),
                        outside_inside=float(outside_inside_ratio(r, m)), mask_fraction=float(mask.mean()))
        facts.append(fact)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return save_volume_slices(out / f"{tag}_{VOLUME_FIGURE[0]}", rows), facts


def _image(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    img = x.detach().cpu().double() * torch.tensor(std, dtype=torch.float64)[:, None, None] \
        + torch.tensor(mean, dtype=torch.float64)[:, None, None]
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _grid(path: Path, tiles: list[list[tuple[Optional[np.ndarray], str]]], title: str) -> None:
    from matplotlib.figure import Figure

    rows, cols = len(tiles), max(len(r) for r in tiles)
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows + 0.4), dpi=110)
    fig.suptitle(title, fontsize=9)
    for i, row in enumerate(tiles):
        for j, (img, label) in enumerate(row):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            ax.set_title(label, fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path)


def _map(r: Tensor, method: str | None = None) -> np.ndarray:
    """The heatmap of ``r``, shown as ``method`` is meant to be displayed (its registry ``display``)."""
    from ..attribution.registry import get_method

    m = r.detach().double().sum(0) if r.dim() == 3 else r.detach().double()
    if not bool(torch.isfinite(m).all()) or float(m.abs().max()) == 0:
        m = torch.zeros_like(m)
    return heatmap_rgb(m.cpu().numpy(), display=get_method(method).display if method else "signed")


def _layers(model: nn.Module, count: int = 3) -> list[str]:
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) <= count:
        return convs
    idx = np.linspace(0, len(convs) - 1, count + 2)[1:-1].round().astype(int)
    return [convs[i] for i in dict.fromkeys(idx.tolist())]


def write_figures(model: nn.Module, images: Tensor, labels: list[list[int]], class_names: Sequence[str],
                  mean: Sequence[float], std: Sequence[float], out_dir: str | Path, tag: str) -> list[Path]:
    """Write the figures of :data:`FIGURES` for ``model`` on ``images`` (N, C, S, S, normalised) with
    their ground-truth ``labels``; files are ``<out_dir>/<tag>_<suffix>``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        pred = model(images).argmax(1)
    name = lambda c: str(class_names[c]) if c < len(class_names) else str(c)  # noqa: E731
    written = []
    # Nam, Choi and Lee [Nam-RAP-Journal], Fig. 4: flows
    flows = {f: Explainer(model, "rap-journal", flow=f).explain(images, pred) for f in ("normal", "inversion", "final")}
    tiles = [[(_image(images[i], mean, std), f"predicted: {name(int(pred[i]))}"),
              (_map(flows["normal"][i]), "flow='normal'"), (_map(flows["inversion"][i]), "flow='inversion'"),
              (_map(flows["final"][i]), "flow='final' (sum)")] for i in range(len(images))]
    rj = Explainer(model, "rap-journal")
    path = out / f"{tag}_001_fig4_flows.png"
    _grid(path, tiles, "rap-journal: normal, inversion and final maps (red +, blue −)")
    written.append(path)
    # Nam, Choi and Lee [Nam-RAP-Journal]: intermediate layers
    layers = _layers(model)
    rel, rec = rj.explain(images, pred, record=layers)  # type: ignore[misc]
    tiles = [[(_image(images[i], mean, std), f"predicted: {name(int(pred[i]))}")]
             + [(_map(rec[n][i]), f"{n} ({tuple(rec[n].shape[-2:])[0]}²)") for n in layers]
             + [(_map(rel[i]), "input layer")] for i in range(len(images))]
    path = out / f"{tag}_001_layers.png"
    _grid(path, tiles, "rap-journal relevance at intermediate layers")
    written.append(path)
    # Nam et al. [Nam-Hedge], Fig. 6: sanity check maps of hedge
    from ..metrics import cascading_randomisation

    def explain(m: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return Explainer(m, "hedge").explain(x, t).detach().sum(1)  # type: ignore[union-attr]

    from ..metrics.randomisation import execution_order

    names = execution_order(model, images[:2])
    chosen = None
    if len(names) > 16:  # deep models: six layers from the output down, randomised cumulatively
        chosen = [names[i] for i in np.linspace(0, len(names) - 1, 6).round().astype(int)]
    res = cascading_randomisation(model, images[:2], pred[:2], explain, layers=chosen, return_maps=True)
    maps = res.maps
    assert maps is not None
    steps = list(range(0, len(res.layers), max(1, len(res.layers) // 5)))[:6]
    tiles = [[(_image(images[i], mean, std), f"predicted: {name(int(pred[i]))}"), (_map(res.original[i]), "original model")]
             + [(_map(maps[s][i]), f"to {res.layers[s]}") for s in steps] for i in range(min(2, len(images)))]
    path = out / f"{tag}_002_fig6_maps.png"
    _grid(path, tiles, "hedge after re-initialising the layers from the output down to ...")
    written.append(path)
    # Iwana et al. 2019 [Iwana2019-SGLRP], Fig. 6: two classes of one image
    two = [i for i, lab in enumerate(labels) if len(set(lab)) >= 2]
    if two:
        i = two[0]
        x = images[i:i + 1].expand(2, -1, -1, -1)
        cls = sorted(set(labels[i]))[:2]
        t = torch.tensor(cls)
        tiles = []
        for k, c in enumerate(cls):
            row: list[tuple[Optional[np.ndarray], str]] = [(_image(images[i], mean, std), f"class: {name(c)}")]
            for m in ("lrp-alpha1beta0", "clrp", "sglrp", "guided-gradcam"):
                r = Explainer(model, m).explain(x, t)
                row.append((_map(r[k], m), m))  # type: ignore[index]
            tiles.append(row)
        path = out / f"{tag}_004_fig6_contrast.png"
        _grid(path, tiles, "one image, two classes: is the map class-discriminative?")
        written.append(path)
    return written
