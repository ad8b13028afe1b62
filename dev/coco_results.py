"""Shared by the experiment tools of dev/: their ``--results NAME=JSON`` arguments, and the segm AP of a COCO results
list read by the evaluator's rule (mask2former_sim/evaluation/coco_evaluator.py: AP at the LAST ``maxDets`` entry,
not pycocotools' summary, which reads maxDets 100 whatever the list holds)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any, Dict, List, Sequence

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mask2former_sim.evaluation import average_precision_at

__all__ = ["read_named_results", "results_parser", "named_results", "write_summary", "segm_ap"]


def read_named_results(specs: Sequence[str]) -> Dict[str, List[dict]]:
    """``NAME=JSON`` strings → {NAME: the COCO results list of JSON}."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--results takes NAME=JSON, got {spec!r}")
        with open(path) as f:
            named[name] = json.load(f)
    return named


def results_parser(description: str, gt_help: str = "COCO json with the GT masks") -> argparse.ArgumentParser:
    """The tools' shared arguments: ``--gt``, ``--results NAME=JSON ...`` and ``--json`` (where the summary goes)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gt", required=True, help=gt_help)
    parser.add_argument("--results", nargs="+", required=True, metavar="NAME=JSON", help="COCO results json")
    parser.add_argument("--json", default="", help="write the summary here")
    return parser


def named_results(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Dict[str, List[dict]]:
    """:func:`read_named_results` of ``args.results``; a malformed argument is the parser's usage error."""
    try:
        return read_named_results(args.results)
    except ValueError as exc:
        parser.error(str(exc))


def write_summary(summary: Any, path: str) -> None:
    """The summary as indented json at ``path`` (nothing when empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)


def segm_ap(gt: COCO, results: List[dict], max_dets: Sequence[int] = (1, 10, 100)) -> Dict[str, float]:
    """AP, AP50, AP75 (percent) of a COCO results list against ``gt``, at the last of ``max_dets`` (ascending)."""
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        # copies without their boxes: loadRes writes area, bbox and id into the dicts it gets, and a box on the first
        # result makes it read every result as a box (area from the box, KeyError where a box is missing)
        masks_only = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        evaluator = COCOeval(gt, gt.loadRes(masks_only), "segm")
        evaluator.params.maxDets = [int(m) for m in max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    return {
        name: 100 * average_precision_at(evaluator, iou, "all")
        for name, iou in (("AP", None), ("AP50", 0.5), ("AP75", 0.75))
    }
