// Moving data between tensors (NCHW or NHWC, element type T) and channel-blocked tiles: a tile holds
// L channels of a rectangle of one image as A-typed [row][col][lane] (lane fastest), so one vector load
// reads one pixel of L channels. NCHW rows go through a staging buffer [lane][col] and L x L block
// transposes. Part of the per-ISA kernels: needs DWCONV_ISA / DWCONV_TARGET (isa.h).
#pragma once
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

namespace dwconv::cpu::DWCONV_ISA {

inline float to_acc(float v) { return v; }
inline float to_acc(bf16 v) { return to_float(v); }
inline float to_acc(f16 v) { return to_float(v); }
inline double to_acc(double v) { return v; }
template <typename T> inline T from_acc(acc_t<T> v) { return T(v); }
template <> inline bf16 from_acc<bf16>(float v) { return to_bf16(v); }
template <> inline f16 from_acc<f16>(float v) { return to_f16(v); }

// One image of a tensor: size (C, H, W), stored NCHW or NHWC.
template <typename T>
struct ImageView {
  T* data;
  Layout layout;
  int64_t C, H, W;
  int64_t channel_step() const { return layout == Layout::NCHW ? H * W : 1; }
  int64_t pixel_step() const { return layout == Layout::NCHW ? 1 : C; }
  T* row(int64_t h) const { return data + h * W * (layout == Layout::NCHW ? 1 : C); }
};

// out[j * L + i] = in[i * n + j] for i < L, j < n: lane rows [L][n] (row stride n) into pixels [n][L].
template <typename A, int L>
DWCONV_TARGET void rows_to_pixels(A* out, const A* in, int64_t n) {
  int64_t j = 0;
  for (; j + L <= n; j += L) transpose_block<A, L>(out + j * L, L, in + j, n);
  for (; j < n; ++j)
    for (int i = 0; i < L; ++i) out[j * L + i] = in[i * n + j];
}

// out[i * n + j] = in[j * L + i]: pixels [n][L] into lane rows [L][n].
template <typename A, int L>
DWCONV_TARGET void pixels_to_rows(A* out, const A* in, int64_t n) {
  int64_t j = 0;
  for (; j + L <= n; j += L) transpose_block<A, L>(out + j, n, in + j * L, L);
  for (; j < n; ++j)
    for (int i = 0; i < L; ++i) out[i * n + j] = in[j * L + i];
}

// tile[r][c][l] = src[chan[l], r0 + r, c0 + c] on the source grid upsampled by (up_h, up_w) (zeros between
// samples), zero outside the image and on lanes with chan[l] < 0. rows x cols x L elements.
// stage: 2 * L * rows * max(cols, src.W) elements of scratch.
template <typename T, typename A, int L>
DWCONV_TARGET void gather_tile(A* tile, int64_t rows, int64_t cols, const ImageView<const T>& src,
                               const int64_t* chan, int64_t r0, int64_t c0, int64_t up_h, int64_t up_w,
                               A* stage) {
  bool all_lanes = true, consecutive = true;
  for (int l = 0; l < L; ++l) {
    all_lanes &= chan[l] >= 0;
    consecutive &= chan[l] == chan[0] + l;
  }
  // columns c whose source column (c0 + c) / up_w lies inside [0, W)
  const int64_t c_begin = std::clamp<int64_t>(-c0, 0, cols), c_end = std::clamp<int64_t>(src.W * up_w - c0, c_begin, cols);
  // Dense: every column in [c_begin, c_end) receives all L lanes, so only the margins need zeros.
  const bool dense = all_lanes && up_w == 1;
  if (!dense) std::memset(tile, 0, sizeof(A) * rows * cols * L);
  const int64_t cstep = src.channel_step(), pstep = src.pixel_step();
  if (dense && up_h == 1 && src.layout == Layout::NCHW) {
    // The band's source rows are contiguous in each plane: convert them into stage [lane][pixel], transpose
    // all at once into pixels [pixel][lane], then copy each row's columns into the padded tile.
    const int64_t r_lo = std::clamp<int64_t>(-r0, 0, rows), r_hi = std::clamp<int64_t>(src.H - r0, r_lo, rows);
    const int64_t n = (r_hi - r_lo) * src.W;
    A* pixels = stage + L * n;
    for (int l = 0; l < L; ++l) {
      const T* in = src.row(r0 + r_lo) + chan[l] * cstep;
      for (int64_t j = 0; j < n; ++j) stage[l * n + j] = to_acc(in[j]);
    }
    rows_to_pixels<A, L>(pixels, stage, n);
    for (int64_t r = 0; r < rows; ++r) {
      A* trow = tile + r * cols * L;
      if (r < r_lo || r >= r_hi) {
        std::memset(trow, 0, sizeof(A) * cols * L);
        continue;
      }
      std::memset(trow, 0, sizeof(A) * c_begin * L);
      std::memset(trow + c_end * L, 0, sizeof(A) * (cols - c_end) * L);
      std::memcpy(trow + c_begin * L, pixels + ((r - r_lo) * src.W + c0 + c_begin) * L,
                  sizeof(A) * (c_end - c_begin) * L);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    A* trow = tile + r * cols * L;
    const int64_t u = r0 + r;
    if (u < 0 || u % up_h || u / up_h >= src.H || c_begin == c_end) {
      if (dense) std::memset(trow, 0, sizeof(A) * cols * L);
      continue;
    }
    const T* row = src.row(u / up_h);
    if (dense) {
      std::memset(trow, 0, sizeof(A) * c_begin * L);
      std::memset(trow + c_end * L, 0, sizeof(A) * (cols - c_end) * L);
      const int64_t n = c_end - c_begin;
      if (src.layout == Layout::NCHW) {
        for (int l = 0; l < L; ++l) {
          const T* in = row + chan[l] * cstep + (c0 + c_begin);
          for (int64_t j = 0; j < n; ++j) stage[l * n + j] = to_acc(in[j]);
        }
        rows_to_pixels<A, L>(trow + c_begin * L, stage, n);
        continue;
      }
      if (consecutive) {
        const T* in = row + (c0 + c_begin) * pstep + chan[0];
        A* out = trow + c_begin * L;
        for (int64_t j = 0; j < n; ++j)
          for (int l = 0; l < L; ++l) out[j * L + l] = to_acc(in[j * pstep + l]);
        continue;
      }
    }
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t v = c0 + c;
      if (v % up_w) continue;
      const T* px = row + (v / up_w) * pstep;
      for (int l = 0; l < L; ++l)
        if (chan[l] >= 0) trow[c * L + l] = to_acc(px[chan[l] * cstep]);
    }
  }
}

// dst[chan0 + l, r0 + r, c] = tile[r][c][l] + bias[l] for l < lanes, r < rows, c < dst.W.
// stage: L * rows * dst.W elements of scratch.
template <typename T, typename A, int L>
DWCONV_TARGET void scatter_tile(const ImageView<T>& dst, const A* tile, int64_t rows, int64_t chan0, int lanes,
                                int64_t r0, const A* bias, A* stage) {
  const int64_t cols = dst.W;
  if (dst.layout == Layout::NCHW) {
    // rows r0 .. r0 + rows of a plane are contiguous: transpose the whole band into stage [lane][pixel]
    const int64_t n = rows * cols;
    pixels_to_rows<A, L>(stage, tile, n);
    for (int l = 0; l < lanes; ++l) {
      T* out = dst.row(r0) + (chan0 + l) * dst.H * cols;
      const A* in = stage + l * n;
      const A b = bias[l];
      int64_t j = 0;
      if constexpr (!std::is_same_v<T, A>) {
        // bf16 / fp16: 8 pixels per vector conversion and 16-byte store (GCC leaves from_acc's per-element
        // rounding scalar); the same add and rounding, so the same bits.
        using V = Vec<A>;
        A b_lanes[V::L];
        for (int i = 0; i < V::L; ++i) b_lanes[i] = b;
        const typename V::type bv = V::load(b_lanes);
        for (; j + V::L <= n; j += V::L) {
          const typename V::type v = V::add(V::load(in + j), bv);
          if constexpr (std::is_same_v<T, bf16>) store_bf16(out + j, v);
          else store_f16(out + j, v);
        }
      }
      for (; j < n; ++j) out[j] = from_acc<T>(in[j] + b);
    }
    return;
  }
  // NHWC: a full block of lanes is one vector store per pixel (GCC vectorizes the per-element loops below
  // across pixels, one scalar store per element).
  using V = Vec<A>;
  static_assert(V::L == L);
  for (int64_t r = 0; r < rows; ++r) {
    const A* trow = tile + r * cols * L;
    T* out = dst.row(r0 + r) + chan0;
    if (lanes == L) {
      const typename V::type b = V::load(bias);
      for (int64_t c = 0; c < cols; ++c) {
        const typename V::type v = V::add(V::load(trow + c * L), b);
        if constexpr (std::is_same_v<T, A>) V::store(out + c * dst.C, v);
        else if constexpr (std::is_same_v<T, bf16>) store_bf16(out + c * dst.C, v);
        else store_f16(out + c * dst.C, v);
      }
    } else {
      for (int64_t c = 0; c < cols; ++c)
        for (int l = 0; l < lanes; ++l) out[c * dst.C + l] = from_acc<T>(trow[c * L + l] + bias[l]);
    }
  }
}

}  // namespace dwconv::cpu::DWCONV_ISA
