"""Loaders of ImageNet, ImageNet segmentation, Pascal VOC and COCO on tiny files in the real formats.

Every fixture is written here, byte for byte in the layout the real archives use: JPEG images, ILSVRC
and VOC annotation XML, palette PNG masks, a MATLAB v7.3 (HDF5) .mat with MATLAB's object-reference
layout, COCO instances JSON with polygons and both RLE encodings, TorchRay's difficult-subset lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relprop.data.base import CorruptSampleError, Dataset, DatasetNotFoundError
from relprop.data.cocomask import (decode_rle, encode_rle_string, mask_to_rle_counts, polygon_to_mask,
                                   rle_counts_from_string, segmentation_to_mask)
from relprop.data.registry import dataset_names, get_dataset

h5py = pytest.importorskip("h5py")


# ----------------------------------------------------------------------------------------------- helpers

def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def voc_xml(filename: str, width: int, height: int, objects: list[tuple], folder: str = "VOC2007",
            database: str = "The VOC2007 Database") -> str:
    """Annotation XML as the VOC / ILSVRC devkits write it; objects are (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n"
             f"\t<source>\n\t\t<database>{database}</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
             "\t<segmented>0</segmented>\n"]
    for name, x0, y0, x1, y1, difficult in objects:
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>{difficult}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n"
                     f"\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n"
                     "\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


ENTITY_BOMB = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>\n'
               "<annotation><filename>&lol2;</filename></annotation>\n")


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved), 256 RGB entries."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_index_png(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


# ------------------------------------------------------------------------------------------- registry

def test_all_loaders_registered():
    assert {"imagenet", "imagenet-seg", "voc2007", "voc2012", "coco2014", "photos"} <= set(dataset_names())


@pytest.mark.parametrize("name, hint", [("imagenet", "image-net.org"), ("imagenet-seg", "gtsegs_ijcv.mat"),
                                        ("voc2007", "host.robots.ox.ac.uk"), ("voc2012", "host.robots.ox.ac.uk"),
                                        ("coco2014", "cocodataset.org")])
def test_missing_data_names_place_and_source(name, hint, tmp_path, monkeypatch):
    monkeypatch.delenv("RELPROP_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="RELPROP_DATA") as err:
        get_dataset(name)
    assert hint in str(err.value)
    where = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset(name, root=where)
    assert str(where) in str(err.value) and hint in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=hint.replace(".", r"\.")):
        get_dataset(name, root=tmp_path / "empty")


def test_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RELPROP_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("coco2014")
    assert str(tmp_path / "coco") in str(err.value)


# ------------------------------------------------------------------------------------------- ImageNet

@pytest.fixture
def kaggle_imagenet(tmp_path):
    """Kaggle layout: ILSVRC/Data/CLS-LOC/val, ILSVRC/Annotations/CLS-LOC/val, LOC_val_solution.csv."""
    data = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    ann = tmp_path / "ILSVRC" / "Annotations" / "CLS-LOC" / "val"
    ann.mkdir(parents=True)
    write_jpeg(data / "ILSVRC2012_val_00000001.JPEG", 50, 40, seed=1)
    (ann / "ILSVRC2012_val_00000001.xml").write_text(voc_xml(
        "ILSVRC2012_val_00000001", 50, 40,
        [("n02123045", 5, 7, 14, 20, 0), ("n02123045", 0, 0, 49, 39, 0)], folder="val", database="ILSVRC_2012"))
    write_jpeg(data / "ILSVRC2012_val_00000002.JPEG", 30, 20, seed=2)
    (ann / "ILSVRC2012_val_00000002.xml").write_text(voc_xml(
        "ILSVRC2012_val_00000002", 30, 20, [("n07920052", 10, 2, 19, 11, 0)], folder="val", database="ILSVRC_2012"))
    write_jpeg(data / "ILSVRC2012_val_00000003.JPEG", 30, 20, seed=3)  # no XML: label from the CSV
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000003,n01440764 1 1 9 9 \n")
    return tmp_path


