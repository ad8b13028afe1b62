#!/usr/bin/env python
"""What training and inference cost for a config, measured in one process, with ratios against a baseline.

    python tools/benchmark.py --config-file configs/cpu/m2f_nuclei_lite0.yaml --compare-transformers
    python tools/benchmark.py --config-file configs/cpu/sim_m2f_nuclei_lite0.yaml --modes box sim --device cuda
    python tools/benchmark.py --config-file configs/cpu/m2f_nuclei_lite0.yaml --scaling --output-dir docs/bench

Sections (each prints a markdown table; all are written to ``<output-dir>/benchmark.{json,md}``):

- **training step** per supervision mode (``--modes``): the median time of a step on prefetched batches after
  ``--warmup`` steps, then the same steps again under ``torch.profiler``, each stage's time read from the ``m2f::``
  range the code runs it in (:mod:`mask2former_sim.utils.profiling`; exclusive of the stages nested in it; on CUDA
  the larger of its host time and its kernels' span on the GPU timeline): backbone, pixel decoder, transformer
  decoder, Hungarian matching, losses, backward, optimizer, box targets; SIM: teacher forward, pseudo masks,
  prototypes, teacher EMA, copy-paste, bank push, paste targets; "other" is the rest of the profiled step. Peak
  memory: CPU RSS (VmHWM, reset per mode) and CUDA max allocated. SIM's and the pairwise term's START_ITER are set
  to 0 (the schedule rule off) so that every loss is on in every timed step. Ratios: every mode against the first.
- **data loading**: the real loader with the config's workers inside the trainer loop; the share of the step
  spent waiting for a batch.
- **inference**: seconds per test image (``DATASETS.TEST[0]``, ``--inference-images`` images, test-time
  resize of the config) with the config's sliding window and without it; ``--weights`` loads a trained
  checkpoint (random init keeps every query, which the score threshold of a trained model would drop).
- **against a commit** (``--baseline-ref REV``): the training step of every ``--modes`` mode in this tree and in
  commit REV of this repository (``git archive`` into a temporary folder), each in its own process that imports
  its own ``mask2former_sim`` and sets the process up as its ``train_net.py`` does, alternated step by step on the
  same batches; per-pair ratios and their median.
- **evaluation** (``--evaluation``): where one COCO evaluation's time goes, per test image: reading and resizing
  the image, the network, post-processing (the kept detections brought to the image size, thresholded, scored,
  boxed), RLE encoding, and pycocotools' evaluation of all images at the end (``--inference-images`` images).
- **profile** (``--profile N``): ``torch.profiler`` over N training steps of every mode and over the evaluation of
  one test image: the operators by self time, with their input shapes.
- **transformers** (``--compare-transformers``, mask mode): the same training step (same batches, forward, loss,
  backward, clipping, AdamW) of Hugging Face transformers' ``Mask2FormerForUniversalSegmentation`` built from
  an equivalent config with random weights (the config's timm backbone, widths, layers, queries, points),
  alternated step by step with our mask step (per-pair ratios and their median; the machine's drift within a
  run would otherwise decide the ratio).
- **inference against transformers** (``--transformers-inference SIZE ...``): the demo's predictor against
  transformers' image processor, model and ``post_process_instance_segmentation`` with the same weights (carried
  over through the official names), alternated image by image on ``--inference-images`` photos of the test set,
  at each test size; per-image ratios and their median.
- **scaling** (``--scaling``): step time and peak memory against the GT instances per image (1 → 300
  nuclei-like discs) and the image size (256 → 1024), and inference time against the image size up to
  4000×3000; a table and ``scaling.png``.
- **network forward** (``--forward SIZE``): the median time of the backbone → pixel decoder → transformer decoder
  forward on one random SIZE×SIZE image (random weights, eval mode, no gradient).
- **deformable attention** (``--msda``): the compiled kernels against the PyTorch path (forward, forward +
  backward, peak memory): on CUDA the op at Mask2Former's R50 encoder shapes at 1024×1024, on the CPU the CPU
  kernels at the cats recipe's encoder shapes (batch 8, 256-px input).

``--smoke`` runs every section on one step / image at small sizes (the CI check that the tool works); ``--modes``
with no mode skips the training section.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from mask2former_sim.config import get_cfg
from mask2former_sim.data import build_train_loader, get_dataset_dicts, register_from_config
from mask2former_sim.engine.trainer import Trainer

MODES = ("mask", "box", "sim")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TAG = "@benchmark-worker "  # prefixes the step worker's replies on its stdout (logging may share it)
DETECTIONS = 100  # detections per image in the inference scaling (Mask2Former's default TEST.DETECTIONS_PER_IMAGE)


# --------------------------------------------------------------------------------------------- measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Reset the process's peak RSS (Linux ``clear_refs``) and CUDA's peak allocation."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> Dict[str, Optional[float]]:
    """Peak RSS since the last reset (VmHWM) and CUDA's max allocated, in MB."""
    rss = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024.0
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"rss_mb": rss, "cuda_mb": cuda}


def exclusive_stage_seconds(ranges: Iterable[Tuple[str, float, float, Any]]) -> Dict[str, float]:
    """Seconds per stage name over ``ranges``, each range exclusive of the ranges nested in it.

    Args:
        ranges: ``(name, start_us, end_us, track)`` of every stage range; a range nests in the innermost earlier
            range of the same track (thread, CUDA stream) that contains its start, and is charged to itself only,
            its caller keeping the rest (matching inside the criterion would count once).
    """
    seconds: Dict[str, float] = defaultdict(float)
    by_track: Dict[Any, List[Tuple[float, float, str]]] = defaultdict(list)
    for name, start, end, track in ranges:
        by_track[track].append((start, -end, name))
    for items in by_track.values():
        open_ranges: List[Tuple[float, str]] = []  # (end, name) of the ranges around the current one
        for start, negative_end, name in sorted(items):
            end = -negative_end
            while open_ranges and open_ranges[-1][0] <= start:
                open_ranges.pop()
            seconds[name] += (end - start) / 1e6
            if open_ranges:
                parent_end, parent = open_ranges[-1]
                seconds[parent] -= (min(end, parent_end) - start) / 1e6
            open_ranges.append((end, name))
    return dict(seconds)


