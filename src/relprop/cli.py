"""Command line interface: ``relprop methods | explain | demo | evaluate | report``.

The library is imported inside the commands so that ``relprop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from collections.abc import Callable, Sequence
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
    """Open ``path`` as an RGB PIL image, raising :class:`CliError` on failure."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise CliError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise CliError(f"cannot read image {path}: {err}") from None


def _check_method(relprop: Any, name: str) -> None:
    """Raise ValueError unless ``name`` is a registered method."""
    available = list(relprop.methods())
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; available: {', '.join(available)}")


def _load_model(relprop: Any, name: str, weights: str | None = None) -> tuple[Any, Callable]:
    """Load ``name`` through :func:`relprop.load_model` and put it in eval mode."""
    kwargs = {} if weights is None else {"weights": weights}
    try:
        model, preprocess = relprop.load_model(name, **kwargs)
    except (OSError, TypeError) as err:
        raise CliError(f"cannot load model {name}: {err}") from None
    model.eval()
    return model, preprocess


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


def _probabilities(model: Any, x: Any) -> Any:
    """Softmax probabilities of the first image in ``x``, shape (num_classes,)."""
    import torch

    with torch.no_grad():
        logits = model(x)
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


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain one image and write its heatmap PNG."""
    import relprop
    from relprop import viz

    image = _read_image(args.image)
    _check_method(relprop, args.method)
    model, preprocess = _load_model(relprop, args.model, args.weights)
    x = _to_batch(preprocess, image)
    probs = _probabilities(model, x)
    names = _class_names(int(probs.shape[0]))
    predicted = int(probs.argmax())
    target = _resolve_target(args.target, probs)

    relevance = relprop.explain(model, x, target=target, method=args.method)
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_{args.method}.png")
    background = _display_image(preprocess, x, image) if args.overlay else None
    viz.save_heatmap(out, relevance[0], image=background)

    print(f"predicted: {_class_label(predicted, names)} (p={float(probs[predicted]):.3f})")
    print(f"explained: {_class_label(target, names)} (p={float(probs[target]):.3f}) with {args.method}")
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
    from relprop.registry import get_method

    try:
        return get_method(method).display
    except ValueError:
        return "signed"


def cmd_demo(args: argparse.Namespace) -> int:
    """Explain the bundled demo photos with every method and write a grid PNG."""
    import relprop
    from relprop import viz
    from relprop.data.photos import demo_photos

    methods = _select_methods(relprop, _parse_list(args.methods))
    photos = _select_photos(demo_photos(), _parse_list(args.photos))
    model, preprocess = _load_model(relprop, DEMO_MODEL)

    rows: list[dict] = []
    names: list[str] | None = None
    for photo in photos:
        try:
            image = photo.image()
        except OSError as err:
            raise CliError(f"cannot read demo photo {photo.name}: {err}") from None
        x = _to_batch(preprocess, image)
        probs = _probabilities(model, x)
        names = names if names is not None else _class_names(int(probs.shape[0]))
        _print_top_k(photo, probs, names)
        target = int(probs.argmax())
        label = f"{photo.name}: {names[target] if names else target} {float(probs[target]):.2f}"
        rows.append({"image": _display_image(preprocess, x, image), "label": label, "maps": {}, "x": x, "target": target})

    timings, failures = _explain_all(relprop, model, rows, methods)
    out = viz.method_grid(
        [{k: row[k] for k in ("image", "label", "maps")} for row in rows],
        Path(args.out) / "demo_grid.png",
        title=f"{DEMO_MODEL}: relevance for the top-1 class",
        columns=DEMO_COLUMNS,
        displays={m: _display(m) for m in methods},
    )
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


# ---------------------------------------------------------------------------
# parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the ``methods``, ``explain`` and ``demo`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Explain image classifiers by relevance propagation."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("methods", help="list the explanation methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("explain", help="explain one image and write a heatmap PNG")
    p.add_argument("image", help="image file to explain")
    p.add_argument("--model", required=True, help="model name, e.g. efficientnet_lite0")
    p.add_argument("--method", required=True, help="explanation method (see `relprop methods`)")
    p.add_argument("--target", type=int, default=None, help="class index to explain (default: predicted)")
    p.add_argument("--out", default=None, help="output PNG (default: <image stem>_<method>.png)")
    p.add_argument("--weights", default=None, help="weights to load into the model")
    p.add_argument("--overlay", action="store_true", help="blend the heatmap over the image")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo", help=f"explain the bundled photos with {DEMO_MODEL} and every method")
    p.add_argument("--out", default="relprop-demo", help="output directory (default: relprop-demo)")
    p.add_argument("--methods", default=None, help="comma separated methods (default: all)")
    p.add_argument("--photos", default=None, help="comma separated photo names (default: all)")
    p.set_defaults(func=cmd_demo)

    from relprop.evaluate.cli import add_parsers as add_evaluation_parsers

    add_evaluation_parsers(sub)  # evaluate, report
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
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
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