def test_imagenet_kaggle_layout(kaggle_imagenet):
    ds = get_dataset("imagenet", root=kaggle_imagenet)
    assert isinstance(ds, Dataset) and len(ds) == 3 and len(ds.class_names) == 1000
    s = ds[0]
    assert s.key == "ILSVRC2012_val_00000001" and s.size == (40, 50)
    assert s.labels == [281] and ds.class_names[281] == "tabby"
    # 0-based inclusive pixel indices -> exclusive boxes
    assert [o.box for o in s.objects] == [(5, 7, 15, 21), (0, 0, 50, 40)]
    assert ds[1].labels == [967] and ds.class_names[967] == "espresso"
    assert ds[1].objects[0].box == (10, 2, 20, 12)
    third = ds[2]
    assert third.labels == [0] and third.objects == []


def test_imagenet_wnid_list_matches_class_names():
    from relprop.data.imagenet import imagenet_wnids, wnid_to_index

    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    # WordNet ids of well-known classes and their torchvision indices
    for wnid, index in [("n01440764", 0), ("n02102040", 217), ("n02979186", 482), ("n03888257", 701),
                        ("n03773504", 657), ("n04008634", 744), ("n07930864", 968), ("n15075141", 999)]:
        assert wnid_to_index()[wnid] == index


