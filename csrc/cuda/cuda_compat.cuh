// The one place where device-only instructions meet their host equivalents. Kernels use only what is
// defined here (plus threadIdx/blockIdx/__syncthreads/__syncthreads_or/atomicAdd), so they compile with nvcc
// for the GPU and as plain C++ (host_emulation.h) for the CPU test build.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_types.h"

#if defined(__CUDACC__)
#define DWCONV_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#elif defined(DWCONV_CUDA_HOST_EMULATION)
#include <bit>
#include <cmath>
#else
#error "cuda_compat.cuh is for kernel sources (nvcc, or the host-emulation build)"
#endif

namespace dwconv {
namespace cuda {

// ---- fp16 / bf16 <-> float ----
#if defined(__CUDACC__)
__device__ __forceinline__ float to_float(fp16_t v) { return __half2float(v); }
__device__ __forceinline__ float to_float(bf16_t v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ fp16_t from_float<fp16_t>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float v) { return __float2bfloat16_rn(v); }
#else
// IEEE binary16 <-> binary32 in plain integer code (no _Float16 needed); round to nearest even.
inline float to_float(fp16_t v) {
  const uint32_t h = v.bits, sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1fu) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(float(mant) * 0x1p-24f));  // subnormal
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}
inline float to_float(bf16_t v) { return std::bit_cast<float>(uint32_t(v.bits) << 16); }
template <typename T> inline T from_float(float v);
template <> inline fp16_t from_float<fp16_t>(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {uint16_t(sign | 0x7e00u)};   // nan
  if (a >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (a < 0x38800000u)                                       // below 2^-14: subnormal half (or 0)
    return {uint16_t(sign | uint32_t(std::nearbyint(std::bit_cast<float>(a) * 0x1p24f)))};
  uint32_t r = a - 0x38000000u;                              // rebias the exponent (127 -> 15)
  r += 0xfffu + ((r >> 13) & 1u);                            // round to nearest even at bit 13
  return {uint16_t(sign | (r >> 13))};
}
template <> inline bf16_t from_float<bf16_t>(float v) {
  uint32_t u = std::bit_cast<uint32_t>(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t(0x7fc0)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                  // round to nearest even
  return {uint16_t(u >> 16)};
}
#endif
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ double to_float(double v) { return v; }
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }

// ---- inf / NaN test of fp16 / bf16 values by their bits (no conversion; --use_fast_math cannot drop it) ----
// nonfinite_probe2<T>(word) for two values packed in a 32-bit word: each half's exponent field plus one unit
// of it carries into the half's top bit exactly when the field is all ones (inf or NaN), and never into the
// other half. Probes are ORed together and tested once against kNonfiniteBits: 2 integer ops per word.
inline constexpr uint32_t kNonfiniteBits = 0x80008000u;
template <typename T>
__device__ __forceinline__ uint32_t nonfinite_probe2(uint32_t word) {
  static_assert(std::is_same_v<T, fp16_t> || std::is_same_v<T, bf16_t>, "fp16 / bf16 values");
  constexpr uint32_t exp = std::is_same_v<T, fp16_t> ? 0x7c00u : 0x7f80u, unit = exp & ~(exp << 1);
  return (word & (exp | exp << 16)) + (unit | unit << 16);
}
template <typename T>
__device__ __forceinline__ uint32_t nonfinite_probe(T v) {
  uint16_t bits;
  std::memcpy(&bits, &v, 2);
  return nonfinite_probe2<T>(bits);
}

template <typename T> __device__ __forceinline__ acc_t<T> load_acc(const T* p) { return acc_t<T>(to_float(*p)); }
template <typename T> __device__ __forceinline__ void store_acc(T* p, acc_t<T> v) {
  if constexpr (sizeof(T) == 8) *p = v; else *p = from_float<T>(float(v));
}

// ---- 16-byte vector load: VEC = 16 / sizeof(T) elements, converted to the accumulator type ----
struct alignas(16) Bytes16 { unsigned char b[16]; };
template <typename T>
__device__ __forceinline__ void load16_acc(const T* __restrict__ src, acc_t<T>* dst) {
  constexpr int kVec = 16 / sizeof(T);
  Bytes16 raw;
#if defined(__CUDACC__)
  raw = *reinterpret_cast<const Bytes16*>(src);  // one LDG.128; caller guarantees 16-byte alignment
#else
  dwconv_emu::check_aligned(src, 16);
  std::memcpy(&raw, src, 16);
#endif
  T vals[kVec];
  std::memcpy(vals, &raw, 16);
#pragma unroll
  for (int i = 0; i < kVec; ++i) dst[i] = acc_t<T>(to_float(vals[i]));
}

// ---- 16-byte vector load / store of 16 / sizeof(T) elements, no conversion (caller: 16-byte aligned) ----
template <typename T>
__device__ __forceinline__ void load16(const T* __restrict__ src, T (&dst)[16 / sizeof(T)]) {
  Bytes16 raw;
#if defined(__CUDACC__)
  raw = *reinterpret_cast<const Bytes16*>(src);
#else
  dwconv_emu::check_aligned(src, 16);
  std::memcpy(&raw, src, 16);
#endif
  std::memcpy(dst, &raw, 16);
}
template <typename T>
__device__ __forceinline__ void store16(T* __restrict__ dst, const T (&src)[16 / sizeof(T)]) {
  Bytes16 raw;
  std::memcpy(&raw, src, 16);
#if defined(__CUDACC__)
  *reinterpret_cast<Bytes16*>(dst) = raw;
#else
  dwconv_emu::check_aligned(dst, 16);
  std::memcpy(dst, &raw, 16);
#endif
}

// ---- 16-byte load as four 32-bit words (caller: 16-byte aligned); no byte-wise copy for ptxas to undo ----
__device__ __forceinline__ void load16_words(const void* __restrict__ src, uint32_t (&dst)[4]) {
#if defined(__CUDACC__)
  const uint4 v = *reinterpret_cast<const uint4*>(src);
  dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
#else
  dwconv_emu::check_aligned(src, 16);
  std::memcpy(dst, src, 16);
#endif
}

// ---- warp-wide tensor-core product: C(16x8, fp32) += A(16x16) * B(16x8), T = fp16_t or bf16_t ----
// Operands live in shared memory; lane l has g = l / 4, q = l % 4. A is taken in 8-column chunks: a lane's
// share of chunk [col0, col0 + 8) comes from a_lo = &A[g][col0] and a_hi = &A[g + 8][col0] (its own rows,
// anywhere in shared memory, 4-byte aligned). B is given as its transpose, bt[n * ldb + k] = B[k][n] (ldb even).
// Registers (the mma.m16n8k16 fragment layout of the PTX ISA; two consecutive k per 32-bit word, lower k in
// the low half):
//   AChunk {lo, hi} = {A[g][col0 + 2q ..], A[g + 8][col0 + 2q ..]}
//   BFrag  {k0, k8} = {B[2q ..][g], B[2q + 8 ..][g]}
//   c[0], c[1] = C[g][2q], C[g][2q + 1];   c[2], c[3] = C[g + 8][2q], C[g + 8][2q + 1].
// The loads are the same code on the device and the host. mma_16x8x16 is mma.sync (sm_80+) on the device; on
// the host a warp-collective emulation: every lane publishes its fragments, and after a warp barrier computes
// its four elements of C from the A and B that the 32 lanes' registers describe.
#if defined(__CUDACC__)
inline constexpr uint32_t kUnloadedWord = 0;
#else
inline constexpr uint32_t kUnloadedWord = 0xFFFFFFFFu;  // NaN in both halves: a fragment never loaded poisons C
#endif
struct AChunk { uint32_t lo = kUnloadedWord, hi = kUnloadedWord; };
struct BFrag { uint32_t k0 = kUnloadedWord, k8 = kUnloadedWord; };

__device__ __forceinline__ int lane_id() { return int(threadIdx.x) % 32; }

template <typename T>
__device__ __forceinline__ uint32_t load_word(const T* p) {
  static_assert(sizeof(T) == 2, "fp16 / bf16 operands");
#if defined(__CUDACC__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  dwconv_emu::check_aligned(p, 4);  // the device would fault on a misaligned 32-bit load
  uint32_t word;
  std::memcpy(&word, p, 4);
  return word;
#endif
}

template <typename T>
__device__ __forceinline__ AChunk load_a_chunk(const T* a_lo, const T* a_hi) {
  const int q = lane_id() % 4;
  return {load_word(a_lo + 2 * q), load_word(a_hi + 2 * q)};
}

template <typename T>
__device__ __forceinline__ BFrag load_b_frag(const T* bt, int ldb) {
  const int g = lane_id() / 4, q = lane_id() % 4;
  return {load_word(bt + g * ldb + 2 * q), load_word(bt + g * ldb + 2 * q + 8)};
}

#if !defined(__CUDACC__)
template <typename T>
inline float half_of(uint32_t word, int upper) {
  const uint16_t bits = uint16_t(upper ? word >> 16 : word & 0xFFFFu);
  T v;
  std::memcpy(&v, &bits, 2);
  return to_float(v);
}
#endif

// c += A * B with A = chunks a0 (k 0..7) and a8 (k 8..15). Warp-collective: every lane of the warp calls it.
template <typename T>
__device__ __forceinline__ void mma_16x8x16(const AChunk& a0, const AChunk& a8, const BFrag& b, float (&c)[4]) {
#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bf16_t>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0.lo), "r"(a0.hi), "r"(a8.lo), "r"(a8.hi), "r"(b.k0), "r"(b.k8));
  } else {
    static_assert(std::is_same_v<T, fp16_t>, "fp16 / bf16 operands");
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0.lo), "r"(a0.hi), "r"(a8.lo), "r"(a8.hi), "r"(b.k0), "r"(b.k8));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // launchers refuse the tensor-core path below sm_80
#endif
#else
  // The operand registers in mma.sync's order: a0..a3 = A rows g / g+8 at k 2q.. and k 2q+8.., b0, b1.
  struct Regs { uint32_t a[4], b[2]; };
  static_assert(sizeof(Regs) <= dwconv_emu::kExchangeBytes, "exchange slot");
  Regs* regs = reinterpret_cast<Regs*>(dwconv_emu::warp_exchange());
  const int lane = lane_id(), g = lane / 4, q = lane % 4;
  regs[lane] = {{a0.lo, a0.hi, a8.lo, a8.hi}, {b.k0, b.k8}};
  dwconv_emu::syncwarp();
  // A[r][k] sits in lane 4 (r % 8) + (k % 8) / 2, register a[(r >= 8) + 2 (k >= 8)], half k % 2;
  // B[k][n] in lane 4 n + (k % 8) / 2, register b[k >= 8], half k % 2.
  auto A = [&](int r, int k) { return half_of<T>(regs[4 * (r % 8) + k % 8 / 2].a[(r >= 8) + 2 * (k >= 8)], k % 2); };
  auto B = [&](int k, int n) { return half_of<T>(regs[4 * n + k % 8 / 2].b[k >= 8], k % 2); };
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i / 2), n = 2 * q + i % 2;
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) sum += A(r, k) * B(k, n);
    c[i] += sum;
  }
  dwconv_emu::syncwarp();  // the slots are read by the other lanes until here
#endif
}

// ---- dynamic shared memory of the current block ----
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
#if defined(__CUDACC__)
  extern __shared__ __align__(16) unsigned char dwconv_dynamic_smem[];
  return reinterpret_cast<T*>(dwconv_dynamic_smem);
#else
  return reinterpret_cast<T*>(dwconv_emu::smem_base());
#endif
}

// ---- launch geometry ----
// The most blocks a launcher's grid takes (grid_for, tile_geometry.cuh); the kernels' grid-stride loops
// cover the rest. The host emulation lets tests lower it, to run those loops' later rounds.
inline int64_t max_grid_blocks() {
#if defined(DWCONV_CUDA_HOST_EMULATION)
  return dwconv_emu::max_grid_blocks();
#else
  return int64_t(1) << 30;
#endif
}

}  // namespace cuda
}  // namespace dwconv
