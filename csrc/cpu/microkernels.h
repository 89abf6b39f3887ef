// Register-blocked inner loops over channel-blocked tiles (one vector = one pixel of L channels).
// Part of the per-ISA kernels: needs DWCONV_ISA / DWCONV_TARGET (isa.h).
#pragma once
#include <cstdint>

namespace dwconv::cpu::DWCONV_ISA {

#define DWCONV_INLINE DWCONV_TARGET __attribute__((always_inline)) inline

// Most outputs (forward) or taps (wgrad) one register block holds: R accumulators + R sliding-window
// inputs + 1 weight/grad vector fit the 16 vector registers of AVX2.
constexpr int kMaxBlock = 7;

// acc[r] += sum_{kh, kw} x[kh * row_step + (r + kw) * L] * w[(kh * KW + kw) * L] for r < R
// (stride 1 and dilation 1 along W). x points at the tile pixel of output 0's first tap; row_step is
// DH tile rows. Along kw the inputs slide through registers: one new x load per tap.
template <class V, int R, typename A>
DWCONV_INLINE void fwd_block_unit(typename V::type* acc, const A* x, int64_t row_step, const A* w,
                                  int64_t w_row_step, int64_t KH, int64_t KW) {
  constexpr int L = V::L;
  for (int64_t kh = 0; kh < KH; ++kh, x += row_step, w += w_row_step) {
    typename V::type win[R];
#pragma GCC unroll 8
    for (int r = 0; r < R - 1; ++r) win[r] = V::load(x + r * L);
    for (int64_t kw = 0; kw < KW; ++kw) {
      win[R - 1] = V::load(x + (kw + R - 1) * L);
      const typename V::type wv = V::load(w + kw * L);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r] = V::fma(win[r], wv, acc[r]);
#pragma GCC unroll 8
      for (int r = 0; r < R - 1; ++r) win[r] = win[r + 1];
    }
  }
}

// Any stride / dilation along W: acc[r] += sum x[kh * row_step + r * col_step + kw * tap_step] * w[...].
template <class V, int R, typename A>
DWCONV_INLINE void fwd_block_any(typename V::type* acc, const A* x, int64_t row_step, int64_t col_step,
                                 int64_t tap_step, const A* w, int64_t w_row_step, int64_t KH, int64_t KW) {
  constexpr int L = V::L;
  for (int64_t kh = 0; kh < KH; ++kh, x += row_step, w += w_row_step) {
    for (int64_t kw = 0; kw < KW; ++kw) {
      const typename V::type wv = V::load(w + kw * L);
      const A* xk = x + kw * tap_step;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r] = V::fma(V::load(xk + r * col_step), wv, acc[r]);
    }
  }
}

// One output row segment of R pixels: out[r] (= or +=) correlation at tile position x with the KH x KW
// taps at w (rows w_row_step apart). out: [R][L].
template <class V, int R, typename A>
DWCONV_TARGET void fwd_block(A* out, bool accumulate, const A* x, int64_t row_step, int64_t col_step,
                             int64_t tap_step, const A* w, int64_t w_row_step, int64_t KH, int64_t KW) {
  constexpr int L = V::L;
  typename V::type acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = accumulate ? V::load(out + r * L) : V::zero();
  if (col_step == L && tap_step == L)
    fwd_block_unit<V, R>(acc, x, row_step, w, w_row_step, KH, KW);
  else
    fwd_block_any<V, R>(acc, x, row_step, col_step, tap_step, w, w_row_step, KH, KW);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) V::store(out + r * L, acc[r]);
}

// dw[q] += sum_{oh < rows, ow < WO} dy[oh * dy_row_step + ow * L] * x[oh * row_step + ow * L + q * L] for
// q < Q (stride 1 and dilation 1 along W): the x window slides along ow through registers.
template <class V, int Q, typename A>
DWCONV_INLINE void wgrad_taps_unit(typename V::type* acc, const A* dy, int64_t rows, int64_t WO,
                                   int64_t dy_row_step, const A* x, int64_t row_step) {
  constexpr int L = V::L;
  for (int64_t oh = 0; oh < rows; ++oh, x += row_step, dy += dy_row_step) {
    typename V::type win[Q];
#pragma GCC unroll 8
    for (int q = 0; q < Q - 1; ++q) win[q] = V::load(x + q * L);
    for (int64_t ow = 0; ow < WO; ++ow) {
      win[Q - 1] = V::load(x + (ow + Q - 1) * L);
      const typename V::type d = V::load(dy + ow * L);
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) acc[q] = V::fma(d, win[q], acc[q]);
#pragma GCC unroll 8
      for (int q = 0; q < Q - 1; ++q) win[q] = win[q + 1];
    }
  }
}

