// Kernels built from the other ops, for every backend that has no fused kernel of its own
// (CPU and CUDA register a one-sweep mmd2_terms_and_grad of their own; other backends use these).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/sample_weight_checks.h"
#include "common/weighted_sum.h"

namespace pytl {
namespace {

at::Tensor mmd2_terms_op(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::mmd2_terms", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(x, y, sigmas, unbiased);
}

// MMD^2 = sum_k w_k T_k, summed in the weights' dtype (float32 for half inputs). Only the weights are
// checked here: x, y and sigmas by the mmd2_terms kernel.
at::Tensor mmd2_composite(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
                          const at::Tensor& weights, bool unbiased) {
  check_mmd_weights(weights, sigmas, x);
  if (has_readable_data(weights)) check_mmd_weight_values(weights);  // on CUDA: no sync
  const at::Tensor terms = mmd2_terms_op(x, y, sigmas, unbiased);
  return weighted_sum(terms, weights, x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mmd2_terms_and_grad_composite(
    const at::Tensor& grad_terms, const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
    bool unbiased) {
  static auto backward = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pytl::mmd2_terms_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  auto grads = backward.call(grad_terms, x, y, sigmas, unbiased);
  return {mmd2_terms_op(x, y, sigmas, unbiased), std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)};
}

// sum_{b,k} coefs[b,k] S[b,k] below autograd (and for backends without a kernel of their own: Meta).
at::Tensor weighted_pair_sum_composite(const at::Tensor& x, const at::Tensor& y, const at::Tensor& xw,
                                       const at::Tensor& yw, const at::Tensor& sigmas, const at::Tensor& coefs) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::weighted_pair_sums", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  check_pair_coefs(coefs, sigmas, x);  // the one argument the sums kernel does not see
  return weighted_sum(op.call(x, y, xw, yw, sigmas), coefs, x.scalar_type());
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CompositeExplicitAutograd, m) {
  m.impl("weighted_pair_sum", &pytl::weighted_pair_sum_composite);
  m.impl("mmd2", &pytl::mmd2_composite);
  m.impl("mmd2_terms_and_grad", &pytl::mmd2_terms_and_grad_composite);
}
