"""Configuration: every default in :mod:`.defaults`, YAML loading with ``_BASE_``, ``KEY VALUE`` overrides, and
the checks of the values this project supports (:mod:`.checks`)."""

from .checks import check_supported_choices, check_training_config
from .config import CfgNode, UnknownConfigKeyError, get_cfg

__all__ = ["CfgNode", "UnknownConfigKeyError", "check_supported_choices", "check_training_config", "get_cfg"]
