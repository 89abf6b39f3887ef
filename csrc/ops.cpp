// Schemas of the native ops; each backend (csrc/cpu, csrc/cuda) registers its dispatch-key implementations.
// The Python module dwconv._C: python_module.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dwconv, m) {
  // Out-variants: the caller allocates every output (so tests can poison it) in the layout of x / grad_out
  // (NCHW- or channels_last-contiguous). padding is (top, bottom, left, right). Kernel size comes from
  // weight / grad_w, input size from x / grad_x. grad_w is fp32 (fp64 for double inputs) and is fully
  // overwritten (never accumulated into).
  // family / variant: which kernels run (a plan's family and variant, dwconv/plans.py). cpu: family "avx512bf16"
  // (bfloat16 only), "avx512", "avx2" or "portable" (the instruction set; "" = the best this CPU has for the
  // dtype), variant 0. cuda: family "fma" or "mma" ("" = "fma"), variant 0 except wgrad's, the block count its
  // batch is sliced for (0 = default).
  // A family or variant that cannot run the call is an error.
  m.def("native_fwd(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, str family, int variant, Tensor(a!) y) -> ()");
  m.def("native_dgrad(Tensor grad_out, Tensor weight, int[2] stride, int[4] padding, int[2] dilation, str family, int variant, Tensor(a!) grad_x) -> ()");
  m.def("native_wgrad(Tensor grad_out, Tensor x, int[2] stride, int[4] padding, int[2] dilation, bool deterministic, str family, int variant, Tensor(a!) grad_w) -> ()");
  // The CPU families this machine can run, best first (an empty list when built without CPU kernels).
  m.def("cpu_families() -> str[]");
  // Memory hint for a fresh CPU output (csrc/cpu/huge_pages.cpp): returns whether madvise accepted it.
  m.def("advise_huge_pages(Tensor t) -> bool");
  // Large CPU outputs from memory kept mapped between calls (csrc/cpu/output_pool.cpp): an uninitialized tensor
  // (contiguous, or channels_last for 4 sizes) whose memory returns to the pool when it dies; the pool keeps at most
  // limit_bytes of such freed memory (set as by output_pool_set_limit). huge_pages: a fresh block is advised for
  // transparent huge pages.
  m.def("output_pool_empty(int[] size, ScalarType dtype, bool channels_last, bool huge_pages, int limit_bytes) -> Tensor");
  // The most freed memory the pool keeps; freeing the least recently freed blocks beyond it now.
  m.def("output_pool_set_limit(int limit_bytes) -> ()");
  // [cached bytes, cached blocks, bytes in use, blocks in use, allocations served from the cache, fresh ones]
  m.def("output_pool_stats() -> int[]");
  // Frees the cached (unused) memory.
  m.def("output_pool_release() -> ()");
  // The bias gradient of a CPU tensor (csrc/cpu/channel_sums.cpp): out[c] = sum over n, h, w of t, fp32 (fp64 for
  // double), deterministic.
  m.def("native_channel_sums(Tensor t, Tensor(a!) out) -> ()");
}
