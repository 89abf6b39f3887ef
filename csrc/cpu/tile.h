// Moving data between tensors (NCHW or NHWC, element type T) and channel-blocked tiles: a tile holds
// L channels of a rectangle of one image as A-typed [row][col][lane] (lane fastest), so one vector load
// reads one pixel of L channels. Part of the per-ISA kernels: needs DWCONV_ISA / DWCONV_TARGET (isa.h).
#pragma once
#include <algorithm>
#include <cstring>

#include "cpu/kernels.h"

namespace dwconv::cpu::DWCONV_ISA {

inline float to_acc(float v) { return v; }
inline float to_acc(bf16 v) { return to_float(v); }
inline double to_acc(double v) { return v; }
template <typename T> inline T from_acc(acc_t<T> v) { return T(v); }
template <> inline bf16 from_acc<bf16>(float v) { return to_bf16(v); }

// One image of a tensor: size (C, H, W), stored NCHW or NHWC.
template <typename T>
struct ImageView {
  T* data;
  Layout layout;
  int64_t C, H, W;
  int64_t channel_step() const { return layout == Layout::NCHW ? H * W : 1; }
  int64_t pixel_step() const { return layout == Layout::NCHW ? 1 : C; }
};

// tile[r][c][l] = src[chan[l], r0 + r, c0 + c] on the source grid upsampled by (up_h, up_w) (zeros between
// samples), zero outside the image and on lanes with chan[l] < 0. rows x cols x L elements.
template <typename T, typename A, int L>
DWCONV_TARGET void gather_tile(A* tile, int64_t rows, int64_t cols, const ImageView<const T>& src,
                               const int64_t* chan, int64_t r0, int64_t c0, int64_t up_h, int64_t up_w) {
  std::memset(tile, 0, sizeof(A) * rows * cols * L);
  bool channels_consecutive = true;
  for (int l = 0; l < L; ++l) channels_consecutive &= chan[l] >= 0 && chan[l] == chan[0] + l;
  const int64_t cstep = src.channel_step(), pstep = src.pixel_step();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t u = r0 + r;
    if (u < 0 || u % up_h) continue;
    const int64_t h = u / up_h;
    if (h >= src.H) break;
    const T* row = src.data + (src.layout == Layout::NCHW ? h * src.W : h * src.W * src.C);
    A* trow = tile + r * cols * L;
    // columns c whose source column (c0 + c) / up_w is a sample inside [0, W)
    const int64_t c_begin = std::max<int64_t>(0, -c0), c_end = std::min<int64_t>(cols, src.W * up_w - c0);
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t v = c0 + c;
      if (v % up_w) continue;
      const T* px = row + (v / up_w) * pstep;
      A* t = trow + c * L;
      if (channels_consecutive && pstep != 1) {
        const T* p = px + chan[0];
        for (int l = 0; l < L; ++l) t[l] = to_acc(p[l]);
      } else {
        for (int l = 0; l < L; ++l)
          if (chan[l] >= 0) t[l] = to_acc(px[chan[l] * cstep]);
      }
    }
  }
}

// dst[chan0 + l, r0 + r, c] = tile[r][c][l] (+ bias[l]) for l < lanes, r < rows, c < dst.W.
template <typename T, typename A, int L>
DWCONV_TARGET void scatter_tile(const ImageView<T>& dst, const A* tile, int64_t rows, int64_t chan0, int lanes,
                                int64_t r0, const A* bias) {
  const int64_t cols = dst.W;
  if (dst.layout == Layout::NHWC) {
    for (int64_t r = 0; r < rows; ++r) {
      T* drow = dst.data + ((r0 + r) * cols) * dst.C + chan0;
      const A* trow = tile + r * cols * L;
      for (int64_t c = 0; c < cols; ++c)
        for (int l = 0; l < lanes; ++l) drow[c * dst.C + l] = from_acc<T>(trow[c * L + l] + (bias ? bias[l] : A(0)));
    }
  } else {
    for (int l = 0; l < lanes; ++l) {
      const A b = bias ? bias[l] : A(0);
      T* plane = dst.data + (chan0 + l) * dst.H * cols + r0 * cols;
      for (int64_t i = 0; i < rows * cols; ++i) plane[i] = from_acc<T>(tile[i * L + l] + b);
    }
  }
}

}  // namespace dwconv::cpu::DWCONV_ISA