// Any stride / dilation along W: dw[q] += sum dy[oh][ow] * x[oh * row_step + ow * col_step + q * tap_step].
template <class V, int Q, typename A>
DWCONV_INLINE void wgrad_taps_any(typename V::type* acc, const A* dy, int64_t rows, int64_t WO,
                                  int64_t dy_row_step, const A* x, int64_t row_step, int64_t col_step,
                                  int64_t tap_step) {
  constexpr int L = V::L;
  for (int64_t oh = 0; oh < rows; ++oh, x += row_step, dy += dy_row_step)
    for (int64_t ow = 0; ow < WO; ++ow) {
      const typename V::type d = V::load(dy + ow * L);
      const A* xo = x + ow * col_step;
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) acc[q] = V::fma(d, V::load(xo + q * tap_step), acc[q]);
    }
}

// dw[0..Q) ([Q][L], accumulated into) for Q consecutive taps of one filter row; x points at tap 0's input
// for output (0, 0).
template <class V, int Q, typename A>
DWCONV_TARGET void wgrad_taps(A* dw, const A* dy, int64_t rows, int64_t WO, int64_t dy_row_step, const A* x,
                              int64_t row_step, int64_t col_step, int64_t tap_step) {
  constexpr int L = V::L;
  typename V::type acc[Q];
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) acc[q] = V::load(dw + q * L);
  if (col_step == L && tap_step == L)
    wgrad_taps_unit<V, Q>(acc, dy, rows, WO, dy_row_step, x, row_step);
  else
    wgrad_taps_any<V, Q>(acc, dy, rows, WO, dy_row_step, x, row_step, col_step, tap_step);
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) V::store(dw + q * L, acc[q]);
}

// R images at one output pixel (batched tiles [row][col][image][lane]): out[r] (= or +=) sum over the
// nkh x nkw taps of x[kh * row_step + kw * col_step + r * L] * w[kh * w_row_step + kw * L]. The weight
// vector is shared by the R accumulators; only taps inside the input are passed in.
template <class V, int R, typename A>
DWCONV_TARGET void batch_block(A* out, bool accumulate, const A* x, int64_t row_step, int64_t col_step,
                               const A* w, int64_t w_row_step, int64_t nkh, int64_t nkw) {
  constexpr int L = V::L;
  typename V::type acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = accumulate ? V::load(out + r * L) : V::zero();
  for (int64_t kh = 0; kh < nkh; ++kh, x += row_step, w += w_row_step) {
    const A* xk = x;
    for (int64_t kw = 0; kw < nkw; ++kw, xk += col_step) {
      const typename V::type wv = V::load(w + kw * L);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r] = V::fma(V::load(xk + r * L), wv, acc[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) V::store(out + r * L, acc[r]);
}

// Function tables indexed by block size 1..kMaxBlock.
template <class V, typename A>
struct BlockKernels {
  using Fwd = void (*)(A*, bool, const A*, int64_t, int64_t, int64_t, const A*, int64_t, int64_t, int64_t);
  using Wgrad = void (*)(A*, const A*, int64_t, int64_t, int64_t, const A*, int64_t, int64_t, int64_t);
  static constexpr Fwd fwd[kMaxBlock + 1] = {nullptr,           fwd_block<V, 1, A>, fwd_block<V, 2, A>,
                                             fwd_block<V, 3, A>, fwd_block<V, 4, A>, fwd_block<V, 5, A>,
                                             fwd_block<V, 6, A>, fwd_block<V, 7, A>};
  using Batch = void (*)(A*, bool, const A*, int64_t, int64_t, const A*, int64_t, int64_t, int64_t);
  static constexpr Batch batch[kMaxBlock + 1] = {nullptr,             batch_block<V, 1, A>, batch_block<V, 2, A>,
                                                 batch_block<V, 3, A>, batch_block<V, 4, A>, batch_block<V, 5, A>,
                                                 batch_block<V, 6, A>, batch_block<V, 7, A>};
  static constexpr Wgrad wgrad[kMaxBlock + 1] = {nullptr,             wgrad_taps<V, 1, A>, wgrad_taps<V, 2, A>,
                                                 wgrad_taps<V, 3, A>, wgrad_taps<V, 4, A>, wgrad_taps<V, 5, A>,
                                                 wgrad_taps<V, 6, A>, wgrad_taps<V, 7, A>};
};

// Splits n into ceil(n / max_block) near-equal blocks; returns the size of block i.
inline int block_size(int64_t n, int64_t i, int max_block = kMaxBlock) {
  const int64_t blocks = (n + max_block - 1) / max_block;
  return int(n / blocks + (i < n % blocks ? 1 : 0));
}
inline int64_t block_count(int64_t n, int max_block = kMaxBlock) { return (n + max_block - 1) / max_block; }

#undef DWCONV_INLINE

}  // namespace dwconv::cpu::DWCONV_ISA
