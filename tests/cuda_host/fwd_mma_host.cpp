// The CUDA tensor-core kernels compiled as C++ for the host emulation (DWCONV_CUDA_HOST_EMULATION).
#include "cuda/fwd_mma.cu"
