// fwd / dgrad / wgrad over channel-blocked tiles, for one ISA (the including .cpp defines DWCONV_ISA, the
// namespace, and DWCONV_TARGET, the function attribute, then includes its vec_*.h).
//
// Work is split into items (image n, block of L channels, band of output rows); each item gathers its input
// rectangle (with the zero padding) into an fp32 / fp64 tile [row][col][lane], runs the register-blocked
// loops of microkernels.h over it and scatters the result. dgrad is the forward correlation of the flipped
// filter over grad_out upsampled by the stride (zeros between samples). wgrad sums fixed chunks of
// (images x channel block) into a workspace, then reduces the chunks in a fixed order.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/microkernels.h"
#include "cpu/scratch.h"
#include "cpu/tile.h"

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
#endif

namespace dwconv::cpu::DWCONV_ISA {

// Largest input tile one work item gathers (bytes); whole small maps fit, big maps are cut into row bands.
// NCHW: big bands (less halo re-gathered; the tile may live in L2). NHWC: the next channel block reads the
// other half of the band's cache lines, so the band across all channels must still be in L2 by then.
// Measured on 56x56 K7 (docs/perf_cpu.md).
inline int64_t tile_bytes(Layout layout) { return layout == Layout::NCHW ? 160 * 1024 : 48 * 1024; }
// Multiply-adds per thread below which adding a thread costs more than it saves.
constexpr int64_t kMacsPerThread = 1 << 18;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Output rows per band so that the band's input tile stays within tile_bytes (at least one row), bands of
// near-equal height (no thin last band recomputing a full halo).
inline int64_t band_rows(Layout layout, int64_t out_rows, int64_t tile_cols, int64_t row_stride, int64_t row_span,
                         int64_t bytes_per_pixel) {
  const int64_t max_rows = tile_bytes(layout) / std::max<int64_t>(1, tile_cols * bytes_per_pixel);
  const int64_t th = std::clamp<int64_t>(max_rows >= row_span ? (max_rows - row_span) / row_stride + 1 : 1, 1,
                                         std::max<int64_t>(1, out_rows));
  return ceil_div(out_rows, ceil_div(out_rows, th));
}

inline int thread_count(int threads, int64_t items, int64_t macs) {
  const int64_t useful = std::min<int64_t>(items, std::max<int64_t>(1, macs / kMacsPerThread));
  return int(std::clamp<int64_t>(useful, 1, std::max(threads, 1)));
}

// Indices k in [lo, hi) of 0..K-1 whose source coordinate base + k * step lies in [0, last]: the filter taps
// of one output that read inside the input (or the outputs that one tap reads inside with). Skipping the
// rest skips the zero padding.
struct Range {
  int64_t lo, hi;
};
inline Range inside(int64_t base, int64_t step, int64_t K, int64_t last) {
  const int64_t lo = std::min(K, base >= 0 ? 0 : (-base + step - 1) / step);
  const int64_t hi = last < base ? 0 : std::min(K, (last - base) / step + 1);
  return {lo, std::max(lo, hi)};
}

// A register block along W: outputs ow .. ow + R - 1 (forward) or taps (wgrad), and the range [lo, hi) of the
// other index (taps, or outputs) that reads inside the input for any of them.
struct Block {
  int64_t first, lo, hi;
  int size;
};

// The blocks of one output row: along W, output ow's tap kw reads source column c_origin + ow * SW + kw * DW,
// inside the input when in [0, col_last]. The same for every row and item, so computed once per call.
inline std::vector<Block> output_blocks(int64_t WO, int64_t c_origin, int64_t col_last, int64_t SW, int64_t DW,
                                        int64_t KW) {
  std::vector<Block> blocks;
  for (int64_t i = 0, ow = 0, n = block_count(WO); i < n; ++i) {
    const int R = block_size(WO, i);
    const int64_t lo = inside(c_origin + (ow + R - 1) * SW, DW, KW, col_last).lo;
    const int64_t hi = std::max(lo, inside(c_origin + ow * SW, DW, KW, col_last).hi);
    blocks.push_back({ow, lo, hi, R});
    ow += R;
  }
  return blocks;
}

// The taps of each output row (source row of output o, tap k: r_origin + o * SH + k * DH, inside in
// [0, row_last]).
inline std::vector<Range> row_taps(int64_t HO, int64_t r_origin, int64_t row_last, int64_t SH, int64_t DH,
                                   int64_t KH) {
  std::vector<Range> taps(HO);
  for (int64_t o = 0; o < HO; ++o) taps[o] = inside(r_origin + o * SH, DH, KH, row_last);
  return taps;
}

// One row of output pixels: out[ow][L] (= or +=) the correlation of filter w ([KH][KW][L]) over the filter
// rows `kh` of the tile, x pointing at tile row (kh = 0) col 0; output ow's tap kw reads tile column
// ow * SW + kw * DW.
template <class V, typename A>
DWCONV_TARGET void correlate_row(A* out, bool accumulate, const A* x, int64_t row_step, Range kh,
                                 const std::vector<Block>& blocks, int64_t SW, int64_t DW, const A* w, int64_t KW) {
  constexpr int L = V::L;
  x += kh.lo * row_step;
  w += kh.lo * KW * L;
  for (const Block& b : blocks)
    BlockKernels<V, A>::fwd[b.size](out + b.first * L, accumulate, x + (b.first * SW + b.lo * DW) * L, row_step,
                                    SW * L, DW * L, w + b.lo * L, KW * L, kh.hi - kh.lo, b.hi - b.lo);
}

// ---- Batched path for small maps ----------------------------------------------------------------------
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
  const int64_t groups = ceil_div(p.N, images), items = groups * nblocks;
  const int nthreads = thread_count(threads, items, p.N * p.dst_C * g.HO * g.WO * taps * p.sources);
  const int64_t in_pixels = g.Hs * g.Ws, out_pixels = g.HO * g.WO;
  const int64_t tile_size = in_pixels * images * L, out_size = out_pixels * images * L;
  const int64_t single_size = std::max(in_pixels, out_pixels) * L, stage_size = 2 * single_size;
  const int64_t per_thread = tile_size + out_size + single_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
  Scratch<Range> row_taps(g.HO), col_taps(g.WO);
  for (int64_t o = 0; o < g.HO; ++o) row_taps.get()[o] = inside(o * g.SH + g.org_h, g.DH, g.KH, g.Hs - 1);
  for (int64_t o = 0; o < g.WO; ++o) col_taps.get()[o] = inside(o * g.SW + g.org_w, g.DW, g.KW, g.Ws - 1);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* out = tile + tile_size;
    A* single = out + out_size;
    A* stage = single + single_size;
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t grp = item / nblocks, blk = item % nblocks;
      // near-equal groups: the first N % groups get one image more
      const int64_t n0 = grp * (p.N / groups) + std::min(grp, p.N % groups);
      const int R = int(p.N / groups + (grp < p.N % groups ? 1 : 0));
      for (int64_t j = 0; j < p.sources; ++j) {
        int64_t chan[L];
        for (int l = 0; l < L; ++l) {
          const int64_t c = blk * L + l;
          chan[l] = c < p.dst_C ? c / p.chan_div * p.chan_mul + j : -1;
        }
        for (int r = 0; r < R; ++r) {
          gather_tile<T, A, L>(single, g.Hs, g.Ws,
                               ImageView<const T>{p.src + (n0 + r) * p.src_C * in_pixels, p.layout, p.src_C, g.Hs,
                                                  g.Ws},
                               chan, 0, 0, 1, 1, stage);
          for (int64_t px = 0; px < in_pixels; ++px)
            std::memcpy(tile + (px * R + r) * L, single + px * L, sizeof(A) * L);
        }
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

template <typename T>
DWCONV_TARGET void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads) {
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int L = V::L;
  const int64_t CO = s.CO(), nblocks = ceil_div(CO, L), taps = s.KH * s.KW;
  // Filter and bias per channel block: wt[block][kh][kw][lane], bt[block][lane] (zero past CO).
  Scratch<A> wt(nblocks * taps * L), bt(nblocks * L);
  for (int64_t co = 0; co < nblocks * L; ++co) {
    for (int64_t t = 0; t < taps; ++t)
      wt.get()[((co / L) * taps + t) * L + co % L] = co < CO ? to_acc(w[co * taps + t]) : A(0);
    bt.get()[co] = (b && co < CO) ? to_acc(b[co]) : A(0);
  }
  const Correlation g{s.HO, s.WO, s.KH, s.KW, s.SH, s.SW, s.DH, s.DW, -s.PT, -s.PL, s.H, s.W};
  if (const int64_t images = batch_images(g, s.N, L * sizeof(A))) {
    const BlockedProblem<T, A> p{g, s.layout, s.N, 1, s.M, 1, x, s.C, y, CO, wt.get(), bt.get()};
    return run_batched<V>(p, images, threads);
  }
  const int64_t cols = (s.WO - 1) * s.SW + (s.KW - 1) * s.DW + 1;
  const int64_t row_span = (s.KH - 1) * s.DH + 1;
  const std::vector<Block> blocks = output_blocks(s.WO, -s.PL, s.W - 1, s.SW, s.DW, s.KW);
  const std::vector<Range> rtaps = row_taps(s.HO, -s.PT, s.H - 1, s.SH, s.DH, s.KH);
  const int64_t TH = band_rows(s.layout, s.HO, cols, s.SH, row_span, L * sizeof(A));
  const int64_t max_rows = (TH - 1) * s.SH + row_span, nbands = ceil_div(s.HO, TH);
  const int64_t items = s.N * nblocks * nbands;
  const int nthreads = thread_count(threads, items, s.N * CO * s.HO * s.WO * taps);
  const int64_t tile_size = max_rows * cols * L, out_size = TH * s.WO * L;
  const int64_t stage_size = 2 * L * max_rows * std::max(cols, s.W);
  const int64_t per_thread = tile_size + out_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* out = tile + tile_size;
    A* stage = out + out_size;
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      // channel blocks innermost: in NHWC the next block reads the other half of the cache lines just read
      const int64_t blk = item % nblocks, band = (item / nblocks) % nbands, n = item / (nbands * nblocks);
      const int64_t oh0 = band * TH, th = std::min(TH, s.HO - oh0), rows = (th - 1) * s.SH + row_span;
      int64_t chan[L];
      for (int l = 0; l < L; ++l) chan[l] = blk * L + l < CO ? (blk * L + l) / s.M : -1;
      gather_tile<T, A, L>(tile, rows, cols, ImageView<const T>{x + n * s.C * s.H * s.W, s.layout, s.C, s.H, s.W},
                           chan, oh0 * s.SH - s.PT, -s.PL, 1, 1, stage);
      const A* wb = wt.get() + blk * taps * L;
      for (int64_t oh = 0; oh < th; ++oh)
        correlate_row<V>(out + oh * s.WO * L, false, tile + oh * s.SH * cols * L, s.DH * cols * L, rtaps[oh0 + oh],
                         blocks, s.SW, s.DW, wb, s.KW);
      scatter_tile<T, A, L>(ImageView<T>{y + n * CO * s.HO * s.WO, s.layout, CO, s.HO, s.WO}, out, th, blk * L,
                            int(std::min<int64_t>(L, CO - blk * L)), oh0, bt.get() + blk * L, stage);
    }
  }
}

