// The kernels for x86-64 CPUs with AVX2 and FMA (compiled for them by function attribute; dispatch.cpp calls
// them only after checking the CPU).
#include "cpu/isa.h"
#ifdef DWCONV_HAVE_AVX2
#define DWCONV_ISA avx2
#define DWCONV_TARGET __attribute__((target("avx2,fma")))
#include "cpu/vec_avx2.h"
#include "cpu/conv_ops.h"

namespace dwconv::cpu::avx2 {
DWCONV_INSTANTIATE_ISA_KERNELS(float)
DWCONV_INSTANTIATE_ISA_KERNELS(double)
DWCONV_INSTANTIATE_ISA_KERNELS(bf16)
DWCONV_INSTANTIATE_ISA_KERNELS(f16)
}  // namespace dwconv::cpu::avx2
#endif
