"""Configuration: every default in :mod:`.defaults`, YAML loading with ``_BASE_``, ``KEY VALUE`` overrides."""

from .config import CfgNode, UnknownConfigKeyError, get_cfg

__all__ = ["CfgNode", "UnknownConfigKeyError", "get_cfg"]
