// Geometry and pointers of one depthwise convolution, shared by every native kernel.
// Plain C++ (no torch headers) so .cu files and host builds can include it.
#pragma once
#include <cstdint>

namespace dwconv {

enum class Layout : int { NCHW = 0, NHWC = 1 };

// Logical shapes (always NCHW order, whatever the memory layout):
//   x:  (N, C, H, W)          dx: same
//   w:  (C*M, 1, KH, KW)      dw: same (contiguous)
//   y:  (N, C*M, HO, WO)      dy: same
// Output channel c*M + j reads input channel c.
// Index math: y[n, co, oh, ow] = b[co] + sum_{kh,kw} x[n, co/M, oh*SH + kh*DH - PT, ow*SW + kw*DW - PL] * w[co, 0, kh, kw]
// Memory: NCHW: x[((n*C + c)*H + h)*W + w];  NHWC: x[((n*H + h)*W + w)*C + c]  (y/dy likewise with C*M).
struct ConvShape {
  int64_t N, C, H, W;  // input
  int64_t M;           // channel multiplier
  int64_t HO, WO;      // output
  int64_t KH, KW;
  int64_t SH, SW;      // stride
  int64_t PT, PL;      // top / left padding (bottom / right follow from HO, WO)
  int64_t DH, DW;      // dilation
  Layout layout;
  int64_t CO() const { return C * M; }
};

}  // namespace dwconv
