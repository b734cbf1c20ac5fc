// CPU kernels of multi-scale deformable attention (float32 / float64), see ../ms_deform_attn.h for layouts.
//
// Forward: one task per (batch, query, head) row; the C channels of a head are contiguous in `value`, so every
// bilinear corner is a short contiguous axpy the compiler vectorises. No per-level grid_sample buffers.
// Backward: one task per (batch, group of heads). All writes of a task (grad_value[b, :, h, :] of its heads and the
// location / weight gradients of their rows) belong to that task alone, so there are no races and no atomics, and
// the summation order is fixed: results are bitwise identical for any thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../ms_deform_attn.h"

namespace focus_detr {
namespace {

struct Dims {
  int64_t batch, num_values, heads, channels, queries, levels, points;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
          sampling_locations.size(3), sampling_locations.size(4)};
}

// Level geometry read once per call; a level that does not fit in [0, S) is marked empty (never read).
struct Level {
  int64_t height, width, start;
};

std::vector<Level> read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                               int64_t num_values) {
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  std::vector<Level> levels(spatial_shapes.size(0));
  for (size_t l = 0; l < levels.size(); ++l) {
    Level level{shapes[2 * l], shapes[2 * l + 1], starts[l]};
    // height <= (S - start) / width, not start + height * width <= S: the product can overflow int64 and wrap
    const bool fits = level.height > 0 && level.width > 0 && level.start >= 0 && level.start <= num_values &&
                      level.height <= (num_values - level.start) / level.width;
    levels[l] = fits ? level : Level{0, 0, 0};
  }
  return levels;
}

// Bilinear footprint of one sampling point: up to 4 in-bounds corners (token offset within the level, weight).
template <typename scalar_t>
struct Footprint {
  int count = 0;
  int64_t token[4];
  scalar_t weight[4];
  // d weight / d x and d weight / d y (in pixels), for the backward.
  scalar_t dweight_dx[4];
  scalar_t dweight_dy[4];
};

template <typename scalar_t>
inline Footprint<scalar_t> footprint(scalar_t loc_x, scalar_t loc_y, const Level& level) {
  Footprint<scalar_t> fp;
  const scalar_t x = loc_x * static_cast<scalar_t>(level.width) - scalar_t(0.5);
  const scalar_t y = loc_y * static_cast<scalar_t>(level.height) - scalar_t(0.5);
  // Also rejects NaN. Outside (-1, size) every corner is out of bounds.
  if (!(x > scalar_t(-1) && y > scalar_t(-1) && x < level.width && y < level.height)) return fp;
  const scalar_t x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  const scalar_t lx = x - x0f, ly = y - y0f, hx = scalar_t(1) - lx, hy = scalar_t(1) - ly;
  const int64_t xs[2] = {x0, x0 + 1}, ys[2] = {y0, y0 + 1};
  const scalar_t wx[2] = {hx, lx}, wy[2] = {hy, ly};
  const scalar_t dwx[2] = {scalar_t(-1), scalar_t(1)};
  for (int j = 0; j < 2; ++j) {
    if (ys[j] < 0 || ys[j] >= level.height) continue;
    for (int i = 0; i < 2; ++i) {
      if (xs[i] < 0 || xs[i] >= level.width) continue;
      fp.token[fp.count] = ys[j] * level.width + xs[i];
      fp.weight[fp.count] = wy[j] * wx[i];
      fp.dweight_dx[fp.count] = wy[j] * dwx[i];
      fp.dweight_dy[fp.count] = dwx[j] * wx[i];
      ++fp.count;
    }
  }
  return fp;
}

// Order in which the kernels visit the queries of batch element b: sorted by the token that the first sampling
// point (head 0, level 0) lands on, so consecutive queries gather from and scatter into neighbouring rows of
// value / grad_value (queries kept by a token selector come in score order, i.e. scattered over the image).
// A stable sort keeps the order -- and so every sum -- independent of thread count.
template <typename scalar_t>
std::vector<int64_t> locality_order(const scalar_t* locations, int64_t b, const Level& level, const Dims& d) {
  std::vector<int64_t> keys(d.queries), order(d.queries);
  const int64_t row_stride = d.heads * d.levels * d.points * 2;
  for (int64_t q = 0; q < d.queries; ++q) {
    const scalar_t* loc = locations + (b * d.queries + q) * row_stride;
    const scalar_t x = loc[0] * static_cast<scalar_t>(level.width), y = loc[1] * static_cast<scalar_t>(level.height);
    const bool finite = std::isfinite(x) && std::isfinite(y);
    const int64_t xi = finite ? static_cast<int64_t>(std::min<scalar_t>(std::max<scalar_t>(x, 0), level.width)) : 0;
    const int64_t yi = finite ? static_cast<int64_t>(std::min<scalar_t>(std::max<scalar_t>(y, 0), level.height)) : 0;
    keys[q] = yi * (level.width + 1) + xi;
    order[q] = q;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return keys[a] < keys[c]; });
  return order;
}

