// AVX2/FMA vectors of 8 fp32 or 4 fp64 lanes (one channel block). Functions carry the avx2,fma target
// attribute, so this header compiles without -mavx2; callers must check the CPU first (dispatch.cpp).
#pragma once
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "cpu/kernels.h"

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
  static DWCONV_AVX2_FN type add(type a, type b) { return _mm256_add_ps(a, b); }
  static DWCONV_AVX2_FN type fma(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
};

template <>
struct Vec<double> {
  static constexpr int L = 4;
  using type = __m256d;
  static DWCONV_AVX2_FN type zero() { return _mm256_setzero_pd(); }
  static DWCONV_AVX2_FN type load(const double* p) { return _mm256_loadu_pd(p); }
  static DWCONV_AVX2_FN void store(double* p, type a) { _mm256_storeu_pd(p, a); }
  static DWCONV_AVX2_FN type add(type a, type b) { return _mm256_add_pd(a, b); }
  static DWCONV_AVX2_FN type fma(type a, type b, type c) { return _mm256_fmadd_pd(a, b, c); }
};

// p[i] = to_bf16(a[i]) for the 8 lanes, bit for bit (kernels.h: round to nearest even, NaN -> quiet NaN).
DWCONV_AVX2_FN void store_bf16(bf16* p, __m256 a) {
  const __m256i u = _mm256_castps_si256(a), hi = _mm256_srli_epi32(u, 16);
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i quiet = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);  // 8 x uint32 < 2^16: packing is exact
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

// p[i] = to_f16(a[i]) for the 8 lanes, bit for bit: the three cases of to_f16 (kernels.h) computed for every
// lane, then picked per lane.
DWCONV_AVX2_FN void store_f16(f16* p, __m256 a) {
  const __m256i u = _mm256_castps_si256(a), one = _mm256_set1_epi32(1);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000));
  const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7f800000));
  const __m256i huge = _mm256_blendv_epi8(_mm256_set1_epi32(0x7c00), _mm256_set1_epi32(0x7e00), nan);
  const __m256i tiny = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(mag), _mm256_set1_ps(0.5f))), _mm256_set1_epi32(0x3f000000));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(mag, 13), one);
  const __m256i normal =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(mag, _mm256_set1_epi32(int(0xc8000fffu))), odd), 13);
  const __m256i is_huge = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x477fffff));
  const __m256i is_tiny = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x38800000), mag);
  const __m256i r = _mm256_or_si256(
      sign, _mm256_blendv_epi8(_mm256_blendv_epi8(normal, tiny, is_tiny), huge, is_huge));  // < 2^16 per lane
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < L: transposes one L x L block.
template <typename A, int L>
DWCONV_AVX2_FN void transpose_block(A* dst, int64_t dst_stride, const A* src, int64_t src_stride);

template <>
DWCONV_AVX2_FN void transpose_block<float, 8>(float* dst, int64_t dst_stride, const float* src, int64_t src_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // 2x2 blocks of pairs
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  // r[0..3] hold columns {0,1,2,3} of rows 0-3 (low half) and columns {4..7} (high half); r[4..7] rows 4-7.
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

template <>
DWCONV_AVX2_FN void transpose_block<double, 4>(double* dst, int64_t dst_stride, const double* src,
                                                int64_t src_stride) {
  const __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + src_stride);
  const __m256d r2 = _mm256_loadu_pd(src + 2 * src_stride), r3 = _mm256_loadu_pd(src + 3 * src_stride);
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(dst + dst_stride, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(dst + 2 * dst_stride, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(dst + 3 * dst_stride, _mm256_permute2f128_pd(t1, t3, 0x31));
}

}  // namespace dwconv::cpu::avx2

#undef DWCONV_AVX2_FN
#endif
