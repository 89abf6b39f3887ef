// channels_last forward / stride-1 dgrad without tiles (AVX-512 only; included by kernels_avx512.cpp before
// conv_ops.h, which calls run_nhwc_rows / run_nhwc_batched where nhwc_direct_fits).
//
// In NHWC a block of 16 channels of one pixel is one vector in place, so the register blocks read the tensor
// itself: the windowed kernel's sliding window loads pixel (ih, iw) straight from x, a pixel left or right of
// the map reads zero through an empty load mask (no memory touched), and the results go to y with the bias
// added, converted and stored per pixel (a masked store for a partial channel block). The copy into a padded
// tile and back out (gather_tile / scatter_tile: 35-50% of the forward time on 14x14 maps) is gone; the taps of
// each output and their order are the channel-blocked kernels', so are the bits. bf16 with vdpbf16ps is the
// exception: its window holds pairs of rows, which are built once per item into a tile (run_nhwc_rows_dot)
// instead of once per register block and filter-row pair.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/batched.h"
#include "cpu/plan.h"
#include "cpu/scratch.h"
#include "cpu/tile.h"

namespace dwconv::cpu::DWCONV_ISA {

#define DWCONV_NHWC_INLINE DWCONV_TARGET __attribute__((always_inline)) inline

constexpr int kNhwcLanes = 16;
constexpr int kNhwcMaxBlock = 14;  // outputs along W per register block: 14 accumulators + 14 window + 1 weight
constexpr int kNhwcMaxImages = 8;  // images per batched block (their pixels stay in L1 across the taps)

// 16 channels of one pixel as fp32, zero in the lanes outside `lanes` (nothing is read there).
template <typename T>
DWCONV_NHWC_INLINE __m512 load_pixel(const T* p, __mmask16 lanes) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(lanes, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(lanes, p);
    if constexpr (std::is_same_v<T, bf16>) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);  // exact; a signalling NaN comes out quiet, as any arithmetic would make it
  }
}

// p[lane] = v[lane] (rounded to T as from_acc does) for the lanes in `lanes`.
template <typename T>
DWCONV_NHWC_INLINE void store_pixel(T* p, __m512 v, __mmask16 lanes, bool full) {
  if constexpr (std::is_same_v<T, float>) {
    if (full) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, lanes, v);
  } else {
    const __m256i h = std::is_same_v<T, bf16> ? bf16_bits(v) : f16_bits(v);
    if (full) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    else _mm256_mask_storeu_epi16(p, lanes, h);
  }
}

// R outputs along one output row, one channel block: out pixel r (y + r * px_step) = bias + sum over the nkh
// filter rows (source rows x_row + kh * row_step) and nkw taps kw of w[kh][kw] * source pixel (col0 + r + kw),
// pixels outside [0, Ws) reading zero. w: [kh][kw][16] (rows w_row_step apart).
template <int R, typename T>
DWCONV_TARGET void nhwc_row_block(T* y, int64_t y_step, const float* bias16, __mmask16 lanes, const T* x_row,
                                  int64_t row_step, int64_t px_step, int64_t col0, int64_t Ws, const float* w,
                                  int64_t w_row_step, int64_t nkh, int64_t nkw) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const auto pixel_mask = [&](int64_t col) { return uint64_t(col) < uint64_t(Ws) ? lanes : __mmask16(0); };
  for (int64_t kh = 0; kh < nkh; ++kh, x_row += row_step, w += w_row_step) {
    __m512 win[R];
#pragma GCC unroll 16
    for (int r = 0; r < R - 1; ++r) win[r] = load_pixel(x_row + (col0 + r) * px_step, pixel_mask(col0 + r));
    for (int64_t kw = 0; kw < nkw; ++kw) {
      const int64_t col = col0 + kw + R - 1;
      win[R - 1] = load_pixel(x_row + col * px_step, pixel_mask(col));
      const __m512 wv = _mm512_loadu_ps(w + kw * kNhwcLanes);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(win[r], wv, acc[r]);
#pragma GCC unroll 16
      for (int r = 0; r < R - 1; ++r) win[r] = win[r + 1];
    }
  }
  const bool full = lanes == __mmask16(0xffff);
  const __m512 bias = _mm512_loadu_ps(bias16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) store_pixel(y + r * y_step, _mm512_add_ps(acc[r], bias), lanes, full);
}

