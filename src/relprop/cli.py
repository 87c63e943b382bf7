"""Command line interface: ``relprop methods | explain | demo | patterns | evaluate | report | reproduce``.

The library is imported inside the commands so that ``relprop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROG = "relprop"
DEMO_MODEL = "efficientnet_lite0"
#: Heatmaps per line of the demo grid (the methods wrap onto further lines).
DEMO_COLUMNS = 11
TOP_K = 5


class CliError(Exception):
    """An error reported as ``relprop: error: <message>`` with exit code 2."""


# ---------------------------------------------------------------------------
# helpers


def _read_image(path: str | Path) -> Any:
    """Open ``path`` as an 8-bit RGB PIL image with the data sets' opener, raising :class:`CliError` on failure.

    16-bit and float images are scaled, not clipped; decompression bombs and undecodable files are refused
    (:func:`relprop.data._images.open_rgb`).
    """
    from relprop.data._images import open_rgb
    from relprop.data.base import CorruptSampleError

    try:
        return open_rgb(path)
    except CorruptSampleError as err:
        raise CliError(f"cannot read image {err}") from None


def _check_output_file(out: Path) -> None:
    """Refuse an output path that is a folder or lies under a regular file, before any work is done."""
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give a file name such as {out / 'map.png'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"--out {out}: {parent} is a file, not a folder")
            break


def _check_method(relprop: Any, name: str) -> None:
    """Raise ValueError unless ``name`` is a registered method."""
    available = list(relprop.methods())
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; available: {', '.join(available)}")


def _load_model(relprop: Any, name: str, weights: str | None = None) -> tuple[Any, Callable]:
    """Load ``name`` (a :func:`relprop.load_model` name or ``package.module:factory``), in eval mode."""
    kwargs = {} if weights is None else {"weights": weights}
    try:
        if ":" in name:
            from relprop.evaluate.specs import resolve_model

            model, preprocess = resolve_model(name, kwargs)
        else:
            model, preprocess = relprop.load_model(name, **kwargs)
    except (OSError, TypeError) as err:
        raise CliError(f"cannot load model {name}: {err}") from None
    except ValueError as err:
        message = str(err)
        raise CliError(message if name in message else f"model {name}: {message}") from None
    if preprocess is None:
        raise CliError(f"model {name} returned no preprocessing; its factory must return (model, preprocess)")
    model.eval()
    return model, preprocess


def _write(out: Path, writer: Callable[[], Any]) -> Any:
    """Run ``writer`` (which writes ``out``); a failure (full disk, read-only folder) is a :class:`CliError`."""
    try:
        return writer()
    except OSError as err:
        raise CliError(f"cannot write {out}: {err.strerror or err}") from None


def _to_batch(preprocess: Callable, image: Any) -> Any:
    """Preprocess a PIL image into a batch of one."""
    x = preprocess(image)
    return x.unsqueeze(0) if x.dim() == 3 else x


def _display_image(preprocess: Callable, x: Any, image: Any) -> Any:
    """The model input as a PIL image when ``preprocess`` exposes ``mean``/``std``.

    Undoing the normalisation shows exactly the (resized, cropped) pixels the
    relevance refers to; otherwise the original ``image`` is returned.
    """
    mean, std = getattr(preprocess, "mean", None), getattr(preprocess, "std", None)
    if mean is None or std is None or x.dim() != 4 or x.shape[1] != len(mean):
        return image
    import torch
    from PIL import Image

    mean_t = torch.as_tensor(mean, dtype=x.dtype).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype).reshape(-1, 1, 1)
    pixels = (x[0].detach().cpu() * std_t + mean_t).clamp(0, 1).mul(255).round().byte()
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def _probabilities(model: Any, x: Any, name: str = "model") -> Any:
    """Softmax probabilities of the first image in ``x``, shape (num_classes,)."""
    import torch

    from relprop.evaluate.specs import check_logits

    with torch.no_grad():
        logits = check_logits(model(x), name)
    return torch.softmax(logits.reshape(logits.shape[0], -1).double(), dim=1)[0]


def _class_names(num_classes: int) -> list[str] | None:
    """ImageNet category names for 1000-way models, otherwise None."""
    if num_classes != 1000:
        return None
    from relprop.models import imagenet_categories

    return list(imagenet_categories())


def _class_label(index: int, names: list[str] | None) -> str:
    """``"281 tabby"`` with category names, ``"class 281"`` without."""
    return f"{index} {names[index]}" if names else f"class {index}"


def _resolve_target(target: int | None, probs: Any) -> int:
    """The explained class: ``target`` if given (checked), else the predicted class."""
    num_classes = int(probs.shape[0])
    if target is None:
        return int(probs.argmax())
    if not 0 <= target < num_classes:
        raise ValueError(f"target {target} out of range for a model with {num_classes} classes")
    return target


def _parse_list(text: str | None) -> list[str] | None:
    """Split a comma separated option value; None when the option was not given."""
    if text is None:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]


# ---------------------------------------------------------------------------
# commands


def cmd_methods(args: argparse.Namespace) -> int:
    """Print each registered method with its one-line summary."""
    import relprop

    names = list(relprop.methods())
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {relprop.method_summary(name)}")
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _image_paths(given: Sequence[str]) -> list[Path]:
    """The image files named in ``given``; a folder stands for its image files (sorted by name)."""
    paths: list[Path] = []
    for item in given:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CliError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def _parse_target(text: str | None, names: list[str] | None, num_classes: int) -> int | None:
    """``--target``: None, a class index, or a class name (case-insensitive) of a model with known names."""
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if names is None:
        raise ValueError(f"--target {text!r}: class names are known only for 1000-class ImageNet models; "
                         f"this model has {num_classes} classes, give a class index")
    wanted = text.lower().replace("_", " ")
    matches = [i for i, n in enumerate(names) if n.lower() == wanted]
    if len(matches) > 1:
        raise ValueError(f"--target {text!r} names several classes ({', '.join(map(str, matches))}); give the index")
    if not matches:
        close = difflib.get_close_matches(wanted, [n.lower() for n in names], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown class name {text!r}{hint}; give an ImageNet class name or a class index")
    return matches[0]


def _explain_batch(relprop: Any, model: Any, xs: list[Any], targets: list[int], method: str) -> list[Any]:
    """One map per input: one batched call when the inputs share a shape, else one call each."""
    import torch

    if len({tuple(x.shape) for x in xs}) == 1:
        target: Any = targets[0] if len(targets) == 1 else targets
        relevance = relprop.explain(model, torch.cat(xs), target=target, method=method)
        return [r.detach().cpu() for r in relevance]
    return [relprop.explain(model, x, target=t, method=method)[0].detach().cpu() for x, t in zip(xs, targets)]


def _explain_outputs(args: argparse.Namespace, images: list[Path], methods: list[str]) -> Path:
    """The output file (a figure, or one raw map), or the folder of raw maps; checked before any work."""
    single = len(images) == 1 and len(methods) == 1
    if args.raw and not single:
        out = Path(args.out) if args.out else Path(".")
        if out.exists() and not out.is_dir():
            raise CliError(f"--out {out}: several raw maps are written into a folder, and this is a file")
        return out
    default = f"{images[0].stem}_{methods[0]}.png" if single else "explanations.png"
    out = Path(args.out) if args.out else Path(default)
    _check_output_file(out)
    return out


def _explain_volume(args: argparse.Namespace, path: Path, method: str, out: Path) -> int:
    """Explain a ``.npy`` volume with a 3-D model; write one slice of input, positive and negative relevance."""
    import numpy as np

    import relprop
    from relprop.evaluate.specs import allow_plugins_from_cwd
    from relprop.viz3d import VolumeRow, save_volume_slices

    try:
        volume = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read the volume {path}: {err}") from None
    _check_method(relprop, method)
    allow_plugins_from_cwd(args.model)
    model, preprocess = _load_model(relprop, args.model, args.weights)
    try:
        x = preprocess(volume)
    except (TypeError, ValueError, AttributeError) as err:
        raise CliError(f"model {args.model} does not take the volume {path} of shape {volume.shape} "
                       f"({err}); a .npy volume needs a 3-D model such as nodules3d_vgg") from None
    if getattr(x, "dim", lambda: 0)() != 5:
        raise CliError(f"model {args.model} is not a 3-D model; a .npy volume needs one such as nodules3d_vgg")
    probs = _probabilities(model, x, args.model)
    predicted = int(probs.argmax())
    target = _resolve_target(_parse_target(args.target, None, int(probs.shape[0])), probs)
    relevance = relprop.explain(model, x, target=target, method=method)[0].sum(0)
    depth = int(relevance.shape[0])
    k = depth // 2 if args.slice is None else args.slice
    if not 0 <= k < depth:
        raise CliError(f"--slice {k} outside the volume's {depth} slices")
    title = f"class {target} (p={float(probs[target]):.3f}), {method}"
    _write(out, lambda: save_volume_slices(out, [VolumeRow(x[0, 0], relevance, title, slice=k)]))
    print(f"predicted: {predicted} (p={float(probs[predicted]):.3f})")
    print(f"explained: {target} (p={float(probs[target]):.3f}) with {method}; slice {k} of {depth}")
    print(f"wrote {out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain images with methods: write one figure (image, map, overlay per row), or bare maps with
    ``--raw``; every explanation holds to ``--memory-budget``."""
    from relprop.segments import bounded

    try:
        budget = bounded(args.memory_budget)
    except ValueError as err:
        raise CliError(f"--memory-budget: {err}") from None
    with budget:
        return _explain_images(args)


