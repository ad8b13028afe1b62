"""Data: dataset registry, COCO loading and validation, augmentation, mappers, loaders, synthetic data."""

from .build import build_test_loader, build_train_loader, per_process_batch_size
from .catalog import (
    get_dataset_dicts,
    get_metadata,
    list_datasets,
    register_coco_instances,
    register_from_config,
    register_from_string,
    remove_dataset,
)
from .coco import load_coco_json, read_image
from .mapper import InferenceDatasetMapper, InstanceDatasetMapper
from .synthetic import SyntheticConfig, generate_synthetic_dataset

__all__ = [
    "build_test_loader",
    "build_train_loader",
    "per_process_batch_size",
    "get_dataset_dicts",
    "get_metadata",
    "list_datasets",
    "register_coco_instances",
    "register_from_config",
    "register_from_string",
    "remove_dataset",
    "load_coco_json",
    "read_image",
    "InferenceDatasetMapper",
    "InstanceDatasetMapper",
    "SyntheticConfig",
    "generate_synthetic_dataset",
]