template <typename T>
using NhwcRowFn = void (*)(T*, int64_t, const float*, __mmask16, const T*, int64_t, int64_t, int64_t, int64_t,
                           const float*, int64_t, int64_t, int64_t);

template <typename T, int... R>
constexpr std::array<NhwcRowFn<T>, kNhwcMaxBlock + 1> nhwc_rows_for(std::integer_sequence<int, R...>) {
  return {nullptr, nhwc_row_block<R + 1, T>...};
}

#ifdef DWCONV_BF16_DOT
// bf16 with vdpbf16ps, two filter rows per instruction, from a tile of row pairs (pair_rows below: pixel (i, c)
// with pixel (i + DH, c), zero outside the map), so the register window takes each pair with one plain load. With
// Pair false (the last of an odd number of filter rows) the second halves are read as zero, and so are those of
// the weights (w: wsingle below).
template <bool Pair>
DWCONV_NHWC_INLINE __m512i tile_pair(const uint32_t* p) {
  return Pair ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(__mmask32(0x55555555u), p);
}

template <int R, bool Pair>
DWCONV_NHWC_INLINE void tile_dot_rows(__m512* acc, const uint32_t* t, const uint32_t* w, int64_t nkw) {
  __m512i win[R];
#pragma GCC unroll 16
  for (int r = 0; r < R - 1; ++r) win[r] = tile_pair<Pair>(t + r * kNhwcLanes);
  for (int64_t kw = 0; kw < nkw; ++kw) {
    win[R - 1] = tile_pair<Pair>(t + (kw + R - 1) * kNhwcLanes);
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + kw * kNhwcLanes);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)win[r], wv);
#pragma GCC unroll 16
    for (int r = 0; r < R - 1; ++r) win[r] = win[r + 1];
  }
}

// nhwc_row_block for bf16 with vdpbf16ps: filter rows (kh, kh + 1) from wpair, a last odd one from wsingle
// (both [kh][kw][16] pairs, as RowPairFilters packs them); t: the pair tile at the first filter row's source row
// and the block's first column, filter row kh + 1 t_row_step further.
template <int R>
DWCONV_TARGET void nhwc_row_block_dot(bf16* y, int64_t y_step, const float* bias16, __mmask16 lanes, const uint32_t* t,
                                      int64_t t_row_step, const uint32_t* wpair, const uint32_t* wsingle,
                                      int64_t w_row_step, int64_t nkh, int64_t nkw) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t kh = 0;
  for (; kh + 1 < nkh; kh += 2) tile_dot_rows<R, true>(acc, t + kh * t_row_step, wpair + kh * w_row_step, nkw);
  if (kh < nkh) tile_dot_rows<R, false>(acc, t + kh * t_row_step, wsingle + kh * w_row_step, nkw);
  const bool full = lanes == __mmask16(0xffff);
  const __m512 bias = _mm512_loadu_ps(bias16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) store_pixel(y + r * y_step, _mm512_add_ps(acc[r], bias), lanes, full);
}

