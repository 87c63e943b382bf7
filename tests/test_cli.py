"""Tests for the ``relprop`` command line.

The first group runs the commands against a tiny stand-in model and method
registry, so that argument handling and error reporting are checked quickly.
The second group runs ``explain`` and ``demo`` end to end on the real
``efficientnet_lite0`` with one or two fast methods.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import relprop
from relprop.cli import main

# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    """A small RGB PNG."""
    path = tmp_path / "kitten.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def _tiny_model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


def _preprocess(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _gradient(model: nn.Module, x: torch.Tensor, target: int | list[int]) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    index = torch.as_tensor(target).expand(x.shape[0]).reshape(-1, 1)
    model(x).gather(1, index).sum().backward()
    return (x.grad * x).detach()


_FAKE_METHODS = {"fake-gradient": "gradient times input", "fake-broken": "always fails"}


@pytest.fixture()
def fake_api(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replace the library entry points used by the CLI with small stand-ins."""
    calls: dict = {"explain": [], "load_model": []}

    def load_model(name: str, weights: str | None = None):
        calls["load_model"].append((name, weights))
        if name == "tiny1000":
            return _tiny_model(1000), _preprocess
        if name not in ("tiny", "efficientnet_lite0"):
            raise ValueError(f"unknown model {name!r}")
        return _tiny_model(), _preprocess

    def explain(model, x, target=None, method="fake-gradient"):
        calls["explain"].append((method, target))
        if method == "fake-broken":
            raise RuntimeError("this method is broken")
        return _gradient(model, x, target)

    photos = [
        types.SimpleNamespace(name=n, description=f"a {n}", image=lambda n=n: Image.new("RGB", (30, 20), n))
        for n in ("red", "green")
    ]
    photos_module = types.ModuleType("relprop.data.photos")
    photos_module.demo_photos = lambda: photos

    monkeypatch.setattr(relprop, "methods", lambda: sorted(_FAKE_METHODS), raising=False)
    monkeypatch.setattr(relprop, "method_summary", _FAKE_METHODS.__getitem__, raising=False)
    monkeypatch.setattr(relprop, "load_model", load_model, raising=False)
    monkeypatch.setattr(relprop, "explain", explain, raising=False)
    monkeypatch.setitem(sys.modules, "relprop.data.photos", photos_module)
    return calls


# ---------------------------------------------------------------------------
# argument handling and errors (stand-in library)


def test_help_lists_subcommands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("methods", "explain", "demo"):
        assert command in out


