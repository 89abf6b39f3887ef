// CPU kernels of the depthwise convolution: plain C++ over raw pointers (no torch headers).
// Memory layouts and index math: see ../dwconv_params.h. Every kernel runs an OpenMP region with
// `threads` threads and fully overwrites its output.
#pragma once
#include <cstdint>
#include <cstring>

#include "dwconv_params.h"

namespace dwconv::cpu {

// bfloat16 storage (bit-compatible with c10::BFloat16); arithmetic happens in fp32.
struct bf16 {
  uint16_t bits;
};

inline float to_float(bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even; NaN stays a (quiet) NaN.
inline bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

// Accumulation type: fp32 for fp32/bf16, fp64 for fp64.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

// y = conv(x, w) + b (b may be null). x, y in s.layout; w contiguous (C*M, 1, KH, KW).
template <typename T>
void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads);

// dx = d(loss)/dx given dy = d(loss)/dy. dy, dx in s.layout.
template <typename T>
void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads);

// dw = d(loss)/dw (contiguous (C*M, 1, KH, KW), accumulation dtype). Deterministic and independent of
// the thread count: partial sums over fixed chunks, reduced in a fixed order.
template <typename T>
void wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, int threads);

}  // namespace dwconv::cpu