def _explain_images(args: argparse.Namespace) -> int:
    import relprop
    from relprop import viz
    from relprop.evaluate.specs import allow_plugins_from_cwd

    methods = _parse_list(args.method) or []
    if not methods:
        raise CliError("--method needs at least one method name")
    if args.overlay and not args.raw:
        raise CliError("--overlay goes with --raw; the figure always shows the overlay beside the map")
    paths = _image_paths(args.image)
    if any(p.suffix.lower() == ".npy" for p in paths):
        if len(paths) != 1 or len(methods) != 1 or args.raw:
            raise CliError("a .npy volume is explained alone: one volume, one method, no --raw")
        out = Path(args.out) if args.out else Path(f"{paths[0].stem}_{methods[0]}.png")
        _check_output_file(out)
        return _explain_volume(args, paths[0], methods[0], out)
    out = _explain_outputs(args, paths, methods)
    pictures = [_read_image(p) for p in paths]
    for method in methods:
        _check_method(relprop, method)
    allow_plugins_from_cwd(args.model)
    model, preprocess = _load_model(relprop, args.model, args.weights)
    xs = [_to_batch(preprocess, picture) for picture in pictures]
    probs = [_probabilities(model, x, args.model) for x in xs]
    names = _class_names(int(probs[0].shape[0]))
    wanted = _parse_target(args.target, names, int(probs[0].shape[0]))
    targets = [_resolve_target(wanted, p) for p in probs]
    maps = {m: _explain_batch(relprop, model, xs, targets, m) for m in methods}
    shown = [_display_image(preprocess, x, picture) for x, picture in zip(xs, pictures)]

    for path, p, target in zip(paths, probs, targets):
        predicted = int(p.argmax())
        prefix = f"{path.name}: " if len(paths) > 1 else ""
        print(f"{prefix}predicted: {_class_label(predicted, names)} (p={float(p[predicted]):.3f})")
        print(f"{prefix}explained: {_class_label(target, names)} (p={float(p[target]):.3f}) with {', '.join(methods)}")
    if args.raw:
        written, single = [], len(paths) == len(methods) == 1
        for m in methods:
            for i, path in enumerate(paths):
                file = out if single else out / f"{path.stem}_{m}.png"
                background = shown[i] if args.overlay else None
                written.append(_write(file, lambda f=file, r=maps[m][i], b=background: viz.save_heatmap(f, r, image=b)))
        print(f"wrote {written[0]}" if len(written) == 1 else f"wrote {len(written)} maps to {out}")
        return 0
    labels = [f"{path.name}: {_class_label(t, names)}, p={float(p[t]):.2f}"
              for path, p, t in zip(paths, probs, targets)]
    grid = viz.Grid(shown, maps, labels=labels, title=f"{args.model}: relevance for the explained class")
    _write(out, lambda: grid.save(out))
    print(f"wrote {out}")
    return 0


