// Autograd for the MMD ops, in C++ so that C++/CMake users get gradients too. The forwards
// redispatch below the Autograd key. mmd2_terms' backward calls the backward op; mmd2 (the
// weighted sum) computes its gradients in the forward sweep when an input needs them, and its
// backward only scales them. Neither backward is differentiable (no double backward).
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>

#include "common/checks.h"
#include "common/host_values.h"
#include "common/sample_weight_checks.h"
#include "common/weighted_sum.h"

namespace pytl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kSerialScaleMax = int64_t{1} << 20;  // elements: a few hundred microseconds at most

// t * g for a backward. A CPU gradient of up to kSerialScaleMax elements is scaled on this thread: ATen
// splits an elementwise product of more than 32,768 elements over every thread, and beside busy processes
// the wait for the second thread made 256 + 256 rows of width 256 2.0x slower on two threads than on one
// (benchmarks/busy_machine.py). The same IEEE products as ATen's, so the same bits.
at::Tensor scaled_gradient(const at::Tensor& t, const at::Tensor& g) {
  const at::Tensor gs = as_dtype(g, t.scalar_type());
  const bool serial = t.is_cpu() && gs.is_cpu() && has_readable_data(t) && has_readable_data(gs) && t.is_contiguous() &&
                      t.numel() <= kSerialScaleMax && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
  if (!serial) return t * gs;
  at::Tensor out = at::empty_like(t);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "pytl_scaled_gradient", [&] {
    const scalar_t s = gs.item<scalar_t>();  // a CPU scalar: no device to wait for
    const scalar_t* a = t.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) o[i] = a[i] * s;
  });
  return out;
}

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
    return {scaled_gradient(saved[1], g), scaled_gradient(saved[2], g), saved[3] * as_dtype(g, saved[3].scalar_type()),
            grad_weights, none, none};
  }
};

using PairGradTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor call_weighted_pair_sums(const at::Tensor& x, const at::Tensor& y, const at::Tensor& xw,
                                   const at::Tensor& yw, const at::Tensor& sigmas) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::weighted_pair_sums", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  return op.call(x, y, xw, yw, sigmas);
}

PairGradTuple call_weighted_pair_sums_and_grad(const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y,
                                               const at::Tensor& xw, const at::Tensor& yw, const at::Tensor& sigmas) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::weighted_pair_sums_and_grad", "")
                       .typed<PairGradTuple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&)>();
  return op.call(coefs, x, y, xw, yw, sigmas);
}

// sum_{b,k} coefs[b,k] S[b,k], with the gradients to x, y, the weight matrices and sigmas computed in the
// forward sweep (the combination coefs is known then); the backward scales them, and gives coefs S.
class WeightedPairSumFunction : public torch::autograd::Function<WeightedPairSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y, const at::Tensor& xw,
                            const at::Tensor& yw, const at::Tensor& sigmas, const at::Tensor& coefs, bool need_grads) {
    at::AutoDispatchBelowADInplaceOrView guard;
    check_pair_coefs(coefs, sigmas, x);  // the sums kernel does not see coefs
    at::Tensor sums;
    if (need_grads) {
      auto r = call_weighted_pair_sums_and_grad(coefs, x, y, xw, yw, sigmas);
      sums = std::get<0>(r);
      ctx->save_for_backward({sums, std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r), std::get<5>(r)});
    } else {
      sums = call_weighted_pair_sums(x, y, xw, yw, sigmas);
      ctx->save_for_backward({sums});
    }
    ctx->saved_data["coefs_dtype"] = coefs.scalar_type();
    return weighted_sum(sums, coefs, x.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor g = grad_outputs[0];
    const at::Tensor none;
    if (!g.defined()) return {none, none, none, none, none, none, none};
    const auto cdtype = ctx->saved_data["coefs_dtype"].toScalarType();
    at::Tensor grad_coefs = as_dtype(g, cdtype) * as_dtype(saved[0], cdtype);
    if (saved.size() == 1) return {none, none, none, none, none, grad_coefs, none};
    auto scaled = [&](const at::Tensor& t) { return scaled_gradient(t, g); };
    return {scaled(saved[1]), scaled(saved[2]), scaled(saved[3]), scaled(saved[4]), scaled(saved[5]), grad_coefs,
            none};
  }
};

at::Tensor weighted_pair_sum_autograd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& xw,
                                      const at::Tensor& yw, const at::Tensor& sigmas, const at::Tensor& coefs) {
  const bool need_grads = at::GradMode::is_enabled() && (x.requires_grad() || y.requires_grad() ||
                                                         xw.requires_grad() || yw.requires_grad() ||
                                                         sigmas.requires_grad());
  return WeightedPairSumFunction::apply(x, y, xw, yw, sigmas, coefs, need_grads);
}

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
  m.impl("weighted_pair_sum", &pytl::weighted_pair_sum_autograd);
  // The gradient ops and the kernel-matrix product are not differentiable: differentiating
  // through them raises a clear error instead of silently returning no gradient.
  m.impl("mmd2_terms_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("mmd2_terms_and_grad", torch::autograd::autogradNotImplementedFallback());
  m.impl("rbf_kernel_matmul", torch::autograd::autogradNotImplementedFallback());
  m.impl("weighted_pair_sums", torch::autograd::autogradNotImplementedFallback());
  m.impl("weighted_pair_sums_and_grad", torch::autograd::autogradNotImplementedFallback());
  // differentiated by pytl.ring_mmd, whose forward already holds every rank's share of the gradient
  m.impl("cross_pair_sums", torch::autograd::autogradNotImplementedFallback());
  m.impl("cross_pair_sums_and_grad", torch::autograd::autogradNotImplementedFallback());
}
