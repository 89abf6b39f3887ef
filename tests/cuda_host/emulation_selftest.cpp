// Self-test of csrc/cuda/host_emulation.h: a barrier that must order shared-memory writes before reads,
// a divergent barrier and a misaligned 16-byte load, each of which the emulation must get right or reject.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/cuda_compat.cuh"

namespace {

using dwconv::cuda::dynamic_smem;

// Every thread publishes its index, then reads its right neighbour's; `diverge` makes thread 0 skip the
// barrier, `misaligned` issues a 16-byte load from an address 4 bytes past alignment.
__global__ void neighbour_kernel(int* out, bool diverge, bool misaligned, const float* data) {
  int* s = dynamic_smem<int>();
  s[threadIdx.x] = int(threadIdx.x);
  if (misaligned && threadIdx.x == 0) {
    float tmp[4];
    dwconv::cuda::load16_acc(data + 1, tmp);
  }
  if (!(diverge && threadIdx.x == 0)) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// data: a float32 tensor with >= 8 elements, 16-byte aligned (as torch allocates).
at::Tensor emulation_selftest(const at::Tensor& data, int64_t mode) {
  constexpr int kThreads = 64;
  TORCH_CHECK(data.scalar_type() == at::kFloat && data.numel() >= 8 && data.data_ptr<float>() != nullptr &&
                  reinterpret_cast<uintptr_t>(data.data_ptr<float>()) % 16 == 0,
              "emulation_selftest: data must be 8+ aligned float32 values");
  at::Tensor out = at::full({kThreads}, -7, at::kInt);
  auto kernel = neighbour_kernel;
  int* out_ptr = out.mutable_data_ptr<int>();
  const float* data_ptr = data.data_ptr<float>();
  DWCONV_LAUNCH(kernel, dim3(2), dim3(kThreads), kThreads * sizeof(int), nullptr, out_ptr, mode == 1, mode == 2,
                data_ptr);
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "emulated launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dwconv_cuda_host, m) {
  m.def("emulation_selftest(Tensor data, int mode) -> Tensor");
}

TORCH_LIBRARY_IMPL(dwconv_cuda_host, CPU, m) { m.impl("emulation_selftest", &emulation_selftest); }
