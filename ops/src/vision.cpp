// Python bindings of the MultiScaleDeformableAttention op (the names of the official Deformable DETR op).
#include <torch/csrc/utils/pybind.h>

#include "ms_deform_attn.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Multi-scale deformable attention CUDA kernels (float32/float64; forward and backward).";
  m.def("ms_deform_attn_forward", &msda::ms_deform_attn_forward,
        "ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, "
        "im2col_step) -> output (N, Lq, M * D)",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("level_start_index"),
        pybind11::arg("sampling_loc"), pybind11::arg("attn_weight"), pybind11::arg("im2col_step"));
  m.def("ms_deform_attn_backward", &msda::ms_deform_attn_backward,
        "ms_deform_attn_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, "
        "grad_output, im2col_step) -> [grad_value, grad_sampling_loc, grad_attn_weight]",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("level_start_index"),
        pybind11::arg("sampling_loc"), pybind11::arg("attn_weight"), pybind11::arg("grad_output"),
        pybind11::arg("im2col_step"));
}
