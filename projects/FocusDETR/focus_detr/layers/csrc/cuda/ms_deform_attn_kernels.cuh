// CUDA kernels of multi-scale deformable attention and their launch planning, see ../ms_deform_attn.h for layouts.
//
// `forward` / `backward` take a `launch(kernel, blocks, shared_bytes, args...)` callable: ms_deform_attn_cuda.cu
// launches on the current CUDA stream; tests/layers/cuda_emulation runs the very same kernels on CPU threads (with
// emulated __syncthreads, warp shuffles and atomics), so their indexing and reductions are tested without a GPU.
//
// Work split: one "group" of G consecutive threads per output row (batch, query, head); each thread owns V
// consecutive channels (one vector load per bilinear corner), so G = C / V. Forward: V * sizeof(scalar_t) = 16 bytes
// (C = 32: 8 threads in float32, 4 in float16/bfloat16). Backward: V * sizeof(accumulation type) = 16 bytes, so each
// thread adds one 16-byte vector to grad_value per corner and float16/bfloat16 rows get float32's 8 threads (with
// 16-byte value loads they got 4, each issuing two vector atomics per corner: 1.30 ms against float32's 0.98 ms at
// the encoder shape on an H200). Level geometry is staged in shared memory once per block.
// Accumulation is in float32 (float64 for float64 inputs); locations and weights are read in that precision.
//
// Forward: every thread writes its own V outputs -- no atomics, deterministic.
// Backward: grad_value needs a scatter (atomics, float32 buffer for float16/bfloat16, vector atomics on sm_90).
// The location / weight gradients of a point are reduced over the group's channels with warp shuffles and written by
// one lane (plain stores, deterministic); only when G exceeds a warp or is not a power of two do the per-warp
// partial sums meet through an atomicAdd.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#ifndef FOCUS_DETR_DYNAMIC_SHARED
#define FOCUS_DETR_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace focus_detr {
namespace msda_cuda {

constexpr int kThreadsPerBlock = 256;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T>
__device__ __forceinline__ at::opmath_type<T> to_opmath(T x) {
  return static_cast<at::opmath_type<T>>(x);
}

struct Geometry {
  int64_t batch, num_values, heads, channels, queries, levels, points;
  int group;  // threads per (batch, query, head) row = channels / V
};

// Level (h, w, start) in shared memory; a level that does not fit in [0, S) becomes 0 x 0 (never sampled).
__device__ __forceinline__ void stage_levels(const int64_t* __restrict__ spatial_shapes,
                                             const int64_t* __restrict__ level_start_index, int64_t levels,
                                             int64_t num_values, int64_t* shared) {
  for (int64_t l = threadIdx.x; l < levels; l += blockDim.x) {
    const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1], start = level_start_index[l];
    // height <= (S - start) / width, not start + height * width <= S: the product can overflow int64 and wrap
    const bool fits = height > 0 && width > 0 && start >= 0 && start <= num_values &&
                      height <= (num_values - start) / width;
    shared[3 * l] = fits ? height : 0;
    shared[3 * l + 1] = fits ? width : 0;
    shared[3 * l + 2] = fits ? start : 0;
  }
  __syncthreads();
}

// Bilinear corner k in {0: (y0, x0), 1: (y0, x1), 2: (y1, x0), 3: (y1, x1)}.
template <typename acc_t>
struct Corners {
  int64_t token[4];  // token index within the level, -1 when out of bounds
  acc_t weight[4];
  acc_t dweight_dx[4];
  acc_t dweight_dy[4];
};

