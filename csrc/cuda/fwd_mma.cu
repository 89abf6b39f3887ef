// Tensor-core (mma.sync m16n8k16, fp32 accumulation) depthwise conv for fp16 / bf16 at unit stride and
// dilation, kernel sizes KH, KW up to 25: the forward, and the stride-1 dgrad of multiplier 1 (the forward of
// dy with the filter rotated 180 degrees and padding K-1-P).
//
// Per channel and filter row kh, a strip of 8 output columns [j0, j0 + 8) is a GEMM with a banded Toeplitz
// matrix:  Y[m, j] += sum_t X[m, t] * B_kh[t, j],  t in [0, KB),
//   X[m, t]    = staged input of output row m, filter row kh, column j0 + t   (A operand, 16 rows m)
//   B_kh[t, j] = w[kh, t - j] if 0 <= t - j < KW, else 0                      (the same for every strip)
// KB = 16 KSTEPS: 16 when 8 + KW - 1 <= 16 (KW <= 9), else 32 (two k-steps). Compile time: KSTEPS and NJ, the
// strips per tile row (1, 2, 4, 8); KH and KW are run-time. The M dimension is output rows of one channel:
// several images' rows when maps are short (7x7: 2 images = 14 of 16 rows).
// Non-finite inputs: an inf / NaN at input column t of a strip would multiply the band's zeros too (0 * inf =
// NaN) and reach every output of the strip, not only those whose window covers t. So staging tests every
// staged value's bits, the block votes (__syncthreads_or), and a tile that holds one is computed with plain
// FMAs over the staged tile and the band's non-zero taps, which gives PyTorch's (and the FMA kernels') answer.
#include <atomic>
#include <cstring>
#include <type_traits>

#include "launchers.h"
#include "staging.cuh"

