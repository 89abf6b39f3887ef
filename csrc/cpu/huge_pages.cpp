// advise_huge_pages: asks Linux to back a fresh CPU tensor with transparent huge pages before anything writes it.
// A large output is often new memory (glibc maps anything above 32 MiB anew on every allocation), and a kernel's
// first writes then take one page fault per 4 KiB (about 9,400 for a 38.5 MB output, more time than the kernel
// itself on a VM); with huge pages they take one per 2 MiB. The hint changes no value, and is ignored where THP
// is off. dwconv/outputs.py decides which outputs get it.
#include <torch/library.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dwconv::cpu {
namespace {

constexpr uintptr_t kHugePage = uintptr_t(2) << 20;

// Registered for CPU tensors only. Returns whether the kernel accepted the hint for the 2 MiB-aligned part of t's storage (false: too small to
// hold an aligned huge page, not Linux, or THP unavailable).
bool advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + uintptr_t(t.nbytes());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = end & ~(kHugePage - 1);
  if (last <= first) return false;
  return madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) == 0;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY_IMPL(dwconv, CPU, m) { m.impl("advise_huge_pages", &advise_huge_pages); }

}  // namespace dwconv::cpu