def test_imagenet_folder_layout_with_devkit(tmp_path):
    """image-net.org archives arranged per synset (torchvision) and the devkit's ground truth."""
    import scipy.io

    write_jpeg(tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000002.JPEG", 20, 20)
    write_jpeg(tmp_path / "ILSVRC2012_img_val_flat" / "ILSVRC2012_val_00000001.JPEG", 20, 20)
    write_jpeg(tmp_path / "ILSVRC2012_img_val_flat" / "ILSVRC2012_val_00000002.JPEG", 20, 20)
    ds = get_dataset("imagenet", root=tmp_path, require_boxes=False)
    assert len(ds) == 1 and ds[0].labels == [1]  # goldfish, from its folder
    # devkit: ILSVRC2012_ID order is not the sorted-WNID order; meta.mat maps one to the other
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    synsets = np.zeros((3,), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for row, (i, wnid) in enumerate([(1, "n02119789"), (2, "n02100735"), (1001, "n00001740")]):
        synsets[row] = (i, wnid, 0 if i <= 1000 else 5)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n")
    ds = get_dataset("imagenet", root=tmp_path, images=tmp_path / "ILSVRC2012_img_val_flat", require_boxes=False)
    from relprop.data.imagenet import wnid_to_index

    assert [ds[i].labels for i in range(2)] == [[wnid_to_index()["n02100735"]], [wnid_to_index()["n02119789"]]]


def test_imagenet_corrupt_samples_are_reported_one_by_one(kaggle_imagenet):
    ann = kaggle_imagenet / "ILSVRC" / "Annotations" / "CLS-LOC" / "val"
    data = kaggle_imagenet / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    truncate(data / "ILSVRC2012_val_00000001.JPEG")
    (ann / "ILSVRC2012_val_00000002.xml").write_text("<annotation><size><width>30</width></size>")
    ds = get_dataset("imagenet", root=kaggle_imagenet)  # building does not read the samples
    with pytest.raises(CorruptSampleError) as err:
        ds[0]
    assert err.value.path.endswith("ILSVRC2012_val_00000001.JPEG") and "decode" in err.value.reason
    with pytest.raises(CorruptSampleError, match="malformed XML") as err:
        ds[1]
    assert err.value.path.endswith("ILSVRC2012_val_00000002.xml")
    assert ds[2].labels == [0]  # the run goes on


def test_imagenet_refuses_entities_and_checks_sizes(kaggle_imagenet):
    ann = kaggle_imagenet / "ILSVRC" / "Annotations" / "CLS-LOC" / "val"
    (ann / "ILSVRC2012_val_00000001.xml").write_text(ENTITY_BOMB)
    (ann / "ILSVRC2012_val_00000002.xml").write_text(voc_xml(
        "ILSVRC2012_val_00000002", 31, 20, [("n07920052", 10, 2, 19, 11, 0)]))
    ds = get_dataset("imagenet", root=kaggle_imagenet)
    with pytest.raises(CorruptSampleError, match="refused"):
        ds[0]
    with pytest.raises(CorruptSampleError, match="31x20"):
        ds[1]
    with pytest.raises(IndexError):
        ds[3]


# ------------------------------------------------------------------------------ ImageNet segmentation

MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."


def write_gtsegs(path: Path, images: list[np.ndarray], masks: list, wnids: list[str], *, drop: str = "") -> None:
    """Write images (H, W, 3) and masks (H, W) as MATLAB -v7.3 stores the cell arrays of gtsegs_ijcv.mat."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        value = f.create_group("value")
        img_refs, gt_refs, id_refs = [], [], []
        for i, (img, mask, wnid) in enumerate(zip(images, masks, wnids)):
            d = refs.create_dataset(f"img{i}", data=np.ascontiguousarray(img.transpose(2, 1, 0)))
            d.attrs["MATLAB_class"] = np.bytes_("uint8")
            img_refs.append(d.ref)
            if isinstance(mask, str):  # a reference that points to a group, not to an array
                target = refs.create_group(f"bad{i}")
            else:
                target = refs.create_dataset(f"mask{i}", data=np.ascontiguousarray(mask.T))
            cell = refs.create_dataset(f"cell{i}", data=np.array([[target.ref]], dtype=h5py.ref_dtype))
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
            gt_refs.append(cell.ref)
            s = refs.create_dataset(f"id{i}", data=np.array([[ord(c)] for c in wnid], dtype=np.uint16))
            s.attrs["MATLAB_class"] = np.bytes_("char")
            id_refs.append(s.ref)
        for field, r in (("img", img_refs), ("gt", gt_refs), ("id", id_refs)):
            if field != drop:
                ds = value.create_dataset(field, data=np.array([[x] for x in r], dtype=h5py.ref_dtype))
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as f:
        f.write(MATLAB_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


@pytest.fixture
def gtsegs(tmp_path):
    rng = np.random.default_rng(0)
    img0 = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    mask0 = np.zeros((6, 9), dtype=np.uint8)
    mask0[1:4, 2:7] = 1
    img1 = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    mask1 = np.zeros((5, 4), dtype=np.float64)
    mask1[4, 0] = 1.0
    path = tmp_path / "gtsegs_ijcv.mat"
    write_gtsegs(path, [img0, img1], [mask0, mask1], ["n02123045", "n09999999"])
    return path, [img0, img1], [mask0, mask1]


def test_imagenet_seg_reads_matlab_layout(gtsegs):
    path, imgs, masks = gtsegs
    assert h5py.is_hdf5(str(path)) and path.read_bytes()[:10] == b"MATLAB 7.3"
    for root in (path, path.parent):
        ds = get_dataset("imagenet-seg", root=root)
        assert len(ds) == 2
    s = ds[0]
    np.testing.assert_array_equal(np.asarray(s.image), imgs[0])
    np.testing.assert_array_equal(s.segmentation, masks[0])
    assert s.labels == [281] and s.objects[0].label == 281
    assert s.objects[0].box == (2, 1, 7, 4)
    np.testing.assert_array_equal(s.objects[0].mask, masks[0].astype(bool))
    t = ds[1]  # a synset outside the 1000 classes; a float mask of 0/1
    assert t.labels == [] and t.objects[0].label == -1 and t.objects[0].box == (0, 4, 1, 5)
    assert t.size == (5, 4)
    import pickle

    again = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(np.asarray(again[1].image), imgs[1])
    ds.close()


def test_imagenet_seg_corrupt_entries_fail_alone(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(4)]
    good = np.ones((4, 5), dtype=np.uint8)
    path = tmp_path / "gtsegs_ijcv.mat"
    write_gtsegs(path, imgs, [np.ones((5, 4), dtype=np.uint8), "group", good * 2, good],
                 ["n01440764"] * 4)
    ds = get_dataset("imagenet-seg", root=path)
    with pytest.raises(CorruptSampleError, match=r"sample 0: mask of size \(5, 4\)") as err:
        ds[0]
    assert err.value.path == str(path)
    with pytest.raises(CorruptSampleError, match="sample 1: mask reference points to a group"):
        ds[1]
    with pytest.raises(CorruptSampleError, match="not 0/1"):
        ds[2]
    assert ds[3].segmentation.sum() == 20


def test_imagenet_seg_file_level_errors(tmp_path):
    import scipy.io

    img = np.zeros((3, 3, 3), dtype=np.uint8)
    no_gt = tmp_path / "no_gt.mat"
    write_gtsegs(no_gt, [img], [np.zeros((3, 3), np.uint8)], ["n01440764"], drop="gt")
    with pytest.raises(ValueError, match=r"no /value/gt") as err:
        get_dataset("imagenet-seg", root=no_gt)
    assert str(no_gt) in str(err.value)
    v5 = tmp_path / "v5.mat"
    scipy.io.savemat(v5, {"value": np.zeros(3)})
    with pytest.raises(ValueError, match="v7.3"):
        get_dataset("imagenet-seg", root=v5)
    with pytest.raises(DatasetNotFoundError, match="gtsegs_ijcv.mat"):
        get_dataset("imagenet-seg", root=tmp_path)


# ------------------------------------------------------------------------------------------- Pascal VOC

def make_voc(root: Path, year: str = "2007", split: str = "test") -> Path:
    d = root / "VOCdevkit" / f"VOC{year}"
    (d / "Annotations").mkdir(parents=True)
    write_jpeg(d / "JPEGImages" / "000001.jpg", 12, 10, seed=1)
    (d / "Annotations" / "000001.xml").write_text(voc_xml(
        "000001.jpg", 12, 10, [("dog", 2, 3, 6, 8, 0), ("person", 1, 1, 12, 10, 0), ("dog", 9, 9, 10, 10, 1)]))
    write_jpeg(d / "JPEGImages" / "000002.jpg", 8, 6, seed=2)
    (d / "Annotations" / "000002.xml").write_text(voc_xml("000002.jpg", 8, 6, [("cat", 3, 2, 5, 4, 1)]))
    for sub in ("Main", "Segmentation"):
        (d / "ImageSets" / sub).mkdir(parents=True)
        (d / "ImageSets" / sub / f"{split}.txt").write_text("000001\n000002\n" if sub == "Main" else "000001\n")
    classes = np.zeros((10, 12), dtype=np.uint8)
    instances = np.zeros((10, 12), dtype=np.uint8)
    classes[3:7, 2:5] = 12  # dog (index 11) + 1
    instances[3:7, 2:5] = 1
    classes[0:2, :] = 15  # person (index 14) + 1
    instances[0:2, :] = 2
    classes[7, :] = instances[7, :] = 255  # void boundary
    write_index_png(d / "SegmentationClass" / "000001.png", classes)
    write_index_png(d / "SegmentationObject" / "000001.png", instances)
    return d


def test_voc_boxes_difficult_and_masks(tmp_path):
    make_voc(tmp_path)
    flags = tmp_path / "VOCdevkit" / "pointing_game_ebp_voc07_difficult.txt"
    flags.write_text("000001\t" + "\t".join("1" if i == 11 else "0" for i in range(20)) + "\n")
    ds = get_dataset("voc2007", root=tmp_path / "VOCdevkit")
    assert isinstance(ds, Dataset) and len(ds) == 2 and ds.class_names[11] == "dog"
    s = ds[0]
    assert s.key == "000001" and s.labels == [11, 14]
    # 1-based inclusive (xmin, ymin, xmax, ymax) -> exclusive 0-based; same pixels as TorchRay's voc_as_mask
    assert [o.box for o in s.objects] == [(1, 2, 6, 8), (0, 0, 12, 10), (8, 8, 10, 10)]
    assert [o.difficult for o in s.objects] == [False, False, True]
    expected = np.zeros((10, 12), bool)
    expected[3:7, 2:5] = True
    np.testing.assert_array_equal(s.objects[0].mask, expected)
    assert s.objects[1].mask.sum() == 24 and s.objects[2].mask is None
    assert s.segmentation[0, 0] == 15 and s.segmentation[7, 0] == -1 and s.segmentation[9, 0] == 0
    assert ds.segmentation_classes[s.segmentation[4, 3]] == "dog"
    t = ds[1]
    assert t.labels == [7] and t.objects[0].difficult and t.segmentation is None
    assert ds.difficult_classes("000001") == frozenset({11}) and ds.difficult_classes("000002") is None
    seg = get_dataset("voc2007", root=tmp_path, task="segmentation")
    assert len(seg) == 1 and seg[0].key == "000001"


def test_voc2012_default_split_and_year_folder(tmp_path):
    make_voc(tmp_path, "2012", "val")
    ds = get_dataset("voc2012", root=tmp_path / "VOCdevkit" / "VOC2012")
    assert ds.split == "val" and len(ds) == 2 and ds.difficult_flags is None
    with pytest.raises(ValueError, match="unknown split 'test'"):
        get_dataset("voc2012", root=tmp_path, split="test")
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit/VOC2007"):
        get_dataset("voc2007", root=tmp_path)  # VOC2012 is there, VOC2007 is not
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit/VOC2007"):
        get_dataset("voc2007", root=tmp_path / "VOCdevkit" / "VOC2012")
    (tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val list"):
        get_dataset("voc2012", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="train list"):
        get_dataset("voc2012", root=tmp_path, split="train")


def test_voc_corrupt_inputs(tmp_path):
    d = make_voc(tmp_path)
    truncate(d / "JPEGImages" / "000002.jpg")
    ds = get_dataset("voc2007", root=tmp_path)
    with pytest.raises(CorruptSampleError, match="decode") as err:
        ds[1]
    assert err.value.path == str(d / "JPEGImages" / "000002.jpg")
    assert ds[0].labels == [11, 14]
    # a class mask of the wrong size
    write_index_png(d / "SegmentationClass" / "000001.png", np.zeros((9, 12), np.uint8))
    with pytest.raises(CorruptSampleError, match=r"mask of size \(9, 12\)") as err:
        ds[0]
    assert err.value.path.endswith("SegmentationClass/000001.png")
    # instances out of order with the XML objects
    classes = np.zeros((10, 12), np.uint8)
    classes[3:7, 2:5] = 15
    write_index_png(d / "SegmentationClass" / "000001.png", classes)
    with pytest.raises(CorruptSampleError, match="out of order"):
        ds[0]
    # malformed XML, unknown class, entity declarations
    (d / "Annotations" / "000001.xml").write_text("<annotation><object></annotation>")
    with pytest.raises(CorruptSampleError, match="malformed XML"):
        ds[0]
    (d / "Annotations" / "000001.xml").write_text(voc_xml("000001.jpg", 12, 10, [("unicorn", 1, 1, 3, 3, 0)]))
    with pytest.raises(CorruptSampleError, match="unknown class 'unicorn'"):
        ds[0]
    (d / "Annotations" / "000001.xml").write_text(ENTITY_BOMB)
    with pytest.raises(CorruptSampleError, match="refused"):
        ds[0]


def test_difficult_list_format_errors(tmp_path):
    from relprop.data.pointing_lists import read_difficult_flags

    good = tmp_path / "flags.txt"
    good.write_text("000001\t0\t1\t0\n000004\t1\t1\t0\n\n")
    assert read_difficult_flags(good, 3) == {"000001": (False, True, False), "000004": (True, True, False)}
    bad = tmp_path / "bad.txt"
    bad.write_text("000001\t0\t1\t0\n000004\t1\t2\t0\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 2"):
        read_difficult_flags(bad, 3)
    with pytest.raises(ValueError, match="line 1"):
        read_difficult_flags(good, 20)
    with pytest.raises(FileNotFoundError, match="TorchRay"):
        read_difficult_flags(tmp_path / "absent.txt", 20)


# ------------------------------------------------------------------------------------- COCO RLE / polygons

def test_rle_string_hand_decoded():
    # 3x4 mask; column-major runs: 4 zeros, 3 ones, 2 zeros, 3 ones; the 4th count is stored as 3 - 3 = 0
    expected = np.array([[0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 0, 1]], dtype=bool)
    assert rle_counts_from_string("4320") == [4, 3, 2, 3]
    np.testing.assert_array_equal(decode_rle("4320", 3, 4), expected)
    assert mask_to_rle_counts(expected) == [4, 3, 2, 3] and encode_rle_string([4, 3, 2, 3]) == "4320"
    # multi-character and negative deltas: 40 = 8 + 1*32 -> chr(48+8+32) chr(48+1) = "X1";
    # the 4th count 5 is stored as 5 - 40 = -35 = 29 + (-2)*32 -> chr(48+29+32) chr(48+30) = "mN"
    assert rle_counts_from_string("0X15mN") == [0, 40, 5, 5]
    assert encode_rle_string([0, 40, 5, 5]) == "0X15mN"
    m = decode_rle("0X15mN", 10, 5)
    assert m[:, :4].all() and not m[:5, 4].any() and m[5:, 4].all()
    np.testing.assert_array_equal(decode_rle([0, 40, 5, 5], 10, 5), m)


def test_rle_errors():
    with pytest.raises(ValueError, match="covers 11 pixels"):
        decode_rle([4, 3, 4], 3, 4)
    with pytest.raises(ValueError, match="ends inside"):
        rle_counts_from_string("X")
    with pytest.raises(ValueError, match="size"):
        segmentation_to_mask({"counts": "4320", "size": [4, 3]}, 3, 4)


def test_polygon_rasterisation_hand_made():
    # pixel (r, c) is filled when its centre (c + 0.5, r + 0.5) lies in the polygon (boundary included)
    rect = polygon_to_mask([1, 1, 4, 1, 4, 3, 1, 3], 5, 6)
    expected = np.zeros((5, 6), bool)
    expected[1:3, 1:4] = True
    np.testing.assert_array_equal(rect, expected)
    tri = polygon_to_mask([1, 0, 5, 4, 1, 4], 5, 6)
    expected = np.zeros((5, 6), bool)
    for r in range(4):
        expected[r, 1:r + 2] = True  # right of x = 1, left of the edge x = y + 1
    np.testing.assert_array_equal(tri, expected)
    both = segmentation_to_mask([[1, 1, 4, 1, 4, 3, 1, 3], [1, 0, 5, 4, 1, 4]], 5, 6)
    np.testing.assert_array_equal(both, rect | tri)
    with pytest.raises(ValueError, match="3"):
        polygon_to_mask([0, 0, 1, 1], 3, 3)


def test_rle_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, size=2)
        m = rng.random((h, w)) < rng.random()
        counts = mask_to_rle_counts(m)
        assert sum(counts) == h * w
        np.testing.assert_array_equal(decode_rle(encode_rle_string(counts), h, w), m)


# ----------------------------------------------------------------------------------------------- COCO

def make_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    write_jpeg(root / "val2014" / "COCO_val2014_000000000042.jpg", 6, 5, seed=4)
    write_jpeg(root / "val2014" / "COCO_val2014_000000000007.jpg", 4, 3, seed=5)
    write_jpeg(root / "val2014" / "COCO_val2014_000000000099.jpg", 4, 3, seed=6)
    data = {
        "info": {"description": "COCO 2014 Dataset"}, "licenses": [],
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 5, "width": 6, "license": 1},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": 3, "width": 4, "license": 1},
            {"id": 99, "file_name": "COCO_val2014_000000000099.jpg", "height": 3, "width": 4, "license": 1},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 6.0, "bbox": [1.0, 1.0, 3.0, 2.0],
             "segmentation": [[1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]]},
            {"id": 2, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 10.0, "bbox": [1.0, 0.0, 4.0, 4.0],
             "segmentation": [[1.0, 0.0, 5.0, 4.0, 1.0, 4.0]]},
            {"id": 3, "image_id": 7, "category_id": 90, "iscrowd": 0, "area": 6.0, "bbox": [1.0, 0.0, 3.0, 3.0],
             "segmentation": {"size": [3, 4], "counts": "4320"}},
            {"id": 4, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 3.0, "bbox": [0.0, 0.0, 1.0, 3.0],
             "segmentation": {"size": [3, 4], "counts": [0, 3, 9]}},
        ],
        "categories": [{"supercategory": "animal", "id": 18, "name": "dog"},
                       {"supercategory": "person", "id": 1, "name": "person"},
                       {"supercategory": "indoor", "id": 90, "name": "toothbrush"}],
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return root


def test_coco_instances(tmp_path):
    root = make_coco(tmp_path)
    (root / "pointing_game_ebp_coco_difficult.txt").write_text("COCO_val2014_000000000042\t1\t0\t0\n")
    ds = get_dataset("coco2014", root=root)
    assert isinstance(ds, Dataset) and len(ds) == 3
    assert list(ds.class_names) == ["person", "dog", "toothbrush"] and ds.category_ids == [1, 18, 90]
    first = ds[0]  # ordered by image id
    assert first.key == "COCO_val2014_000000000007" and first.labels == [0, 2]
    toothbrush, crowd = first.objects
    assert toothbrush.label == 2 and toothbrush.box == (1, 0, 4, 3)
    np.testing.assert_array_equal(toothbrush.mask, [[0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 0, 1]])
    np.testing.assert_array_equal(crowd.mask, [[1, 0, 0, 0]] * 3)
    second = ds[1]
    assert second.labels == [0, 1] and [o.box for o in second.objects] == [(1, 1, 4, 3), (1, 0, 5, 4)]
    assert second.objects[0].mask.sum() == 6 and second.objects[1].mask.sum() == 10
    assert ds[2].labels == [] and ds[2].objects == []
    assert ds.difficult_classes("COCO_val2014_000000000042") == frozenset({0})
    no_crowd = get_dataset("coco2014", root=root, include_crowd=False)
    assert no_crowd[0].labels == [2]


def test_coco_corrupt_annotation_fails_its_sample_only(tmp_path):
    root = make_coco(tmp_path)
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][2]["segmentation"] = {"size": [3, 5], "counts": "4320"}  # wrong size
    data["annotations"][0]["segmentation"] = [[1.0, 2.0]]  # a polygon of one vertex
    path.write_text(json.dumps(data))
    truncate(root / "val2014" / "COCO_val2014_000000000099.jpg")
    ds = get_dataset("coco2014", root=root)
    with pytest.raises(CorruptSampleError, match=r"annotation 3 .*RLE of size \[3, 5\]") as err:
        ds[0]
    assert err.value.path == str(path)
    with pytest.raises(CorruptSampleError, match="annotation 1 .*polygon"):
        ds[1]
    with pytest.raises(CorruptSampleError, match="decode") as err:
        ds[2]
    assert err.value.path.endswith("COCO_val2014_000000000099.jpg")


def test_coco_malformed_json_fails_the_build(tmp_path):
    root = make_coco(tmp_path)
    path = root / "annotations" / "instances_val2014.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(ValueError, match="instances_val2014.json: cannot read"):
        get_dataset("coco2014", root=root)
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="no 'categories' list"):
        get_dataset("coco2014", root=root)
