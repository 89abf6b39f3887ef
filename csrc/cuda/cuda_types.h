// Element and accumulator types shared by the kernels and their callers, in each of the three ways this
// code is compiled:
//   nvcc (__CUDACC__)                       device kernels; fp16/bf16 are CUDA's __half / __nv_bfloat16
//   C++ with DWCONV_CUDA_HOST_EMULATION     kernels run on the CPU (host_emulation.h); bit-compatible structs
//   plain C++ (the torch binding)           only declarations; the same CUDA types as the kernels
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#elif defined(DWCONV_CUDA_HOST_EMULATION)
#include "host_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#endif

namespace dwconv {
namespace cuda {

#if defined(DWCONV_CUDA_HOST_EMULATION) && !defined(__CUDACC__)
struct fp16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };
#else
using fp16_t = __half;
using bf16_t = __nv_bfloat16;
#endif
static_assert(sizeof(fp16_t) == 2 && sizeof(bf16_t) == 2, "16-bit storage types");

// Accumulator: fp32 for fp32/fp16/bf16, fp64 for double. dw is stored in it.
template <typename T> struct AccT { using type = float; };
template <> struct AccT<double> { using type = double; };
template <typename T> using acc_t = typename AccT<T>::type;

}  // namespace cuda
}  // namespace dwconv
