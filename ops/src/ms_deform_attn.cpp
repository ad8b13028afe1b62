// Argument checks of the MultiScaleDeformableAttention op; the kernels live in cuda/ms_deform_attn_cuda.cu.
#include "ms_deform_attn.h"

#include <c10/util/Exception.h>

namespace msda {
namespace {

void check_cuda_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "MultiScaleDeformableAttention: expected ", name,
              " on a CUDA device (the op has no CPU kernel; use the pure-PyTorch path on the CPU), found ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), "MultiScaleDeformableAttention: expected ", name,
              " to be contiguous; call .contiguous() first");
}

// Checks every input shared by forward and backward; returns {N, S, M, D, Lq, L, P}.
std::vector<int64_t> check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                  const at::Tensor& attn_weight, int64_t im2col_step) {
  check_cuda_contiguous(value, "value");
  check_cuda_contiguous(spatial_shapes, "spatial_shapes");
  check_cuda_contiguous(level_start_index, "level_start_index");
  check_cuda_contiguous(sampling_loc, "sampling_loc");
  check_cuda_contiguous(attn_weight, "attn_weight");
  const auto dtype = value.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "MultiScaleDeformableAttention: expected value of dtype float32 or float64, found ", dtype,
              " (the Python wrapper casts float16/bfloat16 to float32)");
  TORCH_CHECK(sampling_loc.scalar_type() == dtype && attn_weight.scalar_type() == dtype,
              "MultiScaleDeformableAttention: expected sampling_loc and attn_weight of the value's dtype ", dtype,
              ", found ", sampling_loc.scalar_type(), " and ", attn_weight.scalar_type());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "MultiScaleDeformableAttention: expected int64 spatial_shapes and level_start_index, found ",
              spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  TORCH_CHECK(value.dim() == 4, "MultiScaleDeformableAttention: expected value (N, S, M, D), found ",
              value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "MultiScaleDeformableAttention: expected sampling_loc (N, Lq, M, L, P, 2), found ",
              sampling_loc.sizes());
  const int64_t n = value.size(0), s = value.size(1), m = value.size(2), d = value.size(3);
  const int64_t lq = sampling_loc.size(1), l = sampling_loc.size(3), p = sampling_loc.size(4);
  TORCH_CHECK(sampling_loc.size(0) == n && sampling_loc.size(2) == m,
              "MultiScaleDeformableAttention: sampling_loc ", sampling_loc.sizes(),
              " does not match value (N, S, M, D) = ", value.sizes());
  TORCH_CHECK(attn_weight.dim() == 5 && attn_weight.size(0) == n && attn_weight.size(1) == lq &&
                  attn_weight.size(2) == m && attn_weight.size(3) == l && attn_weight.size(4) == p,
              "MultiScaleDeformableAttention: expected attn_weight (N, Lq, M, L, P) = (", n, ", ", lq, ", ", m,
              ", ", l, ", ", p, "), found ", attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == l && spatial_shapes.size(1) == 2,
              "MultiScaleDeformableAttention: expected spatial_shapes (L, 2) with L = ", l, ", found ",
              spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == l,
              "MultiScaleDeformableAttention: expected level_start_index (L,) with L = ", l, ", found ",
              level_start_index.sizes());
  TORCH_CHECK(im2col_step > 0, "MultiScaleDeformableAttention: expected im2col_step > 0, found ", im2col_step);
  return {n, s, m, d, lq, l, p};
}

}  // namespace

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                  const at::Tensor& attn_weight, int64_t im2col_step) {
  const auto sizes = check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  const int64_t n = sizes[0], m = sizes[2], d = sizes[3], lq = sizes[4];
  at::Tensor output = at::empty({n, lq, m * d}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  ms_deform_attn_cuda_forward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step,
                              output);
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                const at::Tensor& grad_output, int64_t im2col_step) {
  const auto sizes = check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  const int64_t n = sizes[0], m = sizes[2], d = sizes[3], lq = sizes[4];
  check_cuda_contiguous(grad_output, "grad_output");
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type(),
              "MultiScaleDeformableAttention: expected grad_output of dtype ", value.scalar_type(), ", found ",
              grad_output.scalar_type());
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == n && grad_output.size(1) == lq &&
                  grad_output.size(2) == m * d,
              "MultiScaleDeformableAttention: expected grad_output (N, Lq, M * D) = (", n, ", ", lq, ", ", m * d,
              "), found ", grad_output.sizes());
  at::Tensor grad_value = at::zeros_like(value);
  at::Tensor grad_sampling_loc = at::zeros_like(sampling_loc);
  at::Tensor grad_attn_weight = at::zeros_like(attn_weight);
  if (grad_output.numel() > 0) {
    ms_deform_attn_cuda_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output,
                                 im2col_step, grad_value, grad_sampling_loc, grad_attn_weight);
  }
  return {grad_value, grad_sampling_loc, grad_attn_weight};
}

}  // namespace msda
