// wgrad for bf16 with vdpbf16ps (the avx512bf16 kernels only; conv_ops.h's wgrad calls it at unit stride and
// dilation along W). The channel-blocked fp32 tiles of a band are rewritten as tiles of pairs along W, element
// c holding the values at columns c and c + 1, so one instruction adds the products of two consecutive outputs
// (ow, ow + 1) for a tap: dw[q] += x[ow + q] * dy[ow] + x[ow + 1 + q] * dy[ow + 1].
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/microkernels.h"
#include "cpu/tile.h"

namespace dwconv::cpu::DWCONV_ISA {

// dst[i][c][v] = (src[i][c][v], src[i][c + 1][v] or 0 past the row) as bf16 pairs, for rows x cols pixels of
// `vectors` x 16 lanes (1: the channel-blocked tiles; R: the batched path's R interleaved images); src holds
// bf16 values in fp32 (the tiles gather_tile wrote).
DWCONV_TARGET inline void tile_to_pairs(uint32_t* dst, const float* src, int64_t rows, int64_t cols, int vectors = 1) {
  alignas(64) static const float kZero[16] = {};
  const int64_t pix = int64_t(vectors) * 16;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c)
      for (int v = 0; v < vectors; ++v) {
        const int64_t at = (i * cols + c) * pix + v * 16;
        _mm512_storeu_si512(dst + at, pairs_of_bf16_floats(src + at, c + 1 < cols ? src + at + pix : kZero));
      }
}

// What gather_tile and tile_to_pairs make of a channels_last band whose 16 lanes are channels chan0 .. chan0 + 15
// of the image, in one pass from the bf16 pixels: dst[r][c] = pairs (v(r, c), v(r, c + 1) or 0 past the last
// column), v(r, c) = src[chan0 + l, r0 + r, c0 + c] or 0 outside the image.
DWCONV_TARGET inline void gather_pairs_nhwc(uint32_t* dst, int64_t rows, int64_t cols, const ImageView<const bf16>& src,
                                            int64_t chan0, int64_t r0, int64_t c0) {
  const int64_t c_begin = std::clamp<int64_t>(-c0, 0, cols), c_end = std::clamp<int64_t>(src.W - c0, c_begin, cols);
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* d = dst + r * cols * 16;
    const int64_t u = r0 + r;
    if (u < 0 || u >= src.H || c_begin == c_end) {
      std::memset(d, 0, sizeof(uint32_t) * cols * 16);
      continue;
    }
    const bf16* row = src.row(u) + chan0;  // pixel v of the row at row + v * src.C
    __m256i cur = c_begin == 0 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c0 * src.C)) : zero;
    for (int64_t c = 0; c < cols; ++c) {
      // zero outside the image, and past the last column (c + 1 >= c_end there)
      const __m256i next = c + 1 >= c_begin && c + 1 < c_end
                               ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + (c0 + c + 1) * src.C))
                               : zero;
      _mm512_storeu_si512(d + c * 16, interleave_pairs(cur, next));
      cur = next;
    }
  }
}

// The tile rows of an NCHW band from its pixels ([band row][column][16] words, W columns a row, the band's rows
// r_lo .. r_hi - 1 of the tile): tile columns c_begin .. c_end - 1 hold source columns c0 + c, the rest and the
// rows outside are zero.
inline void place_pixel_rows(uint32_t* dst, int64_t rows, int64_t cols, const float* pixels, int64_t W, int64_t r_lo,
                             int64_t r_hi, int64_t c0, int64_t c_begin, int64_t c_end) {
  constexpr int L = 16;
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* trow = dst + r * cols * L;
    if (r < r_lo || r >= r_hi || c_begin == c_end) {
      std::memset(trow, 0, sizeof(uint32_t) * cols * L);
      continue;
    }
    std::memset(trow, 0, sizeof(uint32_t) * c_begin * L);
    std::memset(trow + c_end * L, 0, sizeof(uint32_t) * (cols - c_end) * L);
    std::memcpy(trow + c_begin * L, pixels + ((r - r_lo) * W + c0 + c_begin) * L, sizeof(uint32_t) * (c_end - c_begin) * L);
  }
}

