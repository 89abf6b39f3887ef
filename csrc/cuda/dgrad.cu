// Input gradient (a transposed depthwise conv):
//   dx[n, c, h, w] = sum_{j < M} sum_{kh, kw : SH | h + PT - kh*DH, SW | w + PL - kw*DW}
//                    dy[n, c*M + j, (h + PT - kh*DH) / SH, (w + PL - kw*DW) / SW] * w[c*M + j, kh, kw]
#include <type_traits>

#include "launchers.h"
#include "staging.cuh"
#include "static_switch.h"

namespace dwconv {
namespace cuda {
namespace {

constexpr int kOpt = kOutPerThread;

// Block = (image n, block of cb input channels, dx tile [h0, h0 + th) x [w0, w0 + tw)). Shared: weights
// [cb*M][KH*KW], then dy rows [oh_lo, oh_lo + rows) x cols [ow_lo, ow_lo + cols) of its cb*M channels, where
// oh_lo = ceil((h0 + PT - (KH-1)*DH) / SH) is the first dy row any tap of the tile reads (likewise ow_lo).
template <typename T, Layout L, int K>
__global__ void __launch_bounds__(kThreads, kMinBlocksFwd)
dgrad_tiled_kernel(ConvShape s, Tile t, bool vec, const T* __restrict__ dy, const T* __restrict__ w,
                   T* __restrict__ dx) {
  using A = acc_t<T>;
  const int KH = K > 0 ? K : int(s.KH), KW = K > 0 ? K : int(s.KW), KK = KH * KW;
  const int SH = int(s.SH), SW = int(s.SW), DH = int(s.DH), DW = int(s.DW), M = int(s.M);
  const int64_t CO = (s.C * s.M);
  const int groups_w = (t.tw + kOpt - 1) / kOpt;
  A* s_w = dynamic_smem<A>();
  A* s_dy = s_w + t.cb * M * KK;
  const int64_t total = s.N * t.cblocks * t.tiles_h * t.tiles_w;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    int64_t rest = blk;
    const int64_t tile_w = rest % t.tiles_w; rest /= t.tiles_w;
    const int64_t tile_h = rest % t.tiles_h; rest /= t.tiles_h;
    const int64_t cblock = rest % t.cblocks;
    const int64_t n = rest / t.cblocks;
    const int64_t c0 = cblock * t.cb;
    const int ncb = int(t.cb < s.C - c0 ? t.cb : s.C - c0);
    const int64_t h0 = tile_h * t.th, w0 = tile_w * t.tw;
    const int64_t oh_lo = ceil_div(h0 + s.PT - (KH - 1) * DH, SH);
    const int64_t ow_lo = ceil_div(w0 + s.PL - (KW - 1) * DW, SW);
    // Tap (kh, kw) of dx (h0 + h_l, w0 + w_l) reads dy row (h_l + base_h - kh*DH) / SH of the staged region
    // when that is divisible by SH (then it is >= 0); base_h in (KH-1)*DH - SH, (KH-1)*DH]. 32-bit math.
    const int base_h = int(h0 + s.PT - oh_lo * SH), base_w = int(w0 + s.PL - ow_lo * SW);

    for (int i = threadIdx.x; i < ncb * M * KK; i += blockDim.x) s_w[i] = load_acc(w + c0 * M * KK + i);
    stage_region<T, L>(dy, n, CO, s.HO, s.WO, c0 * M, ncb * M, oh_lo, ow_lo, t.rows, t.cols, t.plane, vec, s_dy);
    __syncthreads();

    const int items = ncb * t.th * groups_w;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
      int c_l, h_l, g;
      if constexpr (L == Layout::NCHW) {
        g = it % groups_w; h_l = (it / groups_w) % t.th; c_l = it / (groups_w * t.th);
      } else {
        c_l = it % ncb; g = (it / ncb) % groups_w; h_l = it / (ncb * groups_w);
      }
      const int64_t h = h0 + h_l;
      if (h >= s.H) continue;
      const int w_l0 = g * kOpt;
      A acc[kOpt];
#pragma unroll
      for (int o = 0; o < kOpt; ++o) acc[o] = A(0);
      for (int j = 0; j < M; ++j) {
        const int cc = c_l * M + j;  // staged dy channel
        const A* w_c = s_w + cc * KK;
#pragma unroll 1  // filter rows (see fwd.cu)
        for (int kh = 0; kh < KH; ++kh) {
          const int rel_h = h_l + base_h - kh * DH;  // > -SH
          if (SH > 1 && (rel_h + SH) % SH != 0) continue;
          const A* s_row = s_dy + cc * t.plane + (SH == 1 ? rel_h : rel_h / SH) * t.cols;
          const A* w_row = w_c + kh * KW;
          if constexpr (K > 0) {
            if (SW == 1 && DW == 1) {  // dx[w_l0 + o] += dy col (w_l0 + o + K-1 - kw) * w[kw]
              A win[kOpt + K - 1];
#pragma unroll
              for (int q = 0; q < kOpt + K - 1; ++q) win[q] = s_row[w_l0 + q];
#pragma unroll
              for (int kw = 0; kw < K; ++kw) {
                const A wv = w_row[kw];
#pragma unroll
                for (int o = 0; o < kOpt; ++o) acc[o] += wv * win[o + K - 1 - kw];
              }
              continue;
            }
          } else if (SW == 1 && DW == 1) {  // dy col (w_l0 + o + m) pairs with tap KW-1-m
            row_window_runtime_k<true>(s_row + w_l0, w_row, KW, acc);
            continue;
          }
          for (int kw = 0; kw < KW; ++kw) {
            const A wv = w_row[kw];
#pragma unroll
            for (int o = 0; o < kOpt; ++o) {
              const int rel_w = w_l0 + o + base_w - kw * DW;  // > -SW
              if (SW > 1 && (rel_w + SW) % SW != 0) continue;
              acc[o] += wv * s_row[SW == 1 ? rel_w : rel_w / SW];
            }
          }
        }
      }
#pragma unroll
      for (int o = 0; o < kOpt; ++o) {
        const int64_t wc = w0 + w_l0 + o;
        if (w_l0 + o < t.tw && wc < s.W) store_acc(dx + global_index(L, n, c0 + c_l, h, wc, s.C, s.H, s.W), acc[o]);
      }
    }
    __syncthreads();
  }
}

// Fallback for regions too large for shared memory: one thread per dx element, taps gathered from global.
template <typename T, Layout L>
__global__ void __launch_bounds__(kThreads, kMinBlocksFwd)
dgrad_direct_kernel(ConvShape s, const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx) {
  using A = acc_t<T>;
  const int64_t CO = (s.C * s.M), total = s.N * s.C * s.H * s.W;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, h, wc;
    if constexpr (L == Layout::NCHW) {
      wc = i % s.W; h = i / s.W % s.H; c = i / (s.W * s.H) % s.C; n = i / (s.W * s.H * s.C);
    } else {
      c = i % s.C; wc = i / s.C % s.W; h = i / (s.C * s.W) % s.H; n = i / (s.C * s.W * s.H);
    }
    A acc = A(0);
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t th_ = h + s.PT - kh * s.DH;
      if (th_ < 0 || th_ % s.SH != 0 || th_ / s.SH >= s.HO) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t tw_ = wc + s.PL - kw * s.DW;
        if (tw_ < 0 || tw_ % s.SW != 0 || tw_ / s.SW >= s.WO) continue;
        for (int64_t j = 0; j < s.M; ++j) {
          const int64_t co = c * s.M + j;
          acc += load_acc(dy + global_index(L, n, co, th_ / s.SH, tw_ / s.SW, CO, s.HO, s.WO)) *
                 load_acc(w + (co * s.KH + kh) * s.KW + kw);
        }
      }
    }
    store_acc(dx + i, acc);
  }
}

