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

// IEEE binary16 storage (bit-compatible with c10::Half); arithmetic happens in fp32.
struct f16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float to_float(f16 v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16, exp = (v.bits >> 10) & 0x1fu, mant = v.bits & 0x3ffu;
  if (exp == 0) return bits_to_float(sign) + (sign ? -1.f : 1.f) * float(mant) * 0x1p-24f;  // zero, subnormal
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));                     // inf, NaN
  return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
}

// Round to nearest even; overflow gives inf, NaN stays a (quiet) NaN.
inline f16 to_f16(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u >= 0x47800000u) return f16{uint16_t(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u))};  // >= 2^16, inf, NaN
  if (u < 0x38800000u) {  // below 2^-14: a subnormal half; adding 0.5 lets the FPU round the mantissa
    const uint32_t r = float_to_bits(bits_to_float(u) + 0.5f) - 0x3f000000u;
    return f16{uint16_t(sign | r)};
  }
  const uint32_t mant_odd = (u >> 13) & 1u;
  u += 0xc8000fffu + mant_odd;  // rebias the exponent (-112 << 23) and round to nearest even
  return f16{uint16_t(sign | (u >> 13))};
}

// Accumulation type: fp32 for fp32/bf16/fp16, fp64 for fp64.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

// The instruction sets the kernels are built for (dispatch.cpp): run-time choice, by the CPU's features.
// Avx512Bf16 is Avx512 with vdpbf16ps for bf16 data; it runs bf16 only.
enum class Isa : int { Portable, Avx2, Avx512, Avx512Bf16 };
inline constexpr Isa kIsasBestFirst[] = {Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable};
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);                 // the CPU can run it (and it was built)
inline bool isa_bf16_only(Isa isa) { return isa == Isa::Avx512Bf16; }
Isa best_isa(bool bf16);                     // the fastest supported one for bf16 data or for the others

// y = conv(x, w) + b (b may be null). x, y in s.layout; w contiguous (C*M, 1, KH, KW).
template <typename T>
void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads, Isa isa);

// dx = d(loss)/dx given dy = d(loss)/dy. dy, dx in s.layout.
template <typename T>
void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads, Isa isa);

// dw = d(loss)/dw (contiguous (C*M, 1, KH, KW), accumulation dtype). Deterministic and independent of
// the thread count: partial sums over fixed chunks, reduced in a fixed order.
template <typename T>
void wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, int threads, Isa isa);

}  // namespace dwconv::cpu
