// Straightforward scalar kernels (any shape, any layout): the portable baseline.
#include "naive.h"

namespace dwconv::cpu {

template <typename T>
void fwd(const ConvShape& s, const T* x, const T* w, const T* b, T* y, int threads) {
  using A = acc_t<T>;
  const Strides xs(s.layout, s.C, s.H, s.W), ys(s.layout, s.CO(), s.HO, s.WO);
  const int64_t planes = s.N * s.CO();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t n = p / s.CO(), co = p % s.CO(), c = co / s.M;
    const T* wc = w + co * s.KH * s.KW;
    for (int64_t oh = 0; oh < s.HO; ++oh)
      for (int64_t ow = 0; ow < s.WO; ++ow) {
        A acc = b ? load_acc(b[co]) : A(0);
        for (int64_t kh = 0; kh < s.KH; ++kh) {
          const int64_t ih = oh * s.SH + kh * s.DH - s.PT;
          if (ih < 0 || ih >= s.H) continue;
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const int64_t iw = ow * s.SW + kw * s.DW - s.PL;
            if (iw < 0 || iw >= s.W) continue;
            acc += load_acc(x[xs.at(n, c, ih, iw)]) * load_acc(wc[kh * s.KW + kw]);
          }
        }
        y[ys.at(n, co, oh, ow)] = store_as<T>(acc);
      }
  }
}

template <typename T>
void dgrad(const ConvShape& s, const T* dy, const T* w, T* dx, int threads) {
  using A = acc_t<T>;
  const Strides xs(s.layout, s.C, s.H, s.W), ys(s.layout, s.CO(), s.HO, s.WO);
  const int64_t planes = s.N * s.C;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t n = p / s.C, c = p % s.C;
    for (int64_t ih = 0; ih < s.H; ++ih)
      for (int64_t iw = 0; iw < s.W; ++iw) {
        A acc = 0;
        for (int64_t j = 0; j < s.M; ++j) {
          const int64_t co = c * s.M + j;
          const T* wc = w + co * s.KH * s.KW;
          for (int64_t kh = 0; kh < s.KH; ++kh) {
            const int64_t th = ih + s.PT - kh * s.DH;  // = oh * SH when tap kh of output oh hits ih
            if (th < 0 || th % s.SH) continue;
            const int64_t oh = th / s.SH;
            if (oh >= s.HO) continue;
            for (int64_t kw = 0; kw < s.KW; ++kw) {
              const int64_t tw = iw + s.PL - kw * s.DW;
              if (tw < 0 || tw % s.SW) continue;
              const int64_t ow = tw / s.SW;
              if (ow >= s.WO) continue;
              acc += load_acc(dy[ys.at(n, co, oh, ow)]) * load_acc(wc[kh * s.KW + kw]);
            }
          }
        }
        dx[xs.at(n, c, ih, iw)] = store_as<T>(acc);
      }
  }
}

template <typename T>
void wgrad(const ConvShape& s, const T* dy, const T* x, acc_t<T>* dw, int threads) {
  using A = acc_t<T>;
  const Strides xs(s.layout, s.C, s.H, s.W), ys(s.layout, s.CO(), s.HO, s.WO);
  // One output channel per iteration, summed in a fixed order: deterministic for any thread count.
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t co = 0; co < s.CO(); ++co) {
    const int64_t c = co / s.M;
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        A acc = 0;
        for (int64_t n = 0; n < s.N; ++n)
          for (int64_t oh = 0; oh < s.HO; ++oh) {
            const int64_t ih = oh * s.SH + kh * s.DH - s.PT;
            if (ih < 0 || ih >= s.H) continue;
            for (int64_t ow = 0; ow < s.WO; ++ow) {
              const int64_t iw = ow * s.SW + kw * s.DW - s.PL;
              if (iw < 0 || iw >= s.W) continue;
              acc += load_acc(dy[ys.at(n, co, oh, ow)]) * load_acc(x[xs.at(n, c, ih, iw)]);
            }
          }
        dw[(co * s.KH + kh) * s.KW + kw] = acc;
      }
  }
}

#define DWCONV_INSTANTIATE(T)                                                              \
  template void fwd<T>(const ConvShape&, const T*, const T*, const T*, T*, int);           \
  template void dgrad<T>(const ConvShape&, const T*, const T*, T*, int);                   \
  template void wgrad<T>(const ConvShape&, const T*, const T*, acc_t<T>*, int);
DWCONV_INSTANTIATE(float)
DWCONV_INSTANTIATE(double)
DWCONV_INSTANTIATE(bf16)
#undef DWCONV_INSTANTIATE

}  // namespace dwconv::cpu
