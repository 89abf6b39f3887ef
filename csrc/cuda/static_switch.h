// Turns a run-time kernel size into a compile-time constant (causal-conv1d's static_switch idea).
// Square kernels of the specialised sizes get KH_ = KW_ = K (loops fully unrolled, taps in registers);
// every other size runs the generic instantiation KH_ = KW_ = 0 (sizes read at run time).
#pragma once

// DWCONV_KERNEL_SIZE_SWITCH(kh, kw, [&] { ... uses constexpr int K ... });
#define DWCONV_KERNEL_SIZE_SWITCH(KH, KW, ...)                                         \
  [&] {                                                                                 \
    if ((KH) == (KW)) {                                                                 \
      switch (KH) {                                                                     \
        case 3: { constexpr int K = 3; return __VA_ARGS__(); }                          \
        case 5: { constexpr int K = 5; return __VA_ARGS__(); }                          \
        case 7: { constexpr int K = 7; return __VA_ARGS__(); }                          \
        case 9: { constexpr int K = 9; return __VA_ARGS__(); }                          \
        case 11: { constexpr int K = 11; return __VA_ARGS__(); }                        \
        case 13: { constexpr int K = 13; return __VA_ARGS__(); }                        \
        default: break;                                                                 \
      }                                                                                 \
    }                                                                                   \
    constexpr int K = 0;                                                                \
    return __VA_ARGS__();                                                               \
  }()
