"""Misuse of relprop's inputs and outputs: each case is either right or refused with one clear line.

Images of high bit depth, corrupt or hostile annotations, paths that leave the data set folder, weights
files that are not what they claim, outputs that cannot be written, unknown devices and options, and
plug-in models whose forward returns the wrong thing. The command line answers each refusal with one
``relprop: error: ...`` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import relprop
from relprop.cli import main
from relprop.data.base import CorruptSampleError
from relprop.data.registry import get_dataset

from model_state import assert_unchanged, snapshot

SRC = Path(relprop.__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- helpers

def _one_error_line(err: str) -> str:
    """The single ``relprop: error:`` line of ``err``; fails on tracebacks and multi-line errors."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("relprop: error: "), err
    return lines[0]


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tiny_model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes)).eval()


def _module_name(tmp_path: Path, stem: str) -> str:
    return f"{stem}_{re.sub(r'[^0-9a-zA-Z_]', '_', tmp_path.name)}"


def _write_module(tmp_path: Path, stem: str, body: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write ``body`` as a uniquely named module in ``tmp_path`` (importable) and return its name."""
    name = _module_name(tmp_path, stem)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


_USER_MODELS = """
    import torch
    from torch import nn
    from torchvision import transforms as T

    PREPROCESS = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])


    class TupleNet(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, classes)

        def forward(self, x):
            h = torch.relu(self.conv(x)).mean((2, 3))
            return self.fc(h), h  # logits and features: not one tensor


    def plain(classes):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, classes)).eval()


    torch.manual_seed(0)
    TUPLE = TupleNet(10).eval()
    VOC = plain(20)


    def tuple_model():
        return TUPLE, PREPROCESS


    def voc_model():
        return VOC, PREPROCESS
