"""SIM (Li et al., CVPR 2023) on Mask2Former: EMA teacher, class prototypes, pseudo masks, copy-paste."""

from .copy_paste import CopyPaste
from .memory_bank import MemoryBank, paste_instances
from .prototypes import PrototypeBank, semantic_map, sinkhorn_knopp
from .pseudo_masks import PseudoMaskGenerator
from .supervisor import SIMSupervisor
from .teacher import EMATeacher, EMATeacherHook, ema_update_

__all__ = [
    "CopyPaste",
    "EMATeacher",
    "EMATeacherHook",
    "ema_update_",
    "MemoryBank",
    "paste_instances",
    "PrototypeBank",
    "PseudoMaskGenerator",
    "semantic_map",
    "sinkhorn_knopp",
    "SIMSupervisor",
]