template <typename T>
DWCONV_TARGET void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads) {
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int L = V::L;
  const int64_t CO = s.CO(), nblocks = ceil_div(s.C, L), taps = s.KH * s.KW;
  // Flipped filter per multiplier index j and input-channel block: wt[j][block][kh][kw][lane] =
  // w[c * M + j][KH-1-kh][KW-1-kw] with c = block * L + lane (zero past C).
  Scratch<A> wt(s.M * nblocks * taps * L);
  for (int64_t j = 0; j < s.M; ++j)
    for (int64_t c = 0; c < nblocks * L; ++c)
      for (int64_t t = 0; t < taps; ++t)
        wt.get()[((j * nblocks + c / L) * taps + t) * L + c % L] =
            c < s.C ? to_acc(w[(c * s.M + j) * taps + (taps - 1 - t)]) : A(0);
  if (s.SH == 1 && s.SW == 1) {
    const Correlation g{s.H, s.W, s.KH, s.KW, 1, 1, s.DH, s.DW, s.PT - (s.KH - 1) * s.DH, s.PL - (s.KW - 1) * s.DW,
                        s.HO, s.WO};
    if (const int64_t images = batch_images(g, s.N, L * sizeof(A))) {
      Scratch<A> zeros(nblocks * L);
      std::fill(zeros.get(), zeros.get() + nblocks * L, A(0));
      const BlockedProblem<T, A> p{g, s.layout, s.N, s.M, 1, s.M, dy, CO, dx, s.C, wt.get(), zeros.get()};
      return run_batched<V>(p, images, threads);
    }
  }
  // dx[ih][iw] = sum_{kh,kw} U[ih + kh*DH + r_off][iw + kw*DW + c_off] * wflip[kh][kw], U = dy upsampled by
  // the stride, r_off = PT - (KH-1)*DH, c_off = PL - (KW-1)*DW.
  const int64_t cols = s.W + (s.KW - 1) * s.DW, row_span = (s.KH - 1) * s.DH + 1;
  const int64_t r_origin = s.PT - (s.KH - 1) * s.DH, c_origin = s.PL - (s.KW - 1) * s.DW;
  const std::vector<Block> blocks = output_blocks(s.W, c_origin, (s.WO - 1) * s.SW, 1, s.DW, s.KW);
  const std::vector<Range> rtaps = row_taps(s.H, r_origin, (s.HO - 1) * s.SH, 1, s.DH, s.KH);
  const int64_t TH = band_rows(s.layout, s.H, cols, 1, row_span, L * sizeof(A));
  const int64_t max_rows = TH - 1 + row_span, nbands = ceil_div(s.H, TH);
  const int64_t items = s.N * nblocks * nbands;
  const int nthreads = thread_count(threads, items, s.N * CO * s.H * s.W * taps);
  const int64_t tile_size = max_rows * cols * L, out_size = TH * s.W * L;
  const int64_t stage_size = 2 * L * max_rows * std::max(cols, s.WO);
  const int64_t per_thread = tile_size + out_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* out = tile + tile_size;
    A* stage = out + out_size;
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      // channel blocks innermost: in NHWC the next block reads the other half of the cache lines just read
      const int64_t blk = item % nblocks, band = (item / nblocks) % nbands, n = item / (nbands * nblocks);
      const int64_t ih0 = band * TH, th = std::min(TH, s.H - ih0), rows = th - 1 + row_span;
      const ImageView<const T> src{dy + n * CO * s.HO * s.WO, s.layout, CO, s.HO, s.WO};
      for (int64_t j = 0; j < s.M; ++j) {
        int64_t chan[L];
        for (int l = 0; l < L; ++l) chan[l] = blk * L + l < s.C ? (blk * L + l) * s.M + j : -1;
        gather_tile<T, A, L>(tile, rows, cols, src, chan, ih0 + r_origin, c_origin, s.SH, s.SW, stage);
        const A* wb = wt.get() + (j * nblocks + blk) * taps * L;
        for (int64_t ih = 0; ih < th; ++ih)
          correlate_row<V>(out + ih * s.W * L, j > 0, tile + ih * cols * L, s.DH * cols * L, rtaps[ih0 + ih], blocks,
                           1, s.DW, wb, s.KW);
      }
      const A zeros[L] = {};
      scatter_tile<T, A, L>(ImageView<T>{dx + n * s.C * s.H * s.W, s.layout, s.C, s.H, s.W}, out, th, blk * L,
                            int(std::min<int64_t>(L, s.C - blk * L)), ih0, zeros, stage);
    }
  }
}