namespace dwconv {
namespace cuda {

namespace {

std::atomic<int64_t> g_mma_launches{0};

// One conv in forward form: input (N, C / M, H, W) -> output (N, C, HO, WO), output channel c reads input
// channel c / M; out[oh, ow] += in[oh + kh - PT, ow + kw - PL] * w[c, kh', kw'] with (kh', kw') = (kh, kw), or
// (KH-1-kh, KW-1-kw) when flip.
struct MmaConv {
  int64_t N, C, M, H, W, HO, WO, PT, PL;
  int KH, KW;
  bool flip;
};

// A block owns cb channels x nb images x a th x tw output tile. Shared memory (elements of T):
//   bands  [cb][KH][8][ldb]         B_kh transposed: band[n][t] = B_kh[t][n]; ldb = KB + 8
//   input  [cb][nb][rows][ld]       rows = th + KH - 1 staged rows, ld >= tw + KB - 8 staged columns
//   output [cb][nb][th][tw]         the block's results, written to global memory in one coalesced pass
// ldb / 2 and ld / 2 are 4 mod 8 words, so the 8 row addresses of a fragment load fall in distinct banks.
struct MmaTile {
  int cb = 1, nb = 1, th = 1, tw = 8, rows = 1, ld = 8, mblocks = 1, jblocks = 1;
  int64_t cblocks = 1, nblocks = 1, tiles_h = 1, tiles_w = 1;
  size_t smem = 0;
};

constexpr int kMaxKsteps = 2;  // KW <= 25
constexpr int ksteps_for(int KW) { return (8 + KW - 1 + 15) / 16; }
constexpr int kMaxStrips = 8;  // 8-column strips per tile row: tw <= 64
// Blocks per SM each variant is compiled for: 2 for NJ 4 and 8 (<= 128 registers: 32 accumulators, 22 words
// of A chunks, the band fragments); 4 for NJ 1 and 2 (<= 64 registers, no spills), the small maps, which
// measured up to 7 % faster so on an H200 (docs/perf_cuda.md, "Non-finite inputs").
constexpr int min_blocks_mma(int nj) { return nj <= 2 ? 4 : 2; }

// The fp16 / bf16 value with the low 16 bits of `bits`.
template <typename T>
__device__ __forceinline__ T from_bits(uint32_t bits) {
  const uint16_t b16 = uint16_t(bits);
  T v;
  std::memcpy(&v, &b16, 2);
  return v;
}

template <typename T, Layout L, int KSTEPS, int NJ>
__global__ void __launch_bounds__(kThreads, min_blocks_mma(NJ))
conv_mma_kernel(MmaConv p, MmaTile t, bool vec_in, bool vec_out, const T* __restrict__ x, const T* __restrict__ w,
                const T* __restrict__ b, T* __restrict__ y) {
  constexpr int kVec = 16 / sizeof(T);  // NHWC: channels per 16-byte access (vec_in / vec_out)
  static_assert(kVec == 8, "fp16 / bf16");
  constexpr int KB = 16 * KSTEPS, LDB = KB + 8;
  constexpr int kChunks = NJ + KB / 8 - 1;  // 8-column chunks of A a tile row can need
  const int KH = p.KH, KW = p.KW;
  const int plane = t.rows * t.ld;
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32, nwarps = int(blockDim.x) / 32;
  const T zero = from_float<T>(0.f);
  T* s_band = dynamic_smem<T>();
  T* s_x = s_band + t.cb * KH * 8 * LDB;
  T* s_y = s_x + t.cb * t.nb * plane;
  const int out_plane = t.th * t.tw;
  const int64_t CI = p.C / p.M;
  const int m_total = t.nb * t.th;
  const int64_t total = t.nblocks * t.cblocks * t.tiles_h * t.tiles_w;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    int64_t rest = blk;
    const int64_t tile_w = rest % t.tiles_w; rest /= t.tiles_w;
    const int64_t tile_h = rest % t.tiles_h; rest /= t.tiles_h;
    const int64_t cblock = rest % t.cblocks;
    const int64_t n0 = rest / t.cblocks * t.nb;
    const int64_t c0 = cblock * t.cb, oh0 = tile_h * t.th, ow0 = tile_w * t.tw;
    const int ncb = int(t.cb < p.C - c0 ? t.cb : p.C - c0);

    for (int i = threadIdx.x; i < ncb * KH * 8 * KB; i += blockDim.x) {
      const int k = i % KB, j = i / KB % 8, kh = i / (KB * 8) % KH, c_l = i / (KB * 8 * KH);
      const int tap = k - j;
      T v = zero;
      if (tap >= 0 && tap < KW)
        v = p.flip ? w[((c0 + c_l) * KH + KH - 1 - kh) * KW + KW - 1 - tap] : w[((c0 + c_l) * KH + kh) * KW + tap];
      s_band[((c_l * KH + kh) * 8 + j) * LDB + k] = v;
    }
    // Staged element (c_l, img, r, col) = in[n0 + img, (c0 + c_l) / M, oh0 - PT + r, ow0 - PL + col], 0 outside
    // the map, past the batch, and at columns no output of the tile reads (col >= tw + KW - 1).
    const int total_x = ncb * t.nb * t.rows * t.ld;
    uint32_t probe = 0;  // nonfinite_probe of every value this thread staged, ORed
    if (L == Layout::NHWC && vec_in) {
      const int ncv = ncb / kVec;
      for (int i = threadIdx.x; i < total_x / kVec; i += blockDim.x) {
        const int cv = i % ncv, col = i / ncv % t.ld, r = i / (ncv * t.ld) % t.rows, img = i / (ncv * t.ld * t.rows);
        const int64_t n = n0 + img, h = oh0 - p.PT + r, wc = ow0 - p.PL + col;
        uint32_t words[4] = {0, 0, 0, 0};  // kVec values, two per word (bits 0: +0.0, outside the map)
        if (n < p.N && h >= 0 && h < p.H && wc >= 0 && wc < p.W && col < t.tw + KW - 1) {
          load16_words(x + global_index(L, n, c0 + cv * kVec, h, wc, CI, p.H, p.W), words);
#pragma unroll
          for (int k = 0; k < 4; ++k) probe |= nonfinite_probe2<T>(words[k]);
        }
#pragma unroll
        for (int k = 0; k < kVec; ++k)
          s_x[((cv * kVec + k) * t.nb + img) * plane + r * t.ld + col] = from_bits<T>(words[k / 2] >> 16 * (k % 2));
      }
    } else {
      for (int i = threadIdx.x; i < total_x; i += blockDim.x) {
        int c_l, col, r, img;
        if constexpr (L == Layout::NCHW) {
          col = i % t.ld; r = i / t.ld % t.rows; img = i / (t.ld * t.rows) % t.nb; c_l = i / (t.ld * t.rows * t.nb);
        } else {
          c_l = i % ncb; col = i / ncb % t.ld; r = i / (ncb * t.ld) % t.rows; img = i / (ncb * t.ld * t.rows);
        }
        const int64_t n = n0 + img, h = oh0 - p.PT + r, wc = ow0 - p.PL + col;
        const bool inside = n < p.N && h >= 0 && h < p.H && wc >= 0 && wc < p.W && col < t.tw + KW - 1;
        const T v = inside ? x[global_index(L, n, (c0 + c_l) / p.M, h, wc, CI, p.H, p.W)] : zero;
        probe |= nonfinite_probe(v);
        s_x[(c_l * t.nb + img) * plane + r * t.ld + col] = v;
      }
    }
    const bool nonfinite = __syncthreads_or((probe & kNonfiniteBits) != 0) != 0;

    if (nonfinite) {
      // An inf / NaN somewhere in the staged tile: each output of the tile (c_l, img, r, col), at i in the
      // layout of s_y, is the sum of its KH x KW taps, read from the band's row j = 0 (band[kh][0][k] = the
      // tap k of filter row kh, k < KW). Rows and columns past the map are computed and dropped as below.
      const int total_y = ncb * t.nb * out_plane;
#pragma unroll 1
      for (int i = threadIdx.x; i < total_y; i += blockDim.x) {
        const int col = i % t.tw, r = i / t.tw % t.th, ci = i / out_plane, c_l = ci / t.nb;  // ci = c_l nb + img
        const T* xs = s_x + ci * plane + r * t.ld + col;
        const T* band = s_band + c_l * KH * 8 * LDB;
        float acc = 0.f;
#pragma unroll 1
        for (int kh = 0; kh < KH; ++kh)
#pragma unroll 1
          for (int kw = 0; kw < KW; ++kw) acc += to_float(xs[kh * t.ld + kw]) * to_float(band[kh * 8 * LDB + kw]);
        s_y[i] = from_float<T>(acc + (b != nullptr ? to_float(b[c0 + c_l]) : 0.f));
      }
    }

    // Warp items: (channel, block of 16 rows m = img * th + r) over all jblocks strips of the tile. Per filter
    // row the warp loads the band's fragment(s) once and the row's 8-column chunks of A once each: strip j,
    // k-step ks multiplies chunks j + 2ks and j + 2ks + 1. None when the tile took the path above.
    const int items = nonfinite ? 0 : ncb * t.mblocks;
    for (int it = warp; it < items; it += nwarps) {
      int c_l, mb;
      if constexpr (L == Layout::NCHW) {
        mb = it % t.mblocks; c_l = it / t.mblocks;
      } else {
        c_l = it % ncb; mb = it / ncb;
      }
      const int g = lane / 4, q = lane % 4, nj = t.jblocks;
      const int m_lo = mb * 16 + g, m_hi = m_lo + 8;
      // Rows past the last (m >= nb * th) read row 0 of the channel; their results are dropped.
      auto row = [&](int m) {
        const int mm = m < m_total ? m : 0;
        return s_x + (c_l * t.nb + mm / t.th) * plane + (mm % t.th) * t.ld;
      };
      const T* a_lo = row(m_lo);
      const T* a_hi = row(m_hi);
      const T* band = s_band + c_l * KH * 8 * LDB;
      float acc[NJ][4] = {};
#pragma unroll 1  // filter rows: each is already NJ x KSTEPS independent products
      for (int kh = 0; kh < KH; ++kh) {
        BFrag bf[KSTEPS];
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) bf[ks] = load_b_frag(band + kh * 8 * LDB + 16 * ks, LDB);
        AChunk win[kChunks];
#pragma unroll
        for (int ch = 0; ch < kChunks; ++ch)
          if (ch < nj + KB / 8 - 1) win[ch] = load_a_chunk(a_lo + kh * t.ld + 8 * ch, a_hi + kh * t.ld + 8 * ch);
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          if (j >= nj) break;
#pragma unroll
          for (int ks = 0; ks < KSTEPS; ++ks) mma_16x8x16<T>(win[j + 2 * ks], win[j + 2 * ks + 1], bf[ks], acc[j]);
        }
      }
      // Lane results: rows m_lo (c[0], c[1]) and m_hi (c[2], c[3]), columns 8j + 2q + {0, 1} of the tile.
      const float bias = b != nullptr ? to_float(b[c0 + c_l]) : 0.f;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = half == 0 ? m_lo : m_hi;
        if (m >= m_total) continue;
        T* y_row = s_y + (c_l * t.nb + m / t.th) * out_plane + (m % t.th) * t.tw;
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          if (j >= nj) break;
          y_row[8 * j + 2 * q] = from_float<T>(acc[j][2 * half] + bias);
          y_row[8 * j + 2 * q + 1] = from_float<T>(acc[j][2 * half + 1] + bias);
        }
      }
    }
    __syncthreads();

    const int total_y = ncb * t.nb * out_plane;
    if (L == Layout::NHWC && vec_out) {
      const int ncv = ncb / kVec;
      for (int i = threadIdx.x; i < total_y / kVec; i += blockDim.x) {
        const int cv = i % ncv, col = i / ncv % t.tw, r = i / (ncv * t.tw) % t.th, img = i / (ncv * out_plane);
        const int64_t n = n0 + img, oh = oh0 + r, ow = ow0 + col;
        if (n >= p.N || oh >= p.HO || ow >= p.WO) continue;
        T vals[kVec];
#pragma unroll
        for (int k = 0; k < kVec; ++k) vals[k] = s_y[((cv * kVec + k) * t.nb + img) * out_plane + r * t.tw + col];
        store16(y + global_index(L, n, c0 + cv * kVec, oh, ow, p.C, p.HO, p.WO), vals);
      }
    } else {
      for (int i = threadIdx.x; i < total_y; i += blockDim.x) {
        int c_l, col, r, img;
        if constexpr (L == Layout::NCHW) {
          col = i % t.tw; r = i / t.tw % t.th; img = i / out_plane % t.nb; c_l = i / (out_plane * t.nb);
        } else {
          c_l = i % ncb; col = i / ncb % t.tw; r = i / (ncb * t.tw) % t.th; img = i / (ncb * out_plane);
        }
        const int64_t n = n0 + img, oh = oh0 + r, ow = ow0 + col;
        if (n < p.N && oh < p.HO && ow < p.WO)
          y[global_index(L, n, c0 + c_l, oh, ow, p.C, p.HO, p.WO)] =
              s_y[(c_l * t.nb + img) * out_plane + r * t.tw + col];
      }
    }
    __syncthreads();
  }
}

