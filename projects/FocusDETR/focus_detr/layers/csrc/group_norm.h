// GroupNorm backward for a channels-last input on the CPU (PyTorch's forward is fast there, its backward is not).
//   grad_output, input: (N, C, H, W) channels-last, float32 / float64, or bfloat16 (autocast);
//   mean, rstd: (N, groups) from at::native_group_norm (float32 for a bfloat16 input); gamma: (C,) of
//   the statistics' type, or undefined. Returns {grad_input (channels-last, input's type), grad_gamma, grad_beta
//   (the statistics' type)}, each undefined where output_mask says it is not needed.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace focus_detr {

std::vector<at::Tensor> group_norm_channels_last_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              const c10::optional<at::Tensor>& gamma, int64_t groups,
                                                              std::array<bool, 3> output_mask);

}  // namespace focus_detr
