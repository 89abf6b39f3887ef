// Host emulation of the small CUDA subset the dwconv kernels use, so the same kernel source compiles as
// plain C++ and runs on the CPU (tests/cuda_host builds it; never part of the real extension).
//
// Execution model: one launch runs its blocks one after another on the calling OS thread. The threads of a
// block are ucontext fibers scheduled round-robin: each runs until it reaches __syncthreads(), a warp barrier
// (syncwarp below: warp-collective operations such as the mma in cuda_compat.cuh) or returns. A warp barrier
// releases when every live lane of the warp (32 consecutive threads) waits at it; the block barrier when
// every live thread waits at it (__syncthreads_or: the scheduler combines the votes as it releases). This is
// deterministic and needs no locks (atomics are plain read-modify-writes). A thread that returns while
// others still wait at a block barrier (divergent __syncthreads), or a warp barrier that its warp's lanes
// cannot all reach, makes the launch fail.
// The threads of a phase run in index order, or in reverse order after set_reverse_schedule(true): a kernel
// without shared-memory races gives bitwise the same results under both (a write and a read, or two writes, of
// one address by different threads between two barriers see each other in one order and not in the other);
// the tests compare the two, the host's counterpart of compute-sanitizer's racecheck.
// Dynamic shared memory is one buffer per launch, filled with 0xFF bytes (NaN for floats) before every
// block so reads of never-written shared memory poison the result.
#pragma once
#if defined(__CUDACC__)
#error "host_emulation.h is for host-only builds"
#endif

#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace dwconv_emu {

inline constexpr size_t kFiberStackBytes = 128 * 1024;

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  bool done = false;
  bool waiting = false;       // at __syncthreads
  int vote = 0;               // its predicate at the block barrier it waits at (__syncthreads_or)
  bool warp_waiting = false;  // at syncwarp
};

struct LaunchState {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  int current = -1;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> smem;  // 16-byte aligned through operator new of unsigned char? see data()
  std::vector<unsigned char> exchange;  // kExchangeBytes per thread, for warp-collective emulations
  int barrier_or = 0;  // OR of the live threads' votes at the last released block barrier
  bool reverse_schedule = false;  // run each phase's threads from the highest index down
  int64_t max_grid_blocks = int64_t(1) << 30;  // grid_for's cap (tile_geometry.cuh)
  cudaError_t last_error = cudaSuccess;
};

inline constexpr size_t kExchangeBytes = 64;
inline constexpr unsigned kWarpSize = 32;

inline LaunchState& state() {
  static thread_local LaunchState s;
  return s;
}

inline void fiber_entry() {
  LaunchState& s = state();
  (*s.body)();
  s.fibers[s.current].done = true;  // returning resumes uc_link (the scheduler)
}

// Block barrier; returns the OR of the votes of the block's live threads at this barrier. The scheduler
// combines the votes when it releases the barrier, and every thread reads the result as it resumes, before
// any thread can reach the next barrier.
inline int syncthreads(int vote = 0) {
  LaunchState& s = state();
  Fiber& f = s.fibers[s.current];
  f.vote = vote;
  f.waiting = true;
  swapcontext(&f.ctx, &s.scheduler);
  return s.barrier_or;
}

// Waits until every live lane of the calling thread's warp has called syncwarp.
inline void syncwarp() {
  LaunchState& s = state();
  Fiber& f = s.fibers[s.current];
  f.warp_waiting = true;
  swapcontext(&f.ctx, &s.scheduler);
}

// The calling warp's exchange area: kExchangeBytes per lane, lane-major.
inline unsigned char* warp_exchange() {
  LaunchState& s = state();
  return s.exchange.data() + size_t(s.current) / kWarpSize * kWarpSize * kExchangeBytes;
}

// A vector access the device would fault on makes the launch fail, as on the GPU.
inline void check_aligned(const void* p, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) state().last_error = cudaErrorMisalignedAddress;
}

inline unsigned char* smem_base() {
  // Round up to 16 bytes so vector types in shared memory are aligned as on the device.
  auto addr = reinterpret_cast<uintptr_t>(state().smem.data());
  return reinterpret_cast<unsigned char*>((addr + 15) & ~uintptr_t(15));
}

// Sets the order in which later launches on this OS thread run the threads of a block; returns the previous.
inline bool set_reverse_schedule(bool reverse) {
  const bool previous = state().reverse_schedule;
  state().reverse_schedule = reverse;
  return previous;
}

// Caps the grids grid_for (tile_geometry.cuh) gives later launches on this OS thread, so that tests make the
// kernels' grid-stride loops (`blk += gridDim.x`, on the GPU only past 2^30 blocks) run several rounds per
// block; returns the previous cap.
inline int64_t set_max_grid_blocks(int64_t blocks) {
  const int64_t previous = state().max_grid_blocks;
  state().max_grid_blocks = blocks;
  return previous;
}
inline int64_t max_grid_blocks() { return state().max_grid_blocks; }

