"""Parameter counts of the full COCO models match Mask2Former's model zoo (within 3%).

Built on the meta device (shapes only, no memory, no init cost). Measured with timm 1.0.31:
R50 43.97M, R101 62.91M, Swin-T 47.42M, Swin-S 68.74M, Swin-B(384) 106.90M, Swin-L(384, 200 queries) 215.52M.
"""

import os

import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling import MaskFormer

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs", "coco", "instance-segmentation")

# Mask2Former model zoo, COCO instance segmentation (#params)
EXPECTED_MILLIONS = {
    "maskformer2_R50_bs16_50ep.yaml": 44,
    "maskformer2_R101_bs16_50ep.yaml": 63,
    "swin/maskformer2_swin_tiny_bs16_50ep.yaml": 47,
    "swin/maskformer2_swin_small_bs16_50ep.yaml": 69,
    "swin/maskformer2_swin_base_384_bs16_50ep.yaml": 107,
    "swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml": 216,
}


@pytest.mark.parametrize("config", sorted(EXPECTED_MILLIONS))
def test_full_model_parameter_count(config):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config))
    with torch.device("meta"):
        model = MaskFormer.from_config(cfg)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    expected = EXPECTED_MILLIONS[config]
    assert abs(millions - expected) <= 0.03 * expected, f"{config}: {millions:.2f}M params, expected ~{expected}M"