def _select_methods(relprop: Any, requested: list[str] | None) -> list[str]:
    """All registered methods, or the requested ones after checking they exist."""
    if requested is None:
        return list(relprop.methods())
    if not requested:
        raise ValueError("--methods needs at least one method name")
    for name in requested:
        _check_method(relprop, name)
    return requested


def _applicable(model: Any, methods: list[str], name: str, explicit: bool) -> list[str]:
    """``methods`` without those not defined for ``model`` (the attention methods without attention,
    the convolutional ones with it; said on stderr) when they were not asked for by name; asked for,
    they run and report their refusal."""
    from relprop.attribution.attention_maps import applicable_methods

    if explicit:
        return methods
    kept, skipped, reason = applicable_methods(model, methods)
    if skipped:
        print(f"{PROG}: {name} {reason}", file=sys.stderr)
    return kept


def _select_photos(photos: Sequence[Any], requested: list[str] | None) -> list[Any]:
    """All demo photos, or those named in ``requested`` (in that order)."""
    if requested is None:
        return list(photos)
    by_name = {p.name: p for p in photos}
    unknown = [n for n in requested if n not in by_name]
    if unknown or not requested:
        raise ValueError(
            f"unknown demo photo(s) {', '.join(unknown) or '(none given)'}; "
            f"available: {', '.join(by_name)}"
        )
    return [by_name[n] for n in requested]


