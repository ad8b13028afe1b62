"""tools/visualize_box_supervision.py on synthetic training images: PNGs written, kept edges only inside GT
boxes and never on padding, every GT box matched to a query."""

import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "cpu", "boxinst_m2f_synthetic_tiny.yaml")
# 96-px LSJ crops of images shrunk to 0.6 x 96 px: about 40 % of every input is padding
SMALL = ["INPUT.IMAGE_SIZE", "96", "INPUT.MIN_SCALE", "0.6", "INPUT.MAX_SCALE", "0.6", "INPUT.RANDOM_FLIP", "none"]


def load_tool():
    from tools import visualize_box_supervision

    return visualize_box_supervision


def inside_any_box(boxes: np.ndarray, h: int, w: int, stride: int = 4) -> np.ndarray:
    """Stride-4 pixels (centre 4i + 2) inside some box, rows/cols floor(y1)..floor(y2) as BoxInst fills them."""
    ys = np.arange(h) * stride + stride // 2
    xs = np.arange(w) * stride + stride // 2
    inside = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in np.floor(boxes):
        inside |= ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]
    return inside


def test_writes_pngs_and_keeps_edges_only_inside_boxes(tmp_path):
    tool = load_tool()
    records = tool.main(["--config-file", CONFIG, "--num-images", "2", "--output", str(tmp_path), "--opts", *SMALL])
    assert len(records) == 2
    for rec in records:
        assert set(rec["paths"]) == {"boxes", "box_masks", "edges", "pred_masks"}
        for path in rec["paths"].values():
            assert os.path.getsize(path) > 0
        count = rec["kept_edges"]
        h, w = count.shape
        assert rec["padding_mask"].shape == (4 * h, 4 * w)
        padding_small = rec["padding_mask"][2::4, 2::4]
        assert padding_small.mean() > 0.2  # the test really covers padding
        assert count.min() >= 0 and count.max() <= 8
        assert count.sum() > 0
        assert not count[~inside_any_box(rec["boxes"], h, w)].any()
        assert not count[padding_small].any()
        # every GT box got a query (50 queries, at most 8 boxes), each query and box once
        assert sorted(g for _, g in rec["matches"]) == list(range(len(rec["boxes"])))
        assert len({q for q, _ in rec["matches"]}) == len(rec["boxes"])
