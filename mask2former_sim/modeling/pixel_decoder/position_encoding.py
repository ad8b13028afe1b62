"""Sine positional encoding of a 2-D feature map (DETR / Mask2Former ``PositionEmbeddingSine``)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding: half the channels encode y, half x (DETR, "Attention is all you need" style).

    For a pixel at row i (1-based cumulative count of valid pixels) with normalisation on,
    ``y = i / (H + eps) * scale``, and channel pair k gets ``sin(y / T^(2k/F))``, ``cos(y / T^(2k/F))``
    with T = ``temperature`` and F = ``num_pos_feats``; x likewise. Output channels: 2 * ``num_pos_feats``
    (y first, then x).
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        normalize: bool = False,
        scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoding for a feature map x (B, C, H, W), padding ``mask`` (B, H, W) True = padded.

        Returns:
            (B, 2 * num_pos_feats, H, W) float32; without a ``mask`` the encoding of one image, expanded over the
            batch (a view: every image has the same one).
        """
        if mask is None:
            mask = torch.zeros((1, x.shape[2], x.shape[3]), device=x.device, dtype=torch.bool)
            return self._encode(mask).expand(x.shape[0], -1, -1, -1)
        return self._encode(mask)

    def _encode(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 2 * num_pos_feats, H, W) for a padding mask (B, H, W)."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