// Tile rows [0, rows) = source rows r0 + i, columns [0, Ws) at tile column c + col0 (pad columns untouched):
// pairs of source pixel (r0 + i, c) and (r0 + i + DH, c), the latter zero below the map; x: channel block's start.
// Each pixel's next 64 bytes (the next work item's channels) are prefetched: this loop is where an item first
// touches its pixels, one line 2C bytes from the last, and it stalled on them (docs/perf_cpu.md).
DWCONV_NHWC_INLINE void pair_rows(uint32_t* tile, int64_t tile_cols, int64_t col0, const bf16* x, int64_t r0,
                                  int64_t rows, int64_t Hs, int64_t Ws, int64_t C, int64_t DH, __mmask16 lanes) {
  for (int64_t i = 0; i < rows; ++i) {
    const bf16* a = x + (r0 + i) * Ws * C;
    const bool below = r0 + i + DH < Hs;
    uint32_t* t = tile + (i * tile_cols + col0) * kNhwcLanes;
    for (int64_t c = 0; c < Ws; ++c, a += C, t += kNhwcLanes) {
      __builtin_prefetch(a + 64 / sizeof(bf16), 0, 3);
      const __m256i b = below ? _mm256_maskz_loadu_epi16(lanes, a + DH * Ws * C) : _mm256_setzero_si256();
      _mm512_storeu_si512(t, interleave_pairs(_mm256_maskz_loadu_epi16(lanes, a), b));
    }
  }
}

using NhwcRowDotFn = void (*)(bf16*, int64_t, const float*, __mmask16, const uint32_t*, int64_t, const uint32_t*,
                              const uint32_t*, int64_t, int64_t, int64_t);

template <int... R>
constexpr std::array<NhwcRowDotFn, kNhwcMaxBlock + 1> nhwc_row_dots_for(std::integer_sequence<int, R...>) {
  return {nullptr, nhwc_row_block_dot<R + 1>...};
}

// nhwc_batch_block for bf16 with vdpbf16ps, from a tile of row pairs ([row][col][image][16] pairs of the pixel
// and the one a filter row below; zero below the map): filter rows (kh, kh + 1) from wpair, a last odd one from
// wsingle with the tile's second halves masked off.
template <int R>
DWCONV_TARGET void nhwc_batch_block_dot(bf16* y, int64_t y_image_step, const float* bias16, __mmask16 lanes,
                                        const uint32_t* x, int64_t row_step, int64_t px_step, const uint32_t* wpair,
                                        const uint32_t* wsingle, int64_t w_row_step, int64_t nkh, int64_t nkw) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i low_halves = _mm512_set1_epi32(0xffff);
  for (int64_t kh = 0; kh < nkh; kh += 2) {
    const bool pair = kh + 1 < nkh;
    const uint32_t* w = (pair ? wpair : wsingle) + kh * w_row_step;
    const uint32_t* xk = x + kh * row_step;
    for (int64_t kw = 0; kw < nkw; ++kw, xk += px_step) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + kw * kNhwcLanes);
      if (pair) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
          acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(xk + r * kNhwcLanes), wv);
      } else {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
          acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_and_si512(_mm512_loadu_si512(xk + r * kNhwcLanes), low_halves), wv);
      }
    }
  }
  const bool full = lanes == __mmask16(0xffff);
  const __m512 bias = _mm512_loadu_ps(bias16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) store_pixel(y + r * y_image_step, _mm512_add_ps(acc[r], bias), lanes, full);
}

using NhwcBatchDotFn = void (*)(bf16*, int64_t, const float*, __mmask16, const uint32_t*, int64_t, int64_t,
                                const uint32_t*, const uint32_t*, int64_t, int64_t, int64_t);

template <int... R>
constexpr std::array<NhwcBatchDotFn, kNhwcMaxImages + 1> nhwc_batch_dots_for(std::integer_sequence<int, R...>) {
  return {nullptr, nhwc_batch_block_dot<R + 1>...};
}

// The blocked filter wt ([block][KH][KW][16] fp32 holding bf16 values) as bf16 pairs of filter rows:
// pair[...][kh][kw][l] = (wt[kh][kw][l], wt[kh + 1][kw][l] or 0 in the last row), single: (wt[kh][kw][l], 0).
// The values are bf16's, so their high 16 bits are the bf16 bits.
struct RowPairFilters {
  Scratch<uint32_t> pair, single;
  DWCONV_TARGET RowPairFilters(const float* wt, int64_t nblocks, int64_t KH, int64_t KW)
      : pair(nblocks * KH * KW * kNhwcLanes), single(nblocks * KH * KW * kNhwcLanes) {
    const int64_t row = KW * kNhwcLanes;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < nblocks; ++blk)
      for (int64_t kh = 0; kh < KH; ++kh)
        for (int64_t i = 0; i < row; i += kNhwcLanes) {
          const int64_t at = (blk * KH + kh) * row + i;
          const __m512 lo = _mm512_loadu_ps(wt + at);
          _mm512_storeu_si512(pair.get() + at, pairs_of_bf16_floats(lo, kh + 1 < KH ? _mm512_loadu_ps(wt + at + row) : zero));
          _mm512_storeu_si512(single.get() + at, _mm512_srli_epi32(_mm512_castps_si512(lo), 16));
        }
  }
};
#endif

