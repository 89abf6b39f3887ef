// Helpers of dwconv._C's Python entries (python_module.cpp, direct_conv.cpp): reading arguments of exact types, the
// test whether the dispatcher would go straight to a backend kernel, the native ops' C++ call signatures.
#pragma once
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <limits>
#include <optional>
#include <string>

namespace dwconv::python {

using FwdOp = void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                   at::IntArrayRef, at::IntArrayRef, c10::string_view, int64_t, at::Tensor);
using DgradOp = void(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                     c10::string_view, int64_t, at::Tensor);
using WgradOp = void(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool,
                     c10::string_view, int64_t, at::Tensor);

// Reads positional arguments; each reader returns false where the value is not of the expected exact type.
class Args {
 public:
  Args(PyObject* const* args, Py_ssize_t n) : args_(args), n_(n) {}

  bool count(Py_ssize_t n) const { return n_ == n; }

  bool tensor(Py_ssize_t i, const at::Tensor*& out) const {
    if (!THPVariable_CheckExact(args_[i])) return false;
    out = &THPVariable_Unpack(args_[i]);
    return true;
  }

  bool optional_tensor(Py_ssize_t i, std::optional<at::Tensor>& out) const {
    if (args_[i] == Py_None) return true;
    const at::Tensor* t = nullptr;
    if (!tensor(i, t)) return false;
    out = *t;
    return true;
  }

  template <size_t N>
  bool ints(Py_ssize_t i, std::array<int64_t, N>& out) const {
    PyObject* seq = args_[i];
    if (!PyTuple_CheckExact(seq) || PyTuple_GET_SIZE(seq) != Py_ssize_t(N)) return false;
    for (size_t k = 0; k < N; ++k) {
      if (!to_int(PyTuple_GET_ITEM(seq, k), out[k])) return false;
    }
    return true;
  }

  bool integer(Py_ssize_t i, int64_t& out) const { return to_int(args_[i], out); }

  PyObject* object(Py_ssize_t i) const { return args_[i]; }

  bool boolean(Py_ssize_t i, bool& out) const {
    if (!PyBool_Check(args_[i])) return false;
    out = args_[i] == Py_True;
    return true;
  }

  bool string(Py_ssize_t i, c10::string_view& out) const {
    if (!PyUnicode_CheckExact(args_[i])) return false;
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(args_[i], &size);
    if (data == nullptr) {
      PyErr_Clear();
      return false;
    }
    out = c10::string_view(data, size_t(size));
    return true;
  }

  // obj as an int64 where it is an exact Python int (not a bool) in range.
  static bool to_int(PyObject* obj, int64_t& out) {
    if (!PyLong_CheckExact(obj)) return false;
    int overflow = 0;
    out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    return overflow == 0 && !(out == -1 && PyErr_Occurred());
  }

 private:
  PyObject* const* args_;
  Py_ssize_t n_;
};

// Whether the dispatcher would call the backend kernel (CPU or CUDA) of a native op with these tensors directly,
// but for autograd's fallback, which does nothing for a call that records no gradient (BackendSelect, in every
// thread's state, passes through for ops without a kernel for it).
template <size_t N>
inline bool goes_to_backend_kernel(const std::array<const at::Tensor*, N>& tensors) {
  c10::DispatchKeySet keys;
  bool needs_grad = false;
  for (const at::Tensor* t : tensors) {
    keys = keys | t->key_set();
    needs_grad = needs_grad || t->requires_grad();
  }
  if (needs_grad && at::GradMode::is_enabled()) return false;
  const auto local = c10::impl::tls_local_dispatch_key_set();
  keys = ((keys | local.included_) - local.excluded_) - c10::autograd_dispatch_keyset_with_ADInplaceOrView -
         c10::DispatchKeySet(c10::DispatchKey::BackendSelect);
  const c10::DispatchKey top = keys.highestPriorityTypeId();
  return top == c10::DispatchKey::CPU || top == c10::DispatchKey::CUDA;
}

