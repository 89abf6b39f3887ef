// The bf16 kernels for x86-64 CPUs with AVX-512 F/BW/VL/DQ and AVX512_BF16: the avx512 kernels, with the
// forward and the stride-1 dgrad multiplying bf16 pairs by vdpbf16ps where they read in place (NCHW planes,
// channels_last rows and batches, the NCHW batched small maps: batched_bf16dot.h), and wgrad (wgrad_bf16dot.h).
// The other dtypes have no use for it and are not built here.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // see kernels_avx512.cpp
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "cpu/isa.h"
#ifdef DWCONV_HAVE_AVX512
#define DWCONV_ISA avx512bf16
#define DWCONV_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,prfchw")))
#define DWCONV_BF16_DOT 1
#include "cpu/vec_avx512.h"
namespace dwconv::cpu::avx512bf16 {
using namespace dwconv::cpu::avx512;  // the vectors of vec_avx512.h
}
#include "cpu/vec_avx512bf16.h"
#include "cpu/plane_avx512.h"
#include "cpu/nhwc_avx512.h"
#include "cpu/wgrad_bf16dot.h"
#define DWCONV_PLANE_KERNELS 1
#define DWCONV_NHWC_KERNELS 1
#include "cpu/conv_ops.h"

namespace dwconv::cpu::avx512bf16 {
DWCONV_INSTANTIATE_ISA_KERNELS(bf16)
}  // namespace dwconv::cpu::avx512bf16
#endif
