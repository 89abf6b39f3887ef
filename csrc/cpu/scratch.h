// Aligned scratch memory for channel-blocked tiles (ISA-independent).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

namespace dwconv::cpu {

template <typename A>
class Scratch {
 public:
  explicit Scratch(size_t count) {
    const size_t bytes = ((count * sizeof(A) + 63) / 64) * 64;
    data_ = static_cast<A*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!data_) throw std::bad_alloc();
  }
  ~Scratch() { std::free(data_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  A* get() const { return data_; }

 private:
  A* data_;
};

}  // namespace dwconv::cpu
