// NCHW forward / stride-1 dgrad with the vector lanes along W (AVX-512 only; included by kernels_avx512.cpp
// before conv_ops.h, which calls run_planes where planes_fit).
//
// The channel-blocked path moves every NCHW pixel through an 8 x 8 / 16 x 16 transpose into a tile and back;
// on 14x14 maps that costs as much as the arithmetic. Here a vector is 16 consecutive output columns of one
// plane and the data stays where it is: a block of R output rows is R accumulators; each input row of the
// block's window is loaded once per filter column (a masked load: lanes whose tap reads outside the row, or past
// the segment, read zero and touch no memory) and feeds the up to KH output rows it reaches, the weight
// broadcast from memory in the FMA itself. Output row oh receives its taps in (kh, kw) order, as in the
// channel-blocked kernels, so the results are the same bits (except bf16 in the avx512bf16 build, which adds
// pairs of taps with vdpbf16ps from a plane of column pairs: plane_to_pairs).
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

#define DWCONV_PLANE_INLINE DWCONV_TARGET __attribute__((always_inline)) inline

// Whether T runs on vdpbf16ps (bf16 in the avx512bf16 kernels, which define DWCONV_BF16_DOT).
#ifdef DWCONV_BF16_DOT
template <typename T>
inline constexpr bool kDotProducts = std::is_same_v<T, bf16>;
#else
template <typename T>
inline constexpr bool kDotProducts = false;
#endif

constexpr int kPlaneLanes = 16;  // output columns per vector
constexpr int kPlaneRows = 16;   // output rows per register block (accumulators)
constexpr int64_t kPlanePrefetchBytes = 8 * 1024;

// The lanes of the 16-column segment starting at output column ow0 that hold outputs (of WO).
inline __mmask16 segment_lanes(int64_t WO, int64_t ow0) {
  return __mmask16((1u << std::min<int64_t>(kPlaneLanes, WO - ow0)) - 1);
}

// One column segment of a block: per filter column kw, the element offset of lane 0's tap within a source row
// and the lanes that read inside the row.
struct SegmentTaps {
  const int64_t* col;
  const __mmask16* mask;
};

// The accumulators one input row feeds: filter row kh (Lo <= kh <= Hi) goes to register of(kh) = Base - kh,
// taken modulo Mod when Mod > 0 (the columns' rolling registers, below).
template <int Lo, int Hi, int Base, int Mod = 0>
struct RowSlots {
  static constexpr int lo = Lo, hi = Hi;
  static constexpr int of(int kh) { return Mod ? (Base - kh + Mod) % Mod : Base - kh; }
};

// Input row I of a block's window: filter rows kh with 0 <= I - kh < R.
template <int KH, int R, int I>
using BlockSlots = RowSlots<(I - R + 1 > 0 ? I - R + 1 : 0), (I < KH - 1 ? I : KH - 1), I>;

// acc[S::of(kh)] += x[kw * DW + lane] * w[kw][kh] for the filter rows kh of S, every kw in order (x: the
// source row at the segment's lane-0 tap). w: [KW][KH], broadcast per tap.
template <int KH, class S>
DWCONV_PLANE_INLINE void row_taps(__m512* acc, const float* x, const float* w, int64_t KW, int64_t DW,
                                  const __mmask16* mask) {
  for (int64_t kw = 0; kw < KW; ++kw, x += DW, w += KH) {
    const __m512 v = _mm512_maskz_loadu_ps(mask[kw], x);
#pragma GCC unroll 16
    for (int kh = S::lo; kh <= S::hi; ++kh) acc[S::of(kh)] = _mm512_fmadd_ps(v, _mm512_set1_ps(w[kh]), acc[S::of(kh)]);
  }
}

#ifdef DWCONV_BF16_DOT
// acc += the pair products of v with the weight pair *w in every lane, the weight broadcast in vdpbf16ps' own
// memory operand ({1to16}). From _mm512_dpbf16_ps(acc, v, _mm512_set1_epi32(*w)) GCC emits a separate
// vpbroadcastd for every product (as it does not for an FMA's broadcast operand).
DWCONV_PLANE_INLINE void dot_broadcast(__m512& acc, __m512i v, const uint32_t* w) {
  asm("vdpbf16ps %[w]%{1to16%}, %[v], %[acc]" : [acc] "+v"(acc) : [v] "v"(v), [w] "m"(*w));
}

// v with the second value of every pair zeroed.
DWCONV_PLANE_INLINE __m512i first_halves(__m512i v) { return _mm512_and_si512(v, _mm512_set1_epi32(0xffff)); }

// The same for bf16 with vdpbf16ps, two filter columns per instruction, from a plane of column pairs
// (plane_to_pairs): element j of a pairs row holds the source row's columns org + j and org + j + DW, so the
// vector at col0 + 2q * DW holds lane l's taps 2q and 2q + 1. w: [pairs][KH], each filter row's two weights of
// a pair as one 32-bit broadcast. With an odd filter width (`single_last`) the last pair's second weight is
// zero and its second tap, a pixel outside the filter, is masked off (0 * Inf would be NaN).
template <int KH, class S>
DWCONV_PLANE_INLINE void pair_taps(__m512* acc, __m512i v, const uint32_t* w) {
#pragma GCC unroll 16
  for (int kh = S::lo; kh <= S::hi; ++kh) dot_broadcast(acc[S::of(kh)], v, w + kh);
}

