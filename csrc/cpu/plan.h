// Work planning shared by the windowed and batched drivers: band heights, thread counts, the taps of each
// output that read inside the input, and the register blocks of a row. Part of the per-ISA kernels: needs
// DWCONV_ISA / DWCONV_TARGET (isa.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/microkernels.h"

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

// Channel blocks per work item. NHWC: a block of L channels is 16-32 bytes of a pixel, so neighbouring blocks
// share cache lines; if they went to different threads, both would write (and read) the same lines
// concurrently (false sharing: measured 2 threads no faster than 1, docs/perf_cpu.md v9). An item takes whole
// 64-byte lines' worth of blocks instead. NCHW: a block's planes are its own, one block per item.
inline int64_t blocks_per_item(Layout layout, int64_t block_bytes) {
  return layout == Layout::NHWC ? std::max<int64_t>(1, 64 / std::max<int64_t>(1, block_bytes)) : 1;
}

// Items per scheduling chunk. NHWC: contiguous ranges, one per thread (items are uniform), so each thread
// streams through its own images like a single thread does; interleaving neighbouring items across threads
// left both cores fetching the same pixels' lines (docs/perf_cpu.md v9: N=32 C1536 14x14 K7 fwd on 2 threads
// 13.8 -> 9.2 ms). NCHW: one item at a time (a block's planes are its own).
inline int64_t items_per_chunk(Layout layout, int64_t items, int threads) {
  return layout == Layout::NHWC ? std::max<int64_t>(1, ceil_div(items, std::max(threads, 1))) : 1;
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

// The blocks of one output row (at most max_block outputs each): along W, output ow's tap kw reads source
// column c_origin + ow * SW + kw * DW, inside the input when in [0, col_last]. The same for every row and item,
// so computed once per call.
inline std::vector<Block> output_blocks(int64_t WO, int64_t c_origin, int64_t col_last, int64_t SW, int64_t DW,
                                        int64_t KW, int max_block = kMaxBlock) {
  std::vector<Block> blocks;
  for (int64_t i = 0, ow = 0, n = block_count(WO, max_block); i < n; ++i) {
    const int R = block_size(WO, i, max_block);
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

// Strided dgrad, one dimension: dx index res + S * o (o < count) receives only the filter taps k with
// (res + S * o + P - k * D) % S == 0, i.e. k in `taps` (largest first). Sub-filter tap t = taps[t] reads
// grad_out index o + org + t * dil: a stride-1 correlation over grad_out with dilation dil = D / gcd(S, D).
struct Phase {
  int64_t res, count, org, dil;
  std::vector<int64_t> taps;
  bool active() const { return count > 0 && !taps.empty(); }
};

// The S phases of a dimension of n dx pixels, K taps, stride S, leading padding P, dilation D.
inline std::vector<Phase> stride_phases(int64_t n, int64_t K, int64_t S, int64_t P, int64_t D) {
  std::vector<Phase> phases(S);
  for (int64_t r = 0; r < S; ++r) {
    Phase& ph = phases[r];
    ph.res = r;
    ph.count = r < n ? (n - 1 - r) / S + 1 : 0;
    for (int64_t k = K - 1; k >= 0; --k)
      if ((r + P - k * D) % S == 0) ph.taps.push_back(k);
    // grad_out index of tap k for o = 0 is (r + P - k * D) / S (exact); consecutive taps are S / gcd(S, D) apart.
    ph.org = ph.taps.empty() ? 0 : (r + P - ph.taps[0] * D) / S;
    ph.dil = ph.taps.size() > 1 ? (ph.taps[0] - ph.taps[1]) * D / S : 1;
  }
  return phases;
}

}  // namespace dwconv::cpu::DWCONV_ISA