def profiled_stage_seconds(events: Iterable[Any]) -> Dict[str, float]:
    """Exclusive seconds per stage from a ``torch.profiler`` run's events: the ``m2f::`` ranges of the code
    (:mod:`mask2former_sim.utils.profiling`). On CUDA a stage counts the larger of its host time and the span of its
    kernels on the GPU timeline (the profiler's device-side copy of the range), each exclusive of nested stages."""
    from torch.autograd import DeviceType

    from mask2former_sim.utils.profiling import STAGE_PREFIX  # here: a --baseline-ref worker's tree may lack it

    timelines: Dict[str, List[Tuple[str, float, float, Any]]] = {"host": [], "device": []}
    for e in events:
        if e.name.startswith(STAGE_PREFIX):
            timeline = "host" if e.device_type == DeviceType.CPU else "device"
            track = (e.device_type, e.device_index, e.thread)
            timelines[timeline].append((e.name[len(STAGE_PREFIX) :], e.time_range.start, e.time_range.end, track))
    host, device = (exclusive_stage_seconds(timelines[t]) for t in ("host", "device"))
    return {name: max(host.get(name, 0.0), device.get(name, 0.0)) for name in {*host, *device}}


def schedule_rule_off() -> List[str]:
    """The override that turns the schedule rule off (SIM's and the pairwise start are forced to 0 here), in a tree
    that has it (a ``--baseline-ref`` commit may not)."""
    return ["SOLVER.SCHEDULE.ENABLED", "False"] if "SCHEDULE" in get_cfg().SOLVER else []


def mode_cfg(config_file: str, mode: str, device: str, opts: Sequence[str]):
    return get_cfg(
        config_file,
        [
            "MODEL.MASK_FORMER.SUPERVISION",
            mode,
            "MODEL.DEVICE",
            device,
            *schedule_rule_off(),
            "MODEL.SIM.START_ITER",
            "0",
            "MODEL.BOXINST.PAIRWISE.START_ITER",
            "0",
            "OUTPUT_DIR",
            "",
            "LOG_PERIOD",
            "0",
            "DATALOADER.NUM_WORKERS",
            "0",
            "LOGGER.TENSORBOARD",
            "False",
            *opts,
        ],
    )


def prefetch(cfg, count: int) -> List[Any]:
    register_from_config(cfg)
    return list(itertools.islice(iter(build_train_loader(cfg)), count))


# --------------------------------------------------------------------------------------------- sections
def training_stepper(cfg, batches: List[Any]) -> Tuple[Trainer, Callable[[], float]]:
    """A trainer of ``cfg`` cycling ``batches`` and a function that runs one timed step of it (seconds)."""
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer._data_iter = itertools.cycle(batches)  # what train() would set, minus the loader
    trainer.model.train()
    device = trainer.device
    # part of SIM's step; by name: a --baseline-ref worker's tree defines the class elsewhere
    teacher_hooks = [hook for hook in trainer.hooks if type(hook).__name__ == "EMATeacherHook"]
    for hook in teacher_hooks:
        hook.before_train()
    # statistics off, as on the iterations that do not log (all but one in LOG_PERIOD); a tree without the switch
    # (--baseline-ref) measures them at every step
    set_statistics_due = getattr(getattr(trainer.model, "supervision", None), "set_statistics_due", None)
    if set_statistics_due is not None:
        set_statistics_due(False)

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        trainer.run_step()
        for hook in teacher_hooks:
            hook.after_step()
        synchronize(device)
        trainer.iter += 1
        return time.perf_counter() - start

    return trainer, step