template <int KH, class S>
DWCONV_PLANE_INLINE void row_taps(__m512* acc, const uint32_t* x, const uint32_t* w, int64_t pairs, int64_t DW,
                                  const __mmask16* single_last) {
  const int64_t full = pairs - (single_last[0] ? 1 : 0);
  for (int64_t q = 0; q < full; ++q, x += 2 * DW, w += KH) pair_taps<KH, S>(acc, _mm512_loadu_si512(x), w);
  if (full < pairs) pair_taps<KH, S>(acc, first_halves(_mm512_loadu_si512(x)), w);
}
#endif

template <int KH, int R, typename Src, typename W, int... I>
DWCONV_PLANE_INLINE void plane_window(__m512* acc, const Src* src, int64_t Ws, int64_t Hs, int64_t ih0,
                                      const W* w, int64_t KW, int64_t DW, int64_t col0, const __mmask16* mask,
                                      std::integer_sequence<int, I...>) {
  ((ih0 + I >= 0 && ih0 + I < Hs
        ? row_taps<KH, BlockSlots<KH, R, I>>(acc, src + (ih0 + I) * Ws + col0, w, KW, DW, mask)
        : void()),
   ...);
}

// out[r][lane] = sum over sources s of the correlation of plane src[s] (Hs x Ws) with filter w[s] for output rows
// r < R of the block (input row ih0 + r + kh) and one 16-column segment. fp32 sources: w[s] is [KW][KH] and KW the
// filter width; pairs planes of bf16 (uint32_t, vdpbf16ps): w[s] is [pairs][KH] and KW the number of column pairs.
template <int KH, int R, typename Src, typename W>
DWCONV_TARGET void plane_block(float* out, const Src* const* src, const W* const* w, int sources, int64_t Ws,
                               int64_t Hs, int64_t ih0, int64_t KW, int64_t DW, int64_t col0, const __mmask16* mask) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int s = 0; s < sources; ++s)
    plane_window<KH, R>(acc, src[s], Ws, Hs, ih0, w[s], KW, DW, col0, mask,
                        std::make_integer_sequence<int, R + KH - 1>());
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * kPlaneLanes, acc[r]);
}

template <typename Src, typename W>
using PlaneBlockFn = void (*)(float*, const Src* const*, const W* const*, int, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, const __mmask16*);

template <int KH, typename Src, typename W, int... R>
constexpr std::array<PlaneBlockFn<Src, W>, kPlaneRows + 1> plane_blocks_for(std::integer_sequence<int, R...>) {
  return {nullptr, plane_block<KH, R + 1, Src, W>...};
}

// The filter heights with compiled blocks (others take the channel-blocked path).
template <typename Src = float, typename W = float>
inline const PlaneBlockFn<Src, W>* plane_blocks(int64_t KH) {
  constexpr auto rows = std::make_integer_sequence<int, kPlaneRows>();
  static constexpr auto k3 = plane_blocks_for<3, Src, W>(rows);
  static constexpr auto k5 = plane_blocks_for<5, Src, W>(rows);
  static constexpr auto k7 = plane_blocks_for<7, Src, W>(rows);
  static constexpr auto k9 = plane_blocks_for<9, Src, W>(rows);
  static constexpr auto k11 = plane_blocks_for<11, Src, W>(rows);
  static constexpr auto k13 = plane_blocks_for<13, Src, W>(rows);
  switch (KH) {
    case 3: return k3.data();
    case 5: return k5.data();
    case 7: return k7.data();
    case 9: return k9.data();
    case 11: return k11.data();
    case 13: return k13.data();
    default: return nullptr;
  }
}

// out[lane] (T) = acc[lane] + bias for lanes in `lanes`.
template <typename T>
DWCONV_PLANE_INLINE void store_lanes(T* out, __m512 acc, float bias, __mmask16 lanes) {
  const __m512 v = _mm512_add_ps(acc, _mm512_set1_ps(bias));
  if constexpr (std::is_same_v<T, float>) _mm512_mask_storeu_ps(out, lanes, v);
  else _mm256_mask_storeu_epi16(out, lanes, std::is_same_v<T, bf16> ? bf16_bits(v) : f16_bits(v));
}

#ifdef DWCONV_BF16_DOT
// Two planes at once (bf16 pairs planes, one source each): plane_block's products for planes a and b interleaved
// step by step, so every step has twice the independent products. An output row's accumulator takes its products
// in one dependent chain, and window rows near a block's top or bottom feed few accumulators: one plane alone
// leaves the products' latency uncovered there. 2 x R accumulators and two input vectors: R <= kDualRowsMax.
constexpr int kDualRowsMin = 10, kDualRowsMax = 14;

// Where the two-plane kernel finds a window row's column pairs (the vector of pair q holds lane l's taps 2q and
// 2q + 1): a row of a pairs plane (plane_to_pairs), the vector at 2q * DW; or, when the pairs' columns span at
// most 32 words, the bf16 row itself, one masked load per row (zero outside the row) and one vpermw per pair
// (word indices `index`: [pairs][32]), so that no pairs plane is written and read back.
// One per segment (output columns ow0 to ow0 + 15).
struct PairsPlaneRows {
  using Plane = uint32_t;
  int64_t row, DW, ow0;  // a pairs row's elements; the filter's column dilation; the segment
  struct Row {
    const uint32_t* x;
    int64_t DW;
    DWCONV_PLANE_INLINE __m512i pair(int64_t q) const { return _mm512_loadu_si512(x + 2 * q * DW); }
  };
  DWCONV_PLANE_INLINE Row at(const uint32_t* plane, int64_t r) const { return {plane + r * row + ow0, DW}; }
};

