// The CUDA dgrad kernels compiled as C++ for the host emulation (DWCONV_CUDA_HOST_EMULATION).
#include "cuda/dgrad.cu"