// Releases the GIL while the kernel runs (as torch.ops does), taking it back before an exception leaves; skips
// autograd's keys, which goes_to_backend_kernel found nothing to do for. (An ATen op the kernel itself calls in
// place therefore does not bump version counters, as it would below torch.ops; the backends never call a
// kernel on a path that does: empty tensors return before the call.)
class KernelCall {
 public:
  KernelCall() : state_(PyEval_SaveThread()) {}
  ~KernelCall() { PyEval_RestoreThread(state_); }
  KernelCall(const KernelCall&) = delete;
  KernelCall& operator=(const KernelCall&) = delete;

 private:
  PyThreadState* state_;
  const at::AutoDispatchBelowADInplaceOrView below_autograd_;
};

// The arguments every native op shares after its tensors: stride, padding, dilation, then (after wgrad's
// deterministic flag) family and variant.
struct Geometry {
  std::array<int64_t, 2> stride{}, dilation{};
  std::array<int64_t, 4> padding{};

  bool parse(const Args& a, Py_ssize_t first) {
    return a.ints(first, stride) && a.ints(first + 1, padding) && a.ints(first + 2, dilation);
  }
};

struct Kernels {
  c10::string_view family;
  int64_t variant = 0;

  bool parse(const Args& a, Py_ssize_t first) { return a.string(first, family) && a.integer(first + 1, variant); }
};

constexpr int kFwd = 0, kDgrad = 1, kWgrad = 2;

// The plans (family, variant) of a call's forward, dgrad and wgrad.
struct Plans {
  std::array<std::string, 3> families;
  std::array<int64_t, 3> variants{};
  Kernels of(int op) const { return Kernels{families[op], variants[op]}; }
};

// A new output, filled with NaN where the tests ask for poisoned outputs (dwconv/outputs.py: POISON_OUTPUTS).
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options, bool poison) {
  at::Tensor t = at::empty(sizes, options);
  return poison ? t.fill_(std::numeric_limits<double>::quiet_NaN()) : t;
}

// depthwise_conv2d recorded as the C++ autograd Function of direct_conv.cpp, for a call goes_to_backend_kernel
// (asked with grad mode off) accepts, with x in a kernel layout and weight and bias contiguous; GIL released.
at::Tensor record_native_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const Geometry& g, const Plans& plans, const std::string& backend, bool channels_last,
                              bool poison);

// dwconv._C.train_conv (direct_conv.cpp) and the remembered calls' entries (remembered_calls.cpp).
PyMethodDef train_conv_method();
PyMethodDef remembered_conv_method();
PyMethodDef remember_conv_method();
PyMethodDef forget_convs_method();

// The native ops called through the dispatcher from C++ (the caller has found goes_to_backend_kernel true and holds
// a KernelCall, or wants the dispatcher's full path).
inline void call_native_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const Geometry& g, const Kernels& k, const at::Tensor& y) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dwconv::native_fwd", "").typed<FwdOp>();
  op.call(x, weight, bias, g.stride, g.padding, g.dilation, k.family, k.variant, y);
}

inline void call_native_dgrad(const at::Tensor& grad_out, const at::Tensor& weight, const Geometry& g,
                              const Kernels& k, const at::Tensor& grad_x) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dwconv::native_dgrad", "").typed<DgradOp>();
  op.call(grad_out, weight, g.stride, g.padding, g.dilation, k.family, k.variant, grad_x);
}

inline void call_native_wgrad(const at::Tensor& grad_out, const at::Tensor& x, const Geometry& g, bool deterministic,
                              const Kernels& k, const at::Tensor& grad_w) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dwconv::native_wgrad", "").typed<WgradOp>();
  op.call(grad_out, x, g.stride, g.padding, g.dilation, deterministic, k.family, k.variant, grad_w);
}

}  // namespace dwconv::python
