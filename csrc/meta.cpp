// Meta (shape-only) kernels: what torch.compile / FakeTensor tracing sees. Same argument checks
// as the real kernels (but not the value checks on sigmas and weights, which need the data).
// mmd2 has its own Meta kernel, reached only below autograd (above it, autograd.cpp calls mmd2_terms).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/sample_weight_checks.h"

namespace pytl {
namespace {

at::Tensor mmd2_terms_meta(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  check_mmd_inputs(x, y, sigmas, unbiased);
  return at::empty({sigmas.size(0)}, x.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd2_terms_backward_meta(const at::Tensor& grad_terms,
                                                                         const at::Tensor& x, const at::Tensor& y,
                                                                         const at::Tensor& sigmas, bool unbiased) {
  check_mmd_backward_inputs(grad_terms, x, y, sigmas, unbiased);
  return {at::empty(x.sizes(), x.options()), at::empty(y.sizes(), y.options()),
          at::empty(sigmas.sizes(), sigmas.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mmd2_terms_and_grad_meta(
    const at::Tensor& grad_terms, const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
    bool unbiased) {
  auto grads = mmd2_terms_backward_meta(grad_terms, x, y, sigmas, unbiased);
  return {at::empty({sigmas.size(0)}, x.options()), std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)};
}

at::Tensor mmd2_meta(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, const at::Tensor& weights,
                     bool unbiased) {
  check_mmd_inputs(x, y, sigmas, unbiased);
  check_mmd_weights(weights, sigmas, x);
  return at::empty({}, x.options());
}

at::Tensor rbf_kernel_matmul_meta(const at::Tensor& z, const at::Tensor& s, const at::Tensor& sigmas,
                                  const at::Tensor& weights) {
  check_kernel_matmul_inputs(z, s, sigmas, weights);
  return at::empty({z.size(0), s.size(1)}, z.options());
}

at::Tensor weighted_pair_sums_meta(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                   const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr);
  const auto cdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty({3, sigmas.size(0)}, x.options().dtype(cdt));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> weighted_pair_sums_and_grad_meta(
    const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, &coefs);
  const auto cdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {at::empty({3, sigmas.size(0)}, x.options().dtype(cdt)), at::empty(x.sizes(), x.options()),
          at::empty(y.sizes(), y.options()), at::empty(x_weights.sizes(), x_weights.options()),
          at::empty(y_weights.sizes(), y_weights.options()), at::empty(sigmas.sizes(), sigmas.options())};
}

at::Tensor cross_pair_sums_meta(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_cross_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr);
  const auto cdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty({sigmas.size(0)}, x.options().dtype(cdt));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_pair_sums_and_grad_meta(
    const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_cross_pair_inputs(x, y, x_weights, y_weights, sigmas, &coefs);
  const auto cdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {at::empty({sigmas.size(0)}, x.options().dtype(cdt)), at::empty(x.sizes(), x.options()),
          at::empty(y.sizes(), y.options()), at::empty(x_weights.sizes(), x_weights.options()),
          at::empty(y_weights.sizes(), y_weights.options()), at::empty(sigmas.sizes(), sigmas.options())};
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, Meta, m) {
  m.impl("cross_pair_sums", &pytl::cross_pair_sums_meta);
  m.impl("cross_pair_sums_and_grad", &pytl::cross_pair_sums_and_grad_meta);
  m.impl("weighted_pair_sums", &pytl::weighted_pair_sums_meta);
  m.impl("weighted_pair_sums_and_grad", &pytl::weighted_pair_sums_and_grad_meta);
  m.impl("mmd2_terms", &pytl::mmd2_terms_meta);
  m.impl("mmd2_terms_backward", &pytl::mmd2_terms_backward_meta);
  m.impl("mmd2_terms_and_grad", &pytl::mmd2_terms_and_grad_meta);
  m.impl("mmd2", &pytl::mmd2_meta);
  m.impl("rbf_kernel_matmul", &pytl::rbf_kernel_matmul_meta);
}
