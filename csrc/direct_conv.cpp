// dwconv._C.train_conv: an eager depthwise conv that records its gradient as a C++ autograd Function, for calls
// whose forward, dgrad and wgrad all run native kernels (dwconv/autograd.py: apply_native). Its forward and
// backward call the native ops with the plans Python chose for the call, without Python in between: the
// per-call cost of a Python autograd.Function (its apply, and the engine's round trip into Python for the
// backward) is several times a small layer's kernels. A backward that records a graph (double backward), or
// whose gradient needs the dispatcher's other layers, calls the differentiable ops dwconv::dgrad and
// dwconv::wgrad instead, as autograd.DirectDepthwiseConv2d does.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/custom_function.h>

#include <limits>
#include <string>
#include <vector>

#include "python_entries.h"

namespace {

using namespace dwconv::python;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::vector<int64_t> vec(at::IntArrayRef values) { return values.vec(); }

Geometry geometry_of(AutogradContext* ctx) {
  Geometry g;
  const auto stride = ctx->saved_data["stride"].toIntVector(), padding = ctx->saved_data["padding"].toIntVector(),
             dilation = ctx->saved_data["dilation"].toIntVector();
  std::copy(stride.begin(), stride.end(), g.stride.begin());
  std::copy(padding.begin(), padding.end(), g.padding.begin());
  std::copy(dilation.begin(), dilation.end(), g.dilation.begin());
  return g;
}

bool valid(const Geometry& g) {
  for (int i = 0; i < 2; ++i)
    if (g.stride[i] <= 0 || g.dilation[i] <= 0) return false;
  for (int64_t p : g.padding)
    if (p < 0) return false;
  return true;
}

// The bias gradient as dwconv/bias_grad.py computes it: the extension's channel sum for plain fp32 / bf16 CPU
// gradients of 64K elements and more outside a recorded graph, PyTorch's sum otherwise.
at::Tensor bias_grad(const at::Tensor& grad_out, bool recording) {
  const auto dtype = grad_out.scalar_type();
  if (!recording && grad_out.is_cpu() && (dtype == at::kFloat || dtype == at::kBFloat16) &&
      grad_out.numel() >= (1 << 16) && goes_to_backend_kernel(std::array<const at::Tensor*, 1>{&grad_out}) &&
      (grad_out.is_contiguous() || grad_out.is_contiguous(at::MemoryFormat::ChannelsLast))) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("dwconv::native_channel_sums", "")
                               .typed<void(const at::Tensor&, at::Tensor)>();
    at::Tensor sums = at::empty({grad_out.size(1)}, grad_out.options().dtype(at::kFloat));
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.call(grad_out, sums);
    return sums.to(dtype);
  }
  return grad_out.sum({0, 2, 3});
}

// The differentiable op `name` (dwconv::dgrad or dwconv::wgrad: grad_out, a tensor, a shape, stride, padding,
// dilation, backend).
at::Tensor differentiable_op(const char* name, const at::Tensor& grad_out, const at::Tensor& other,
                             at::IntArrayRef shape, AutogradContext* ctx) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  torch::jit::Stack stack{grad_out, other, vec(shape), ctx->saved_data["stride"], ctx->saved_data["padding"],
                          ctx->saved_data["dilation"], ctx->saved_data["backend"]};
  op.callBoxed(stack);
  return stack.at(0).toTensor();
}

}  // namespace