struct Bf16PlaneRows {
  using Plane = bf16;
  int64_t Ws, start;  // source row length; source column of the segment's first tap (ow0 + org_w)
  __mmask32 inside;   // the words of the 32 from `start` that lie in the row
  const uint16_t* index;
  struct Row {
    __m512i words;
    const uint16_t* index;
    DWCONV_PLANE_INLINE __m512i pair(int64_t q) const {
      return _mm512_permutexvar_epi16(_mm512_loadu_si512(index + q * 32), words);
    }
  };
  DWCONV_PLANE_INLINE Row at(const bf16* plane, int64_t r) const {
    return {_mm512_maskz_loadu_epi16(inside, plane + r * Ws + start), index};
  }
};

template <int KH, class S, class Row>
DWCONV_PLANE_INLINE void dual_row_taps(__m512* acc_a, __m512* acc_b, const Row& xa, const Row& xb, const uint32_t* wa,
                                       const uint32_t* wb, int64_t pairs, bool single_last) {
  const int64_t full = pairs - (single_last ? 1 : 0);
  for (int64_t q = 0; q < pairs; ++q, wa += KH, wb += KH) {
    __m512i va = xa.pair(q), vb = xb.pair(q);
    if (q == full) {  // the odd last column (row_taps)
      va = first_halves(va);
      vb = first_halves(vb);
    }
#pragma GCC unroll 16
    for (int kh = S::lo; kh <= S::hi; ++kh) {
      dot_broadcast(acc_a[S::of(kh)], va, wa + kh);
      dot_broadcast(acc_b[S::of(kh)], vb, wb + kh);
    }
  }
}

template <int KH, int R, class Rows, int... I>
DWCONV_PLANE_INLINE void dual_window(__m512* acc_a, __m512* acc_b, const Rows& rows, const typename Rows::Plane* a,
                                     const typename Rows::Plane* b, const uint32_t* wa, const uint32_t* wb, int64_t Hs,
                                     int64_t ih0, int64_t pairs, bool single_last, std::integer_sequence<int, I...>) {
  ((ih0 + I >= 0 && ih0 + I < Hs
        ? dual_row_taps<KH, BlockSlots<KH, R, I>>(acc_a, acc_b, rows.at(a, ih0 + I), rows.at(b, ih0 + I), wa, wb,
                                                  pairs, single_last)
        : void()),
   ...);
}

// plane_block of two single-source planes a and b (filters wa, wb [pairs][KH]; the planes' rows as `rows` reads
// them), stored from the registers: row r of the segment's lanes to dst_a / dst_b + r * WO, bias added
// (store_lanes).
template <int KH, int R, class Rows>
DWCONV_TARGET void plane_block_dual(bf16* dst_a, bf16* dst_b, int64_t WO, float bias_a, float bias_b, __mmask16 lanes,
                                    const Rows& rows, const typename Rows::Plane* a, const typename Rows::Plane* b,
                                    const uint32_t* wa, const uint32_t* wb, int64_t Hs, int64_t ih0, int64_t pairs,
                                    bool single_last) {
  __m512 acc_a[R], acc_b[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc_a[r] = acc_b[r] = _mm512_setzero_ps();
  dual_window<KH, R>(acc_a, acc_b, rows, a, b, wa, wb, Hs, ih0, pairs, single_last,
                     std::make_integer_sequence<int, R + KH - 1>());
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    store_lanes<bf16>(dst_a + r * WO, acc_a[r], bias_a, lanes);
    store_lanes<bf16>(dst_b + r * WO, acc_b[r], bias_b, lanes);
  }
}

template <class Rows>
using DualBlockFn = void (*)(bf16*, bf16*, int64_t, float, float, __mmask16, const Rows&, const typename Rows::Plane*,
                             const typename Rows::Plane*, const uint32_t*, const uint32_t*, int64_t, int64_t, int64_t,
                             bool);

template <class Rows, int KH, int... R>
constexpr std::array<DualBlockFn<Rows>, kDualRowsMax - kDualRowsMin + 1> dual_blocks_for(
    std::integer_sequence<int, R...>) {
  return {plane_block_dual<KH, kDualRowsMin + R, Rows>...};
}

// The two-plane block of filter height KH and R rows; null where none is compiled.
template <class Rows>
inline DualBlockFn<Rows> dual_block(int64_t KH, int64_t R) {
  constexpr auto rows = std::make_integer_sequence<int, kDualRowsMax - kDualRowsMin + 1>();
  static constexpr auto k3 = dual_blocks_for<Rows, 3>(rows), k5 = dual_blocks_for<Rows, 5>(rows),
                        k7 = dual_blocks_for<Rows, 7>(rows), k9 = dual_blocks_for<Rows, 9>(rows),
                        k11 = dual_blocks_for<Rows, 11>(rows), k13 = dual_blocks_for<Rows, 13>(rows);
  if (R < kDualRowsMin || R > kDualRowsMax) return nullptr;
  switch (KH) {
    case 3: return k3[R - kDualRowsMin];
    case 5: return k5[R - kDualRowsMin];
    case 7: return k7[R - kDualRowsMin];
    case 9: return k9[R - kDualRowsMin];
    case 11: return k11[R - kDualRowsMin];
    case 13: return k13[R - kDualRowsMin];
    default: return nullptr;
  }
}
#endif

