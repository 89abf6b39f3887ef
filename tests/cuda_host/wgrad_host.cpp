// The CUDA wgrad kernels compiled as C++ for the host emulation (DWCONV_CUDA_HOST_EMULATION).
#include "cuda/wgrad.cu"
