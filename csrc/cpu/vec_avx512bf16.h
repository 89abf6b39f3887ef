// The avx512bf16 kernels' rounding to bf16: VCVTNEPS2BF16 in place of vec_avx512.h's integer sequence. The
// instruction rounds to nearest even and quiets NaNs as to_bf16 (kernels.h) does, but flushes denormal inputs
// to zero; a vector holding one takes the integer sequence, so the bits are to_bf16's for every value.
// Included by kernels_avx512bf16.cpp after vec_avx512.h: these hide the avx512 namespace's functions there.
#pragma once
#include <immintrin.h>

#include "cpu/vec_avx512.h"

namespace dwconv::cpu::avx512bf16 {

#define DWCONV_AVX512BF16_FN \
  __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"), always_inline)) inline

DWCONV_AVX512BF16_FN __m256i bf16_bits(__m512 a) {
  const __m512i u = _mm512_castps_si512(a);
  const __mmask16 denormal = _mm512_mask_test_epi32_mask(_mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000)), u,
                                                          _mm512_set1_epi32(0x007fffff));
  if (__builtin_expect(denormal != 0, 0)) return avx512::bf16_bits(a);
  return (__m256i)_mm512_cvtneps_pbh(a);
}

DWCONV_AVX512BF16_FN void store_bf16(bf16* p, __m512 a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_bits(a));
}

#undef DWCONV_AVX512BF16_FN

}  // namespace dwconv::cpu::avx512bf16
