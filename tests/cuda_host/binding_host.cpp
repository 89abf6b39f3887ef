// Registers the host-emulated CUDA kernels (csrc/cuda/*.cu compiled as C++) as CPU implementations of the
// native ops in a separate namespace, `dwconv_cuda_host`, so tests can run the CUDA kernels' code without a
// GPU. Shares every check and the dtype dispatch with the device binding (csrc/cuda/binding_common.h).
#include "cuda/binding_common.h"

namespace {

using dwconv::cuda::binding::fwd;
using dwconv::cuda::binding::dgrad;
using dwconv::cuda::binding::wgrad;

std::string_view sv(c10::string_view s) { return {s.data(), s.size()}; }

at::Tensor host_workspace(size_t bytes) { return at::empty({int64_t(bytes)}, at::TensorOptions(at::kByte)); }

void native_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view family, int64_t variant,
                at::Tensor y) {
  fwd(at::kCPU, nullptr, host_workspace, x, weight, bias, stride, padding, dilation, sv(family), variant, y);
}

void native_dgrad(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view family, int64_t variant,
                  at::Tensor grad_x) {
  dgrad(at::kCPU, nullptr, host_workspace, grad_out, weight, stride, padding, dilation, sv(family), variant, grad_x);
}

void native_wgrad(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation, bool deterministic, c10::string_view family, int64_t variant,
                  at::Tensor grad_w) {
  wgrad(at::kCPU, nullptr, host_workspace, grad_out, x, stride, padding, dilation, deterministic, sv(family), variant,
        grad_w);
}

int64_t mma_launches() { return dwconv::cuda::mma_launches(); }

}  // namespace

// Same schemas as csrc/ops.cpp's dwconv::native_*.
TORCH_LIBRARY(dwconv_cuda_host, m) {
  m.def("native_fwd(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, str family, int variant, Tensor(a!) y) -> ()");
  m.def("native_dgrad(Tensor grad_out, Tensor weight, int[2] stride, int[4] padding, int[2] dilation, str family, int variant, Tensor(a!) grad_x) -> ()");
  m.def("native_wgrad(Tensor grad_out, Tensor x, int[2] stride, int[4] padding, int[2] dilation, bool deterministic, str family, int variant, Tensor(a!) grad_w) -> ()");
  m.def("mma_launches() -> int");  // launches of the tensor-core kernels so far (family "mma")
}

TORCH_LIBRARY_IMPL(dwconv_cuda_host, CPU, m) {
  m.impl("native_fwd", &native_fwd);
  m.impl("native_dgrad", &native_dgrad);
  m.impl("native_wgrad", &native_wgrad);
}

// No tensor arguments: dispatched through the catch-all key.
TORCH_LIBRARY_IMPL(dwconv_cuda_host, CompositeExplicitAutograd, m) { m.impl("mma_launches", &mma_launches); }
