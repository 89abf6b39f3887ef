// Forward: y[n, co, oh, ow] = b[co] + sum_{kh,kw} x[n, co/M, oh*SH + kh*DH - PT, ow*SW + kw*DW - PL] * w[co, kh, kw]
#include <type_traits>

#include "launchers.h"
#include "staging.cuh"
#include "static_switch.h"

namespace dwconv {
namespace cuda {
namespace {

constexpr int kOpt = kOutPerThread;

// Block = (image n, channel block, output tile). Shared: weights [cb][KH*KW], then the input region.
// K > 0: compile-time square kernel size (unrolled taps, register window for stride 1 / dilation 1).
template <typename T, Layout L, int K>
__global__ void __launch_bounds__(kThreads, kMinBlocksFwd)
fwd_tiled_kernel(ConvShape s, Tile t, bool vec, const T* __restrict__ x, const T* __restrict__ w,
                 const T* __restrict__ b, T* __restrict__ y) {
  using A = acc_t<T>;
  const int KH = K > 0 ? K : int(s.KH), KW = K > 0 ? K : int(s.KW), KK = KH * KW;
  const int SH = int(s.SH), SW = int(s.SW), DH = int(s.DH), DW = int(s.DW);
  const int64_t CO = (s.C * s.M);
  const int groups_w = (t.tw + kOpt - 1) / kOpt;
  A* s_w = dynamic_smem<A>();
  A* s_x = s_w + t.cb * KK;
  const int64_t total = s.N * t.cblocks * t.tiles_h * t.tiles_w;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    int64_t rest = blk;
    const int64_t tile_w = rest % t.tiles_w; rest /= t.tiles_w;
    const int64_t tile_h = rest % t.tiles_h; rest /= t.tiles_h;
    const int64_t cblock = rest % t.cblocks;
    const int64_t n = rest / t.cblocks;
    const int64_t co0 = cblock * t.cb, ci0 = co0 / s.M;
    const int ncb = int(t.cb < CO - co0 ? t.cb : CO - co0);
    const int ncin = int((co0 + ncb - 1) / s.M - ci0 + 1);
    const int64_t oh0 = tile_h * t.th, ow0 = tile_w * t.tw;

    for (int i = threadIdx.x; i < ncb * KK; i += blockDim.x) s_w[i] = load_acc(w + co0 * KK + i);
    stage_region<T, L>(x, n, s.C, s.H, s.W, ci0, ncin, oh0 * SH - s.PT, ow0 * SW - s.PL, t.rows, t.cols, t.plane,
                       vec, s_x);
    __syncthreads();

    const int items = ncb * t.th * groups_w;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
      int c_l, oh_l, g;
      if constexpr (L == Layout::NCHW) {
        g = it % groups_w; oh_l = (it / groups_w) % t.th; c_l = it / (groups_w * t.th);
      } else {
        c_l = it % ncb; g = (it / ncb) % groups_w; oh_l = it / (ncb * groups_w);
      }
      const int64_t oh = oh0 + oh_l;
      if (oh >= s.HO) continue;
      const int64_t co = co0 + c_l;
      const int ci_l = int(co / s.M - ci0);
      const int ow_l0 = g * kOpt;
      const A bias = b != nullptr ? load_acc(b + co) : A(0);
      A acc[kOpt];
#pragma unroll
      for (int o = 0; o < kOpt; ++o) acc[o] = bias;
      const A* w_c = s_w + c_l * KK;
#pragma unroll 1  // filter rows: unrolling them multiplies code size by K for little gain
      for (int kh = 0; kh < KH; ++kh) {
        const A* s_row = s_x + ci_l * t.plane + (oh_l * SH + kh * DH) * t.cols;
        const A* w_row = w_c + kh * KW;
        if constexpr (K > 0) {
          if (SW == 1 && DW == 1) {  // register window: kOpt + K - 1 loads for kOpt * K FMAs
            A win[kOpt + K - 1];
#pragma unroll
            for (int j = 0; j < kOpt + K - 1; ++j) win[j] = s_row[ow_l0 + j];
#pragma unroll
            for (int kw = 0; kw < K; ++kw) {
              const A wv = w_row[kw];
#pragma unroll
              for (int o = 0; o < kOpt; ++o) acc[o] += wv * win[o + kw];
            }
            continue;
          }
        } else if (SW == 1 && DW == 1) {
          row_window_runtime_k<false>(s_row + ow_l0, w_row, KW, acc);
          continue;
        }
#pragma unroll (K > 0 ? K : 1)
        for (int kw = 0; kw < KW; ++kw) {
          const A wv = w_row[kw];
#pragma unroll
          for (int o = 0; o < kOpt; ++o) acc[o] += wv * s_row[(ow_l0 + o) * SW + kw * DW];
        }
      }
#pragma unroll
      for (int o = 0; o < kOpt; ++o) {
        const int64_t ow = ow0 + ow_l0 + o;
        if (ow_l0 + o < t.tw && ow < s.WO) store_acc(y + global_index(L, n, co, oh, ow, CO, s.HO, s.WO), acc[o]);
      }
    }
    __syncthreads();
  }
}

// Fallback for regions too large for shared memory (huge dilated kernels): one thread per output.
template <typename T, Layout L>
__global__ void __launch_bounds__(kThreads, kMinBlocksFwd)
fwd_direct_kernel(ConvShape s, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                  T* __restrict__ y) {
  using A = acc_t<T>;
  const int64_t CO = (s.C * s.M), total = s.N * CO * s.HO * s.WO;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, co, oh, ow;
    if constexpr (L == Layout::NCHW) {
      ow = i % s.WO; oh = i / s.WO % s.HO; co = i / (s.WO * s.HO) % CO; n = i / (s.WO * s.HO * CO);
    } else {
      co = i % CO; ow = i / CO % s.WO; oh = i / (CO * s.WO) % s.HO; n = i / (CO * s.WO * s.HO);
    }
    A acc = b != nullptr ? load_acc(b + co) : A(0);
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.SH + kh * s.DH - s.PT;
      if (ih < 0 || ih >= s.H) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t iw = ow * s.SW + kw * s.DW - s.PL;
        if (iw < 0 || iw >= s.W) continue;
        acc += load_acc(x + global_index(L, n, co / s.M, ih, iw, s.C, s.H, s.W)) *
               load_acc(w + (co * s.KH + kh) * s.KW + kw);
      }
    }
    store_acc(y + i, acc);
  }
}

