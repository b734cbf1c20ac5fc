// Backward of GroupNorm for a channels-last (NHWC) input on the CPU, see ../group_norm.h.
//
// PyTorch's own kernel for this layout runs at a fraction of its contiguous (NCHW) speed when a group holds few
// channels (7.6 ms against 0.5 ms for 2 x 32 x 176 x 176 with 32 groups, 2 threads), and a channels-last
// convolutional backbone with GroupNorm spends most of its normalisation time there. Here both passes run along
// the rows of the (N, H*W, C) layout, vectorised over C:
//   1. per image and channel, sum_dy = sum over H*W of dy and sum_dy_x = sum of dy * x, in fixed blocks of rows
//      added in a fixed order (the same bits for any thread count);
//   2. dx = a[c] * dy + b[g] * x + d[g], with per image a = rstd * gamma, and per group, over M = H*W*C/G values,
//      b = (mean * S_dy - S_dy_x) * rstd^3 / M and d = -b * mean - S_dy * rstd / M, where S_dy = sum over the
//      group's channels of gamma * sum_dy and S_dy_x likewise.
// grad_gamma[c] = sum over images of (sum_dy_x - mean * sum_dy) * rstd, grad_beta[c] = sum of sum_dy.
// A bfloat16 input (autocast) comes with float32 statistics and gamma, as at::native_group_norm gives them for
// such an input: everything is accumulated in float32 (acc_t), only grad_input has the input's type. (float16 is
// left to PyTorch: with its scalar conversions this kernel was slower than the native one at 2 of 3 shapes tried.)
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../group_norm.h"

namespace focus_detr {
namespace {

constexpr int64_t kRowsPerBlock = 256;

template <typename scalar_t, typename acc_t>
void channel_sums(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, int64_t images, int64_t rows,
                  int64_t channels, std::vector<acc_t>& sum_dy, std::vector<acc_t>& sum_dy_x) {
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  // Partial sums per (image, block), reduced below in block order.
  std::vector<acc_t> partial_dy(images * blocks * channels), partial_dy_x(images * blocks * channels);
  at::parallel_for(0, images * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, block = task % blocks;
      acc_t* __restrict__ out_dy = partial_dy.data() + task * channels;
      acc_t* __restrict__ out_dy_x = partial_dy_x.data() + task * channels;
      std::fill(out_dy, out_dy + channels, acc_t(0));
      std::fill(out_dy_x, out_dy_x + channels, acc_t(0));
      const int64_t first = block * kRowsPerBlock, last = std::min(rows, first + kRowsPerBlock);
      for (int64_t r = first; r < last; ++r) {
        const scalar_t* __restrict__ dy_row = dy + (n * rows + r) * channels;
        const scalar_t* __restrict__ x_row = x + (n * rows + r) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t dy_c = static_cast<acc_t>(dy_row[c]);
          out_dy[c] += dy_c;
          out_dy_x[c] += dy_c * static_cast<acc_t>(x_row[c]);
        }
      }
    }
  });
  sum_dy.assign(images * channels, acc_t(0));
  sum_dy_x.assign(images * channels, acc_t(0));
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t block = 0; block < blocks; ++block) {
      const acc_t* p_dy = partial_dy.data() + (n * blocks + block) * channels;
      const acc_t* p_dy_x = partial_dy_x.data() + (n * blocks + block) * channels;
      for (int64_t c = 0; c < channels; ++c) {
        sum_dy[n * channels + c] += p_dy[c];
        sum_dy_x[n * channels + c] += p_dy_x[c];
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
void backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& rstd,
              const at::Tensor& gamma, int64_t groups, at::Tensor& grad_input, at::Tensor& grad_gamma,
              at::Tensor& grad_beta) {
  const int64_t images = input.size(0), channels = input.size(1);
  const int64_t rows = input.numel() / std::max<int64_t>(1, images * channels);
  const int64_t per_group = channels / groups;
  const acc_t count = static_cast<acc_t>(per_group * rows);
  const scalar_t* dy = grad_output.data_ptr<scalar_t>();
  const scalar_t* x = input.data_ptr<scalar_t>();
  const acc_t* mean_data = mean.data_ptr<acc_t>();
  const acc_t* rstd_data = rstd.data_ptr<acc_t>();
  const acc_t* gamma_data = gamma.defined() ? gamma.data_ptr<acc_t>() : nullptr;
  std::vector<acc_t> sum_dy, sum_dy_x;
  channel_sums(dy, x, images, rows, channels, sum_dy, sum_dy_x);

  // Per (image, channel) coefficients of dx = a * dy + b * x + d.
  std::vector<acc_t> a(images * channels), b(images * channels), d(images * channels);
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const acc_t mu = mean_data[n * groups + g], r = rstd_data[n * groups + g];
      acc_t s_dy = 0, s_dy_x = 0;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        const acc_t gc = gamma_data ? gamma_data[c] : acc_t(1);
        s_dy += gc * sum_dy[n * channels + c];
        s_dy_x += gc * sum_dy_x[n * channels + c];
      }
      const acc_t bg = (mu * s_dy - s_dy_x) * r * r * r / count;
      const acc_t dg = -bg * mu - s_dy * r / count;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        a[n * channels + c] = r * (gamma_data ? gamma_data[c] : acc_t(1));
        b[n * channels + c] = bg;
        d[n * channels + c] = dg;
      }
    }
  }
  if (grad_input.defined()) {
    scalar_t* dx = grad_input.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, channels));
    at::parallel_for(0, images * rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / rows;
        const acc_t* __restrict__ an = a.data() + n * channels;
        const acc_t* __restrict__ bn = b.data() + n * channels;
        const acc_t* __restrict__ dn = d.data() + n * channels;
        const scalar_t* __restrict__ dy_row = dy + row * channels;
        const scalar_t* __restrict__ x_row = x + row * channels;
        scalar_t* __restrict__ dx_row = dx + row * channels;
        for (int64_t c = 0; c < channels; ++c) {
          dx_row[c] = static_cast<scalar_t>(an[c] * static_cast<acc_t>(dy_row[c]) +
                                            bn[c] * static_cast<acc_t>(x_row[c]) + dn[c]);
        }
      }
    });
  }
  if (grad_gamma.defined()) {
    acc_t* out = grad_gamma.data_ptr<acc_t>();
    for (int64_t c = 0; c < channels; ++c) {
      acc_t total = 0;
      for (int64_t n = 0; n < images; ++n) {
        const int64_t g = c / per_group;
        total += (sum_dy_x[n * channels + c] - mean_data[n * groups + g] * sum_dy[n * channels + c]) *
                 rstd_data[n * groups + g];
      }
      out[c] = total;
    }
  }
  if (grad_beta.defined()) {
    acc_t* out = grad_beta.data_ptr<acc_t>();
    for (int64_t c = 0; c < channels; ++c) {
      acc_t total = 0;
      for (int64_t n = 0; n < images; ++n) total += sum_dy[n * channels + c];
      out[c] = total;
    }
  }
}

}  // namespace

