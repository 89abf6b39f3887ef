// Argument checks, geometry and dtype dispatch of the native ops for the CUDA kernels, shared by the device
// binding (binding.cpp) and the host-emulation test binding (tests/cuda_host). Torch-facing; no CUDA
// runtime calls: the caller passes the stream and a workspace allocator.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <optional>
#include <string_view>
#include <vector>

#include "../dwconv_params.h"
#include "cuda_types.h"
#include "launchers.h"

namespace dwconv {
namespace cuda {
namespace binding {

inline constexpr int64_t kMaxGeometry = 1 << 16;  // kernel size, stride, dilation, padding (int math on device)

inline Layout common_layout(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  if (a.is_contiguous() && b.is_contiguous()) return Layout::NCHW;
  if (a.is_contiguous(at::MemoryFormat::ChannelsLast) && b.is_contiguous(at::MemoryFormat::ChannelsLast))
    return Layout::NHWC;
  TORCH_CHECK(false, "dwconv cuda: ", a_name, " and ", b_name,
              " must both be NCHW-contiguous or both channels_last-contiguous, got strides ", a.strides(), " and ",
              b.strides());
}

inline void check_tensor(const at::Tensor& t, const char* name, at::DeviceType device, int64_t dim) {
  TORCH_CHECK(t.defined(), "dwconv cuda: ", name, " is undefined");
  TORCH_CHECK(t.device().type() == device, "dwconv cuda: ", name, " must be a ", device, " tensor, got ", t.device());
  TORCH_CHECK(t.dim() == dim, "dwconv cuda: ", name, " must be ", dim, "-D, got ", t.dim(), "-D");
}

inline void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "dwconv cuda: ", name, " (", t.scalar_type(), ") and ", ref_name,
              " (", ref.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(t.device() == ref.device(), "dwconv cuda: ", name, " (", t.device(), ") and ", ref_name, " (",
              ref.device(), ") must be on the same device");
}

// Geometry from input size (N, C, H, W), weight (C*M, 1, KH, KW), stride, padding (t, b, l, r), dilation;
// checks that `output` has the conv's output size.
inline ConvShape make_shape(at::IntArrayRef input, at::IntArrayRef weight, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef output, Layout layout) {
  TORCH_CHECK(stride.size() == 2 && dilation.size() == 2 && padding.size() == 4,
              "dwconv cuda: stride and dilation need 2 values and padding 4 (top, bottom, left, right)");
  const int64_t C = input[1];
  TORCH_CHECK(C > 0 && weight[0] > 0 && weight[0] % C == 0 && weight[1] == 1,
              "dwconv cuda: weight must be (C*M, 1, KH, KW) for ", C, " input channels, got ", weight);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(stride[i] >= 1 && stride[i] < kMaxGeometry, "dwconv cuda: stride must be in [1, ", kMaxGeometry,
                "), got ", stride);
    TORCH_CHECK(dilation[i] >= 1 && dilation[i] < kMaxGeometry, "dwconv cuda: dilation must be in [1, ",
                kMaxGeometry, "), got ", dilation);
    TORCH_CHECK(weight[2 + i] >= 1 && weight[2 + i] < kMaxGeometry, "dwconv cuda: kernel size must be in [1, ",
                kMaxGeometry, "), got ", weight.slice(2));
  }
  for (int64_t p : padding)
    TORCH_CHECK(p >= 0 && p < kMaxGeometry, "dwconv cuda: padding must be in [0, ", kMaxGeometry, "), got ", padding);
  ConvShape s{};
  s.N = input[0]; s.C = C; s.H = input[2]; s.W = input[3];
  s.M = weight[0] / C;
  s.KH = weight[2]; s.KW = weight[3];
  s.SH = stride[0]; s.SW = stride[1];
  s.PT = padding[0]; s.PL = padding[2];
  s.DH = dilation[0]; s.DW = dilation[1];
  s.layout = layout;
  const int64_t span_h = s.H + padding[0] + padding[1] - s.DH * (s.KH - 1) - 1;
  const int64_t span_w = s.W + padding[2] + padding[3] - s.DW * (s.KW - 1) - 1;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, "dwconv cuda: the dilated kernel (", s.DH * (s.KH - 1) + 1, "x",
              s.DW * (s.KW - 1) + 1, ") is larger than the padded input (", s.H + padding[0] + padding[1], "x",
              s.W + padding[2] + padding[3], ")");
  s.HO = span_h / s.SH + 1;
  s.WO = span_w / s.SW + 1;
  const std::vector<int64_t> expected{s.N, s.CO(), s.HO, s.WO};
  TORCH_CHECK(output.vec() == expected, "dwconv cuda: output / grad_out must have size ", at::IntArrayRef(expected),
              ", got ", output);
  return s;
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "dwconv cuda: ", what, " kernel launch failed: ", cudaGetErrorString(err));
}

