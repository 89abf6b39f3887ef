// The batched path for small maps, for one ISA (see conv_ops.h): needs DWCONV_ISA / DWCONV_TARGET (isa.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/microkernels.h"
#include "cpu/plan.h"
#include "cpu/scratch.h"
#include "cpu/tile.h"
#ifdef DWCONV_BF16_DOT
#include "cpu/batched_bf16dot.h"
#include "cpu/wgrad_bf16dot.h"
#endif

namespace dwconv::cpu::DWCONV_ISA {

// On a 7x7 or 14x14 map most taps of a large filter read padding, and a register block along W runs the taps
// any of its outputs needs. Instead, a block is R images at one output pixel: every accumulator shares the
// pixel's exact tap range and the weight vector. Tiles hold R images interleaved, unpadded:
// [row][col][image][lane].

// Output (o_h, o_w), tap (k_h, k_w) reads source pixel (o_h * SH + k_h * DH + org_h, o_w * SW + k_w * DW +
// org_w) of an Hs x Ws source; reads outside are zero.
struct Correlation {
  int64_t HO, WO, KH, KW, SH, SW, DH, DW, org_h, org_w, Hs, Ws;
};

// Share of all (output, tap) pairs that read inside the source.
inline double inside_fraction(const Correlation& g) {
  int64_t rows = 0, cols = 0;
  for (int64_t o = 0; o < g.HO; ++o) {
    const Range k = inside(o * g.SH + g.org_h, g.DH, g.KH, g.Hs - 1);
    rows += k.hi - k.lo;
  }
  for (int64_t o = 0; o < g.WO; ++o) {
    const Range k = inside(o * g.SW + g.org_w, g.DW, g.KW, g.Ws - 1);
    cols += k.hi - k.lo;
  }
  return double(rows) * double(cols) / (double(g.HO * g.KH) * double(g.WO * g.KW));
}

// Largest tile of interleaved images a work item keeps (bytes).
constexpr int64_t kBatchTileBytes = 64 * 1024;

// Images per batched block (0: use the windowed path). Pays off (measured, docs/perf_cpu.md) when most
// (output, tap) pairs read padding (a 7x7 map under an 11x11 filter: 37% inside), with at least 5 images per
// block (fewer accumulators than the FMA latency x throughput leave the FMA units idle) and a map small
// enough for the interleaved tile to stay in cache.
inline int64_t batch_images(const Correlation& g, int64_t N, int64_t bytes_per_pixel) {
  constexpr int64_t kMinImages = 5;
  constexpr double kMaxInsideFraction = 0.55;
  const int64_t groups = ceil_div(N, kMaxBlock);
  if (N / groups < kMinImages) return 0;
  const int64_t images = ceil_div(N, groups);
  const int64_t biggest = std::max(g.Hs * g.Ws, g.HO * g.WO) * bytes_per_pixel;
  if (biggest * images > kBatchTileBytes) return 0;
  return inside_fraction(g) < kMaxInsideFraction ? images : 0;
}

// One channel block of R images: out [HO][WO][R][L] (= or +=) correlation of tile [Hs][Ws][R][L] with w.
// row_taps[oh] / col_taps[ow]: the taps of each output row / column that read inside the source.
template <class V, typename A>
DWCONV_TARGET void correlate_batched(A* out, bool accumulate, const A* tile, int R, const Correlation& g,
                                     const Range* row_taps, const Range* col_taps, const A* w) {
  constexpr int L = V::L;
  const int64_t pix = R * L;
  for (int64_t oh = 0; oh < g.HO; ++oh) {
    const Range kh = row_taps[oh];
    for (int64_t ow = 0; ow < g.WO; ++ow) {
      const Range kw = col_taps[ow];
      const int64_t sr = oh * g.SH + kh.lo * g.DH + g.org_h, sc = ow * g.SW + kw.lo * g.DW + g.org_w;
      BlockKernels<V, A>::batch[R](out + (oh * g.WO + ow) * pix, accumulate, tile + (sr * g.Ws + sc) * pix,
                                   g.DH * g.Ws * pix, g.DW * pix, w + (kh.lo * g.KW + kw.lo) * L, g.KW * L,
                                   kh.hi - kh.lo, kw.hi - kw.lo);
    }
  }
}

#ifdef DWCONV_BF16_DOT
// correlate_batched from a pairs tile (batched_bf16dot.h), unit dilation along W.
DWCONV_TARGET inline void correlate_batched_dot(float* out, bool accumulate, const uint32_t* tile, int R,
                                                const Correlation& g, const Range* row_taps, const Range* col_taps,
                                                const uint32_t* wpair, const uint32_t* wsingle) {
  constexpr int L = 16;
  const int64_t pix = R * L;
  for (int64_t oh = 0; oh < g.HO; ++oh) {
    const Range kh = row_taps[oh];
    for (int64_t ow = 0; ow < g.WO; ++ow) {
      const Range kw = col_taps[ow];
      const int64_t sr = oh * g.SH + kh.lo * g.DH + g.org_h, sc = ow * g.SW + kw.lo + g.org_w;
      const int64_t w_at = (kh.lo * g.KW + kw.lo) * L;
      kBatchBlockDot[R](out + (oh * g.WO + ow) * pix, accumulate, tile + (sr * g.Ws + sc) * pix, g.DH * g.Ws * pix, pix,
                        wpair + w_at, wsingle + w_at, g.KW * L, kh.hi - kh.lo, kw.hi - kw.lo);
    }
  }
}
#endif

// A correlation of every image and channel block: dst[n, c] = sum_j correlate(src[n, chan(c, j)], wt[j]) +
// bias[c] for dst channels c < dst_C, sources j < sources, where chan(c, j) = c / chan_div * chan_mul + j.
template <typename T, typename A>
struct BlockedProblem {
  Correlation g;
  Layout layout;
  int64_t N, sources, chan_div, chan_mul;
  const T* src;
  int64_t src_C;
  T* dst;
  int64_t dst_C;
  const A* wt;    // [sources][blocks][KH][KW][L]
  const A* bias;  // [blocks][L]
};

template <class V, typename T, typename A>
DWCONV_TARGET void run_batched(const BlockedProblem<T, A>& p, int64_t images, int threads) {
  constexpr int L = V::L;
  const Correlation& g = p.g;
  const int64_t nblocks = ceil_div(p.dst_C, L), taps = g.KH * g.KW;
  const int64_t groups = ceil_div(p.N, images);
  // items: image group x group of channel blocks (whole cache lines of NHWC pixels, plan.h)
  const int64_t per_item = blocks_per_item(p.layout, L * sizeof(T)), bgroups = ceil_div(nblocks, per_item);
  const int64_t items = groups * bgroups;
  const int nthreads = thread_count(threads, items, p.N * p.dst_C * g.HO * g.WO * taps * p.sources);
  const int64_t chunk = items_per_chunk(p.layout, items, nthreads);
  const int64_t in_pixels = g.Hs * g.Ws, out_pixels = g.HO * g.WO;
  const int64_t tile_size = in_pixels * images * L, out_size = out_pixels * images * L;
  const int64_t single_size = std::max(in_pixels, out_pixels) * L, stage_size = 2 * single_size;
  const int64_t per_thread = tile_size + out_size + single_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
  Scratch<Range> row_taps(g.HO), col_taps(g.WO);
  // bf16 with vdpbf16ps: tiles and filters as pairs of adjacent columns (unit dilation along W)
  bool dot = false;
#ifdef DWCONV_BF16_DOT
  if constexpr (std::is_same_v<T, bf16>) dot = g.DW == 1;
#endif
  Scratch<uint32_t> tile_pairs(dot ? nthreads * tile_size : 0), wpair(dot ? p.sources * nblocks * taps * L : 0),
      wsingle(dot ? p.sources * nblocks * taps * L : 0);
#ifdef DWCONV_BF16_DOT
  if constexpr (std::is_same_v<T, bf16>)
    if (dot) filter_column_pairs(wpair.get(), wsingle.get(), p.wt, p.sources * nblocks, g.KH, g.KW);
#endif
  for (int64_t o = 0; o < g.HO; ++o) row_taps.get()[o] = inside(o * g.SH + g.org_h, g.DH, g.KH, g.Hs - 1);
  for (int64_t o = 0; o < g.WO; ++o) col_taps.get()[o] = inside(o * g.SW + g.org_w, g.DW, g.KW, g.Ws - 1);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* out = tile + tile_size;
    A* single = out + out_size;
    A* stage = single + single_size;
#pragma omp for schedule(dynamic, chunk)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t grp = item / bgroups, bgrp = item % bgroups;
      // near-equal groups: the first N % groups get one image more
      const int64_t n0 = grp * (p.N / groups) + std::min(grp, p.N % groups);
      const int R = int(p.N / groups + (grp < p.N % groups ? 1 : 0));
      for (int64_t blk = bgrp * per_item; blk < std::min(nblocks, (bgrp + 1) * per_item); ++blk) {
        for (int64_t j = 0; j < p.sources; ++j) {
          int64_t chan[L];
          for (int l = 0; l < L; ++l) {
            const int64_t c = blk * L + l;
            chan[l] = c < p.dst_C ? c / p.chan_div * p.chan_mul + j : -1;
          }
          bool paired = false;  // the pairs tile made straight from the bf16 planes (full NCHW channel blocks)
#ifdef DWCONV_BF16_DOT
          uint32_t* tp = tile_pairs.get() + omp_get_thread_num() * tile_size;
          if constexpr (std::is_same_v<T, bf16>)
            if (dot && p.layout == Layout::NCHW && (blk + 1) * L <= p.dst_C) {
              for (int r = 0; r < R; ++r)
                gather_pairs_nchw_pixels(tp + r * L, g.Hs, g.Ws,
                                         ImageView<const T>{p.src + (n0 + r) * p.src_C * in_pixels, p.layout, p.src_C,
                                                            g.Hs, g.Ws},
                                         chan, 0, 0, R * L);
              paired = true;
            }
#endif
          for (int r = 0; r < R && !paired; ++r) {
            gather_tile<T, A, L>(single, g.Hs, g.Ws,
                                 ImageView<const T>{p.src + (n0 + r) * p.src_C * in_pixels, p.layout, p.src_C, g.Hs,
                                                    g.Ws},
                                 chan, 0, 0, 1, 1, stage);
            for (int64_t px = 0; px < in_pixels; ++px)
              std::memcpy(tile + (px * R + r) * L, single + px * L, sizeof(A) * L);
          }
#ifdef DWCONV_BF16_DOT
          if constexpr (std::is_same_v<T, bf16>)
            if (dot) {
              if (!paired) tile_to_pairs(tp, tile, g.Hs, g.Ws, R);
              const int64_t w_at = (j * nblocks + blk) * taps * L;
              correlate_batched_dot(out, j > 0, tp, R, g, row_taps.get(), col_taps.get(), wpair.get() + w_at,
                                    wsingle.get() + w_at);
              continue;
            }
#endif
          correlate_batched<V>(out, j > 0, tile, R, g, row_taps.get(), col_taps.get(),
                               p.wt + (j * nblocks + blk) * taps * L);
        }
        for (int r = 0; r < R; ++r) {
          for (int64_t px = 0; px < out_pixels; ++px)
            std::memcpy(single + px * L, out + (px * R + r) * L, sizeof(A) * L);
          scatter_tile<T, A, L>(ImageView<T>{p.dst + (n0 + r) * p.dst_C * out_pixels, p.layout, p.dst_C, g.HO, g.WO},
                                single, g.HO, blk * L, int(std::min<int64_t>(L, p.dst_C - blk * L)), 0,
                                p.bias + blk * L, stage);
        }
      }
    }
  }
}

}  // namespace dwconv::cpu::DWCONV_ISA
