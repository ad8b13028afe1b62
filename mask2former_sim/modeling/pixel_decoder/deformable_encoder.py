"""Encoder-only deformable transformer over 3 feature levels (Deformable DETR encoder, as Mask2Former uses it)."""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .ms_deform_attn_module import MSDeformAttn

__all__ = ["MSDeformAttnTransformerEncoderLayer", "MSDeformAttnTransformerEncoderOnly"]


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm layer: x = LN(x + MSDeformAttn(x + pos)); x = LN(x + FFN(x)), FFN = Linear-ReLU-Linear."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        msda_impl: str = "auto",
        im2col_step: int = 128,
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=msda_impl, im2col_step=im2col_step)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        """src, pos (N, S, d); reference_points (N, S, L, 2); padding_mask (N, S). Returns (N, S, d)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


def encoder_reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level as normalised (x, y), rescaled to every level's valid region.

    Args:
        spatial_shapes: (L, 2) int64 (H_l, W_l).
        valid_ratios: (N, L, 2) fraction (w, h) of each level that is not padding.

    Returns:
        (N, S, L, 2).
    """
    reference_points_list = []
    device = valid_ratios.device
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        reference_points_list.append(torch.stack((ref_x, ref_y), -1))
    reference_points = torch.cat(reference_points_list, 1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """(w, h) fraction of non-padded columns / rows of a padding mask (N, H, W) True = padded → (N, 2)."""
    _, h, w = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Stack of deformable encoder layers over flattened multi-level features with a learnable level embedding."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        msda_impl: str = "auto",
        im2col_step: int = 128,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            MSDeformAttnTransformerEncoderLayer(
                d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points, msda_impl, im2col_step
            )
            for _ in range(num_encoder_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier for every matrix, then the deformable-attention init, level embedding ~ N(0, 1)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the levels jointly.

        Args:
            srcs: per level (N, d, H_l, W_l), coarsest first.
            pos_embeds: per level (N, d, H_l, W_l).

        Returns:
            memory (N, S, d), spatial_shapes (L, 2) int64, level_start_index (L,) int64.
        """
        masks = [torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool) for x in srcs]
        src_flatten, mask_flatten, pos_flatten, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flatten.append(src.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        mask_flatten = torch.cat(mask_flatten, 1)
        pos_flatten = torch.cat(pos_flatten, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1)
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        output = src_flatten
        for layer in self.layers:
            output = layer(output, pos_flatten, reference_points, spatial_shapes, level_start_index, mask_flatten)
        return output, spatial_shapes, level_start_index
