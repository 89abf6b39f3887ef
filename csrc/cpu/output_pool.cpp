// output_pool_empty: CPU tensors for dwconv's large outputs from memory that stays mapped between calls.
// glibc maps every allocation above 32 MiB anew and unmaps it on free, so each such output costs the kernel one
// page fault per 4 KiB (one per 2 MiB with huge pages) and the kernel's zeroing of every page: on a VM that is
// more time than the convolution (N32 C1536 14x14 fp32: 38.5 MB, 7 ms of kernel and 4 ms of faults with huge
// pages, 22 ms without). A pooled block is kept after its tensor dies and handed to the next output it fits, as
// inference runtimes keep an arena. Blocks are whole 2 MiB pages; an output takes the smallest freed block that
// is at most a quarter larger than its size rounded up to 2 MiB. Each block is a mapping of its own (mmap, not
// malloc: it has never held anything else, so huge-page advice is the pool's alone, and a freed block goes back to
// the system, where glibc may keep freed heap memory). The pool keeps at most `limit` bytes of freed
// blocks (the least recently freed go first when it would hold more; lowering the limit frees at once); memory in
// use is not counted. A pooled tensor's storage resizes through the pool too, whatever its new size. Values are
// never read: a block comes back with whatever the last tensor left in it, as malloc's memory does.
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace dwconv::cpu {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

struct Block {
  void* ptr;
  size_t bytes;
};

// `bytes` (a multiple of kHugePage) aligned to kHugePage, or nullptr.
void* map_block(size_t bytes) {
#if defined(__linux__)
  const size_t span = bytes + kHugePage;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  const size_t head = aligned - start, tail = span - head - bytes;
  if (head) munmap(raw, head);
  if (tail) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  return reinterpret_cast<void*>(aligned);
#else
  return std::aligned_alloc(kHugePage, bytes);
#endif
}

void unmap_block(void* ptr, size_t bytes) noexcept {
#if defined(__linux__)
  munmap(ptr, bytes);
#else
  (void)bytes;
  std::free(ptr);
#endif
}

// Whether the next fresh block the calling thread gets is advised for huge pages (set by output_pool_empty).
thread_local bool t_advise_huge_pages = true;

class OutputPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &give_back, cpu};
    if (n > std::numeric_limits<size_t>::max() - kHugePage) throw std::bad_alloc();
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = cached_.end();
      for (auto it = cached_.begin(); it != cached_.end(); ++it)
        if (it->bytes >= bytes && it->bytes <= bytes + bytes / 4 && (best == cached_.end() || it->bytes < best->bytes))
          best = it;
      if (best != cached_.end()) {
        void* ptr = best->ptr;
        cached_bytes_ -= best->bytes;
        live_.splice(live_.end(), cached_, best);  // moves the node (where_'s iterator stays valid): no allocation
        ++hits_;
        return {ptr, ptr, &give_back, cpu};
      }
      ++misses_;
    }
    void* ptr = map_block(bytes);
    if (!ptr) {  // the cached blocks may be what stands in the way
      release_cached();
      ptr = map_block(bytes);
      if (!ptr) throw std::bad_alloc();
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (t_advise_huge_pages) madvise(ptr, bytes, MADV_HUGEPAGE);  // a hint: refused or ignored, the memory is the same
#endif
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      live_.push_back({ptr, bytes});
      where_[ptr] = std::prev(live_.end());
    } catch (...) {
      if (!live_.empty() && live_.back().ptr == ptr) live_.pop_back();
      unmap_block(ptr, bytes);
      throw;
    }
    return {ptr, ptr, &give_back, cpu};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Keeps at most `limit` bytes of freed blocks from now on, freeing the least recently freed beyond it.
  void set_limit(size_t limit) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = limit;
    trim_locked(limit_);
  }

  // Frees every cached block (memory in use stays until its tensors die).
  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked(0);
  }

  // cached bytes, cached blocks, bytes in use, blocks in use, allocations served from the cache, fresh ones
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t live_bytes = 0;
    for (const auto& b : live_) live_bytes += b.bytes;
    return {int64_t(cached_bytes_), int64_t(cached_.size()), int64_t(live_bytes), int64_t(live_.size()),
            int64_t(hits_), int64_t(misses_)};
  }

  // Never destroyed: tensors may die after static destructors have run.
  static OutputPool& instance() {
    static OutputPool* pool = create();
    return *pool;
  }

 private:
  static OutputPool* create() {
    auto* pool = new OutputPool();
#if defined(__linux__)
    // A child forked while another thread held the lock would wait on it forever: hold it across fork().
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
#endif
    return pool;
  }

  // The deleter of every block handed out (it runs in destructors: nothing here may throw or allocate).
  static void give_back(void* ptr) noexcept {
    if (!ptr) return;
    auto& pool = instance();
    std::lock_guard<std::mutex> lock(pool.mutex_);
    auto it = pool.where_.find(ptr);
    if (it == pool.where_.end()) return;  // unreachable: every pointer handed out is in where_
    const auto node = it->second;
    if (node->bytes > pool.limit_) {  // a block the limit cannot keep goes at once, before any older one
      pool.where_.erase(it);
      unmap_block(node->ptr, node->bytes);
      pool.live_.erase(node);
      return;
    }
    pool.cached_.splice(pool.cached_.end(), pool.live_, node);  // where_'s iterator stays valid
    pool.cached_bytes_ += node->bytes;
    pool.trim_locked(pool.limit_);
  }

  // Unmaps the least recently freed blocks until at most `keep` bytes stay cached.
  void trim_locked(size_t keep) noexcept {
    while (cached_bytes_ > keep) {
      cached_bytes_ -= cached_.front().bytes;
      where_.erase(cached_.front().ptr);
      unmap_block(cached_.front().ptr, cached_.front().bytes);
      cached_.pop_front();
    }
  }

  std::mutex mutex_;
  std::list<Block> cached_, live_;  // cached_: least recently freed first
  std::unordered_map<void*, std::list<Block>::iterator> where_;  // every block, cached or live
  size_t cached_bytes_ = 0, limit_ = 0;
  uint64_t hits_ = 0, misses_ = 0;
};