// Whether a correlation runs on the plane kernels: NCHW, unit stride and row dilation, a compiled filter height,
// and output rows that fill most of their vectors (7-wide maps waste 9 of 16 lanes: the batched path is better).
inline bool planes_fit(const Correlation& g, Layout layout) {
  if (layout != Layout::NCHW || g.SH != 1 || g.SW != 1 || g.DH != 1 || !plane_blocks(g.KH)) return false;
  const int64_t vectors = ceil_div(g.WO, kPlaneLanes);
  return g.WO >= 10 && double(g.WO) / double(vectors * kPlaneLanes) >= 0.7;
}

// dst[i] = to_acc(src[i]) for i < n (bf16: exact; f16: exact, a signalling NaN comes out quiet, which no result
// can tell: any arithmetic on it quiets it too).
template <typename T>
DWCONV_TARGET void plane_to_float(float* dst, const T* src, int64_t n) {
  int64_t i = 0;
  for (; i + kPlaneLanes <= n; i += kPlaneLanes) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    if constexpr (std::is_same_v<T, bf16>) _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    else _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = to_acc(src[i]);
}

// The pairs plane of a bf16 plane (Hs x Ws): dst[r * row + j] = (src[r][org + j], src[r][org + j + DW]) for
// j < row, zero outside the source row (row: a multiple of 16).
DWCONV_TARGET inline void plane_to_pairs(uint32_t* dst, const bf16* src, int64_t Hs, int64_t Ws, int64_t org,
                                         int64_t DW, int64_t row) {
  const auto inside = [Ws](int64_t c0) {  // lanes l with 0 <= c0 + l < Ws
    const int64_t lo = std::clamp<int64_t>(-c0, 0, kPlaneLanes), hi = std::clamp<int64_t>(Ws - c0, 0, kPlaneLanes);
    return __mmask16(hi > lo ? ((1u << hi) - 1) & ~((1u << lo) - 1) : 0);
  };
  for (int64_t j = 0; j < row; j += kPlaneLanes) {
    const int64_t c0 = org + j, c1 = c0 + DW;
    const __mmask16 m0 = inside(c0), m1 = inside(c1);
    for (int64_t r = 0; r < Hs; ++r) {
      const bf16* x = src + r * Ws;
      _mm512_storeu_si512(dst + r * row + j,
                          interleave_pairs(_mm256_maskz_loadu_epi16(m0, x + c0), _mm256_maskz_loadu_epi16(m1, x + c1)));
    }
  }
}

// Columns: one 16-column segment of a whole plane, one source, with a rolling register window instead of row
// blocks. Output row o accumulates in register o mod KH (a true modulo: o < 0 included) from its first window
// row (o) to its last (o + KH - 1), is then stored (bias added) and the register cleared for row o + KH. A block
// of R rows pays a fixed cost (rows at its top and bottom feed few accumulators and wait on the FMA latency, the
// results go through scratch): measured about 300 cycles per block with K=7, 40% of a 14-row block's time
// (docs/perf_cpu.md v20); a column pays it once per plane. Window row i is input row org_h + i; rows outside
// the map add nothing, and the few products for output rows outside [0, HO) (input rows near the map's edges)
// go to registers that are cleared before their row starts, or never stored. Taps in (kh, kw) order per
// output, as plane_block.

template <int KH, typename T, typename Src, typename W, int U>
DWCONV_PLANE_INLINE void plane_column_row(__m512* acc, T* dst, int64_t WO, int64_t rows, float bias, __mmask16 lanes,
                                          const Src* src, const W* w, int64_t Ws, int64_t Hs, int64_t org_h,
                                          int64_t KW, int64_t DW, int64_t col0, const __mmask16* mask, int64_t base) {
  const int64_t i = base + U;
  if (i >= rows) return;
  const int64_t ih = org_h + i;
  // window row i = base + U, base a multiple of KH: register (U - kh) mod KH is output row i - kh's
  if (ih >= 0 && ih < Hs) row_taps<KH, RowSlots<0, KH - 1, U, KH>>(acc, src + ih * Ws + col0, w, KW, DW, mask);
  constexpr int done = (U + 1) % KH;  // output row i - (KH - 1), whose register row i + 1 starts next
  if (i >= KH - 1) store_lanes<T>(dst + (i - (KH - 1)) * WO, acc[done], bias, lanes);
  acc[done] = _mm512_setzero_ps();
}

template <int KH, typename T, typename Src, typename W, int... U>
DWCONV_PLANE_INLINE void plane_column_rows(__m512* acc, T* dst, int64_t WO, int64_t rows, float bias, __mmask16 lanes,
                                           const Src* src, const W* w, int64_t Ws, int64_t Hs, int64_t org_h,
                                           int64_t KW, int64_t DW, int64_t col0, const __mmask16* mask, int64_t base,
                                           std::integer_sequence<int, U...>) {
  (plane_column_row<KH, T, Src, W, U>(acc, dst, WO, rows, bias, lanes, src, w, Ws, Hs, org_h, KW, DW, col0, mask,
                                      base),
   ...);
}