// out[k] = word k of every r[l] (lane l): a 16 x 16 transpose of 16-bit words.
DWCONV_TARGET inline void transpose_words_16x16(const __m256i* r, __m256i* out) {
  __m256i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[i] = _mm256_unpacklo_epi16(r[2 * i], r[2 * i + 1]);  // words 0-3 (and 8-11) of rows 2i, 2i + 1 interleaved
    t[i + 8] = _mm256_unpackhi_epi16(r[2 * i], r[2 * i + 1]);  // words 4-7 (12-15)
  }
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 4; ++j) {  // u[4g .. 4g + 3]: words 2g, 2g + 1 (and 2g + 8, 2g + 9) of rows 4j .. 4j + 3
      u[8 * h + j] = _mm256_unpacklo_epi32(t[8 * h + 2 * j], t[8 * h + 2 * j + 1]);
      u[8 * h + j + 4] = _mm256_unpackhi_epi32(t[8 * h + 2 * j], t[8 * h + 2 * j + 1]);
    }
  for (int g = 0; g < 4; ++g) {
    const __m256i lo_a = _mm256_unpacklo_epi64(u[4 * g], u[4 * g + 1]);
    const __m256i lo_b = _mm256_unpackhi_epi64(u[4 * g], u[4 * g + 1]);
    const __m256i hi_a = _mm256_unpacklo_epi64(u[4 * g + 2], u[4 * g + 3]);
    const __m256i hi_b = _mm256_unpackhi_epi64(u[4 * g + 2], u[4 * g + 3]);
    out[2 * g] = _mm256_permute2x128_si256(lo_a, hi_a, 0x20);
    out[2 * g + 8] = _mm256_permute2x128_si256(lo_a, hi_a, 0x31);
    out[2 * g + 1] = _mm256_permute2x128_si256(lo_b, hi_b, 0x20);
    out[2 * g + 9] = _mm256_permute2x128_si256(lo_b, hi_b, 0x31);
  }
}

// The same for an NCHW band whose 16 lanes are the planes chan[l] (all of them in the image), a tile row per source
// row: 16 source columns of the 16 planes at a time are loaded (one masked load per plane), transposed as 16-bit
// words (transpose_words_16x16) into columns of 16 lanes, and neighbouring columns paired (interleave_pairs). The
// column left of the image pairs a zero with the row's first pixel.
DWCONV_TARGET inline void gather_pairs_nchw_rows(uint32_t* dst, int64_t rows, int64_t cols,
                                                 const ImageView<const bf16>& src, const int64_t* chan, int64_t r0,
                                                 int64_t c0) {
  constexpr int L = 16;
  const int64_t c_begin = std::clamp<int64_t>(-c0, 0, cols), c_end = std::clamp<int64_t>(src.W - c0, c_begin, cols);
  const int64_t first = std::max<int64_t>(0, c_begin - 1);  // the tile columns written: first .. c_end - 1
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* trow = dst + r * cols * L;
    const int64_t u = r0 + r;
    if (u < 0 || u >= src.H || c_begin == c_end) {
      std::memset(trow, 0, sizeof(uint32_t) * cols * L);
      continue;
    }
    std::memset(trow, 0, sizeof(uint32_t) * first * L);
    std::memset(trow + c_end * L, 0, sizeof(uint32_t) * (cols - c_end) * L);
    const bf16* plane_row[L];
    for (int l = 0; l < L; ++l) plane_row[l] = src.row(u) + chan[l] * src.channel_step() + c0;
    __m256i prev = zero;  // the column before the chunk (zero left of the image)
    for (int64_t c = c_begin; c < c_end; c += L) {
      const int count = int(std::min<int64_t>(L, c_end - c));
      const __mmask16 m = __mmask16((1u << count) - 1);
      __m256i words[L], col[L];
      for (int l = 0; l < L; ++l) {  // (16 streams, too many for the hardware prefetchers: 4-12 % at 28-32 columns)
        __builtin_prefetch(plane_row[l] + c + 2 * src.W, 0, 3);
        words[l] = _mm256_maskz_loadu_epi16(m, plane_row[l] + c);
      }
      transpose_words_16x16(words, col);
      if (c > 0) _mm512_storeu_si512(trow + (c - 1) * L, interleave_pairs(prev, col[0]));
      for (int k = 0; k + 1 < count; ++k) _mm512_storeu_si512(trow + (c + k) * L, interleave_pairs(col[k], col[k + 1]));
      prev = col[count - 1];
    }
    _mm512_storeu_si512(trow + (c_end - 1) * L, interleave_pairs(prev, zero));  // nothing after the last column
  }
}

