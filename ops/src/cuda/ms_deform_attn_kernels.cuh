// Device code of multi-scale deformable attention: bilinear sampling, forward and backward kernels.
//
// One thread handles kVec consecutive channels of one (n, q, m) (kVec = 16 bytes / element size when D allows and
// the pointers are 16-byte aligned, else 1); a "group" is the D / kVec threads of one (n, q, m). Sampling
// follows grid_sample(align_corners=False, padding_mode="zeros"): a normalised location (x, y) maps to pixel
// coordinates (x * W - 0.5, y * H - 0.5), and corners outside the map contribute zero.
//
// The backward pass scatters dL/dvalue with atomics and reduces dL/dlocation and dL/dweight over the D channels
// of a group, by one of three paths chosen from D on the host:
//   kWarp    D / kVec divides 32: groups sit inside one warp, reduced with warp shuffles (D = 32 is the usual
//            case: 8 threads of 4 floats per group, and float4 atomics for dL/dvalue on sm_90).
//   kShared  D <= 1024 otherwise (kVec = 1): blocks hold whole groups, reduced by a tree in shared memory.
//   kGlobal  D > 1024 (kVec = 1): every thread adds its partial sums to global memory with atomics.
#pragma once

#include <cstdint>
#include <type_traits>

#include <ATen/cuda/Atomic.cuh>

namespace msda {

constexpr int kThreadsPerBlock = 256;
constexpr int kMaxSharedChannels = 1024;
constexpr unsigned kFullWarpMask = 0xffffffffu;

// Sizes of one batch chunk.
struct Dims {
  int64_t batch;     // N of the chunk
  int64_t spatial;   // S = sum_l H_l * W_l
  int64_t heads;     // M
  int64_t channels;  // D
  int64_t queries;   // Lq
  int64_t levels;    // L
  int64_t points;    // P
};

enum class Reduction { kWarp, kShared, kGlobal };

// The four neighbours of pixel coordinates (h, w): offsets into a level's value rows (-1 outside the map) and
// bilinear weights, ordered (top-left, top-right, bottom-left, bottom-right).
template <typename scalar_t>
struct Corners {
  int64_t offset[4];
  scalar_t weight[4];
  scalar_t lh, lw, hh, hw;  // fractional parts and their complements
};

// True when the sample at (h, w) touches the map at all (some corner inside).
template <typename scalar_t>
__device__ __forceinline__ bool sample_inside(scalar_t h, scalar_t w, int64_t height, int64_t width) {
  return h > scalar_t(-1) && w > scalar_t(-1) && h < static_cast<scalar_t>(height) &&
         w < static_cast<scalar_t>(width);
}

template <typename scalar_t>
__device__ __forceinline__ Corners<scalar_t> bilinear_corners(scalar_t h, scalar_t w, int64_t height,
                                                              int64_t width, int64_t row_stride) {
  Corners<scalar_t> c;
  const scalar_t h_floor = floor(h);
  const scalar_t w_floor = floor(w);
  const int64_t h_low = static_cast<int64_t>(h_floor);
  const int64_t w_low = static_cast<int64_t>(w_floor);
  c.lh = h - h_floor;
  c.lw = w - w_floor;
  c.hh = scalar_t(1) - c.lh;
  c.hw = scalar_t(1) - c.lw;
  const bool top = h_low >= 0, bottom = h_low + 1 < height;
  const bool left = w_low >= 0, right = w_low + 1 < width;
  c.offset[0] = (top && left) ? (h_low * width + w_low) * row_stride : -1;
  c.offset[1] = (top && right) ? (h_low * width + w_low + 1) * row_stride : -1;
  c.offset[2] = (bottom && left) ? ((h_low + 1) * width + w_low) * row_stride : -1;
  c.offset[3] = (bottom && right) ? ((h_low + 1) * width + w_low + 1) * row_stride : -1;
  c.weight[0] = c.hh * c.hw;
  c.weight[1] = c.hh * c.lw;
  c.weight[2] = c.lh * c.hw;
  c.weight[3] = c.lh * c.lw;
  return c;
}

// kVec consecutive channels, moved with one vector instruction (16 bytes when kVec > 1).
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <typename scalar_t, int kVec>
__device__ __forceinline__ Pack<scalar_t, kVec> load_pack(const scalar_t* ptr) {
  return *reinterpret_cast<const Pack<scalar_t, kVec>*>(ptr);
}

template <typename scalar_t, int kVec>
__device__ __forceinline__ void atomic_add_each(scalar_t* ptr, const Pack<scalar_t, kVec>& x) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    gpuAtomicAdd(ptr + j, x.v[j]);
  }
}

