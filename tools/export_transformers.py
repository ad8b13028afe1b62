#!/usr/bin/env python
"""Export a model to a Hugging Face transformers folder (``Mask2FormerForUniversalSegmentation``).

    pip install -r requirements-export.txt
    python tools/export_transformers.py --config-file configs/cpu/m2f_cats_lite0.yaml --output export/cats \\
        MODEL.WEIGHTS output/m2f_cats_lite0/model_final.pth

Overrides (``KEY VALUE ...``) follow the config file as in ``train_net.py``. The folder holds:

- ``config.json``: transformers' ``Mask2FormerConfig`` of the network (:func:`transformers_config`: the timm
  backbone, widths, layers, queries), ``id2label`` from the class names of ``DATASETS.TEST[0]`` (else
  ``DATASETS.TRAIN[0]``; ``class_i`` when neither can be read);
- ``model.safetensors``: the network's weights, ours → official Mask2Former names → transformers'
  (:mod:`mask2former_sim.interop`); the training state of a checkpoint (a box or SIM model's teacher, prototypes,
  schedule buffers) is not part of the network and is left out;
- ``preprocessor_config.json``: ``Mask2FormerImageProcessor`` with our test-time resize and normalisation
  (:func:`image_processor_kwargs`).

Both load offline: ``Mask2FormerForUniversalSegmentation.from_pretrained(DIR)`` builds the timm backbone from
``config.json`` without pretrained weights (they come from ``model.safetensors``) and
``Mask2FormerImageProcessor.from_pretrained(DIR)``. The export is checked before it is written: transformers'
model loads the converted state dict strictly (no missing, no unexpected key).

transformers' ``post_process_instance_segmentation`` resizes the mask logits to 384×384 (padding included) before
the image size; Mask2Former's instances (ours) come from
:func:`mask2former_sim.interop.transformers.post_process_instances` on the model's outputs.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from mask2former_sim.config import get_cfg
from mask2former_sim.data import get_metadata, register_from_config
from mask2former_sim.engine.checkpoint import load_model_weights
from mask2former_sim.interop.official import to_official
from mask2former_sim.interop.transformers import (
    image_processor_kwargs,
    official_to_transformers,
    transformers_config,
)
from mask2former_sim.modeling import build_model

logger = logging.getLogger("mask2former_sim.export_transformers")

# the export runs on the CPU and the checkpoint provides every weight: no ImageNet weights are read first
EXPORT_OVERRIDES = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAINED_OFFLINE", "", "MODEL.BACKBONE.WEIGHTS", ""]


def class_names(cfg: Any) -> List[str]:
    """The names of the ``NUM_CLASSES`` classes: the ``thing_classes`` of ``DATASETS.TEST[0]``, else of
    ``DATASETS.TRAIN[0]``, else ``class_0``, ``class_1``, ... (logged)."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    try:
        register_from_config(cfg)
    except (KeyError, ValueError, OSError) as exc:
        logger.warning("datasets of the config not registered (%s)", exc)
    for name in list(cfg.DATASETS.TEST[:1]) + list(cfg.DATASETS.TRAIN[:1]):
        try:
            names = list(get_metadata(name)["thing_classes"])
        except (KeyError, ValueError, OSError) as exc:
            logger.warning("class names of %s not read (%s)", name, exc)
            continue
        if len(names) == num_classes:
            return names
        logger.warning("%s has %d classes, MODEL.SEM_SEG_HEAD.NUM_CLASSES is %d", name, len(names), num_classes)
    logger.warning("no class names found: the classes are named class_0 .. class_%d", num_classes - 1)
    return [f"class_{i}" for i in range(num_classes)]


def export(cfg: Any, output_dir: str) -> Dict[str, Any]:
    """Write the transformers folder of the model of ``cfg`` with the weights ``cfg.MODEL.WEIGHTS``.

    Returns:
        {"output": folder, "tensors": tensors written, "id2label": {index: name}}.

    Raises:
        ValueError: ``MODEL.WEIGHTS`` is empty, or the network has no transformers equivalent
            (:func:`check_transformers_compatible`).
    """
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: give the checkpoint to export (MODEL.WEIGHTS path/to/model.pth)")
    model = build_model(cfg, training=False).eval()
    load_model_weights(model, cfg.MODEL.WEIGHTS, strict=True)
    id2label = dict(enumerate(class_names(cfg)))
    hf_config = transformers_config(cfg, id2label)
    state = official_to_transformers(to_official(model.state_dict(), model), hf_config)
    hf_model = Mask2FormerForUniversalSegmentation(hf_config).eval()
    hf_model.load_state_dict(state, strict=True)
    os.makedirs(output_dir, exist_ok=True)
    hf_model.save_pretrained(output_dir)
    Mask2FormerImageProcessor(**image_processor_kwargs(cfg)).save_pretrained(output_dir)
    logger.info("exported %d tensors of %s to %s", len(state), cfg.MODEL.WEIGHTS, output_dir)
    return {"output": output_dir, "tensors": len(state), "id2label": id2label}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = get_cfg(args.config_file, [*args.opts, *EXPORT_OVERRIDES])
    return export(cfg, args.output)


if __name__ == "__main__":
    main()