"""


@pytest.fixture()
def user_models(tmp_path, monkeypatch):
    """A plug-in module with a tuple-returning model and a 20-class model (for VOC)."""
    import importlib

    name = _write_module(tmp_path, "user_models", _USER_MODELS, monkeypatch)
    return importlib.import_module(name)


@pytest.fixture()
def tiny_api(monkeypatch):
    """``relprop.load_model`` answers every name with a 10-class model; records the images it preprocesses."""
    seen: list[np.ndarray] = []
    model = _tiny_model()

    def preprocess(image: Image.Image) -> torch.Tensor:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        seen.append(np.asarray(rgb).copy())
        arr = np.asarray(rgb.resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    monkeypatch.setattr(relprop, "load_model", lambda name, **kw: (model, preprocess))
    return {"seen": seen, "model": model}


@pytest.fixture()
def rgb_png(tmp_path) -> Path:
    path = tmp_path / "plain.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def _gradient16() -> np.ndarray:
    """A 16-bit grey ramp over the whole range."""
    return np.linspace(0, 65535, 32 * 40).reshape(32, 40).round().astype(np.uint16)


# --------------------------------------------------------------------------- 6: 16-bit and float images

def test_16bit_png_is_scaled_not_clipped(tmp_path):
    from relprop.data._images import open_rgb

    ramp = _gradient16()
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")  # PIL really reads it as 16 bit
    rgb = np.asarray(open_rgb(path))
    expected = np.round(ramp / 65535 * 255).astype(np.uint8)
    assert rgb.shape == (32, 40, 3)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert (rgb == 255).mean() < 0.01


def test_16bit_rgb_png_keeps_its_colours(tmp_path):
    """48-bit PNG: PIL already keeps the high byte; checked so that it stays so."""
    from relprop.data._images import open_rgb

    rgb16 = np.random.default_rng(1).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    path = tmp_path / "rgb48.png"
    raw = b"".join(b"\x00" + rgb16[r].astype(">u2").tobytes() for r in range(rgb16.shape[0]))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 6, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    np.testing.assert_array_equal(np.asarray(open_rgb(path)), (rgb16 >> 8).astype(np.uint8))


def test_32bit_integer_image_is_scaled_as_16bit(tmp_path):
    from relprop.data._images import to_rgb8

    ramp = _gradient16().astype(np.int32)
    rgb = np.asarray(to_rgb8(Image.fromarray(ramp, mode="I"), "ramp"))
    np.testing.assert_array_equal(rgb[..., 1], np.round(ramp / 65535 * 255).astype(np.uint8))
    with pytest.raises(CorruptSampleError, match=r"0\.\.65535"):
        to_rgb8(Image.fromarray(ramp * 4, mode="I"), "ramp")


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    from relprop.data._images import open_rgb

    values = np.linspace(0, 1, 32 * 40, dtype=np.float32).reshape(32, 40)
    path = tmp_path / "unit.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode == "F"
    rgb = np.asarray(open_rgb(path))
    np.testing.assert_array_equal(rgb[..., 2], np.round(values * 255).astype(np.uint8))


@pytest.mark.parametrize("values", [np.linspace(0, 1000, 12, dtype=np.float32), np.full(12, np.nan, np.float32)])
def test_float_tiff_outside_unit_range_is_refused(tmp_path, values):
    from relprop.data._images import open_rgb

    path = tmp_path / "raw.tif"
    Image.fromarray(values.reshape(3, 4)).save(path)
    with pytest.raises(CorruptSampleError, match=r"\[0, 1\]") as err:
        open_rgb(path)
    assert err.value.path == str(path)


def test_explain_gives_the_model_a_16bit_png_like_its_8bit_copy(tmp_path, tiny_api, capsys):
    ramp = _gradient16()
    png16, png8 = tmp_path / "ramp16.png", tmp_path / "ramp8.png"
    Image.fromarray(ramp).save(png16)
    Image.fromarray(np.round(ramp / 65535 * 255).astype(np.uint8)).save(png8)
    for path in (png16, png8):
        code, _, err = _run_cli(["explain", path, "--model", "tiny", "--method", "gradient",
                                 "--out", tmp_path / f"{path.stem}_map.png"], capsys)
        assert code == 0, err
    sixteen, eight = tiny_api["seen"]
    np.testing.assert_array_equal(sixteen, eight)


def test_explain_refuses_float_tiff_outside_unit_range(tmp_path, tiny_api, capsys):
    path = tmp_path / "raw.tif"
    Image.fromarray(np.linspace(0, 500, 64, dtype=np.float32).reshape(8, 8)).save(path)
    code, _, err = _run_cli(["explain", path, "--model", "tiny", "--method", "gradient", "--out",
                             tmp_path / "map.png"], capsys)
    assert code == 2 and str(path) in _one_error_line(err) and "[0, 1]" in err


def test_preprocess_of_load_model_scales_16bit_images(tmp_path):
    _, preprocess = relprop.load_model("shapes_vgg")
    ramp = _gradient16()
    as8 = Image.fromarray(np.round(ramp / 65535 * 255).astype(np.uint8)).convert("RGB")
    torch.testing.assert_close(preprocess(Image.fromarray(ramp)), preprocess(as8), rtol=0, atol=0)


def test_photo_image_uses_the_shared_opener(tmp_path, monkeypatch):
    from relprop.data import photos

    path = tmp_path / "ramp16.png"
    Image.fromarray(_gradient16()).save(path)
    photo = photos.Photo("ramp", path, "a 16-bit ramp")
    assert (np.asarray(photo.image()) == 255).mean() < 0.01


# ------------------------------------------------------------------------ 14: decompression bomb

def _bomb_png(path: Path, side: int = 40_000) -> None:
    """A PNG whose header claims side x side pixels (PIL refuses it when opening, before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_explain_refuses_decompression_bomb(tmp_path, tiny_api, capsys):
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb)
    code, _, err = _run_cli(["explain", bomb, "--model", "tiny", "--method", "gradient", "--out",
                             tmp_path / "map.png"], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(bomb) in line and "decompression bomb" in line.lower()
    assert not tiny_api["seen"]


# ------------------------------------------------------------------------ 10: non-finite VOC numbers

def _voc_xml(filename: str, width: object, height: object, box: tuple) -> str:
    x0, y0, x1, y1 = box
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size><object><name>dog</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>")


def _make_voc(root: Path, ids: list[str], bad: dict[str, tuple] | None = None) -> Path:
    """VOC 2007 test split with 12x10 images; ``bad`` maps an id to (width, height, box) written as is."""
    d = root / "VOCdevkit" / "VOC2007"
    (d / "Annotations").mkdir(parents=True)
    (d / "JPEGImages").mkdir()
    (d / "ImageSets" / "Main").mkdir(parents=True)
    for i, key in enumerate(ids):
        if "/" in key:
            continue
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(d / "JPEGImages" / f"{key}.jpg")
        w, h, box = (bad or {}).get(key, (12, 10, (2, 3, 8, 9)))
        (d / "Annotations" / f"{key}.xml").write_text(_voc_xml(f"{key}.jpg", w, h, box))
    (d / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{k}\n" for k in ids))
    return d


@pytest.mark.parametrize("bad", [(12, 10, ("nan", 3, 8, 9)), (12, 10, (2, 3, "inf", 9)), ("inf", 10, (2, 3, 8, 9)),
                                 (12, 10, (2, "-inf", 8, 9))])
def test_voc_non_finite_number_is_a_corrupt_sample(tmp_path, bad):
    d = _make_voc(tmp_path, ["000001", "000002"], {"000001": bad})
    ds = get_dataset("voc2007", root=tmp_path)
    with pytest.raises(CorruptSampleError, match="finite") as err:
        ds[0]
    assert err.value.path == str(d / "Annotations" / "000001.xml")
    assert ds[1].labels == [11]


def test_evaluate_records_a_nan_box_and_goes_on(tmp_path, user_models, capsys):
    _make_voc(tmp_path, ["000001", "000002"], {"000001": (12, 10, ("nan", 3, 8, 9))})
    before = snapshot(user_models.VOC)
    store = tmp_path / "voc.sqlite"
    code, out, err = _run_cli(["evaluate", "--dataset", "voc2007", "--root", tmp_path, "--model",
                               f"{user_models.__name__}:voc_model", "--methods", "gradient", "--metrics",
                               "pointing_game", "--store", store, "--no-progress"], capsys)
    assert code == 0, err
    assert "unreadable sample 0 " in err and "not a finite number: 'nan'" in err and "000001.xml" in err
    assert "2 of 2 pending samples processed" in out
    assert_unchanged(user_models.VOC, before)


# ------------------------------------------------------------------------ 16: deeply nested COCO JSON

def _make_coco(root: Path, file_names: list[str]) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images = []
    for i, name in enumerate(file_names, start=1):
        if "/" not in name:
            Image.new("RGB", (6, 5), (i, 2 * i, 3 * i)).save(root / "val2014" / name)
        images.append({"id": i, "file_name": name, "height": 5, "width": 6})
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    path = root / "annotations" / "instances_val2014.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_json_nested_too_deep_is_a_value_error(tmp_path):
    path = _make_coco(tmp_path, ["a.jpg"])
    path.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="instances_val2014.json") as err:
        get_dataset("coco2014", root=tmp_path)
    assert not isinstance(err.value, RecursionError)
    assert "nested" in str(err.value)


# ------------------------------------------------------------------------ 18: paths confined to the root

def test_voc_split_list_cannot_leave_the_data_set(tmp_path):
    root = tmp_path / "data"
    d = _make_voc(root, ["000001", "../../../../secret/leak", str(tmp_path / "secret" / "leak")])
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("RGB", (12, 10)).save(secret / "leak.jpg")
    (secret / "leak.xml").write_text(_voc_xml("leak.jpg", 12, 10, (2, 3, 8, 9)))
    assert (d / "Annotations" / "../../../../secret/leak.xml").resolve() == (secret / "leak.xml").resolve()
    ds = get_dataset("voc2007", root=root)
    assert ds[0].labels == [11]
    for index in (1, 2):
        with pytest.raises(CorruptSampleError, match="outside the data set folder") as err:
            ds[index]
        assert "ImageSets/Main/test.txt" in err.value.path


def test_coco_file_name_cannot_leave_the_image_folder(tmp_path):
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (6, 5)).save(outside)
    root = tmp_path / "coco"
    ann = _make_coco(root, ["ok.jpg", "../../outside.jpg", str(outside)])
    ds = get_dataset("coco2014", root=root)
    assert ds[0].key == "ok"
    for index in (1, 2):
        with pytest.raises(CorruptSampleError, match="outside the data set folder") as err:
            ds[index]
        assert err.value.path == str(ann)


