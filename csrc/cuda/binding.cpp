// CUDA implementations of the native ops (schemas in csrc/ops.cpp): device guard, current stream, workspaces
// from the caching allocator (at::empty on the device); the checks and dispatch live in binding_common.h.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers the toolkit may lack.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "binding_common.h"

namespace dwconv {
namespace cuda {
namespace {

struct DeviceContext {
  explicit DeviceContext(const at::Tensor& t) : guard(t.device()), like(t) {}
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(like.device().index()).stream(); }
  at::Tensor workspace(size_t bytes) const { return at::empty({int64_t(bytes)}, like.options().dtype(at::kByte)); }
  c10::cuda::CUDAGuard guard;
  const at::Tensor& like;
};

std::string_view sv(c10::string_view s) { return {s.data(), s.size()}; }

void native_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view family,
                int64_t variant, at::Tensor y) {
  TORCH_CHECK(x.is_cuda(), "dwconv cuda: x must be a CUDA tensor, got ", x.device());
  const DeviceContext ctx(x);
  binding::fwd(at::kCUDA, ctx.stream(), [&](size_t b) { return ctx.workspace(b); }, x, weight, bias, stride, padding,
               dilation, sv(family), variant, y);
}

void native_dgrad(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view family, int64_t variant,
                  at::Tensor grad_x) {
  TORCH_CHECK(grad_out.is_cuda(), "dwconv cuda: grad_out must be a CUDA tensor, got ", grad_out.device());
  const DeviceContext ctx(grad_out);
  binding::dgrad(at::kCUDA, ctx.stream(), [&](size_t b) { return ctx.workspace(b); }, grad_out, weight, stride,
                 padding, dilation, sv(family), variant, grad_x);
}

void native_wgrad(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation, bool deterministic, c10::string_view family, int64_t variant,
                  at::Tensor grad_w) {
  TORCH_CHECK(grad_out.is_cuda(), "dwconv cuda: grad_out must be a CUDA tensor, got ", grad_out.device());
  const DeviceContext ctx(grad_out);
  binding::wgrad(at::kCUDA, ctx.stream(), [&](size_t b) { return ctx.workspace(b); }, grad_out, x, stride, padding,
                 dilation, deterministic, sv(family), variant, grad_w);
}

}  // namespace
}  // namespace cuda
}  // namespace dwconv

TORCH_LIBRARY_IMPL(dwconv, CUDA, m) {
  m.impl("native_fwd", &dwconv::cuda::native_fwd);
  m.impl("native_dgrad", &dwconv::cuda::native_dgrad);
  m.impl("native_wgrad", &dwconv::cuda::native_wgrad);
}
