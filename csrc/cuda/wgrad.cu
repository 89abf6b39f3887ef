// Weight gradient: dw[co, kh, kw] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, co/M, oh*SH + kh*DH - PT, ow*SW + kw*DW - PL]
// A block reduces one (channel block x output tile x batch slice) into per-block sums, then either adds
// them to dw with one fp32 atomic per tap (dw zeroed first) or, deterministic, writes them to a workspace
// [splits][C*M][KH*KW] that a second kernel sums in a fixed order.
#include <cstdlib>
#include <type_traits>

#include "launchers.h"
#include "staging.cuh"
#include "static_switch.h"

namespace dwconv {
namespace cuda {
namespace {

constexpr int kOpt = kOutPerThread;

// Work of one block: `items` = channel x filter row (K > 0: a thread keeps the row's K taps in registers)
// or channel x filter row x chunk of kTapChunk taps (run-time K), each split over `slices` threads that take every slices-th (row, kOpt-column
// group) of the output tile. Shared: dy tile [cb][th][tw_pad], x region as in fwd, then per-(slice, item)
// sums [slices][items][taps_per_item] that persist across the images of the batch slice.
// Item -> (channel c_l, filter row kh, first tap kw0); the same mapping for accumulation and final sums.
template <Layout L>
__device__ __forceinline__ void wgrad_item(int item, int ncb, int KH, int chunks, int& c_l, int& kh, int& kw0) {
  int chunk;
  if constexpr (L == Layout::NCHW) { chunk = item % chunks; kh = item / chunks % KH; c_l = item / (chunks * KH); }
  else { c_l = item % ncb; chunk = item / ncb % chunks; kh = item / (ncb * chunks); }
  kw0 = chunk * kTapChunk;
}

template <typename T, Layout L, int K>
__global__ void __launch_bounds__(kThreads, kMinBlocksWgrad)
wgrad_tiled_kernel(ConvShape s, Tile t, bool vec, const T* __restrict__ dy, const T* __restrict__ x,
                   acc_t<T>* __restrict__ out, bool to_workspace) {
  using A = acc_t<T>;
  constexpr int kTaps = K > 0 ? K : kTapChunk;  // taps per item
  const int KH = K > 0 ? K : int(s.KH), KW = K > 0 ? K : int(s.KW), KK = KH * KW;
  const int SH = int(s.SH), SW = int(s.SW), DH = int(s.DH), DW = int(s.DW);
  const int64_t CO = (s.C * s.M);
  const int groups_w = (t.tw + kOpt - 1) / kOpt, tw_pad = groups_w * kOpt;
  const int dy_plane = plane_stride(L, t.th, tw_pad);
  A* s_dy = dynamic_smem<A>();
  A* s_x = s_dy + t.cb * dy_plane;
  A* s_sum = s_x + t.cin * t.plane;
  const int64_t total = t.cblocks * t.tiles_h * t.tiles_w * t.nslices;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    int64_t rest = blk;
    const int64_t cblock = rest % t.cblocks; rest /= t.cblocks;
    const int64_t split = rest;  // (slice, tile_h, tile_w)
    const int64_t tile_w = rest % t.tiles_w; rest /= t.tiles_w;
    const int64_t tile_h = rest % t.tiles_h;
    const int64_t slice = rest / t.tiles_h;
    const int64_t co0 = cblock * t.cb, ci0 = co0 / s.M;
    const int ncb = int(t.cb < CO - co0 ? t.cb : CO - co0);
    const int ncin = int((co0 + ncb - 1) / s.M - ci0 + 1);
    const int64_t oh0 = tile_h * t.th, ow0 = tile_w * t.tw;
    const int64_t n_begin = slice * t.nb, n_end = n_begin + t.nb < s.N ? n_begin + t.nb : s.N;
    const int chunks = K > 0 ? 1 : (KW + kTapChunk - 1) / kTapChunk;
    const int items = ncb * KH * chunks;
    const int slices = items >= int(blockDim.x) ? 1 : int(blockDim.x) / items;
    const int units = t.th * groups_w;

    for (int i = threadIdx.x; i < slices * items * kTaps; i += blockDim.x) s_sum[i] = A(0);
    for (int64_t n = n_begin; n < n_end; ++n) {
      stage_region<T, L>(dy, n, CO, s.HO, s.WO, co0, ncb, oh0, ow0, t.th, tw_pad, dy_plane, vec, s_dy);
      stage_region<T, L>(x, n, s.C, s.H, s.W, ci0, ncin, oh0 * SH - s.PT, ow0 * SW - s.PL, t.rows, t.cols, t.plane,
                         vec && s.M == 1, s_x);
      __syncthreads();
      for (int pair = threadIdx.x; pair < slices * items; pair += blockDim.x) {
        const int item = pair % items, sl = pair / items;
        int c_l, kh, kw0;
        wgrad_item<L>(item, ncb, KH, chunks, c_l, kh, kw0);
        const int ci_l = int((co0 + c_l) / s.M - ci0);
        A acc[kTaps];
#pragma unroll
        for (int q = 0; q < kTaps; ++q) acc[q] = A(0);
        for (int u = sl; u < units; u += slices) {
          const int oh_l = u / groups_w, ow_l0 = (u % groups_w) * kOpt;
          A d[kOpt];
          const A* dy_row = s_dy + c_l * dy_plane + oh_l * tw_pad;
#pragma unroll
          for (int o = 0; o < kOpt; ++o) d[o] = dy_row[ow_l0 + o];
          const A* x_row = s_x + ci_l * t.plane + (oh_l * SH + kh * DH) * t.cols;
          if (SW == 1 && DW == 1) {  // acc[q] += sum_o dy[o] * x[o + kw0 + q]
            A win[kOpt + kTaps - 1];
            if (K > 0 || kw0 + kTaps <= KW) {
#pragma unroll
              for (int j = 0; j < kOpt + kTaps - 1; ++j) win[j] = x_row[ow_l0 + kw0 + j];
            } else {  // last chunk of a run-time K: nothing past the last tap's window
#pragma unroll
              for (int j = 0; j < kOpt + kTaps - 1; ++j)
                win[j] = kw0 + j < KW + kOpt - 1 ? x_row[ow_l0 + kw0 + j] : A(0);
            }
#pragma unroll
            for (int q = 0; q < kTaps; ++q)
#pragma unroll
              for (int o = 0; o < kOpt; ++o) acc[q] += d[o] * win[o + q];
            continue;
          }
#pragma unroll
          for (int q = 0; q < kTaps; ++q) {
            if (K == 0 && kw0 + q >= KW) break;
#pragma unroll
            for (int o = 0; o < kOpt; ++o) acc[q] += d[o] * x_row[(ow_l0 + o) * SW + (kw0 + q) * DW];
          }
        }
        A* sum = s_sum + pair * kTaps;
#pragma unroll
        for (int q = 0; q < kTaps; ++q) sum[q] += acc[q];
      }
      __syncthreads();
    }

    // Sum the slices in a fixed order; item-major index e = item * kTaps + q names tap (c_l, kh, kw0 + q)
    // (run-time K: chunk taps past the row's end hold zeros and are dropped).
    for (int e = threadIdx.x; e < items * kTaps; e += blockDim.x) {
      const int item = e / kTaps, q = e % kTaps;
      int c_l, kh, kw0;
      wgrad_item<L>(item, ncb, KH, chunks, c_l, kh, kw0);
      if (kw0 + q >= KW) continue;
      A v = A(0);
      for (int sl = 0; sl < slices; ++sl) v += s_sum[sl * items * kTaps + e];
      const int64_t idx = (co0 + c_l) * KK + kh * KW + kw0 + q;
      if (to_workspace) out[split * CO * KK + idx] = v;
      else atomicAdd(out + idx, v);
    }
    __syncthreads();
  }
}

// dw[i] = sum over splits of ws[split][i], in split order (deterministic).
template <typename A>
__global__ void __launch_bounds__(kThreads, kMinBlocksWgrad)
wgrad_sum_splits_kernel(const A* __restrict__ ws, int64_t splits, int64_t size, A* __restrict__ dw) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size; i += int64_t(gridDim.x) * blockDim.x) {
    A v = A(0);
    for (int64_t sp = 0; sp < splits; ++sp) v += ws[sp * size + i];
    dw[i] = v;
  }
}