// Short maps: whole planes, and the fewest images per block that fill >= 80% of the 16-row blocks (more
// images leave shared memory for fewer channels, and NHWC staging reads cb channels per pixel). Taller maps:
// 32 x 64 tiles (NCHW), or 16 x 32 (NHWC, so that 8 channels per block fit at K = 7).
MmaTile mma_tile(const MmaConv& p, Layout layout) {
  MmaTile t;
  const int KB = 16 * ksteps_for(p.KW);
  const bool tall = p.HO > 16;
  const int tw_max = tall && layout == Layout::NHWC ? 32 : 8 * kMaxStrips;
  t.tw = int(std::min<int64_t>((p.WO + 7) / 8 * 8, tw_max));
  if (!tall) {
    t.th = int(p.HO);
    const int max_nb = int(std::min<int64_t>(p.N, 8));
    for (t.nb = 1; t.nb < max_nb; ++t.nb) {
      const int m = t.nb * t.th;
      if (m * 5 >= (m + 15) / 16 * 16 * 4) break;
    }
  } else {
    t.th = int(std::min<int64_t>(p.HO, layout == Layout::NHWC ? 16 : 32));
  }
  t.rows = t.th + p.KH - 1;
  t.ld = (t.tw + KB - 8 + 7) / 16 * 16 + 8;  // smallest >= tw + KB - 8 that is 8 mod 16
  t.mblocks = (t.nb * t.th + 15) / 16;
  t.jblocks = t.tw / 8;
  const size_t per_channel =
      sizeof(uint16_t) * (size_t(p.KH) * 8 * (KB + 8) + size_t(t.nb) * (size_t(t.rows) * t.ld + size_t(t.th) * t.tw));
  t.cb = int(std::min<int64_t>(p.C, 16));
  while (t.cb > 1 && t.cb * per_channel > kSmemLimit) t.cb = (t.cb + 1) / 2;
  t.smem = t.cb * per_channel;
  t.cblocks = (p.C + t.cb - 1) / t.cb;
  t.nblocks = (p.N + t.nb - 1) / t.nb;
  t.tiles_h = (p.HO + t.th - 1) / t.th;
  t.tiles_w = (p.WO + t.tw - 1) / t.tw;
  return t;
}

