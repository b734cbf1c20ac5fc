// Just enough of CUDA to run the project's MSDA kernels on the CPU, for tests: a launch runs its blocks one after
// another, each as blockDim.x real threads, with a block barrier for __syncthreads, warp-wide exchange through a
// per-warp barrier for __shfl_xor_sync, dynamic shared memory per block, and mutex-guarded atomicAdd. Slow, but it
// executes the kernels' own indexing, divergence and reductions exactly as written.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define FOCUS_DETR_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(cuda_on_cpu::current_block()->shared.data())

struct dim3 {
  unsigned int x = 0, y = 0, z = 0;
};

namespace cuda_on_cpu {

constexpr int kWarpSize = 32;

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long generation = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_, waiting_ = 0;
  unsigned long generation_ = 0;
};

struct Block {
  Block(int threads, size_t shared_bytes) : barrier(threads), shared(shared_bytes + 16), slots(threads) {
    for (int w = 0; w < (threads + kWarpSize - 1) / kWarpSize; ++w) {
      const int lanes = std::min(kWarpSize, threads - w * kWarpSize);
      warp_barriers.push_back(std::make_unique<Barrier>(lanes));
    }
  }
  Barrier barrier;
  std::vector<std::unique_ptr<Barrier>> warp_barriers;
  std::vector<unsigned char> shared;
  std::vector<double> slots;  // one shuffle slot per thread, wide enough for float and double
};

inline thread_local Block* block_of_thread = nullptr;
inline Block* current_block() { return block_of_thread; }
inline std::mutex& atomic_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace cuda_on_cpu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline void __syncthreads() { cuda_on_cpu::current_block()->barrier.wait(); }

template <typename T>
T __shfl_xor_sync(unsigned int /*mask: every lane takes part in the kernels*/, T value, int lane_mask) {
  auto* block = cuda_on_cpu::current_block();
  const int tid = static_cast<int>(threadIdx.x);
  const int warp_start = tid - tid % cuda_on_cpu::kWarpSize;
  auto& warp_barrier = *block->warp_barriers[tid / cuda_on_cpu::kWarpSize];
  std::memcpy(&block->slots[tid], &value, sizeof(T));
  warp_barrier.wait();
  T partner;
  std::memcpy(&partner, &block->slots[warp_start + ((tid - warp_start) ^ lane_mask)], sizeof(T));
  warp_barrier.wait();  // nobody overwrites a slot before every lane has read it
  return partner;
}

template <typename T>
T atomicAdd(T* address, T value) {
  std::lock_guard<std::mutex> lock(cuda_on_cpu::atomic_mutex());
  const T old = *address;
  *address = old + value;
  return old;
}

namespace cuda_on_cpu {

// kernel<<<blocks, threads_per_block, shared_bytes>>>(args...), run to completion.
template <typename Kernel, typename... Args>
void launch(unsigned int blocks, unsigned int threads_per_block, size_t shared_bytes, Kernel kernel, Args... args) {
  gridDim = dim3{blocks, 1, 1};
  blockDim = dim3{threads_per_block, 1, 1};
  for (unsigned int b = 0; b < blocks; ++b) {
    Block block(static_cast<int>(threads_per_block), shared_bytes);
    std::vector<std::thread> threads;
    threads.reserve(threads_per_block);
    for (unsigned int t = 0; t < threads_per_block; ++t) {
      threads.emplace_back([&, b, t] {
        block_of_thread = &block;
        blockIdx = dim3{b, 0, 0};
        threadIdx = dim3{t, 0, 0};
        kernel(args...);
      });
    }
    for (auto& thread : threads) thread.join();
  }
}

}  // namespace cuda_on_cpu
