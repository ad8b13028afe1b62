"""Dataset registry: built-in names, custom registration, metadata, the shared data sets."""

import json
import os

import pytest

from mask2former_sim.config import get_cfg
from mask2former_sim.data import catalog
from mask2former_sim.data.catalog import (
    get_dataset_dicts,
    get_metadata,
    list_datasets,
    register_coco_instances,
    register_from_config,
    register_from_string,
    remove_dataset,
)

SHARED = catalog.shared_data_root()
NUCLEI = os.path.join(SHARED, "dsb2018-nuclei")
COCO128 = os.path.join(SHARED, "coco-subset-128")


def _tiny_json(path, category_ids=(7, 3)):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": category_ids[0], "bbox": [1, 1, 3, 3]}],
        "categories": [{"id": c, "name": f"c{c}"} for c in category_ids],
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_builtin_names_are_registered():
    names = set(list_datasets())
    expected = {
        "coco_2017_train",
        "coco_2017_val",
        "voc_sbd_train",
        "voc_sbd_val",
        "nuclei_train",
        "nuclei_val",
        "nuclei_all",
        "coco_subset_128",
        "synthetic_train",
        "synthetic_val",
        "synthetic_lowcontrast_train",
        "synthetic_lowcontrast_val",
    }
    assert expected <= names


def test_builtin_paths_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    entry = catalog.get_entry("coco_2017_val")
    assert entry.json_file() == os.path.join(str(tmp_path), "coco", "annotations", "instances_val2017.json")
    assert entry.image_root() == os.path.join(str(tmp_path), "coco", "val2017")
    assert (
        catalog.get_entry("voc_sbd_train")
        .json_file()
        .endswith(os.path.join("voc_sbd", "annotations", "voc_2012_train_sbd.json"))
    )


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as e:
        get_dataset_dicts("no_such_set")
    assert "no_such_set" in str(e.value) and "coco_2017_train" in str(e.value)


def test_custom_registration_and_contiguous_ids(tmp_path, caplog):
    json_file = _tiny_json(tmp_path / "x.json")
    register_coco_instances("test_cat_custom", json_file, str(tmp_path))
    try:
        meta = get_metadata("test_cat_custom")
        assert meta["thing_classes"] == ["c3", "c7"]  # sorted by json id
        assert meta["thing_dataset_id_to_contiguous_id"] == {3: 0, 7: 1}
        dicts = get_dataset_dicts("test_cat_custom")
        assert dicts[0]["annotations"][0]["category_id"] == 1
        assert dicts[0]["annotations"][0]["bbox"] == [1.0, 1.0, 4.0, 4.0]
        assert dicts[0]["file_name"] == os.path.join(str(tmp_path), "a.png")
        register_coco_instances("test_cat_custom", json_file, str(tmp_path))  # same paths: no-op
        assert "was registered" not in caplog.text
        register_coco_instances("test_cat_custom", json_file, "/elsewhere")  # new paths replace, with a warning
        assert get_metadata("test_cat_custom")["image_root"] == "/elsewhere"
        assert "was registered with json" in caplog.text
    finally:
        remove_dataset("test_cat_custom")


def test_register_from_string_and_config(tmp_path):
    json_file = _tiny_json(tmp_path / "y.json")
    cfg = get_cfg()
    cfg.DATASETS.REGISTER = [f"test_cat_cfg:{json_file}:{tmp_path}"]
    try:
        assert register_from_config(cfg) == ["test_cat_cfg"]
        assert get_metadata("test_cat_cfg")["json_file"] == json_file
    finally:
        remove_dataset("test_cat_cfg")
    for bad in ("only_name", "a:b", "a::c", "a:b:c:d"):
        with pytest.raises(ValueError, match="name:json_file:image_root"):
            register_from_string(bad)


@pytest.mark.skipif(not os.path.isdir(NUCLEI), reason="shared dsb2018-nuclei data not present")
def test_nuclei_splits_load():
    val = get_dataset_dicts("nuclei_val")
    train = get_dataset_dicts("nuclei_train")
    assert (len(train), len(val)) == (49, 16)
    assert get_metadata("nuclei_val")["thing_classes"] == ["nucleus"]
    with open(os.path.join(NUCLEI, "annotations", "instances_val.json")) as f:
        raw = json.load(f)
    assert sum(len(d["annotations"]) for d in val) == len(raw["annotations"])
    assert all(os.path.isfile(d["file_name"]) for d in val)


@pytest.mark.skipif(not os.path.isdir(COCO128), reason="shared coco-subset-128 data not present")
def test_coco_subset_metadata_sorted_by_id():
    meta = get_metadata("coco_subset_128")
    assert len(meta["thing_classes"]) == 80 and meta["thing_classes"][0] == "person"
    ids = sorted(meta["thing_dataset_id_to_contiguous_id"])
    assert [meta["thing_dataset_id_to_contiguous_id"][i] for i in ids] == list(range(80))
