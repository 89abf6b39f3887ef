// The per-ISA builds of the kernels (kernels_avx512.cpp, kernels_avx2.cpp, kernels_portable.cpp) and the
// run-time choice between them (dispatch.cpp).
#pragma once
#include "cpu/kernels.h"

#define DWCONV_DECLARE_ISA_KERNELS(isa)                                                   \
  namespace dwconv::cpu::isa {                                                            \
  template <typename T>                                                                   \
  void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads);    \
  template <typename T>                                                                   \
  void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads);            \
  template <typename T>                                                                   \
  void wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, int threads);     \
  }

#define DWCONV_INSTANTIATE_ISA_KERNELS(T)                                                 \
  template void fwd<T>(const ConvShape&, const T*, const T*, const T*, T*, int);          \
  template void dgrad<T>(const ConvShape&, const T*, const T*, T*, int);                  \
  template void wgrad<T>(const ConvShape&, const T*, const T*, acc_t<T>*, int);

DWCONV_DECLARE_ISA_KERNELS(portable)
#if defined(__x86_64__) || defined(_M_X64)
#define DWCONV_HAVE_AVX2 1
#define DWCONV_HAVE_AVX512 1
DWCONV_DECLARE_ISA_KERNELS(avx2)
DWCONV_DECLARE_ISA_KERNELS(avx512)
DWCONV_DECLARE_ISA_KERNELS(avx512bf16)  // instantiated for bf16 only
#endif
