// dwconv._C.remembered_conv: an eager depthwise_conv2d call made again without Python, for a call signature the
// functional has made before (dwconv/remembered.py). A model's layers repeat the same few signatures; for them the
// functional's Python (validating the arguments, resolving them, finding the plan, allocating the output: about
// 8 µs) is more than a small layer's kernel. The first call of a signature takes the Python route, which validates
// it and decides its route (dwconv/dispatch.py); the functional then remembers the outcome here with
// remember_conv, keyed by everything the validation and the decision depend on. Later calls of the signature that
// need nothing from the dispatcher (the conditions of dwconv._C's direct entries, python_module.cpp) run the
// remembered route:
// - without a gradient to record: the forward plan (a native kernel into a new output, or PyTorch's convolution);
// - with one: PyTorch's convolution under PyTorch's autograd (route "torch"), or the C++ autograd Function of
//   direct_conv.cpp (route "native").
// Anything else returns NotImplemented and the functional takes its Python route. forget_convs() empties the
// memory (decisions cleared, settings changed).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "python_entries.h"

namespace {

using namespace dwconv::python;

// Everything a call's validation and route depend on but the backend name: sizes, dtypes, devices and layouts
// of the tensors, stride / padding / dilation as given, the deterministic flag, the CPU thread count and the
// settings' generation (dwconv/config.py).
constexpr size_t kKeyInts = 28;
using KeyInts = std::array<int64_t, kKeyInts>;

struct CallKey {
  KeyInts ints{};
  std::string backend;

