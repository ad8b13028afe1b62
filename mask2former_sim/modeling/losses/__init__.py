"""Loss and matching-cost functions, one module per family (``mask``: point-sampled BCE and dice)."""

from .mask import (
    batch_dice_cost,
    batch_sigmoid_ce_cost,
    calculate_uncertainty,
    dice_loss,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sigmoid_ce_loss,
)

__all__ = [
    "batch_dice_cost",
    "batch_sigmoid_ce_cost",
    "calculate_uncertainty",
    "dice_loss",
    "get_uncertain_point_coords_with_randomness",
    "point_sample",
    "sigmoid_ce_loss",
]