bool mma_device_ok() {
#if defined(__CUDACC__)
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  return major >= 8;
#else
  return true;
#endif
}

// KW <= 25: two k-steps at most; KH <= 25 keeps one channel's bands, input and output within 48 KiB.
bool mma_geometry_ok(const ConvShape& s) {
  const bool k_ok = s.KH <= 25 && s.KW <= 16 * kMaxKsteps - 7;
  return k_ok && s.SH == 1 && s.SW == 1 && s.DH == 1 && s.DW == 1;
}

template <typename T, Layout L, int KSTEPS>
void launch_strips(dim3 grid, const MmaConv& p, const MmaTile& t, bool vec_in, bool vec_out, const T* x,
                   const T* w, const T* b, T* y, cudaStream_t stream) {
  auto go = [&](auto nj) {
    auto kernel = conv_mma_kernel<T, L, KSTEPS, decltype(nj)::value>;
    DWCONV_LAUNCH(kernel, grid, dim3(kThreads), t.smem, stream, p, t, vec_in, vec_out, x, w, b, y);
  };
  if (t.jblocks <= 1) go(std::integral_constant<int, 1>{});
  else if (t.jblocks <= 2) go(std::integral_constant<int, 2>{});
  else if (t.jblocks <= 4) go(std::integral_constant<int, 4>{});
  else go(std::integral_constant<int, 8>{});
}

