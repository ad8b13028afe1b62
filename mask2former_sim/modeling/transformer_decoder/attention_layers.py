"""Building blocks of the masked-attention decoder: self-attention, cross-attention, FFN, MLP (DETR style)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SelfAttentionLayer", "CrossAttentionLayer", "FFNLayer", "MLP"]


def _with_pos(tensor: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return tensor if pos is None else tensor + pos


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Query self-attention; post-norm ``LN(x + Attn(x + pos, x + pos, x))`` or pre-norm."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        tgt_mask: Optional[torch.Tensor] = None,
        tgt_key_padding_mask: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tgt, query_pos (Q, B, d) → (Q, B, d)."""
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt2 = self.self_attn(q, k, value=tgt2, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
            return tgt + self.dropout(tgt2)
        q = k = _with_pos(tgt, query_pos)
        tgt2 = self.self_attn(q, k, value=tgt, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
        return self.norm(tgt + self.dropout(tgt2))


class CrossAttentionLayer(nn.Module):
    """Queries attend to image features: post-norm ``LN(x + Attn(x + qpos, mem + pos, mem, mask))`` or pre-norm."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tgt (Q, B, d), memory/pos (HW, B, d), memory_mask (B*heads, Q, HW) True = not attended."""
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            tgt2 = self.multihead_attn(
                query=_with_pos(tgt2, query_pos),
                key=_with_pos(memory, pos),
                value=memory,
                attn_mask=memory_mask,
                key_padding_mask=memory_key_padding_mask,
            )[0]
            return tgt + self.dropout(tgt2)
        tgt2 = self.multihead_attn(
            query=_with_pos(tgt, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
        )[0]
        return self.norm(tgt + self.dropout(tgt2))


class FFNLayer(nn.Module):
    """Feed-forward block ``LN(x + W2 ReLU(W1 x))`` (post-norm) or pre-norm."""

    def __init__(
        self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, normalize_before: bool = False
    ) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """(Q, B, d) → (Q, B, d)."""
        if self.normalize_before:
            tgt2 = self.linear2(self.dropout(F.relu(self.linear1(self.norm(tgt)))))
            return tgt + self.dropout(tgt2)
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm(tgt + self.dropout(tgt2))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) → (..., output_dim)."""
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x
