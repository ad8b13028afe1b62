"""End to end: a tiny fully supervised model overfits a few generated images of coloured shapes on the CPU.

Exercises build_model, the criterion with deep supervision, the matcher and the inference path together: the
total loss must fall by at least 80% and, in eval mode, the best-scoring prediction of each GT's class must
cover the GT mask with IoU ≥ 0.8.
"""

import os
import time
from pathlib import Path

import numpy as np
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling import build_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "tiny-overfit.yaml"
SIZE = 64
COLOURS = {0: (230, 40, 40), 1: (40, 200, 60), 2: (50, 80, 230)}  # class → RGB


def draw_shape(label: int, cx: int, cy: int, r: int) -> np.ndarray:
    """Binary (SIZE, SIZE) mask: 0 = square, 1 = disc, 2 = triangle, centred at (cx, cy) with half-size r."""
    ys, xs = np.mgrid[:SIZE, :SIZE]
    if label == 0:
        return (abs(xs - cx) <= r) & (abs(ys - cy) <= r)
    if label == 1:
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
    return (ys <= cy + r) & (ys - (cy - r) >= 2 * abs(xs - cx))


def make_images():
    """3 images, 2 non-overlapping shapes each, on a dim noisy background."""
    rng = np.random.default_rng(0)
    layouts = [
        [(0, 18, 20, 10), (1, 44, 44, 12)],
        [(2, 20, 42, 13), (0, 46, 18, 9)],
        [(1, 18, 18, 11), (2, 44, 40, 14)],
    ]
    inputs = []
    for layout in layouts:
        image = rng.integers(60, 100, size=(SIZE, SIZE, 3)).astype(np.uint8)
        masks, boxes, classes = [], [], []
        for label, cx, cy, r in layout:
            mask = draw_shape(label, cx, cy, r)
            image[mask] = COLOURS[label]
            ys, xs = np.where(mask)
            masks.append(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            classes.append(label)
        inputs.append(
            {
                "image": torch.as_tensor(image).permute(2, 0, 1).contiguous(),
                "height": SIZE,
                "width": SIZE,
                "instances": {
                    "gt_boxes": torch.tensor(boxes, dtype=torch.float32),
                    "gt_classes": torch.tensor(classes, dtype=torch.int64),
                    "gt_masks": torch.as_tensor(np.stack(masks)),
                },
            }
        )
    return inputs


def best_class_iou(model, inputs):
    """For every GT: IoU between its mask and the highest-scoring prediction of its class (eval mode)."""
    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in inputs])
    model.train()
    ious = []
    for x, out in zip(inputs, outputs):
        pred = out["instances"]
        for gt_mask, label in zip(x["instances"]["gt_masks"], x["instances"]["gt_classes"]):
            same = (pred["pred_classes"] == label).nonzero().flatten()
            if len(same) == 0:
                ious.append(0.0)
                continue
            best = pred["pred_masks"][same[pred["scores"][same].argmax()]]
            ious.append(float((best & gt_mask).sum() / (best | gt_mask).sum()))
    return ious


def test_tiny_model_overfits_generated_shapes():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add synchronisation (10x slower on a busy CPU)
    try:
        cfg = get_cfg()
        cfg.merge_from_file(str(CONFIG))
        model = build_model(cfg).train()
        inputs = make_images()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.SOLVER.BASE_LR, weight_decay=0.0)

        start = time.perf_counter()
        first_loss, losses, ious = None, [], []
        for step in range(1, 401):
            loss_dict = model(inputs, iteration=step)
            loss = sum(loss_dict.values())
            assert torch.isfinite(loss), {k: float(v) for k, v in loss_dict.items()}
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            first_loss = losses[0]
            if step % 10 == 0:
                ious = best_class_iou(model, inputs)
                recent = float(np.mean(losses[-5:]))
                if recent <= 0.2 * first_loss and min(ious) >= 0.8:
                    break
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(num_threads)

    recent = float(np.mean(losses[-5:]))
    print(f"overfit: {step} steps in {elapsed:.1f} s, loss {first_loss:.2f} -> {recent:.2f}, IoUs {np.round(ious, 3)}")
    assert recent <= 0.2 * first_loss, f"loss fell only from {first_loss:.3f} to {recent:.3f} in {step} steps"
    assert min(ious) >= 0.8, f"IoUs with GT after {step} steps: {ious}"