// dst[o][lanes] (o < HO, row stride WO) = bias + correlation of src (Hs rows of Ws elements) with w for one
// segment. Src / W / KW / mask as plane_block's: fp32 (w [KW][KH]) or a pairs plane (w [pairs][KH]).
template <int KH, typename T, typename Src, typename W>
DWCONV_TARGET void plane_column(T* dst, int64_t WO, int64_t HO, float bias, __mmask16 lanes, const Src* src,
                                const W* w, int64_t Ws, int64_t Hs, int64_t org_h, int64_t KW, int64_t DW,
                                int64_t col0, const __mmask16* mask) {
  __m512 acc[KH];
#pragma GCC unroll 16
  for (int r = 0; r < KH; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t rows = HO + KH - 1;
  for (int64_t base = 0; base < rows; base += KH)
    plane_column_rows<KH, T, Src, W>(acc, dst, WO, rows, bias, lanes, src, w, Ws, Hs, org_h, KW, DW, col0, mask, base,
                                     std::make_integer_sequence<int, KH>());
}

#ifdef DWCONV_BF16_DOT
// plane_column for bf16 pairs planes, two neighbouring segments (col0 and col0 + 16) at once, their products
// interleaved as plane_block_dual's: 2 x KH accumulators and two input vectors (KH <= 13). The same products in the
// same order per output as plane_column.
template <int KH, typename T, int U>
DWCONV_PLANE_INLINE void dual_column_row(__m512* acc_a, __m512* acc_b, T* dst, int64_t WO, int64_t rows, float bias,
                                         __mmask16 lanes_b, const uint32_t* src, const uint32_t* w, int64_t Ws,
                                         int64_t Hs, int64_t org_h, int64_t pairs, int64_t DW, int64_t col0,
                                         bool single_last, int64_t base) {
  const int64_t i = base + U;
  if (i >= rows) return;
  const int64_t ih = org_h + i;
  if (ih >= 0 && ih < Hs) {
    const uint32_t* x = src + ih * Ws + col0;
    dual_row_taps<KH, RowSlots<0, KH - 1, U, KH>>(acc_a, acc_b, PairsPlaneRows::Row{x, DW},
                                                  PairsPlaneRows::Row{x + kPlaneLanes, DW}, w, w, pairs, single_last);
  }
  constexpr int done = (U + 1) % KH;
  if (i >= KH - 1) {
    store_lanes<T>(dst + (i - (KH - 1)) * WO, acc_a[done], bias, __mmask16(0xffff));
    store_lanes<T>(dst + (i - (KH - 1)) * WO + kPlaneLanes, acc_b[done], bias, lanes_b);
  }
  acc_a[done] = acc_b[done] = _mm512_setzero_ps();
}

template <int KH, typename T, int... U>
DWCONV_PLANE_INLINE void dual_column_rows(__m512* acc_a, __m512* acc_b, T* dst, int64_t WO, int64_t rows, float bias,
                                          __mmask16 lanes_b, const uint32_t* src, const uint32_t* w, int64_t Ws,
                                          int64_t Hs, int64_t org_h, int64_t pairs, int64_t DW, int64_t col0,
                                          bool single_last, int64_t base, std::integer_sequence<int, U...>) {
  (dual_column_row<KH, T, U>(acc_a, acc_b, dst, WO, rows, bias, lanes_b, src, w, Ws, Hs, org_h, pairs, DW, col0,
                             single_last, base),
   ...);
}

// dst[o][0, 32) of a whole plane: segments col0 (all 16 lanes) and col0 + 16 (lanes_b).
template <int KH, typename T>
DWCONV_TARGET void plane_column_dual(T* dst, int64_t WO, int64_t HO, float bias, __mmask16 lanes_b,
                                     const uint32_t* src, const uint32_t* w, int64_t Ws, int64_t Hs, int64_t org_h,
                                     int64_t pairs, int64_t DW, int64_t col0, bool single_last) {
  __m512 acc_a[KH], acc_b[KH];
#pragma GCC unroll 16
  for (int r = 0; r < KH; ++r) acc_a[r] = acc_b[r] = _mm512_setzero_ps();
  const int64_t rows = HO + KH - 1;
  for (int64_t base = 0; base < rows; base += KH)
    dual_column_rows<KH, T>(acc_a, acc_b, dst, WO, rows, bias, lanes_b, src, w, Ws, Hs, org_h, pairs, DW, col0,
                            single_last, base, std::make_integer_sequence<int, KH>());
}

template <typename T>
using DualColumnFn = void (*)(T*, int64_t, int64_t, float, __mmask16, const uint32_t*, const uint32_t*, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, bool);

template <typename T>
inline DualColumnFn<T> dual_column_for(int64_t KH) {
  switch (KH) {
    case 3: return plane_column_dual<3, T>;
    case 5: return plane_column_dual<5, T>;
    case 7: return plane_column_dual<7, T>;
    case 9: return plane_column_dual<9, T>;
    case 11: return plane_column_dual<11, T>;
    case 13: return plane_column_dual<13, T>;
    default: return nullptr;
  }
}
#endif

template <typename T, typename Src, typename W>
using PlaneColumnFn = void (*)(T*, int64_t, int64_t, float, __mmask16, const Src*, const W*, int64_t, int64_t,
                               int64_t, int64_t, int64_t, int64_t, const __mmask16*);

// The column kernel of filter height KH (null: none compiled). Used where output rows are many against KH (the
// products wasted at the map's top and bottom edges stay a few percent) and a plane has one source (any forward;
// dgrad at multiplier 1, whose planes otherwise sum M sources).
template <typename T, typename Src, typename W>
inline PlaneColumnFn<T, Src, W> plane_column_for(int64_t KH) {
  switch (KH) {
    case 3: return plane_column<3, T, Src, W>;
    case 5: return plane_column<5, T, Src, W>;
    case 7: return plane_column<7, T, Src, W>;
    case 9: return plane_column<9, T, Src, W>;
    case 11: return plane_column<11, T, Src, W>;
    case 13: return plane_column<13, T, Src, W>;
    default: return nullptr;
  }
}
constexpr int64_t kColumnRowsPerTap = 4;  // HO >= 4 * KH

#ifdef DWCONV_BF16_DOT
// The two-plane kernels of filter height KH and R rows, for planes whose rows are paired in registers (direct:
// when every pair's columns lie within 32 words of the segment's first tap) or through pairs planes.
struct DualKernels {
  DualBlockFn<Bf16PlaneRows> direct = nullptr;
  DualBlockFn<PairsPlaneRows> paired = nullptr;
  std::vector<uint16_t> index;  // Bf16PlaneRows::index, [pairs][32]
  DualKernels() = default;
  DualKernels(const Correlation& g, int64_t pairs) {
    const int64_t last_word = 2 * (pairs - 1) * g.DW + g.DW + kPlaneLanes - 1;
    if (last_word >= 32) {
      paired = dual_block<PairsPlaneRows>(g.KH, g.HO);
      return;
    }
    direct = dual_block<Bf16PlaneRows>(g.KH, g.HO);
    index.resize(pairs * 32);
    for (int64_t q = 0; q < pairs; ++q)
      for (int l = 0; l < kPlaneLanes; ++l) {
        index[q * 32 + 2 * l] = uint16_t(2 * q * g.DW + l);
        index[q * 32 + 2 * l + 1] = uint16_t(2 * q * g.DW + g.DW + l);
      }
  }
  explicit operator bool() const { return direct || paired; }
};

// Planes `plane` and `plane + 1` of run_planes_of's bf16 pairs path, one source and one row block (HO rows) each,
// through plane_block_dual per segment (their pairs planes first in `converted`, two of plane_size, when the
// kernels read pairs planes).
template <typename T>
DWCONV_TARGET void run_dual_planes(const BlockedProblem<T, float>& p, const DualKernels& dual, int64_t plane,
                                   uint32_t* converted, int64_t plane_size, int64_t row, const uint32_t* wk,
                                   int64_t taps, const float* bias, int64_t segments, bool single_last) {
  const Correlation& g = p.g;
  const int64_t in_pixels = g.Hs * g.Ws, out_pixels = g.HO * g.WO;
  const bf16* src[2];
  const uint32_t* w[2];
  float b[2];
  for (int i = 0; i < 2; ++i) {
    const int64_t n = (plane + i) / p.dst_C, c = (plane + i) % p.dst_C;
    src[i] = p.src + (n * p.src_C + c / p.chan_div * p.chan_mul) * in_pixels;
    if (dual.paired) plane_to_pairs(converted + i * plane_size, src[i], g.Hs, g.Ws, g.org_w, g.DW, row);
    w[i] = wk + c * taps * g.KH;
    b[i] = bias ? bias[c] : 0.f;
  }
  T* const dst = p.dst + plane * out_pixels;
  for (int64_t sg = 0; sg < segments; ++sg) {
    const int64_t ow0 = sg * kPlaneLanes;
    const __mmask16 lanes = segment_lanes(g.WO, ow0);
    if (dual.direct) {
      const int64_t start = ow0 + g.org_w;
      const int64_t lo = std::clamp<int64_t>(-start, 0, 32), hi = std::clamp<int64_t>(g.Ws - start, 0, 32);
      const uint64_t bits = hi > lo ? ((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1) : 0;
      const Bf16PlaneRows rows{g.Ws, start, __mmask32(bits), dual.index.data()};
      dual.direct(dst + ow0, dst + out_pixels + ow0, g.WO, b[0], b[1], lanes, rows, src[0], src[1], w[0], w[1], g.Hs,
                  g.org_h, taps, single_last);
    } else {
      const PairsPlaneRows rows{row, g.DW, ow0};
      dual.paired(dst + ow0, dst + out_pixels + ow0, g.WO, b[0], b[1], lanes, rows, converted, converted + plane_size,
                  w[0], w[1], g.Hs, g.org_h, taps, single_last);
    }
  }
}
#endif

// dst plane (n, c) = sum_j correlate(src plane (n, chan(c, j)), filter of (c, j)) + bias[c] for every plane of
// p.dst (BlockedProblem of batched.h, NCHW; p.wt unused: wk holds the filters, p.bias per channel or null).
// Src: the planes as the blocks read them: fp32 (other dtypes converted per plane), or for vdpbf16ps the pairs
// planes of bf16 ones (uint32_t). W / taps: the filter layout of plane_block, `taps` columns (or column pairs)
// per filter row.
template <typename T, typename Src, typename W>
DWCONV_TARGET void run_planes_of(const BlockedProblem<T, float>& p, const W* wk, int64_t taps, const float* bias,
                                 int threads) {
  constexpr bool pairs = std::is_same_v<Src, uint32_t>, convert = !std::is_same_v<T, Src>;
  const Correlation& g = p.g;
  const PlaneBlockFn<Src, W>* blocks = plane_blocks<Src, W>(g.KH);
  const int64_t planes = p.N * p.dst_C, in_pixels = g.Hs * g.Ws, out_pixels = g.HO * g.WO;
  const int64_t nrow_blocks = ceil_div(g.HO, kPlaneRows), segments = ceil_div(g.WO, kPlaneLanes);
  // A pairs plane row: every segment's lanes at every pair's offset (2q * DW, q < taps).
  const int64_t row = pairs ? ceil_div(segments * kPlaneLanes + 2 * (taps - 1) * g.DW, kPlaneLanes) * kPlaneLanes
                            : g.Ws;
  const int64_t plane_size = pairs ? g.Hs * row : in_pixels;
  // fp32: per segment, the lane-0 offset and the lanes inside the row, per filter column. Pairs planes: the
  // segment's offset in the row, and whether the last pair has one tap.
  const int64_t ncols = pairs ? 1 : g.KW;
  std::vector<int64_t> col(segments * ncols);
  std::vector<__mmask16> mask(segments * ncols);
  for (int64_t sg = 0; sg < segments; ++sg) {
    const int64_t ow0 = sg * kPlaneLanes, lanes = std::min<int64_t>(kPlaneLanes, g.WO - ow0);
    if (pairs) {
      col[sg] = ow0;
      mask[sg] = __mmask16(g.KW % 2 ? 0xffff : 0);
      continue;
    }
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t c0 = ow0 * g.SW + g.org_w + kw * g.DW;
      col[sg * g.KW + kw] = c0;
      unsigned m = 0;
      for (int64_t l = 0; l < lanes; ++l)
        if (c0 + l >= 0 && c0 + l < g.Ws) m |= 1u << l;
      mask[sg * g.KW + kw] = __mmask16(m);
    }
  }
  const int nthreads = thread_count(threads, planes, planes * out_pixels * g.KH * g.KW * p.sources);
  const int64_t filter_size = taps * g.KH;
  const PlaneColumnFn<T, Src, W> column =
      p.sources == 1 && g.HO >= kColumnRowsPerTap * g.KH ? plane_column_for<T, Src, W>(g.KH) : nullptr;
  // (bf16 / fp16 planes counted at 4 bytes a pixel: the pairs path reads its plane in column strips too)
  const bool prefetch = in_pixels * int64_t(sizeof(float)) >= kPlanePrefetchBytes;
#ifdef DWCONV_BF16_DOT
  // bf16 pairs planes of one block each: two planes at a time (plane_block_dual)
  const DualKernels dual =
      pairs && !column && p.sources == 1 && !prefetch && nrow_blocks == 1 ? DualKernels(g, taps) : DualKernels();
  const int64_t per_item = dual ? 2 : 1;
  DualColumnFn<T> dual_column = nullptr;  // bf16 pairs columns: two segments at a time (plane_column_dual)
  if constexpr (pairs) dual_column = column ? dual_column_for<T>(g.KH) : nullptr;
#else
  const int64_t per_item = 1;
#endif
  const int64_t items = ceil_div(planes, per_item);
  Scratch<Src> converted_all(convert ? nthreads * per_item * p.sources * plane_size : 1);
  Scratch<float> accs(nthreads * per_item * kPlaneRows * kPlaneLanes);
  // Planes of several KiB (56x56) are read in strided pieces (16 columns of 20 rows at a time, or of the whole
  // plane in columns) that the hardware prefetchers do not see coming: each block (or column) fetches its share
  // of the next plane's input (and the output lines it will write). Small planes are one contiguous stream: no
  // prefetch (measured).
  const int64_t in_lines = ceil_div(in_pixels * int64_t(sizeof(T)), 64) + 1;
  const int64_t out_lines = ceil_div(out_pixels * int64_t(sizeof(T)), 64) + 1;
  const int64_t nq = column ? segments : nrow_blocks * segments;
  // share q of `shares` of the input and output lines of the plane after `current`
  const auto prefetch_next = [&](int64_t current, int64_t q, int64_t shares) {
    const int64_t next = current + 1, nn = next / p.dst_C, cn = next % p.dst_C;
    for (int64_t j = 0; j < p.sources; ++j) {
      const char* in = reinterpret_cast<const char*>(p.src + (nn * p.src_C + cn / p.chan_div * p.chan_mul + j) * in_pixels);
      for (int64_t li = q * in_lines / shares; li < (q + 1) * in_lines / shares; ++li) _mm_prefetch(in + li * 64, _MM_HINT_T0);
    }
    const char* out = reinterpret_cast<const char*>(p.dst + next * out_pixels);
    for (int64_t li = q * out_lines / shares; li < (q + 1) * out_lines / shares; ++li) __builtin_prefetch(out + li * 64, 1, 3);
  };
#pragma omp parallel num_threads(nthreads)
  {
    Src* converted = converted_all.get() + (convert ? omp_get_thread_num() * per_item * p.sources * plane_size : 0);
    float* acc = accs.get() + omp_get_thread_num() * per_item * kPlaneRows * kPlaneLanes;
    std::vector<const Src*> srcs(p.sources);
    std::vector<const W*> filters(p.sources);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t plane = item * per_item;
#ifdef DWCONV_BF16_DOT
      if constexpr (pairs) {
        if (dual && plane + 1 < planes) {
          run_dual_planes(p, dual, plane, converted, plane_size, row, wk, taps, bias, segments, mask[0] != 0);
          continue;
        }
      }
#endif
      const int64_t n = plane / p.dst_C, c = plane % p.dst_C;
      for (int64_t j = 0; j < p.sources; ++j) {
        const T* src = p.src + (n * p.src_C + c / p.chan_div * p.chan_mul + j) * in_pixels;
        if constexpr (pairs) {
          plane_to_pairs(converted + j * plane_size, src, g.Hs, g.Ws, g.org_w, g.DW, row);
          srcs[j] = converted + j * plane_size;
        } else if constexpr (convert) {
          plane_to_float(converted + j * plane_size, src, in_pixels);
          srcs[j] = converted + j * plane_size;
        } else {
          srcs[j] = src;
        }
        filters[j] = wk + (c * p.sources + j) * filter_size;
      }
      T* dst = p.dst + plane * out_pixels;
      const float b = bias ? bias[c] : 0.f;
      if (column) {
        for (int64_t sg = 0; sg < segments; ++sg) {
          const int64_t ow0 = sg * kPlaneLanes;
          const __mmask16 lanes = segment_lanes(g.WO, ow0);
          if (prefetch && plane + 1 < planes) prefetch_next(plane, sg, nq);
#ifdef DWCONV_BF16_DOT
          if constexpr (pairs) {
            if (dual_column && sg + 1 < segments) {  // this segment and the next
              if (prefetch && plane + 1 < planes) prefetch_next(plane, sg + 1, nq);
              dual_column(dst + ow0, g.WO, g.HO, b, segment_lanes(g.WO, ow0 + kPlaneLanes), srcs[0], filters[0], row,
                          g.Hs, g.org_h, taps, g.DW, col[sg], mask[sg] != 0);
              ++sg;
              continue;
            }
          }
#endif
          column(dst + ow0, g.WO, g.HO, b, lanes, srcs[0], filters[0], pairs ? row : g.Ws, g.Hs, g.org_h, taps, g.DW,
                 col[sg * ncols], mask.data() + sg * ncols);
        }
        continue;
      }
      for (int64_t rb = 0; rb < nrow_blocks; ++rb) {
        // near-equal row blocks
        const int64_t oh0 = rb * (g.HO / nrow_blocks) + std::min(rb, g.HO % nrow_blocks);
        const int R = int(g.HO / nrow_blocks + (rb < g.HO % nrow_blocks ? 1 : 0));
        for (int64_t sg = 0; sg < segments; ++sg) {
          const int64_t ow0 = sg * kPlaneLanes;
          const __mmask16 lanes = segment_lanes(g.WO, ow0);
          if (prefetch && plane + 1 < planes) prefetch_next(plane, rb * segments + sg, nq);
          blocks[R](acc, srcs.data(), filters.data(), int(p.sources), pairs ? row : g.Ws, g.Hs, oh0 * g.SH + g.org_h,
                    taps, g.DW, col[sg * ncols], mask.data() + sg * ncols);
          for (int r = 0; r < R; ++r)
            store_lanes<T>(dst + (oh0 + r) * g.WO + ow0, _mm512_loadu_ps(acc + r * kPlaneLanes), b, lanes);
        }
      }
    }
  }
}