template <typename scalar_t>
std::vector<std::vector<int64_t>> locality_orders(const scalar_t* locations, const std::vector<Level>& levels,
                                                  const Dims& d) {
  std::vector<std::vector<int64_t>> orders(d.batch);
  const bool has_points = d.levels > 0 && d.points > 0;
  at::parallel_for(0, d.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (has_points) {
        orders[b] = locality_order(locations, b, levels[0], d);
      } else {  // nothing is sampled: any order will do
        orders[b].resize(d.queries);
        for (int64_t q = 0; q < d.queries; ++q) orders[b][q] = q;
      }
    }
  });
  return orders;
}

// kChannels > 0: compiled for that many channels per head, so the row's accumulators live in registers and the
// channel loops unroll (1.33x at 16 channels); 0: any width, read at run time.
template <typename scalar_t, int kChannels>
void forward_kernel(const scalar_t* __restrict__ value, const std::vector<Level>& levels,
                    const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                    scalar_t* __restrict__ output, const Dims& d) {
  const int64_t channels = kChannels > 0 ? kChannels : d.channels, token_stride = d.heads * channels;
  const int64_t rows = d.batch * d.queries * d.heads;
  const int64_t points_per_row = d.levels * d.points;
  // Each row costs ~L*P*4*C multiply-adds; aim for ~32k per grain.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, points_per_row * 4 * channels));
  const auto orders = locality_orders(locations, levels, d);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    scalar_t acc_fixed[kChannels > 0 ? kChannels : 1];
    std::vector<scalar_t> acc_buffer(kChannels > 0 ? 0 : channels);
    scalar_t* __restrict__ acc = kChannels > 0 ? acc_fixed : acc_buffer.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (d.queries * d.heads);
      const int64_t h = task % d.heads;
      const int64_t q = orders[b][(task / d.heads) % d.queries];
      const int64_t row = (b * d.queries + q) * d.heads + h;
      const scalar_t* value_bh = value + b * d.num_values * token_stride + h * channels;
      const scalar_t* loc = locations + row * points_per_row * 2;
      const scalar_t* w = weights + row * points_per_row;
      for (int64_t c = 0; c < channels; ++c) acc[c] = scalar_t(0);
      for (int64_t l = 0; l < d.levels; ++l) {
        const Level& level = levels[l];
        const scalar_t* value_level = value_bh + level.start * token_stride;
        for (int64_t p = 0; p < d.points; ++p, loc += 2, ++w) {
          const Footprint<scalar_t> fp = footprint(loc[0], loc[1], level);
          for (int k = 0; k < fp.count; ++k) {
            const scalar_t coef = *w * fp.weight[k];
            const scalar_t* __restrict__ v = value_level + fp.token[k] * token_stride;
            for (int64_t c = 0; c < channels; ++c) acc[c] += coef * v[c];
          }
        }
      }
      scalar_t* out = output + row * channels;
      for (int64_t c = 0; c < channels; ++c) out[c] = acc[c];
    }
  });
}

