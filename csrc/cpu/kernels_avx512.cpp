// The kernels for x86-64 CPUs with AVX-512 F/BW/VL/DQ (compiled for them by function attribute; dispatch.cpp
// calls them only after checking the CPU).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12 warns about the deliberately undefined pass-through operand of its own AVX-512 intrinsics
// (_mm512_undefined_ps, GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "cpu/isa.h"
#ifdef DWCONV_HAVE_AVX512
#define DWCONV_ISA avx512
// prfchw (PREFETCHW, prefetch for writing): on every CPU that has AVX-512.
#define DWCONV_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,prfchw")))
#include "cpu/vec_avx512.h"
#include "cpu/plane_avx512.h"
#include "cpu/nhwc_avx512.h"
#define DWCONV_PLANE_KERNELS 1  // conv_ops.h: NCHW planes (plane_avx512.h)
#define DWCONV_NHWC_KERNELS 1   // conv_ops.h: channels_last without tiles (nhwc_avx512.h)
#include "cpu/conv_ops.h"

namespace dwconv::cpu::avx512 {
DWCONV_INSTANTIATE_ISA_KERNELS(float)
DWCONV_INSTANTIATE_ISA_KERNELS(double)
DWCONV_INSTANTIATE_ISA_KERNELS(bf16)
DWCONV_INSTANTIATE_ISA_KERNELS(f16)
}  // namespace dwconv::cpu::avx512
#endif