// Calls f(T{}) with T the kernel storage type of `dtype`.
template <typename F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kHalf: return f(fp16_t{});
    case at::kBFloat16: return f(bf16_t{});
    default: TORCH_CHECK(false, "dwconv cuda: unsupported dtype ", dtype, " (float32, float64, float16, bfloat16)");
  }
}

// The kernel families of the cuda backend (the `family` argument of the native ops): "fma" (the tiled FMA
// kernels, every call) and "mma" (fwd_mma.cu: tensor cores, fp16 / bf16 forward and stride-1 dgrad where
// *_mma_supported). "" means "fma". A family that cannot run the call is an error, never a silent fallback.
enum class Family { Fma, Mma };

inline Family parse_family(std::string_view family, const char* op) {
  if (family.empty() || family == "fma") return Family::Fma;
  if (family == "mma") return Family::Mma;
  TORCH_CHECK(false, "dwconv cuda: unknown kernel family '", std::string(family), "' for ", op,
              " (choose fma or mma)");
}

inline void check_no_variant(int64_t variant, const char* op) {
  TORCH_CHECK(variant == 0, "dwconv cuda: ", op, " has no variants, got variant ", variant);
}

template <typename T> const T* data(const at::Tensor& t) { return reinterpret_cast<const T*>(t.const_data_ptr()); }
template <typename T> T* mutable_data(const at::Tensor& t) { return reinterpret_cast<T*>(t.mutable_data_ptr()); }

// The three native ops; `stream` is where kernels run, `workspace(bytes)` returns a byte tensor on x's device.
template <typename Workspace>
void fwd(at::DeviceType device, cudaStream_t stream, Workspace&&, const at::Tensor& x, const at::Tensor& weight,
         const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
         at::IntArrayRef dilation, std::string_view family, int64_t variant, const at::Tensor& y) {
  check_tensor(x, "x", device, 4);
  check_tensor(weight, "weight", device, 4);
  check_tensor(y, "y", device, 4);
  check_same(weight, "weight", x, "x");
  check_same(y, "y", x, "x");
  TORCH_CHECK(weight.is_contiguous(), "dwconv cuda: weight must be contiguous");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_tensor(*bias, "bias", device, 1);
    check_same(*bias, "bias", x, "x");
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == weight.size(0), "dwconv cuda: bias must be contiguous (",
                weight.size(0), ",), got ", bias->sizes());
  }
  const ConvShape s = make_shape(x.sizes(), weight.sizes(), stride, padding, dilation, y.sizes(),
                                 common_layout(x, "x", y, "y"));
  const Family fam = parse_family(family, "forward");
  check_no_variant(variant, "forward");
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    TORCH_CHECK(fam != Family::Mma || fwd_mma_supported<T>(s), "dwconv cuda: the mma forward does not support "
                "this call (fp16/bf16, stride 1, dilation 1, kernel up to 25x25)");
    if (y.numel() == 0) return;
    const T* b = has_bias ? data<T>(*bias) : nullptr;
    if (fam == Family::Mma)
      check_launch(launch_fwd_mma<T>(s, data<T>(x), data<T>(weight), b, mutable_data<T>(y), stream), "forward (mma)");
    else
      check_launch(launch_fwd<T>(s, data<T>(x), data<T>(weight), b, mutable_data<T>(y), stream), "forward");
  });
}

