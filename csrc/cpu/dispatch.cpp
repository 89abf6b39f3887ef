// Run-time choice of the kernels' ISA: AVX2/FMA where the CPU has it, else the portable build.
// DWCONV_CPU_ISA=portable forces the portable kernels (to test them on an AVX2 machine).
#include <cstdlib>
#include <cstring>

#include "cpu/isa.h"

namespace dwconv::cpu {
namespace {

bool use_avx2() {
#ifdef DWCONV_HAVE_AVX2
  static const bool cpu_has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* forced = std::getenv("DWCONV_CPU_ISA");
  return cpu_has_avx2 && !(forced && std::strcmp(forced, "portable") == 0);
#else
  return false;
#endif
}

}  // namespace

#ifdef DWCONV_HAVE_AVX2
#define DWCONV_CALL_ISA(op, ...) (use_avx2() ? avx2::op(__VA_ARGS__) : portable::op(__VA_ARGS__))
#else
#define DWCONV_CALL_ISA(op, ...) portable::op(__VA_ARGS__)
#endif

template <typename T>
void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads) {
  DWCONV_CALL_ISA(fwd<T>, s, x, w, b, y, threads);
}

template <typename T>
void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads) {
  DWCONV_CALL_ISA(dgrad<T>, s, dy, w, dx, threads);
}

template <typename T>
void wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, int threads) {
  DWCONV_CALL_ISA(wgrad<T>, s, dy, x, dw, threads);
}

DWCONV_INSTANTIATE_ISA_KERNELS(float)
DWCONV_INSTANTIATE_ISA_KERNELS(double)
DWCONV_INSTANTIATE_ISA_KERNELS(bf16)
DWCONV_INSTANTIATE_ISA_KERNELS(f16)

}  // namespace dwconv::cpu
