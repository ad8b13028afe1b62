"""tools/compare_supervision.py: the table from fake metrics files (no training)."""

import json

import pytest

from tools import compare_supervision as cs


def _write(root, mode, seed, ap):
    d = root / mode / f"seed{seed}"
    d.mkdir(parents=True)
    segm = {m: ap + i for i, m in enumerate(cs.METRICS)}
    (d / "metrics_final.json").write_text(json.dumps({"iteration": 9, "results": {"segm": segm, "bbox": {}}}))


def test_table_means_stds_and_difference(tmp_path):
    for seed, (box, sim) in enumerate([(10.0, 12.0), (12.0, 15.0), (14.0, 15.0)]):
        _write(tmp_path, "box", seed, box)
        _write(tmp_path, "sim", seed, sim)
    _write(tmp_path, "mask", 0, 30.0)
    table = cs.main(["--config-file", "x.yaml", "--seeds", "0", "1", "2", "--output-dir", str(tmp_path), "--no-train"])
    assert table["summary"]["box"]["AP"] == {"mean": 12.0, "std": 2.0, "n": 3}
    assert table["summary"]["sim"]["AP"]["mean"] == pytest.approx(14.0)
    assert table["summary"]["sim"]["AP"]["std"] == pytest.approx(3**0.5)
    assert table["summary"]["mask"]["AP50"] == {"mean": 31.0, "std": 0.0, "n": 1}  # seeds 1, 2 missing
    assert table["sim_minus_box"]["APl"] == pytest.approx(2.0)
    md = (tmp_path / "comparison.md").read_text()
    assert "| BoxInst-M2F | 1 | 12.00 | 13.00 |" in md
    assert "| Mask2Former (masks) | 2 | – |" in md
    assert "| **SIM − BoxInst-M2F** | means | +2.00 |" in md
    assert json.loads((tmp_path / "comparison.json").read_text())["summary"]["box"]["AP"]["mean"] == 12.0


def test_train_command_and_multi_dataset_results(tmp_path):
    cmd = cs.train_command("c.yaml", "sim", 3, "/o", ["MODEL.SIM.ALPHA", "0"])
    assert cmd[-8:] == ["MODEL.MASK_FORMER.SUPERVISION", "sim", "SEED", "3", "OUTPUT_DIR", "/o", "MODEL.SIM.ALPHA", "0"]
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"results": {"a_val": {"segm": {"AP": 1.0}}, "b_val": {"segm": {"AP": 2.0}}}}))
    assert cs.read_segm(str(p)) == {"AP": 1.0}
    assert cs.read_segm(str(tmp_path / "missing.json")) is None
