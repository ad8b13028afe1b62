"""Every config key is read by code: each shipped YAML's keys while its config is consumed, every default by a run.

Reads are recorded at run time: :class:`RecordingCfgNode`, a ``CfgNode`` whose every leaf read (attribute, item,
``get``, ``hasattr``) adds the key's dotted name to a set, stands in for the config while the code that consumes a
config runs for a YAML, as ``train_net.py`` would, without data or a real training step:

- ``train_net.setup``: the checks of :mod:`mask2former_sim.config.checks`, the device, ``DATASETS.REGISTER``,
  ``NUM_CLASSES`` from the training set's categories, ``OUTPUT_DIR``, ``SEED``, ``CUDNN_BENCHMARK``;
- ``MaskFormer.from_config`` (backbone, pixel and transformer decoders, supervision, criterion, SIM; the model
  reads its config only there), on the meta device as in tests/test_param_counts.py (shapes only: the COCO models
  build in a fraction of a second);
- the training loader (mapper, augmentations, batch split, workers) and, for each ``DATASETS.TEST`` name, the test
  loader and the evaluator; the loaders are built, not iterated;
- the ``Trainer`` (optimizer, LR scheduler, AMP, checkpointer, hooks) training three iterations of a stand-in model
  (``tests/_engine_fakes.FakeModel``, its first loss non-finite so that the skip path runs) on a stand-in loader,
  on a copy of the config with ``SOLVER.MAX_ITER`` 3 and no test set.

The datasets the configs name are registered, for the duration, to a one-image json with the config's number of
categories (no image is read). Not run: ``tools/``, ``demo/`` and the ``Predictor``, and inference, which reads no
config (the model takes its settings in ``from_config``).

Assertions: every key a YAML sets (its own and its ``_BASE_`` files') is read by its run; only a box or SIM variant
may leave unread the keys it inherits from its fully supervised config (tests/test_configs.py: it is that config
with other supervision keys), and those must be read by that config's run. Every default key is read by a shipped
config's run, by the checks, or by a run of :data:`OPTION_VARIANTS` (options no shipped config selects).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import numpy as np
import pytest
import torch
import yaml
from _engine_fakes import DIM, FakeModel

import train_net
from mask2former_sim.config import CfgNode, check_supported_choices, get_cfg
from mask2former_sim.data import catalog

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
TINY = CONFIGS / "cpu" / "tiny-overfit.yaml"

# Options that no shipped config selects, run on tiny-overfit.yaml so that their keys are seen read.
OPTION_VARIANTS: Dict[str, List[Any]] = {
    "multi_scale mapper with crop": ["INPUT.DATASET_MAPPER_NAME", "multi_scale", "INPUT.CROP.ENABLED", True],
    "SGD": ["SOLVER.OPTIMIZER", "SGD"],
    "WarmupPolyLR": ["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR"],
}


pytestmark = [
    # the offline efficientnet weights copied into a meta-device model (a no-op)
    pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter:UserWarning"),
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),  # the configs' worker counts
    # the stand-in model's first step is skipped (non-finite loss) on purpose
    pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`:UserWarning"),
]

_READS: Set[str] = set()


class RecordingCfgNode(CfgNode):
    """A config node that adds the dotted name of every leaf value read to ``_READS`` (nodes are not recorded).

    ``CfgNode`` builds its children with the caller's class and their key path, so every node of the tree records;
    copies (``clone``) record too.
    """

    def __init__(self, init_dict=None, key_list=None, new_allowed=False):
        super().__init__(init_dict, key_list, new_allowed)
        self.__dict__["_prefix"] = "".join(f"{k}." for k in key_list or [])

    def __getitem__(self, name):
        value = super().__getitem__(name)
        if not isinstance(value, CfgNode):
            _READS.add(self.__dict__.get("_prefix", "") + name)
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default


def _leaf_keys(node: Any, prefix: str = "") -> Set[str]:
    keys = set()
    for name, value in node.items():
        if name == "_BASE_":
            continue
        if isinstance(value, dict):
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _load(path: Path) -> Dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _base_of(path: Path) -> Optional[Path]:
    name = _load(path).get("_BASE_")
    return (path.parent / name).resolve() if name else None


def _chain(path: Path) -> List[Path]:
    """``path`` and its ``_BASE_`` files, nearest first."""
    chain = [path.resolve()]
    while (base := _base_of(chain[-1])) is not None:
        chain.append(base)
    return chain


def _own_keys(path: Path) -> Set[str]:
    """The keys the file itself sets (not its bases)."""
    return _leaf_keys(_load(path))


def _supervision(path: Path) -> str:
    return get_cfg(str(path)).MODEL.MASK_FORMER.SUPERVISION


@contextlib.contextmanager
def _isolated_process_state() -> Iterator[None]:
    """Undo what ``train_net.setup`` does to the process: log handlers, RNG seeds, cuDNN benchmark."""
    package_logger = logging.getLogger("mask2former_sim")
    handlers, level, propagate = list(package_logger.handlers), package_logger.level, package_logger.propagate
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        for handler in package_logger.handlers:
            if handler not in handlers:
                handler.close()
        package_logger.handlers[:] = handlers
        package_logger.setLevel(level)
        package_logger.propagate = propagate
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        torch.backends.cudnn.benchmark = benchmark


def _one_image_json(folder: Path, num_classes: int) -> str:
    path = folder / f"one_image_{num_classes}_classes.json"
    if not path.exists():
        data = {
            "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 20, 20], "iscrowd": 0}],
            "categories": [{"id": i + 1, "name": f"class{i + 1}"} for i in range(num_classes)],
        }
        path.write_text(json.dumps(data))
    return str(path)


def _stand_in_batches(cfg: Any, start_iter: int = 0) -> Iterator[List[Dict[str, Any]]]:
    """Batches for :class:`FakeModel` (reads nothing from the config)."""
    generator = torch.Generator().manual_seed(start_iter)
    while True:
        x = torch.randn(2, DIM, generator=generator)
        yield [{"x": x[i], "y": x[i].sum(), "index": i} for i in range(2)]


def _consume(cfg: CfgNode, folder: Path) -> Set[str]:
    """Run the config's consumers (module docstring) on a recording copy of ``cfg`` with its output and stand-in
    datasets in ``folder``; the keys read."""
    from mask2former_sim.data import build_test_loader, build_train_loader
    from mask2former_sim.engine import Trainer
    from mask2former_sim.modeling import MaskFormer

    folder.mkdir(parents=True)
    plain = cfg.clone()
    plain.OUTPUT_DIR = str(folder / "output")
    plain.MODEL.DEVICE = "cpu"
    gt_json = _one_image_json(folder, plain.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    for name in (*plain.DATASETS.TRAIN, *plain.DATASETS.TEST):
        catalog.register_coco_instances(name, gt_json, str(folder))
    recording = RecordingCfgNode(plain)
    _READS.clear()
    args = argparse.Namespace(config_file="", opts=[], eval_only=False, num_gpus=0, resume=False)
    with pytest.MonkeyPatch.context() as patch, _isolated_process_state():
        patch.setattr(train_net, "get_cfg", lambda *args: recording)
        recording = train_net.setup(args)
        with torch.device("meta"):
            MaskFormer.from_config(recording)
        build_train_loader(recording)
        for name in recording.DATASETS.TEST:
            build_test_loader(recording, name)
            Trainer.build_evaluator(recording, name)
        short = recording.clone()
        short.defrost()
        dict.__setitem__(short.SOLVER, "MAX_ITER", 3)
        dict.__setitem__(short.DATASETS, "TEST", ())
        trainer = Trainer(short, model=FakeModel(nan_at={0}), train_loader_fn=_stand_in_batches)
        trainer.resume_or_load(resume=False)
        trainer.train()
    return set(_READS)


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> Dict[str, Set[str]]:
    """Keys read per shipped YAML (by path), per option variant (by name), and by the checks ("checks")."""
    folder = tmp_path_factory.mktemp("config_keys")
    found: Dict[str, Set[str]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(catalog, "_REGISTRY", dict(catalog._REGISTRY))  # the stand-in datasets are forgotten after
        for i, path in enumerate(ALL_YAML):
            found[str(path)] = _consume(get_cfg(str(path)), folder / f"config{i}")
        for i, (name, overrides) in enumerate(OPTION_VARIANTS.items()):
            found[name] = _consume(get_cfg(str(TINY), overrides), folder / f"variant{i}")
    _READS.clear()
    check_supported_choices(RecordingCfgNode(get_cfg()))
    found["checks"] = set(_READS)
    return found


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_key_a_config_sets_is_read(path, reads):
    chain = _chain(path)
    mode = _supervision(path)
    inherited: Set[str] = set()
    own: Set[str] = set()
    mask_config = None
    for file in chain:
        if mask_config is None and mode != "mask" and _supervision(file) == "mask":
            mask_config = file
        (inherited if mask_config is not None else own).update(_own_keys(file))
    unread = sorted(own - reads[str(path)])
    assert unread == [], f"{path.name} sets keys its run never reads: {unread}"
    if mask_config is not None:
        unread = sorted(inherited - reads[str(path)] - reads[str(mask_config)])
        assert unread == [], f"{path.name} inherits keys from {mask_config.name} that neither run reads: {unread}"


def test_every_default_key_is_read(reads):
    everything = set().union(*reads.values())
    unread = sorted(_leaf_keys(get_cfg()) - everything)
    assert unread == [], f"config keys no shipped config, option variant or check reads: {unread}"


def test_every_option_variant_reads_keys_no_shipped_config_reads(reads):
    shipped = set().union(*(reads[str(path)] for path in ALL_YAML))
    for name in OPTION_VARIANTS:
        assert reads[name] - shipped, f"option variant {name!r} reads nothing new: remove it from OPTION_VARIANTS"


def test_the_recorder_sees_reads_through_attributes_items_get_hasattr_and_clones():
    _READS.clear()
    cfg = RecordingCfgNode(get_cfg())
    assert cfg.SOLVER.BASE_LR > 0 and cfg["TEST"]["EVAL_PERIOD"] >= 0 and cfg.SOLVER.get("MAX_ITER")
    assert hasattr(cfg, "SEED") and cfg.clone().LOG_PERIOD > 0
    assert _READS == {"SOLVER.BASE_LR", "TEST.EVAL_PERIOD", "SOLVER.MAX_ITER", "SEED", "LOG_PERIOD"}
