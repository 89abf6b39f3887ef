// Tiles of the shared-memory kernels: how a block's work is chosen on the host and indexed on the device.
// A block owns CB channels x a TH x TW tile of its output plane(s) for one image (fwd, dgrad) or a slice of
// images (wgrad). Its input region (halo) is staged in shared memory as the accumulator type, zero-padded,
// in channel-major planes s[c * plane + r * cols + col] (window loads along W use immediate offsets).
// NCHW: plane = rows * cols, threads run along W. NHWC: threads run along C (coalesced 16-byte global loads),
// and the plane is padded to an odd number of words so that they hit distinct shared-memory banks.
// Each thread computes kOutPerThread consecutive outputs along W from a register window.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../dwconv_params.h"
#include "cuda_compat.cuh"

namespace dwconv {
namespace cuda {

inline constexpr int kThreads = 256;
// Minimum resident blocks per SM for __launch_bounds__: 3 caps the fwd/dgrad tiled kernels at 80 registers
// (24 warps per SM), 2 caps wgrad (a row of K taps in registers) at 128. Without a minimum ptxas picked 48
// registers for some kernels and spilled.
inline constexpr int kMinBlocksFwd = 3;
inline constexpr int kMinBlocksWgrad = 2;
inline constexpr int kOutPerThread = 8;          // outputs per thread along W
inline constexpr size_t kSmemLimit = 48 * 1024;  // default dynamic shared memory, no opt-in needed

struct Tile {
  int cb = 1;      // channels per block (output channels for fwd/wgrad, input channels for dgrad)
  int th = 1, tw = 1;  // output (fwd, wgrad) or grad-input (dgrad) tile
  int rows = 1, cols = 1;  // staged input region per channel (upper bound over tile positions)
  int cin = 1;     // staged channels
  int plane = 1;   // words per staged channel (see plane_stride)
  int64_t tiles_h = 1, tiles_w = 1, cblocks = 1;
  int nb = 1;      // images per block (wgrad)
  int64_t nslices = 1;  // batch slices (wgrad)
  size_t smem = 0;
  bool fits = false;  // false: the shape needs the direct (no shared memory) fallback kernels
};

__host__ __device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Run-time-K taps are processed in chunks of this many through a register window.
inline constexpr int kTapChunk = 8;

// Taps m0 .. m0 + kTapChunk - 1 of a filter row at unit stride and dilation, through a register window:
//   acc[o] += sum_m w_row[kFlip ? KW-1-m : m] * s_row[o + m].
// kTail (the last, partial chunk): window loads past the last needed column and weights past the row's
// end are predicated off (0).
template <bool kFlip, bool kTail, typename A>
__device__ __forceinline__ void window_chunk(const A* s_row, const A* w_row, int KW, int m0, A (&acc)[kOutPerThread]) {
  A win[kOutPerThread + kTapChunk - 1];
#pragma unroll
  for (int j = 0; j < kOutPerThread + kTapChunk - 1; ++j)
    win[j] = !kTail || m0 + j < KW + kOutPerThread - 1 ? s_row[m0 + j] : A(0);
#pragma unroll
  for (int c = 0; c < kTapChunk; ++c) {
    const int m = m0 + c;
    const A wv = !kTail || m < KW ? w_row[kFlip ? KW - 1 - m : m] : A(0);
#pragma unroll
    for (int o = 0; o < kOutPerThread; ++o) acc[o] += wv * win[o + c];
  }
}

// One filter row at unit stride and dilation for a run-time KW, in chunks of kTapChunk taps.
template <bool kFlip, typename A>
__device__ __forceinline__ void row_window_runtime_k(const A* s_row, const A* w_row, int KW, A (&acc)[kOutPerThread]) {
  int m0 = 0;
  for (; m0 + kTapChunk <= KW; m0 += kTapChunk) window_chunk<kFlip, false>(s_row, w_row, KW, m0, acc);
  if (m0 < KW) window_chunk<kFlip, true>(s_row, w_row, KW, m0, acc);
}

__host__ __device__ __forceinline__ int plane_stride(Layout layout, int64_t rows, int64_t cols) {
  return int(layout == Layout::NCHW ? rows * cols : (rows * cols) | 1);
}

__host__ __device__ __forceinline__ int64_t global_index(Layout layout, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H,
                            int64_t W) {
  return layout == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
}

// Initial tile: whole planes for small maps (Robust-ResNet 7x7 / 14x14; several channels per block),
// else 32 x 64 (NCHW, one channel) or 8 x 8 x 32 channels (NHWC): 256 thread items of 8 outputs; then
// shrunk until shared memory fits.
inline void initial_tile(Layout layout, int64_t out_h, int64_t out_w, int64_t channels, Tile& t) {
  const int64_t groups_w = (out_w + kOutPerThread - 1) / kOutPerThread;
  if (out_h <= 16 && out_w <= 16) {
    t.th = int(out_h);
    t.tw = int(out_w);
    const int64_t items_per_plane = out_h * groups_w;
    t.cb = int(std::clamp<int64_t>(2 * kThreads / items_per_plane, 1, channels));
    if (layout == Layout::NHWC) t.cb = int(std::min<int64_t>(channels, std::max(t.cb / 8 * 8, 8)));
  } else if (layout == Layout::NCHW) {
    t.tw = int(std::min<int64_t>(groups_w * kOutPerThread, 64));
    t.th = int(std::min<int64_t>(out_h, kThreads * kOutPerThread / t.tw));
    t.cb = 1;
  } else {
    t.tw = int(std::min<int64_t>(groups_w * kOutPerThread, kOutPerThread));
    t.th = int(std::min<int64_t>(out_h, 8));
    t.cb = int(std::min<int64_t>(channels, 32));
  }
}

// Shrinks the tile (channels first, then height, then width) until `bytes(t)` fits; false if nothing fits.
// Channel counts above 8 stay multiples of 8 (16-byte loads of 8 bf16 / fp16 channels).
template <typename Bytes>
bool shrink_to_fit(Tile& t, Bytes bytes) {
  for (;;) {
    if (bytes(t) <= kSmemLimit) return true;
    if (t.cb > 8) t.cb = (t.cb / 2 + 7) / 8 * 8;
    else if (t.cb > 1) t.cb = (t.cb + 1) / 2;
    else if (t.th > 1) t.th = (t.th + 1) / 2;
    else if (t.tw > 1) t.tw = (t.tw + 1) / 2;
    else return false;
  }
}

// Blocks of a 1-D grid; kernels loop `for (blk = blockIdx.x; blk < total; blk += gridDim.x)`.
inline dim3 grid_for(int64_t total_blocks) {
  return dim3(unsigned(std::clamp<int64_t>(total_blocks, 1, max_grid_blocks())));
}

}  // namespace cuda
}  // namespace dwconv