// R images at one output pixel (every image's taps inside the source are the same), from a tile of the R images
// interleaved ([row][col][image][16], fp32): out of image r = bias + sum over the nkh x nkw taps of w[kh][kw] *
// tile[r + kh * row_step + kw * px_step].
template <int R, typename T>
DWCONV_TARGET void nhwc_batch_block(T* y, int64_t y_image_step, const float* bias16, __mmask16 lanes, const float* x,
                                    int64_t row_step, int64_t px_step, const float* w, int64_t w_row_step, int64_t nkh,
                                    int64_t nkw) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t kh = 0; kh < nkh; ++kh, x += row_step, w += w_row_step) {
    const float* xk = x;
    for (int64_t kw = 0; kw < nkw; ++kw, xk += px_step) {
      const __m512 wv = _mm512_loadu_ps(w + kw * kNhwcLanes);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xk + r * kNhwcLanes), wv, acc[r]);
    }
  }
  const bool full = lanes == __mmask16(0xffff);
  const __m512 bias = _mm512_loadu_ps(bias16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) store_pixel(y + r * y_image_step, _mm512_add_ps(acc[r], bias), lanes, full);
}

template <typename T>
using NhwcBatchFn = void (*)(T*, int64_t, const float*, __mmask16, const float*, int64_t, int64_t, const float*,
                             int64_t, int64_t, int64_t);

template <typename T, int... R>
constexpr std::array<NhwcBatchFn<T>, kNhwcMaxImages + 1> nhwc_batches_for(std::integer_sequence<int, R...>) {
  return {nullptr, nhwc_batch_block<R + 1, T>...};
}

// Whether a correlation of an NHWC source with one filter per channel (M == 1: lane l of a block reads channel l)
// runs here: fp32 accumulation and, for the windowed kernel, unit stride and dilation along W.
inline bool nhwc_direct_fits(const Correlation& g, Layout layout, int64_t M, bool batched) {
  return layout == Layout::NHWC && M == 1 && (batched || (g.SW == 1 && g.DW == 1));
}

