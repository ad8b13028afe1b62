"""``MSDeformAttnPixelDecoder``: Mask2Former's pixel decoder (deformable encoder on res3-5 + FPN to stride 4).

Layout (anchors-notes §2.3): per encoder level a 1x1 conv + GroupNorm(32, d) projection (res5, res4, res3),
sine position encodings, a 6-layer encoder-only deformable transformer over the 3 levels, then an FPN-style
top-down path for the finer levels (res2): lateral 1x1 conv + GN, add the bilinearly upsampled coarser output,
3x3 conv + GN + ReLU. ``mask_features`` is a 1x1 conv of the finest output.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ...layers.shape_spec import ShapeSpec
from .deformable_encoder import MSDeformAttnTransformerEncoderOnly
from .position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttnPixelDecoder", "c2_xavier_fill", "conv_norm_act"]


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2 "XavierFill" (detectron2): kaiming-uniform with a=1 on the weight, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def _norm(norm: str, channels: int) -> Optional[nn.Module]:
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm == "":
        return None
    raise ValueError(f"MODEL.SEM_SEG_HEAD.NORM must be 'GN' or '', got {norm!r}")


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, norm: str, relu: bool) -> nn.Sequential:
    """Conv (no bias when normalised, detectron2 convention, c2_xavier init) + optional GN + optional ReLU."""
    norm_layer = _norm(norm, out_channels)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
    c2_xavier_fill(conv)
    layers: List[nn.Module] = [conv]
    if norm_layer is not None:
        layers.append(norm_layer)
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def fpn_level_count(min_encoder_stride: int, common_stride: int) -> int:
    """The FPN levels finer than the deformable encoder down to ``common_stride`` (1 for an encoder on res3-res5
    and stride-4 masks): one per halving of the stride."""
    return int(math.log2(min_encoder_stride) - math.log2(common_stride))


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder producing stride-4 ``mask_features`` and 3 multi-scale features for the transformer decoder."""

    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_in_features: List[str],
        common_stride: int,
        msda_impl: str = "auto",
        im2col_step: int = 128,
    ) -> None:
        """
        Args:
            input_shape: backbone features the decoder reads ({"res2": ShapeSpec(C, 4), ...}).
            transformer_in_features: features fed to the deformable encoder (res3, res4, res5).
            common_stride: stride of ``mask_features`` (4); FPN levels are added down to it.
            msda_impl, im2col_step: see :func:`mask2former_sim.layers.ms_deform_attn`.
        """
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: encoder features {missing} are not among the backbone "
                f"outputs {sorted(input_shape)} (MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)"
            )
        # finest first
        input_shape = dict(sorted(input_shape.items(), key=lambda kv: kv[1].stride))
        self.in_features = list(input_shape)
        encoder_shape = {k: v for k, v in input_shape.items() if k in transformer_in_features}
        self.transformer_in_features = list(encoder_shape)
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # projections ordered coarsest first (res5, res4, res3), as the encoder consumes them
        self.input_proj = nn.ModuleList()
        for name in reversed(self.transformer_in_features):
            conv = nn.Conv2d(encoder_shape[name].channels, conv_dim, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.constant_(conv.bias, 0)
            self.input_proj.append(nn.Sequential(conv, nn.GroupNorm(32, conv_dim)))

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
            msda_impl=msda_impl,
            im2col_step=im2col_step,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3  # levels handed to the transformer decoder
        self.common_stride = common_stride

        min_encoder_stride = min(v.stride for v in encoder_shape.values())
        self.num_fpn_levels = fpn_level_count(min_encoder_stride, common_stride)
        fpn_features = self.in_features[: self.num_fpn_levels]
        # top-down order: the coarsest FPN level first
        self.fpn_features = list(reversed(fpn_features))
        self.lateral_convs = nn.ModuleList(
            conv_norm_act(input_shape[f].channels, conv_dim, 1, norm, relu=False) for f in self.fpn_features
        )
        self.output_convs = nn.ModuleList(
            conv_norm_act(conv_dim, conv_dim, 3, norm, relu=True) for _ in self.fpn_features
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> "MSDeformAttnPixelDecoder":
        """Build from ``MODEL.SEM_SEG_HEAD.*`` (and ``MODEL.MASK_FORMER.DROPOUT``) for the backbone's shapes."""
        head = cfg.MODEL.SEM_SEG_HEAD
        return cls(
            {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            transformer_dropout=cfg.MODEL.MASK_FORMER.DROPOUT,
            transformer_nheads=head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            transformer_dim_feedforward=head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            transformer_enc_layers=head.TRANSFORMER_ENC_LAYERS,
            transformer_n_points=head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            conv_dim=head.CONVS_DIM,
            mask_dim=head.MASK_DIM,
            norm=head.NORM,
            transformer_in_features=list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            common_stride=head.COMMON_STRIDE,
            msda_impl=head.MSDA_IMPL,
            im2col_step=head.MSDA_IM2COL_STEP,
        )

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Run the decoder in float32 (autocast off, as Mask2Former: the deformable op is fp32/fp64 only).

        Args:
            features: backbone outputs {"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}.

        Returns:
            mask_features (B, mask_dim, H/4, W/4), the encoder output at the coarsest level (B, d, H/32, W/32),
            multi_scale_features: 3 tensors (B, d, h, w) at strides 32, 16, 8.
        """
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_features_fp32(features)

    def _forward_features_fp32(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        srcs, pos = [], []
        for idx, name in enumerate(reversed(self.transformer_in_features)):
            x = features[name].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, level_start_index = self.transformer(srcs, pos)
        batch = memory.shape[0]

        sizes = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).tolist()
        out = [
            level.transpose(1, 2).reshape(batch, -1, h, w)
            for level, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes.tolist())
        ]
        for idx, name in enumerate(self.fpn_features):
            lateral = self.lateral_convs[idx](features[name].float())
            merged = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](merged))

        multi_scale_features = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale_features

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