def test_voc_data_in_symlinked_folders_still_loads(tmp_path):
    """Confinement is lexical: a data set whose image folder is a symlink elsewhere keeps working."""
    d = _make_voc(tmp_path / "data", ["000001"])
    elsewhere = tmp_path / "disk2" / "JPEGImages"
    elsewhere.parent.mkdir()
    (d / "JPEGImages").rename(elsewhere)
    (d / "JPEGImages").symlink_to(elsewhere, target_is_directory=True)
    assert get_dataset("voc2007", root=tmp_path / "data")[0].labels == [11]


# ------------------------------------------------------------------------ 12: weights files and names

def _garbage(path: Path) -> None:
    path.write_bytes(b"certainly not a checkpoint \x00\x01" * 20)


def _pickle(path: Path) -> None:
    """A pickle of a whole object, as ``torch.save(model)`` writes: loading it would run code."""
    import argparse

    torch.save({"conv.weight": argparse.Namespace(evil=True)}, path)


def _raw_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"conv.weight": [1.0, 2.0]}, protocol=5))


def _other_architecture(path: Path) -> None:
    model, _ = relprop.load_model("shapes_resnet")
    torch.save(model.state_dict(), path)


@pytest.mark.parametrize("model", ["shapes_vgg", "efficientnet_lite0"])
@pytest.mark.parametrize("write", [_garbage, _pickle, _raw_pickle, _other_architecture])
def test_explain_refuses_weights_that_do_not_fit(tmp_path, rgb_png, capsys, model, write):
    weights = tmp_path / "weights.pt"
    write(weights)
    code, _, err = _run_cli(["explain", rgb_png, "--model", model, "--method", "gradient", "--weights", weights,
                             "--out", tmp_path / "map.png"], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(weights) in line and model in line
    assert not (tmp_path / "map.png").exists()


def test_python_api_weights_errors_are_value_errors(tmp_path):
    weights = tmp_path / "weights.pt"
    _pickle(weights)
    with pytest.raises(ValueError, match="pickled argparse.Namespace, which weights_only=True refuses"):
        relprop.load_model("shapes_vgg", weights=str(weights))
    _garbage(weights)
    with pytest.raises(ValueError, match=r"weights\.pt: not a weights file for 'shapes_vgg'"):
        relprop.load_model("shapes_vgg", weights=weights)


@pytest.fixture()
def empty_torch_cache(tmp_path, monkeypatch) -> Path:
    """An empty torch cache; any download attempt fails the test."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args, **kwargs):
        raise AssertionError(f"relprop tried to download {args[:1]}")

    import torchvision.models._api

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    return home / "hub" / "checkpoints"


def test_torchvision_weights_missing_from_cache_are_refused_without_download(empty_torch_cache):
    with pytest.raises(FileNotFoundError) as err:
        relprop.load_model("resnet18", weights="IMAGENET1K_V1")
    message = str(err.value)
    assert "IMAGENET1K_V1" in message and "not in the local torch cache" in message
    assert str(empty_torch_cache / "resnet18-f37072fd.pth") in message and "downloads nothing" in message


def test_torchvision_weights_are_read_from_the_cache(empty_torch_cache, monkeypatch):
    import torchvision

    reference = torchvision.models.resnet18()
    empty_torch_cache.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_torch_cache / "resnet18-f37072fd.pth")
    monkeypatch.undo()  # the real loader, reading the cached file
    monkeypatch.setenv("TORCH_HOME", str(empty_torch_cache.parents[1]))
    model, _ = relprop.load_model("resnet18", weights="IMAGENET1K_V1")
    torch.testing.assert_close(model.fc.weight, reference.fc.weight)


def test_explain_torchvision_weights_not_cached_or_unknown(tmp_path, rgb_png, empty_torch_cache, capsys):
    code, _, err = _run_cli(["explain", rgb_png, "--model", "resnet18", "--method", "gradient", "--weights",
                             "IMAGENET1K_V1"], capsys)
    assert code == 2 and "not in the local torch cache" in _one_error_line(err)
    code, _, err = _run_cli(["explain", rgb_png, "--model", "resnet18", "--method", "gradient", "--weights",
                             "IMAGENET9K_V7"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "IMAGENET9K_V7" in line and "IMAGENET1K_V1" in line  # names the known ones


# ------------------------------------------------------------------------ 13: outputs that cannot be written

def _unwritable_outputs(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    outs = [tmp_path, a_file / "map.png", Path("/dev/full")]
    # a read-only folder even for root (folder permissions do not stop root, and these tests may run as
    # root): sysfs refuses new files
    if Path("/sys/kernel").is_dir():
        outs.append(Path("/sys/relprop-map.png"))
    return outs


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_explain_out_that_cannot_be_written(tmp_path, rgb_png, tiny_api, capsys, which):
    outs = _unwritable_outputs(tmp_path)
    if which >= len(outs):
        pytest.skip("no read-only folder on this system")
    out = outs[which]
    before = snapshot(tiny_api["model"])
    code, _, err = _run_cli(["explain", rgb_png, "--model", "tiny", "--method", "gradient", "--out", out], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(out) in line
    assert_unchanged(tiny_api["model"], before)


def test_report_out_onto_an_existing_file(tmp_path, capsys):
    store = tmp_path / "store.sqlite"
    store.write_bytes(b"")
    target = tmp_path / "report.md"
    target.write_text("keep me")
    code, _, err = _run_cli(["report", store, "--out", target], capsys)
    assert code == 2 and str(target) in _one_error_line(err)
    assert target.read_text() == "keep me"


def test_demo_out_onto_an_existing_file(tmp_path, tiny_api, capsys):
    target = tmp_path / "demo"
    target.write_text("keep me")
    code, _, err = _run_cli(["demo", "--out", target, "--methods", "gradient", "--photos", "chelsea"], capsys)
    assert code == 2 and str(target) in _one_error_line(err)
    assert target.read_text() == "keep me" and not tiny_api["seen"]  # refused before any work


def test_evaluate_store_that_is_a_folder(tmp_path, capsys):
    code, _, err = _run_cli(["evaluate", "--dataset", "shapes", "--dataset-option", "count=2", "--model",
                             "shapes_vgg", "--methods", "gradient", "--store", tmp_path, "--no-progress"], capsys)
    assert code == 2 and str(tmp_path) in _one_error_line(err)


# ------------------------------------------------------------------------ 15: options, devices, forward

def test_evaluate_unknown_dataset_option(tmp_path, capsys):
    code, _, err = _run_cli(["evaluate", "--dataset", "shapes", "--dataset-option", "colour=red", "--model",
                             "shapes_vgg", "--methods", "gradient", "--store", tmp_path / "s.sqlite"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "colour" in line and "shapes" in line


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "cpu:x"])
def test_evaluate_unknown_device(tmp_path, capsys, device):
    code, _, err = _run_cli(["evaluate", "--dataset", "shapes", "--dataset-option", "count=2", "--model",
                             "shapes_vgg", "--methods", "gradient", "--device", device, "--store",
                             tmp_path / "s.sqlite"], capsys)
    assert code == 2 and device in _one_error_line(err)


def test_evaluate_cuda_index_beyond_the_machine(tmp_path, capsys, monkeypatch):
    """On a machine with one GPU (simulated), cuda:7 is refused before anything is loaded."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, err = _run_cli(["evaluate", "--dataset", "shapes", "--model", "shapes_vgg", "--methods", "gradient",
                             "--device", "cuda:7", "--store", tmp_path / "s.sqlite"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "cuda:7" in line and "1 CUDA device" in line


def test_explain_model_returning_a_tuple(tmp_path, rgb_png, user_models, capsys):
    before = snapshot(user_models.TUPLE)
    code, _, err = _run_cli(["explain", rgb_png, "--model", f"{user_models.__name__}:tuple_model", "--method",
                             "gradient", "--out", tmp_path / "map.png"], capsys)
    assert code == 2 and "forward must return one tensor of shape (batch, classes)" in _one_error_line(err)
    assert_unchanged(user_models.TUPLE, before)


def test_evaluate_model_returning_a_tuple(tmp_path, user_models, capsys):
    before = snapshot(user_models.TUPLE)
    code, _, err = _run_cli(["evaluate", "--dataset", "shapes", "--dataset-option", "count=2", "--model",
                             f"{user_models.__name__}:tuple_model", "--methods", "gradient", "--metrics",
                             "pointing_game", "--targets", "predicted", "--store", tmp_path / "s.sqlite",
                             "--no-progress"], capsys)
    assert code == 2 and "forward must return one tensor of shape (batch, classes)" in _one_error_line(err)
    assert_unchanged(user_models.TUPLE, before)


@pytest.mark.parametrize("target", ["5000", "abc", "-1"])
def test_explain_bad_target(tmp_path, rgb_png, tiny_api, capsys, target):
    before = snapshot(tiny_api["model"])
    code, _, err = _run_cli(["explain", rgb_png, "--model", "tiny", "--method", "gradient", "--target", target,
                             "--out", tmp_path / "map.png"], capsys)
    assert code == 2 and target in err and "Traceback" not in err
    assert not (tmp_path / "map.png").exists()
    assert_unchanged(tiny_api["model"], before)


# ------------------------------------------------------------------------ 19: plug-in code

def test_evaluate_help_says_plugins_are_imported_and_run(capsys):
    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "imports and runs" in text and "current folder" in text


def test_console_entry_point_finds_plugins_in_the_current_folder(tmp_path):
    (tmp_path / "my_plugins.py").write_text(textwrap.dedent("""
        import relprop
        from relprop.data.registry import get_dataset


        def data(count=2):
            return get_dataset("shapes", count=count)


        def model():
            return relprop.load_model("shapes_vgg")
    """))
    env = dict(os.environ, PYTHONPATH=str(SRC))
    # -P: like the installed console script, the current folder is not put on the import path by Python
    command = [sys.executable, "-P", "-c", "import sys; from relprop.cli import main; sys.exit(main())",
               "evaluate", "--dataset", "my_plugins:data", "--model", "my_plugins:model", "--methods", "gradient",
               "--metrics", "pointing_game", "--store", "s.sqlite", "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 of 2 pending samples processed" in done.stdout
