// output_pool_empty: CPU tensors for dwconv's large outputs from memory that stays mapped between calls.
// glibc maps every allocation above 32 MiB anew and unmaps it on free, so each such output costs the kernel one
// page fault per 4 KiB (one per 2 MiB with huge pages) and the kernel's zeroing of every page: on a VM that is
// more time than the convolution (N32 C1536 14x14 fp32: 38.5 MB, 7 ms of kernel and 4 ms of faults with huge
// pages, 22 ms without). A pooled block is kept after its tensor dies and handed to the next output it fits, as
// inference runtimes keep an arena. The pool holds at most `limit` bytes of freed blocks (least recently freed
// go first); memory still in use is not counted. Values are never read: a block comes back with whatever the
// last tensor left in it, as malloc's memory does.
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dwconv::cpu {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

struct Block {
  void* ptr;
  size_t bytes;
};

class OutputPool final : public c10::Allocator {
 public:
  // The next allocate() call's settings (set under the same lock as the allocation that uses them).
  void configure(bool huge_pages, int64_t limit) {
    std::lock_guard<std::mutex> lock(mutex_);
    huge_pages_ = huge_pages;
    limit_ = size_t(std::max<int64_t>(limit, 0));
  }

  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &give_back, cpu};
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* ptr = nullptr;
    bool advise = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // the smallest freed block that holds n bytes without wasting more than a quarter of them
      auto best = cached_.end();
      for (auto it = cached_.begin(); it != cached_.end(); ++it)
        if (it->bytes >= bytes && it->bytes <= bytes + bytes / 4 && (best == cached_.end() || it->bytes < best->bytes))
          best = it;
      if (best != cached_.end()) {
        ptr = best->ptr;
        live_[ptr] = best->bytes;
        cached_bytes_ -= best->bytes;
        cached_.erase(best);
        ++hits_;
      } else {
        ++misses_;
        advise = huge_pages_;
      }
    }
    if (!ptr) {
      ptr = std::aligned_alloc(kHugePage, bytes);
      if (!ptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      if (advise) madvise(ptr, bytes, MADV_HUGEPAGE);  // a hint: refused or ignored, the memory is the same
#endif
      std::lock_guard<std::mutex> lock(mutex_);
      live_[ptr] = bytes;
    }
    return {ptr, ptr, &give_back, cpu};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Frees every cached block (memory in use stays until its tensors die).
  void release_cached() { trim(0); }

  // cached bytes, cached blocks, bytes in use, blocks in use, allocations served from the cache, fresh ones
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t live_bytes = 0;
    for (const auto& kv : live_) live_bytes += kv.second;
    return {int64_t(cached_bytes_), int64_t(cached_.size()), int64_t(live_bytes), int64_t(live_.size()),
            int64_t(hits_), int64_t(misses_)};
  }

 private:
  static void give_back(void* ptr) {
    if (ptr) instance().take(ptr);
  }

  void take(void* ptr) {
    size_t limit;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(ptr);
      if (it == live_.end()) return;  // unreachable: every pointer handed out is in live_
      cached_.push_back({ptr, it->second});
      cached_bytes_ += it->second;
      live_.erase(it);
      limit = limit_;
    }
    trim(limit);
  }

  // Frees the least recently freed blocks until at most `limit` bytes stay cached.
  void trim(size_t limit) {
    std::vector<void*> freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (cached_bytes_ > limit) {
        freed.push_back(cached_.front().ptr);
        cached_bytes_ -= cached_.front().bytes;
        cached_.pop_front();
      }
    }
    for (void* p : freed) std::free(p);
  }

 public:
  // Never destroyed: tensors may die after static destructors have run.
  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool();
    return *pool;
  }

 private:
  std::mutex mutex_;
  std::list<Block> cached_;  // least recently freed first
  std::unordered_map<void*, size_t> live_;
  size_t cached_bytes_ = 0, limit_ = 0;
  bool huge_pages_ = true;
  uint64_t hits_ = 0, misses_ = 0;
};

at::Tensor output_pool_empty(at::IntArrayRef size, at::ScalarType dtype, bool channels_last, bool huge_pages,
                             int64_t limit_bytes) {
  TORCH_CHECK(limit_bytes >= 0, "output_pool_empty: limit_bytes must be >= 0, got ", limit_bytes);
  TORCH_CHECK(!channels_last || size.size() == 4, "output_pool_empty: channels_last needs 4 sizes, got ", size);
  auto& pool = OutputPool::instance();
  pool.configure(huge_pages, limit_bytes);
  return at::detail::empty_generic(size, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   channels_last ? c10::MemoryFormat::ChannelsLast : c10::MemoryFormat::Contiguous);
}

std::vector<int64_t> output_pool_stats() { return OutputPool::instance().stats(); }

void output_pool_release() { OutputPool::instance().release_cached(); }

}  // namespace

TORCH_LIBRARY_IMPL(dwconv, CompositeExplicitAutograd, m) {
  m.impl("output_pool_empty", &output_pool_empty);
  m.impl("output_pool_stats", &output_pool_stats);
  m.impl("output_pool_release", &output_pool_release);
}

}  // namespace dwconv::cpu