// Fallback for regions too large for shared memory: one block per weight element (huge dilated kernels
// only), a fixed-order block reduction; deterministic.
template <typename T, Layout L>
__global__ void __launch_bounds__(kThreads, kMinBlocksWgrad)
wgrad_direct_kernel(ConvShape s, const T* __restrict__ dy, const T* __restrict__ x, acc_t<T>* __restrict__ dw) {
  using A = acc_t<T>;
  A* red = dynamic_smem<A>();
  const int64_t CO = (s.C * s.M), KK = s.KH * s.KW, per_tap = s.N * s.HO * s.WO;
  for (int64_t e = blockIdx.x; e < CO * KK; e += gridDim.x) {
    const int64_t co = e / KK, kh = e % KK / s.KW, kw = e % s.KW;
    A acc = A(0);
    for (int64_t i = threadIdx.x; i < per_tap; i += blockDim.x) {
      const int64_t ow = i % s.WO, oh = i / s.WO % s.HO, n = i / (s.WO * s.HO);
      const int64_t ih = oh * s.SH + kh * s.DH - s.PT, iw = ow * s.SW + kw * s.DW - s.PL;
      if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
      acc += load_acc(dy + global_index(L, n, co, oh, ow, CO, s.HO, s.WO)) *
             load_acc(x + global_index(L, n, co / s.M, ih, iw, s.C, s.H, s.W));
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int half = int(blockDim.x) / 2; half > 0; half /= 2) {
      if (int(threadIdx.x) < half) red[threadIdx.x] += red[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) dw[e] = red[0];
    __syncthreads();
  }
}

// Blocks wgrad aims for (batch slices are cut to reach it) unless the caller asks for another count
// (target_blocks > 0; tests use a small one to put several images in one block).
constexpr int64_t kWgradTargetBlocks = 2048;

Tile wgrad_tile(const ConvShape& s, size_t acc_bytes, int64_t target_blocks) {
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
    // Slice sums: slices * items * taps_per_item <= max(items, kThreads) * taps_per_item, for both variants
    // (compile-time K: items = cb*KH, K taps; run-time K: items = cb*KH*chunks, kTapChunk taps).
    const int64_t kw_chunks = (s.KW + kTapChunk - 1) / kTapChunk * kTapChunk;
    const int64_t sums = std::max<int64_t>(tt.cb * s.KH * kw_chunks, int64_t(kThreads) * std::max<int64_t>(s.KW, kTapChunk));
    tt.plane = plane_stride(s.layout, rows, cols);
    return acc_bytes * size_t(int64_t(tt.cb) * plane_stride(s.layout, tt.th, tw_pad) + int64_t(tt.cin) * tt.plane + sums);
  };
  t.fits = shrink_to_fit(t, bytes);
  t.smem = bytes(t);
  t.tiles_h = (s.HO + t.th - 1) / t.th;
  t.tiles_w = (s.WO + t.tw - 1) / t.tw;
  t.cblocks = ((s.C * s.M) + t.cb - 1) / t.cb;
  // Batch slices: enough blocks to fill the GPU, at least one image per block.
  const int64_t base = t.cblocks * t.tiles_h * t.tiles_w;
  const int64_t want = std::clamp<int64_t>(((target_blocks > 0 ? target_blocks : kWgradTargetBlocks) + base - 1) / base, 1, std::max<int64_t>(s.N, 1));
  t.nb = int((s.N + want - 1) / want);
  t.nslices = (s.N + t.nb - 1) / t.nb;
  return t;
}

