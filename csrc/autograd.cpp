// Autograd for the MMD op, in C++ so that C++/CMake users get gradients too. The forward
// redispatches below the Autograd key; the backward calls the backward op, which has its own
// CPU, CUDA and Meta kernels. The backward itself is not differentiable (no double backward).
#include <torch/autograd.h>
#include <torch/library.h>

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

at::Tensor mmd2_terms_autograd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  return MMD2TermsFunction::apply(x, y, sigmas, unbiased);
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, Autograd, m) {
  m.impl("mmd2_terms", &pytl::mmd2_terms_autograd);
}
