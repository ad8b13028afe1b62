// Multi-scale deformable attention on the CPU: forward and backward kernels (Deformable DETR, Zhu et al. 2021).
//
// For every image n, query q, head m, level l and point p the value map of level l is sampled bilinearly at
// (x, y) = (loc_x * W_l - 0.5, loc_y * H_l - 0.5) pixels (grid_sample, align_corners=False, zero padding) and the
// samples are summed with the attention weights:
//
//     out[n, q, m, :] = sum_{l, p} A[n, q, m, l, p] * sum_{c in corners} b_c * V[n, s_l + y_c * W_l + x_c, m, :]
//
// with b_c the bilinear weights of the four corners (corners outside the map contribute zero). Work is split over
// (image, head) pairs: each pair reads and writes disjoint slices of every tensor, so there are no atomics and the
// result does not depend on the number of threads. Shapes: value (N, S, M, D), spatial_shapes (L, 2) int64 (H, W),
// level_start_index (L,) int64, sampling_locations (N, Lq, M, L, P, 2) (x, y) in [0, 1], attention_weights
// (N, Lq, M, L, P); output (N, Lq, M * D). Compiled on first use by mask2former_sim.layers.ms_deform_attn_cpu.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// The four corners of a bilinear sample: flat index into the level (or -1 outside the map) and weight.
template <typename scalar_t>
struct Corners {
  int64_t index[4];
  scalar_t weight[4];
  scalar_t lx, ly;  // fractional parts, for the gradient with respect to the location
};

// False when the sample lies wholly outside the map (every corner contributes zero), as in the CUDA kernel.
template <typename scalar_t>
inline bool bilinear_corners(scalar_t x, scalar_t y, int64_t height, int64_t width, Corners<scalar_t>& c) {
  if (!(y > -1 && x > -1 && y < height && x < width)) return false;
  const scalar_t y0f = std::floor(y), x0f = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
  c.ly = y - y0f;
  c.lx = x - x0f;
  const scalar_t hy = 1 - c.ly, hx = 1 - c.lx;
  const int64_t ys[2] = {y0, y0 + 1}, xs[2] = {x0, x0 + 1};
  const scalar_t wy[2] = {hy, c.ly}, wx[2] = {hx, c.lx};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const bool inside = ys[i] >= 0 && ys[i] < height && xs[j] >= 0 && xs[j] < width;
      c.index[2 * i + j] = inside ? ys[i] * width + xs[j] : -1;
      c.weight[2 * i + j] = wy[i] * wx[j];
    }
  }
  return true;
}

// y += a * x over n entries (vectorised by the compiler: the pointers do not alias).
template <typename scalar_t>
inline void axpy(scalar_t* __restrict__ y, const scalar_t* __restrict__ x, scalar_t a, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// x . y with eight partial sums in a fixed order: vectorisable without reassociation, so the result is the same on
// every machine and for every number of threads.
template <typename scalar_t>
inline scalar_t dot(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t n) {
  scalar_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += x[d + j] * y[d + j];
  }
  for (; d < n; ++d) acc[d % 8] += x[d] * y[d];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  TORCH_CHECK(!value.is_cuda(), "ms_deform_attn_cpu: tensors must be on the CPU");
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn_cpu: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "ms_deform_attn_cpu: sampling_locations must be (N, Lq, M, L, P, 2), got ", sampling_loc.sizes());
  TORCH_CHECK(attn_weight.dim() == 5, "ms_deform_attn_cpu: attention_weights must be (N, Lq, M, L, P), got ",
              attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 && spatial_shapes.size(0) == sampling_loc.size(3),
              "ms_deform_attn_cpu: spatial_shapes must be (L, 2), got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.numel() == spatial_shapes.size(0),
              "ms_deform_attn_cpu: level_start_index must have L entries");
  TORCH_CHECK(value.scalar_type() == sampling_loc.scalar_type() && value.scalar_type() == attn_weight.scalar_type(),
              "ms_deform_attn_cpu: value, sampling_locations and attention_weights must share a dtype");
}

// The inputs made contiguous and their sizes.
struct Problem {
  at::Tensor value, sampling_loc, attn_weight, shapes, starts;
  int64_t n_batch, n_value, n_heads, dim, n_query, n_levels, n_points;
};

Problem make_problem(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  Problem p{value.contiguous(), sampling_loc.contiguous(), attn_weight.contiguous(),
            spatial_shapes.to(at::kLong).contiguous(), level_start_index.to(at::kLong).contiguous()};
  p.n_batch = value.size(0);
  p.n_value = value.size(1);
  p.n_heads = value.size(2);
  p.dim = value.size(3);
  p.n_query = sampling_loc.size(1);
  p.n_levels = sampling_loc.size(3);
  p.n_points = sampling_loc.size(4);
  return p;
}