template <typename T>
DWCONV_TARGET void wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, int threads) {
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int L = V::L;
  const int64_t CO = s.CO(), nblocks = ceil_div(CO, L), taps = s.KH * s.KW;
  // Chunks (image group g, channel block): a fixed split that depends on the shape only, so the sum order,
  // and with it every bit of dw, is the same for any thread count. Groups are small enough that the cache
  // lines a chunk reads (x and grad_out of its images; NHWC: a whole line per pixel, half of it the next
  // block's) are still in L2 when the next chunk, the next block of the same images, reads them; and
  // numerous enough to keep 64 chunks for the threads.
  constexpr int64_t kChunkBytes = 256 * 1024;
  const int64_t image_bytes = (s.H * s.W + s.HO * s.WO) * std::max<int64_t>(64, L * sizeof(T));
  const int64_t group_images = std::max<int64_t>(1, kChunkBytes / image_bytes);
  const int64_t groups = std::clamp<int64_t>(std::max(ceil_div(64, nblocks), ceil_div(s.N, group_images)), 1,
                                             std::max<int64_t>(s.N, 1));
  const int64_t chunks = groups * nblocks;
  Scratch<A> partial(chunks * taps * L);  // [group][block][kh][kw][lane]
  const int64_t cols = (s.WO - 1) * s.SW + (s.KW - 1) * s.DW + 1, row_span = (s.KH - 1) * s.DH + 1;
  // Output rows whose tap kh reads inside the input; blocks of taps along W with the output columns where any
  // of them reads inside (tap kw of output ow reads column kw * DW - PL + ow * SW: roles of output_blocks'
  // outputs and taps swapped).
  const std::vector<Range> rows_inside = row_taps(s.KH, -s.PT, s.H - 1, s.DH, s.SH, s.HO);
  const std::vector<Block> tap_blocks = output_blocks(s.KW, -s.PL, s.W - 1, s.DW, s.SW, s.WO);
  const int64_t TH = band_rows(s.layout, s.HO, cols, s.SH, row_span, L * sizeof(A));
  const int64_t max_rows = (TH - 1) * s.SH + row_span, nbands = ceil_div(s.HO, TH);
  const int nthreads = thread_count(threads, chunks, s.N * CO * s.HO * s.WO * taps);
  const int64_t tile_size = max_rows * cols * L, dy_size = TH * s.WO * L;
  const int64_t stage_size = 2 * L * max_rows * std::max(cols, s.W);
  const int64_t per_thread = tile_size + dy_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* dyt = tile + tile_size;
    A* stage = dyt + dy_size;
#pragma omp for schedule(dynamic)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t g = chunk / nblocks, blk = chunk % nblocks;
      A* part = partial.get() + chunk * taps * L;
      std::fill(part, part + taps * L, A(0));
      int64_t xchan[L], ychan[L];
      for (int l = 0; l < L; ++l) {
        const int64_t co = blk * L + l;
        xchan[l] = co < CO ? co / s.M : -1;
        ychan[l] = co < CO ? co : -1;
      }
      for (int64_t n = g * s.N / groups; n < (g + 1) * s.N / groups; ++n)
        for (int64_t band = 0; band < nbands; ++band) {
          const int64_t oh0 = band * TH, th = std::min(TH, s.HO - oh0), rows = (th - 1) * s.SH + row_span;
          gather_tile<T, A, L>(tile, rows, cols,
                               ImageView<const T>{x + n * s.C * s.H * s.W, s.layout, s.C, s.H, s.W}, xchan,
                               oh0 * s.SH - s.PT, -s.PL, 1, 1, stage);
          gather_tile<T, A, L>(dyt, th, s.WO, ImageView<const T>{dy + n * CO * s.HO * s.WO, s.layout, CO, s.HO, s.WO},
                               ychan, oh0, 0, 1, 1, stage);
          for (int64_t kh = 0; kh < s.KH; ++kh) {
            const int64_t oh_lo = std::max(rows_inside[kh].lo, oh0), oh_hi = std::min(rows_inside[kh].hi, oh0 + th);
            if (oh_hi <= oh_lo) continue;
            for (const Block& b : tap_blocks)
              if (b.lo < b.hi)
                BlockKernels<V, A>::wgrad[b.size](
                    part + (kh * s.KW + b.first) * L, dyt + ((oh_lo - oh0) * s.WO + b.lo) * L, oh_hi - oh_lo,
                    b.hi - b.lo, s.WO * L,
                    tile + (((oh_lo - oh0) * s.SH + kh * s.DH) * cols + b.lo * s.SW + b.first * s.DW) * L,
                    s.SH * cols * L, s.SW * L, s.DW * L);
          }
        }
    }
    // dw[co][t] = sum over groups, in group order.
#pragma omp for schedule(static)
    for (int64_t co = 0; co < CO; ++co)
      for (int64_t t = 0; t < taps; ++t) {
        A sum = 0;
        for (int64_t g = 0; g < groups; ++g) sum += partial.get()[((g * nblocks + co / L) * taps + t) * L + co % L];
        dw[co * taps + t] = sum;
      }
  }
}

}  // namespace dwconv::cpu::DWCONV_ISA
