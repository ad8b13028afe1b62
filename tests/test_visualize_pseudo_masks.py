"""tools/visualize_pseudo_masks.py runs on a tiny random model for one image and writes one panel per GT."""

import os

from PIL import Image

from tools import visualize_pseudo_masks as vis


def test_panels_for_one_image(tmp_path):
    from _engine_fakes import REPO, make_tiny_dataset

    register = make_tiny_dataset(str(tmp_path / "data"))
    written = vis.main(
        [
            "--config-file",
            os.path.join(REPO, "configs", "cpu", "tiny-overfit.yaml"),
            "--dataset",
            "engine_tiny_train",
            "--num",
            "1",
            "--output",
            str(tmp_path / "vis"),
            "--opts",
            "DATASETS.REGISTER",
            f"['{register}']",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            "4",
        ]
    )
    assert written and all(p.endswith(".png") and os.path.isfile(p) for p in written)
    with Image.open(written[0]) as im:
        assert im.size[0] == 5 * vis.PANEL