#ifdef DWCONV_BF16_DOT
// run_nhwc_rows for bf16 with vdpbf16ps: per item and channel block, the band's source rows are first paired into
// a tile (pair_rows), with zero columns where the blocks read left or right of the map; the blocks then read it.
DWCONV_TARGET inline void run_nhwc_rows_dot(const Correlation& g, int64_t N, int64_t C, const bf16* src, bf16* dst,
                                            const float* wt, const float* bias, int threads) {
  static constexpr auto dots = nhwc_row_dots_for(std::make_integer_sequence<int, kNhwcMaxBlock>());
  constexpr int L = kNhwcLanes;
  const int64_t nblocks = ceil_div(C, L), taps = g.KH * g.KW;
  const RowPairFilters wdot(wt, nblocks, g.KH, g.KW);
  const std::vector<Block> blocks = output_blocks(g.WO, g.org_w, g.Ws - 1, 1, 1, g.KW, kNhwcMaxBlock);
  const std::vector<Range> rtaps = row_taps(g.HO, g.org_h, g.Hs - 1, g.SH, g.DH, g.KH);
  const int64_t row_span = (g.KH - 1) * g.DH + 1;
  const int64_t TH = band_rows(Layout::NHWC, g.HO, g.Ws, g.SH, row_span, L * sizeof(uint32_t));
  const int64_t nbands = ceil_div(g.HO, TH);
  const int64_t group = blocks_per_item(Layout::NHWC, L * sizeof(bf16)), ngroups = ceil_div(nblocks, group);
  const int64_t items = N * ngroups * nbands;
  const int nthreads = thread_count(threads, items, N * C * g.HO * g.WO * taps);
  const int64_t chunk = items_per_chunk(Layout::NHWC, items, nthreads);
  // tile columns: source columns [col_lo, col_hi), the map's at [-col_lo, Ws - col_lo)
  const int64_t col_lo = std::min<int64_t>(0, g.org_w), col_hi = std::max<int64_t>(g.Ws, g.WO + g.org_w + g.KW - 1);
  const int64_t tile_cols = col_hi - col_lo, tile_rows = std::min(g.Hs, (TH - 1) * g.SH + row_span);
  const int64_t tile_size = tile_rows * tile_cols * L;
  Scratch<uint32_t> scratch(nthreads * tile_size);
  std::fill_n(scratch.get(), nthreads * tile_size, 0u);
#pragma omp parallel num_threads(nthreads)
  {
    uint32_t* tile = scratch.get() + omp_get_thread_num() * tile_size;
#pragma omp for schedule(dynamic, chunk)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t grp = item % ngroups, band = (item / ngroups) % nbands, n = item / (nbands * ngroups);
      const int64_t oh0 = band * TH, oh1 = std::min(g.HO, oh0 + TH);
      const int64_t r0 = std::max<int64_t>(0, oh0 * g.SH + g.org_h);
      const int64_t r1 = std::min(g.Hs, (oh1 - 1) * g.SH + g.org_h + row_span);
      for (int64_t blk = grp * group; blk < std::min(nblocks, (grp + 1) * group); ++blk) {
        const __mmask16 lanes = __mmask16((1u << std::min<int64_t>(L, C - blk * L)) - 1);
        const float* bv = bias + blk * L;
        bf16* y = dst + n * g.HO * g.WO * C + blk * L;
        const bf16* x = src + n * g.Hs * g.Ws * C + blk * L;
        if (r1 > r0) pair_rows(tile, tile_cols, -col_lo, x, r0, r1 - r0, g.Hs, g.Ws, C, g.DH, lanes);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const Range kh = rtaps[oh];
          for (int64_t ow = 0; ow < g.WO; ++ow)
            __builtin_prefetch(reinterpret_cast<const char*>(y + (oh * g.WO + ow) * C) + 64, 1, 3);
          const int64_t ih = oh * g.SH + g.org_h + kh.lo * g.DH;
          for (const Block& b : blocks) {
            const int64_t w_at = blk * taps * L + (kh.lo * g.KW + b.lo) * L;
            const int64_t col = b.first + g.org_w + b.lo - col_lo;
            dots[b.size](y + (oh * g.WO + b.first) * C, C, bv, lanes, tile + ((ih - r0) * tile_cols + col) * L,
                         g.DH * tile_cols * L, wdot.pair.get() + w_at, wdot.single.get() + w_at, g.KW * L,
                         kh.hi - kh.lo, b.hi - b.lo);
          }
        }
      }
    }
  }
}
#endif

