"""COCO evaluation (pycocotools) and the inference loop over a test loader."""

from .coco_evaluator import COCOEvaluator, average_precision_at, instances_to_coco_results
from .evaluator import format_results_table, format_table, inference_on_dataset, print_csv_format

__all__ = [
    "COCOEvaluator",
    "average_precision_at",
    "format_results_table",
    "format_table",
    "inference_on_dataset",
    "instances_to_coco_results",
    "print_csv_format",
]
