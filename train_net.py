#!/usr/bin/env python
"""Train or evaluate a Mask2Former (mask, BoxInst-M2F or SIM supervision) from a config, detectron2-style.

    python train_net.py --config-file configs/cpu/<config>.yaml [KEY VALUE ...]
    python train_net.py --config-file CFG --resume                      # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --num-gpus 8                  # one process per GPU (NCCL)
    python train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu # two CPU processes (gloo)
    torchrun --nproc_per_node 8 train_net.py --config-file CFG          # ranks from the environment
    # two machines: add --num-machines 2 --machine-rank {0,1} --dist-url tcp://<IP of machine 0>:<port>

``--num-gpus`` is the number of processes per machine: on a machine without that many GPUs they run on the
CPU with the gloo backend. ``SOLVER.IMS_PER_BATCH`` is the total batch over all processes.
Custom COCO-format data: ``DATASETS.REGISTER "['mydata_train:/path/train.json:/path/images']"
DATASETS.TRAIN "('mydata_train',)"``; ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` follows the training set's categories.
"""

import json
import logging
import os
from typing import Any, Dict

import torch

from mask2former_sim.config import check_supported_choices, check_training_config, get_cfg
from mask2former_sim.engine import (
    Trainer,
    default_argument_parser,
    default_setup,
    launch,
    load_model_weights,
    setup_logger,
)
from mask2former_sim.utils import comm

logger = logging.getLogger("mask2former_sim.train_net")


def resolve_device(cfg: Any, args: Any) -> None:
    """``cuda`` when ``--num-gpus >= 1`` and CUDA is available (unless ``MODEL.DEVICE`` is set on the command
    line), otherwise ``cpu``."""
    explicit = "MODEL.DEVICE" in (args.opts or [])[0::2]
    requested = cfg.MODEL.DEVICE
    if requested.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but CUDA is not available: running on the CPU", requested)
        cfg.MODEL.DEVICE = "cpu"
    elif not explicit and args.num_gpus >= 1 and torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cuda"
    logger.info(
        "device: %s (--num-gpus %d, CUDA %s)",
        cfg.MODEL.DEVICE,
        args.num_gpus,
        f"available with {torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "not available",
    )


def set_num_classes(cfg: Any) -> None:
    """Make ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` match the categories of the training (else test) dataset."""
    from mask2former_sim.data import get_metadata

    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    counts = {}
    for name in names:
        try:
            counts[name] = len(get_metadata(name)["thing_classes"])
        except FileNotFoundError as exc:
            logger.warning("cannot read the categories of dataset '%s' yet: %s", name, exc)
    if not counts:
        return
    if len(set(counts.values())) > 1:
        raise ValueError(f"the datasets {names} have different numbers of categories: {counts}")
    num_classes = next(iter(counts.values()))
    if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != num_classes:
        logger.info(
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES set from %d to %d, the number of categories of %s",
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            num_classes,
            names[0],
        )
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes


def setup(args: Any):
    """Config from file and overrides, checked (before any folder, log or model is made), extra datasets registered,
    device and classes resolved, process set up."""
    from mask2former_sim.data import register_from_config

    cfg = get_cfg(args.config_file or None, args.opts or [])  # with the schedule rule of SOLVER.MAX_ITER
    check_supported_choices(cfg)
    if not args.eval_only:
        check_training_config(cfg)
    setup_logger(cfg.OUTPUT_DIR if comm.is_main_process() else None)
    resolve_device(cfg, args)
    for name in register_from_config(cfg):
        logger.info("registered dataset '%s' from DATASETS.REGISTER", name)
    set_num_classes(cfg)
    default_setup(cfg, args)
    cfg.freeze()
    return cfg


def main(args: Any) -> Dict[str, Any]:
    cfg = setup(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("--eval-only needs the weights to evaluate: add MODEL.WEIGHTS path/to/model.pth")
        model = Trainer.build_model(cfg, training=False)  # the network alone
        load_model_weights(model, cfg.MODEL.WEIGHTS, strict=True)  # every weight, or an error
        results = Trainer.test(cfg, model)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            path = os.path.join(cfg.OUTPUT_DIR, "metrics_final.json")
            with open(path, "w") as f:
                json.dump({"weights": cfg.MODEL.WEIGHTS, "results": results}, f, indent=2)
            logger.info("results written to %s", path)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    logger.info(
        "training done: final weights %s, metrics %s",
        os.path.join(cfg.OUTPUT_DIR, "model_final.pth"),
        os.path.join(cfg.OUTPUT_DIR, "metrics.json"),
    )
    return results


if __name__ == "__main__":
    arguments = default_argument_parser().parse_args()
    launch(
        main,
        arguments.num_gpus,
        num_machines=arguments.num_machines,
        machine_rank=arguments.machine_rank,
        dist_url=arguments.dist_url,
        args=(arguments,),
    )