// Items and threads as in the channel-blocked drivers (plan.h): (image, band, group of blocks) with the
// group innermost, one contiguous range of items per thread.
template <typename T>
DWCONV_TARGET void run_nhwc_rows(const Correlation& g, int64_t N, int64_t C, const T* src, T* dst, const float* wt,
                                 const float* bias, int threads) {
#ifdef DWCONV_BF16_DOT
  if constexpr (kDotProducts<T>) return run_nhwc_rows_dot(g, N, C, src, dst, wt, bias, threads);
#endif
  static constexpr auto kernels = nhwc_rows_for<T>(std::make_integer_sequence<int, kNhwcMaxBlock>());
  constexpr int L = kNhwcLanes;
  const int64_t nblocks = ceil_div(C, L), taps = g.KH * g.KW;
  const std::vector<Block> blocks = output_blocks(g.WO, g.org_w, g.Ws - 1, 1, 1, g.KW, kNhwcMaxBlock);
  const std::vector<Range> rtaps = row_taps(g.HO, g.org_h, g.Hs - 1, g.SH, g.DH, g.KH);
  // bands of output rows whose input rows (the last KH of which the next row reuses) stay in L1 / L2
  const int64_t TH = band_rows(Layout::NHWC, g.HO, g.Ws, g.SH, (g.KH - 1) * g.DH + 1, L * sizeof(float));
  const int64_t nbands = ceil_div(g.HO, TH);
  const int64_t group = blocks_per_item(Layout::NHWC, L * sizeof(T)), ngroups = ceil_div(nblocks, group);
  const int64_t items = N * ngroups * nbands;
  const int nthreads = thread_count(threads, items, N * C * g.HO * g.WO * taps);
  const int64_t chunk = items_per_chunk(Layout::NHWC, items, nthreads);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, chunk)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t grp = item % ngroups, band = (item / ngroups) % nbands, n = item / (nbands * ngroups);
    for (int64_t blk = grp * group; blk < std::min(nblocks, (grp + 1) * group); ++blk) {
      const __mmask16 lanes = __mmask16((1u << std::min<int64_t>(L, C - blk * L)) - 1);
      const float* bv = bias + blk * L;
      const T* x = src + n * g.Hs * g.Ws * C + blk * L;
      T* y = dst + n * g.HO * g.WO * C + blk * L;
      for (int64_t oh = band * TH; oh < std::min(g.HO, (band + 1) * TH); ++oh) {
        const Range kh = rtaps[oh];
        // The next item's output lines (the next 64 bytes of this row's pixels) are fetched for writing while
        // this row computes: the stores then find them in cache (measured 5-17% faster; fetching its input
        // lines too did not help).
        for (int64_t ow = 0; ow < g.WO; ++ow)
          __builtin_prefetch(reinterpret_cast<const char*>(y + (oh * g.WO + ow) * C) + 64, 1, 3);
        const int64_t ih = oh * g.SH + g.org_h + kh.lo * g.DH;
        for (const Block& b : blocks)
          kernels[b.size](y + (oh * g.WO + b.first) * C, C, bv, lanes, x + ih * g.Ws * C, g.DH * g.Ws * C, C,
                          b.first + g.org_w + b.lo, g.Ws, wt + blk * taps * L + (kh.lo * g.KW + b.lo) * L, g.KW * L,
                          kh.hi - kh.lo, b.hi - b.lo);
      }
    }
  }
}

