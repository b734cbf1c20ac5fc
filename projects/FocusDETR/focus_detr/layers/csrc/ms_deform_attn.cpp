// Python bindings of the deformable-attention kernels: argument checks, then dispatch on the tensors' device.
// The Python layer (ms_deform_attn_op.py) wraps these in the torch.library op `focus_detr::ms_deform_attn`.
#include <torch/extension.h>

#include "group_norm.h"
#include "ms_deform_attn.h"

namespace focus_detr {
namespace {

void check_arguments(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                     const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "value must be (B, S, H, C)");
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2, "spatial_shapes must be (L, 2)");
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == levels, "level_start_index must be (L,)");
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == value.size(0) &&
                  sampling_locations.size(2) == value.size(2) && sampling_locations.size(3) == levels &&
                  sampling_locations.size(5) == 2,
              "sampling_locations must be (B, Q, H, L, P, 2)");
  TORCH_CHECK(attention_weights.dim() == 5, "attention_weights must be (B, Q, H, L, P)");
  for (int64_t d = 0; d < 5; ++d) {
    TORCH_CHECK(attention_weights.size(d) == sampling_locations.size(d),
                "attention_weights must be sampling_locations.shape[:-1]");
  }
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_locations.scalar_type() == attention_weights.scalar_type(),
              "sampling_locations and attention_weights must share a dtype");
  const auto device = value.device();
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->device() == device, "all MSDA inputs must be on value's device");
  }
  for (const at::Tensor* t :
       {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->is_contiguous(), "all MSDA inputs must be contiguous");
  }
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_arguments(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights);
#else
    TORCH_CHECK(false, "focus_detr._C was built without CUDA support");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "MSDA kernels support CPU and CUDA tensors, got ", value.device());
  return ms_deform_attn_forward_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_arguments(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.device() == value.device(),
              "grad_output must be contiguous and on value's device");
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == value.size(0) &&
                  grad_output.size(1) == sampling_locations.size(1) &&
                  grad_output.size(2) == value.size(2) * value.size(3),
              "grad_output must be (B, Q, H * C)");
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights, grad_output);
#else
    TORCH_CHECK(false, "focus_detr._C was built without CUDA support");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "MSDA kernels support CPU and CUDA tensors, got ", value.device());
  return ms_deform_attn_backward_cpu(value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights, grad_output.to(value.scalar_type()));
}

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace focus_detr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Focus-DETR kernels: multi-scale deformable attention (CPU, and CUDA when built with nvcc), channels-last GroupNorm backward (CPU)";
  m.def("ms_deform_attn_forward", &focus_detr::forward,
        "MSDA forward: (value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> "
        "output (B, Q, H*C)");
  m.def("ms_deform_attn_backward", &focus_detr::backward,
        "MSDA backward: (..., grad_output) -> [grad_value, grad_sampling_locations, grad_attention_weights]");
  m.def("has_cuda", &focus_detr::has_cuda, "whether the CUDA kernel was compiled in");
  m.def("group_norm_channels_last_backward", &focus_detr::group_norm_channels_last_backward_cpu,
        "GroupNorm backward, channels-last CPU input: (grad_output, input, mean, rstd, gamma or None, groups, "
        "output_mask) -> [grad_input, grad_gamma, grad_beta]");
}
