"""tools/convert_yolo_seg.py on a YOLOv8-seg export the test writes: one copy per photo (the one without
salt-and-pepper noise), normalised polygons to pixels, bbox and area against pycocotools, and the result loads
as a registered data set."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from mask2former_sim.data import get_dataset_dicts
from mask2former_sim.data.catalog import register_coco_instances, remove_dataset
from tools.convert_yolo_seg import main, source_name

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

WIDTH, HEIGHT = 80, 64
TRIANGLE = "0 0.1 0.25 0.5 0.25 0.3 0.75 0.1 0.25"  # closed like Roboflow's export
SQUARE = "0 0.5 0.5 0.75 0.5 0.75 0.75 0.5 0.75"


def _photo(seed, noise):
    rng = np.random.default_rng(seed)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[...] = np.linspace(80, 170, WIDTH)[None, :, None].astype(np.uint8) + seed
    if noise:
        hit, salt = rng.random((HEIGHT, WIDTH)) < 0.05, rng.random((HEIGHT, WIDTH)) < 0.5
        image[hit & salt], image[hit & ~salt] = 255, 0
    return image


def _write_export(root):
    files = {
        "train": [
            ("photoA_jpeg.rf.0aaa", 1, True, [TRIANGLE, SQUARE]),
            ("photoA_jpeg.rf.1bbb", 1, False, [TRIANGLE, SQUARE]),  # the clean copy: kept
            ("photoA_jpeg.rf.2ccc", 1, True, [TRIANGLE, SQUARE]),
            ("photoB_png.rf.3ddd", 2, True, [SQUARE, "0 0.2 0.2 0.3 0.3"]),  # one copy; a 2-point polygon
        ],
        "valid": [("photoC_jpg.rf.4eee", 3, False, [TRIANGLE])],
    }
    for split, items in files.items():
        os.makedirs(root / split / "images")
        os.makedirs(root / split / "labels")
        for stem, seed, noise, lines in items:
            Image.fromarray(_photo(seed, noise)).save(root / split / "images" / f"{stem}.jpg", quality=95)
            (root / split / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['cat']\n")


def test_source_name_strips_roboflow_suffix():
    assert source_name("group0003_jpeg.rf.7b0bf78d43fc071066fd26543be95097.jpg") == "group0003_jpeg"


def test_conversion_keeps_the_clean_copy_and_converts_polygons(tmp_path):
    export, out = tmp_path / "export", tmp_path / "out"
    _write_export(export)
    main(["--export", str(export), "--output", str(out)])
    train = json.loads((out / "annotations" / "instances_train.json").read_text())
    val = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert [im["file_name"] for im in train["images"]] == ["photoA_jpeg.jpg", "photoB_png.jpg"]
    assert [im["file_name"] for im in val["images"]] == ["photoC_jpg.jpg"]
    assert train["categories"] == [{"id": 1, "name": "cat"}]
    # photo A's kept file is the clean copy, byte for byte
    kept = (out / "images" / "photoA_jpeg.jpg").read_bytes()
    assert kept == (export / "train" / "images" / "photoA_jpeg.rf.1bbb.jpg").read_bytes()
    # photo A: triangle and square; photo B: the square (its 2-point line is dropped)
    assert [(a["image_id"], a["id"]) for a in train["annotations"]] == [(1, 1), (1, 2), (2, 3)]
    triangle = train["annotations"][0]
    assert triangle["segmentation"] == [[8.0, 16.0, 40.0, 16.0, 24.0, 48.0, 8.0, 16.0]]  # x·80, y·64
    assert triangle["bbox"] == [8.0, 16.0, 32.0, 32.0]
    rle = mask_util.frPyObjects(triangle["segmentation"], HEIGHT, WIDTH)
    assert triangle["area"] == float(mask_util.area(rle)[0])
    assert 0.4 * 32 * 32 / 2 < triangle["area"] < 1.2 * 32 * 32 / 2  # about half its box
    square = train["annotations"][1]
    assert square["bbox"] == [40.0, 32.0, 20.0, 16.0]
    # the result trains as a registered COCO set
    register_coco_instances(
        "_yolo_fixture_train", str(out / "annotations" / "instances_train.json"), str(out / "images")
    )
    try:
        dicts = get_dataset_dicts("_yolo_fixture_train")
    finally:
        remove_dataset("_yolo_fixture_train")
    assert [len(d["annotations"]) for d in dicts] == [2, 1]


def test_odd_number_of_coordinates_names_file_and_line(tmp_path):
    export = tmp_path / "export"
    _write_export(export)
    (export / "valid" / "labels" / "photoC_jpg.rf.4eee.txt").write_text(TRIANGLE + "\n0 0.1 0.2 0.3\n")
    with pytest.raises(ValueError, match=r"photoC_jpg\.rf\.4eee\.txt, line 2: 3 coordinates"):
        main(["--export", str(export), "--output", str(tmp_path / "out")])
