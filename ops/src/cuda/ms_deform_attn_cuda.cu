// Kernel launchers of multi-scale deformable attention: batch chunking (im2col_step), dtype dispatch, channel
// packing (kVec) and the choice of the backward reduction path. Includes only ATen/c10 headers
// (torch/extension.h triples build time).
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ms_deform_attn.h"
#include "ms_deform_attn_kernels.cuh"

namespace msda {
namespace {

constexpr int64_t kMaxBlocks = int64_t(1) << 30;

int64_t num_blocks(int64_t total, int threads) {
  return std::min((total + threads - 1) / threads, kMaxBlocks);
}

// Largest power of two strictly below channels (0 for one channel): the first stride of the shared-memory tree.
int reduce_start(int64_t channels) {
  int start = 1;
  while (start < channels) {
    start <<= 1;
  }
  return start / 2;
}

// Channels per thread of the packed (16-byte) kernels: 4 floats or 2 doubles.
template <typename scalar_t>
constexpr int pack_width() {
  return static_cast<int>(16 / sizeof(scalar_t));
}

bool aligned_16(const void* ptr) {
  return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0;
}

// Packed kernels need D divisible by the pack width and 16-byte aligned rows in every packed tensor (chunk
// offsets are multiples of D, hence stay aligned).
template <typename scalar_t>
bool can_pack(int64_t channels, std::initializer_list<const at::Tensor*> tensors) {
  if (channels % pack_width<scalar_t>() != 0) {
    return false;
  }
  for (const at::Tensor* t : tensors) {
    if (!aligned_16(t->data_ptr())) {
      return false;
    }
  }
  return true;
}

Dims chunk_dims(const at::Tensor& value, const at::Tensor& sampling_loc, int64_t batch) {
  return Dims{batch,
              value.size(1),
              value.size(2),
              value.size(3),
              sampling_loc.size(1),
              sampling_loc.size(3),
              sampling_loc.size(4)};
}

}  // namespace

void ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight, int64_t im2col_step, at::Tensor& output) {
  const c10::cuda::CUDAGuard device_guard(value.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = value.size(0);
  const int64_t step = std::min(im2col_step, batch);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    constexpr int kPack = pack_width<scalar_t>();
    const bool packed = can_pack<scalar_t>(value.size(3), {&value, &output});
    for (int64_t start = 0; start < batch; start += step) {
      const Dims dims = chunk_dims(value, sampling_loc, std::min(step, batch - start));
      const int64_t total = dims.batch * dims.queries * dims.heads * dims.channels;
      const scalar_t* value_ptr = value.data_ptr<scalar_t>() + start * dims.spatial * dims.heads * dims.channels;
      const int64_t* shapes_ptr = spatial_shapes.data_ptr<int64_t>();
      const int64_t* starts_ptr = level_start_index.data_ptr<int64_t>();
      const scalar_t* loc_ptr = sampling_loc.data_ptr<scalar_t>() + start * sampling_loc.stride(0);
      const scalar_t* attn_ptr = attn_weight.data_ptr<scalar_t>() + start * attn_weight.stride(0);
      scalar_t* output_ptr = output.data_ptr<scalar_t>() + start * output.stride(0);
      if (packed) {
        ms_deform_attn_forward_kernel<scalar_t, kPack>
            <<<num_blocks(total / kPack, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(
                value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, dims, output_ptr);
      } else {
        ms_deform_attn_forward_kernel<scalar_t, 1>
            <<<num_blocks(total, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(
                value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, dims, output_ptr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                  const at::Tensor& attn_weight, const at::Tensor& grad_output,
                                  int64_t im2col_step, at::Tensor& grad_value, at::Tensor& grad_sampling_loc,
                                  at::Tensor& grad_attn_weight) {
  const c10::cuda::CUDAGuard device_guard(value.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = value.size(0);
  const int64_t step = std::min(im2col_step, batch);
  const int64_t channels = value.size(3);
  const int start_stride = reduce_start(channels);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    constexpr int kPack = pack_width<scalar_t>();
    // Packed warp path when D / kPack divides 32, else scalar warp (D divides 32), shared (D <= 1024), global.
    const bool packed = can_pack<scalar_t>(channels, {&value, &grad_output, &grad_value}) &&
                        32 % (channels / kPack) == 0;
    Reduction reduction = Reduction::kGlobal;
    if (packed || (channels <= 32 && 32 % channels == 0)) {
      reduction = Reduction::kWarp;
    } else if (channels <= kMaxSharedChannels) {
      reduction = Reduction::kShared;
    }
    // kShared blocks hold whole groups of D threads; the other paths use fixed blocks.
    const int threads = reduction == Reduction::kShared
                            ? static_cast<int>(std::max<int64_t>(1, kThreadsPerBlock / channels) * channels)
                            : kThreadsPerBlock;
    for (int64_t start = 0; start < batch; start += step) {
      const Dims dims = chunk_dims(value, sampling_loc, std::min(step, batch - start));
      const int64_t total = dims.batch * dims.queries * dims.heads * dims.channels;
      const int64_t value_offset = start * dims.spatial * dims.heads * dims.channels;
      const int64_t loc_offset = start * sampling_loc.stride(0);
      const int64_t attn_offset = start * attn_weight.stride(0);
      const scalar_t* value_ptr = value.data_ptr<scalar_t>() + value_offset;
      const int64_t* shapes_ptr = spatial_shapes.data_ptr<int64_t>();
      const int64_t* starts_ptr = level_start_index.data_ptr<int64_t>();
      const scalar_t* loc_ptr = sampling_loc.data_ptr<scalar_t>() + loc_offset;
      const scalar_t* attn_ptr = attn_weight.data_ptr<scalar_t>() + attn_offset;
      const scalar_t* grad_out_ptr = grad_output.data_ptr<scalar_t>() + start * grad_output.stride(0);
      scalar_t* grad_value_ptr = grad_value.data_ptr<scalar_t>() + value_offset;
      scalar_t* grad_loc_ptr = grad_sampling_loc.data_ptr<scalar_t>() + loc_offset;
      scalar_t* grad_attn_ptr = grad_attn_weight.data_ptr<scalar_t>() + attn_offset;
      const int64_t blocks = num_blocks(total, threads);
      switch (reduction) {
        case Reduction::kWarp:
          if (packed) {
            ms_deform_attn_backward_warp_kernel<scalar_t, kPack>
                <<<num_blocks(total / kPack, threads), threads, 0, stream>>>(
                    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr, dims, start_stride,
                    grad_value_ptr, grad_loc_ptr, grad_attn_ptr);
          } else {
            ms_deform_attn_backward_warp_kernel<scalar_t, 1><<<blocks, threads, 0, stream>>>(
                value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr, dims, start_stride,
                grad_value_ptr, grad_loc_ptr, grad_attn_ptr);
          }
          break;
        case Reduction::kShared:
          ms_deform_attn_backward_shared_kernel<scalar_t>
              <<<blocks, threads, 3 * threads * sizeof(scalar_t), stream>>>(
                  value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr, dims, start_stride,
                  grad_value_ptr, grad_loc_ptr, grad_attn_ptr);
          break;
        case Reduction::kGlobal:
          ms_deform_attn_backward_global_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
              value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr, dims, start_stride,
              grad_value_ptr, grad_loc_ptr, grad_attn_ptr);
          break;
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace msda
