// CPU implementations of the native ops (schemas in ../ops.cpp): checks inputs, packs a ConvShape and calls
// the raw-pointer kernels in kernels.h with torch's thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cpu/kernels.h"

namespace dwconv::cpu {
namespace {

const char* layout_name(Layout layout) { return layout == Layout::NCHW ? "NCHW" : "channels_last"; }

at::MemoryFormat memory_format(Layout layout) {
  return layout == Layout::NCHW ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
}

// The layout both tensors are dense in (NCHW preferred when both are, e.g. 1x1 maps).
Layout common_layout(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  if (a.is_contiguous() && b.is_contiguous()) return Layout::NCHW;
  if (a.is_contiguous(at::MemoryFormat::ChannelsLast) && b.is_contiguous(at::MemoryFormat::ChannelsLast))
    return Layout::NHWC;
  TORCH_CHECK(false, "dwconv cpu: ", a_name, " and ", b_name,
              " must both be NCHW-contiguous or both channels_last-contiguous; got strides ", a.strides(), " and ",
              b.strides());
}

void check_4d_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "dwconv cpu: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 4, "dwconv cpu: ", name, " must be 4-D, got ", t.dim(), "-D");
}

void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "dwconv cpu: ", name, " must be ", dtype, ", got ", t.scalar_type());
}

void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              "dwconv cpu: ", name, " must be float32, float64, bfloat16 or float16, got ", dt);
}

// Geometry from the input size (N, C, H, W), the weight size (C*M, 1, KH, KW) and the conv arguments;
// checks every argument and the expected output size (N, C*M, HO, WO).
ConvShape make_shape(at::IntArrayRef input, at::IntArrayRef weight, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, at::IntArrayRef output, Layout layout) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 4 && dilation.size() == 2,
              "dwconv cpu: expected stride[2], padding[4] (top, bottom, left, right), dilation[2]");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "dwconv cpu: stride must be positive, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "dwconv cpu: dilation must be positive, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
              "dwconv cpu: padding must be non-negative, got ", padding);
  TORCH_CHECK(weight.size() == 4 && weight[1] == 1 && weight[2] > 0 && weight[3] > 0,
              "dwconv cpu: weight must have shape (C*M, 1, KH, KW), got ", weight);
  ConvShape s{};
  s.N = input[0];
  s.C = input[1];
  s.H = input[2];
  s.W = input[3];
  TORCH_CHECK(s.C > 0, "dwconv cpu: input must have at least one channel");
  TORCH_CHECK(weight[0] > 0 && weight[0] % s.C == 0, "dwconv cpu: weight has ", weight[0],
              " output channels, not a positive multiple of the input's ", s.C, " channels");
  s.M = weight[0] / s.C;
  s.KH = weight[2];
  s.KW = weight[3];
  s.SH = stride[0];
  s.SW = stride[1];
  s.PT = padding[0];
  s.PL = padding[2];
  s.DH = dilation[0];
  s.DW = dilation[1];
  const int64_t span_h = s.DH * (s.KH - 1) + 1, span_w = s.DW * (s.KW - 1) + 1;
  const int64_t padded_h = s.H + padding[0] + padding[1], padded_w = s.W + padding[2] + padding[3];
  TORCH_CHECK(padded_h >= span_h && padded_w >= span_w, "dwconv cpu: kernel extent (", span_h, "x", span_w,
              " with dilation) is larger than the padded input (", padded_h, "x", padded_w, ")");
  s.HO = (padded_h - span_h) / s.SH + 1;
  s.WO = (padded_w - span_w) / s.SW + 1;
  s.layout = layout;
  const std::vector<int64_t> expected{s.N, s.CO(), s.HO, s.WO};
  TORCH_CHECK(output.vec() == expected, "dwconv cpu: output / grad_out must have size ", at::IntArrayRef(expected),
              ", got ", output);
  return s;
}

// The ISA a call names (the op's `family`) for data of `dtype`: "" for the best this CPU has; an unknown name,
// one this CPU cannot run, or one that does not run this dtype is an error. variant: reserved, must be 0.
Isa parse_family(c10::string_view family, int64_t variant, at::ScalarType dtype) {
  TORCH_CHECK(variant == 0, "dwconv cpu: the cpu kernels have no variants, got variant ", variant);
  const std::string_view name(family.data(), family.size());
  const bool bf16_data = dtype == at::kBFloat16;
  if (name.empty()) return best_isa(bf16_data);
  for (Isa isa : kIsasBestFirst) {
    if (name != isa_name(isa)) continue;
    TORCH_CHECK(isa_supported(isa), "dwconv cpu: this CPU cannot run the ", name, " kernels");
    TORCH_CHECK(bf16_data || !isa_bf16_only(isa), "dwconv cpu: the ", name, " kernels run bfloat16 only, got ",
                dtype);
    return isa;
  }
  TORCH_CHECK(false, "dwconv cpu: unknown kernel family '", std::string(name), "' (choose one of cpu_families())");
}

