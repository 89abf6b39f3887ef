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

#include <torch/csrc/Exceptions.h>

#include "python_entries.h"

namespace {

using namespace dwconv::python;

// native_fwd(x, weight, bias, stride, padding, dilation, family, variant, y)
struct Fwd {
  const at::Tensor *x = nullptr, *weight = nullptr, *y = nullptr;
  std::optional<at::Tensor> bias;
  Geometry geometry;
  Kernels kernels;

  bool parse(const Args& a) {
    return a.count(9) && a.tensor(0, x) && a.tensor(1, weight) && a.optional_tensor(2, bias) &&
           geometry.parse(a, 3) && kernels.parse(a, 6) && a.tensor(8, y);
  }
  std::array<const at::Tensor*, 4> tensors() const { return {x, weight, bias ? &*bias : x, y}; }
  void call() const { call_native_fwd(*x, *weight, bias, geometry, kernels, *y); }
};

// native_dgrad(grad_out, weight, stride, padding, dilation, family, variant, grad_x)
struct Dgrad {
  const at::Tensor *grad_out = nullptr, *weight = nullptr, *grad_x = nullptr;
  Geometry geometry;
  Kernels kernels;

  bool parse(const Args& a) {
    return a.count(8) && a.tensor(0, grad_out) && a.tensor(1, weight) && geometry.parse(a, 2) &&
           kernels.parse(a, 5) && a.tensor(7, grad_x);
  }
  std::array<const at::Tensor*, 3> tensors() const { return {grad_out, weight, grad_x}; }
  void call() const { call_native_dgrad(*grad_out, *weight, geometry, kernels, *grad_x); }
};

// native_wgrad(grad_out, x, stride, padding, dilation, deterministic, family, variant, grad_w)
struct Wgrad {
  const at::Tensor *grad_out = nullptr, *x = nullptr, *grad_w = nullptr;
  Geometry geometry;
  bool deterministic = false;
  Kernels kernels;

  bool parse(const Args& a) {
    return a.count(9) && a.tensor(0, grad_out) && a.tensor(1, x) && geometry.parse(a, 2) &&
           a.boolean(5, deterministic) && kernels.parse(a, 6) && a.tensor(8, grad_w);
  }
  std::array<const at::Tensor*, 3> tensors() const { return {grad_out, x, grad_w}; }
  void call() const { call_native_wgrad(*grad_out, *x, geometry, deterministic, kernels, *grad_w); }
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
                         train_conv_method(), remembered_conv_method(), remember_conv_method(),
                         forget_convs_method(), {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