std::vector<at::Tensor> group_norm_channels_last_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              const c10::optional<at::Tensor>& gamma, int64_t groups,
                                                              std::array<bool, 3> output_mask) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast),
              "group_norm_channels_last_backward: input must be a channels-last (N, C, H, W) tensor");
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.is_contiguous(at::MemoryFormat::ChannelsLast),
              "group_norm_channels_last_backward: grad_output must be channels-last and shaped like input");
  TORCH_CHECK(input.is_cpu() && grad_output.is_cpu(), "group_norm_channels_last_backward: CPU tensors only");
  const at::ScalarType data_type = input.scalar_type();
  const bool reduced = data_type == at::kBFloat16;
  TORCH_CHECK(reduced || data_type == at::kFloat || data_type == at::kDouble,
              "group_norm_channels_last_backward: float32, float64 or bfloat16, got ", data_type);
  // the statistics' (and gamma's) type: float32 for a bfloat16 input, else the input's
  const at::ScalarType acc_type = reduced ? at::kFloat : data_type;
  const int64_t images = input.size(0), channels = input.size(1);
  TORCH_CHECK(groups > 0 && channels % groups == 0, "group_norm_channels_last_backward: ", channels,
              " channels do not split into ", groups, " groups");
  TORCH_CHECK(grad_output.scalar_type() == data_type && mean.scalar_type() == acc_type &&
                  rstd.scalar_type() == acc_type,
              "group_norm_channels_last_backward: grad_output must have input's dtype, mean and rstd ", acc_type);
  TORCH_CHECK(mean.numel() == images * groups && rstd.numel() == images * groups && mean.is_contiguous() &&
                  rstd.is_contiguous(),
              "group_norm_channels_last_backward: mean and rstd must be contiguous (N, groups)");
  at::Tensor weight;
  if (gamma.has_value() && gamma->defined()) {
    weight = gamma->contiguous();
    TORCH_CHECK(weight.numel() == channels && weight.scalar_type() == acc_type,
                "group_norm_channels_last_backward: gamma must hold C values of type ", acc_type);
  }
  at::Tensor grad_input, grad_gamma, grad_beta;
  if (output_mask[0]) grad_input = at::empty_like(input, at::MemoryFormat::ChannelsLast);
  if (output_mask[1]) grad_gamma = at::empty({channels}, input.options().dtype(acc_type));
  if (output_mask[2]) grad_beta = at::empty({channels}, input.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, data_type, "group_norm_channels_last_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward<scalar_t, acc_t>(grad_output, input, mean, rstd, weight, groups, grad_input, grad_gamma, grad_beta);
  });
  return {grad_input, grad_gamma, grad_beta};
}

}  // namespace focus_detr
