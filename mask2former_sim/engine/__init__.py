"""Training engine: optimizer and schedule, atomic checkpoints, distributed launch, the training loop."""

from .checkpoint import Checkpointer, CheckpointError, load_checkpoint_file, load_model_weights, unwrap_model
from .launch import default_argument_parser, launch
from .lr_scheduler import WarmupMultiStepLR, WarmupPolyLR, build_lr_scheduler
from .optimizer import build_optimizer, clip_gradients, get_param_groups
from .setup import default_setup, seed_all_rng, setup_logger
from .trainer import Trainer

__all__ = [
    "Checkpointer",
    "CheckpointError",
    "Trainer",
    "WarmupMultiStepLR",
    "WarmupPolyLR",
    "build_lr_scheduler",
    "build_optimizer",
    "clip_gradients",
    "default_argument_parser",
    "default_setup",
    "get_param_groups",
    "launch",
    "load_checkpoint_file",
    "load_model_weights",
    "seed_all_rng",
    "setup_logger",
    "unwrap_model",
]
