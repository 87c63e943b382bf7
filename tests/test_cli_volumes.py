"""``relprop explain`` on a ``.npy`` volume with the 3-D model: a slice figure of input, positive and
negative relevance; clear errors for 2-D models and unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relprop.cli import main
from relprop.data.nodules3d import Nodules3DDataset
from relprop.models.nodules3d_models import Nodules3DVGG


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("vol")
    torch.manual_seed(0)
    weights = d / "random.pt"
    torch.save(Nodules3DVGG().state_dict(), weights)
    volume = d / "cube.npy"
    np.save(volume, Nodules3DDataset("test", count=2).render(1)[0])
    return volume, weights


def test_explain_a_volume_writes_the_slice_figure(files, tmp_path, capsys):
    volume, weights = files
    out = tmp_path / "rap.png"
    rc = main(["explain", str(volume), "--model", "nodules3d_vgg", "--weights", str(weights), "--method", "rap",
               "--out", str(out), "--slice", "10"])
    assert rc == 0, capsys.readouterr().err
    assert "slice 10 of 32" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.width > im.height > 100


def test_volume_errors(files, tmp_path, capsys):
    volume, weights = files
    args = ["--method", "rap", "--out", str(tmp_path / "x.png")]
    assert main(["explain", str(volume), "--model", "shapes_vgg", *args]) == 2
    assert "3-D model" in capsys.readouterr().err
    assert main(["explain", str(volume), "--model", "nodules3d_vgg", "--weights", str(weights), "--slice", "40",
                 *args]) == 2
    assert "outside" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    assert main(["explain", str(bad), "--model", "nodules3d_vgg", "--weights", str(weights), *args]) == 2
    assert "cannot read the volume" in capsys.readouterr().err
