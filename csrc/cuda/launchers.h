// Launchers of the CUDA kernels: raw pointers, the geometry (dwconv::ConvShape) and a stream; no torch.
// Each returns the launch status (cudaGetLastError after its last launch). Instantiated in fwd.cu,
// dgrad.cu and wgrad.cu for T = float, double, fp16_t, bf16_t (fp32 accumulation; fp64 for double).
#pragma once
#include <cstddef>

#include "../dwconv_params.h"
#include "cuda_types.h"

namespace dwconv {
namespace cuda {

// y = conv(x, w) + b (b may be null). x, y in s.layout; w contiguous (C*M, 1, KH, KW).
template <typename T>
cudaError_t launch_fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, cudaStream_t stream);

// dx = transposed conv(dy, w), every element written.
template <typename T>
cudaError_t launch_dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, cudaStream_t stream);

// Bytes of device workspace launch_wgrad needs (0 unless deterministic), for the same target_blocks.
template <typename T>
size_t wgrad_workspace_bytes(const ConvShape& s, bool deterministic, int64_t target_blocks);

// dw (accumulator type, contiguous (C*M, 1, KH, KW)) fully overwritten with sum over N, HO, WO of dy * x.
// deterministic: per-block partial sums into `workspace`, then a fixed-order sum (no atomics).
// target_blocks: how many blocks the batch is sliced for (0: the default, enough to fill a GPU).
template <typename T>
cudaError_t launch_wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, bool deterministic,
                         int64_t target_blocks, void* workspace, cudaStream_t stream);

// Tensor-core path (fwd_mma.cu): fp16 / bf16, stride 1, dilation 1, KH and KW up to 25 (dgrad: multiplier 1
// too), on sm_80+. *_supported says whether the launcher accepts the shape (false for float / double); the
// launchers return cudaErrorInvalidValue otherwise. Same contract as launch_fwd / launch_dgrad.
template <typename T>
bool fwd_mma_supported(const ConvShape& s);
template <typename T>
bool dgrad_mma_supported(const ConvShape& s);
template <typename T>
cudaError_t launch_fwd_mma(const ConvShape& s, const T* x, const T* w, const T* b, T* y, cudaStream_t stream);
template <typename T>
cudaError_t launch_dgrad_mma(const ConvShape& s, const T* dy, const T* w, T* dx, cudaStream_t stream);
// Launches of the tensor-core kernels since the library was loaded (lets tests see which path ran).
int64_t mma_launches();

}  // namespace cuda
}  // namespace dwconv
