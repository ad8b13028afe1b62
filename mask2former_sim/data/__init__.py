"""Data: dataset registry, COCO loading and validation, augmentation, mappers, loaders, synthetic data.

Exports resolve lazily, so ``tools/make_synthetic_dataset.py`` and the registry work without importing torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "build_test_loader": "build",
    "build_train_loader": "build",
    "per_process_batch_size": "build",
    "get_dataset_dicts": "catalog",
    "get_metadata": "catalog",
    "is_registered": "catalog",
    "list_datasets": "catalog",
    "register_coco_instances": "catalog",
    "register_from_config": "catalog",
    "register_from_string": "catalog",
    "remove_dataset": "catalog",
    "load_coco_json": "coco",
    "read_image": "coco",
    "InferenceDatasetMapper": "mapper",
    "InstanceDatasetMapper": "mapper",
    "SyntheticConfig": "synthetic",
    "generate_synthetic_dataset": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mask2former_sim.data' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
