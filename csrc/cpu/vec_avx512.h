// AVX-512 vectors of 16 fp32 or 8 fp64 lanes (one channel block). Functions carry the AVX-512 target
// attribute (F, BW, VL, DQ), so this header compiles without -mavx512f; callers must check the CPU first
// (dispatch.cpp).
#pragma once
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "cpu/kernels.h"

#define DWCONV_AVX512_FN __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"), always_inline)) inline

namespace dwconv::cpu::avx512 {

// Vector registers of the ISA (the register blocks of microkernels.h are sized for them).
constexpr int kVectorRegisters = 32;

template <typename A> struct Vec;

template <>
struct Vec<float> {
  static constexpr int L = 16;
  using type = __m512;
  static DWCONV_AVX512_FN type zero() { return _mm512_setzero_ps(); }
  static DWCONV_AVX512_FN type load(const float* p) { return _mm512_loadu_ps(p); }
  static DWCONV_AVX512_FN void store(float* p, type a) { _mm512_storeu_ps(p, a); }
  static DWCONV_AVX512_FN type add(type a, type b) { return _mm512_add_ps(a, b); }
  static DWCONV_AVX512_FN type fma(type a, type b, type c) { return _mm512_fmadd_ps(a, b, c); }
};

template <>
struct Vec<double> {
  static constexpr int L = 8;
  using type = __m512d;
  static DWCONV_AVX512_FN type zero() { return _mm512_setzero_pd(); }
  static DWCONV_AVX512_FN type load(const double* p) { return _mm512_loadu_pd(p); }
  static DWCONV_AVX512_FN void store(double* p, type a) { _mm512_storeu_pd(p, a); }
  static DWCONV_AVX512_FN type add(type a, type b) { return _mm512_add_pd(a, b); }
  static DWCONV_AVX512_FN type fma(type a, type b, type c) { return _mm512_fmadd_pd(a, b, c); }
};

// to_bf16(a[i]) for the 16 lanes as 16-bit values, bit for bit (kernels.h: round to nearest even, NaN -> quiet
// NaN). The avx512bf16 kernels use the instruction instead (vec_avx512bf16.h).
DWCONV_AVX512_FN __m256i bf16_bits(__m512 a) {
  const __m512i u = _mm512_castps_si512(a), hi = _mm512_srli_epi32(u, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1)));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i r = _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);  // 16 x uint32 < 2^16: exact
}

DWCONV_AVX512_FN void store_bf16(bf16* p, __m512 a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_bits(a));
}

// to_f16(a[i]) for the 16 lanes as 16-bit values, bit for bit: the three cases of to_f16 (kernels.h) computed
// for every lane, then picked per lane.
DWCONV_AVX512_FN __m256i f16_bits(__m512 a) {
  const __m512i u = _mm512_castps_si512(a), one = _mm512_set1_epi32(1);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000));
  const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(mag, _mm512_set1_epi32(0x7f800000));
  const __m512i huge = _mm512_mask_blend_epi32(nan, _mm512_set1_epi32(0x7c00), _mm512_set1_epi32(0x7e00));
  const __m512i tiny = _mm512_sub_epi32(
      _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(mag), _mm512_set1_ps(0.5f))), _mm512_set1_epi32(0x3f000000));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(mag, 13), one);
  const __m512i normal =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(mag, _mm512_set1_epi32(int(0xc8000fffu))), odd), 13);
  const __mmask16 is_huge = _mm512_cmpgt_epi32_mask(mag, _mm512_set1_epi32(0x477fffff));
  const __mmask16 is_tiny = _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(0x38800000), mag);
  const __m512i r = _mm512_or_si512(
      sign, _mm512_mask_blend_epi32(is_huge, _mm512_mask_blend_epi32(is_tiny, normal, tiny), huge));  // < 2^16
  return _mm512_cvtepi32_epi16(r);
}

DWCONV_AVX512_FN void store_f16(f16* p, __m512 a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), f16_bits(a));
}

// 16 pairs (a[i], b[i]) of 16-bit values, a[i] in the low half of 32-bit lane i: the operand layout of
// vdpbf16ps (AVX512_BF16), which multiplies pairs of bf16 and adds both products to an fp32 lane.
DWCONV_AVX512_FN __m512i interleave_pairs(__m256i a, __m256i b) {
  alignas(64) static constexpr uint16_t kIndex[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                      8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  return _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), _mm512_load_si512(kIndex), _mm512_castsi256_si512(b));
}

// The same pairs from two vectors of fp32 holding bf16 values (low 16 bits zero, so dropping them is exact).
DWCONV_AVX512_FN __m512i pairs_of_bf16_floats(__m512 a, __m512 b) {
  return _mm512_mask_blend_epi16(__mmask32(0xAAAAAAAAu), _mm512_srli_epi32(_mm512_castps_si512(a), 16),
                                 _mm512_castps_si512(b));
}

DWCONV_AVX512_FN __m512i pairs_of_bf16_floats(const float* a, const float* b) {
  return pairs_of_bf16_floats(_mm512_loadu_ps(a), _mm512_loadu_ps(b));
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < L: transposes one L x L block.
template <typename A, int L>
DWCONV_AVX512_FN void transpose_block(A* dst, int64_t dst_stride, const A* src, int64_t src_stride);

template <>
DWCONV_AVX512_FN void transpose_block<float, 16>(float* dst, int64_t dst_stride, const float* src,
                                                  int64_t src_stride) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 16; i += 2) {  // interleave row pairs (within each 128-bit lane)
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks: r[g + c], lane q = column 4q + c of rows g .. g + 3
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  // Output row 4q + c is lane q of r[c], r[4 + c], r[8 + c], r[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512 a01 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), b01 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    const __m512 a23 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE), b23 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    _mm512_storeu_ps(dst + c * dst_stride, _mm512_shuffle_f32x4(a01, b01, 0x88));
    _mm512_storeu_ps(dst + (4 + c) * dst_stride, _mm512_shuffle_f32x4(a01, b01, 0xDD));
    _mm512_storeu_ps(dst + (8 + c) * dst_stride, _mm512_shuffle_f32x4(a23, b23, 0x88));
    _mm512_storeu_ps(dst + (12 + c) * dst_stride, _mm512_shuffle_f32x4(a23, b23, 0xDD));
  }
}

template <>
DWCONV_AVX512_FN void transpose_block<double, 8>(double* dst, int64_t dst_stride, const double* src,
                                                  int64_t src_stride) {
  __m512d r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {  // t[2k + c], lane q = column 2q + c of rows 2k, 2k + 1
    t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
  }
  // Output row 2q + c is lane q of t[c], t[2 + c], t[4 + c], t[6 + c].
  for (int c = 0; c < 2; ++c) {
    const __m512d a01 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0x44), b01 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0x44);
    const __m512d a23 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0xEE), b23 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0xEE);
    _mm512_storeu_pd(dst + c * dst_stride, _mm512_shuffle_f64x2(a01, b01, 0x88));
    _mm512_storeu_pd(dst + (2 + c) * dst_stride, _mm512_shuffle_f64x2(a01, b01, 0xDD));
    _mm512_storeu_pd(dst + (4 + c) * dst_stride, _mm512_shuffle_f64x2(a23, b23, 0x88));
    _mm512_storeu_pd(dst + (6 + c) * dst_stride, _mm512_shuffle_f64x2(a23, b23, 0xDD));
  }
}

}  // namespace dwconv::cpu::avx512

#undef DWCONV_AVX512_FN
#endif