// run_planes_of with wk: [dst channel][source][KW][KH] fp32. bf16 on CPUs with AVX512_BF16 (the avx512bf16
// kernels) multiplies pairs of filter columns with vdpbf16ps, from each plane's pairs plane.
template <typename T>
DWCONV_TARGET void run_planes(const BlockedProblem<T, float>& p, const float* wk, const float* bias, int threads) {
#ifdef DWCONV_BF16_DOT
  if constexpr (std::is_same_v<T, bf16>) {
    const int64_t KH = p.g.KH, KW = p.g.KW, pairs = ceil_div(KW, 2), filters = p.dst_C * p.sources;
    Scratch<uint32_t> wp(filters * pairs * KH);  // [filter][pair][KH]: columns 2q (low half), 2q + 1 (high)
    // (wk holds bf16 values: their high 16 bits are the bf16 bits)
    for (int64_t f = 0; f < filters; ++f)
      for (int64_t q = 0; q < pairs; ++q)
        for (int64_t kh0 = 0; kh0 < KH; kh0 += 16) {
          const __mmask16 rows = __mmask16((1u << std::min<int64_t>(16, KH - kh0)) - 1);
          const float* w = wk + f * KW * KH + kh0;
          const __m512 lo = _mm512_maskz_loadu_ps(rows, w + 2 * q * KH);
          const __m512 hi = 2 * q + 1 < KW ? _mm512_maskz_loadu_ps(rows, w + (2 * q + 1) * KH) : _mm512_setzero_ps();
          _mm512_mask_storeu_epi32(wp.get() + (f * pairs + q) * KH + kh0, rows, pairs_of_bf16_floats(lo, hi));
        }
    return run_planes_of<T, uint32_t, uint32_t>(p, wp.get(), pairs, bias, threads);
  }
#endif
  return run_planes_of<T, float, float>(p, wk, p.g.KW, bias, threads);
}

#undef DWCONV_PLANE_INLINE

}  // namespace dwconv::cpu::DWCONV_ISA
