// Portable "vector" of L accumulation-type lanes: plain arrays that the compiler vectorizes for the baseline
// ISA. Same interface as vec_avx2.h. Include only inside namespace-per-ISA translation units (see isa.h).
#pragma once
#include <cstdint>

#include "cpu/kernels.h"

namespace dwconv::cpu::portable {

template <typename A>
struct Vec {
  static constexpr int L = sizeof(A) == 4 ? 8 : 4;  // lanes = channels per block
  struct type {
    A v[L];
  };
  static type zero() {
    type r;
    for (int i = 0; i < L; ++i) r.v[i] = A(0);
    return r;
  }
  static type load(const A* p) {
    type r;
    for (int i = 0; i < L; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(A* p, const type& a) {
    for (int i = 0; i < L; ++i) p[i] = a.v[i];
  }
  static type add(const type& a, const type& b) {
    type r;
    for (int i = 0; i < L; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  // a * b + c
  static type fma(const type& a, const type& b, const type& c) {
    type r;
    for (int i = 0; i < L; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
};

}  // namespace dwconv::cpu::portable

namespace dwconv::cpu::portable {

inline void store_bf16(bf16* p, const Vec<float>::type& a) {
  for (int i = 0; i < Vec<float>::L; ++i) p[i] = to_bf16(a.v[i]);
}
inline void store_f16(f16* p, const Vec<float>::type& a) {
  for (int i = 0; i < Vec<float>::L; ++i) p[i] = to_f16(a.v[i]);
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < L: transposes one L x L block.
template <typename A, int L>
inline void transpose_block(A* dst, int64_t dst_stride, const A* src, int64_t src_stride) {
  for (int j = 0; j < L; ++j)
    for (int i = 0; i < L; ++i) dst[j * dst_stride + i] = src[i * src_stride + j];
}

}  // namespace dwconv::cpu::portable