// ptr[j] += x[j] for j < kVec, atomically per element (one float4 atomic on sm_90 and newer).
template <typename scalar_t, int kVec>
__device__ __forceinline__ void atomic_add_pack(scalar_t* ptr, const Pack<scalar_t, kVec>& x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<scalar_t, float> && kVec == 4) {
    atomicAdd(reinterpret_cast<float4*>(ptr), make_float4(x.v[0], x.v[1], x.v[2], x.v[3]));
  } else {
    atomic_add_each(ptr, x);
  }
#else
  atomic_add_each(ptr, x);
#endif
}

// output[n, q, m, d] = sum_{l, p} A[n, q, m, l, p] * bilinear(V_l[n, :, m, d], loc[n, q, m, l, p]).
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreadsPerBlock)
    ms_deform_attn_forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                                  const int64_t* __restrict__ level_start_index,
                                  const scalar_t* __restrict__ sampling_loc,
                                  const scalar_t* __restrict__ attn_weight, Dims dims,
                                  scalar_t* __restrict__ output) {
  const int64_t channels = dims.channels;
  const int64_t row_stride = dims.heads * channels;
  const int64_t level_points = dims.levels * dims.points;
  const int64_t total = dims.batch * dims.queries * row_stride / kVec;
  const int64_t grid_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += grid_stride) {
    const int64_t element = idx * kVec;
    const int64_t group = element / channels;  // (n * Lq + q) * M + m
    const int64_t head = group % dims.heads;
    const int64_t n = group / (dims.heads * dims.queries);
    const scalar_t* value_nmd = value + n * dims.spatial * row_stride + head * channels + element % channels;
    const scalar_t* loc = sampling_loc + group * level_points * 2;
    const scalar_t* weight = attn_weight + group * level_points;
    Pack<scalar_t, kVec> acc;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      acc.v[j] = 0;
    }
    for (int64_t l = 0; l < dims.levels; ++l) {
      const int64_t height = spatial_shapes[2 * l];
      const int64_t width = spatial_shapes[2 * l + 1];
      const scalar_t* value_l = value_nmd + level_start_index[l] * row_stride;
      for (int64_t p = 0; p < dims.points; ++p) {
        const int64_t lp = l * dims.points + p;
        const scalar_t h = loc[2 * lp + 1] * static_cast<scalar_t>(height) - scalar_t(0.5);
        const scalar_t w = loc[2 * lp] * static_cast<scalar_t>(width) - scalar_t(0.5);
        if (sample_inside(h, w, height, width)) {
          const Corners<scalar_t> c = bilinear_corners(h, w, height, width, row_stride);
          const scalar_t attn = weight[lp];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.offset[k] >= 0) {
              const Pack<scalar_t, kVec> corner = load_pack<scalar_t, kVec>(value_l + c.offset[k]);
              const scalar_t corner_weight = attn * c.weight[k];
#pragma unroll
              for (int j = 0; j < kVec; ++j) {
                acc.v[j] += corner_weight * corner.v[j];
              }
            }
          }
        }
      }
    }
    *reinterpret_cast<Pack<scalar_t, kVec>*>(output + element) = acc;
  }
}