template <typename T, Layout L>
cudaError_t launch_wgrad_layout(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, bool deterministic,
                                int64_t target_blocks, void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  const Tile t = wgrad_tile(s, sizeof(A), target_blocks);
  const int64_t dw_size = (s.C * s.M) * s.KH * s.KW;
  if (!t.fits) {
    auto kernel = wgrad_direct_kernel<T, L>;
    DWCONV_LAUNCH(kernel, grid_for(dw_size), dim3(kThreads), kThreads * sizeof(A), stream, s, dy, x, dw);
    return cudaGetLastError();
  }
  A* out = deterministic ? static_cast<A*>(workspace) : dw;
  if (!deterministic) {
    const cudaError_t err = cudaMemsetAsync(dw, 0, size_t(dw_size) * sizeof(A), stream);
    if (err != cudaSuccess) return err;
  }
  const bool vec = can_vectorize(L, dy, (s.C * s.M), t.cb) && can_vectorize(L, x, s.C, t.cb);
  const dim3 grid = grid_for(t.cblocks * t.tiles_h * t.tiles_w * t.nslices);
  if constexpr (std::is_same_v<T, double>) {
    auto kernel = wgrad_tiled_kernel<T, L, 0>;
    DWCONV_LAUNCH(kernel, grid, dim3(kThreads), t.smem, stream, s, t, vec, dy, x, out, deterministic);
  } else {
    DWCONV_KERNEL_SIZE_SWITCH(s.KH, s.KW, [&] {
      auto kernel = wgrad_tiled_kernel<T, L, K>;
      DWCONV_LAUNCH(kernel, grid, dim3(kThreads), t.smem, stream, s, t, vec, dy, x, out, deterministic);
    });
  }
  if (deterministic) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    auto kernel = wgrad_sum_splits_kernel<A>;
    const int64_t splits = t.tiles_h * t.tiles_w * t.nslices;
    const A* ws = static_cast<const A*>(workspace);
    DWCONV_LAUNCH(kernel, grid_for((dw_size + kThreads - 1) / kThreads), dim3(kThreads), 0, stream, ws, splits,
                  dw_size, dw);
  }
  return cudaGetLastError();
}

}  // namespace