// a . b over n values as four interleaved partial sums (one vector register), added pairwise at the end: a single
// running sum makes every addition wait for the previous one, which was the backward's bottleneck. A fixed order,
// so the same bits for any thread count.
template <typename scalar_t>
inline scalar_t dot_product(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n) {
  scalar_t lane[4] = {0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    lane[0] += a[c] * b[c];
    lane[1] += a[c + 1] * b[c + 1];
    lane[2] += a[c + 2] * b[c + 2];
    lane[3] += a[c + 3] * b[c + 3];
  }
  scalar_t sum = (lane[0] + lane[1]) + (lane[2] + lane[3]);
  for (; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

template <typename scalar_t>
void backward_kernel(const scalar_t* __restrict__ value, const std::vector<Level>& levels,
                     const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                     const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_value,
                     scalar_t* __restrict__ grad_locations, scalar_t* __restrict__ grad_weights, const Dims& d) {
  const int64_t channels = d.channels, token_stride = d.heads * d.channels;
  const int64_t points_per_row = d.levels * d.points;
  const auto orders = locality_orders(locations, levels, d);
  // A task takes as many heads as still gives every thread one: a query's rows of all its heads are adjacent in
  // memory, so going through them together reads and writes whole stretches (1.19x faster at 8 heads x 16 channels
  // than one task per head). Sums run per (value token, head) in query order whatever the grouping, so the result
  // does not depend on the thread count.
  const int64_t tasks_per_image = (at::get_num_threads() + d.batch - 1) / d.batch;
  const int64_t head_groups = std::min(d.heads, std::max<int64_t>(1, tasks_per_image));
  const int64_t heads_per_task = (d.heads + head_groups - 1) / head_groups;
  at::parallel_for(0, d.batch * head_groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / head_groups, first_head = (task % head_groups) * heads_per_task;
      const int64_t last_head = std::min(d.heads, first_head + heads_per_task);
      for (const int64_t q : orders[b])
      for (int64_t h = first_head; h < last_head; ++h) {
        const int64_t value_offset = b * d.num_values * token_stride + h * channels;
        const int64_t row = (b * d.queries + q) * d.heads + h;
        const scalar_t* __restrict__ go = grad_output + row * channels;
        const scalar_t* loc = locations + row * points_per_row * 2;
        const scalar_t* w = weights + row * points_per_row;
        scalar_t* grad_loc = grad_locations + row * points_per_row * 2;
        scalar_t* grad_w = grad_weights + row * points_per_row;
        for (int64_t l = 0; l < d.levels; ++l) {
          const Level& level = levels[l];
          const int64_t level_offset = value_offset + level.start * token_stride;
          for (int64_t p = 0; p < d.points; ++p, loc += 2, ++w, grad_loc += 2, ++grad_w) {
            const Footprint<scalar_t> fp = footprint(loc[0], loc[1], level);
            scalar_t sum_weight = 0, sum_dx = 0, sum_dy = 0;
            for (int k = 0; k < fp.count; ++k) {
              const scalar_t* __restrict__ v = value + level_offset + fp.token[k] * token_stride;
              scalar_t* __restrict__ gv = grad_value + level_offset + fp.token[k] * token_stride;
              const scalar_t coef = *w * fp.weight[k];
              for (int64_t c = 0; c < channels; ++c) gv[c] += coef * go[c];
              const scalar_t dot = dot_product(go, v, channels);
              sum_weight += fp.weight[k] * dot;
              sum_dx += fp.dweight_dx[k] * dot;
              sum_dy += fp.dweight_dy[k] * dot;
            }
            *grad_w = sum_weight;
            // x = loc_x * width - 0.5, so d/d loc_x = width * d/dx.
            grad_loc[0] = *w * sum_dx * static_cast<scalar_t>(level.width);
            grad_loc[1] = *w * sum_dy * static_cast<scalar_t>(level.height);
          }
        }
      }
    }
  });
}

// Calls body(std::integral_constant<int, C>) with C = channels for the narrow heads whose accumulators fit in
// registers, else C = 0 (any width; at 32 channels the fixed width measured slower).
template <typename Body>
void with_channels(int64_t channels, Body&& body) {
  switch (channels) {
    case 8: body(std::integral_constant<int, 8>()); break;
    case 16: body(std::integral_constant<int, 16>()); break;
    default: body(std::integral_constant<int, 0>());
  }
}

void check_cpu_dtypes(const at::Tensor& value, const at::Tensor& sampling_locations) {
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "the CPU MSDA kernel supports float32 and float64, got ", value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type(),
              "the CPU MSDA kernel needs sampling_locations / attention_weights in value's dtype");
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  check_cpu_dtypes(value, sampling_locations);
  const Dims d = dims_of(value, sampling_locations);
  // Every row is written by the kernel (zeros when nothing is sampled), so no zero fill.
  auto output = at::empty({d.batch, d.queries, d.heads * d.channels}, value.options());
  if (output.numel() == 0) return output;
  const auto levels = read_levels(spatial_shapes, level_start_index, d.num_values);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    with_channels(d.channels, [&](auto fixed) {
      forward_kernel<scalar_t, decltype(fixed)::value>(value.data_ptr<scalar_t>(), levels,
                                                       sampling_locations.data_ptr<scalar_t>(),
                                                       attention_weights.data_ptr<scalar_t>(),
                                                       output.data_ptr<scalar_t>(), d);
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_locations,
                                                    const at::Tensor& attention_weights,
                                                    const at::Tensor& grad_output) {
  check_cpu_dtypes(value, sampling_locations);
  const Dims d = dims_of(value, sampling_locations);
  auto grad_value = at::zeros_like(value);
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  if (grad_output.numel() == 0 || d.levels == 0 || d.points == 0) return {grad_value, grad_locations, grad_weights};
  const auto levels = read_levels(spatial_shapes, level_start_index, d.num_values);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(value.data_ptr<scalar_t>(), levels, sampling_locations.data_ptr<scalar_t>(),
                              attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
                              grad_value.data_ptr<scalar_t>(), grad_locations.data_ptr<scalar_t>(),
                              grad_weights.data_ptr<scalar_t>(), d);
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace focus_detr
