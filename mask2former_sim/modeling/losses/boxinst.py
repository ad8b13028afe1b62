"""BoxInst's low-level box losses (Tian et al., CVPR 2021) on Mask2Former's stride-4 masks.

Everything here is a pure function on tensors so it can be checked against hand computations:

- :func:`rgb_to_lab` — sRGB → CIE Lab (D65), vectorised in torch (BoxInst calls skimage per image on the CPU).
- :func:`images_color_similarity` — ``exp(−‖Lab_i − Lab_j‖₂ / θ)`` for the 8 neighbours of a 3×3 kernel with
  dilation 2 on the 4×-average-pooled image.
- :func:`pixels_in_boxes`, :func:`box_raster` — which pixels a box covers (one rule for every box mask);
- :func:`boxes_to_stride_masks` — GT boxes rasterised at input resolution and sampled at the mask stride.
- :func:`compute_project_term` — ``dice(max_y m, max_y B) + dice(max_x m, max_x B)``.
- :func:`compute_pairwise_term` — ``−log(p_i p_j + (1−p_i)(1−p_j))`` in log-space on the kept edges.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "rgb_to_lab",
    "unfold_wo_center",
    "images_color_similarity",
    "pixels_in_boxes",
    "box_raster",
    "boxes_to_stride_masks",
    "dice_coefficient",
    "compute_project_term",
    "pairwise_log_same_prob",
    "compute_pairwise_term",
    "batch_projection_dice_cost",
]

# sRGB (D65) → XYZ matrix and the D65 / 2° reference white, as used by skimage.color.rgb2lab.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab of sRGB images.

    Args:
        rgb: (B, 3, H, W) RGB in [0, 1] (any float dtype; computed in fp32 or fp64).
    Returns:
        (B, 3, H, W) Lab with L in [0, 100].
    """
    dtype = rgb.dtype if rgb.dtype == torch.float64 else torch.float32
    rgb = rgb.to(dtype)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=dtype, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    xyz = xyz / torch.tensor(_D65_WHITE, dtype=dtype, device=rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def unfold_wo_center(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Neighbours of every pixel in a dilated k×k window, centre removed, zero outside the map.

    Args:
        x: (B, C, H, W).
    Returns:
        (B, C, k*k − 1, H, W); for k = 3 the 8 neighbours in row-major order.
    """
    b, c, h, w = x.shape
    padding = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    unfolded = F.unfold(x, kernel_size=kernel_size, padding=padding, dilation=dilation)
    unfolded = unfolded.reshape(b, c, kernel_size * kernel_size, h, w)
    centre = kernel_size * kernel_size // 2
    return torch.cat([unfolded[:, :, :centre], unfolded[:, :, centre + 1 :]], dim=2)


def images_color_similarity(
    images: torch.Tensor,
    valid: torch.Tensor,
    stride: int = 4,
    kernel_size: int = 3,
    dilation: int = 2,
    theta: float = 2.0,
) -> torch.Tensor:
    """Colour affinity of each stride-``stride`` pixel with its neighbours (BoxInst Eq. 3).

    ``S_e = exp(−‖Lab_i − Lab_j‖₂ / θ)`` on the ``stride``×-average-pooled image (BoxInst); an edge whose centre
    or neighbour is invalid (padding, removed bottom rows) gets similarity 0.

    Args:
        images: (B, 3, H, W) RGB in 0–255 (un-normalised model input), H and W divisible by ``stride``.
        valid: (B, H, W) bool, True where the pixel is real image content.
    Returns:
        (B, k*k − 1, H/stride, W/stride) similarities in [0, 1].
    """
    pooled = F.avg_pool2d(images.float(), kernel_size=stride, stride=stride)
    lab = rgb_to_lab(pooled / 255.0)
    valid_small = valid[:, None, stride // 2 :: stride, stride // 2 :: stride].float()
    neighbours = unfold_wo_center(lab, kernel_size, dilation)
    distance = torch.linalg.vector_norm(lab[:, :, None] - neighbours, dim=1)
    similarity = torch.exp(-distance / theta)
    neighbour_valid = unfold_wo_center(valid_small, kernel_size, dilation)[:, 0]
    return similarity * neighbour_valid * valid_small


def pixels_in_boxes(boxes: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Which pixels (y, x) of the grid ``ys`` × ``xs`` (integer pixel indices) lie in each box.

    Boxes are continuous XYXY coordinates (COCO): pixel ``x`` covers ``[x, x + 1)`` and belongs to the box when it
    overlaps it, ``⌊x1⌋ ≤ x < max(⌈x2⌉, ⌊x1⌋ + 1)`` (same in y; a zero-width box keeps one pixel). The tight box of a
    binary mask (:func:`~..postprocessing.masks_to_boxes`, x2 = last pixel + 1) therefore covers exactly the mask's
    pixel extent. BoxInst fills ``[int(x1) : int(x2) + 1]``, one pixel more wherever x2 is an integer.

    Args:
        boxes: (N, 4) XYXY; ys: (H',) and xs: (W',) pixel indices.
    Returns:
        (N, H', W') bool.
    """
    boxes = boxes.float()
    lo = boxes.floor()
    hi = torch.maximum(boxes.ceil(), lo.roll(2, dims=1) + 1)  # x2 ≥ ⌊x1⌋ + 1, y2 ≥ ⌊y1⌋ + 1
    ys, xs = ys.to(boxes), xs.to(boxes)
    in_y = (ys[None] >= lo[:, 1:2]) & (ys[None] < hi[:, 3:4])
    in_x = (xs[None] >= lo[:, 0:1]) & (xs[None] < hi[:, 2:3])
    return in_y[:, :, None] & in_x[:, None, :]


def box_raster(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, height, width) bool: every pixel of the image grid that lies in each box (:func:`pixels_in_boxes`)."""
    return pixels_in_boxes(boxes, torch.arange(height), torch.arange(width))


def boxes_to_stride_masks(boxes: torch.Tensor, height: int, width: int, stride: int = 4) -> torch.Tensor:
    """GT box masks at the mask stride: :func:`box_raster` sampled at pixels ``stride·i + stride // 2``.

    Args:
        boxes: (N, 4) XYXY in input pixels.
        height, width: padded input size (divisible by ``stride``).
    Returns:
        (N, height // stride, width // stride) float masks in {0, 1}.
    """
    ys = torch.arange(height // stride, device=boxes.device) * stride + stride // 2
    xs = torch.arange(width // stride, device=boxes.device) * stride + stride // 2
    return pixels_in_boxes(boxes, ys, xs).float()


def dice_coefficient(x: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BoxInst dice loss per instance: ``1 − 2Σxt / (Σx² + Σt² + ε)``.

    Args:
        x, target: (N, ...) with the same shape.
    Returns:
        (N,) losses.
    """
    x = x.flatten(1)
    target = target.flatten(1)
    intersection = (x * target).sum(dim=1)
    union = (x * x).sum(dim=1) + (target * target).sum(dim=1) + eps
    return 1.0 - 2.0 * intersection / union


def compute_project_term(mask_scores: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """BoxInst projection term per instance: ``dice(max_y m, max_y B) + dice(max_x m, max_x B)``.

    Args:
        mask_scores: (N, H, W) foreground probabilities.
        box_masks: (N, H, W) box (or box-minus-occluder) masks in {0, 1}.
    Returns:
        (N,) losses (sum them and divide by the number of instances).
    """
    loss_y = dice_coefficient(mask_scores.amax(dim=1), box_masks.amax(dim=1))  # projection onto the x axis
    loss_x = dice_coefficient(mask_scores.amax(dim=2), box_masks.amax(dim=2))  # projection onto the y axis
    return loss_x + loss_y


def pairwise_log_same_prob(mask_logits: torch.Tensor, kernel_size: int = 3, dilation: int = 2) -> torch.Tensor:
    """``log P(y_i = y_j) = log(p_i p_j + (1 − p_i)(1 − p_j))`` for every pixel and neighbour, in log-space.

    Args:
        mask_logits: (N, H, W).
    Returns:
        (N, k*k − 1, H, W) log-probabilities (finite for any finite logits).
    """
    logits = mask_logits[:, None].float()
    log_fg = F.logsigmoid(logits)
    log_bg = F.logsigmoid(-logits)
    log_fg_nb = unfold_wo_center(log_fg, kernel_size, dilation)[:, 0]
    log_bg_nb = unfold_wo_center(log_bg, kernel_size, dilation)[:, 0]
    return torch.logaddexp(log_fg + log_fg_nb, log_bg + log_bg_nb)


def compute_pairwise_term(
    mask_logits: torch.Tensor,
    similarity: torch.Tensor,
    box_masks: torch.Tensor,
    color_thresh: float = 0.3,
    kernel_size: int = 3,
    dilation: int = 2,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """BoxInst pairwise term: mean of ``−log P(y_i = y_j)`` over the edges that count.

    An edge counts when its colour similarity is ≥ ``color_thresh`` (similarity is already 0 on padding)
    and its centre pixel lies inside the instance's GT box mask.

    Args:
        mask_logits: (N, H, W) logits of the matched queries.
        similarity: (N, k*k − 1, H, W) colour similarity of each instance's image.
        box_masks: (N, H, W) GT box masks at the same stride.
    Returns:
        (loss_sum, edge_count): the loss is ``loss_sum / max(edge_count, 1)``; both are returned so callers can
        average over all instances of a batch (and across processes).
    """
    edges = (similarity >= color_thresh).float() * box_masks[:, None].float()
    loss = -pairwise_log_same_prob(mask_logits, kernel_size, dilation)
    return (loss * edges).sum(), edges.sum()


def batch_projection_dice_cost(mask_logits: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """Matching cost: projection dice between every query mask and every GT box mask (fp32).

    ``C[q, k] = Σ_axis 1 − (2·⟨P_axis(σ(m_q)), P_axis(B_k)⟩ + 1) / (Σ P_axis(σ(m_q)) + Σ P_axis(B_k) + 1)``
    over the x- and y-axis projections (max), Mask2Former's batched dice form. Non-finite logits give
    non-finite costs that the matcher sanitises.

    Args:
        mask_logits: (Q, H, W) query mask logits at the mask stride.
        box_masks: (N, H, W) GT box masks at the same stride.
    Returns:
        (Q, N) costs in [0, 2].
    """
    scores = mask_logits.float().sigmoid()
    box_masks = box_masks.float()
    cost = scores.new_zeros(scores.shape[0], box_masks.shape[0])
    for dim in (1, 2):
        p = scores.amax(dim=dim)  # (Q, L)
        t = box_masks.amax(dim=dim)  # (N, L)
        numerator = 2.0 * p @ t.T + 1.0
        denominator = p.sum(-1)[:, None] + t.sum(-1)[None, :] + 1.0
        cost = cost + 1.0 - numerator / denominator
    return cost
