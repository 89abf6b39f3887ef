// advise_huge_pages: asks Linux to back a fresh CPU tensor with transparent huge pages before anything writes it.
// A large output is often new memory (glibc maps anything above 32 MiB anew on every allocation), and a kernel's
// first writes then take one page fault per 4 KiB (about 9,400 for a 38.5 MB output, more time than the kernel
// itself on a VM); with huge pages they take one per 2 MiB. The hint changes no value, and is ignored where THP
// is off. dwconv/outputs.py decides which outputs get it.
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dwconv::cpu {
namespace {

constexpr uintptr_t kHugePage = uintptr_t(2) << 20;

// Registered for CPU tensors only. Advises the whole 2 MiB pages that lie inside both t's elements and its
// storage (nothing another tensor could own), and returns whether madvise accepted that (false: no whole page
// inside, not Linux, or a kernel without THP; with THP set to "never" the call succeeds and changes nothing).
bool advise_huge_pages(const at::Tensor& t) {
  TORCH_CHECK(t.is_non_overlapping_and_dense(),
              "advise_huge_pages: expected a non-overlapping, dense tensor (a fresh output), got sizes ", t.sizes(),
              " and strides ", t.strides());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (t.numel() == 0 || !t.has_storage()) return false;
  // Dense and non-overlapping: the elements are one span starting at data_ptr (never before the storage).
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t storage_end = reinterpret_cast<uintptr_t>(t.storage().data()) + uintptr_t(t.storage().nbytes());
  const uintptr_t end = std::min(begin + uintptr_t(t.numel()) * uintptr_t(t.element_size()), storage_end);
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