template <typename T, Layout L>
void launch_layout(dim3 grid, const MmaConv& p, const MmaTile& t, bool vec_in, bool vec_out, const T* x,
                   const T* w, const T* b, T* y, cudaStream_t stream) {
  if (ksteps_for(p.KW) == 1) launch_strips<T, L, 1>(grid, p, t, vec_in, vec_out, x, w, b, y, stream);
  else launch_strips<T, L, 2>(grid, p, t, vec_in, vec_out, x, w, b, y, stream);
}

template <typename T>
cudaError_t launch_mma(const MmaConv& p, const T* x, const T* w, const T* b, T* y, Layout layout,
                       cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, fp16_t> && !std::is_same_v<T, bf16_t>) {
    return cudaErrorInvalidValue;
  } else {
    const MmaTile t = mma_tile(p, layout);
    // NHWC 16-byte accesses: whole vectors of channels per block (and one input channel per output channel).
    auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    const bool vec_ok = layout == Layout::NHWC && t.cb % 8 == 0 && p.C % 8 == 0;
    const bool vec_in = vec_ok && p.M == 1 && aligned(x), vec_out = vec_ok && aligned(y);
    const dim3 grid = grid_for(t.nblocks * t.cblocks * t.tiles_h * t.tiles_w);
    g_mma_launches.fetch_add(1, std::memory_order_relaxed);
    if (layout == Layout::NCHW) launch_layout<T, Layout::NCHW>(grid, p, t, vec_in, vec_out, x, w, b, y, stream);
    else launch_layout<T, Layout::NHWC>(grid, p, t, vec_in, vec_out, x, w, b, y, stream);
    return cudaGetLastError();
  }
}

}  // namespace

int64_t mma_launches() { return g_mma_launches.load(std::memory_order_relaxed); }

template <typename T>
bool fwd_mma_supported(const ConvShape& s) {
  if constexpr (!std::is_same_v<T, fp16_t> && !std::is_same_v<T, bf16_t>) return false;
  else return mma_geometry_ok(s) && mma_device_ok();
}

template <typename T>
bool dgrad_mma_supported(const ConvShape& s) {
  return s.M == 1 && fwd_mma_supported<T>(s);
}

template <typename T>
cudaError_t launch_fwd_mma(const ConvShape& s, const T* x, const T* w, const T* b, T* y, cudaStream_t stream) {
  if (!fwd_mma_supported<T>(s)) return cudaErrorInvalidValue;
  const MmaConv p{s.N, s.C * s.M, s.M, s.H, s.W, s.HO, s.WO, s.PT, s.PL, int(s.KH), int(s.KW), false};
  return launch_mma<T>(p, x, w, b, y, s.layout, stream);
}

template <typename T>
cudaError_t launch_dgrad_mma(const ConvShape& s, const T* dy, const T* w, T* dx, cudaStream_t stream) {
  if (!dgrad_mma_supported<T>(s)) return cudaErrorInvalidValue;
  // dx[h, w] = sum dy[h + kh' - (KH-1-PT), w + kw' - (KW-1-PL)] * w[KH-1-kh', KW-1-kw']
  const MmaConv p{s.N, s.C, 1, s.HO, s.WO, s.H, s.W, s.KH - 1 - s.PT, s.KW - 1 - s.PL, int(s.KH), int(s.KW), true};
  return launch_mma<T>(p, dy, w, nullptr, dx, s.layout, stream);
}

#define DWCONV_MMA_INSTANTIATE(T)                                                                          \
  template bool fwd_mma_supported<T>(const ConvShape&);                                                     \
  template bool dgrad_mma_supported<T>(const ConvShape&);                                                   \
  template cudaError_t launch_fwd_mma<T>(const ConvShape&, const T*, const T*, const T*, T*, cudaStream_t); \
  template cudaError_t launch_dgrad_mma<T>(const ConvShape&, const T*, const T*, T*, cudaStream_t);
DWCONV_MMA_INSTANTIATE(float)
DWCONV_MMA_INSTANTIATE(double)
DWCONV_MMA_INSTANTIATE(fp16_t)
DWCONV_MMA_INSTANTIATE(bf16_t)
#undef DWCONV_MMA_INSTANTIATE

}  // namespace cuda
}  // namespace dwconv
