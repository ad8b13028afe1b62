"""Config node in the detectron2 style: YAML files with ``_BASE_`` inheritance and ``KEY VALUE`` overrides.

fvcore's ``CfgNode`` already implements ``_BASE_`` merging and typed overrides; this subclass makes an unknown
key an error that names the key, the file it came from, and the closest existing keys.
"""

from __future__ import annotations

import difflib
import os
from typing import Iterable, List, Optional

from fvcore.common.config import CfgNode as _FvCfgNode

from .defaults import _C
from .schedule import apply_schedule

__all__ = ["CfgNode", "get_cfg", "UnknownConfigKeyError"]


class UnknownConfigKeyError(KeyError):
    """A config file or override names a key that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0])


def _all_keys(node: _FvCfgNode, prefix: str = "") -> List[str]:
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys.append(full)
        if isinstance(value, _FvCfgNode):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _unknown_keys(defaults: _FvCfgNode, other: dict, prefix: str = "") -> List[str]:
    missing = []
    for name, value in other.items():
        if name == "_BASE_":
            continue
        full = f"{prefix}{name}"
        if name not in defaults:
            missing.append(full)
        elif isinstance(value, dict) and isinstance(defaults[name], _FvCfgNode):
            missing.extend(_unknown_keys(defaults[name], value, full + "."))
    return missing


def _suggest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf][:3]
    return f" Did you mean: {', '.join(close)}?" if close else ""


class CfgNode(_FvCfgNode):
    """fvcore ``CfgNode`` whose unknown-key errors name the key, its source and close matches."""

    def _raise_unknown(self, keys: List[str], source: str) -> None:
        candidates = _all_keys(self)
        lines = [f"unknown config key '{k}' in {source}.{_suggest(k, candidates)}" for k in keys]
        raise UnknownConfigKeyError("\n".join(lines))

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file (resolving ``_BASE_`` chains relative to the file)."""
        if not os.path.isfile(cfg_filename):
            raise FileNotFoundError(f"config file not found: {cfg_filename}")
        loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        unknown = _unknown_keys(self, loaded)
        if unknown:
            self._raise_unknown(unknown, f"config file {cfg_filename}")
        self.merge_from_other_cfg(type(self)(loaded))

    def merge_from_list(self, cfg_list: list) -> None:
        """Merge ``["KEY", "VALUE", ...]`` overrides (values parsed as Python literals when possible)."""
        if len(cfg_list) % 2 != 0:
            raise ValueError(f"overrides must be KEY VALUE pairs, got an odd number of items: {cfg_list}")
        candidates = _all_keys(self)
        unknown = [k for k in cfg_list[0::2] if k not in candidates]
        if unknown:
            self._raise_unknown(unknown, "the command-line overrides")
        super().merge_from_list(cfg_list)


def get_cfg(config_file: Optional[str] = None, overrides: Optional[list] = None) -> CfgNode:
    """A fresh config with every default of :mod:`mask2former_sim.config.defaults`.

    Optionally merges ``config_file`` and then the ``KEY VALUE`` list ``overrides``; then, when
    ``SOLVER.SCHEDULE.ENABLED``, sets the run's schedule from ``SOLVER.MAX_ITER`` (:mod:`.schedule`).
    """
    cfg = CfgNode(_C.clone())
    if config_file:
        cfg.merge_from_file(config_file)
    if overrides:
        cfg.merge_from_list(list(overrides))
    apply_schedule(cfg, _C)
    return cfg