def time_training(cfg, batches: List[Any], warmup: int, steps: int) -> Dict[str, Any]:
    """Plain median step seconds, per-stage mean seconds and peak memory of one supervision mode."""
    trainer, step = training_stepper(cfg, batches)
    device = trainer.device
    for _ in range(warmup):
        step()
    reset_peak_memory(device)
    plain = statistics.median(step() for _ in range(steps))
    memory = peak_memory_mb(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        total = sum(step() for _ in range(steps))
    stages = {name: seconds / steps for name, seconds in profiled_stage_seconds(prof.events()).items()}
    stages["other (targets, Python)"] = total / steps - sum(stages.values())
    return {"plain_s": plain, "instrumented_s": total / steps, "stages_s": stages, **memory}


def time_ab(
    config_file: str,
    mode: str,
    device: str,
    opts: Sequence[str],
    ab_opts: Sequence[str],
    batches: List[Any],
    warmup: int,
    steps: int,
    reps: int,
) -> Dict[str, Any]:
    """Median training step of the config as it is (A) and with ``ab_opts`` on top (B), alternating A B ``reps``
    times on the same batches, so that drift of the machine hits both alike."""
    out: Dict[str, Any] = {"mode": mode, "overrides": list(ab_opts), "A_s": [], "B_s": []}
    for _ in range(reps):
        for key, extra in (("A_s", []), ("B_s", list(ab_opts))):
            _, step = training_stepper(mode_cfg(config_file, mode, device, [*opts, *extra]), batches)
            for _ in range(warmup):
                step()
            out[key].append(statistics.median(step() for _ in range(steps)))
    out["ratio"] = statistics.median(out["B_s"]) / statistics.median(out["A_s"])
    return out


def retain_freed_memory_if_present() -> bool:
    """What ``train_net.py`` does to the process in the tree this process imports (nothing in trees before it)."""
    if importlib.util.find_spec("mask2former_sim.utils.memory") is None:
        return False
    from mask2former_sim.utils.memory import retain_freed_memory

    return retain_freed_memory()


def step_worker(config_file: str, mode: str, device: str, opts: Sequence[str], num_batches: int) -> None:
    """Serve training steps on stdin: one line ``step`` → one reply with its seconds (``--step-worker``)."""
    retain_freed_memory_if_present()
    cfg = mode_cfg(config_file, mode, device, opts)
    _, step = training_stepper(cfg, prefetch(cfg, num_batches))
    print(WORKER_TAG + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        print(WORKER_TAG + json.dumps({"seconds": step()}), flush=True)


class StepWorker:
    """A :func:`step_worker` process importing the ``mask2former_sim`` of ``tree``."""

    def __init__(self, tree: str, config_file: str, mode: str, device: str, opts: Sequence[str], batches: int):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        # the data sets of this checkout, wherever the tree lies
        from mask2former_sim.data import catalog

        env.setdefault("M2F_SIM_SHARED_DATA", os.path.abspath(catalog.shared_data_root()))
        env.setdefault("M2F_SIM_DATASETS", os.path.abspath(catalog.generated_datasets_root()))
        command = [sys.executable, os.path.abspath(__file__), "--step-worker", "--config-file", config_file]
        command += ["--modes", mode, "--device", device, "--batches", str(batches), "--opts", *opts]
        self.process = subprocess.Popen(
            command, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._reply()

    def _reply(self) -> Dict[str, Any]:
        for line in self.process.stdout:
            if line.startswith(WORKER_TAG):
                return json.loads(line[len(WORKER_TAG) :])
        raise RuntimeError(f"the benchmark step worker exited with status {self.process.wait()}")

    def step(self) -> float:
        self.process.stdin.write("step\n")
        return float(self._reply()["seconds"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.wait()


def export_tree(ref: str, destination: str) -> str:
    """Commit ``ref`` of this repository, written into ``destination`` (``git archive``); its full hash."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"--baseline-ref {ref!r} is not a commit of {REPO_ROOT}: {commit.stderr.strip()}")
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO_ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return commit.stdout.strip()


def time_against_ref(
    ref: str,
    config_file: str,
    modes: Sequence[str],
    device: str,
    opts: Sequence[str],
    batches: int,
    warmup: int,
    steps: int,
) -> Dict[str, Any]:
    """Per mode, the training step of commit ``ref`` and of this tree alternated step by step (:class:`StepWorker`)."""
    out: Dict[str, Any] = {"ref": ref, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="benchmark-baseline-") as tree:
        out["commit"] = export_tree(ref, tree)
        for mode in modes:
            workers = [StepWorker(t, config_file, mode, device, opts, batches) for t in (tree, REPO_ROOT)]
            try:
                for _ in range(warmup):
                    for worker in workers:
                        worker.step()
                pairs = [tuple(worker.step() for worker in workers) for _ in range(steps)]
            finally:
                for worker in workers:
                    worker.close()
            ratios = [mine / base for base, mine in pairs]
            out["modes"][mode] = {
                "pairs_s": pairs,
                "baseline_s": statistics.median(p[0] for p in pairs),
                "this_s": statistics.median(p[1] for p in pairs),
                "ratio": statistics.median(ratios),
            }
    return out


def against_ref_table(result: Dict[str, Any]) -> str:
    lines = []
    for mode, r in result["modes"].items():
        lines += [
            f"{mode} step, commit `{result['commit'][:7]}` and this tree alternated {len(r['pairs_s'])} times:",
            "",
            f"| | `{result['commit'][:7]}` (ms) | this tree (ms) | this / `{result['commit'][:7]}` |",
            "|---|---|---|---|",
        ]
        lines += [f"| pair {i + 1} | {_ms(b)} | {_ms(m)} | {m / b:.2f}x |" for i, (b, m) in enumerate(r["pairs_s"])]
        lines += [
            f"| **median** | **{_ms(r['baseline_s'])}** | **{_ms(r['this_s'])}** | **{r['ratio']:.2f}x** "
            f"({1 / r['ratio']:.2f}x faster) |",
            "",
        ]
    return "\n".join(lines)


def time_data_loading(config_file: str, mode: str, device: str, opts: Sequence[str], steps: int) -> Dict[str, float]:
    """Median step and data-wait seconds of the real trainer loop with the config's loader workers."""
    cfg = get_cfg(
        config_file,
        [
            "MODEL.MASK_FORMER.SUPERVISION",
            mode,
            "MODEL.DEVICE",
            device,
            *schedule_rule_off(),
            "MODEL.SIM.START_ITER",
            "0",
            "DATASETS.TEST",
            "()",
            "SOLVER.MAX_ITER",
            str(steps + 2),
            "SOLVER.CHECKPOINT_PERIOD",
            "0",
            "LOG_PERIOD",
            str(steps),
            "LOGGER.TENSORBOARD",
            "False",
            *opts,
        ],
    )
    register_from_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.OUTPUT_DIR = tmp
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        iters = list(trainer.progress.iter_time.values)[-steps:]
        waits = list(trainer.progress.data_time.values)[-steps:]
    step, wait = statistics.median(iters), statistics.median(waits)
    return {"workers": cfg.DATALOADER.NUM_WORKERS, "step_s": step, "data_s": wait, "data_share": wait / step}


def time_inference(
    config_file: str, device: str, opts: Sequence[str], num_images: int, weights: str = ""
) -> Dict[str, Any]:
    """Seconds per test image with the config's sliding window and without (same test-time resize); with
    ``weights`` (a trained checkpoint) the model predicts what it was trained to, not random-init queries."""
    from mask2former_sim.data.mapper import InferenceDatasetMapper
    from mask2former_sim.engine import load_model_weights
    from mask2former_sim.modeling import build_model

    cfg = get_cfg(config_file, ["MODEL.DEVICE", device, *opts])
    register_from_config(cfg)
    dicts = get_dataset_dicts(cfg.DATASETS.TEST[0])[:num_images]
    mapper = InferenceDatasetMapper.from_config(cfg)
    inputs = [mapper(d) for d in dicts]
    results = {"images": len(inputs), "dataset": cfg.DATASETS.TEST[0], "weights": weights or "random init"}
    variants = (
        [("sliding window", True), ("whole image", False)]
        if cfg.TEST.SLIDING_WINDOW.ENABLED
        else [("whole image", False)]
    )
    for name, sliding in variants:
        cfg.defrost()
        cfg.TEST.SLIDING_WINDOW.ENABLED = sliding
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        if weights:
            load_model_weights(model, weights)
        model.predict([inputs[0]])  # warm-up
        synchronize(torch.device(device))
        start = time.perf_counter()
        for x in inputs:
            model.predict([x])
        synchronize(torch.device(device))
        results[name] = (time.perf_counter() - start) / len(inputs)
    return results


def time_evaluation(
    config_file: str, device: str, opts: Sequence[str], num_images: int, weights: str = ""
) -> Dict[str, Any]:
    """Milliseconds per test image of each stage of ``train_net.py --eval-only`` (mapper, network, post-processing,
    RLE encoding) and the seconds of pycocotools' evaluation of them all, through the public functions."""
    from mask2former_sim.data.mapper import InferenceDatasetMapper
    from mask2former_sim.engine import load_model_weights
    from mask2former_sim.evaluation import COCOEvaluator
    from mask2former_sim.modeling import build_model
    from mask2former_sim.modeling.postprocessing import instances_at_size, topk_queries

    cfg = get_cfg(config_file, ["MODEL.DEVICE", device, *opts])
    register_from_config(cfg)
    dataset = cfg.DATASETS.TEST[0]
    dicts = get_dataset_dicts(dataset)[:num_images]
    mapper = InferenceDatasetMapper.from_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if weights:
        load_model_weights(model, weights)
    evaluator = COCOEvaluator.from_config(cfg, dataset)
    evaluator.reset()
    seconds: Dict[str, float] = defaultdict(float)
    dev = torch.device(device)

    def clock(stage: str, start: float) -> float:
        synchronize(dev)
        now = time.perf_counter()
        seconds[stage] += now - start
        return now

    with torch.inference_mode():
        model.inference([mapper(dicts[0])])  # warm-up
        for d in dicts:
            start = time.perf_counter()
            x = mapper(d)
            start = clock("read and resize the image", start)
            images, sizes = model.preprocess_images([x])
            outputs = model.forward_network(images, all_heads=False)
            start = clock("network", start)
            scores, labels, queries = topk_queries(outputs["pred_logits"][0], model.test_topk)
            instances = instances_at_size(
                outputs["pred_masks"][0][queries],
                scores,
                labels,
                tuple(images.shape[-2:]),
                sizes[0],
                (int(x["height"]), int(x["width"])),
            )
            start = clock("post-processing", start)
            evaluator.process([x], [{"instances": instances}])  # RLE encoding into COCO results
            clock("RLE encoding", start)
    start = time.perf_counter()
    metrics = evaluator.evaluate()
    out: Dict[str, Any] = {"images": len(dicts), "dataset": dataset, "weights": weights or "random init"}
    out["ms_per_image"] = {k: 1000.0 * v / len(dicts) for k, v in seconds.items()}
    out["cocoeval_s"] = time.perf_counter() - start
    out["segm_AP"] = metrics.get("segm", {}).get("AP")
    out["test_size"] = cfg.INPUT.MIN_SIZE_TEST
    return out


def evaluation_table(result: Dict[str, Any]) -> str:
    stages = result["ms_per_image"]
    total = sum(stages.values())
    lines = [
        f"{result['images']} images of `{result['dataset']}` at test size {result['test_size']} "
        f"({result['weights']}; segm AP {result['segm_AP']}):",
        "",
        "| stage | ms / image | share |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} | {100 * v / total:.0f}% |" for k, v in stages.items()]
    lines += [
        f"| **per image** | **{total:.1f}** | |",
        f"| pycocotools (all images, s) | {result['cocoeval_s']:.2f} | |",
    ]
    return "\n".join(lines)


def profile_operators(run: Callable[[], Any], repeats: int, top: int = 15) -> List[Dict[str, Any]]:
    """The ``top`` operators by self CPU time over ``repeats`` calls of ``run`` (ms per call, calls per call); the
    code's ``m2f::`` stage ranges are not operators and are left out."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            run()
    from mask2former_sim.utils.profiling import STAGE_PREFIX  # as in profiled_stage_seconds

    operators = [e for e in prof.key_averages(group_by_input_shape=True) if not e.key.startswith(STAGE_PREFIX)]
    events = sorted(operators, key=lambda e: -e.self_cpu_time_total)[:top]
    return [
        {
            "operator": e.key,
            "shapes": str(e.input_shapes),
            "ms": e.self_cpu_time_total / 1000.0 / repeats,
            "calls": e.count / repeats,
        }
        for e in events
    ]


def profile_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| operator | input shapes | self ms | calls |", "|---|---|---|---|"]
    for r in rows:
        shapes = r["shapes"].replace("[], ", "").replace(", []", "")[:90]
        lines.append(f"| {r['operator']} | {shapes} | {r['ms']:.1f} | {r['calls']:.0f} |")
    return "\n".join(lines)


def profile_sections(args: argparse.Namespace, batches: List[Any]) -> Dict[str, Any]:
    """``--profile``: the operators of every mode's training step and of one test image's evaluation."""
    from mask2former_sim.data.mapper import InferenceDatasetMapper
    from mask2former_sim.engine import load_model_weights
    from mask2former_sim.evaluation.coco_evaluator import instances_to_coco_results
    from mask2former_sim.modeling import build_model

    out: Dict[str, Any] = {}
    for mode in args.modes:
        _, step = training_stepper(mode_cfg(args.config_file, mode, args.device, args.opts), batches)
        for _ in range(max(args.warmup, 1)):
            step()
        out[f"{mode} training step"] = profile_operators(step, args.profile)
    cfg = get_cfg(args.config_file, ["MODEL.DEVICE", args.device, *args.opts])
    register_from_config(cfg)
    x = InferenceDatasetMapper.from_config(cfg)(get_dataset_dicts(cfg.DATASETS.TEST[0])[0])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        load_model_weights(model, args.weights)

    def evaluate_one() -> None:
        (result,) = model.predict([x])
        instances_to_coco_results(result["instances"], 0, {k: k for k in range(model.num_classes)})

    evaluate_one()
    out["evaluation of one test image"] = profile_operators(evaluate_one, max(args.profile, 1))
    return out


def transformers_model(cfg) -> torch.nn.Module:
    """Hugging Face transformers' Mask2Former of the network of ``cfg`` (:func:`transformers_config`), random
    weights."""
    from transformers import Mask2FormerForUniversalSegmentation

    from mask2former_sim.interop.transformers import transformers_config

    return Mask2FormerForUniversalSegmentation(transformers_config(cfg))


def time_transformers(cfg, batches: List[Any], warmup: int, steps: int) -> Dict[str, Any]:
    """Transformers' Mask2Former training step against ours (mask supervision) on the same batches, the two
    alternated step by step so that drift of the machine hits both alike; then transformers' peak memory alone."""
    import transformers

    transformers.logging.set_verbosity_error()
    ours_trainer, ours_step = training_stepper(cfg, batches)
    torch.manual_seed(0)
    device = torch.device(cfg.MODEL.DEVICE)
    model = transformers_model(cfg).to(device).train()
    ours = ours_trainer.model  # its preprocessing and targets, so both models see the same tensors
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    prepared = []
    for batch in batches:
        images, _ = ours.preprocess_images(batch)
        targets = ours.supervision.build_targets(batch, tuple(images.shape[-2:]), ours.device, ours.num_classes, 0)
        prepared.append((images, [t["masks"].float() for t in targets], [t["labels"] for t in targets]))
    cycle = itertools.cycle(prepared)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    ours_params = sum(p.numel() for p in ours.parameters() if p.requires_grad) / 1e6
    del ours

    def step() -> float:
        images, masks, labels = next(cycle)
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, enabled=bool(cfg.SOLVER.AMP.ENABLED) and device.type == "cuda"):
            loss = model(pixel_values=images, mask_labels=masks, class_labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        ours_step()
        step()
    pairs = [(ours_step(), step()) for _ in range(steps)]
    del ours_trainer, ours_step
    gc.collect()
    reset_peak_memory(device)
    step()
    return {
        "plain_s": statistics.median(theirs for _, theirs in pairs),
        "ours_s": statistics.median(mine for mine, _ in pairs),
        "ratio": statistics.median(mine / theirs for mine, theirs in pairs),
        "pairs_s": pairs,
        "params_m": params,
        "ours_params_m": ours_params,
        **peak_memory_mb(device),
    }


def nuclei_like_batch(
    batch_size: int, size: int, instances: int, seed: int = 0, with_masks: bool = True
) -> List[Dict[str, Any]]:
    """Training inputs of random textured images with ``instances`` random discs (radius 3-8 px) each; each disc
    is drawn in its own bounding square (a 4000-px image with 200 discs stays 48 MB); ``with_masks`` False leaves
    ``gt_masks`` empty (inference inputs)."""
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(batch_size):
        centres = rng.uniform(8, size - 8, size=(instances, 2))
        radii = rng.uniform(3, 8, size=instances)
        image = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
        masks = np.zeros((instances if with_masks else 0, size, size), dtype=bool)
        foreground = np.zeros((size, size), dtype=bool)
        for k, ((cy, cx), r) in enumerate(zip(centres, radii)):
            y1, y2 = int(max(cy - r, 0)), int(min(cy + r, size - 1)) + 1
            x1, x2 = int(max(cx - r, 0)), int(min(cx + r, size - 1)) + 1
            ys, xs = np.mgrid[y1:y2, x1:x2]
            disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
            foreground[y1:y2, x1:x2] |= disc
            if with_masks:
                masks[k, y1:y2, x1:x2] = disc
        image[foreground] += 120
        boxes = np.stack(
            [centres[:, 1] - radii, centres[:, 0] - radii, centres[:, 1] + radii, centres[:, 0] + radii], 1
        ).clip(0, size)
        batch.append(
            {
                "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "padding_mask": torch.zeros(size, size, dtype=torch.bool),
                "height": size,
                "width": size,
                "instances": {
                    "gt_boxes": torch.from_numpy(boxes).float(),
                    "gt_classes": torch.zeros(instances, dtype=torch.int64),
                    "gt_masks": torch.from_numpy(masks),
                },
            }
        )
    return batch


def time_scaling(
    config_file: str,
    mode: str,
    device: str,
    opts: Sequence[str],
    instances: Sequence[int],
    sizes: Sequence[int],
    inference_sizes: Sequence[Tuple[int, int]],
    batch_size: int,
    warmup: int,
    steps: int,
    weights: str = "",
) -> Dict[str, Any]:
    """Step time and peak memory against instances and image size; inference time against image size."""
    from mask2former_sim import Predictor

    cfg = mode_cfg(config_file, mode, device, opts)
    base = cfg.INPUT.IMAGE_SIZE
    out: Dict[str, Any] = {"mode": mode, "batch": batch_size, "instances": {}, "size": {}, "inference": {}}
    # inference first, so that its peak RSS is not the memory the training steps left allocated; at most
    # DETECTIONS dense (H, W) masks come back per image (1000 of them at 4000x3000 would be 12 GB of output)
    predictor_cfg = get_cfg(
        config_file,
        ["MODEL.DEVICE", device, "MODEL.WEIGHTS", weights, *opts, "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS)],
    )
    predictor = Predictor(predictor_cfg)
    for k, (width, height) in enumerate(inference_sizes):
        square = nuclei_like_batch(1, max(width, height), 200, with_masks=False)[0]["image"]
        image = square.permute(1, 2, 0).numpy()[:height, :width]
        image = np.ascontiguousarray(image)
        if k == 0:
            predictor(image, 0.5)  # warm-up
        reset_peak_memory(torch.device(device))
        start = time.perf_counter()
        found = predictor(image, 0.5)
        out["inference"][f"{width}x{height}"] = {
            "seconds": time.perf_counter() - start,
            "instances": len(found["scores"]),
            **peak_memory_mb(torch.device(device)),
        }
        print(f"scaling: inference {width}x{height}, {out['inference'][f'{width}x{height}']}", flush=True)
    for key, value, size, count in [("instances", n, base, n) for n in instances] + [("size", z, z, 30) for z in sizes]:
        r = time_training(cfg, [nuclei_like_batch(batch_size, size, count, seed=k) for k in range(2)], warmup, steps)
        out[key][value] = {k: r[k] for k in ("stages_s", "rss_mb", "cuda_mb")} | {"step_s": r["plain_s"]}
        print(
            f"scaling: {size} px, {count} instances: step {r['plain_s']:.2f} s, peak RSS {r['rss_mb']} MB", flush=True
        )
    return out


def time_forward(config_file: str, device: str, opts: Sequence[str], size: int, warmup: int, repeats: int) -> Dict:
    """Median seconds of the network forward (``forward_network``) on one random image, and the parameters."""
    from mask2former_sim.modeling import build_model

    torch.manual_seed(0)
    model = build_model(get_cfg(config_file, ["MODEL.DEVICE", device, *opts])).eval()
    images = torch.randn(1, 3, size, size, device=device)
    times = []
    with torch.no_grad():
        for k in range(warmup + repeats):
            synchronize(torch.device(device))
            start = time.perf_counter()
            model.forward_network(images)
            synchronize(torch.device(device))
            if k >= warmup:
                times.append(time.perf_counter() - start)
    return {
        "size": size,
        "seconds": statistics.median(times),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def time_msda(device: torch.device, warmup: int, iters: int, smoke: bool) -> Dict[str, Any]:
    """The compiled deformable-attention kernels (the CUDA op on CUDA, the CPU kernels on the CPU) against the
    PyTorch path (forward, forward + backward, peak memory); on the CPU at the cats recipe's shapes (256-px input,
    levels 32, 16, 8)."""
    from mask2former_sim.layers import ms_deform_attn_cpu, ms_deform_attn_cuda
    from mask2former_sim.layers.ms_deform_attn import ms_deform_attn_pytorch

    if smoke:
        shapes = [(16, 16), (8, 8), (4, 4)]
    else:
        shapes = [(128, 128), (64, 64), (32, 32)] if device.type == "cuda" else [(32, 32), (16, 16), (8, 8)]
    g = torch.Generator().manual_seed(0)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    batch, heads = (2, 8) if device.type == "cuda" else (8, 4)  # R50 at 1024 px; the CPU configs' encoder at batch 8
    total, channels, levels, points = int(areas.sum()), 32, len(shapes), 4
    value = torch.randn(batch, total, heads, channels, generator=g).to(device)
    loc = torch.rand(batch, total, heads, levels, points, 2, generator=g).to(device)
    weights = (
        torch.rand(batch, total, heads, levels * points, generator=g)
        .softmax(-1)
        .view(batch, total, heads, levels, points)
        .to(device)
    )
    spatial, starts = spatial.to(device), starts.to(device)
    impls = {"pytorch": ms_deform_attn_pytorch}
    if device.type == "cuda" and ms_deform_attn_cuda.is_available():
        impls["op"] = lambda v, s, i, lo, a: ms_deform_attn_cuda.MSDeformAttnFunction.apply(v, s, i, lo, a, 128)
    if device.type == "cpu" and ms_deform_attn_cpu.is_available():
        impls["cpu kernels"] = ms_deform_attn_cpu.MSDeformAttnCPUFunction.apply
    out: Dict[str, Any] = {"shapes": shapes, "S": total}
    for name, impl in impls.items():
        leaves = [t.detach().requires_grad_(True) for t in (value, loc, weights)]

        def forward(impl=impl):
            with torch.no_grad():
                impl(value, spatial, starts, loc, weights)

        def forward_backward(impl=impl, leaves=leaves):
            impl(leaves[0], spatial, starts, leaves[1], leaves[2]).sum().backward()

        for pass_name, fn in (("forward", forward), ("forward+backward", forward_backward)):
            for _ in range(warmup):
                fn()
            reset_peak_memory(device)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            synchronize(device)
            out[f"{name} {pass_name} ms"] = (time.perf_counter() - start) * 1000.0 / iters
            out[f"{name} {pass_name} peak MB"] = peak_memory_mb(device)["cuda_mb"]
    return out


# --------------------------------------------------------------------------------------------- reporting
def time_transformers_inference(
    config_file: str, device: str, opts: Sequence[str], num_images: int, weights: str, sizes: Sequence[int]
) -> Dict[str, Any]:
    """Our inference against transformers' on the same photos with the same weights, alternated image by image.

    Ours: the demo's :class:`~mask2former_sim.predictor.Predictor` (test resize, the network, Mask2Former's
    post-processing to the image size). Theirs: ``Mask2FormerImageProcessor`` (the exported settings), the model,
    ``post_process_instance_segmentation`` to the image size. Both keep the instances scoring at least 0.5 with
    ``weights`` (a trained model), every one without (random weights score low). Per test size (shortest and longest
    edge ``size``): seconds per image of each (median) and the median of the per-image ratios.
    """
    import transformers
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    from mask2former_sim.data.coco import read_image
    from mask2former_sim.interop.official import to_official
    from mask2former_sim.interop.transformers import (
        image_processor_kwargs,
        official_to_transformers,
        transformers_config,
    )
    from mask2former_sim.predictor import Predictor

    transformers.logging.set_verbosity_error()
    threshold = 0.5 if weights else 0.0
    results: Dict[str, Any] = {"threshold": threshold, "weights": weights or "random init", "sizes": {}}
    for size in sizes:
        size_opts = ["INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size), "INPUT.TEST_SCALE", "0.0"]
        cfg = get_cfg(config_file, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", weights, *opts, *size_opts])
        register_from_config(cfg)
        torch.manual_seed(0)
        ours = Predictor(cfg)
        hf_config = transformers_config(cfg)
        theirs = Mask2FormerForUniversalSegmentation(hf_config).to(device).eval()
        theirs.load_state_dict(official_to_transformers(to_official(ours.model.state_dict(), ours.model), hf_config))
        processor = Mask2FormerImageProcessor(**image_processor_kwargs(cfg))
        dicts = get_dataset_dicts(cfg.DATASETS.TEST[0])[: num_images + 1]
        images = [read_image(d["file_name"]) for d in dicts]

        def run_ours(image):
            ours(image, score_threshold=threshold)

        def run_theirs(image):
            with torch.inference_mode():
                inputs = processor(images=image, return_tensors="pt").to(device)
                outputs = theirs(pixel_values=inputs["pixel_values"])
                processor.post_process_instance_segmentation(
                    outputs, threshold=threshold, target_sizes=[image.shape[:2]]
                )

        pairs = []
        for k, image in enumerate(images):
            timed = []
            for fn in (run_ours, run_theirs):
                synchronize(torch.device(device))
                start = time.perf_counter()
                fn(image)
                synchronize(torch.device(device))
                timed.append(time.perf_counter() - start)
            if k > 0 or len(images) == 1:  # the first image warms both up
                pairs.append(tuple(timed))
        results["sizes"][size] = {
            "pairs_s": pairs,
            "ours_s": statistics.median(p[0] for p in pairs),
            "theirs_s": statistics.median(p[1] for p in pairs),
            "ratio": statistics.median(p[0] / p[1] for p in pairs),
            "image_size": list(images[0].shape[:2]),
        }
    return results


def transformers_inference_table(result: Dict[str, Any]) -> str:
    lines = [
        f"Ours (the demo's Predictor) and transformers' (image processor, model, post_process_instance_segmentation)"
        f" on the same photos, same weights ({result['weights']}), instances scoring >= {result['threshold']}, "
        "alternated image by image:",
        "",
        "| test size | photos | ours (ms/image) | transformers (ms/image) | ours / transformers (median per image) |",
        "|---|---|---|---|---|",
    ]
    for size, row in result["sizes"].items():
        lines.append(
            f"| {size} | {len(row['pairs_s'])} | {_ms(row['ours_s'])} | {_ms(row['theirs_s'])} | "
            f"**{row['ratio']:.2f}x** |"
        )
    return "\n".join(lines)


def _ms(seconds: Optional[float]) -> str:
    return "–" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1000:.0f}"


def _mb(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.0f}"


def training_table(results: Dict[str, Dict[str, Any]]) -> str:
    modes = list(results)
    base = modes[0]
    names = sorted(
        {n for r in results.values() for n in r["stages_s"]}, key=lambda n: -results[modes[-1]]["stages_s"].get(n, 0.0)
    )
    lines = ["| stage (ms/step) | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_ms(results[m]["stages_s"].get(name)) for m in modes) + " |")
    lines.append("| **step, profiled** | " + " | ".join(_ms(results[m]["instrumented_s"]) for m in modes) + " |")
    lines.append("| **step, plain (median)** | " + " | ".join(_ms(results[m]["plain_s"]) for m in modes) + " |")
    lines.append(
        f"| step / {base} step | "
        + " | ".join(f"{results[m]['plain_s'] / results[base]['plain_s']:.2f}x" for m in modes)
        + " |"
    )
    lines.append("| peak RSS (MB) | " + " | ".join(_mb(results[m]["rss_mb"]) for m in modes) + " |")
    if any(results[m]["cuda_mb"] is not None for m in modes):
        lines.append("| CUDA max allocated (MB) | " + " | ".join(_mb(results[m]["cuda_mb"]) for m in modes) + " |")
    text = "\n".join(lines)
    return text


def transformers_table(result: Dict[str, Any]) -> str:
    lines = [
        f"Mask supervision, the same batches, our step and transformers' alternated {len(result['pairs_s'])} times "
        f"({result['params_m']:.2f} M parameters, ours {result['ours_params_m']:.2f} M):",
        "",
        "| | ours (ms) | transformers (ms) | ours / transformers |",
        "|---|---|---|---|",
    ]
    for i, (mine, theirs) in enumerate(result["pairs_s"]):
        lines.append(f"| step {i + 1} | {_ms(mine)} | {_ms(theirs)} | {mine / theirs:.2f}x |")
    lines += [
        f"| **median** | **{_ms(result['ours_s'])}** | **{_ms(result['plain_s'])}** | **{result['ratio']:.2f}x** |",
        "",
        f"transformers' peak RSS during one step (our trainer freed): {_mb(result['rss_mb'])} MB",
    ]
    return "\n".join(lines)


def scaling_plot(scaling: Dict[str, Any], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, xlabel in ((axes[0], "instances", "GT instances per image"), (axes[1], "size", "image side (px)")):
        xs = [int(k) for k in scaling[key]]
        ax.plot(xs, [scaling[key][k]["step_s"] for k in scaling[key]], "-o", label="step (s)")
        ax.set(xlabel=xlabel, ylabel="training step (s)", title=f"{scaling['mode']}, batch {scaling['batch']}")
        twin = ax.twinx()
        twin.plot(xs, [scaling[key][k]["rss_mb"] or 0 for k in scaling[key]], "--s", color="tab:red")
        twin.set_ylabel("peak RSS (MB)", color="tab:red")
    sizes = list(scaling["inference"])
    pixels = [int(s.split("x")[0]) * int(s.split("x")[1]) / 1e6 for s in sizes]
    axes[2].plot(pixels, [scaling["inference"][s]["seconds"] for s in sizes], "-o")
    axes[2].set(xlabel="image megapixels", ylabel="inference (s / image)", title="Predictor, threshold 0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling_table(scaling: Dict[str, Any]) -> str:
    lines = ["| GT instances per image | step (ms) | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {n} | {_ms(r['step_s'])} | {_mb(r['rss_mb'])} |" for n, r in scaling["instances"].items()]
    lines += ["", "| image side (px), 30 instances | step (ms) | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {s} | {_ms(r['step_s'])} | {_mb(r['rss_mb'])} |" for s, r in scaling["size"].items()]
    lines += [
        "",
        f"| inference image (W x H), score >= 0.5, <= {DETECTIONS} detections | seconds | instances | peak RSS (MB) |",
    ]
    lines += ["|---|---|---|---|"]
    lines += [
        f"| {s} | {r['seconds']:.2f} | {r['instances']} | {_mb(r['rss_mb'])} |" for s, r in scaling["inference"].items()
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/cpu/m2f_nuclei_lite0.yaml")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=4, help="distinct prefetched training batches, cycled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--inference-images", type=int, default=16)
    parser.add_argument("--weights", default="", help="trained checkpoint for the inference sections")
    parser.add_argument("--compare-transformers", action="store_true")
    parser.add_argument(
        "--transformers-inference",
        nargs="+",
        type=int,
        default=None,
        metavar="SIZE",
        help="our inference against transformers' at these test sizes (e.g. 256 640)",
    )
    parser.add_argument("--baseline-ref", default="", help="a commit: its step alternated with this tree's")
    parser.add_argument("--evaluation", action="store_true", help="time each stage of a COCO evaluation")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS", help="torch.profiler over STEPS steps")
    parser.add_argument("--step-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument(
        "--ab-opts", nargs="+", default=None, metavar="KEY VALUE", help="time the first mode's step with these too"
    )
    parser.add_argument("--ab-reps", type=int, default=3, help="A B repetitions of --ab-opts")
    parser.add_argument("--msda", action="store_true")
    parser.add_argument("--forward", type=int, default=0, metavar="SIZE", help="time the network forward")
    parser.add_argument("--no-data", action="store_true", help="skip the data-loading section")
    parser.add_argument("--no-inference", action="store_true", help="skip the inference section")
    parser.add_argument("--smoke", action="store_true", help="one step / image per section, small sizes")
    parser.add_argument("--output-dir", default="output/benchmark")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.step_worker:
        step_worker(args.config_file, args.modes[0], args.device, args.opts, args.batches)
        return {}
    retain_freed_memory_if_present()  # as train_net.py
    warmup, steps = (1, 1) if args.smoke else (args.warmup, args.steps)
    device = torch.device(args.device)
    report: Dict[str, Any] = {
        "config": args.config_file,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "warmup": warmup,
        "steps": steps,
    }
    md = [
        f"# Benchmark of `{args.config_file}`",
        "",
        f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{warmup} warm-up steps, {steps} timed steps",
        "",
    ]
    # the same batches for every mode, decoded with masks when mask supervision is timed (box and SIM ignore them)
    batches: List[Any] = []
    if args.modes or args.compare_transformers:
        loader_mode = "mask" if "mask" in args.modes or args.compare_transformers else args.modes[0]
        batches = prefetch(
            mode_cfg(args.config_file, loader_mode, args.device, args.opts), 1 if args.smoke else args.batches
        )
    training: Dict[str, Dict[str, Any]] = {}
    for mode in args.modes:
        training[mode] = time_training(mode_cfg(args.config_file, mode, args.device, args.opts), batches, warmup, steps)
    transformers = None
    if args.compare_transformers:
        transformers = time_transformers(
            mode_cfg(args.config_file, "mask", args.device, args.opts), batches, warmup, steps
        )
    report.update(training=training, transformers=transformers)
    if training:
        md += ["## Training step", "", training_table(training), ""]
    if args.baseline_ref and args.modes:
        against = time_against_ref(
            args.baseline_ref,
            args.config_file,
            args.modes,
            args.device,
            args.opts,
            1 if args.smoke else args.batches,
            warmup,
            steps,
        )
        report["against_ref"] = against
        md += [f"## Against commit {args.baseline_ref}", "", against_ref_table(against), ""]
    if transformers is not None:
        md += ["## transformers' Mask2Former", "", transformers_table(transformers), ""]
    if args.ab_opts and args.modes:
        ab = time_ab(
            args.config_file,
            args.modes[0],
            args.device,
            args.opts,
            args.ab_opts,
            batches,
            warmup,
            steps,
            1 if args.smoke else args.ab_reps,
        )
        report["ab"] = ab
        md += [
            "## A/B of config overrides",
            "",
            f"`{' '.join(ab['overrides'])}`, {args.modes[0]} step, A B alternated {len(ab['A_s'])} times:",
            "",
            "| variant | step per repetition (ms) | median (ms) |",
            "|---|---|---|",
            f"| A: the config | {', '.join(_ms(v) for v in ab['A_s'])} | {_ms(statistics.median(ab['A_s']))} |",
            f"| B: with the overrides | {', '.join(_ms(v) for v in ab['B_s'])} | {_ms(statistics.median(ab['B_s']))} |",
            "",
            f"B / A: **{ab['ratio']:.2f}x**",
            "",
        ]
    if args.transformers_inference:
        images = 1 if args.smoke else args.inference_images
        sizes = [64] if args.smoke else args.transformers_inference
        side = time_transformers_inference(args.config_file, args.device, args.opts, images, args.weights, sizes)
        report["transformers_inference"] = side
        md += ["## Inference against transformers", "", transformers_inference_table(side), ""]
    if args.evaluation:
        evaluation = time_evaluation(
            args.config_file, args.device, args.opts, 1 if args.smoke else args.inference_images, args.weights
        )
        report["evaluation"] = evaluation
        md += ["## Evaluation", "", evaluation_table(evaluation), ""]
    if args.profile:
        profiles = profile_sections(args, batches)
        report["profile"] = profiles
        for name, rows in profiles.items():
            md += [f"## Profile: {name}", "", profile_table(rows), ""]
    if not args.no_data and args.modes:
        data = time_data_loading(args.config_file, args.modes[0], args.device, args.opts, 2 if args.smoke else steps)
        report["data"] = data
        md += [
            "## Data loading",
            "",
            f"{data['workers']} worker(s): step {_ms(data['step_s'])} ms, waiting for data "
            f"{_ms(data['data_s'])} ms = **{100 * data['data_share']:.1f}%** of the step",
            "",
        ]
    if not args.no_inference:
        inference = time_inference(
            args.config_file, args.device, args.opts, 1 if args.smoke else args.inference_images, args.weights
        )
        report["inference"] = inference
        md += [
            "## Inference",
            "",
            f"{inference['images']} images of `{inference['dataset']}` ({inference['weights']}): "
            + ", ".join(f"{k} {inference[k]:.2f} s/image" for k in ("sliding window", "whole image") if k in inference),
            "",
        ]
    if args.scaling and args.modes:
        instances = [1, 30] if args.smoke else [1, 10, 30, 100, 300]
        sizes = [128] if args.smoke else [256, 512, 768, 1024]
        inference_sizes = [(320, 240)] if args.smoke else [(640, 480), (1600, 1200), (2800, 2100), (4000, 3000)]
        scaling = time_scaling(
            args.config_file,
            args.modes[0],
            args.device,
            args.opts,
            instances,
            sizes,
            inference_sizes,
            2,
            warmup,
            steps,
            args.weights,
        )
        report["scaling"] = scaling
        os.makedirs(args.output_dir, exist_ok=True)
        md += [
            "## Scaling",
            "",
            scaling_table(scaling),
            "",
            f"![scaling]({os.path.basename(scaling_plot(scaling, os.path.join(args.output_dir, 'scaling.png')))})",
            "",
        ]
    if args.forward:
        forward = time_forward(
            args.config_file, args.device, args.opts, 64 if args.smoke else args.forward, warmup, steps
        )
        report["forward"] = forward
        md += [
            "## Network forward",
            "",
            f"{forward['size']}x{forward['size']}, batch 1: "
            f"{forward['seconds']:.3f} s ({forward['params_m']:.1f} M parameters)",
            "",
        ]
    if args.msda:
        msda = time_msda(device, warmup, max(steps, 1), args.smoke)
        report["msda"] = msda
        md += ["## Deformable attention", "", json.dumps(msda, indent=1), ""]
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "benchmark.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    text = "\n".join(md)
    with open(os.path.join(args.output_dir, "benchmark.md"), "w") as f:
        f.write(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