// The same for bands whose tile rows span their source rows (c0 <= 0 and c0 + cols >= W) and rows narrower than 16
// columns: 16 consecutive pixels of the band (a plane's band rows are contiguous) of the 16 planes at a time,
// transposed as 16-bit words, each pixel paired with the next one unless it ends its row, and stored at its place
// in the tile; the column left of the image pairs a zero with each row's first pixel. Tile pixels px_step words
// apart (the batched path's tiles interleave R images: R * 16).
DWCONV_TARGET inline void gather_pairs_nchw_pixels(uint32_t* dst, int64_t rows, int64_t cols,
                                                   const ImageView<const bf16>& src, const int64_t* chan, int64_t r0,
                                                   int64_t c0, int64_t px_step = 16) {
  constexpr int L = 16;
  const int64_t W = src.W, c_begin = -c0, c_end = W - c0;
  const int64_t r_lo = std::clamp<int64_t>(-r0, 0, rows), r_hi = std::clamp<int64_t>(src.H - r0, r_lo, rows);
  const int64_t first = std::max<int64_t>(0, c_begin - 1);  // the tile columns written in a row: first .. c_end - 1
  const __m512i zero16 = _mm512_setzero_si512();
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* trow = dst + r * cols * px_step;
    const bool inside = r >= r_lo && r < r_hi;
    for (int64_t c = 0; c < cols; ++c)
      if (!inside || c < first || c >= c_end) _mm512_storeu_si512(trow + c * px_step, zero16);
  }
  const int64_t n = (r_hi - r_lo) * W;
  if (n == 0) return;
  const bf16* plane[L];
  for (int l = 0; l < L; ++l) plane[l] = src.row(r0 + r_lo) + chan[l] * src.channel_step();
  uint32_t* const band = dst + r_lo * cols * px_step;
  const auto at = [&](int64_t y, int64_t x) { return band + (y * cols + x + c_begin) * px_step; };  // pixel (y, x)
  __m256i prev = zero;  // pixel j - 1, whose pair waits for pixel j
  for (int64_t j = 0; j < n; j += L) {
    const int count = int(std::min<int64_t>(L, n - j));
    const __mmask16 m = __mmask16((1u << count) - 1);
    __m256i words[L], px[L + 1];
    for (int l = 0; l < L; ++l) {  // (16 streams: prefetched two lines ahead, else slower than plane by plane)
      __builtin_prefetch(plane[l] + j + 64, 0, 3);
      words[l] = _mm256_maskz_loadu_epi16(m, plane[l] + j);
    }
    transpose_words_16x16(words, px);
    px[L] = zero;
    int64_t y = j / W, x = j - y * W;  // pixel j's place
    if (j > 0)
      _mm512_storeu_si512(x == 0 ? at(y - 1, W - 1) : at(y, x - 1), interleave_pairs(prev, x == 0 ? zero : px[0]));
    uint32_t* t = at(y, x);
    for (int k = 0; k < count; ++k, ++x, t += px_step) {
      if (x == W) {
        x = 0;
        t = at(++y, 0);
      }
      if (x == 0 && c_begin > 0) _mm512_storeu_si512(t - px_step, interleave_pairs(zero, px[k]));
      if (k + 1 < count || j + count == n)  // else the chunk's last pixel waits for the next chunk's first
        _mm512_storeu_si512(t, interleave_pairs(px[k], x == W - 1 ? zero : px[k + 1]));
    }
    prev = px[count - 1];
  }
}

