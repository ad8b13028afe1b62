"""``MultiScaleMaskedTransformerDecoder``: Mask2Former's decoder with masked attention (anchors-notes §2.3).

Learnable queries go through ``dec_layers - 1`` layers of masked cross-attention → self-attention → FFN;
layer i attends to level ``i % 3`` of the pixel decoder's features (stride 32, 16, 8 round-robin). Before the
first layer and after every layer a prediction head gives class logits and mask logits
(``einsum(mask_embed(q), mask_features)``); the head's masks, resized to the next layer's level and thresholded at
sigmoid 0.5, become that layer's attention mask (a query attends only inside its predicted foreground).

Inference needs only the last head (``all_heads=False``): the other heads then give only their attention masks,
computed at the level's size from the mask features resized to it. Bilinear resizing is linear, so
``resize(einsum(e, F)) = einsum(e, resize(F))``: the same masks (up to float rounding) without the full-size mask
logits of every query at every head.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..pixel_decoder.msdeformattn import c2_xavier_fill
from ..pixel_decoder.position_encoding import PositionEmbeddingSine
from .attention_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["MultiScaleMaskedTransformerDecoder"]


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention transformer decoder with ``dec_layers`` prediction heads."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        mask_classification: bool = True,
    ) -> None:
        """
        Args:
            in_channels: channels of the pixel decoder's multi-scale features.
            num_classes: K thing classes (the classifier has K + 1 outputs, the last is "no object").
            dec_layers: prediction heads = masked-attention layers + 1 (``MODEL.MASK_FORMER.DEC_LAYERS``, 10 →
                9 layers); the extra head supervises the learnable queries themselves.
            enforce_input_project: a 1x1 conv on the features even when ``in_channels == hidden_dim``.
        """
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"MultiScaleMaskedTransformerDecoder: dec_layers must be >= 1, got {dec_layers}")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers - 1
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(self.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm)
            for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learnable query features
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positional embeddings

        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())

        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(
        cls, cfg, in_channels: int, mask_classification: bool = True
    ) -> "MultiScaleMaskedTransformerDecoder":
        """Build from ``MODEL.MASK_FORMER.*`` and ``MODEL.SEM_SEG_HEAD.{NUM_CLASSES, MASK_DIM}``."""
        mf = cfg.MODEL.MASK_FORMER
        return cls(
            in_channels=in_channels,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            hidden_dim=mf.HIDDEN_DIM,
            num_queries=mf.NUM_OBJECT_QUERIES,
            nheads=mf.NHEADS,
            dim_feedforward=mf.DIM_FEEDFORWARD,
            dec_layers=mf.DEC_LAYERS,
            pre_norm=mf.PRE_NORM,
            mask_dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            enforce_input_project=mf.ENFORCE_INPUT_PROJ,
            mask_classification=mask_classification,
        )

    def forward(
        self,
        x: List[torch.Tensor],
        mask_features: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        all_heads: bool = True,
    ) -> Dict[str, object]:
        """Decode the queries.

        Args:
            x: 3 feature maps (B, C, h, w) at strides 32, 16, 8.
            mask_features: (B, mask_dim, H/4, W/4).
            mask: padding mask, accepted for Mask2Former's signature; padding is not masked (as Mask2Former).
            all_heads: the predictions of every head (training, the SIM teacher); False: of the last head only
                (inference), ``aux_outputs`` is then empty.

        Returns:
            {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4),
             "aux_outputs": [{"pred_logits", "pred_masks"}] for heads 0 .. dec_layers-2}.
        """
        del mask
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"MultiScaleMaskedTransformerDecoder expects {self.num_feature_levels} feature levels, got {len(x)}"
            )
        src, pos, size_list = [], [], []
        for i in range(self.num_feature_levels):
            size_list.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i]).to(x[i].dtype).flatten(2).permute(2, 0, 1))
            level = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))  # (HW, B, C)

        batch = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        level_features = None
        if not all_heads:  # the mask features at each level's size, for the attention masks only
            level_features = [
                F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False) for size in size_list
            ]

        predictions_class, predictions_mask = [], []
        attn_mask: Optional[torch.Tensor] = None  # the previous head's, for the next layer
        for i in range(self.num_layers + 1):
            if i > 0:
                level_index = (i - 1) % self.num_feature_levels
                output = self.transformer_cross_attention_layers[i - 1](
                    output,
                    src[level_index],
                    memory_mask=attn_mask,
                    memory_key_padding_mask=None,
                    pos=pos[level_index],
                    query_pos=query_embed,
                )
                output = self.transformer_self_attention_layers[i - 1](output, query_pos=query_embed)
                output = self.transformer_ffn_layers[i - 1](output)
            last = i == self.num_layers
            next_size = None if last else size_list[i % self.num_feature_levels]
            if all_heads or last:
                outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(output, mask_features, next_size)
                predictions_class.append(outputs_class)
                predictions_mask.append(outputs_mask)
            else:
                attn_mask = self.attention_mask(output, level_features[i % self.num_feature_levels])

        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m} for c, m in zip(predictions_class[:-1], predictions_mask[:-1])
            ],
        }

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_target_size: Optional[Tuple[int, int]]
    ) -> Tuple[Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        """One prediction head.

        Args:
            output: queries (Q, B, d).
            mask_features: (B, mask_dim, H/4, W/4).
            attn_mask_target_size: (h, w) of the level the next layer attends to; None for the last head (no
                next layer, no attention mask).

        Returns:
            class logits (B, Q, K+1) or None, mask logits (B, Q, H/4, W/4), attention mask (see
            :meth:`_attention_mask`) or None.
        """
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoder_output) if self.mask_classification else None
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        if attn_mask_target_size is None:
            return outputs_class, outputs_mask, None
        resized = F.interpolate(outputs_mask, size=attn_mask_target_size, mode="bilinear", align_corners=False)
        return outputs_class, outputs_mask, self._attention_mask(resized)

    def attention_mask(self, output: torch.Tensor, level_features: torch.Tensor) -> torch.Tensor:
        """The attention mask of a head whose predictions are not needed: its mask logits at the next level's
        size straight from the mask features resized to that size, ``level_features`` (B, mask_dim, h, w)."""
        mask_embed = self.mask_embed(self.decoder_norm(output).transpose(0, 1))
        return self._attention_mask(torch.einsum("bqc,bchw->bqhw", mask_embed, level_features))

    def _attention_mask(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """(B * heads, Q, h * w) bool from mask logits (B, Q, h, w) at a level's size, detached: True = not
        attended (sigmoid < 0.5). A query whose predicted mask is empty at this level attends everywhere instead
        of nowhere."""
        attn_mask = mask_logits.detach().sigmoid().flatten(2) < 0.5
        attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
        return attn_mask.unsqueeze(1).expand(-1, self.num_heads, -1, -1).flatten(0, 1)
