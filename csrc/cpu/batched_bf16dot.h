// The batched small-map path (batched.h) for bf16 with vdpbf16ps (the avx512bf16 kernels only): pairs of
// adjacent filter columns, as the NCHW planes pair them (plane_avx512.h). run_batched builds the tile of R
// interleaved images as before, rewrites it as pairs of adjacent columns (tile_to_pairs, wgrad_bf16dot.h),
// and correlate_batched_dot runs each output pixel's inside taps two columns per instruction.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "cpu/microkernels.h"
#include "cpu/plan.h"

namespace dwconv::cpu::DWCONV_ISA {

// R images at one output pixel from a pairs tile: out[r] (= or +=) the sum over nkh filter rows and the nkw
// columns of each of x[kh * row_step + kw * col_step + r * 16] * w[kh * w_row_step + kw * 16], two columns per
// vdpbf16ps (wpair: (w[kw], w[kw + 1] or 0)); an odd last column multiplies the low halves only (wsingle:
// (w[kw], 0)), so a value past the inside taps never meets a weight.
template <int R>
DWCONV_TARGET void batch_block_dot(float* out, bool accumulate, const uint32_t* x, int64_t row_step, int64_t col_step,
                                   const uint32_t* wpair, const uint32_t* wsingle, int64_t w_row_step, int64_t nkh,
                                   int64_t nkw) {
  __m512 acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = accumulate ? _mm512_loadu_ps(out + r * 16) : _mm512_setzero_ps();
  const __m512i low_halves = _mm512_set1_epi32(0xffff);
  for (int64_t kh = 0; kh < nkh; ++kh, x += row_step, wpair += w_row_step, wsingle += w_row_step) {
    const uint32_t* xk = x;
    int64_t kw = 0;
    for (; kw + 1 < nkw; kw += 2, xk += 2 * col_step) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(wpair + kw * 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(xk + r * 16), wv);
    }
    if (kw < nkw) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(wsingle + kw * 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_and_si512(_mm512_loadu_si512(xk + r * 16), low_halves), wv);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * 16, acc[r]);
}

using BatchDotFn = void (*)(float*, bool, const uint32_t*, int64_t, int64_t, const uint32_t*, const uint32_t*, int64_t,
                            int64_t, int64_t);
inline constexpr BatchDotFn kBatchBlockDot[kMaxBlock + 1] = {
    nullptr, batch_block_dot<1>, batch_block_dot<2>, batch_block_dot<3>, batch_block_dot<4>,
    batch_block_dot<5>, batch_block_dot<6>, batch_block_dot<7>};

// The filter wt ([n][KH][KW][16] fp32 holding bf16 values) as pairs of adjacent columns: pair[...][kh][kw] =
// (wt[kh][kw], wt[kh][kw + 1] or 0 in the last column), single[...][kh][kw] = (wt[kh][kw], 0). The values are
// bf16's, so their high 16 bits are the bf16 bits.
DWCONV_TARGET inline void filter_column_pairs(uint32_t* pair, uint32_t* single, const float* wt, int64_t n, int64_t KH,
                                              int64_t KW) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t f = 0; f < n * KH; ++f)
    for (int64_t kw = 0; kw < KW; ++kw) {
      const int64_t at = (f * KW + kw) * 16;
      const __m512 lo = _mm512_loadu_ps(wt + at);
      _mm512_storeu_si512(pair + at, pairs_of_bf16_floats(lo, kw + 1 < KW ? _mm512_loadu_ps(wt + at + 16) : zero));
      _mm512_storeu_si512(single + at, _mm512_srli_epi32(_mm512_castps_si512(lo), 16));
    }
}

}  // namespace dwconv::cpu::DWCONV_ISA
