// AVX2/FMA vectors of 8 fp32 or 4 fp64 lanes (one channel block). Functions carry the avx2,fma target
// attribute, so this header compiles without -mavx2; callers must check the CPU first (dispatch.cpp).
#pragma once
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define DWCONV_AVX2_FN __attribute__((target("avx2,fma"), always_inline)) inline

namespace dwconv::cpu::avx2 {

template <typename A> struct Vec;

template <>
struct Vec<float> {
  static constexpr int L = 8;
  using type = __m256;
  static DWCONV_AVX2_FN type zero() { return _mm256_setzero_ps(); }
  static DWCONV_AVX2_FN type load(const float* p) { return _mm256_loadu_ps(p); }
  static DWCONV_AVX2_FN void store(float* p, type a) { _mm256_storeu_ps(p, a); }
  static DWCONV_AVX2_FN type fma(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
};

template <>
struct Vec<double> {
  static constexpr int L = 4;
  using type = __m256d;
  static DWCONV_AVX2_FN type zero() { return _mm256_setzero_pd(); }
  static DWCONV_AVX2_FN type load(const double* p) { return _mm256_loadu_pd(p); }
  static DWCONV_AVX2_FN void store(double* p, type a) { _mm256_storeu_pd(p, a); }
  static DWCONV_AVX2_FN type fma(type a, type b, type c) { return _mm256_fmadd_pd(a, b, c); }
};

}  // namespace dwconv::cpu::avx2

#undef DWCONV_AVX2_FN
#endif
