"""Config system: _BASE_ chains, KEY VALUE overrides, unknown-key errors with suggestions."""

import pytest

from mask2former_sim.config import UnknownConfigKeyError, get_cfg


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_have_spec_values():
    cfg = get_cfg()
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS == 12544
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.MODEL.SEM_SEG_HEAD.MSDA_IMPL == "auto"


def test_every_default_key_has_a_comment():
    import inspect

    from mask2former_sim.config import defaults

    for line in inspect.getsource(defaults).splitlines():
        stripped = line.strip()
        if stripped.startswith("_C.") and "= _FvCfgNode()" not in stripped:
            assert "#" in stripped, f"config key without a comment: {stripped}"


def test_base_chain_and_overrides(tmp_path):
    _write(tmp_path / "a.yaml", "MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERIES: 50\n    HIDDEN_DIM: 128\n")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.yaml", "_BASE_: ../a.yaml\nMODEL:\n  MASK_FORMER:\n    HIDDEN_DIM: 64\n")
    c = _write(tmp_path / "sub" / "c.yaml", "_BASE_: b.yaml\nSOLVER:\n  BASE_LR: 0.5\n")
    cfg = get_cfg(c, ["SOLVER.MAX_ITER", "7", "DATASETS.TRAIN", "('x', 'y')"])
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 50  # from the grand-parent
    assert cfg.MODEL.MASK_FORMER.HIDDEN_DIM == 64  # child overrides parent
    assert cfg.SOLVER.BASE_LR == 0.5
    assert cfg.SOLVER.MAX_ITER == 7  # override parsed as int
    assert tuple(cfg.DATASETS.TRAIN) == ("x", "y")


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERY: 5\n")
    with pytest.raises(UnknownConfigKeyError) as err:
        get_cfg(bad)
    msg = str(err.value)
    assert "MODEL.MASK_FORMER.NUM_OBJECT_QUERY" in msg
    assert "bad.yaml" in msg
    assert "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES" in msg


def test_unknown_key_in_overrides():
    with pytest.raises(UnknownConfigKeyError) as err:
        get_cfg(overrides=["SOLVER.BASE_LRR", "1.0"])
    assert "SOLVER.BASE_LRR" in str(err.value) and "SOLVER.BASE_LR" in str(err.value)


def test_odd_override_list_and_missing_file(tmp_path):
    with pytest.raises(ValueError):
        get_cfg(overrides=["SOLVER.BASE_LR"])
    with pytest.raises(FileNotFoundError):
        get_cfg(str(tmp_path / "nope.yaml"))


def test_wrong_type_override_is_rejected():
    with pytest.raises(ValueError):
        get_cfg(overrides=["SOLVER.MAX_ITER", "'many'"])
