// Run-time choice of the kernels' ISA: the caller names one (binding.cpp: the op's `family`), which must be
// one this CPU supports; best_isa() is the default.
#include "cpu/isa.h"

#include <type_traits>

namespace dwconv::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512bf16";
    case Isa::Avx2: return "avx2";
    case Isa::Portable: return "portable";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Portable: return true;
    case Isa::Avx2:
#ifdef DWCONV_HAVE_AVX2
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
    case Isa::Avx512:
#ifdef DWCONV_HAVE_AVX512
      // libgcc reports AVX-512 features only where the OS saves the zmm / mask state (XCR0)
      return isa_supported(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
      return false;
#endif
    case Isa::Avx512Bf16:
#ifdef DWCONV_HAVE_AVX512
      return isa_supported(Isa::Avx512) && __builtin_cpu_supports("avx512bf16");
#else
      return false;
#endif
  }
  return false;
}

Isa best_isa(bool bf16) {
  static const auto best = [](bool for_bf16) {
    for (Isa isa : kIsasBestFirst)
      if (isa_supported(isa) && (for_bf16 || !isa_bf16_only(isa))) return isa;
    return Isa::Portable;
  };
  static const Isa best_bf16 = best(true), best_other = best(false);
  return bf16 ? best_bf16 : best_other;
}

// Avx512Bf16 reaches here with bf16 data only (binding.cpp checks it); for the others it would be Avx512.
#if defined(DWCONV_HAVE_AVX512)
#define DWCONV_CALL_ISA(op, ...)                                                                        \
  do {                                                                                                  \
    if constexpr (std::is_same_v<T, bf16>)                                                              \
      if (isa == Isa::Avx512Bf16) return avx512bf16::op(__VA_ARGS__);                                   \
    return isa == Isa::Avx512 || isa == Isa::Avx512Bf16                                                 \
               ? avx512::op(__VA_ARGS__)                                                                \
               : isa == Isa::Avx2 ? avx2::op(__VA_ARGS__) : portable::op(__VA_ARGS__);                  \
  } while (0)
#elif defined(DWCONV_HAVE_AVX2)
#define DWCONV_CALL_ISA(op, ...) (isa == Isa::Avx2 ? avx2::op(__VA_ARGS__) : portable::op(__VA_ARGS__))
#else
#define DWCONV_CALL_ISA(op, ...) portable::op(__VA_ARGS__)
#endif

template <typename T>
void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads, Isa isa) {
  DWCONV_CALL_ISA(fwd<T>, s, x, w, b, y, threads);
}

template <typename T>
void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads, Isa isa) {
  DWCONV_CALL_ISA(dgrad<T>, s, dy, w, dx, threads);
}

template <typename T>
void wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, int threads, Isa isa) {
  DWCONV_CALL_ISA(wgrad<T>, s, dy, x, dw, threads);
}

#define DWCONV_INSTANTIATE_DISPATCH(T)                                                  \
  template void fwd<T>(const ConvShape&, const T*, const T*, const T*, T*, int, Isa);   \
  template void dgrad<T>(const ConvShape&, const T*, const T*, T*, int, Isa);           \
  template void wgrad<T>(const ConvShape&, const T*, const T*, acc_t<T>*, int, Isa);
DWCONV_INSTANTIATE_DISPATCH(float)
DWCONV_INSTANTIATE_DISPATCH(double)
DWCONV_INSTANTIATE_DISPATCH(bf16)
DWCONV_INSTANTIATE_DISPATCH(f16)

}  // namespace dwconv::cpu
