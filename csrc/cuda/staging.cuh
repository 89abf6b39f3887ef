// Global -> shared staging of a zero-padded (channels x rows x cols) region of one image, converted to the
// accumulator type, into dst[c * plane + r * cols + col] (tile_geometry.cuh). NHWC uses 16-byte loads when `vec` (checked
// by the launcher: channel count, first channel and base pointer all multiples of 16 bytes).
#pragma once
#include "tile_geometry.cuh"

namespace dwconv {
namespace cuda {

// src: tensor of logical shape (N, C, H, W) in layout L. Region: channels [c0, c0 + nc), rows [h0, h0 + rows),
// cols [w0, w0 + cols); positions outside [0, H) x [0, W) read as 0.
template <typename T, Layout L>
__device__ __forceinline__ void stage_region(const T* __restrict__ src, int64_t n, int64_t C, int64_t H,
                                             int64_t W, int64_t c0, int nc, int64_t h0, int64_t w0, int rows,
                                             int cols, int plane, bool vec, acc_t<T>* __restrict__ dst) {
  using A = acc_t<T>;
  if constexpr (L == Layout::NCHW) {
    const int total = nc * rows * cols;
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
      const int col = i % cols, r = (i / cols) % rows, c = i / (cols * rows);
      const int64_t h = h0 + r, w = w0 + col;
      const bool inside = h >= 0 && h < H && w >= 0 && w < W;
      dst[c * plane + r * cols + col] = inside ? load_acc(src + global_index(L, n, c0 + c, h, w, C, H, W)) : A(0);
    }
  } else {
    constexpr int kVec = 16 / sizeof(T);
    if (vec) {
      const int ncv = nc / kVec, total = ncv * rows * cols;
      for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int cv = i % ncv, col = (i / ncv) % cols, r = i / (ncv * cols);
        const int64_t h = h0 + r, w = w0 + col;
        A* out = dst + cv * kVec * plane + r * cols + col;
        A vals[kVec];
        if (h >= 0 && h < H && w >= 0 && w < W) {
          load16_acc(src + global_index(L, n, c0 + cv * kVec, h, w, C, H, W), vals);
        } else {
#pragma unroll
          for (int k = 0; k < kVec; ++k) vals[k] = A(0);
        }
#pragma unroll
        for (int k = 0; k < kVec; ++k) out[k * plane] = vals[k];
      }
    } else {
      const int total = nc * rows * cols;
      for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int c = i % nc, col = (i / nc) % cols, r = i / (nc * cols);
        const int64_t h = h0 + r, w = w0 + col;
        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
        dst[c * plane + r * cols + col] =
            inside ? load_acc(src + global_index(L, n, c0 + c, h, w, C, H, W)) : A(0);
      }
    }
  }
}

// Whether NHWC staging of channel blocks starting at multiples of `cb` may use 16-byte loads.
template <typename T>
inline bool can_vectorize(Layout layout, const T* base, int64_t channels, int cb) {
  constexpr int kVec = 16 / sizeof(T);
  return layout == Layout::NHWC && sizeof(T) <= 16 && channels % kVec == 0 && cb % kVec == 0 &&
         reinterpret_cast<uintptr_t>(base) % 16 == 0;
}

}  // namespace cuda
}  // namespace dwconv
