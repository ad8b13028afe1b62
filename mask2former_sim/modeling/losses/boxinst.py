"""BoxInst-M2F: BoxInst's low-level box losses (Tian et al., CVPR 2021) on Mask2Former's stride-4 masks, the box
matching cost, the ``"boxinst"`` loss family and the supervision part that builds its targets.

The terms are pure functions on tensors, checked against hand computations:

- :func:`rgb_to_lab` — sRGB → CIE Lab (D65), vectorised in torch (BoxInst calls skimage per image on the CPU).
- :func:`images_color_similarity` — ``exp(−‖Lab_i − Lab_j‖₂ / θ)`` for the 8 neighbours of a 3×3 kernel with
  dilation 2 on the 4×-average-pooled image.
- :func:`compute_project_term` — ``dice(max_y m, max_y B) + dice(max_x m, max_x B)``.
- :func:`compute_pairwise_term` — ``−log(p_i p_j + (1−p_i)(1−p_j))`` in log-space on the kept edges.

and the pieces of the mode: :class:`BoxProjectionCost` (matching without masks), :class:`BoxInstLoss`
(``loss_proj``, ``loss_pairwise`` of the matched queries, the pairwise term weighted by the
:class:`~..pairwise_schedule.PairwiseSchedule`) and :class:`BoxTargets` (box masks, the box raster of
:func:`~...structures.boxes.boxes_to_stride_masks`, and colour similarities).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...structures.boxes import boxes_to_stride_masks
from ...utils.profiling import stage
from ..criterion import LossContext, batch_instances, matched_logits, matched_rows
from ..image_list import place
from ..pairwise_schedule import PairwiseSchedule
from ..targets import ImageTarget, Indices, SupervisionPart, Targets

__all__ = [
    "rgb_to_lab",
    "unfold_wo_center",
    "images_color_similarity",
    "dice_coefficient",
    "compute_project_term",
    "pairwise_log_same_prob",
    "compute_pairwise_term",
    "batch_projection_dice_cost",
    "BoxProjectionCost",
    "BoxInstLoss",
    "BoxTargets",
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
    difference = lab[:, :, None] - neighbours
    # the 2-norm over the 3 Lab channels written out: linalg.vector_norm over this strided dim is ~80x slower on CPU
    distance = difference.square().sum(1).sqrt()
    similarity = torch.exp(-distance / theta)
    neighbour_valid = unfold_wo_center(valid_small, kernel_size, dilation)[:, 0]
    return similarity * neighbour_valid * valid_small


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


class BoxProjectionCost:
    """Box-supervised matching cost of one image.

    ``C = w_cls·(−softmax(logits)[:, tgt]) + w_proj·cost_proj``, with ``cost_proj`` the batched projection dice
    of each query's stride-4 mask against each GT box mask.
    """

    def __init__(self, *, cost_class: float, cost_projection: float) -> None:
        self.cost_class = cost_class
        self.cost_projection = cost_projection

    @classmethod
    def from_config(cls, cfg) -> "BoxProjectionCost":
        bi = cfg.MODEL.BOXINST
        return cls(cost_class=bi.MATCHER.COST_CLASS, cost_projection=bi.MATCHER.COST_PROJECTION)

    def __call__(self, outputs_b: Dict[str, torch.Tensor], target_b: ImageTarget) -> torch.Tensor:
        """Args: ``pred_logits`` (Q, K+1), ``pred_masks`` (Q, h, w); target ``labels``, ``box_masks`` (N, h, w).
        Returns the (Q, N) fp32 cost."""
        cost = -self.cost_class * outputs_b["pred_logits"].float().softmax(-1)[:, target_b["labels"]]
        return cost + self.cost_projection * batch_projection_dice_cost(
            outputs_b["pred_masks"].float(), target_b["box_masks"]
        )


class BoxInstLoss:
    """The ``"boxinst"`` loss family: ``loss_proj`` and ``loss_pairwise`` of the matched queries of one head.

    ``loss_proj = Σ_k [dice(max_y m_k, max_y B_k) + dice(max_x m_k, max_x B_k)] / num_masks`` and
    ``loss_pairwise = factor · Σ_e −log P(y_i = y_j)·1[e counts] / max(#edges, 1)`` over all matched instances
    of the batch (BoxInst's global edge average), with the factor of the :class:`~.pairwise_schedule.PairwiseSchedule`
    at the context's iteration.
    """

    def __init__(self, *, color_thresh: float, kernel_size: int, dilation: int, schedule: PairwiseSchedule) -> None:
        self.color_thresh = color_thresh
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.schedule = schedule

    @classmethod
    def from_config(cls, cfg, schedule: PairwiseSchedule) -> "BoxInstLoss":
        pw = cfg.MODEL.BOXINST.PAIRWISE
        return cls(color_thresh=pw.COLOR_THRESH, kernel_size=pw.SIZE, dilation=pw.DILATION, schedule=schedule)

    def num_instances(self, targets: Targets) -> int:
        """All GTs, pasted ones included (``loss_proj``'s ``num_masks``; ``loss_pairwise`` averages over its edges)."""
        return batch_instances(targets)

    def __call__(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, context: LossContext
    ) -> Dict[str, torch.Tensor]:
        pred_masks = outputs["pred_masks"]
        mask_logits = matched_logits(pred_masks, indices)  # (M, h, w)
        if mask_logits.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_proj": zero, "loss_pairwise": zero.clone()}
        box_masks = matched_rows(targets, indices, "box_masks")
        similarity = torch.cat(
            [t["color_similarity"][None].expand(len(gt), -1, -1, -1) for t, (_, gt) in zip(targets, indices)]
        )
        loss_proj = compute_project_term(mask_logits.sigmoid(), box_masks).sum() / context.num_masks
        total, count = compute_pairwise_term(
            mask_logits, similarity, box_masks, self.color_thresh, self.kernel_size, self.dilation
        )
        factor = self.schedule.factor(context.iteration)
        return {"loss_proj": loss_proj, "loss_pairwise": factor * total / count.clamp_min(1.0)}


def _remove_bottom_rows(valid: torch.Tensor, rows: int) -> torch.Tensor:
    """Mark the last ``rows`` rows of real image content of every image invalid (BoxInst's bottom-pixel removal)."""
    if rows <= 0:
        return valid
    valid = valid.clone()
    row_has_content = valid.any(dim=2)  # (B, H)
    height = valid.shape[1]
    last = torch.where(row_has_content, torch.arange(height, device=valid.device), -1).amax(dim=1)
    for b, last_row in enumerate(last.tolist()):
        if last_row >= 0:
            valid[b, max(last_row + 1 - rows, 0) : last_row + 1] = False
    return valid


class BoxTargets(SupervisionPart):
    """The targets of the box terms: ``box_masks`` (N, Hp/s, Wp/s) and ``color_similarity`` (k²−1, Hp/s, Wp/s).

    The colour similarity is computed once per batch, on the un-normalised images padded like the network input,
    and read by every head.

    Args:
        stride: mask stride s (``MODEL.BOXINST.MASK_STRIDE``).
        kernel_size, dilation, theta: the pairwise neighbourhood and colour scale (``MODEL.BOXINST.PAIRWISE``).
        bottom_pixels_removed: rows at the bottom of each image's content that give no edges (BoxInst: 10).
    """

    def __init__(
        self, *, stride: int, kernel_size: int, dilation: int, theta: float, bottom_pixels_removed: int = 0
    ) -> None:
        super().__init__()
        self.stride = stride
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.theta = theta
        self.bottom_pixels_removed = bottom_pixels_removed

    @classmethod
    def from_config(cls, cfg) -> "BoxTargets":
        bi = cfg.MODEL.BOXINST
        return cls(
            stride=bi.MASK_STRIDE,
            kernel_size=bi.PAIRWISE.SIZE,
            dilation=bi.PAIRWISE.DILATION,
            theta=bi.PAIRWISE.THETA,
            bottom_pixels_removed=bi.BOTTOM_PIXELS_REMOVED,
        )

    @torch.no_grad()
    def build_targets(self, targets: Targets, batched_inputs: Sequence[Dict[str, Any]], iteration: int) -> Targets:
        hp, wp = targets[0]["padding_mask"].shape
        device = targets[0]["padding_mask"].device
        if hp % self.stride or wp % self.stride:
            raise ValueError(f"padded input {hp}x{wp} must be divisible by MODEL.BOXINST.MASK_STRIDE = {self.stride}")
        with stage("box targets (Lab, affinities)"):
            raw_images = torch.stack([place(x["image"].to(device).float(), hp, wp, 0) for x in batched_inputs])
            valid = ~torch.stack([t["padding_mask"] for t in targets])
            valid = _remove_bottom_rows(valid, self.bottom_pixels_removed)
            similarities = images_color_similarity(
                raw_images, valid, self.stride, self.kernel_size, self.dilation, self.theta
            )
            return [
                {
                    **t,
                    "box_masks": boxes_to_stride_masks(t["boxes"], hp, wp, self.stride),
                    "color_similarity": color_similarity,
                }
                for t, color_similarity in zip(targets, similarities)
            ]

    def extra_repr(self) -> str:
        return f"stride={self.stride}, kernel_size={self.kernel_size}, dilation={self.dilation}, theta={self.theta}"
