// Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021): host entry points of the CUDA op.
//
// Shapes (N batch, S = sum_l H_l * W_l value positions, M heads, D channels per head, Lq queries, L levels,
// P points per level):
//   value               (N, S, M, D)          float32 or float64, contiguous, CUDA
//   spatial_shapes      (L, 2)                int64 (H_l, W_l), CUDA
//   level_start_index   (L,)                  int64 offset of level l in S, CUDA
//   sampling_loc        (N, Lq, M, L, P, 2)   normalised (x, y); pixel coordinates are x * W_l - 0.5
//   attn_weight         (N, Lq, M, L, P)
//   output              (N, Lq, M * D)
#pragma once

#include <vector>

#include <ATen/ATen.h>

namespace msda {

// Checks the inputs (device, dtype, rank, sizes) and returns the attention output (N, Lq, M * D).
at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                  const at::Tensor& attn_weight, int64_t im2col_step);

// Returns {grad_value, grad_sampling_loc, grad_attn_weight} for grad_output (N, Lq, M * D).
std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                const at::Tensor& grad_output, int64_t im2col_step);

// Kernel launchers (ms_deform_attn_cuda.cu); inputs already checked, outputs preallocated (grads zeroed).
void ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight, int64_t im2col_step, at::Tensor& output);

void ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                  const at::Tensor& attn_weight, const at::Tensor& grad_output,
                                  int64_t im2col_step, at::Tensor& grad_value, at::Tensor& grad_sampling_loc,
                                  at::Tensor& grad_attn_weight);

}  // namespace msda