at::Tensor output_pool_empty(at::IntArrayRef size, at::ScalarType dtype, bool channels_last, bool huge_pages,
                             int64_t limit_bytes) {
  TORCH_CHECK(limit_bytes >= 0, "output_pool_empty: limit_bytes must be >= 0, got ", limit_bytes);
  TORCH_CHECK(!channels_last || size.size() == 4, "output_pool_empty: channels_last needs 4 sizes, got ", size);
  auto& pool = OutputPool::instance();
  pool.set_limit(size_t(limit_bytes));
  t_advise_huge_pages = huge_pages;
  return at::detail::empty_generic(size, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   channels_last ? c10::MemoryFormat::ChannelsLast : c10::MemoryFormat::Contiguous);
}

void output_pool_set_limit(int64_t limit_bytes) {
  TORCH_CHECK(limit_bytes >= 0, "output_pool_set_limit: limit_bytes must be >= 0, got ", limit_bytes);
  OutputPool::instance().set_limit(size_t(limit_bytes));
}

std::vector<int64_t> output_pool_stats() { return OutputPool::instance().stats(); }

void output_pool_release() { OutputPool::instance().release_cached(); }

}  // namespace

TORCH_LIBRARY_IMPL(dwconv, CompositeExplicitAutograd, m) {
  m.impl("output_pool_empty", &output_pool_empty);
  m.impl("output_pool_set_limit", &output_pool_set_limit);
  m.impl("output_pool_stats", &output_pool_stats);
  m.impl("output_pool_release", &output_pool_release);
}

}  // namespace dwconv::cpu
