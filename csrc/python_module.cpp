// The Python module dwconv._C. Importing it runs the static op registrations (ops.cpp, cpu/, cuda/).
//
// Its functions native_fwd, native_dgrad and native_wgrad call the ops of the same names (schemas in ops.cpp)
// straight to the CPU or CUDA kernel, without torch.ops' Python argument parsing and the boxed autograd
// fallback the dispatcher passes through (together about 2.5 µs a call, more than the kernel of a tiny conv).
// They serve only calls that torch.ops would hand to that kernel unchanged: plain tensors (torch.Tensor,
// nn.Parameter) that need no gradient recorded, no __torch_function__ mode, no dispatch key in the tensors or
// the thread's state above the backend's (tensor wrappers, dispatch modes, functorch transforms), arguments of
// the exact Python types the backends pass. For any other call they return NotImplemented and the caller goes
// through torch.ops, which handles (or rejects) it as usual (dwconv/backends/native.py).
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <optional>

namespace {

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
      if (!integer(PyTuple_GET_ITEM(seq, k), out[k])) return false;
    }
    return true;
  }

  bool integer(Py_ssize_t i, int64_t& out) const { return integer(args_[i], out); }

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

 private:
  static bool integer(PyObject* obj, int64_t& out) {
    if (!PyLong_CheckExact(obj)) return false;
    int overflow = 0;
    out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    return overflow == 0 && !(out == -1 && PyErr_Occurred());
  }

  PyObject* const* args_;
  Py_ssize_t n_;
};

// Whether the dispatcher would call the backend kernel (CPU or CUDA) of a native op with these tensors directly,
// but for autograd's fallback, which does nothing for a call that records no gradient (BackendSelect, in every
// thread's state, passes through for ops without a kernel for it).
template <size_t N>
bool goes_to_backend_kernel(const std::array<const at::Tensor*, N>& tensors) {
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

// native_fwd(x, weight, bias, stride, padding, dilation, family, variant, y)
struct Fwd {
  static constexpr const char* name = "dwconv::native_fwd";
  const at::Tensor *x = nullptr, *weight = nullptr, *y = nullptr;
  std::optional<at::Tensor> bias;
  Geometry geometry;
  Kernels kernels;

  bool parse(const Args& a) {
    return a.count(9) && a.tensor(0, x) && a.tensor(1, weight) && a.optional_tensor(2, bias) &&
           geometry.parse(a, 3) && kernels.parse(a, 6) && a.tensor(8, y);
  }
  std::array<const at::Tensor*, 4> tensors() const { return {x, weight, bias ? &*bias : x, y}; }
  void call() const {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<FwdOp>();
    op.call(*x, *weight, bias, geometry.stride, geometry.padding, geometry.dilation, kernels.family,
            kernels.variant, *y);
  }
};

// native_dgrad(grad_out, weight, stride, padding, dilation, family, variant, grad_x)
struct Dgrad {
  static constexpr const char* name = "dwconv::native_dgrad";
  const at::Tensor *grad_out = nullptr, *weight = nullptr, *grad_x = nullptr;
  Geometry geometry;
  Kernels kernels;

  bool parse(const Args& a) {
    return a.count(8) && a.tensor(0, grad_out) && a.tensor(1, weight) && geometry.parse(a, 2) &&
           kernels.parse(a, 5) && a.tensor(7, grad_x);
  }
  std::array<const at::Tensor*, 3> tensors() const { return {grad_out, weight, grad_x}; }
  void call() const {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<DgradOp>();
    op.call(*grad_out, *weight, geometry.stride, geometry.padding, geometry.dilation, kernels.family,
            kernels.variant, *grad_x);
  }
};

// native_wgrad(grad_out, x, stride, padding, dilation, deterministic, family, variant, grad_w)
struct Wgrad {
  static constexpr const char* name = "dwconv::native_wgrad";
  const at::Tensor *grad_out = nullptr, *x = nullptr, *grad_w = nullptr;
  Geometry geometry;
  bool deterministic = false;
  Kernels kernels;

  bool parse(const Args& a) {
    return a.count(9) && a.tensor(0, grad_out) && a.tensor(1, x) && geometry.parse(a, 2) &&
           a.boolean(5, deterministic) && kernels.parse(a, 6) && a.tensor(8, grad_w);
  }
  std::array<const at::Tensor*, 3> tensors() const { return {grad_out, x, grad_w}; }
  void call() const {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<WgradOp>();
    op.call(*grad_out, *x, geometry.stride, geometry.padding, geometry.dilation, deterministic, kernels.family,
            kernels.variant, *grad_w);
  }
};

// The entry of one op: its call when goes_to_backend_kernel, else NotImplemented.
template <typename Op>
PyObject* entry(PyObject*, PyObject* const* argv, Py_ssize_t argc) {
  HANDLE_TH_ERRORS
  Op op;
  if (at::impl::torch_function_mode_enabled() || !op.parse(Args(argv, argc)) ||
      !goes_to_backend_kernel(op.tensors()))
    Py_RETURN_NOTIMPLEMENTED;
  {
    const KernelCall kernel_call;
    op.call();
  }
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

template <typename Op>
PyMethodDef method(const char* python_name) {
  return {python_name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&entry<Op>)), METH_FASTCALL,
          "the native op without torch.ops (NotImplemented where torch.ops must make the call)"};
}

PyMethodDef methods[] = {method<Fwd>("native_fwd"), method<Dgrad>("native_dgrad"), method<Wgrad>("native_wgrad"),
                         {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