// Backward of one sample for kVec channels: adds dL/dvalue at the four corners and returns these channels' share
// of dL/dweight and dL/dlocation (x, y) in grad_weight, grad_x, grad_y (left unchanged when outside the map).
template <typename scalar_t, int kVec>
__device__ __forceinline__ void sample_backward(const scalar_t* value_l, scalar_t* grad_value_l, int64_t height,
                                                int64_t width, int64_t row_stride, scalar_t h, scalar_t w,
                                                scalar_t weight, const Pack<scalar_t, kVec>& grad_out,
                                                scalar_t& grad_weight, scalar_t& grad_x, scalar_t& grad_y) {
  if (!sample_inside(h, w, height, width)) {
    return;
  }
  const Corners<scalar_t> c = bilinear_corners(h, w, height, width, row_stride);
  Pack<scalar_t, kVec> v[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (c.offset[k] >= 0) {
      v[k] = load_pack<scalar_t, kVec>(value_l + c.offset[k]);
      Pack<scalar_t, kVec> grad_corner;
      const scalar_t corner_weight = c.weight[k] * weight;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        grad_corner.v[j] = corner_weight * grad_out.v[j];
      }
      atomic_add_pack(grad_value_l + c.offset[k], grad_corner);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        v[k].v[j] = 0;
      }
    }
  }
  scalar_t grad_sample_sum = 0, grad_dh_sum = 0, grad_dw_sum = 0;
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const scalar_t v0 = v[0].v[j], v1 = v[1].v[j], v2 = v[2].v[j], v3 = v[3].v[j];
    const scalar_t sample = c.weight[0] * v0 + c.weight[1] * v1 + c.weight[2] * v2 + c.weight[3] * v3;
    grad_sample_sum += grad_out.v[j] * sample;
    grad_dh_sum += grad_out.v[j] * (c.hw * (v2 - v0) + c.lw * (v3 - v1));
    grad_dw_sum += grad_out.v[j] * (c.hh * (v1 - v0) + c.lh * (v3 - v2));
  }
  grad_weight = grad_sample_sum;
  grad_x = weight * grad_dw_sum * static_cast<scalar_t>(width);
  grad_y = weight * grad_dh_sum * static_cast<scalar_t>(height);
}

// Shared body of the backward kernels. The loop bounds are uniform over a block (threads past the end carry
// zeros), so the warp shuffles and __syncthreads() of the reductions are reached by every thread.
// reduce_start: the largest power of two strictly below D (kShared only).
template <typename scalar_t, Reduction kMode, int kVec>
__device__ __forceinline__ void ms_deform_attn_backward_body(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index, const scalar_t* __restrict__ sampling_loc,
    const scalar_t* __restrict__ attn_weight, const scalar_t* __restrict__ grad_output, Dims dims,
    int reduce_start, scalar_t* __restrict__ grad_value, scalar_t* __restrict__ grad_sampling_loc,
    scalar_t* __restrict__ grad_attn_weight, scalar_t* shared) {
  const int64_t channels = dims.channels;
  const int64_t row_stride = dims.heads * channels;
  const int64_t level_points = dims.levels * dims.points;
  const int64_t total = dims.batch * dims.queries * row_stride / kVec;
  const int64_t grid_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int tid = threadIdx.x;
  const int lanes = static_cast<int>(channels / kVec);  // threads per group
  // Blocks start at multiples of the group size in the kWarp and kShared paths: tid % lanes is the lane there.
  const int lane = tid % lanes;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < total; base += grid_stride) {
    const int64_t idx = base + tid;
    const bool valid = idx < total;
    const int64_t element = (valid ? idx : total - 1) * kVec;
    const int64_t group = element / channels;
    const int64_t head = group % dims.heads;
    const int64_t n = group / (dims.heads * dims.queries);
    const int64_t value_offset = n * dims.spatial * row_stride + head * channels + element % channels;
    Pack<scalar_t, kVec> grad_out = load_pack<scalar_t, kVec>(grad_output + element);
    const scalar_t* loc = sampling_loc + group * level_points * 2;
    const scalar_t* weight = attn_weight + group * level_points;
    for (int64_t l = 0; l < dims.levels; ++l) {
      const int64_t height = spatial_shapes[2 * l];
      const int64_t width = spatial_shapes[2 * l + 1];
      const int64_t level_offset = value_offset + level_start_index[l] * row_stride;
      for (int64_t p = 0; p < dims.points; ++p) {
        const int64_t lp = l * dims.points + p;
        scalar_t grad_weight = 0, grad_x = 0, grad_y = 0;
        if (valid) {
          const scalar_t h = loc[2 * lp + 1] * static_cast<scalar_t>(height) - scalar_t(0.5);
          const scalar_t w = loc[2 * lp] * static_cast<scalar_t>(width) - scalar_t(0.5);
          sample_backward<scalar_t, kVec>(value + level_offset, grad_value + level_offset, height, width,
                                          row_stride, h, w, weight[lp], grad_out, grad_weight, grad_x, grad_y);
        }
        const int64_t out = group * level_points + lp;
        if constexpr (kMode == Reduction::kGlobal) {
          if (valid) {
            gpuAtomicAdd(grad_attn_weight + out, grad_weight);
            gpuAtomicAdd(grad_sampling_loc + 2 * out, grad_x);
            gpuAtomicAdd(grad_sampling_loc + 2 * out + 1, grad_y);
          }
        } else if constexpr (kMode == Reduction::kWarp) {
          for (int offset = lanes / 2; offset > 0; offset >>= 1) {
            grad_weight += __shfl_down_sync(kFullWarpMask, grad_weight, offset, lanes);
            grad_x += __shfl_down_sync(kFullWarpMask, grad_x, offset, lanes);
            grad_y += __shfl_down_sync(kFullWarpMask, grad_y, offset, lanes);
          }
          if (valid && lane == 0) {
            grad_attn_weight[out] = grad_weight;
            grad_sampling_loc[2 * out] = grad_x;
            grad_sampling_loc[2 * out + 1] = grad_y;
          }
        } else {
          // Three arrays of blockDim.x; each thread writes only its own slot before the first barrier, and the
          // lane-0 thread reads only its own slot after the last one, so no barrier is needed between samples.
          const int threads = blockDim.x;
          shared[tid] = grad_weight;
          shared[threads + tid] = grad_x;
          shared[2 * threads + tid] = grad_y;
          __syncthreads();
          for (int stride = reduce_start; stride > 0; stride >>= 1) {
            if (lane < stride && lane + stride < lanes) {
              shared[tid] += shared[tid + stride];
              shared[threads + tid] += shared[threads + tid + stride];
              shared[2 * threads + tid] += shared[2 * threads + tid + stride];
            }
            __syncthreads();
          }
          if (valid && lane == 0) {
            grad_attn_weight[out] = shared[tid];
            grad_sampling_loc[2 * out] = shared[threads + tid];
            grad_sampling_loc[2 * out + 1] = shared[2 * threads + tid];
          }
        }
      }
    }
  }
}