Tile dgrad_tile(const ConvShape& s, size_t acc_bytes) {
  Tile t;
  initial_tile(s.layout, s.H, s.W, s.C, t);
  auto bytes = [&](Tile& tt) -> size_t {
    const int64_t tw_pad = (tt.tw + kOpt - 1) / kOpt * kOpt;
    const int64_t rows = (tt.th - 1 + (s.KH - 1) * s.DH) / s.SH + 1;
    const int64_t cols = (tw_pad - 1 + (s.KW - 1) * s.DW) / s.SW + 1;
    if (rows > (1 << 16) || cols > (1 << 16) || rows * cols > (1 << 24)) return SIZE_MAX;
    tt.rows = int(rows);
    tt.cols = int(cols);
    tt.cin = int(tt.cb * s.M);
    tt.plane = plane_stride(s.layout, rows, cols);
    return acc_bytes * size_t(tt.cin * (s.KH * s.KW + tt.plane));
  };
  t.fits = shrink_to_fit(t, bytes);
  t.smem = bytes(t);
  t.tiles_h = (s.H + t.th - 1) / t.th;
  t.tiles_w = (s.W + t.tw - 1) / t.tw;
  t.cblocks = (s.C + t.cb - 1) / t.cb;
  return t;
}

template <typename T, Layout L>
cudaError_t launch_dgrad_layout(const ConvShape& s, const T* dy, const T* w, T* dx, cudaStream_t stream) {
  const Tile t = dgrad_tile(s, sizeof(acc_t<T>));
  if (!t.fits) {
    auto kernel = dgrad_direct_kernel<T, L>;
    DWCONV_LAUNCH(kernel, grid_for((s.N * s.C * s.H * s.W + kThreads - 1) / kThreads), dim3(kThreads), 0, stream,
                  s, dy, w, dx);
    return cudaGetLastError();
  }
  const bool vec = can_vectorize(L, dy, (s.C * s.M), t.cin);
  const dim3 grid = grid_for(s.N * t.cblocks * t.tiles_h * t.tiles_w);
  if constexpr (std::is_same_v<T, double>) {
    auto kernel = dgrad_tiled_kernel<T, L, 0>;
    DWCONV_LAUNCH(kernel, grid, dim3(kThreads), t.smem, stream, s, t, vec, dy, w, dx);
  } else {
    DWCONV_KERNEL_SIZE_SWITCH(s.KH, s.KW, [&] {
      auto kernel = dgrad_tiled_kernel<T, L, K>;
      DWCONV_LAUNCH(kernel, grid, dim3(kThreads), t.smem, stream, s, t, vec, dy, w, dx);
    });
  }
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, cudaStream_t stream) {
  return s.layout == Layout::NCHW ? launch_dgrad_layout<T, Layout::NCHW>(s, dy, w, dx, stream)
                                  : launch_dgrad_layout<T, Layout::NHWC>(s, dy, w, dx, stream);
}

template cudaError_t launch_dgrad<float>(const ConvShape&, const float*, const float*, float*, cudaStream_t);
template cudaError_t launch_dgrad<double>(const ConvShape&, const double*, const double*, double*, cudaStream_t);
template cudaError_t launch_dgrad<fp16_t>(const ConvShape&, const fp16_t*, const fp16_t*, fp16_t*, cudaStream_t);
template cudaError_t launch_dgrad<bf16_t>(const ConvShape&, const bf16_t*, const bf16_t*, bf16_t*, cudaStream_t);

}  // namespace cuda
}  // namespace dwconv