// Runs `body` (the kernel call) for every thread of every block of the grid.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  LaunchState& s = state();
  const size_t nthreads = size_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    s.last_error = cudaErrorInvalidValue;
    return;
  }
  if (s.fibers.size() < nthreads) s.fibers.resize(nthreads);
  for (auto& f : s.fibers)
    if (!f.stack) f.stack.reset(new char[kFiberStackBytes]);
  s.smem.assign(smem_bytes + 16, 0xFF);
  s.exchange.assign((nthreads + kWarpSize - 1) / kWarpSize * kWarpSize * kExchangeBytes, 0xFF);
  s.body = &body;
  blockDim = block;
  gridDim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        std::memset(smem_base(), 0xFF, smem_bytes);
        for (size_t t = 0; t < nthreads; ++t) {
          Fiber& f = s.fibers[t];
          f.done = false;
          f.waiting = false;
          f.warp_waiting = false;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kFiberStackBytes;
          f.ctx.uc_link = &s.scheduler;
          makecontext(&f.ctx, fiber_entry, 0);
        }
        for (;;) {  // one phase: from a block barrier (or the start) to the next
          size_t done_before = 0;
          for (size_t t = 0; t < nthreads; ++t) done_before += s.fibers[t].done;
          for (;;) {
            bool progress = false;
            for (size_t i = 0; i < nthreads; ++i) {
              const size_t t = s.reverse_schedule ? nthreads - 1 - i : i;
              Fiber& f = s.fibers[t];
              if (f.done || f.waiting || f.warp_waiting) continue;
              threadIdx = dim3(unsigned(t % block.x), unsigned(t / block.x % block.y),
                               unsigned(t / (size_t(block.x) * block.y)));
              s.current = int(t);
              swapcontext(&s.scheduler, &f.ctx);
              progress = true;
            }
            for (size_t w0 = 0; w0 < nthreads; w0 += kWarpSize) {  // release complete warp barriers
              const size_t w1 = std::min(nthreads, w0 + kWarpSize);
              size_t live = 0, at_warp_barrier = 0;
              for (size_t t = w0; t < w1; ++t) {
                live += !s.fibers[t].done;
                at_warp_barrier += s.fibers[t].warp_waiting;
              }
              if (at_warp_barrier == 0 || at_warp_barrier != live) continue;
              for (size_t t = w0; t < w1; ++t) s.fibers[t].warp_waiting = false;
              progress = true;
            }
            if (!progress) break;
          }
          size_t live = 0, done_after = 0, stuck = 0;
          for (size_t t = 0; t < nthreads; ++t) {
            done_after += s.fibers[t].done;
            live += !s.fibers[t].done;
            stuck += s.fibers[t].warp_waiting;
          }
          if (live == 0) break;
          // Lanes left at a warp barrier, or threads that returned while others wait at __syncthreads.
          if (stuck != 0 || done_after != done_before) {
            s.last_error = cudaErrorLaunchFailure;
            return;
          }
          int vote = 0;
          for (size_t t = 0; t < nthreads; ++t) vote |= !s.fibers[t].done && s.fibers[t].vote != 0;
          s.barrier_or = vote;
          for (size_t t = 0; t < nthreads; ++t) s.fibers[t].waiting = false;
        }
      }
  s.current = -1;
}

}  // namespace dwconv_emu

inline void __syncthreads() { dwconv_emu::syncthreads(); }
// Block barrier that also returns non-zero to every thread when `predicate` is non-zero for any of them.
inline int __syncthreads_or(int predicate) { return dwconv_emu::syncthreads(predicate != 0); }

inline float atomicAdd(float* p, float v) { float old = *p; *p = old + v; return old; }
inline double atomicAdd(double* p, double v) { double old = *p; *p = old + v; return old; }

inline cudaError_t cudaGetLastError() {
  cudaError_t e = dwconv_emu::state().last_error;
  dwconv_emu::state().last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulated launch)";
    case cudaErrorMisalignedAddress: return "misaligned address (emulated vector access)";
    default: return "unspecified launch failure (emulated: divergent __syncthreads or warp barrier)";
  }
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

// kernel<<<grid, block, smem, stream>>>(args...) for the host: the kernel must be a plain name (alias
// template instantiations with `auto k = kernel<...>;` first, since macro arguments split at commas).
#define DWCONV_LAUNCH(kernel, grid, block, smem, stream, ...) \
  dwconv_emu::launch((grid), (block), (smem), [&]() { kernel(__VA_ARGS__); })
