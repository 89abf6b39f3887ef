// Host emulation of the small CUDA subset the dwconv kernels use, so the same kernel source compiles as
// plain C++ and runs on the CPU (tests/cuda_host builds it; never part of the real extension).
//
// Execution model: one launch runs its blocks one after another on the calling OS thread. The threads of a
// block are ucontext fibers. Between two block barriers (__syncthreads) the warps run one at a time: a warp's
// lanes run round-robin, each until it reaches a warp barrier (syncwarp below: warp-collective operations
// such as the mma in cuda_compat.cuh), the block barrier, or returns; the warp barrier releases when every
// live lane of the warp (32 consecutive threads) waits at it, and the warp's turn ends when all its lanes wait
// at the block barrier or have returned. The block barrier then releases (__syncthreads_or: the scheduler
// combines the votes as it releases). This is deterministic and needs no locks (atomics are plain
// read-modify-writes). A thread that returns while others still wait at a block barrier (divergent
// __syncthreads), or a warp barrier that its warp's lanes cannot all reach, makes the launch fail.
//
// Warps and lanes run in index order or, after set_reverse_schedule(true), in reverse order (blocks keep
// their order: the atomic weight gradient's float sums would change). Two threads that touch one
// shared-memory address between two block barriers, one of them writing, then see each other's access in one
// order and not in the other when they are in different warps, or in the same warp between two warp
// barriers; a kernel without such races gives bitwise the same results under both orders, and the tests
// compare the two (the host's counterpart of compute-sanitizer's racecheck). What the two orders cannot show:
// a lost update of a non-atomic read-modify-write (a fiber is never interrupted between its read and its
// write), and order-dependence across blocks.
//
// Dynamic shared memory is one buffer per launch whose end (rounded up to 16 bytes) lies against an
// inaccessible page, so a read or write past it faults; it is filled with 0xFF bytes (NaN for floats) before
// every block so reads of never-written shared memory poison the result.
#pragma once
#if defined(__CUDACC__)
#error "host_emulation.h is for host-only builds"
#endif

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
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

// `bytes` (rounded up to 16) ending at an inaccessible page; 16-byte aligned. One mapping, reused while it
// is large enough.
class GuardedBuffer {
 public:
  GuardedBuffer() = default;
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;
  ~GuardedBuffer() { release(); }

  unsigned char* resize(size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t data = (bytes + 15) / 16 * 16;
    const size_t data_pages = (data + page - 1) / page * page;
    if (data_pages > data_capacity_ || map_ == nullptr) {
      release();
      void* map = mmap(nullptr, data_pages + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (map == MAP_FAILED) throw std::bad_alloc();
      map_ = static_cast<unsigned char*>(map);
      data_capacity_ = data_pages;
      if (mprotect(map_ + data_pages, page, PROT_NONE) != 0) {  // without the guard the check would be void
        release();
        throw std::bad_alloc();
      }
    }
    return map_ + data_capacity_ - data;
  }

 private:
  void release() {
    if (map_ != nullptr) munmap(map_, data_capacity_ + size_t(sysconf(_SC_PAGESIZE)));
    map_ = nullptr;
    data_capacity_ = 0;
  }
  unsigned char* map_ = nullptr;
  size_t data_capacity_ = 0;
};

// Launches run so far with each schedule (index 1: reverse), over all OS threads: tests check that a
// comparison of the two orders really ran both.
inline std::atomic<int64_t> launches_by_schedule[2];

struct LaunchState {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  int current = -1;
  const std::function<void()>* body = nullptr;
  GuardedBuffer smem;
  unsigned char* smem_data = nullptr;  // this launch's dynamic shared memory (in `smem`)
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

inline unsigned char* smem_base() { return state().smem_data; }

// Sets the order in which later launches on this OS thread run the threads of a block; returns the previous.
inline bool set_reverse_schedule(bool reverse) {
  const bool previous = state().reverse_schedule;
  state().reverse_schedule = reverse;
  return previous;
}

// Caps the grids the launchers ask for (max_grid_blocks in cuda_compat.cuh) in later launches on this OS
// thread, so that tests make the kernels' grid-stride loops (`blk += gridDim.x`, on the GPU only past 2^30
// blocks) run several rounds per block; returns the previous cap.
inline int64_t set_max_grid_blocks(int64_t blocks) {
  const int64_t previous = state().max_grid_blocks;
  state().max_grid_blocks = blocks;
  return previous;
}
inline int64_t max_grid_blocks() { return state().max_grid_blocks; }

// Resumes thread t of the block until it reaches a barrier or returns.
inline void run_thread(LaunchState& s, size_t t, dim3 block) {
  threadIdx = dim3(unsigned(t % block.x), unsigned(t / block.x % block.y), unsigned(t / (size_t(block.x) * block.y)));
  s.current = int(t);
  swapcontext(&s.scheduler, &s.fibers[t].ctx);
}

// Runs the lanes [t0, t1) of one warp until each waits at the block barrier or has returned (or the warp is
// stuck at a warp barrier some lanes cannot reach), releasing its warp barriers as they complete.
inline void run_warp(LaunchState& s, size_t t0, size_t t1, dim3 block) {
  for (;;) {
    bool progress = false;
    for (size_t i = 0; i < t1 - t0; ++i) {
      const size_t t = s.reverse_schedule ? t1 - 1 - i : t0 + i;
      const Fiber& f = s.fibers[t];
      if (f.done || f.waiting || f.warp_waiting) continue;
      run_thread(s, t, block);
      progress = true;
    }
    size_t live = 0, at_warp_barrier = 0;
    for (size_t t = t0; t < t1; ++t) {
      live += !s.fibers[t].done;
      at_warp_barrier += s.fibers[t].warp_waiting;
    }
    if (at_warp_barrier != 0 && at_warp_barrier == live) {
      for (size_t t = t0; t < t1; ++t) s.fibers[t].warp_waiting = false;
      progress = true;
    }
    if (!progress) return;
  }
}

// Runs `body` (the kernel call) for every thread of every block of the grid.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  LaunchState& s = state();
  const size_t nthreads = size_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    s.last_error = cudaErrorInvalidValue;
    return;
  }
  launches_by_schedule[s.reverse_schedule ? 1 : 0] += 1;
  if (s.fibers.size() < nthreads) s.fibers.resize(nthreads);
  for (auto& f : s.fibers)
    if (!f.stack) f.stack.reset(new char[kFiberStackBytes]);
  s.smem_data = s.smem.resize(smem_bytes);
  s.exchange.assign((nthreads + kWarpSize - 1) / kWarpSize * kWarpSize * kExchangeBytes, 0xFF);
  s.body = &body;
  blockDim = block;
  gridDim = grid;
  const size_t nwarps = (nthreads + kWarpSize - 1) / kWarpSize;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        std::memset(s.smem_data, 0xFF, smem_bytes);
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
          for (size_t i = 0; i < nwarps; ++i) {
            const size_t w = s.reverse_schedule ? nwarps - 1 - i : i;
            run_warp(s, w * kWarpSize, std::min(nthreads, (w + 1) * kWarpSize), block);
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