// Calls visit(qm, i, level_row0, corners) for every sample that lies on its map: qm indexes (image, query, head)
// (the output row), i indexes (image, query, head, level, point) (the attention weight), and a corner's value row
// starts at level_row0 + index * n_heads * dim. Parallel over (image, head) pairs, whose rows are disjoint.
template <typename scalar_t, typename Visit>
void for_each_sample(const Problem& p, Visit visit) {
  const scalar_t* loc = p.sampling_loc.data_ptr<scalar_t>();
  const int64_t* shape = p.shapes.data_ptr<int64_t>();
  const int64_t* start = p.starts.data_ptr<int64_t>();
  at::parallel_for(0, p.n_batch * p.n_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.n_heads, m = task % p.n_heads;
      const int64_t row0 = (n * p.n_value * p.n_heads + m) * p.dim;
      for (int64_t q = 0; q < p.n_query; ++q) {
        const int64_t qm = (n * p.n_query + q) * p.n_heads + m;
        for (int64_t l = 0; l < p.n_levels; ++l) {
          const int64_t height = shape[2 * l], width = shape[2 * l + 1];
          const int64_t level_row0 = row0 + start[l] * p.n_heads * p.dim;
          for (int64_t pt = 0; pt < p.n_points; ++pt) {
            const int64_t i = (qm * p.n_levels + l) * p.n_points + pt;
            Corners<scalar_t> c;
            const scalar_t x = loc[2 * i] * width - scalar_t(0.5), y = loc[2 * i + 1] * height - scalar_t(0.5);
            if (bilinear_corners<scalar_t>(x, y, height, width, c)) visit(qm, i, level_row0, c, height, width);
          }
        }
      }
    }
  });
}

at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight) {
  const Problem p = make_problem(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  auto output = at::zeros({p.n_batch, p.n_query, p.n_heads, p.dim}, p.value.options());
  AT_DISPATCH_FLOATING_TYPES(p.value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    const scalar_t* v = p.value.data_ptr<scalar_t>();
    const scalar_t* attn = p.attn_weight.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    const int64_t row_stride = p.n_heads * p.dim;
    for_each_sample<scalar_t>(p, [&](int64_t qm, int64_t i, int64_t level_row0, const Corners<scalar_t>& c, int64_t,
                                     int64_t) {
      for (int k = 0; k < 4; ++k) {
        if (c.index[k] >= 0) {
          axpy<scalar_t>(out + qm * p.dim, v + level_row0 + c.index[k] * row_stride, attn[i] * c.weight[k], p.dim);
        }
      }
    });
  });
  return output.view({p.n_batch, p.n_query, p.n_heads * p.dim});
}

std::vector<at::Tensor> ms_deform_attn_cpu_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                    const at::Tensor& grad_output_in) {
  const Problem p = make_problem(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const auto grad_output = grad_output_in.to(p.value.scalar_type()).contiguous();
  TORCH_CHECK(grad_output.numel() == p.n_batch * p.n_query * p.n_heads * p.dim,
              "ms_deform_attn_cpu: grad_output must be (N, Lq, M * D), got ", grad_output.sizes());
  auto grad_value = at::zeros_like(p.value);
  auto grad_loc = at::zeros_like(p.sampling_loc);
  auto grad_attn = at::zeros_like(p.attn_weight);
  AT_DISPATCH_FLOATING_TYPES(p.value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    const scalar_t* v = p.value.data_ptr<scalar_t>();
    const scalar_t* attn = p.attn_weight.data_ptr<scalar_t>();
    const scalar_t* g_out = grad_output.data_ptr<scalar_t>();
    scalar_t* g_v = grad_value.data_ptr<scalar_t>();
    scalar_t* g_loc = grad_loc.data_ptr<scalar_t>();
    scalar_t* g_attn = grad_attn.data_ptr<scalar_t>();
    const int64_t row_stride = p.n_heads * p.dim;
    for_each_sample<scalar_t>(p, [&](int64_t qm, int64_t i, int64_t level_row0, const Corners<scalar_t>& c,
                                     int64_t height, int64_t width) {
      const scalar_t* go = g_out + qm * p.dim;
      scalar_t dots[4] = {0, 0, 0, 0};  // grad_output . V at each corner
      for (int k = 0; k < 4; ++k) {
        if (c.index[k] < 0) continue;
        const int64_t offset = level_row0 + c.index[k] * row_stride;
        dots[k] = dot<scalar_t>(go, v + offset, p.dim);
        axpy<scalar_t>(g_v + offset, go, attn[i] * c.weight[k], p.dim);
      }
      g_attn[i] = c.weight[0] * dots[0] + c.weight[1] * dots[1] + c.weight[2] * dots[2] + c.weight[3] * dots[3];
      // corners (y0, x0), (y0, x1), (y1, x0), (y1, x1); weights (1 - ly, ly) x (1 - lx, lx)
      const scalar_t d_x = (1 - c.ly) * (dots[1] - dots[0]) + c.ly * (dots[3] - dots[2]);
      const scalar_t d_y = (1 - c.lx) * (dots[2] - dots[0]) + c.lx * (dots[3] - dots[1]);
      g_loc[2 * i] = attn[i] * d_x * width;
      g_loc[2 * i + 1] = attn[i] * d_y * height;
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY(m2f_sim_cpu, m) {
  m.def("ms_deform_attn_forward", &ms_deform_attn_cpu_forward);
  m.def("ms_deform_attn_backward", &ms_deform_attn_cpu_backward);
}
