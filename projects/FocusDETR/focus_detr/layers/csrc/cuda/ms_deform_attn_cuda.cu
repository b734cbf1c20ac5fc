// CUDA entry points of multi-scale deformable attention: the kernels (ms_deform_attn_kernels.cuh) launched on the
// current stream of the value's device.
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../ms_deform_attn.h"
#include "ms_deform_attn_kernels.cuh"

namespace focus_detr {
namespace {

struct StreamLaunch {
  cudaStream_t stream;

  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, unsigned int blocks, size_t shared_bytes, Args... args) const {
    kernel<<<blocks, msda_cuda::kThreadsPerBlock, shared_bytes, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const c10::cuda::CUDAGuard device_guard(value.device());
  return msda_cuda::forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            StreamLaunch{c10::cuda::getCurrentCUDAStream()});
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output) {
  at::globalContext().alertNotDeterministic("focus_detr::ms_deform_attn backward (CUDA, atomicAdd on grad_value)");
  const c10::cuda::CUDAGuard device_guard(value.device());
  return msda_cuda::backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                             grad_output, StreamLaunch{c10::cuda::getCurrentCUDAStream()});
}

}  // namespace focus_detr
