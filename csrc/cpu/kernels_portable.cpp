// The kernels for any CPU: baseline ISA, vectors as plain arrays.
#define DWCONV_ISA portable
#define DWCONV_TARGET
#include "cpu/isa.h"
#include "cpu/vec_portable.h"
#include "cpu/conv_ops.h"

namespace dwconv::cpu::portable {
DWCONV_INSTANTIATE_ISA_KERNELS(float)
DWCONV_INSTANTIATE_ISA_KERNELS(double)
DWCONV_INSTANTIATE_ISA_KERNELS(bf16)
DWCONV_INSTANTIATE_ISA_KERNELS(f16)
}  // namespace dwconv::cpu::portable