#define MSDA_BACKWARD_PARAMS                                                                                \
  const scalar_t *__restrict__ value, const int64_t *__restrict__ spatial_shapes,                           \
      const int64_t *__restrict__ level_start_index, const scalar_t *__restrict__ sampling_loc,             \
      const scalar_t *__restrict__ attn_weight, const scalar_t *__restrict__ grad_output, Dims dims,        \
      int reduce_start, scalar_t *__restrict__ grad_value, scalar_t *__restrict__ grad_sampling_loc,        \
      scalar_t *__restrict__ grad_attn_weight
#define MSDA_BACKWARD_ARGS                                                                                  \
  value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output, dims, reduce_start,    \
      grad_value, grad_sampling_loc, grad_attn_weight

template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreadsPerBlock) ms_deform_attn_backward_warp_kernel(MSDA_BACKWARD_PARAMS) {
  ms_deform_attn_backward_body<scalar_t, Reduction::kWarp, kVec>(MSDA_BACKWARD_ARGS, nullptr);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxSharedChannels)
    ms_deform_attn_backward_shared_kernel(MSDA_BACKWARD_PARAMS) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared_bytes[];
  ms_deform_attn_backward_body<scalar_t, Reduction::kShared, 1>(MSDA_BACKWARD_ARGS,
                                                                reinterpret_cast<scalar_t*>(shared_bytes));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock) ms_deform_attn_backward_global_kernel(MSDA_BACKWARD_PARAMS) {
  ms_deform_attn_backward_body<scalar_t, Reduction::kGlobal, 1>(MSDA_BACKWARD_ARGS, nullptr);
}

#undef MSDA_BACKWARD_PARAMS
#undef MSDA_BACKWARD_ARGS

}  // namespace msda
