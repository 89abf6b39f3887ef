// Element access shared by the straightforward (scalar) kernels.
#pragma once
#include "kernels.h"

namespace dwconv::cpu {

inline float load_acc(float v) { return v; }
inline float load_acc(bf16 v) { return to_float(v); }
inline double load_acc(double v) { return v; }

template <typename T> inline T store_as(acc_t<T> v) { return T(v); }
template <> inline bf16 store_as<bf16>(float v) { return to_bf16(v); }

// Element strides of a 4-D (N, C, H, W) tensor stored in `layout`.
struct Strides {
  int64_t n, c, h, w;
  Strides(Layout layout, int64_t C, int64_t H, int64_t W)
      : n(C * H * W),
        c(layout == Layout::NCHW ? H * W : 1),
        h(layout == Layout::NCHW ? W : W * C),
        w(layout == Layout::NCHW ? 1 : C) {}
  int64_t at(int64_t in, int64_t ic, int64_t ih, int64_t iw) const { return in * n + ic * c + ih * h + iw * w; }
};

}  // namespace dwconv::cpu
