// Autograd for the MMD ops, in C++ so that C++/CMake users get gradients too. The forwards
// redispatch below the Autograd key. mmd2_terms' backward calls the backward op; mmd2 (the
// weighted sum) computes its gradients in the forward sweep when an input needs them, and its
// backward only scales them. Neither backward is differentiable (no double backward).
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/weighted_sum.h"

namespace pytl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_mmd2_terms(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::mmd2_terms", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(x, y, sigmas, unbiased);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_mmd2_terms_backward(const at::Tensor& grad_terms,
                                                                        const at::Tensor& x, const at::Tensor& y,
                                                                        const at::Tensor& sigmas, bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::mmd2_terms_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad_terms, x, y, sigmas, unbiased);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_mmd2_terms_and_grad(
    const at::Tensor& grad_terms, const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
    bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::mmd2_terms_and_grad", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad_terms, x, y, sigmas, unbiased);
}

class MMD2TermsFunction : public torch::autograd::Function<MMD2TermsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& sigmas, bool unbiased) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, y, sigmas});
    ctx->saved_data["unbiased"] = unbiased;
    return call_mmd2_terms(x, y, sigmas, unbiased);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& y = saved[1];
    const at::Tensor& sigmas = saved[2];
    at::Tensor grad_terms = grad_outputs[0];
    if (!grad_terms.defined()) grad_terms = at::zeros({sigmas.size(0)}, sigmas.options());
    auto grads = call_mmd2_terms_backward(grad_terms, x, y, sigmas, ctx->saved_data["unbiased"].toBool());
    return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), at::Tensor()};
  }
};

class MMD2Function : public torch::autograd::Function<MMD2Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& sigmas, const at::Tensor& weights, bool unbiased, bool need_grads) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // The weights are the one argument no kernel below sees (they reach mmd2_terms_and_grad as its
    // grad_terms); x, y and sigmas are checked by the kernel called next.
    check_mmd_weights(weights, sigmas, x);
    if (has_readable_data(weights)) check_mmd_weight_values(weights);  // on CUDA: no sync
    at::Tensor terms;
    if (need_grads) {
      auto r = call_mmd2_terms_and_grad(weights, x, y, sigmas, unbiased);
      terms = std::get<0>(r);
      ctx->save_for_backward({terms, std::get<1>(r), std::get<2>(r), std::get<3>(r)});
    } else {
      terms = call_mmd2_terms(x, y, sigmas, unbiased);
      ctx->save_for_backward({terms});
    }
    ctx->saved_data["weights_dtype"] = weights.scalar_type();
    return weighted_sum(terms, weights, x.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& terms = saved[0];
    const at::Tensor g = grad_outputs[0];
    const at::Tensor none;
    if (!g.defined()) return {none, none, none, none, none, none};
    const auto wdtype = ctx->saved_data["weights_dtype"].toScalarType();
    at::Tensor grad_weights = as_dtype(g, wdtype) * as_dtype(terms, wdtype);
    if (saved.size() == 1) return {none, none, none, grad_weights, none, none};
    return {saved[1] * as_dtype(g, saved[1].scalar_type()), saved[2] * as_dtype(g, saved[2].scalar_type()),
            saved[3] * as_dtype(g, saved[3].scalar_type()), grad_weights, none, none};
  }
};

at::Tensor mmd2_autograd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
                         const at::Tensor& weights, bool unbiased) {
  // Decided here: inside forward() grad mode is always off.
  const bool need_grads =
      at::GradMode::is_enabled() && (x.requires_grad() || y.requires_grad() || sigmas.requires_grad());
  return MMD2Function::apply(x, y, sigmas, weights, unbiased, need_grads);
}

at::Tensor mmd2_terms_autograd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  return MMD2TermsFunction::apply(x, y, sigmas, unbiased);
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, Autograd, m) {
  m.impl("mmd2_terms", &pytl::mmd2_terms_autograd);
  m.impl("mmd2", &pytl::mmd2_autograd);
  // The gradient ops and the kernel-matrix product are not differentiable: differentiating
  // through them raises a clear error instead of silently returning no gradient.
  m.impl("mmd2_terms_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("mmd2_terms_and_grad", torch::autograd::autogradNotImplementedFallback());
  m.impl("rbf_kernel_matmul", torch::autograd::autogradNotImplementedFallback());
}
