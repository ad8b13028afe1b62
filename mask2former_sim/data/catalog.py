"""Dataset registry: a name maps to a COCO instances json, an image folder and the class metadata.

detectron2's conventions: a registered name is resolved lazily (nothing is read until it is used), and
class indices are contiguous ``0..K-1`` in the order of the json's category ids sorted ascending.

Built-in names and where they look (environment variables are read when a name is first used):

========================================  =====================================================================
``coco_2017_{train,val}``                 ``$DETECTRON2_DATASETS/coco/annotations/instances_{train,val}2017.json``,
                                          images in ``coco/{train,val}2017/`` (``$DETECTRON2_DATASETS`` default
                                          ``./datasets``)
``voc_sbd_{train,val}``                   Pascal VOC 2012 + SBD converted to COCO json:
                                          ``$DETECTRON2_DATASETS/voc_sbd/annotations/voc_2012_train_sbd.json``
                                          (train 10582 images) and ``.../voc_2012_val.json`` (val 1449 images),
                                          images in ``voc_sbd/JPEGImages/``
``nuclei_{train,val,all}``                ``$M2F_SIM_SHARED_DATA/dsb2018-nuclei/annotations/instances_*.json``,
                                          images in ``dsb2018-nuclei/images/`` (default ``<repo>/../shared/data``)
``coco_subset_128``                       ``$M2F_SIM_SHARED_DATA/coco-subset-128`` (128 COCO train images)
``feral_cats_{train,val}``                ``$M2F_SIM_SHARED_DATA/feral-cats/annotations/instances_*.json``, images
                                          in ``feral-cats/images/`` (photographs, one class; rebuilt from the
                                          public YOLOv8-seg export by ``tools/convert_yolo_seg.py``)
``synthetic_{train,val}``                 generated on first use into ``$M2F_SIM_DATASETS/synthetic``
``synthetic_lowcontrast_{train,val}``     the same with object colours close to the background,
                                          ``$M2F_SIM_DATASETS/synthetic_lowcontrast`` (default ``<repo>/datasets``)
``synthetic_flat_{train,val}``            the control set: flat-coloured 40-80 px objects on a flat background,
                                          no noise, stripes or touching (``$M2F_SIM_DATASETS/synthetic_flat``)
========================================  =====================================================================

Any other COCO-format set: :func:`register_coco_instances`, or ``DATASETS.REGISTER`` /
the command line with ``"name:json_file:image_root"`` strings (:func:`register_from_string`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .coco import load_coco_json, read_categories
from .synthetic import BUILTIN_SYNTHETIC, ensure_synthetic_dataset

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DatasetEntry:
    """A registered COCO-format dataset; ``prepare`` (if set) creates the files before first use."""

    name: str
    json_file: Callable[[], str]
    image_root: Callable[[], str]
    prepare: Optional[Callable[[], None]] = None
    metadata: Dict[str, Any] = field(default_factory=dict)


_REGISTRY: Dict[str, DatasetEntry] = {}


def detectron2_datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``./datasets``, as detectron2)."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def shared_data_root() -> str:
    """``$M2F_SIM_SHARED_DATA`` (default ``<repo>/../shared/data``): read-only data shipped beside the repo."""
    return os.environ.get("M2F_SIM_SHARED_DATA", str(_REPO_ROOT.parent / "shared" / "data"))


def generated_datasets_root() -> str:
    """``$M2F_SIM_DATASETS`` (default ``<repo>/datasets``): where generated data sets are written."""
    return os.environ.get("M2F_SIM_DATASETS", str(_REPO_ROOT / "datasets"))


def register_coco_instances(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO instances json and its image folder under ``name``.

    Registering the same name again with the same paths is a no-op; with other paths the new ones replace
    the old ones (logged as a warning).
    """
    entry = DatasetEntry(name, _const(str(json_file)), _const(str(image_root)))
    _add(entry)


def register_from_string(spec: str) -> str:
    """Register ``"name:json_file:image_root"`` (``DATASETS.REGISTER`` / command line); returns the name."""
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError(
            f"dataset registration string must be 'name:json_file:image_root' (three non-empty parts "
            f"separated by ':'), got {spec!r}"
        )
    name, json_file, image_root = (p.strip() for p in parts)
    register_coco_instances(name, json_file, image_root)
    return name


def register_from_config(cfg: Any) -> List[str]:
    """Register every ``cfg.DATASETS.REGISTER`` string; returns the names."""
    return [register_from_string(spec) for spec in cfg.DATASETS.REGISTER]