template <typename T>
size_t wgrad_workspace_bytes(const ConvShape& s, bool deterministic, int64_t target_blocks) {
  const Tile t = wgrad_tile(s, sizeof(acc_t<T>), target_blocks);
  if (!deterministic || !t.fits) return 0;
  return size_t(t.tiles_h * t.tiles_w * t.nslices * (s.C * s.M) * s.KH * s.KW) * sizeof(acc_t<T>);
}

template <typename T>
cudaError_t launch_wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, bool deterministic,
                         int64_t target_blocks, void* workspace, cudaStream_t stream) {
  return s.layout == Layout::NCHW
             ? launch_wgrad_layout<T, Layout::NCHW>(s, dy, x, dw, deterministic, target_blocks, workspace, stream)
             : launch_wgrad_layout<T, Layout::NHWC>(s, dy, x, dw, deterministic, target_blocks, workspace, stream);
}

#define DWCONV_INSTANTIATE_WGRAD(T)                                                                    \
  template size_t wgrad_workspace_bytes<T>(const ConvShape&, bool, int64_t);                          \
  template cudaError_t launch_wgrad<T>(const ConvShape&, const T*, const T*, acc_t<T>*, bool, int64_t, \
                                       void*, cudaStream_t);
DWCONV_INSTANTIATE_WGRAD(float)
DWCONV_INSTANTIATE_WGRAD(double)
DWCONV_INSTANTIATE_WGRAD(fp16_t)
DWCONV_INSTANTIATE_WGRAD(bf16_t)
#undef DWCONV_INSTANTIATE_WGRAD

}  // namespace cuda
}  // namespace dwconv
