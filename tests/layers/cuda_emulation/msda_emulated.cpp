// The project's CUDA MSDA kernels and launch planning (ms_deform_attn_kernels.cuh), run on CPU threads.
#include <torch/extension.h>

#include "cuda_on_cpu.h"
#include "ms_deform_attn_kernels.cuh"

namespace {

struct EmulatedLaunch {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, unsigned int blocks, size_t shared_bytes, Args... args) const {
    cuda_on_cpu::launch(blocks, focus_detr::msda_cuda::kThreadsPerBlock, shared_bytes, kernel, args...);
  }
};

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  return focus_detr::msda_cuda::forward(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights, EmulatedLaunch{});
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  return focus_detr::msda_cuda::backward(value, spatial_shapes, level_start_index, sampling_locations,
                                         attention_weights, grad_output, EmulatedLaunch{});
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "MSDA forward, CUDA kernels emulated on the CPU");
  m.def("backward", &backward, "MSDA backward, CUDA kernels emulated on the CPU");
  m.def("shuffle_segment", &focus_detr::msda_cuda::shuffle_segment);
  m.def("planned_vector_widths", &focus_detr::msda_cuda::planned_vector_widths);
}