def remove_dataset(name: str) -> None:
    """Forget a registered name (tests and interactive use)."""
    _REGISTRY.pop(name, None)


def list_datasets() -> List[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name``; an unknown name is an error listing the registered names."""
    if name not in _REGISTRY:
        raise KeyError(
            f"dataset {name!r} is not registered; registered names: {', '.join(list_datasets())}. "
            f"Register a COCO json with DATASETS.REGISTER ['{name}:path/to/instances.json:path/to/images']"
        )
    entry = _REGISTRY[name]
    if entry.prepare is not None:
        entry.prepare()
    return entry


def get_dataset_dicts(name: str) -> List[Dict[str, Any]]:
    """Load the dataset dicts of ``name`` (see :func:`mask2former_sim.data.coco.load_coco_json`)."""
    entry = get_entry(name)
    return load_coco_json(entry.json_file(), entry.image_root(), dataset_name=name)


def get_metadata(name: str) -> Dict[str, Any]:
    """``{"json_file", "image_root", "thing_classes", "thing_dataset_id_to_contiguous_id"}`` of ``name``.

    Classes come from the json's ``categories`` sorted by id (read once and cached).
    """
    entry = get_entry(name)
    json_file = entry.json_file()
    if entry.metadata.get("json_file") != json_file:
        classes, id_map = read_categories(json_file)
        entry.metadata = {
            "json_file": json_file,
            "image_root": entry.image_root(),
            "thing_classes": classes,
            "thing_dataset_id_to_contiguous_id": id_map,
        }
    return dict(entry.metadata)


def _const(value: str) -> Callable[[], str]:
    return lambda: value


def _add(entry: DatasetEntry) -> None:
    old = _REGISTRY.get(entry.name)
    if old is not None:
        old_paths, new_paths = (old.json_file(), old.image_root()), (entry.json_file(), entry.image_root())
        if old.prepare is None and old_paths == new_paths:
            return
        logger.warning(
            "dataset %r was registered with json %r and images %r; now json %r and images %r",
            entry.name,
            *old_paths,
            *new_paths,
        )
    _REGISTRY[entry.name] = entry


def _register_lazy(
    name: str, json_file: Callable[[], str], image_root: Callable[[], str], prepare: Optional[Callable[[], None]] = None
) -> None:
    _REGISTRY[name] = DatasetEntry(name, json_file, image_root, prepare)


def _register_builtins() -> None:
    d2 = detectron2_datasets_root
    for split in ("train", "val"):
        _register_lazy(
            f"coco_2017_{split}",
            lambda s=split: os.path.join(d2(), "coco", "annotations", f"instances_{s}2017.json"),
            lambda s=split: os.path.join(d2(), "coco", f"{s}2017"),
        )
    voc_json = {"train": "voc_2012_train_sbd.json", "val": "voc_2012_val.json"}
    for split, fname in voc_json.items():
        _register_lazy(
            f"voc_sbd_{split}",
            lambda f=fname: os.path.join(d2(), "voc_sbd", "annotations", f),
            lambda: os.path.join(d2(), "voc_sbd", "JPEGImages"),
        )
    for split in ("train", "val", "all"):
        _register_lazy(
            f"nuclei_{split}",
            lambda s=split: os.path.join(shared_data_root(), "dsb2018-nuclei", "annotations", f"instances_{s}.json"),
            lambda: os.path.join(shared_data_root(), "dsb2018-nuclei", "images"),
        )
    for split in ("train", "val"):
        _register_lazy(
            f"feral_cats_{split}",
            lambda s=split: os.path.join(shared_data_root(), "feral-cats", "annotations", f"instances_{s}.json"),
            lambda: os.path.join(shared_data_root(), "feral-cats", "images"),
        )
    _register_lazy(
        "coco_subset_128",
        lambda: os.path.join(shared_data_root(), "coco-subset-128", "annotations", "instances_train2017.json"),
        lambda: os.path.join(shared_data_root(), "coco-subset-128", "images"),
    )
    for variant in BUILTIN_SYNTHETIC:
        for split in ("train", "val"):
            _register_lazy(
                f"{variant}_{split}",
                lambda v=variant, s=split: os.path.join(
                    generated_datasets_root(), v, "annotations", f"instances_{s}.json"
                ),
                lambda v=variant, s=split: os.path.join(generated_datasets_root(), v, s),
                lambda v=variant: ensure_synthetic_dataset(os.path.join(generated_datasets_root(), v), v),
            )


_register_builtins()
