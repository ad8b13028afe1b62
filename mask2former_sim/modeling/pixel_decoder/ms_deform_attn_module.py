"""``MSDeformAttn``: the multi-scale deformable attention module (Deformable DETR) around the functional op."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ...layers.ms_deform_attn import MSDA_IMPLS, ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` learned locations around its reference point on each of ``n_levels``.

    Sampling locations = reference point + offset / (W_l, H_l); offsets and attention weights (softmax over
    levels x points) are linear functions of the query.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        impl: str = "auto",
        im2col_step: int = 128,
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if impl not in MSDA_IMPLS:
            raise ValueError(f"MSDeformAttn: impl must be one of {MSDA_IMPLS}, got {impl!r}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.impl = impl
        self.im2col_step = im2col_step

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets: zero weight, bias on a circular grid (head h points at angle 2*pi*h/heads, point p at
        distance p+1); attention weights zero (uniform softmax); value/output projections xavier."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attend from queries to the flattened multi-level input.

        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalised (x, y) in [0, 1] per level.
            input_flatten: (N, S, C), levels flattened one after the other.
            input_spatial_shapes: (L, 2) int64 (H_l, W_l).
            input_level_start_index: (L,) int64.
            input_padding_mask: (N, S) True = padding (its values are zeroed) or None.

        Returns:
            (N, Lq, C).
        """
        n, len_q, _ = query.shape
        _, len_in, _ = input_flatten.shape
        expected = int((input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum())
        if expected != len_in:
            raise ValueError(
                f"MSDeformAttn: input has {len_in} positions but the spatial shapes "
                f"{input_spatial_shapes.tolist()} give {expected}"
            )
        if reference_points.shape[-1] != 2:
            raise ValueError(
                f"MSDeformAttn: reference points must be (x, y), got last dim {reference_points.shape[-1]}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, len_in, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, len_q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, len_q, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(n, len_q, self.n_heads, self.n_levels, self.n_points)
        # (W_l, H_l) per level so that an offset of 1 moves one pixel of that level
        normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1).to(offsets)
        sampling_locations = (
            reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        )
        output = ms_deform_attn(
            value,
            input_spatial_shapes,
            input_level_start_index,
            sampling_locations,
            weights,
            impl=self.impl,
            im2col_step=self.im2col_step,
        )
        return self.output_proj(output)
