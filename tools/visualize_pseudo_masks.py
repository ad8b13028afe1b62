#!/usr/bin/env python
"""Write SIM's pseudo-mask panels (the paper's Fig. 6) for ground-truth boxes of given images.

    python tools/visualize_pseudo_masks.py --config-file configs/cpu/sim_m2f_synthetic_tiny.yaml \\
        --weights output/sim_m2f_synthetic_tiny/model_final.pth --dataset synthetic_val --num 4 --output vis/
    python tools/visualize_pseudo_masks.py --config-file CFG --weights W --input a.png b.png \\
        --json annotations.json --output vis/        # boxes of the files looked up in a COCO json by file name

For every GT box one PNG ``<image>_gt<k>.png`` with five panels: the image with the box, the semantic map M_S
(Eq. 1), the instance map M_I (Eq. 6), the fused pseudo mask M̂ (Eq. 7; white = foreground, black = background,
grey = ignored band τ_low < M̂_prob < τ_high, dark red = outside the box or padding, also ignored), and the
positive (head, query) pairs with their weights w (Eq. 6). Maps come from the checkpoint's teacher and
prototypes (a checkpoint without a teacher uses a copy of the student) with the student's matching, exactly as
in training. Images are used at their own size.
Extra ``KEY VALUE`` arguments after ``--opts`` override the config (e.g. ``MODEL.SIM.ALPHA 1``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

PANEL = 192


def _load_inputs(args) -> List[Dict[str, Any]]:
    from mask2former_sim.data import get_dataset_dicts, load_coco_json, read_image

    if args.input:
        if not args.json:
            raise SystemExit("--input needs --json: a COCO json holding the GT boxes of those files")
        dicts = load_coco_json(args.json, os.path.dirname(os.path.abspath(args.input[0])))
        by_name = {os.path.basename(d["file_name"]): d for d in dicts}
        missing = [f for f in args.input if os.path.basename(f) not in by_name]
        if missing:
            raise SystemExit(f"{args.json} has no image named {[os.path.basename(f) for f in missing]}")
        dicts = [{**by_name[os.path.basename(f)], "file_name": f} for f in args.input]
    else:
        dicts = get_dataset_dicts(args.dataset)[: args.num]
    inputs = []
    for d in dicts:
        image = torch.from_numpy(np.ascontiguousarray(read_image(d["file_name"]))).permute(2, 0, 1)
        anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        inputs.append(
            {
                "image": image,
                "height": image.shape[1],
                "width": image.shape[2],
                "file_name": d["file_name"],
                "instances": {"gt_boxes": boxes, "gt_classes": classes},
            }
        )
    return inputs


@torch.no_grad()
def compute_maps(model, x: Dict[str, Any]) -> Dict[str, Any]:
    """The SIM maps of one input (the model's pseudo-mask generator with the student's matching)."""
    batch = [x]
    images, _ = model.preprocess_images(batch)
    targets = model.supervision.build_targets(batch, tuple(images.shape[-2:]), model.device, model.num_classes, 0)
    outputs = model.forward_network(images)
    indices = model.criterion.match(outputs, targets)
    sim = model.supervision.sim
    teacher_outputs = sim.teacher(images)
    sim.pseudo_masks.record_positives = True  # the positives' lists, a debugging view training never builds
    return sim.pseudo_masks(teacher_outputs, targets, indices, sim.prototypes.prototypes)[0]


def _gray(m: torch.Tensor, size) -> Image.Image:
    return Image.fromarray((m.clamp(0, 1) * 255).byte().cpu().numpy()).resize(size, Image.NEAREST)


def _pseudo_rgb(labels: torch.Tensor, weights: torch.Tensor, region: torch.Tensor, size) -> Image.Image:
    """White: pseudo foreground, black: pseudo background, grey: ignored band, dark red: outside box or padding."""
    rgb = torch.full(labels.shape + (3,), 128, dtype=torch.uint8)
    rgb[(weights > 0) & (labels > 0)] = 255
    rgb[(weights > 0) & (labels == 0)] = 0
    rgb[~region.cpu()] = torch.tensor([96, 0, 0], dtype=torch.uint8)
    return Image.fromarray(rgb.numpy()).resize(size, Image.NEAREST)


def render_panels(image: torch.Tensor, box: Sequence[float], res: Dict[str, Any], k: int, stride: int) -> Image.Image:
    """One row of five panels for instance row ``k`` of :func:`compute_maps`' result."""
    h, w = res["semantic"].shape[-2:]
    size = (w * stride, h * stride)
    img = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    canvas_img = Image.new("RGB", size)
    canvas_img.paste(img, (0, 0))
    ImageDraw.Draw(canvas_img).rectangle([float(v) for v in box], outline=(255, 0, 0), width=2)
    panels = [
        canvas_img,
        _gray(res["semantic"][k], size),
        _gray(res["instance"][k], size),
        _pseudo_rgb(res["labels"][k].cpu(), res["weights"][k].cpu(), res["region"][k], size),
    ]
    text = Image.new("RGB", (PANEL, PANEL), (255, 255, 255))
    draw = ImageDraw.Draw(text)
    lines = [f"tau_high {float(res['tau_high'][k]):.2f}", "head query  w"]
    lines += [f"{hd:>4} {q:>5}  {wt:.3f}" for hd, q, wt in res["positives"][k]]
    draw.multiline_text((4, 4), "\n".join(lines), fill=(0, 0, 0))
    panels.append(text)
    titles = ["image + GT box", "M_S (Eq. 1)", "M_I (Eq. 6)", "M^ (grey: ignored)", "positives (Eq. 6)"]
    out = Image.new("RGB", (PANEL * len(panels), PANEL + 14), (255, 255, 255))
    for i, (panel, title) in enumerate(zip(panels, titles)):
        scale = PANEL / max(panel.size)
        if scale != 1:
            panel = panel.resize(
                (max(1, int(panel.size[0] * scale)), max(1, int(panel.size[1] * scale))), Image.NEAREST
            )
        out.paste(panel, (i * PANEL, 14))
        ImageDraw.Draw(out).text((i * PANEL + 2, 1), title, fill=(0, 0, 0))
    return out


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="checkpoint (a SIM one holds teacher and prototypes)")
    parser.add_argument("--dataset", default="", help="registered dataset name")
    parser.add_argument("--num", type=int, default=4, help="images of --dataset")
    parser.add_argument("--input", nargs="*", default=[], help="image files (boxes from --json)")
    parser.add_argument("--json", default="", help="COCO json with the boxes of --input")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    if not args.input and not args.dataset:
        parser.error("give --dataset NAME [--num N] or --input FILES --json JSON")

    from mask2former_sim.config import get_cfg
    from mask2former_sim.data import register_from_config
    from mask2former_sim.engine import load_model_weights
    from mask2former_sim.modeling import build_model

    cfg = get_cfg(args.config_file, ["MODEL.MASK_FORMER.SUPERVISION", "sim"] + list(args.opts))
    register_from_config(cfg)
    model = build_model(cfg)
    if args.weights:
        load_model_weights(model, args.weights)
    sim = model.supervision.sim
    if not bool(sim.teacher.initialized):  # a checkpoint without a teacher: the student's weights
        sim.teacher.copy_from(model)
    model.eval()
    os.makedirs(args.output, exist_ok=True)
    written = []
    for x in _load_inputs(args):
        res = compute_maps(model, x)
        stem = os.path.splitext(os.path.basename(x["file_name"]))[0]
        for row, k in enumerate(res["gt"].tolist()):
            panel = render_panels(x["image"], x["instances"]["gt_boxes"][k].tolist(), res, row, sim.pseudo_masks.stride)
            path = os.path.join(args.output, f"{stem}_gt{k}.png")
            panel.save(path)
            written.append(path)
    print(f"wrote {len(written)} panels to {args.output}")
    return written


if __name__ == "__main__":
    main()