template <typename acc_t>
__device__ __forceinline__ bool corners_of(acc_t loc_x, acc_t loc_y, int64_t height, int64_t width,
                                           Corners<acc_t>& c) {
  const acc_t x = loc_x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(height) - acc_t(0.5);
  // Also rejects NaN; outside (-1, size) every corner is out of bounds.
  if (!(x > acc_t(-1) && y > acc_t(-1) && x < static_cast<acc_t>(width) && y < static_cast<acc_t>(height))) {
    return false;
  }
  const acc_t x0f = floor(x), y0f = floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  const acc_t lx = x - x0f, ly = y - y0f, hx = acc_t(1) - lx, hy = acc_t(1) - ly;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t yy = y0 + (k >> 1), xx = x0 + (k & 1);
    const acc_t wy = (k >> 1) ? ly : hy, wx = (k & 1) ? lx : hx;
    const bool inside = yy >= 0 && yy < height && xx >= 0 && xx < width;
    c.token[k] = inside ? yy * width + xx : -1;
    c.weight[k] = wy * wx;
    c.dweight_dx[k] = (k & 1) ? wy : -wy;
    c.dweight_dy[k] = (k >> 1) ? wx : -wx;
  }
  return true;
}

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                   const int64_t* __restrict__ level_start_index,
                   const at::opmath_type<scalar_t>* __restrict__ locations,
                   const at::opmath_type<scalar_t>* __restrict__ weights, scalar_t* __restrict__ output,
                   const Geometry g, const int64_t total_threads) {
  using acc_t = at::opmath_type<scalar_t>;
  FOCUS_DETR_DYNAMIC_SHARED(int64_t, level_geometry);
  stage_levels(spatial_shapes, level_start_index, g.levels, g.num_values, level_geometry);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid >= total_threads) return;
  const int64_t row = tid / g.group;
  const int64_t channel = (tid % g.group) * V;
  const int64_t b = row / (g.queries * g.heads), h = row % g.heads;
  const int64_t token_stride = g.heads * g.channels;
  const scalar_t* value_bh = value + b * g.num_values * token_stride + h * g.channels + channel;
  const acc_t* loc = locations + row * g.levels * g.points * 2;
  const acc_t* w = weights + row * g.levels * g.points;

  acc_t acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = acc_t(0);
  for (int64_t l = 0; l < g.levels; ++l) {
    const int64_t height = level_geometry[3 * l], width = level_geometry[3 * l + 1];
    const scalar_t* value_level = value_bh + level_geometry[3 * l + 2] * token_stride;
#pragma unroll 4
    for (int64_t p = 0; p < g.points; ++p) {
      const acc_t loc_x = loc[0], loc_y = loc[1], attention = w[0];
      loc += 2;
      ++w;
      Corners<acc_t> c;
      if (!corners_of(loc_x, loc_y, height, width, c)) continue;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (c.token[k] < 0) continue;
        const Vec<scalar_t, V> v = *reinterpret_cast<const Vec<scalar_t, V>*>(value_level + c.token[k] * token_stride);
        const acc_t coef = attention * c.weight[k];
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += coef * to_opmath(v.v[i]);
      }
    }
  }
  Vec<scalar_t, V> out;
#pragma unroll
  for (int i = 0; i < V; ++i) out.v[i] = static_cast<scalar_t>(acc[i]);
  *reinterpret_cast<Vec<scalar_t, V>*>(output + row * g.channels + channel) = out;
}

// grad_value accumulation: vector atomics where the hardware has them (sm_90: float2 / float4).
template <int V>
__device__ __forceinline__ void atomic_add_vec(float* address, const float (&values)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(address + i),
                make_float4(values[i], values[i + 1], values[i + 2], values[i + 3]));
    }
  } else if constexpr (V % 2 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 2) {
      atomicAdd(reinterpret_cast<float2*>(address + i), make_float2(values[i], values[i + 1]));
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) atomicAdd(address + i, values[i]);
  }
#else
#pragma unroll
  for (int i = 0; i < V; ++i) atomicAdd(address + i, values[i]);
#endif
}

template <int V>
__device__ __forceinline__ void atomic_add_vec(double* address, const double (&values)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) atomicAdd(address + i, values[i]);
}