template <typename Workspace>
void dgrad(at::DeviceType device, cudaStream_t stream, Workspace&&, const at::Tensor& grad_out,
           const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
           std::string_view family, int64_t variant, const at::Tensor& grad_x) {
  check_tensor(grad_out, "grad_out", device, 4);
  check_tensor(weight, "weight", device, 4);
  check_tensor(grad_x, "grad_x", device, 4);
  check_same(weight, "weight", grad_out, "grad_out");
  check_same(grad_x, "grad_x", grad_out, "grad_out");
  TORCH_CHECK(weight.is_contiguous(), "dwconv cuda: weight must be contiguous");
  const ConvShape s = make_shape(grad_x.sizes(), weight.sizes(), stride, padding, dilation, grad_out.sizes(),
                                 common_layout(grad_out, "grad_out", grad_x, "grad_x"));
  const Family fam = parse_family(family, "dgrad");
  check_no_variant(variant, "dgrad");
  dispatch_dtype(grad_out.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    TORCH_CHECK(fam != Family::Mma || dgrad_mma_supported<T>(s), "dwconv cuda: the mma dgrad does not support "
                "this call (fp16/bf16, stride 1, dilation 1, multiplier 1, kernel up to 25x25)");
    if (grad_x.numel() == 0) return;
    if (fam == Family::Mma)
      check_launch(launch_dgrad_mma<T>(s, data<T>(grad_out), data<T>(weight), mutable_data<T>(grad_x), stream),
                   "dgrad (mma)");
    else
      check_launch(launch_dgrad<T>(s, data<T>(grad_out), data<T>(weight), mutable_data<T>(grad_x), stream), "dgrad");
  });
}

template <typename Workspace>
void wgrad(at::DeviceType device, cudaStream_t stream, Workspace&& workspace, const at::Tensor& grad_out,
           const at::Tensor& x, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
           bool deterministic, std::string_view family, int64_t variant, const at::Tensor& grad_w) {
  check_tensor(grad_out, "grad_out", device, 4);
  check_tensor(x, "x", device, 4);
  check_tensor(grad_w, "grad_w", device, 4);
  check_same(x, "x", grad_out, "grad_out");
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(grad_w.scalar_type() == acc, "dwconv cuda: grad_w must be ", acc, " for ", x.scalar_type(),
              " inputs, got ", grad_w.scalar_type());
  TORCH_CHECK(grad_w.device() == x.device(), "dwconv cuda: grad_w must be on ", x.device());
  TORCH_CHECK(grad_w.is_contiguous(), "dwconv cuda: grad_w must be contiguous");
  const ConvShape s = make_shape(x.sizes(), grad_w.sizes(), stride, padding, dilation, grad_out.sizes(),
                                 common_layout(grad_out, "grad_out", x, "x"));
  TORCH_CHECK(parse_family(family, "wgrad") == Family::Fma, "dwconv cuda: wgrad has no mma kernels");
  TORCH_CHECK(variant >= 0, "dwconv cuda: wgrad variant (target block count) must be >= 0, got ", variant);
  if (grad_w.numel() == 0) return;
  if (grad_out.numel() == 0) {
    grad_w.zero_();
    return;
  }
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const size_t bytes = wgrad_workspace_bytes<T>(s, deterministic, variant);
    at::Tensor ws = bytes > 0 ? workspace(bytes) : at::Tensor();
    check_launch(launch_wgrad<T>(s, data<T>(grad_out), data<T>(x), mutable_data<acc_t<T>>(grad_w), deterministic,
                                 variant, bytes > 0 ? ws.mutable_data_ptr() : nullptr, stream), "wgrad");
  });
}

}  // namespace binding
}  // namespace cuda
}  // namespace dwconv