// gather_pairs_nchw_rows where a row fills a 16-column chunk or more, or the tile does not span its rows (which
// wgrad's pairs path, at unit stride, never asks for); gather_pairs_nchw_pixels for narrower rows (14 columns:
// measured 8-11 % faster wgrad than a plane-by-plane gather, and the rows gather was 15 % slower there).
DWCONV_TARGET inline void gather_pairs_nchw(uint32_t* dst, int64_t rows, int64_t cols, const ImageView<const bf16>& src,
                                            const int64_t* chan, int64_t r0, int64_t c0) {
  if (src.W >= 16 || c0 > 0 || c0 + cols < src.W) gather_pairs_nchw_rows(dst, rows, cols, src, chan, r0, c0);
  else gather_pairs_nchw_pixels(dst, rows, cols, src, chan, r0, c0);
}

// dw[q] (fp32 [Q][16], accumulated into) += sum over oh < rows, ow < n of x[oh][ow + q] * dy[oh][ow], from pairs
// tiles (row steps in elements). With n odd the last output's pairs have their second halves masked off.
template <int Q>
DWCONV_TARGET void wgrad_pair_taps(float* dw, const uint32_t* dy, int64_t rows, int64_t n, int64_t dy_row_step,
                                   const uint32_t* x, int64_t row_step) {
  __m512 acc[Q];
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) acc[q] = _mm512_loadu_ps(dw + q * 16);
  const __m512i first = _mm512_set1_epi32(0xffff);
  for (int64_t oh = 0; oh < rows; ++oh, x += row_step, dy += dy_row_step) {
    int64_t ow = 0;
    for (; ow + 1 < n; ow += 2) {
      const __m512bh d = (__m512bh)_mm512_loadu_si512(dy + ow * 16);
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q)
        acc[q] = _mm512_dpbf16_ps(acc[q], (__m512bh)_mm512_loadu_si512(x + (ow + q) * 16), d);
    }
    if (ow < n) {
      const __m512bh d = (__m512bh)_mm512_and_si512(_mm512_loadu_si512(dy + ow * 16), first);
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q)
        acc[q] = _mm512_dpbf16_ps(acc[q], (__m512bh)_mm512_and_si512(_mm512_loadu_si512(x + (ow + q) * 16), first), d);
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) _mm512_storeu_ps(dw + q * 16, acc[q]);
}

using WgradPairFn = void (*)(float*, const uint32_t*, int64_t, int64_t, int64_t, const uint32_t*, int64_t);
inline constexpr WgradPairFn kWgradPairTaps[kMaxBlock + 1] = {
    nullptr, wgrad_pair_taps<1>, wgrad_pair_taps<2>, wgrad_pair_taps<3>, wgrad_pair_taps<4>,
    wgrad_pair_taps<5>, wgrad_pair_taps<6>, wgrad_pair_taps<7>};


// Pairs over two images: dst[i] = (a[i], b[i]) as bf16 pairs, for count fp32 elements of two tiles holding bf16
// values (exact, as in tile_to_pairs).
DWCONV_TARGET inline void images_to_pairs(uint32_t* dst, const float* a, const float* b, int64_t count) {
  for (int64_t i = 0; i < count; i += 16) _mm512_storeu_si512(dst + i, pairs_of_bf16_floats(a + i, b + i));
}

// What gather_tile of images a and b followed by images_to_pairs make of a channels_last band (lanes: channels
// chan0 .. chan0 + 15), in one pass from the bf16 pixels: dst[r][c] = (a(r, c), b(r, c)), zero outside the image.
DWCONV_TARGET inline void gather_image_pairs_nhwc(uint32_t* dst, int64_t rows, int64_t cols,
                                                  const ImageView<const bf16>& a, const ImageView<const bf16>& b,
                                                  int64_t chan0, int64_t r0, int64_t c0) {
  const int64_t c_begin = std::clamp<int64_t>(-c0, 0, cols), c_end = std::clamp<int64_t>(a.W - c0, c_begin, cols);
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* d = dst + r * cols * 16;
    const int64_t u = r0 + r;
    if (u < 0 || u >= a.H || c_begin == c_end) {
      std::memset(d, 0, sizeof(uint32_t) * cols * 16);
      continue;
    }
    std::memset(d, 0, sizeof(uint32_t) * c_begin * 16);
    std::memset(d + c_end * 16, 0, sizeof(uint32_t) * (cols - c_end) * 16);
    const bf16 *pa = a.row(u) + chan0 + c0 * a.C, *pb = b.row(u) + chan0 + c0 * b.C;
    for (int64_t c = c_begin; c < c_end; ++c)
      _mm512_storeu_si512(d + c * 16, interleave_pairs(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pa + c * a.C)),
                                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + c * b.C))));
  }
}