// The batched path (batched.h) without the tile round trips: per item (image group, channel block) the R images'
// pixels are loaded once into an interleaved fp32 tile (their pixels in the tensor are C apart, which maps them
// onto a few L1 sets: read in place, the taps kept missing), the results go to y directly.
template <typename T>
DWCONV_TARGET void run_nhwc_batched(const Correlation& g, int64_t N, int64_t C, const T* src, T* dst,
                                    const float* wt, const float* bias, int threads) {
  static constexpr auto kernels = nhwc_batches_for<T>(std::make_integer_sequence<int, kNhwcMaxImages>());
  constexpr int L = kNhwcLanes;
  const int64_t nblocks = ceil_div(C, L), taps = g.KH * g.KW;
  const int64_t groups = ceil_div(N, kNhwcMaxImages);
  const int64_t per_item = blocks_per_item(Layout::NHWC, L * sizeof(T)), bgroups = ceil_div(nblocks, per_item);
  const int64_t items = groups * bgroups;
  const int nthreads = thread_count(threads, items, N * C * g.HO * g.WO * taps);
  const int64_t chunk = items_per_chunk(Layout::NHWC, items, nthreads);
  std::vector<Range> row_taps(g.HO), col_taps(g.WO);
  for (int64_t o = 0; o < g.HO; ++o) row_taps[o] = inside(o * g.SH + g.org_h, g.DH, g.KH, g.Hs - 1);
  for (int64_t o = 0; o < g.WO; ++o) col_taps[o] = inside(o * g.SW + g.org_w, g.DW, g.KW, g.Ws - 1);
  const int64_t in_pixels = g.Hs * g.Ws, in_image = in_pixels * C, out_image = g.HO * g.WO * C;
  const int64_t tile_size = in_pixels * kNhwcMaxImages * L;
  Scratch<float> scratch(nthreads * tile_size);
#ifdef DWCONV_BF16_DOT
  // bf16: the tile holds pairs of the pixel and the one DH rows below (zero below the map) instead of fp32
  static constexpr auto dots = nhwc_batch_dots_for(std::make_integer_sequence<int, kNhwcMaxImages>());
  const RowPairFilters wdot(wt, kDotProducts<T> ? nblocks : 0, g.KH, g.KW);
#endif
#pragma omp parallel num_threads(nthreads)
  {
    float* tile = scratch.get() + omp_get_thread_num() * tile_size;
#pragma omp for schedule(dynamic, chunk)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t grp = item / bgroups, bgrp = item % bgroups;
      const int64_t n0 = grp * (N / groups) + std::min(grp, N % groups);  // near-equal image groups
      const int R = int(N / groups + (grp < N % groups ? 1 : 0));
      for (int64_t blk = bgrp * per_item; blk < std::min(nblocks, (bgrp + 1) * per_item); ++blk) {
        const __mmask16 lanes = __mmask16((1u << std::min<int64_t>(L, C - blk * L)) - 1);
        const T* x = src + n0 * in_image + blk * L;
        constexpr bool dot = kDotProducts<T>;  // plane_avx512.h, included first
        for (int r = 0; r < R; ++r)
          for (int64_t px = 0; px < in_pixels; ++px) {
            float* at = tile + (px * R + r) * L;
            if constexpr (dot) {
              const bf16* p = reinterpret_cast<const bf16*>(x + r * in_image + px * C);
              const int64_t below = px + g.DH * g.Ws;
              const __m256i b = below < in_pixels ? _mm256_maskz_loadu_epi16(lanes, p + g.DH * g.Ws * C)
                                                  : _mm256_setzero_si256();
              _mm512_storeu_si512(at, interleave_pairs(_mm256_maskz_loadu_epi16(lanes, p), b));
            } else {
              _mm512_storeu_ps(at, load_pixel(x + r * in_image + px * C, lanes));
            }
          }
        T* y = dst + n0 * out_image + blk * L;
        for (int64_t oh = 0; oh < g.HO; ++oh) {
          const Range kh = row_taps[oh];
          for (int64_t ow = 0; ow < g.WO; ++ow) {
            const Range kw = col_taps[ow];
            const int64_t sr = oh * g.SH + kh.lo * g.DH + g.org_h, sc = ow * g.SW + kw.lo * g.DW + g.org_w;
            const int64_t w_at = blk * taps * L + (kh.lo * g.KW + kw.lo) * L;
#ifdef DWCONV_BF16_DOT
            if constexpr (dot) {
              dots[R](reinterpret_cast<bf16*>(y + (oh * g.WO + ow) * C), out_image, bias + blk * L, lanes,
                      reinterpret_cast<const uint32_t*>(tile) + (sr * g.Ws + sc) * R * L, g.DH * g.Ws * R * L,
                      g.DW * R * L, wdot.pair.get() + w_at, wdot.single.get() + w_at, g.KW * L, kh.hi - kh.lo,
                      kw.hi - kw.lo);
              continue;
            }
#endif
            kernels[R](y + (oh * g.WO + ow) * C, out_image, bias + blk * L, lanes, tile + (sr * g.Ws + sc) * R * L,
                       g.DH * g.Ws * R * L, g.DW * R * L, wt + w_at, g.KW * L, kh.hi - kh.lo, kw.hi - kw.lo);
          }
        }
      }
    }
  }
}

#undef DWCONV_NHWC_INLINE

}  // namespace dwconv::cpu::DWCONV_ISA
