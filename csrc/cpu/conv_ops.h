// fwd / dgrad / wgrad over channel-blocked tiles, for one ISA (the including .cpp defines DWCONV_ISA, the
// namespace, and DWCONV_TARGET, the function attribute, then includes its vec_*.h).
//
// Work is split into items (image n, block of L channels, band of output rows); each item gathers its input
// rectangle (with the zero padding) into an fp32 / fp64 tile [row][col][lane], runs the register-blocked
// loops of microkernels.h over it and scatters the result. dgrad at stride 1 is the forward correlation of
// the flipped filter over grad_out; at larger strides it is split into stride phases, each a stride-1
// correlation of grad_out with the sub-filter of the taps that reach that phase's dx pixels. wgrad sums fixed
// chunks of (images x channel block) into a workspace, then reduces the chunks in a fixed order. Small maps under
// large filters take the batched path of batched.h instead (fwd, and dgrad at stride 1). The AVX-512 build adds
// paths without tiles where they apply (kernels_avx512.cpp defines their switches): NCHW planes with the lanes
// along W (plane_avx512.h) and channels_last read in place (nhwc_avx512.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/batched.h"
#include "cpu/microkernels.h"
#include "cpu/plan.h"
#include "cpu/scratch.h"
#include "cpu/tile.h"