// The same for an NCHW band whose 16 lanes are the planes chan[l] (all in the image): each plane's band rows of a
// and b become one row of pairs (a 32-bit word per pixel), transposed 16 x 16 into pixels of 16 lanes (as
// floats: stored and read as bytes, no value computed), then placed in the tile's rows. stage: 2 * 16 * rows *
// a.W words.
DWCONV_TARGET inline void gather_image_pairs_nchw(uint32_t* dst, int64_t rows, int64_t cols,
                                                  const ImageView<const bf16>& a, const ImageView<const bf16>& b,
                                                  const int64_t* chan, int64_t r0, int64_t c0, float* stage) {
  constexpr int L = 16;
  const int64_t c_begin = std::clamp<int64_t>(-c0, 0, cols), c_end = std::clamp<int64_t>(a.W - c0, c_begin, cols);
  const int64_t r_lo = std::clamp<int64_t>(-r0, 0, rows), r_hi = std::clamp<int64_t>(a.H - r0, r_lo, rows);
  const int64_t W = a.W, n = (r_hi - r_lo) * W;
  float* pixels = stage + L * n;
  for (int l = 0; l < L && n > 0; ++l) {
    const bf16* in_a = a.row(r0 + r_lo) + chan[l] * a.channel_step();
    const bf16* in_b = b.row(r0 + r_lo) + chan[l] * b.channel_step();
    float* out = stage + l * n;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
      _mm512_mask_storeu_epi32(out + j, m, interleave_pairs(_mm256_maskz_loadu_epi16(m, in_a + j),
                                                           _mm256_maskz_loadu_epi16(m, in_b + j)));
    }
  }
  rows_to_pixels<float, L>(pixels, stage, n);
  place_pixel_rows(dst, rows, cols, pixels, W, r_lo, r_hi, c0, c_begin, c_end);
}

// dw[q] (fp32 [Q][16], accumulated into) += sum over oh < rows, ow < n of x[oh][ow + q] * dy[oh][ow] for two
// images at once, from tiles of image pairs (images_to_pairs; unit stride and dilation along W): the fp32
// kernel's sliding window (wgrad_taps_unit), one vdpbf16ps per tap adding both images' products.
template <int Q>
DWCONV_TARGET void wgrad_image_pair_taps(float* dw, const uint32_t* dy, int64_t rows, int64_t n, int64_t dy_row_step,
                                         const uint32_t* x, int64_t row_step) {
  __m512 acc[Q];
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) acc[q] = _mm512_loadu_ps(dw + q * 16);
  for (int64_t oh = 0; oh < rows; ++oh, x += row_step, dy += dy_row_step) {
    __m512i win[Q];
#pragma GCC unroll 8
    for (int q = 0; q < Q - 1; ++q) win[q] = _mm512_loadu_si512(x + q * 16);
    for (int64_t ow = 0; ow < n; ++ow) {
      win[Q - 1] = _mm512_loadu_si512(x + (ow + Q - 1) * 16);
      const __m512bh d = (__m512bh)_mm512_loadu_si512(dy + ow * 16);
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) acc[q] = _mm512_dpbf16_ps(acc[q], (__m512bh)win[q], d);
#pragma GCC unroll 8
      for (int q = 0; q + 1 < Q; ++q) win[q] = win[q + 1];
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) _mm512_storeu_ps(dw + q * 16, acc[q]);
}

inline constexpr WgradPairFn kWgradImagePairTaps[kMaxBlock + 1] = {
    nullptr, wgrad_image_pair_taps<1>, wgrad_image_pair_taps<2>, wgrad_image_pair_taps<3>, wgrad_image_pair_taps<4>,
    wgrad_image_pair_taps<5>, wgrad_image_pair_taps<6>, wgrad_image_pair_taps<7>};

}  // namespace dwconv::cpu::DWCONV_ISA