namespace dwconv {

// The autograd node reads torch::autograd::CppNode<dwconv::DirectDepthwiseConv2d> (grad_fn, the profiler).
struct DirectDepthwiseConv2d : public torch::autograd::Function<DirectDepthwiseConv2d> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const Geometry& g, const Plans& plans,
                            const std::string& backend, bool channels_last, bool poison) {
    const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const int64_t kh = weight.size(2), kw = weight.size(3);
    const int64_t ho = (x.size(2) + g.padding[0] + g.padding[1] - g.dilation[0] * (kh - 1) - 1) / g.stride[0] + 1;
    const int64_t wo = (x.size(3) + g.padding[2] + g.padding[3] - g.dilation[1] * (kw - 1) - 1) / g.stride[1] + 1;
    at::Tensor y = new_output({x.size(0), weight.size(0), ho, wo}, x.options().memory_format(fmt), poison);
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      call_native_fwd(x, weight, bias, g, plans.of(kFwd), y);
    }
    ctx->save_for_backward({x, weight});
    ctx->saved_data["stride"] = vec(g.stride);
    ctx->saved_data["padding"] = vec(g.padding);
    ctx->saved_data["dilation"] = vec(g.dilation);
    ctx->saved_data["dgrad_family"] = plans.families[kDgrad];
    ctx->saved_data["dgrad_variant"] = plans.variants[kDgrad];
    ctx->saved_data["wgrad_family"] = plans.families[kWgrad];
    ctx->saved_data["wgrad_variant"] = plans.variants[kWgrad];
    ctx->saved_data["backend"] = backend;
    ctx->saved_data["channels_last"] = channels_last;
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["poison"] = poison;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const bool channels_last = ctx->saved_data["channels_last"].toBool();
    const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    // A batched gradient (autograd.grad(is_grads_batched=True)) as it is: legacy vmap cannot query channels_last
    // contiguity, and the differentiable ops run each of its slices on their own.
    const at::Tensor grad_out =
        grads[0].key_set().has(c10::DispatchKey::Batched) ? grads[0] : grads[0].contiguous(fmt);
    const bool needs_dx = ctx->needs_input_grad(0), needs_dw = ctx->needs_input_grad(1);
    const bool needs_db = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    const bool recording = at::GradMode::is_enabled();
    at::Tensor dx, dw, db;
    // The native kernels where nothing needs the dispatcher and the saved tensors come back as they were saved (a
    // saved-tensor hook may return them in another layout, which only the ops' bodies convert).
    if (!recording && goes_to_backend_kernel(std::array<const at::Tensor*, 3>{&grad_out, &weight, &x}) &&
        x.is_contiguous(fmt) && weight.is_contiguous()) {
      const Geometry g = geometry_of(ctx);
      const bool poison = ctx->saved_data["poison"].toBool();
      const std::string dgrad_family = ctx->saved_data["dgrad_family"].toStringRef(),
                        wgrad_family = ctx->saved_data["wgrad_family"].toStringRef();
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      if (needs_dx) {
        // grad_out's layout, as new_output gives it (an ambiguous one, a 1x1 map, counts as NCHW)
        const bool dx_channels_last =
            !grad_out.is_contiguous() && grad_out.is_contiguous(at::MemoryFormat::ChannelsLast);
        dx = new_output(x.sizes(),
                        grad_out.options().memory_format(dx_channels_last ? at::MemoryFormat::ChannelsLast
                                                                          : at::MemoryFormat::Contiguous),
                        poison);
        call_native_dgrad(grad_out, weight, g, Kernels{dgrad_family, ctx->saved_data["dgrad_variant"].toInt()}, dx);
      }
      if (needs_dw) {
        const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
        at::Tensor acc_dw = new_output(weight.sizes(), x.options().dtype(acc), poison);
        call_native_wgrad(grad_out, x, g, at::globalContext().deterministicAlgorithms(),
                          Kernels{wgrad_family, ctx->saved_data["wgrad_variant"].toInt()}, acc_dw);
        dw = acc_dw.to(x.scalar_type());
      }
    } else {
      if (needs_dx) dx = differentiable_op("dwconv::dgrad", grad_out, weight, x.sizes(), ctx);
      if (needs_dw) dw = differentiable_op("dwconv::wgrad", grad_out, x, weight.sizes(), ctx);
    }
    if (needs_db) db = bias_grad(grad_out, recording);
    return {dx, dw, db, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace dwconv

namespace dwconv::python {

// train_conv(x, weight, bias, stride, padding, dilation, fwd_family, fwd_variant, dgrad_family, dgrad_variant,
//            wgrad_family, wgrad_variant, backend, poison) -> y, or NotImplemented for a call the Python route
// must make (tensors that need the dispatcher's other layers, layouts the kernels do not take as they are).
PyObject* train_conv(PyObject*, PyObject* const* argv, Py_ssize_t argc) {
  HANDLE_TH_ERRORS
  const Args a(argv, argc);
  const at::Tensor *x = nullptr, *weight = nullptr;
  std::optional<at::Tensor> bias;
  Geometry g;
  Kernels fwd, dgrad, wgrad;
  c10::string_view backend;
  bool poison = false;
  if (at::impl::torch_function_mode_enabled() || !a.count(14) || !a.tensor(0, x) || !a.tensor(1, weight) ||
      !a.optional_tensor(2, bias) || !g.parse(a, 3) || !fwd.parse(a, 6) || !dgrad.parse(a, 8) ||
      !wgrad.parse(a, 10) || !a.string(12, backend) || !a.boolean(13, poison))
    Py_RETURN_NOTIMPLEMENTED;
  {
    // goes_to_backend_kernel asks for no recorded gradient: its key test, with grad mode off for the question
    const at::AutoGradMode no_grad(false);
    if (!goes_to_backend_kernel(std::array<const at::Tensor*, 3>{x, weight, bias ? &*bias : x}))
      Py_RETURN_NOTIMPLEMENTED;
  }
  const bool nchw = x->is_contiguous(), channels_last = !nchw && x->is_contiguous(at::MemoryFormat::ChannelsLast);
  if (x->dim() != 4 || weight->dim() != 4 || x->numel() == 0 || (!nchw && !channels_last) ||
      !weight->is_contiguous() || (bias && !bias->is_contiguous()) || !valid(g))
    Py_RETURN_NOTIMPLEMENTED;  // the Python route checks (or converts) and says what is wrong
  Plans plans;
  plans.families = {std::string(fwd.family), std::string(dgrad.family), std::string(wgrad.family)};
  plans.variants = {fwd.variant, dgrad.variant, wgrad.variant};
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    y = record_native_conv(*x, *weight, bias, g, plans, std::string(backend), channels_last, poison);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

at::Tensor record_native_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const Geometry& g, const Plans& plans, const std::string& backend, bool channels_last,
                              bool poison) {
  return dwconv::DirectDepthwiseConv2d::apply(x, weight, bias, g, plans, backend, channels_last, poison);
}

PyMethodDef train_conv_method() {
  return {"train_conv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&train_conv)), METH_FASTCALL,
          "an eager depthwise conv recording its gradient as a C++ autograd Function (NotImplemented where the "
          "Python route must make the call)"};
}

}  // namespace dwconv::python
