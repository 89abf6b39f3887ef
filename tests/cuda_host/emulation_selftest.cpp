// Self-test of csrc/cuda/host_emulation.h: a barrier that must order shared-memory writes before reads,
// a divergent barrier and a misaligned 16-byte load, each of which the emulation must get right or reject;
// __syncthreads_or; and the host side of the warp mma (cuda_compat.cuh) against a plain matrix product.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "cuda/cuda_compat.cuh"

namespace {

using dwconv::cuda::dynamic_smem;

// Every thread publishes its index, then reads its right neighbour's; `racy` drops the barrier between the
// two (each thread's read races with its neighbour's write), `skew` puts a warp barrier before warp 0's
// writes (so warps reach the racing accesses after different numbers of warp barriers), `stray` makes
// thread 0 also read data[stray_index] (past one end of data, for the guard-page checks) and `stray_shared`
// the int just past the block's shared memory, `diverge` makes thread 0 skip the barrier, `misaligned`
// issues a 16-byte load from an address 4 bytes past alignment, `half_warp` makes lanes
// 0..15 of each warp wait at a warp barrier the other lanes never reach.
__global__ void neighbour_kernel(int* out, bool racy, bool skew, bool diverge, bool misaligned, bool half_warp,
                                 const float* data, bool stray, int64_t stray_index, bool stray_shared) {
  int* s = dynamic_smem<int>();
  if (skew && threadIdx.x < 32) dwconv_emu::syncwarp();
  s[threadIdx.x] = int(threadIdx.x);
  if (stray_shared && threadIdx.x == 0) {
    volatile int sink = s[blockDim.x];
    (void)sink;
  }
  if (stray && threadIdx.x == 0) {
    volatile float sink = data[stray_index];
    (void)sink;
  }
  if (misaligned && threadIdx.x == 0) {
    float tmp[4];
    dwconv::cuda::load16_acc(data + 1, tmp);
  }
  if (half_warp && threadIdx.x % 32 < 16) dwconv_emu::syncwarp();
  if (!racy && !(diverge && threadIdx.x == 0)) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// data: a float32 tensor with >= 8 elements, 16-byte aligned (as torch allocates). mode: 0 correct, 1 divergent
// barrier, 2 misaligned load, 3 half-warp barrier, 4 racy (no barrier), 5 reads data[numel], 6 reads data[-1],
// 7 racy between warps skewed by a warp barrier, 8 reads past the shared memory.
at::Tensor emulation_selftest(const at::Tensor& data, int64_t mode) {
  constexpr int kThreads = 64;
  TORCH_CHECK(data.scalar_type() == at::kFloat && data.numel() >= 8 && data.data_ptr<float>() != nullptr &&
                  reinterpret_cast<uintptr_t>(data.data_ptr<float>()) % 16 == 0,
              "emulation_selftest: data must be 8+ aligned float32 values");
  at::Tensor out = at::full({kThreads}, -7, at::kInt);
  auto kernel = neighbour_kernel;
  int* out_ptr = out.mutable_data_ptr<int>();
  const float* data_ptr = data.data_ptr<float>();
  DWCONV_LAUNCH(kernel, dim3(2), dim3(kThreads), kThreads * sizeof(int), nullptr, out_ptr, mode == 4 || mode == 7,
                mode == 7, mode == 1, mode == 2, mode == 3, data_ptr, mode == 5 || mode == 6,
                mode == 5 ? data.numel() : int64_t(-1), mode == 8);
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "emulated launch failed: ", cudaGetErrorString(err));
  return out;
}

// Three votes in a row per block: only thread `voter` of block `voter_block` votes 1 at the first, every
// thread at the second, none at the third (a result read after another thread's next vote would show).
__global__ void vote_kernel(int* out, int voter, int voter_block) {
  const int t = int(threadIdx.x), base = 3 * (int(blockIdx.x) * int(blockDim.x) + t);
  out[base] = __syncthreads_or(t == voter && int(blockIdx.x) == voter_block);
  out[base + 1] = __syncthreads_or(1);
  out[base + 2] = __syncthreads_or(0);
}

// out[3 (block * 64 + thread) + k]: the k-th vote's result in each thread of 2 blocks of 64 threads.
at::Tensor vote_selftest(int64_t voter, int64_t voter_block) {
  constexpr int kThreads = 64;
  at::Tensor out = at::full({2 * kThreads * 3}, -7, at::kInt);
  auto kernel = vote_kernel;
  int* out_ptr = out.mutable_data_ptr<int>();
  const int v = int(voter), vb = int(voter_block);
  DWCONV_LAUNCH(kernel, dim3(2), dim3(kThreads), 0, nullptr, out_ptr, v, vb);
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "emulated launch failed: ", cudaGetErrorString(err));
  return out;
}

