"""The synthetic ``nodules3d`` benchmark: determinism, balance, exact masks, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relprop.data.registry import get_dataset
from relprop.data.nodules3d import NODULE_CLASSES, NoduleSample, Nodules3DDataset, nodule_mask


@pytest.fixture(scope="module")
def cubes():
    return Nodules3DDataset("test", count=24, seed=3).arrays()


def test_registered_and_sample_fields():
    ds = get_dataset("nodules3d", split="val", count=4)
    assert isinstance(ds, Nodules3DDataset) and ds.class_names == NODULE_CLASSES
    s = ds[1]
    assert isinstance(s, NoduleSample)
    assert s.volume.shape == (1, 32, 32, 32) and s.volume.dtype == np.float32
    assert s.mask.shape == (32, 32, 32) and s.mask.dtype == bool
    assert s.image.size == (32, 32) and s.image.mode == "RGB"
    assert s.labels in ([0], [1])
    assert (len(s.objects) == 1) == (s.labels == [1]) == bool(s.mask.any())
    assert s.key == "nodules3d/val/0/000001"


def test_deterministic_from_the_seed(cubes):
    again = Nodules3DDataset("test", count=24, seed=3)
    v, m, y = again.render(5)
    np.testing.assert_array_equal(v, cubes[0][5, 0])
    np.testing.assert_array_equal(m, cubes[2][5])
    assert y == cubes[1][5]
    np.testing.assert_array_equal(again[5].volume, cubes[0][5])
    assert not np.array_equal(Nodules3DDataset("test", count=24, seed=4).render(5)[0], v)
    assert not np.array_equal(Nodules3DDataset("train", count=24, seed=3).render(5)[0], v)


def test_balanced_in_every_index_pair(cubes):
    labels = cubes[1]
    assert (labels[0::2] + labels[1::2] == 1).all()
    ds = Nodules3DDataset("train", count=1000)
    assert sum(ds.label(i) for i in range(1000)) == 500


def test_masks_are_the_rendered_nodule(cubes):
    vols, labels, masks = cubes
    for v, y, m in zip(vols[:, 0], labels, masks):
        assert m.any() == bool(y)
        if y:
            # the nodule is brighter than the tissue around it: every masked voxel was painted
            # with a nodule intensity (>= 0.45 before noise of sd <= 0.04)
            assert v[m].min() > 0.25 and v[m].mean() > 0.45
            assert 0.0 < m.mean() < 0.1


def test_nodule_mask_rasterises_voxel_centres():
    m = nodule_mask(8, np.array([[4.0, 4.0, 4.0]]), np.array([1.0]))
    # the 8 voxels around the centre point have centres at distance sqrt(3)/2 < 1; the next ring not
    assert m.sum() == 8 and m[3:5, 3:5, 3:5].all()
    two = nodule_mask(8, np.array([[4.0, 4.0, 4.0], [1.0, 1.0, 1.0]]), np.array([1.0, 0.9]))
    assert two.sum() == 16


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        Nodules3DDataset("dev")
    with pytest.raises(IndexError):
        Nodules3DDataset("test", count=2).render(2)


def test_shipped_model_loads_by_name_and_classifies_test_cubes():
    import torch

    from relprop.models import load_model, model_names

    assert "nodules3d_vgg" in model_names()
    model, preprocess = load_model("nodules3d_vgg")
    vols, labels, _ = Nodules3DDataset("test", count=16).arrays()
    x = torch.cat([preprocess(v) for v in vols])
    assert x.shape == (16, 1, 32, 32, 32)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    assert (pred == labels).mean() >= 0.8
    assert sum(p.numel() for p in model.state_dict().values()) * 4 < 3e6


def test_binary_scores_by_hand():
    from relprop.models.train_nodules3d import binary_scores

    pred = torch.tensor([1, 1, 0, 0, 1, 0])
    truth = torch.tensor([1, 0, 0, 1, 1, 0])  # tp 2, fp 1, tn 2, fn 1
    s = binary_scores(pred, truth)
    assert s == pytest.approx({"ACC": 4 / 6, "PRE": 2 / 3, "REC": 2 / 3, "SPEC": 2 / 3, "F1": 2 / 3})


class _Constant(torch.nn.Module):
    """A stand-in for a trained fold: predicts the class given at construction."""

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, x):
        out = torch.zeros(len(x), 2)
        out[:, self.cls] = 1.0
        return out


def test_cross_validation_resumes_from_its_record(tmp_path, monkeypatch):
    import json

    import relprop.models.train_nodules3d as T

    vols = np.zeros((8, 1, 2, 2, 2), dtype=np.float32)
    labels = np.array([0, 1] * 4, dtype=np.int64)
    trained: list[int] = []

    def fake_fit(v, lab, epochs, lr, batch_size, seed, log=False):
        trained.append(seed)
        return _Constant(seed % 2)

    monkeypatch.setattr(T, "fit", fake_fit)
    record = tmp_path / "cv.json"
    full = T.cross_validate(vols, labels, 4, 1, 1e-3, seed=10, log=False, record=record)
    assert trained == [10, 11, 12, 13]
    assert [f["REC"] for f in full["folds"]] == [0.0, 1.0, 0.0, 1.0]
    # a run killed after two folds: the rerun trains only the other two and gives the same result
    data = json.loads(record.read_text())
    data["folds"] = {k: v for k, v in data["folds"].items() if k in ("0", "1")}
    record.write_text(json.dumps(data))
    trained.clear()
    again = T.cross_validate(vols, labels, 4, 1, 1e-3, seed=10, log=False, record=record)
    assert trained == [12, 13]
    assert json.dumps(again) == json.dumps(full)  # NaN precision where a fold predicts no nodule
    # other settings are refused by name, a corrupt record too
    with pytest.raises(ValueError, match="epochs differ"):
        T.cross_validate(vols, labels, 4, 2, 1e-3, seed=10, log=False, record=record)
    record.write_text("{not json")
    with pytest.raises(ValueError, match="not a cross-validation record"):
        T.cross_validate(vols, labels, 4, 1, 1e-3, seed=10, log=False, record=record)