Tile fwd_tile(const ConvShape& s, size_t acc_bytes) {
  Tile t;
  initial_tile(s.layout, s.HO, s.WO, (s.C * s.M), t);
  auto bytes = [&](Tile& tt) -> size_t {
    const int64_t tw_pad = (tt.tw + kOpt - 1) / kOpt * kOpt;
    const int64_t rows = (tt.th - 1) * s.SH + (s.KH - 1) * s.DH + 1;
    const int64_t cols = (tw_pad - 1) * s.SW + (s.KW - 1) * s.DW + 1;
    if (rows > (1 << 16) || cols > (1 << 16) || rows * cols > (1 << 24)) return SIZE_MAX;
    tt.rows = int(rows);
    tt.cols = int(cols);
    tt.cin = int(s.M == 1 ? tt.cb : std::min<int64_t>(s.C, (tt.cb - 1) / s.M + 2));
    tt.plane = plane_stride(s.layout, rows, cols);
    return acc_bytes * size_t(tt.cb * s.KH * s.KW + int64_t(tt.cin) * tt.plane);
  };
  t.fits = shrink_to_fit(t, bytes);
  t.smem = bytes(t);
  t.tiles_h = (s.HO + t.th - 1) / t.th;
  t.tiles_w = (s.WO + t.tw - 1) / t.tw;
  t.cblocks = ((s.C * s.M) + t.cb - 1) / t.cb;
  return t;
}

template <typename T, Layout L>
cudaError_t launch_fwd_layout(const ConvShape& s, const T* x, const T* w, const T* b, T* y, cudaStream_t stream) {
  const Tile t = fwd_tile(s, sizeof(acc_t<T>));
  if (!t.fits) {
    auto kernel = fwd_direct_kernel<T, L>;
    DWCONV_LAUNCH(kernel, grid_for((s.N * (s.C * s.M) * s.HO * s.WO + kThreads - 1) / kThreads), dim3(kThreads), 0,
                  stream, s, x, w, b, y);
    return cudaGetLastError();
  }
  const bool vec = s.M == 1 && can_vectorize(L, x, s.C, t.cb);
  const dim3 grid = grid_for(s.N * t.cblocks * t.tiles_h * t.tiles_w);
  if constexpr (std::is_same_v<T, double>) {
    auto kernel = fwd_tiled_kernel<T, L, 0>;
    DWCONV_LAUNCH(kernel, grid, dim3(kThreads), t.smem, stream, s, t, vec, x, w, b, y);
  } else {
    DWCONV_KERNEL_SIZE_SWITCH(s.KH, s.KW, [&] {
      auto kernel = fwd_tiled_kernel<T, L, K>;
      DWCONV_LAUNCH(kernel, grid, dim3(kThreads), t.smem, stream, s, t, vec, x, w, b, y);
    });
  }
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, cudaStream_t stream) {
  return s.layout == Layout::NCHW ? launch_fwd_layout<T, Layout::NCHW>(s, x, w, b, y, stream)
                                  : launch_fwd_layout<T, Layout::NHWC>(s, x, w, b, y, stream);
}

template cudaError_t launch_fwd<float>(const ConvShape&, const float*, const float*, const float*, float*, cudaStream_t);
template cudaError_t launch_fwd<double>(const ConvShape&, const double*, const double*, const double*, double*, cudaStream_t);
template cudaError_t launch_fwd<fp16_t>(const ConvShape&, const fp16_t*, const fp16_t*, const fp16_t*, fp16_t*, cudaStream_t);
template cudaError_t launch_fwd<bf16_t>(const ConvShape&, const bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, cudaStream_t);

}  // namespace cuda
}  // namespace dwconv