def _print_top_k(photo: Any, probs: Any, names: list[str] | None) -> None:
    """Print the top-k predictions for one photo."""
    import torch

    values, indices = torch.topk(probs, min(TOP_K, int(probs.shape[0])))
    print(f"{photo.name}: {photo.description}")
    for p, i in zip(values.tolist(), indices.tolist()):
        print(f"  {p:6.3f}  {_class_label(i, names)}")


def _explain_all(
    relprop: Any, model: Any, rows: list[dict], methods: list[str]
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Fill ``row["maps"]`` for every method; return timings and failures per method."""
    from tqdm import tqdm

    timings: dict[str, list[float]] = {m: [] for m in methods}
    failures: dict[str, str] = {}
    with tqdm(total=len(methods) * len(rows), unit="map", file=sys.stderr) as bar:
        for method in methods:
            bar.set_description(method)
            for row in rows:
                if method not in failures:
                    start = time.perf_counter()
                    try:
                        relevance = relprop.explain(model, row["x"], target=row["target"], method=method)
                    except Exception as err:  # noqa: BLE001 - report and carry on
                        failures[method] = f"{type(err).__name__}: {err}"
                        tqdm.write(f"{PROG}: method {method} failed: {failures[method]}", file=sys.stderr)
                    else:
                        timings[method].append(time.perf_counter() - start)
                        row["maps"][method] = relevance[0].detach().cpu()
                bar.update(1)
    return timings, failures


def _display(method: str) -> str:
    """How ``method``'s maps are meant to be shown (its registry ``display``; "signed" if unknown)."""
    from relprop.attribution.registry import get_method

    try:
        return get_method(method).display
    except ValueError:
        return "signed"


@dataclass(frozen=True)
class _Scene:
    """A ``shapes`` test scene shown by the demo of a shapes model (as a demo photo: name, description, image)."""

    name: str
    description: str
    sample: Any

    def image(self) -> Any:
        return self.sample.image


def _shapes_scenes(count: int) -> list[_Scene]:
    """The first ``count`` scenes of the ``shapes`` test split."""
    from relprop.data.shapes import SHAPE_CLASSES, ShapesDataset

    if count < 1:
        raise CliError(f"--scenes must be at least 1, got {count}")
    data = ShapesDataset("test", count=count)
    scenes = []
    for i in range(count):
        sample = data[i]
        labels = ", ".join(SHAPE_CLASSES[c] for c in sample.labels)
        scenes.append(_Scene(f"scene{i}", f"shapes test scene {i} ({labels})", sample))
    return scenes


def cmd_demo(args: argparse.Namespace) -> int:
    """Explain the bundled demo photos (or ``shapes`` test scenes for a shapes model) with every method
    and write a grid PNG."""
    import relprop
    from relprop import viz
    from relprop.data.photos import demo_photos
    from relprop.models import SHAPES_MODELS

    _check_output_file(Path(args.out) / "demo_grid.png")
    methods = _select_methods(relprop, _parse_list(args.methods))
    shapes = args.model in SHAPES_MODELS
    if args.model != DEMO_MODEL and not shapes:
        raise CliError(f"demo --model takes {DEMO_MODEL} (the photos) or a shapes model "
                       f"({', '.join(SHAPES_MODELS)}); use `relprop explain` for other models")
    if shapes and args.photos is not None:
        raise CliError("--photos is for the photos of the default model; a shapes model shows --scenes test scenes")
    photos = _shapes_scenes(args.scenes) if shapes else _select_photos(demo_photos(), _parse_list(args.photos))
    model, preprocess = _load_model(relprop, args.model)
    methods = _applicable(model, methods, args.model, explicit=args.methods is not None)

    rows: list[dict] = []
    names: list[str] | None = None
    for photo in photos:
        try:
            image = photo.image()
        except (OSError, ValueError) as err:
            raise CliError(f"cannot read demo photo {photo.name}: {err}") from None
        x = _to_batch(preprocess, image)
        if shapes:  # multi-label: each class's sigmoid
            import torch

            from relprop.data.shapes import SHAPE_CLASSES

            with torch.no_grad():
                probs = torch.sigmoid(model(x)[0].double())
            names = list(SHAPE_CLASSES)
        else:
            probs = _probabilities(model, x)
        names = names if names is not None else _class_names(int(probs.shape[0]))
        _print_top_k(photo, probs, names)
        target = int(probs.argmax())
        label = f"{photo.name}: {names[target] if names else target} {float(probs[target]):.2f}"
        rows.append({"image": _display_image(preprocess, x, image), "label": label, "maps": {}, "x": x, "target": target})

    timings, failures = _explain_all(relprop, model, rows, methods)
    grid = Path(args.out) / "demo_grid.png"
    out = _write(grid, lambda: viz.method_grid(
        [{k: row[k] for k in ("image", "label", "maps")} for row in rows],
        grid,
        title=f"{args.model}: relevance for the top-1 class",
        columns=DEMO_COLUMNS,
        displays={m: _display(m) for m in methods},
    ))
    print(f"wrote {out}")
    _print_timings(methods, timings, failures)
    return 1 if failures else 0


def _print_timings(methods: list[str], timings: dict[str, list[float]], failures: dict[str, str]) -> None:
    """Print the mean time per image for each method (or its failure)."""
    width = max((len(m) for m in methods), default=0)
    print("mean time per image:")
    for method in methods:
        if method in failures:
            print(f"  {method:<{width}}  FAILED ({failures[method]})")
        else:
            mean = sum(timings[method]) / max(len(timings[method]), 1)
            print(f"  {method:<{width}}  {mean:8.3f} s")
    if failures:
        print(f"{PROG}: {len(failures)} method(s) failed: {', '.join(failures)}", file=sys.stderr)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _pattern_batches(dataset: Any, preprocess: Callable, spec: Any, indices: list[int], batch_size: int,
                     dtype: Any) -> Any:
    """Batches of model inputs from ``dataset``: a volume sample (``.volume``) through the model's
    preprocessing, an image resized and normalised as ``relprop evaluate`` does."""
    import torch

    from relprop.data.base import to_model_input

    for start in range(0, len(indices), batch_size):
        xs = []
        for idx in indices[start:start + batch_size]:
            sample = dataset[idx]
            volume = getattr(sample, "volume", None)
            if volume is not None:
                xs.append(preprocess(volume))
            else:
                xs.append(to_model_input(sample, spec.size, spec.mean, spec.std).image[None])
        yield torch.cat(xs).to(dtype)


def cmd_patterns(args: argparse.Namespace) -> int:
    """Compute the PatternNet / PatternAttribution patterns of a model on a data set and save them."""
    import torch

    import relprop
    from relprop.evaluate.specs import allow_plugins_from_cwd, input_spec, parse_options, resolve_dataset
    from relprop.patterns import compute_patterns

    out = Path(args.out)
    _check_output_file(out)
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    allow_plugins_from_cwd(args.data, args.model)
    options = parse_options(args.dataset_option, "--dataset-option")
    options["split"] = args.split
    if args.root is not None:
        options["root"] = args.root
    dataset = resolve_dataset(args.data, options)
    model, preprocess = _load_model(relprop, args.model, args.weights)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    model = model.to(dtype)
    spec = None
    indices = list(range(len(dataset) if args.limit is None else min(len(dataset), args.limit)))
    if not indices:
        raise CliError(f"data set {args.data} ({args.split} split) has no samples")
    if getattr(dataset[0], "volume", None) is None:
        spec = input_spec(preprocess, args.input_size, args.mean, args.std)
    batches = _pattern_batches(dataset, preprocess, spec, indices, args.batch_size, dtype)
    total = (len(indices) + args.batch_size - 1) // args.batch_size
    patterns = compute_patterns(model, batches, kind=args.kind, progress=not args.no_progress, total=total,
                                info={"model": args.model, "data": args.data, "split": args.split,
                                      "samples": len(indices), "dataset_options": {k: v for k, v in options.items()
                                                                                    if k != "root"}})
    file_dtype = {"float16": torch.float16, "float32": torch.float32, "float64": None}[args.file_dtype]
    _write(out, lambda: (out.parent.mkdir(parents=True, exist_ok=True), patterns.save(out, file_dtype)))
    print(f"wrote {out}: {args.kind} patterns of {len(patterns)} layers from {patterns.samples} samples "
          f"({out.stat().st_size / 1024:.0f} KiB)")
    return 0


# ---------------------------------------------------------------------------
# parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the ``methods``, ``explain``, ``demo``, ``patterns``, ``evaluate``,
    ``report`` and ``reproduce`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Explain image classifiers by relevance propagation."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("methods", help="list the explanation methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("explain", help="explain images and write a figure: image, map and overlay with a colour bar")
    p.add_argument("image", nargs="+", help="image files or folders of images to explain, or one .npy volume (D, H, W) for a 3-D model "
                                  "(e.g. nodules3d_vgg): its figure shows one axial slice of the input and of the "
                                  "positive and negative relevance")
    p.add_argument("--model", required=True,
                   help="model name, e.g. efficientnet_lite0, or package.module:factory (imports and runs that "
                        "code; see `relprop evaluate --help`)")
    p.add_argument("--method", required=True,
                   help="explanation method, or comma separated methods (see `relprop methods`)")
    p.add_argument("--target", default=None,
                   help="class to explain, as an index or an ImageNet class name such as 'tabby' "
                        "(default: each image's predicted class)")
    p.add_argument("--out", default=None,
                   help="output PNG (default: <image stem>_<method>.png for one image and method, else "
                        "explanations.png); with --raw and several maps, a folder (default: .)")
    p.add_argument("--weights", default=None,
                   help="torchvision weights name (read from the local torch cache, never downloaded) or a "
                        "state-dict file (read with torch.load(weights_only=True))")
    p.add_argument("--raw", action="store_true",
                   help="write the bare map (one PNG per image and method, at the model's input size) "
                        "instead of the figure")
    p.add_argument("--overlay", action="store_true", help="with --raw: blend the heatmap over the image")
    p.add_argument("--slice", type=int, default=None, help="volumes: the axial slice to show (default: the centre)")
    p.add_argument("--memory-budget", default=None,
                   help="memory for an explanation, e.g. 4GB or 512MiB: past it, activations are evaluated again "
                        "segment by segment (default: half the available memory; 'unlimited': never)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo", help=f"explain the bundled photos with {DEMO_MODEL} and every method")
    p.add_argument("--out", default="relprop-demo", help="output directory (default: relprop-demo)")
    p.add_argument("--model", default=DEMO_MODEL,
                   help=f"{DEMO_MODEL} (default) on the bundled photos, or a shapes model (shapes_vgg, "
                        "shapes_resnet, shapes_vit) on shapes test scenes")
    p.add_argument("--scenes", type=int, default=4, help="shapes models: how many test scenes (default 4)")
    p.add_argument("--methods", default=None, help="comma separated methods (default: all)")
    p.add_argument("--photos", default=None, help="comma separated photo names (default: all)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("patterns", help="compute the signal patterns of PatternNet / PatternAttribution on a data set")
    p.add_argument("model", help="model name, e.g. shapes_vgg, or package.module:factory (see `relprop evaluate --help`)")
    p.add_argument("--data", required=True,
                   help="data set name (e.g. shapes, nodules3d) or package.module:factory, as for `relprop evaluate --dataset`")
    p.add_argument("--out", required=True, help="the patterns file to write (.pt), for patterns=FILE")
    p.add_argument("--split", default="train", help="data set split (default: train)")
    p.add_argument("--root", default=None, help="folder of the data set files")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, e.g. count=5000 (repeatable; values are JSON where they parse)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (default 64)")
    p.add_argument("--kind", default="relu", choices=["relu", "linear"],
                   help="relu: two-component estimator, active samples (default; on transformers only for layers "
                        "followed by an activation, the linear estimator elsewhere); linear: all samples")
    p.add_argument("--weights", default=None, help="weights name or state-dict file, as for `relprop explain`")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="the model's precision during the pass (statistics always accumulate in float64)")
    p.add_argument("--file-dtype", default="float32", choices=["float16", "float32", "float64"],
                   help="precision of the stored patterns (default float32)")
    p.add_argument("--input-size", type=int, default=None, help="model input side (default: from the model)")
    p.add_argument("--mean", type=_floats, default=None, help="input normalisation mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_floats, default=None, help="input normalisation std")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_patterns)

    from relprop.evaluate.cli import add_parsers as add_evaluation_parsers

    add_evaluation_parsers(sub)  # evaluate, report

    from relprop.reproduce.cli import add_parsers as add_reproduce_parsers

    add_reproduce_parsers(sub)  # reproduce, and report --results
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code. As a ``torchrun`` worker (``argv`` None, more than
    one process) the process ends here, see :func:`_end_torchrun_worker`."""
    code = _run_command(argv)
    if argv is None:
        _end_torchrun_worker(code)
    return code


def _end_torchrun_worker(code: int) -> None:
    """End a ``torchrun`` worker with ``os._exit(code)`` once its command has returned (its results
    written, its process group destroyed), after flushing its output. Interpreter finalisation
    after a gloo process group can abort the process (``terminate called without an active
    exception``), and torchrun then reports a finished evaluation as failed. A no-op outside torchrun."""
    if "WORLD_SIZE" not in os.environ:  # not started by torchrun: nothing to import
        return
    from relprop.evaluate.distributed import torchrun_env

    if torchrun_env() is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_command(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and usage errors
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except (CliError, ValueError) as err:
        _print_error(str(err))
        return 2
    except ImportError as err:
        from relprop._extras import MissingDependencyError

        if not isinstance(err, MissingDependencyError):
            raise
        _print_error(str(err))
        return 2
    except OSError as err:  # a file that cannot be read or written, named by the error
        where = f"{err.filename}: " if err.filename else ""
        _print_error(f"{where}{err.strerror or err}")
        return 2


def _print_error(message: str) -> None:
    """One ``relprop: error:`` line (line breaks inside ``message`` are folded)."""
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