// Sum over `segment` consecutive lanes (a power of two <= 32, segments aligned in the warp); all lanes take part.
template <typename acc_t>
__device__ __forceinline__ acc_t segment_sum(acc_t x, int segment) {
  for (int offset = segment >> 1; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                    const int64_t* __restrict__ level_start_index,
                    const at::opmath_type<scalar_t>* __restrict__ locations,
                    const at::opmath_type<scalar_t>* __restrict__ weights, const scalar_t* __restrict__ grad_output,
                    at::opmath_type<scalar_t>* __restrict__ grad_value,
                    at::opmath_type<scalar_t>* __restrict__ grad_locations,
                    at::opmath_type<scalar_t>* __restrict__ grad_weights, const Geometry g,
                    const int64_t total_threads, const int segment, const bool segment_is_group) {
  using acc_t = at::opmath_type<scalar_t>;
  FOCUS_DETR_DYNAMIC_SHARED(int64_t, level_geometry);
  stage_levels(spatial_shapes, level_start_index, g.levels, g.num_values, level_geometry);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Threads past the end stay alive (with zero contributions) because every lane must join the shuffles.
  const bool active = tid < total_threads;
  const int64_t safe_tid = active ? tid : 0;
  const int64_t row = safe_tid / g.group;
  const int64_t channel = (safe_tid % g.group) * V;
  const bool segment_leader = (threadIdx.x & (segment - 1)) == 0;
  const int64_t b = row / (g.queries * g.heads), h = row % g.heads;
  const int64_t token_stride = g.heads * g.channels;
  const int64_t value_offset = b * g.num_values * token_stride + h * g.channels + channel;
  const int64_t point_base = row * g.levels * g.points;

  acc_t go[V];
  {
    const Vec<scalar_t, V> grad = *reinterpret_cast<const Vec<scalar_t, V>*>(grad_output + row * g.channels + channel);
#pragma unroll
    for (int i = 0; i < V; ++i) go[i] = active ? to_opmath(grad.v[i]) : acc_t(0);
  }

  for (int64_t l = 0; l < g.levels; ++l) {
    const int64_t height = level_geometry[3 * l], width = level_geometry[3 * l + 1];
    const int64_t level_offset = value_offset + level_geometry[3 * l + 2] * token_stride;
#pragma unroll 2
    for (int64_t p = 0; p < g.points; ++p) {
      const int64_t point = point_base + l * g.points + p;
      const acc_t loc_x = locations[2 * point], loc_y = locations[2 * point + 1], attention = weights[point];
      acc_t sum_weight = 0, sum_dx = 0, sum_dy = 0;
      Corners<acc_t> c;
      if (active && corners_of(loc_x, loc_y, height, width, c)) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.token[k] < 0) continue;
          const int64_t offset = level_offset + c.token[k] * token_stride;
          const Vec<scalar_t, V> v = *reinterpret_cast<const Vec<scalar_t, V>*>(value + offset);
          const acc_t coef = attention * c.weight[k];
          acc_t dot = 0;
          acc_t scaled[V];
#pragma unroll
          for (int i = 0; i < V; ++i) {
            dot += go[i] * to_opmath(v.v[i]);
            scaled[i] = coef * go[i];
          }
          atomic_add_vec<V>(grad_value + offset, scaled);
          sum_weight += c.weight[k] * dot;
          sum_dx += c.dweight_dx[k] * dot;
          sum_dy += c.dweight_dy[k] * dot;
        }
      }
      sum_weight = segment_sum(sum_weight, segment);
      sum_dx = segment_sum(sum_dx, segment);
      sum_dy = segment_sum(sum_dy, segment);
      if (active && segment_leader) {
        // x = loc_x * width - 0.5, so d/d loc_x = width * d/dx.
        const acc_t grad_x = attention * sum_dx * static_cast<acc_t>(width);
        const acc_t grad_y = attention * sum_dy * static_cast<acc_t>(height);
        if (segment_is_group) {
          grad_weights[point] = sum_weight;
          grad_locations[2 * point] = grad_x;
          grad_locations[2 * point + 1] = grad_y;
        } else {
          atomicAdd(grad_weights + point, sum_weight);
          atomicAdd(grad_locations + 2 * point, grad_x);
          atomicAdd(grad_locations + 2 * point + 1, grad_y);
        }
      }
    }
  }
}

// Vector widths (elements per thread): the forward reads 16 bytes of values, the backward accumulates 16 bytes.
template <typename scalar_t>
constexpr int kForwardWidth = static_cast<int>(16 / sizeof(scalar_t));
template <typename scalar_t>
constexpr int kBackwardWidth = static_cast<int>(16 / sizeof(at::opmath_type<scalar_t>));

// kMax when it divides C and both rows start kMax-element aligned; 1 otherwise.
template <typename scalar_t, int kMax>
int vector_width(int64_t channels, const void* value_ptr, const void* out_ptr) {
  constexpr uintptr_t bytes = kMax * sizeof(scalar_t);
  const bool aligned = reinterpret_cast<uintptr_t>(value_ptr) % bytes == 0 &&
                       reinterpret_cast<uintptr_t>(out_ptr) % bytes == 0;
  return (aligned && channels % kMax == 0) ? kMax : 1;
}

