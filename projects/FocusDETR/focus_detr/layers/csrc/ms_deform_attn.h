// Multi-scale deformable attention kernels. Layouts (all contiguous):
//   value (B, S, H, C), spatial_shapes (L, 2) int64 (h, w), level_start_index (L,) int64,
//   sampling_locations (B, Q, H, L, P, 2) normalised (x, y), attention_weights (B, Q, H, L, P),
//   output / grad_output (B, Q, H * C).
// Sampling = bilinear, zero padding, pixel centres at (i + 0.5) / size (grid_sample, align_corners=False).
// A level whose [start, start + h * w) range does not fit in S is treated as empty, so inconsistent shapes can
// never read or write outside `value`.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace focus_detr {

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);

std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_locations,
                                                    const at::Tensor& attention_weights,
                                                    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output);
#endif

}  // namespace focus_detr