std::vector<std::string> cpu_families() {
  std::vector<std::string> names;
  for (Isa isa : kIsasBestFirst)
    if (isa_supported(isa)) names.emplace_back(isa_name(isa));
  return names;
}

template <typename T> const T* data(const at::Tensor& t) { return reinterpret_cast<const T*>(t.const_data_ptr()); }
template <typename T> T* mutable_data(at::Tensor& t) { return reinterpret_cast<T*>(t.mutable_data_ptr()); }

// Calls fn(tag) with a T* tag of the kernel element type matching `dtype` (bfloat16 -> bf16, float16 -> f16).
template <typename Fn>
void dispatch_dtype(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: return fn(static_cast<float*>(nullptr));
    case at::kDouble: return fn(static_cast<double*>(nullptr));
    case at::kBFloat16: return fn(static_cast<bf16*>(nullptr));
    case at::kHalf: return fn(static_cast<f16*>(nullptr));
    default: TORCH_CHECK(false, "dwconv cpu: unsupported dtype ", dtype);
  }
}

void native_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view family,
                int64_t variant, at::Tensor y) {
  const Isa isa = parse_family(family, variant, x.scalar_type());
  check_4d_cpu(x, "x");
  check_4d_cpu(weight, "weight");
  check_4d_cpu(y, "y");
  check_float_dtype(x, "x");
  check_dtype(weight, "weight", x.scalar_type());
  check_dtype(y, "y", x.scalar_type());
  TORCH_CHECK(weight.is_contiguous(), "dwconv cpu: weight must be contiguous");
  const Layout layout = common_layout(x, "x", y, "y");
  const ConvShape s = make_shape(x.sizes(), weight.sizes(), stride, padding, dilation, y.sizes(), layout);
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu(), "dwconv cpu: bias must be a CPU tensor");
    check_dtype(*bias, "bias", x.scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.CO() && bias->is_contiguous(),
                "dwconv cpu: bias must be contiguous of size (", s.CO(), "), got ", bias->sizes());
  }
  if (y.numel() == 0) return;
  dispatch_dtype(x.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    fwd<T>(s, data<T>(x), data<T>(weight), bias ? data<T>(*bias) : nullptr, mutable_data<T>(y),
           at::get_num_threads(), isa);
  });
}

void native_dgrad(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view family, int64_t variant,
                  at::Tensor grad_x) {
  const Isa isa = parse_family(family, variant, grad_out.scalar_type());
  check_4d_cpu(grad_out, "grad_out");
  check_4d_cpu(weight, "weight");
  check_4d_cpu(grad_x, "grad_x");
  check_float_dtype(grad_out, "grad_out");
  check_dtype(weight, "weight", grad_out.scalar_type());
  check_dtype(grad_x, "grad_x", grad_out.scalar_type());
  TORCH_CHECK(weight.is_contiguous(), "dwconv cpu: weight must be contiguous");
  const Layout layout = common_layout(grad_out, "grad_out", grad_x, "grad_x");
  const ConvShape s =
      make_shape(grad_x.sizes(), weight.sizes(), stride, padding, dilation, grad_out.sizes(), layout);
  if (grad_x.numel() == 0) return;
  dispatch_dtype(grad_out.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dgrad<T>(s, data<T>(grad_out), data<T>(weight), mutable_data<T>(grad_x), at::get_num_threads(), isa);
  });
}

void native_wgrad(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation, bool /*deterministic: always*/, c10::string_view family,
                  int64_t variant, at::Tensor grad_w) {
  const Isa isa = parse_family(family, variant, x.scalar_type());
  check_4d_cpu(grad_out, "grad_out");
  check_4d_cpu(x, "x");
  check_4d_cpu(grad_w, "grad_w");
  check_float_dtype(x, "x");
  check_dtype(grad_out, "grad_out", x.scalar_type());
  check_dtype(grad_w, "grad_w", x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  TORCH_CHECK(grad_w.is_contiguous(), "dwconv cpu: grad_w must be contiguous");
  const Layout layout = common_layout(x, "x", grad_out, "grad_out");
  const ConvShape s = make_shape(x.sizes(), grad_w.sizes(), stride, padding, dilation, grad_out.sizes(), layout);
  if (grad_w.numel() == 0) return;
  dispatch_dtype(x.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    wgrad<T>(s, data<T>(grad_out), data<T>(x), mutable_data<acc_t<T>>(grad_w), at::get_num_threads(), isa);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dwconv, CPU, m) {
  m.impl("native_fwd", &native_fwd);
  m.impl("native_dgrad", &native_dgrad);
  m.impl("native_wgrad", &native_wgrad);
}

// No tensor arguments: dispatched through the catch-all key.
TORCH_LIBRARY_IMPL(dwconv, CompositeExplicitAutograd, m) { m.impl("cpu_families", &cpu_families); }

}  // namespace dwconv::cpu