  bool operator==(const CallKey& other) const { return ints == other.ints && backend == other.backend; }
};

struct CallKeyHash {
  size_t operator()(const CallKey& key) const {
    size_t h = std::hash<std::string>()(key.backend);
    for (int64_t v : key.ints) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

enum class Route : uint8_t { unknown, torch, native };

struct RouteOf {
  Route route = Route::unknown;
  Plans plans;  // native: forward (and for training dgrad, wgrad) plans
};

struct Remembered {
  Geometry geometry;  // resolved: explicit (top, bottom, left, right) padding
  std::array<int64_t, 4> output_sizes{};
  bool channels_last = false;
  RouteOf inference, training;
};

constexpr size_t kMaxRemembered = 4096;
// Read and written with the GIL held.
std::unordered_map<CallKey, std::shared_ptr<const Remembered>, CallKeyHash> remembered;

// The layout a kernel takes x in: 0 NCHW-contiguous, 1 channels_last only (as dwconv's is_channels_last); -1 other.
int layout_of(const at::Tensor& x) {
  if (x.is_contiguous()) return 0;
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : -1;
}

// stride or dilation as the functional takes it (an int or a pair of ints) into out[0..1]; false for any other
// form (the functional's Python route handles or rejects it).
bool put_pair(PyObject* value, int64_t* out) {
  int64_t v = 0;
  if (Args::to_int(value, v)) {
    out[0] = out[1] = v;
    return true;
  }
  if ((PyTuple_CheckExact(value) || PyList_CheckExact(value)) && PySequence_Fast_GET_SIZE(value) == 2) {
    PyObject** items = PySequence_Fast_ITEMS(value);
    return Args::to_int(items[0], out[0]) && Args::to_int(items[1], out[1]);
  }
  return false;
}

// padding into out[0..4]: a form code (0 numbers, 1 "same", 2 "valid") and (top, bottom, left, right) as given.
bool put_padding(PyObject* value, int64_t* out) {
  std::fill(out, out + 5, 0);
  if (PyUnicode_CheckExact(value)) {
    if (PyUnicode_CompareWithASCIIString(value, "same") == 0) return (out[0] = 1), true;
    if (PyUnicode_CompareWithASCIIString(value, "valid") == 0) return (out[0] = 2), true;
    return false;
  }
  if ((PyTuple_CheckExact(value) || PyList_CheckExact(value)) && PySequence_Fast_GET_SIZE(value) == 4) {
    PyObject** items = PySequence_Fast_ITEMS(value);
    for (int i = 0; i < 4; ++i)
      if (!Args::to_int(items[i], out[1 + i])) return false;
    return true;
  }
  int64_t hw[2];
  if (!put_pair(value, hw)) return false;
  out[1] = out[2] = hw[0];
  out[3] = out[4] = hw[1];
  return true;
}

void put_tensor(const at::Tensor& t, int64_t* out) {
  for (int i = 0; i < 4; ++i) out[i] = i < t.dim() ? t.size(i) : -1;
  out[4] = int64_t(t.scalar_type());
  out[5] = int64_t(t.device().type()) * 1024 + t.device().index();
}

// The call's tensors and key from (x, weight, bias, stride, padding, dilation, backend, generation); false where the
// call is not one the memory serves: tensors of other types or layouts than the kernels take as they are (nested,
// sparse or other non-strided tensors included), arguments of other forms.
struct Call {
  const at::Tensor *x = nullptr, *weight = nullptr;
  std::optional<at::Tensor> bias;
  CallKey key;
  int layout = -1;

  bool parse(const Args& a) {
    c10::string_view backend;
    int64_t generation = 0;
    if (!a.tensor(0, x) || !a.tensor(1, weight) || !a.optional_tensor(2, bias) || !a.string(6, backend) ||
        !a.integer(7, generation) || !plain(*x) || !plain(*weight) || (bias && !plain(*bias)))
      return false;
    layout = layout_of(*x);
    if (x->dim() != 4 || weight->dim() != 4 || layout < 0 || x->numel() == 0 || !weight->is_contiguous() ||
        (bias && (bias->dim() != 1 || !bias->is_contiguous())))
      return false;
    int64_t* k = key.ints.data();
    put_tensor(*x, k);
    put_tensor(*weight, k + 6);
    if (bias) {
      k[12] = bias->size(0);
      k[13] = int64_t(bias->scalar_type());
      k[14] = int64_t(bias->device().type()) * 1024 + bias->device().index();
    } else {
      k[12] = k[13] = k[14] = -1;
    }
    k[15] = layout;
    if (!put_pair(a.object(3), k + 16) || !put_padding(a.object(4), k + 18) || !put_pair(a.object(5), k + 23))
      return false;
    k[25] = at::globalContext().deterministicAlgorithms();
    k[26] = x->is_cpu() ? at::get_num_threads() : 0;
    k[27] = generation;
    key.backend.assign(backend.data(), backend.size());
    return true;
  }

  static bool plain(const at::Tensor& t) { return t.layout() == at::kStrided && !t.is_nested(); }
  std::array<const at::Tensor*, 3> tensors() const { return {x, weight, bias ? &*bias : x}; }
  bool recording() const {
    return at::GradMode::is_enabled() && (x->requires_grad() || weight->requires_grad() ||
                                          (bias && bias->requires_grad()));
  }
};

// PyTorch's convolution, as the torch backend calls it (dwconv/backends/reference.py: asymmetric padding applied
// first).
at::Tensor torch_conv(const Call& call, const Geometry& g) {
  const auto& p = g.padding;
  at::Tensor x = *call.x;
  std::array<int64_t, 2> padding{p[0], p[2]};
  if (p[0] != p[1] || p[2] != p[3]) {
    x = at::constant_pad_nd(x, {p[2], p[3], p[0], p[1]}, 0);
    padding = {0, 0};
  }
  return at::conv2d(x, *call.weight, call.bias, g.stride, padding, g.dilation, call.x->size(1));
}

// remembered_conv(x, weight, bias, stride, padding, dilation, backend, generation, poison) -> y, or NotImplemented
PyObject* remembered_conv(PyObject*, PyObject* const* argv, Py_ssize_t argc) {
  HANDLE_TH_ERRORS
  const Args a(argv, argc);
  Call call;
  bool poison = false;
  if (remembered.empty() || at::impl::torch_function_mode_enabled() || torch::jit::tracer::isTracing() ||
      !a.count(9) || !call.parse(a) || !a.boolean(8, poison))
    Py_RETURN_NOTIMPLEMENTED;
  const auto found = remembered.find(call.key);
  if (found == remembered.end()) Py_RETURN_NOTIMPLEMENTED;
  const std::shared_ptr<const Remembered> r = found->second;
  const bool recording = call.recording();
  const RouteOf& route = recording ? r->training : r->inference;
  if (route.route == Route::unknown) Py_RETURN_NOTIMPLEMENTED;
  {
    // goes_to_backend_kernel asks for no recorded gradient: its key test, with grad mode off for the question
    const at::AutoGradMode no_grad(false);
    if (!goes_to_backend_kernel(call.tensors())) Py_RETURN_NOTIMPLEMENTED;
  }
  at::Tensor y;
  if (route.route == Route::torch) {
    pybind11::gil_scoped_release no_gil;
    y = torch_conv(call, r->geometry);
  } else if (recording) {
    pybind11::gil_scoped_release no_gil;
    y = record_native_conv(*call.x, *call.weight, call.bias, r->geometry, route.plans, call.key.backend,
                           r->channels_last, poison);
  } else {
    const auto fmt = r->channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    y = new_output(r->output_sizes, call.x->options().memory_format(fmt), poison);
    const KernelCall kernel_call;
    call_native_fwd(*call.x, *call.weight, call.bias, r->geometry, route.plans.of(kFwd), y);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

// remember_conv(x, weight, bias, stride, padding, dilation, backend, generation, training, route, resolved stride,
//               resolved padding, resolved dilation, output shape, fwd family, fwd variant, dgrad family, dgrad
//               variant, wgrad family, wgrad variant) -> bool: whether the call's signature is now remembered. route is
// "torch" or "native"; training says whether it is the route of calls that record a gradient.
PyObject* remember_conv(PyObject*, PyObject* const* argv, Py_ssize_t argc) {
  HANDLE_TH_ERRORS
  const Args a(argv, argc);
  Call call;
  bool training = false;
  c10::string_view route_name;
  Geometry g;
  std::array<int64_t, 4> output_sizes{};
  std::array<Kernels, 3> kernels;
  if (!a.count(20) || !call.parse(a) || !a.boolean(8, training) || !a.string(9, route_name) || !g.parse(a, 10) ||
      !a.ints(13, output_sizes) || !kernels[kFwd].parse(a, 14) || !kernels[kDgrad].parse(a, 16) ||
      !kernels[kWgrad].parse(a, 18))
    Py_RETURN_FALSE;
  RouteOf route;
  if (route_name == "torch") {
    route.route = Route::torch;
  } else if (route_name == "native") {
    route.route = Route::native;
  } else {
    PyErr_Format(PyExc_ValueError, "remember_conv: route must be 'torch' or 'native', got '%.*s'",
                 int(route_name.size()), route_name.data());
    return nullptr;
  }
  for (int op = 0; op < 3; ++op) {
    route.plans.families[op] = std::string(kernels[op].family);
    route.plans.variants[op] = kernels[op].variant;
  }
  auto& slot = remembered[call.key];
  auto updated = slot ? std::make_shared<Remembered>(*slot) : std::make_shared<Remembered>();
  updated->geometry = g;
  updated->output_sizes = output_sizes;
  updated->channels_last = call.layout == 1;
  (training ? updated->training : updated->inference) = route;
  slot = std::move(updated);
  if (remembered.size() > kMaxRemembered) {
    remembered.clear();
    Py_RETURN_FALSE;
  }
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

// forget_convs() -> number of signatures forgotten
PyObject* forget_convs(PyObject*, PyObject* const*, Py_ssize_t) {
  const size_t n = remembered.size();
  remembered.clear();
  return PyLong_FromSize_t(n);
}

PyMethodDef fastcall(const char* name, PyObject* (*function)(PyObject*, PyObject* const*, Py_ssize_t),
                     const char* doc) {
  return {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(function)), METH_FASTCALL, doc};
}

}  // namespace

namespace dwconv::python {

PyMethodDef remembered_conv_method() {
  return fastcall("remembered_conv", &remembered_conv,
                  "a remembered depthwise_conv2d call made again (NotImplemented where the functional's Python "
                  "route must make it)");
}

PyMethodDef remember_conv_method() {
  return fastcall("remember_conv", &remember_conv, "remember a validated call's signature and route");
}

PyMethodDef forget_convs_method() {
  return fastcall("forget_convs", &forget_convs, "forget every remembered call");
}

}  // namespace dwconv::python