def test_no_command_is_a_usage_error(capsys) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_methods_prints_names_and_summaries(fake_api, capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, summary in _FAKE_METHODS.items():
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert summary in line


def test_explain_missing_file_exits_2(tmp_path, capsys) -> None:
    missing = tmp_path / "no_such_image.png"
    code = main(["explain", str(missing), "--model", "tiny", "--method", "fake-gradient"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("relprop: error:")
    assert str(missing) in err
    assert "Traceback" not in err


def test_explain_corrupt_file_exits_2(tmp_path, capsys) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG this is not really an image" * 10)
    code = main(["explain", str(corrupt), "--model", "tiny", "--method", "fake-gradient"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err
    assert "Traceback" not in err


def test_explain_unknown_method_exits_2(fake_api, image_file, capsys) -> None:
    code = main(["explain", str(image_file), "--model", "tiny", "--method", "no-such-method"])
    assert code == 2
    err = capsys.readouterr().err
    assert "relprop: error:" in err and "no-such-method" in err
    assert not fake_api["explain"]


def test_explain_unknown_model_exits_2(fake_api, image_file, capsys) -> None:
    code = main(["explain", str(image_file), "--model", "nope", "--method", "fake-gradient"])
    assert code == 2
    assert "relprop: error: unknown model 'nope'" in capsys.readouterr().err


def test_explain_target_out_of_range_exits_2(fake_api, image_file, capsys) -> None:
    args = ["explain", str(image_file), "--model", "tiny", "--method", "fake-gradient", "--target", "10"]
    assert main(args) == 2
    assert "target 10" in capsys.readouterr().err


def test_explain_writes_default_output(fake_api, image_file, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(image_file), "--model", "tiny", "--method", "fake-gradient", "--raw"]) == 0
    out = capsys.readouterr().out
    expected = tmp_path / "kitten_fake-gradient.png"
    assert expected.exists()
    with Image.open(expected) as img:
        assert img.size == (16, 16)
    assert "predicted: " in out and "explained: " in out and "p=" in out
    assert fake_api["load_model"] == [("tiny", None)]


def test_explain_target_weights_and_overlay(fake_api, image_file, tmp_path, capsys) -> None:
    out_file = tmp_path / "out" / "map.png"
    args = [
        "explain", str(image_file), "--model", "tiny", "--method", "fake-gradient",
        "--target", "3", "--weights", "w.pt", "--out", str(out_file), "--overlay", "--raw",
    ]
    assert main(args) == 0
    assert out_file.exists()
    assert fake_api["explain"] == [("fake-gradient", 3)]
    assert fake_api["load_model"] == [("tiny", "w.pt")]
    assert "explained: class 3" in capsys.readouterr().out


@pytest.fixture()
def grid_shapes(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the (rows, columns) and labels of every figure grid saved."""
    from relprop.figures import Grid

    seen: list = []
    save = Grid.save

    def spy(self, path):
        seen.append((self.shape, list(self.maps), list(self.labels)))
        return save(self, path)

    monkeypatch.setattr(Grid, "save", spy)
    return seen


def test_explain_writes_figure_by_default(fake_api, image_file, tmp_path, monkeypatch, grid_shapes, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(image_file), "--model", "tiny", "--method", "fake-gradient"]) == 0
    figure = tmp_path / "kitten_fake-gradient.png"
    with Image.open(figure) as img:
        assert img.format == "PNG"
        assert img.size[0] > 3 * 100 and img.size[1] > 100  # image, map and overlay, not a bare 16 x 16 map
    (shape, methods, labels), = grid_shapes
    assert (shape, methods) == ((1, 3), ["fake-gradient"])
    target = fake_api["explain"][0][1]
    assert labels[0].startswith(f"kitten.png: class {target}, p=")
    assert "wrote kitten_fake-gradient.png" in capsys.readouterr().out


def test_explain_several_images_folder_and_methods(fake_api, image_file, tmp_path, grid_shapes, capsys) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    for name, colour in (("b.png", "red"), ("a.jpg", "blue")):
        Image.new("RGB", (30, 20), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "grid.png"
    args = ["explain", str(image_file), str(folder), "--model", "tiny", "--method", "fake-gradient,fake-gradient2",
            "--out", str(out)]
    _FAKE_METHODS["fake-gradient2"] = "another"
    try:
        assert main(args) == 0
    finally:
        del _FAKE_METHODS["fake-gradient2"]
    assert out.exists()
    (shape, methods, labels), = grid_shapes
    assert shape == (3 * 2, 3)  # one row per (image, method): image, map, overlay
    assert methods == ["fake-gradient", "fake-gradient2"]
    assert [label.split(":")[0] for label in labels] == ["kitten.png", "a.jpg", "b.png"]
    # one batched call per method, one target per image
    assert [(m, len(t)) for m, t in fake_api["explain"]] == [("fake-gradient", 3), ("fake-gradient2", 3)]


def test_explain_raw_several_maps_into_folder(fake_api, image_file, tmp_path) -> None:
    out = tmp_path / "maps"
    args = ["explain", str(image_file), str(image_file.parent), "--model", "tiny", "--method", "fake-gradient",
            "--raw", "--out", str(out)]
    assert main(args) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["kitten_fake-gradient.png"]  # the same image twice writes one file
    with Image.open(out / files[0]) as img:
        assert img.size == (16, 16)


def test_explain_target_by_class_name(fake_api, image_file, tmp_path, capsys) -> None:
    args = ["explain", str(image_file), "--model", "tiny1000", "--method", "fake-gradient", "--target", "Tabby",
            "--out", str(tmp_path / "f.png")]
    assert main(args) == 0
    assert fake_api["explain"] == [("fake-gradient", 281)]
    assert "explained: 281 tabby" in capsys.readouterr().out


@pytest.mark.parametrize(("model", "target", "message"), [
    ("tiny1000", "tabbby", "unknown class name 'tabbby' (did you mean tabby"),
    ("tiny1000", "cardigan", "names several classes (264, 474)"),
    ("tiny", "tabby", "class names are known only for 1000-class ImageNet models"),
])
def test_explain_bad_class_name_exits_2(fake_api, image_file, tmp_path, capsys, model, target, message) -> None:
    args = ["explain", str(image_file), "--model", model, "--method", "fake-gradient", "--target", target,
            "--out", str(tmp_path / "f.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("relprop: error:") and message in err
    assert not fake_api["explain"]


def test_explain_overlay_without_raw_exits_2(fake_api, image_file, capsys) -> None:
    assert main(["explain", str(image_file), "--model", "tiny", "--method", "fake-gradient", "--overlay"]) == 2
    assert "--overlay goes with --raw" in capsys.readouterr().err
    assert not fake_api["load_model"]


def test_explain_empty_folder_exits_2(fake_api, tmp_path, capsys) -> None:
    assert main(["explain", str(tmp_path), "--model", "tiny", "--method", "fake-gradient"]) == 2
    assert "holds no image files" in capsys.readouterr().err


def test_demo_reports_failing_method_and_continues(fake_api, tmp_path, capsys) -> None:
    code = main(["demo", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert (tmp_path / "demo_grid.png").exists()
    assert "fake-broken" in captured.err and "this method is broken" in captured.err
    assert "mean time per image" in captured.out
    assert str(tmp_path / "demo_grid.png") in captured.out
    for photo in ("red", "green"):
        assert f"{photo}: a {photo}" in captured.out
    methods_called = [method for method, _ in fake_api["explain"]]
    assert methods_called.count("fake-gradient") == 2  # both photos
    assert methods_called.count("fake-broken") == 1  # not retried after failing


def test_demo_selected_methods_and_photos(fake_api, tmp_path, capsys) -> None:
    args = ["demo", "--out", str(tmp_path), "--methods", "fake-gradient", "--photos", "green"]
    assert main(args) == 0
    assert fake_api["explain"] == [("fake-gradient", fake_api["explain"][0][1])]
    assert fake_api["load_model"] == [("efficientnet_lite0", None)]
    out = capsys.readouterr().out
    assert "green: a green" in out and "red: a red" not in out


@pytest.mark.parametrize("option", [["--methods", "nope"], ["--photos", "nope"]])
def test_demo_unknown_selection_exits_2(fake_api, tmp_path, capsys, option) -> None:
    assert main(["demo", "--out", str(tmp_path), *option]) == 2
    assert "relprop: error:" in capsys.readouterr().err
    assert not fake_api["explain"]


def test_display_image_undoes_normalisation() -> None:
    from relprop.cli import _display_image

    preprocess = types.SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.zeros(1, 3, 4, 6)
    x[0, 0] = 2.0  # red channel saturates at 1.0
    shown = np.asarray(_display_image(preprocess, x, image=None))
    assert shown.shape == (4, 6, 3)
    assert (shown[..., 0] == 255).all() and (shown[..., 1:] == 128).all()
    assert _display_image(_preprocess, x, image="original") == "original"


# ---------------------------------------------------------------------------
# end to end on the real library


def _real_api_missing() -> str | None:
    """Why the real library cannot be used, or None when it can."""
    for name in ("methods", "method_summary", "explain", "load_model"):
        if not callable(getattr(relprop, name, None)):
            return f"relprop.{name} is not available"
    for module, attr in (("relprop.models", "imagenet_categories"), ("relprop.data.photos", "demo_photos")):
        try:
            if not hasattr(importlib.import_module(module), attr):
                return f"{module}.{attr} is not available"
        except ImportError as err:
            return f"{module} cannot be imported: {err}"
    return None


real_api = pytest.mark.skipif(_real_api_missing() is not None, reason=str(_real_api_missing()))


def _fast_methods(count: int) -> list[str]:
    names = list(relprop.methods())
    preferred = [m for m in ("gradient", "lrp-epsilon", "lrp-0", "input-x-gradient") if m in names]
    return (preferred + [m for m in names if m not in preferred])[:count]


@real_api
def test_real_methods_lists_every_method(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in relprop.methods():
        assert any(line.startswith(name) for line in out.splitlines())


@real_api
def test_real_explain_unknown_method_exits_2(image_file, capsys) -> None:
    code = main(["explain", str(image_file), "--model", "efficientnet_lite0", "--method", "no-such-method"])
    assert code == 2
    assert "no-such-method" in capsys.readouterr().err


@real_api
def test_real_explain_efficientnet(tmp_path, capsys) -> None:
    from relprop.data.photos import demo_photos

    photo = demo_photos()[0]
    image_path = tmp_path / f"{photo.name}.png"
    photo.image().save(image_path)
    method = _fast_methods(1)[0]
    out_file = tmp_path / "map.png"
    args = ["explain", str(image_path), "--model", "efficientnet_lite0", "--method", method, "--out", str(out_file)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "predicted: " in out and "class " not in out.splitlines()[0]  # ImageNet names
    with Image.open(out_file) as img:
        assert img.format == "PNG"


@real_api
def test_real_demo_one_photo(tmp_path, capsys) -> None:
    from relprop.data.photos import demo_photos

    photo = demo_photos()[0]
    methods = _fast_methods(2)
    args = ["demo", "--out", str(tmp_path), "--methods", ",".join(methods), "--photos", photo.name]
    assert main(args) == 0
    out = capsys.readouterr().out
    grid = tmp_path / "demo_grid.png"
    with Image.open(grid) as img:
        img.load()
    assert str(grid) in out
    for method in methods:
        assert method in out


def test_real_demo_of_shapes_vit_with_every_method(tmp_path, capsys) -> None:
    """``demo --model shapes_vit`` with the default methods succeeds: every registered method explains
    it (the pattern methods with its shipped patterns), none is left out."""
    assert main(["demo", "--out", str(tmp_path), "--model", "shapes_vit", "--scenes", "1"]) == 0
    captured = capsys.readouterr()
    assert "left out" not in captured.err
    assert "FAILED" not in captured.out
    for method in relprop.methods():
        assert method in captured.out
    assert (tmp_path / "demo_grid.png").exists()


def test_real_demo_on_shapes_scenes(tmp_path, capsys) -> None:
    """``demo --model shapes_vit`` explains shapes test scenes; an attention method asked for by name on
    a CNN reports its refusal; other models are refused with the choices."""
    args = ["demo", "--out", str(tmp_path / "vit"), "--model", "shapes_vit", "--scenes", "1",
            "--methods", "attention-rollout,transformer-attribution"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "vit" / "demo_grid.png").exists()
    assert "scene0: shapes test scene 0" in out
    args = ["demo", "--out", str(tmp_path / "vgg"), "--model", "shapes_vgg", "--scenes", "1",
            "--methods", "gradient,attention-rollout"]
    assert main(args) == 1
    assert "ShapesVGG has no attention" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--model", "resnet18"]) == 2
    assert "demo --model takes efficientnet_lite0" in capsys.readouterr().err