template <int kMax, typename Launch>
void with_vector_width(int width, Launch&& launch) {
  if (width == kMax) {
    launch(std::integral_constant<int, kMax>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

inline Geometry geometry_of(const at::Tensor& value, const at::Tensor& sampling_locations, int vector) {
  Geometry g{value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
             sampling_locations.size(3), sampling_locations.size(4), 0};
  g.group = static_cast<int>(g.channels / vector);
  return g;
}

inline void check_cuda_dtypes(const at::Tensor& value, const at::Tensor& sampling_locations) {
  const auto type = value.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16,
              "the CUDA MSDA kernel supports float32/float64/float16/bfloat16, got ", type);
  const auto expected = type == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(sampling_locations.scalar_type() == expected, "the CUDA MSDA kernel reads locations and weights as ",
              expected, " for ", type, " values, got ", sampling_locations.scalar_type());
}

inline unsigned int blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "MSDA problem too large for one CUDA launch");
  return static_cast<unsigned int>(blocks);
}

template <typename Launch>
at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights, Launch&& launch) {
  check_cuda_dtypes(value, sampling_locations);
  auto output = at::zeros({value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)},
                          value.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    constexpr int kMax = kForwardWidth<scalar_t>;
    const int width = vector_width<scalar_t, kMax>(value.size(3), value.data_ptr(), output.data_ptr());
    with_vector_width<kMax>(width, [&](auto vector) {
      constexpr int V = decltype(vector)::value;
      const Geometry g = geometry_of(value, sampling_locations, V);
      const int64_t threads = g.batch * g.queries * g.heads * g.group;
      const size_t shared = 3 * sizeof(int64_t) * static_cast<size_t>(g.levels);
      launch(forward_kernel<scalar_t, V>, blocks_for(threads), shared, value.data_ptr<scalar_t>(),
             spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
             sampling_locations.data_ptr<at::opmath_type<scalar_t>>(),
             attention_weights.data_ptr<at::opmath_type<scalar_t>>(), output.data_ptr<scalar_t>(), g, threads);
    });
  });
  return output;
}

// The vector widths {forward, backward} the kernels would use for `value` (and an output / gradient row like it).
inline std::vector<int64_t> planned_vector_widths(const at::Tensor& value) {
  std::vector<int64_t> widths;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_widths", [&] {
    widths = {vector_width<scalar_t, kForwardWidth<scalar_t>>(value.size(3), value.data_ptr(), value.data_ptr()),
              vector_width<scalar_t, kBackwardWidth<scalar_t>>(value.size(3), value.data_ptr(), value.data_ptr())};
  });
  return widths;
}

// Shuffle segment of the backward: the largest power of two dividing the group, at most a warp.
inline int shuffle_segment(int group) {
  int segment = 1;
  while (segment < 32 && group % (segment * 2) == 0) segment *= 2;
  return segment;
}

template <typename Launch>
std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights, const at::Tensor& grad_output_in,
                                 Launch&& launch) {
  check_cuda_dtypes(value, sampling_locations);
  const at::Tensor grad_output = grad_output_in.to(value.scalar_type()).contiguous();
  const auto accumulate = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(accumulate));
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  if (grad_output.numel() > 0 && sampling_locations.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          constexpr int kMax = kBackwardWidth<scalar_t>;
          const int width = vector_width<scalar_t, kMax>(value.size(3), value.data_ptr(), grad_output.data_ptr());
          with_vector_width<kMax>(width, [&](auto vector) {
            constexpr int V = decltype(vector)::value;
            const Geometry g = geometry_of(value, sampling_locations, V);
            const int segment = shuffle_segment(g.group);
            const int64_t threads = g.batch * g.queries * g.heads * g.group;
            const size_t shared = 3 * sizeof(int64_t) * static_cast<size_t>(g.levels);
            launch(backward_kernel<scalar_t, V>, blocks_for(threads), shared, value.data_ptr<scalar_t>(),
                   spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
                   sampling_locations.data_ptr<at::opmath_type<scalar_t>>(),
                   attention_weights.data_ptr<at::opmath_type<scalar_t>>(), grad_output.data_ptr<scalar_t>(),
                   grad_value.data_ptr<at::opmath_type<scalar_t>>(),
                   grad_locations.data_ptr<at::opmath_type<scalar_t>>(),
                   grad_weights.data_ptr<at::opmath_type<scalar_t>>(), g, threads, segment, segment == g.group);
          });
        });
  }
  return {grad_value.to(value.scalar_type()), grad_locations, grad_weights};
}

}  // namespace msda_cuda
}  // namespace focus_detr