namespace dwconv::cpu::DWCONV_ISA {

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

template <typename T>
DWCONV_TARGET void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads) {
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int L = V::L;
  const int64_t CO = s.CO(), nblocks = ceil_div(CO, L), taps = s.KH * s.KW;
  const Correlation g{s.HO, s.WO, s.KH, s.KW, s.SH, s.SW, s.DH, s.DW, -s.PT, -s.PL, s.H, s.W};
  const int64_t images = batch_images(g, s.N, L * sizeof(A));
#ifdef DWCONV_PLANE_KERNELS
  if constexpr (std::is_same_v<A, float>) {
    if (!images && planes_fit(g, s.layout)) {
      Scratch<float> wk(CO * taps), bias(CO);  // wk[co][kw][kh]
      for (int64_t co = 0; co < CO; ++co) {
        for (int64_t kh = 0; kh < s.KH; ++kh)
          for (int64_t kw = 0; kw < s.KW; ++kw) wk.get()[(co * s.KW + kw) * s.KH + kh] = to_acc(w[(co * s.KH + kh) * s.KW + kw]);
        bias.get()[co] = b ? to_acc(b[co]) : 0.f;
      }
      const BlockedProblem<T, A> p{g, s.layout, s.N, 1, s.M, 1, x, s.C, y, CO, nullptr, nullptr};
      return run_planes<T>(p, wk.get(), bias.get(), threads);
    }
  }
#endif
  // Filter and bias per channel block: wt[block][kh][kw][lane], bt[block][lane] (zero past CO).
  Scratch<A> wt(nblocks * taps * L), bt(nblocks * L);
  for (int64_t co = 0; co < nblocks * L; ++co) {
    for (int64_t t = 0; t < taps; ++t)
      wt.get()[((co / L) * taps + t) * L + co % L] = co < CO ? to_acc(w[co * taps + t]) : A(0);
    bt.get()[co] = (b && co < CO) ? to_acc(b[co]) : A(0);
  }
#ifdef DWCONV_NHWC_KERNELS
  if constexpr (std::is_same_v<A, float>) {
    if (nhwc_direct_fits(g, s.layout, s.M, images != 0)) {
      if (images) return run_nhwc_batched<T>(g, s.N, CO, x, y, wt.get(), bt.get(), threads);
      return run_nhwc_rows<T>(g, s.N, CO, x, y, wt.get(), bt.get(), threads);
    }
  }
#endif
  if (images) {
    const BlockedProblem<T, A> p{g, s.layout, s.N, 1, s.M, 1, x, s.C, y, CO, wt.get(), bt.get()};
    return run_batched<V>(p, images, threads);
  }
  const int64_t cols = (s.WO - 1) * s.SW + (s.KW - 1) * s.DW + 1;
  const int64_t row_span = (s.KH - 1) * s.DH + 1;
  const std::vector<Block> blocks = output_blocks(s.WO, -s.PL, s.W - 1, s.SW, s.DW, s.KW);
  const std::vector<Range> rtaps = row_taps(s.HO, -s.PT, s.H - 1, s.SH, s.DH, s.KH);
  const int64_t TH = band_rows(s.layout, s.HO, cols, s.SH, row_span, L * sizeof(A));
  const int64_t max_rows = (TH - 1) * s.SH + row_span, nbands = ceil_div(s.HO, TH);
  const int64_t group = blocks_per_item(s.layout, L * sizeof(T)), ngroups = ceil_div(nblocks, group);
  const int64_t items = s.N * ngroups * nbands;
  const int nthreads = thread_count(threads, items, s.N * CO * s.HO * s.WO * taps);
  const int64_t chunk = items_per_chunk(s.layout, items, nthreads);
  const int64_t tile_size = max_rows * cols * L, out_size = TH * s.WO * L;
  const int64_t stage_size = 2 * L * max_rows * std::max(cols, s.W);
  const int64_t per_thread = tile_size + out_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* out = tile + tile_size;
    A* stage = out + out_size;
#pragma omp for schedule(dynamic, chunk)
    for (int64_t item = 0; item < items; ++item) {
      // item: image n, band, group of channel blocks (innermost: in NHWC the next group reads the cache lines
      // next to those just read)
      const int64_t grp = item % ngroups, band = (item / ngroups) % nbands, n = item / (nbands * ngroups);
      for (int64_t blk = grp * group; blk < std::min(nblocks, (grp + 1) * group); ++blk) {
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
}

template <typename T>
DWCONV_TARGET void dgrad_strided(const ConvShape& s, const T* dy, const T* w, T* dx, int threads);

template <typename T>
DWCONV_TARGET void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads) {
  if (s.SH > 1 || s.SW > 1) return dgrad_strided(s, dy, w, dx, threads);
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int L = V::L;
  const int64_t CO = s.CO(), nblocks = ceil_div(s.C, L), taps = s.KH * s.KW;
  const Correlation g{s.H, s.W, s.KH, s.KW, 1, 1, s.DH, s.DW, s.PT - (s.KH - 1) * s.DH, s.PL - (s.KW - 1) * s.DW,
                      s.HO, s.WO};
  const int64_t images = batch_images(g, s.N, L * sizeof(A));
#ifdef DWCONV_PLANE_KERNELS
  if constexpr (std::is_same_v<A, float>) {
    if (!images && planes_fit(g, s.layout)) {
      Scratch<float> wk(CO * taps), zeros(s.C);  // wk[c][j][kw][kh]: the flipped filter of source c * M + j
      for (int64_t co = 0; co < CO; ++co)
        for (int64_t kh = 0; kh < s.KH; ++kh)
          for (int64_t kw = 0; kw < s.KW; ++kw)
            wk.get()[(co * s.KW + kw) * s.KH + kh] = to_acc(w[(co * s.KH + s.KH - 1 - kh) * s.KW + s.KW - 1 - kw]);
      std::fill(zeros.get(), zeros.get() + s.C, 0.f);
      const BlockedProblem<T, A> p{g, s.layout, s.N, s.M, 1, s.M, dy, CO, dx, s.C, nullptr, nullptr};
      return run_planes<T>(p, wk.get(), zeros.get(), threads);
    }
  }
#endif
  // Flipped filter per multiplier index j and input-channel block: wt[j][block][kh][kw][lane] =
  // w[c * M + j][KH-1-kh][KW-1-kw] with c = block * L + lane (zero past C).
  Scratch<A> wt(s.M * nblocks * taps * L);
  for (int64_t j = 0; j < s.M; ++j)
    for (int64_t c = 0; c < nblocks * L; ++c)
      for (int64_t t = 0; t < taps; ++t)
        wt.get()[((j * nblocks + c / L) * taps + t) * L + c % L] =
            c < s.C ? to_acc(w[(c * s.M + j) * taps + (taps - 1 - t)]) : A(0);
#ifdef DWCONV_NHWC_KERNELS
  if constexpr (std::is_same_v<A, float>) {
    if (nhwc_direct_fits(g, s.layout, s.M, images != 0)) {
      Scratch<float> zeros(nblocks * L);
      std::fill(zeros.get(), zeros.get() + nblocks * L, 0.f);
      if (images) return run_nhwc_batched<T>(g, s.N, s.C, dy, dx, wt.get(), zeros.get(), threads);
      return run_nhwc_rows<T>(g, s.N, s.C, dy, dx, wt.get(), zeros.get(), threads);
    }
  }
#endif
  if (images) {
    Scratch<A> zeros(nblocks * L);
    std::fill(zeros.get(), zeros.get() + nblocks * L, A(0));
    const BlockedProblem<T, A> p{g, s.layout, s.N, s.M, 1, s.M, dy, CO, dx, s.C, wt.get(), zeros.get()};
    return run_batched<V>(p, images, threads);
  }
  // dx[ih][iw] = sum_{kh,kw} dy[ih + kh*DH + r_off][iw + kw*DW + c_off] * wflip[kh][kw] (stride 1),
  // r_off = PT - (KH-1)*DH, c_off = PL - (KW-1)*DW.
  const int64_t cols = s.W + (s.KW - 1) * s.DW, row_span = (s.KH - 1) * s.DH + 1;
  const int64_t r_origin = s.PT - (s.KH - 1) * s.DH, c_origin = s.PL - (s.KW - 1) * s.DW;
  const std::vector<Block> blocks = output_blocks(s.W, c_origin, (s.WO - 1) * s.SW, 1, s.DW, s.KW);
  const std::vector<Range> rtaps = row_taps(s.H, r_origin, (s.HO - 1) * s.SH, 1, s.DH, s.KH);
  const int64_t TH = band_rows(s.layout, s.H, cols, 1, row_span, L * sizeof(A));
  const int64_t max_rows = TH - 1 + row_span, nbands = ceil_div(s.H, TH);
  const int64_t group = blocks_per_item(s.layout, L * sizeof(T)), ngroups = ceil_div(nblocks, group);
  const int64_t items = s.N * ngroups * nbands;
  const int nthreads = thread_count(threads, items, s.N * CO * s.H * s.W * taps);
  const int64_t chunk = items_per_chunk(s.layout, items, nthreads);
  const int64_t tile_size = max_rows * cols * L, out_size = TH * s.W * L;
  const int64_t stage_size = 2 * L * max_rows * std::max(cols, s.WO);
  const int64_t per_thread = tile_size + out_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* out = tile + tile_size;
    A* stage = out + out_size;
#pragma omp for schedule(dynamic, chunk)
    for (int64_t item = 0; item < items; ++item) {
      // item: image n, band, group of channel blocks (innermost: in NHWC the next group reads the cache lines
      // next to those just read)
      const int64_t grp = item % ngroups, band = (item / ngroups) % nbands, n = item / (nbands * ngroups);
      for (int64_t blk = grp * group; blk < std::min(nblocks, (grp + 1) * group); ++blk) {
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
}

// dgrad at stride > 1. dx pixel (rh + SH * i, rw + SW * j) only receives the taps of its phase (rh, rw)
// (stride_phases, plan.h): a stride-1 correlation of grad_out, not upsampled, with a sub-filter of about
// KH / SH x KW / SW taps. An item (image, band of row groups i, channel blocks) gathers the band's grad_out
// rows once per source j, runs every phase into ph[phase][i][jw][lane], then interleaves the phases into dx:
// NHWC fp32 / fp64 directly, otherwise through the dx tile [ih][iw][lane] and scatter_tile.
template <typename T>
DWCONV_TARGET void dgrad_strided(const ConvShape& s, const T* dy, const T* w, T* dx, int threads) {
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int L = V::L;
  const int64_t CO = s.CO(), nblocks = ceil_div(s.C, L), taps = s.KH * s.KW, nphases = s.SH * s.SW;
  const std::vector<Phase> rph = stride_phases(s.H, s.KH, s.SH, s.PT, s.DH);
  const std::vector<Phase> cph = stride_phases(s.W, s.KW, s.SW, s.PL, s.DW);
  // Sub-filters: phase p = rh * SW + rw has rph[rh].taps x cph[rw].taps taps at offset w_off[p]; every tap
  // belongs to exactly one phase, so they fill [j][block][KH * KW][lane]: tap (t, u) of phase p for channel
  // c = block * L + lane is w[c * M + j][rph[rh].taps[t]][cph[rw].taps[u]] (zero past C).
  std::vector<int64_t> w_off(nphases + 1, 0);
  for (int64_t p = 0; p < nphases; ++p)
    w_off[p + 1] = w_off[p] + int64_t(rph[p / s.SW].taps.size() * cph[p % s.SW].taps.size());
  Scratch<A> wt(s.M * nblocks * taps * L);
  for (int64_t j = 0; j < s.M; ++j)
    for (int64_t c = 0; c < nblocks * L; ++c)
      for (int64_t p = 0; p < nphases; ++p) {
        const std::vector<int64_t>&kh = rph[p / s.SW].taps, &kw = cph[p % s.SW].taps;
        for (size_t t = 0; t < kh.size(); ++t)
          for (size_t u = 0; u < kw.size(); ++u)
            wt.get()[((j * nblocks + c / L) * taps + w_off[p] + int64_t(t * kw.size() + u)) * L + c % L] =
                c < s.C ? to_acc(w[(c * s.M + j) * taps + kh[t] * s.KW + kw[u]]) : A(0);
      }
  // Row group i = dx rows i * SH .. i * SH + SH - 1; its phase outputs read grad_out rows i + org + t * dil.
  // The band's tile row 0 is grad_out row i0 + r_lo, column 0 is grad_out column c_lo (lo / hi: the extreme
  // offsets over the active phases).
  const auto extent = [](const std::vector<Phase>& phases, int64_t& lo, int64_t& hi) {
    lo = hi = 0;
    bool any = false;
    for (const Phase& ph : phases) {
      if (!ph.active()) continue;
      const int64_t last = ph.org + int64_t(ph.taps.size() - 1) * ph.dil;
      lo = any ? std::min(lo, ph.org) : ph.org;
      hi = any ? std::max(hi, last) : last;
      any = true;
    }
  };
  int64_t r_lo, r_hi, c_lo, c_hi;
  extent(rph, r_lo, r_hi);
  extent(cph, c_lo, c_hi);
  const int64_t HQ = ceil_div(s.H, s.SH), WQ = ceil_div(s.W, s.SW);
  const int64_t cols = WQ + c_hi - c_lo, row_span = r_hi - r_lo + 1;
  std::vector<std::vector<Range>> rtaps(s.SH);
  std::vector<std::vector<Block>> blocks(s.SW);
  for (const Phase& ph : rph)
    rtaps[ph.res] = row_taps(ph.count, ph.org, s.HO - 1, 1, ph.dil, int64_t(ph.taps.size()));
  for (const Phase& ph : cph)
    blocks[ph.res] = output_blocks(ph.count, ph.org, s.WO - 1, 1, ph.dil, int64_t(ph.taps.size()));
  const int64_t TQ = band_rows(s.layout, HQ, cols, 1, row_span, L * sizeof(A));
  const int64_t TH = TQ * s.SH, max_rows = TQ - 1 + row_span, nbands = ceil_div(HQ, TQ);
  const int64_t group = blocks_per_item(s.layout, L * sizeof(T)), ngroups = ceil_div(nblocks, group);
  const int64_t items = s.N * ngroups * nbands;
  const int nthreads = thread_count(threads, items, s.N * CO * s.HO * s.WO * taps);
  const int64_t chunk = items_per_chunk(s.layout, items, nthreads);
  const int64_t tile_size = max_rows * cols * L, ph_size = nphases * TQ * WQ * L, out_size = TH * s.W * L;
  const int64_t stage_size = std::max(2 * L * max_rows * std::max(cols, s.WO), L * TH * s.W);
  const int64_t per_thread = tile_size + ph_size + out_size + stage_size;
  Scratch<A> scratch(nthreads * per_thread);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* ph = tile + tile_size;
    A* out = ph + ph_size;
    A* stage = out + out_size;
#pragma omp for schedule(dynamic, chunk)
    for (int64_t item = 0; item < items; ++item) {
      // item: image n, band, group of channel blocks (innermost, as in the stride-1 path)
      const int64_t grp = item % ngroups, band = (item / ngroups) % nbands, n = item / (nbands * ngroups);
      const int64_t i0 = band * TQ, tq = std::min(TQ, HQ - i0), rows = tq - 1 + row_span;
      const int64_t ih0 = i0 * s.SH, th = std::min(TH, s.H - ih0);
      for (int64_t blk = grp * group; blk < std::min(nblocks, (grp + 1) * group); ++blk) {
        const ImageView<const T> src{dy + n * CO * s.HO * s.WO, s.layout, CO, s.HO, s.WO};
        for (int64_t j = 0; j < s.M; ++j) {
          int64_t chan[L];
          for (int l = 0; l < L; ++l) chan[l] = blk * L + l < s.C ? (blk * L + l) * s.M + j : -1;
          gather_tile<T, A, L>(tile, rows, cols, src, chan, i0 + r_lo, c_lo, 1, 1, stage);
          for (const Phase& pr : rph)
            for (const Phase& pc : cph) {
              if (!pr.active() || !pc.active()) continue;
              const int64_t p = pr.res * s.SW + pc.res;
              const A* wp = wt.get() + ((j * nblocks + blk) * taps + w_off[p]) * L;
              const A* x = tile + ((pr.org - r_lo) * cols + pc.org - c_lo) * L;
              for (int64_t i = i0; i < std::min(i0 + tq, pr.count); ++i)
                correlate_row<V>(ph + ((p * TQ + i - i0) * WQ) * L, j > 0, x + (i - i0) * cols * L,
                                 pr.dil * cols * L, rtaps[pr.res][i], blocks[pc.res], 1, pc.dil, wp,
                                 int64_t(pc.taps.size()));
            }
        }
        // Phase (rh, rw), output (i, jw) is dx pixel (i * SH + rh, jw * SW + rw); phases without taps give zeros.
        // NHWC blocks of L fp32 / fp64 channels go straight into dx, one vector per pixel; the rest into the dx
        // tile [ih - ih0][iw][lane], then through scatter_tile.
        const int lanes = int(std::min<int64_t>(L, s.C - blk * L));
        const ImageView<T> dst{dx + n * s.C * s.H * s.W, s.layout, s.C, s.H, s.W};
        bool direct = false;
        if constexpr (std::is_same_v<T, A>) direct = s.layout == Layout::NHWC && lanes == L;
        for (const Phase& pr : rph)
          for (const Phase& pc : cph) {
            const int64_t p = pr.res * s.SW + pc.res;
            const bool active = pr.active() && pc.active();
            for (int64_t i = i0; i < std::min(i0 + tq, pr.count); ++i) {
              const int64_t ih = i * s.SH + pr.res;
              A* drow = out + ((ih - ih0) * s.W + pc.res) * L;
              int64_t step = s.SW * L;
              if constexpr (std::is_same_v<T, A>)
                if (direct) {
                  drow = dst.row(ih) + pc.res * s.C + blk * L;
                  step = s.SW * s.C;
                }
              const A* srcp = ph + ((p * TQ + i - i0) * WQ) * L;
              if (active)
                for (int64_t jw = 0; jw < pc.count; ++jw) V::store(drow + jw * step, V::load(srcp + jw * L));
              else
                for (int64_t jw = 0; jw < pc.count; ++jw) V::store(drow + jw * step, V::zero());
            }
          }
        if (!direct) {
          const A zeros[L] = {};
          scatter_tile<T, A, L>(dst, out, th, blk * L, lanes, ih0, zeros, stage);
        }
      }
    }
  }
}

// Prefetches (into L2) the lines wgrad reads of image n for output channels co0 .. co0 + lanes - 1: x and
// grad_out; NCHW only where the planes are small (see the caller).
template <typename T>
DWCONV_TARGET void prefetch_image(const ConvShape& s, const T* x, const T* dy, int64_t n, int64_t co0, int64_t lanes) {
  const int64_t CO = s.CO(), in_px = s.H * s.W, out_px = s.HO * s.WO;
  const auto lines = [](const T* p, int64_t count, int64_t step) {
    for (int64_t i = 0; i < count; ++i) __builtin_prefetch(p + i * step, 0, 2);
  };
  if (s.layout == Layout::NHWC) {
    lines(x + n * s.C * in_px + co0 / s.M, in_px, s.C);
    lines(dy + n * CO * out_px + co0, out_px, CO);
    return;
  }
  if ((in_px + out_px) * lanes * int64_t(sizeof(T)) > 64 * 1024) return;
  const int64_t per_line = 64 / int64_t(sizeof(T));
  for (int64_t l = 0; l < lanes; ++l) {
    lines(x + (n * s.C + (co0 + l) / s.M) * in_px, ceil_div(in_px, per_line), per_line);
    lines(dy + (n * CO + co0 + l) * out_px, ceil_div(out_px, per_line), per_line);
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
  // numerous enough to keep 64 chunks for the threads. The image groups do not depend on the ISA's lane count
  // (a pixel's lines counted as 64 bytes, channels in blocks of 8), so neither does dw: every ISA sums each
  // tap in the same order (bf16 in avx512bf16 excepted: its dot products add pairs of columns or of images).
  constexpr int64_t kChunkBytes = 256 * 1024;
  const int64_t image_bytes = (s.H * s.W + s.HO * s.WO) * 64;
  const int64_t group_images = std::max<int64_t>(1, kChunkBytes / image_bytes);
  const int64_t groups = std::clamp<int64_t>(std::max(ceil_div(64, ceil_div(CO, 8)), ceil_div(s.N, group_images)),
                                             1, std::max<int64_t>(s.N, 1));
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
  const int64_t wgrad_chunk = items_per_chunk(s.layout, chunks, nthreads);
  const int64_t tile_size = max_rows * cols * L, dy_size = TH * s.WO * L;
  const int64_t stage_size = 2 * L * max_rows * std::max(cols, s.W);
  // bf16 with vdpbf16ps (avx512bf16): the tiles again as pairs along W (wgrad_bf16dot.h), unit stride / dilation,
  // rows of 10 outputs and more (measured 1.1-1.3x at 14 to 56, 0.9x at 7: 3 pairs and a single per row)
  bool pairs = false;
#ifdef DWCONV_BF16_DOT
  if constexpr (std::is_same_v<T, bf16>) pairs = s.SW == 1 && s.DW == 1 && s.WO >= 10;
#endif
  // the pairs tiles straight from the bf16 tensors (full channel blocks; channels_last without a multiplier)
  [[maybe_unused]] const bool direct_pairs = pairs && (s.layout == Layout::NCHW || s.M == 1);
  // and the image-pairs tiles likewise (gather_image_pairs_*)
  [[maybe_unused]] const bool direct_image_pairs = s.layout == Layout::NCHW || s.M == 1;
  // rows too short for pairs along W: pairs of images, two consecutive images of a chunk per vdpbf16ps
  bool image_pairs = false;
#ifdef DWCONV_BF16_DOT
  if constexpr (std::is_same_v<T, bf16>) image_pairs = !pairs && s.SW == 1 && s.DW == 1;
#endif
  const int64_t pairs_size = pairs || image_pairs ? tile_size + dy_size : 0;
  const int64_t second_size = image_pairs ? tile_size + dy_size : 0;  // the fp32 tiles of the pair's second image
  const int64_t per_thread = tile_size + dy_size + stage_size + pairs_size + second_size;
  Scratch<A> scratch(nthreads * per_thread);
#pragma omp parallel num_threads(nthreads)
  {
    A* tile = scratch.get() + omp_get_thread_num() * per_thread;
    A* dyt = tile + tile_size;
    A* stage = dyt + dy_size;
    // the pairs tiles: 32-bit elements in the fp32 scratch (there only with column or image pairs)
    [[maybe_unused]] uint32_t* tile_pairs =
        pairs || image_pairs ? reinterpret_cast<uint32_t*>(stage + stage_size) : nullptr;
    [[maybe_unused]] uint32_t* dy_pairs = pairs || image_pairs ? tile_pairs + tile_size : nullptr;
    [[maybe_unused]] A* tile2 = image_pairs ? stage + stage_size + pairs_size : nullptr;
    [[maybe_unused]] A* dyt2 = image_pairs ? tile2 + tile_size : nullptr;
    // NHWC: one contiguous range of chunks per thread, so the channel blocks of an image group (which share
    // its pixels' cache lines) stay on one core; the sum order does not depend on who computes a chunk.
#pragma omp for schedule(dynamic, wgrad_chunk)
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
      const int64_t n_end = (g + 1) * s.N / groups;
      for (int64_t n = g * s.N / groups; n < n_end; ++n) {
        [[maybe_unused]] const bool image_pair = image_pairs && n + 1 < n_end;  // n and n + 1 together
        // While image n is summed, the lines of the chunk's next image (after the last one: the next block's
        // first) are fetched into L2; measured 4-16% faster at C=384 and 1536 (NHWC: a pixel's 64 bytes are
        // a line of their own, C * sizeof(T) apart, which the hardware prefetchers do not follow). NCHW 56x56
        // planes (400 KiB per image and block) gained nothing and are left alone.
        int64_t next = n + (image_pair ? 2 : 1), next_blk = blk;
        if (next >= n_end) {
          next = g * s.N / groups;
          ++next_blk;
        }
        if (next_blk < nblocks) prefetch_image(s, x, dy, next, next_blk * L, std::min<int64_t>(L, CO - next_blk * L));
        if (image_pair && next_blk == blk && next + 1 < n_end)  // the next pair's second image
          prefetch_image(s, x, dy, next + 1, blk * L, std::min<int64_t>(L, CO - blk * L));
        for (int64_t band = 0; band < nbands; ++band) {
          const int64_t oh0 = band * TH, th = std::min(TH, s.HO - oh0), rows = (th - 1) * s.SH + row_span;
          // The x tile's rows r_lo .. r_hi - 1 lie inside the map, and the kernels below read no others (each tap
          // kh runs only the output rows whose source row lies inside): only they are gathered and paired.
          const int64_t x_row0 = oh0 * s.SH - s.PT;  // the source row of tile row 0
          const int64_t r_lo = std::clamp<int64_t>(-x_row0, 0, rows), r_hi = std::clamp<int64_t>(s.H - x_row0, r_lo, rows);
          const int64_t inside_at = r_lo * cols * L;
          const ImageView<const T> x_image{x + n * s.C * s.H * s.W, s.layout, s.C, s.H, s.W};
          const ImageView<const T> dy_image{dy + n * CO * s.HO * s.WO, s.layout, CO, s.HO, s.WO};
          bool image_pairs_made = false;  // straight from the bf16 tensors (below)
#ifdef DWCONV_BF16_DOT
          if constexpr (std::is_same_v<T, bf16>) {
            if (image_pair && direct_image_pairs && (blk + 1) * L <= CO) {
              const ImageView<const T> x_next{x + (n + 1) * s.C * s.H * s.W, s.layout, s.C, s.H, s.W};
              const ImageView<const T> dy_next{dy + (n + 1) * CO * s.HO * s.WO, s.layout, CO, s.HO, s.WO};
              if (s.layout == Layout::NHWC) {
                gather_image_pairs_nhwc(tile_pairs + inside_at, r_hi - r_lo, cols, x_image, x_next, blk * L,
                                        x_row0 + r_lo, -s.PL);
                gather_image_pairs_nhwc(dy_pairs, th, s.WO, dy_image, dy_next, blk * L, oh0, 0);
              } else {
                gather_image_pairs_nchw(tile_pairs + inside_at, r_hi - r_lo, cols, x_image, x_next, xchan,
                                        x_row0 + r_lo, -s.PL, stage);
                gather_image_pairs_nchw(dy_pairs, th, s.WO, dy_image, dy_next, ychan, oh0, 0, stage);
              }
              image_pairs_made = true;
            } else if (direct_pairs && (blk + 1) * L <= CO) {
              if (s.layout == Layout::NHWC) {
                gather_pairs_nhwc(tile_pairs + inside_at, r_hi - r_lo, cols, x_image, blk * L, x_row0 + r_lo, -s.PL);
                gather_pairs_nhwc(dy_pairs, th, s.WO, dy_image, blk * L, oh0, 0);
              } else {
                gather_pairs_nchw(tile_pairs + inside_at, r_hi - r_lo, cols, x_image, xchan, x_row0 + r_lo, -s.PL);
                gather_pairs_nchw(dy_pairs, th, s.WO, dy_image, ychan, oh0, 0);
              }
            } else if (pairs) {
              gather_tile<T, A, L>(tile + inside_at, r_hi - r_lo, cols, x_image, xchan, x_row0 + r_lo, -s.PL, 1, 1,
                                   stage);
              gather_tile<T, A, L>(dyt, th, s.WO, dy_image, ychan, oh0, 0, 1, 1, stage);
              tile_to_pairs(tile_pairs + inside_at, tile + inside_at, r_hi - r_lo, cols);
              tile_to_pairs(dy_pairs, dyt, th, s.WO);
            }
          }
#endif
          if (!pairs && !image_pairs_made) {
            gather_tile<T, A, L>(tile + inside_at, r_hi - r_lo, cols, x_image, xchan, x_row0 + r_lo, -s.PL, 1, 1, stage);
            gather_tile<T, A, L>(dyt, th, s.WO, dy_image, ychan, oh0, 0, 1, 1, stage);
          }
#ifdef DWCONV_BF16_DOT
          if constexpr (std::is_same_v<A, float>)
            if (image_pair && !image_pairs_made) {
              const ImageView<const T> x_next{x + (n + 1) * s.C * s.H * s.W, s.layout, s.C, s.H, s.W};
              const ImageView<const T> dy_next{dy + (n + 1) * CO * s.HO * s.WO, s.layout, CO, s.HO, s.WO};
              gather_tile<T, A, L>(tile2 + inside_at, r_hi - r_lo, cols, x_next, xchan, x_row0 + r_lo, -s.PL, 1, 1,
                                   stage);
              gather_tile<T, A, L>(dyt2, th, s.WO, dy_next, ychan, oh0, 0, 1, 1, stage);
              images_to_pairs(tile_pairs + inside_at, tile + inside_at, tile2 + inside_at, (r_hi - r_lo) * cols * L);
              images_to_pairs(dy_pairs, dyt, dyt2, th * s.WO * L);
            }
#endif
          for (int64_t kh = 0; kh < s.KH; ++kh) {
            const int64_t oh_lo = std::max(rows_inside[kh].lo, oh0), oh_hi = std::min(rows_inside[kh].hi, oh0 + th);
            if (oh_hi <= oh_lo) continue;
            for (const Block& b : tap_blocks) {
              if (b.lo >= b.hi) continue;
#ifdef DWCONV_BF16_DOT
              if constexpr (std::is_same_v<A, float>)
                if (pairs || image_pair) {  // pairs along W, or of images: the same tiles' layout
                  (pairs ? kWgradPairTaps : kWgradImagePairTaps)[b.size](
                      part + (kh * s.KW + b.first) * L, dy_pairs + ((oh_lo - oh0) * s.WO + b.lo) * L, oh_hi - oh_lo,
                      b.hi - b.lo, s.WO * L, tile_pairs + (((oh_lo - oh0) * s.SH + kh * s.DH) * cols + b.lo + b.first) * L,
                      s.SH * cols * L);
                  continue;
                }
#endif
              BlockKernels<V, A>::wgrad[b.size](
                  part + (kh * s.KW + b.first) * L, dyt + ((oh_lo - oh0) * s.WO + b.lo) * L, oh_hi - oh_lo,
                  b.hi - b.lo, s.WO * L,
                  tile + (((oh_lo - oh0) * s.SH + kh * s.DH) * cols + b.lo * s.SW + b.first * s.DW) * L,
                  s.SH * cols * L, s.SW * L, s.DW * L);
            }
          }
        }
        if (image_pair) ++n;  // summed with n
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