// One warp: C(16x8) = A(16x16) * B(16x8) through load_a_chunk / load_b_frag / mma_16x8x16, each lane writing
// its accumulator fragment where cuda_compat.cuh documents it (rows g, g + 8; columns 2q, 2q + 1).
template <typename T>
__global__ void mma_kernel(const T* a, const T* b, float* c) {
  constexpr int ld = 24;  // padded rows, as the conv kernel's shared tiles
  T* s_a = dynamic_smem<T>();
  T* s_bt = s_a + 16 * ld;
  const int lane = int(threadIdx.x);
  for (int i = lane; i < 16 * 16; i += 32) s_a[i / 16 * ld + i % 16] = a[i];
  for (int i = lane; i < 16 * 8; i += 32) s_bt[i % 8 * ld + i / 8] = b[i];  // b[k][n] -> bt[n][k]
  __syncthreads();
  const int g = lane / 4, q = lane % 4;
  const dwconv::cuda::AChunk a0 = dwconv::cuda::load_a_chunk(s_a + g * ld, s_a + (g + 8) * ld);
  const dwconv::cuda::AChunk a8 = dwconv::cuda::load_a_chunk(s_a + g * ld + 8, s_a + (g + 8) * ld + 8);
  const dwconv::cuda::BFrag bf = dwconv::cuda::load_b_frag(s_bt, ld);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  dwconv::cuda::mma_16x8x16<T>(a0, a8, bf, acc);
  c[g * 8 + 2 * q] = acc[0];
  c[g * 8 + 2 * q + 1] = acc[1];
  c[(g + 8) * 8 + 2 * q] = acc[2];
  c[(g + 8) * 8 + 2 * q + 1] = acc[3];
}

// a: (16, 16), b: (16, 8), both contiguous float16 or bfloat16; returns the float32 product.
at::Tensor mma_selftest(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.sizes() == at::IntArrayRef({16, 16}) && b.sizes() == at::IntArrayRef({16, 8}) && a.is_contiguous() &&
                  b.is_contiguous() && a.scalar_type() == b.scalar_type(),
              "mma_selftest: a (16, 16) and b (16, 8), contiguous, one dtype");
  at::Tensor c = at::full({16, 8}, std::numeric_limits<float>::quiet_NaN(), at::kFloat);
  float* c_ptr = c.mutable_data_ptr<float>();
  const size_t smem = 2 * 16 * 24 * sizeof(uint16_t);
  if (a.scalar_type() == at::kHalf) {
    using T = dwconv::cuda::fp16_t;
    auto kernel = mma_kernel<T>;
    const T* a_ptr = reinterpret_cast<const T*>(a.const_data_ptr());
    const T* b_ptr = reinterpret_cast<const T*>(b.const_data_ptr());
    DWCONV_LAUNCH(kernel, dim3(1), dim3(32), smem, nullptr, a_ptr, b_ptr, c_ptr);
  } else {
    TORCH_CHECK(a.scalar_type() == at::kBFloat16, "mma_selftest: float16 or bfloat16");
    using T = dwconv::cuda::bf16_t;
    auto kernel = mma_kernel<T>;
    const T* a_ptr = reinterpret_cast<const T*>(a.const_data_ptr());
    const T* b_ptr = reinterpret_cast<const T*>(b.const_data_ptr());
    DWCONV_LAUNCH(kernel, dim3(1), dim3(32), smem, nullptr, a_ptr, b_ptr, c_ptr);
  }
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "emulated launch failed: ", cudaGetErrorString(err));
  return c;
}

// The block schedule of later emulated launches on this thread (reverse or index order); returns the previous.
bool set_reverse_schedule(bool reverse) { return dwconv_emu::set_reverse_schedule(reverse); }

// Emulated launches so far, over all OS threads, with the reverse (or the index-order) schedule.
int64_t emulated_launches(bool reverse) { return dwconv_emu::launches_by_schedule[reverse ? 1 : 0].load(); }

// The most blocks the kernels' launchers may ask for (grid-stride loops cover the rest); returns the previous.
int64_t set_max_grid_blocks(int64_t blocks) {
  TORCH_CHECK(blocks >= 1, "set_max_grid_blocks: at least one block, got ", blocks);
  return dwconv_emu::set_max_grid_blocks(blocks);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dwconv_cuda_host, m) {
  m.def("set_reverse_schedule(bool reverse) -> bool");
  m.def("set_max_grid_blocks(int blocks) -> int");
  m.def("emulated_launches(bool reverse) -> int");
  m.def("emulation_selftest(Tensor data, int mode) -> Tensor");
  m.def("mma_selftest(Tensor a, Tensor b) -> Tensor");
  m.def("vote_selftest(int voter, int voter_block) -> Tensor");
}

TORCH_LIBRARY_IMPL(dwconv_cuda_host, CPU, m) {
  m.impl("emulation_selftest", &emulation_selftest);
  m.impl("mma_selftest", &mma_selftest);
}

TORCH_LIBRARY_IMPL(dwconv_cuda_host, CompositeExplicitAutograd, m) {
  m.impl("vote_selftest", &vote_selftest);
  m.impl("set_reverse_schedule", &set_reverse_schedule);
  m.impl("set_max_grid_blocks", &set_max_grid_blocks);
  m.impl("emulated_launches", &emulated_launches);
}
