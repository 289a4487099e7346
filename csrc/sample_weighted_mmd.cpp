// The sample-weighted MMD (pytl.mmd2 with x_weights / y_weights) and the class-conditional MMD (LMMD), as
// compositions over weighted_pair_sum: normalising the weights and combining the pair sums are plain tensor
// ops, so autograd differentiates them (CompositeImplicitAutograd) and the fused sweep does the pairs.
//
// Weighted unbiased estimator. With weights a (sum 1), the self term over distinct pairs is
//   sum_{i != j} a_i a_j k_ij / sum_{i != j} a_i a_j = (S_xx - sum_i a_i^2) / (1 - sum_i a_i^2),
// since k_ii = 1 per bandwidth and sum_{i != j} a_i a_j = 1 - sum_i a_i^2. Uniform weights give the usual
// U-statistic; it needs at least two samples with positive weight on each side.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/sample_weight_checks.h"

namespace pytl {
namespace {

at::Tensor weighted_pair_sum_op(const at::Tensor& x, const at::Tensor& y, const at::Tensor& xw, const at::Tensor& yw,
                                const at::Tensor& sigmas, const at::Tensor& coefs) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::weighted_pair_sum", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&)>();
  return op.call(x, y, xw, yw, sigmas, coefs);
}

// (3, K) coefs of the biased MMD^2 = sum_k w_k (S_xx,k + S_yy,k - 2 S_xy,k) for normalised weights.
at::Tensor biased_coefs(const at::Tensor& weights) { return at::stack({weights, weights, -2.0 * weights}); }

at::Tensor weighted_mmd2_composite(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
                                   const at::Tensor& weights, const at::Tensor& x_weights, const at::Tensor& y_weights,
                                   bool unbiased) {
  check_mmd_inputs(x, y, sigmas, unbiased);
  check_mmd_weights(weights, sigmas, x);
  check_sample_weights(x_weights, x.size(0), x.device(), "x_weights", "x");
  check_sample_weights(y_weights, y.size(0), x.device(), "y_weights", "y");
  check_sample_weight_values(x_weights, "x_weights", kMMDOp);
  check_sample_weight_values(y_weights, "y_weights", kMMDOp);
  if (has_readable_data(weights)) check_mmd_weight_values(weights);
  const at::Tensor xs = x_weights.sum(), ys = y_weights.sum();
  check_holds(xs > 0, c10::str(kMMDOp, "x_weights must not be all zero (their sum normalises them)"));
  check_holds(ys > 0, c10::str(kMMDOp, "y_weights must not be all zero (their sum normalises them)"));
  const at::Tensor a = x_weights / xs, b = y_weights / ys;
  if (!unbiased) {
    return weighted_pair_sum_op(x, y, a.unsqueeze(1), b.unsqueeze(1), sigmas, biased_coefs(weights));
  }
  const at::Tensor sa = (a * a).sum(), sb = (b * b).sum();
  check_holds(sa < 1, c10::str(kMMDOp, "the unbiased estimator needs at least 2 samples with positive weight in "
                                       "x_weights"));
  check_holds(sb < 1, c10::str(kMMDOp, "the unbiased estimator needs at least 2 samples with positive weight in "
                                       "y_weights"));
  const at::Tensor w = weights.to(a.scalar_type());
  const at::Tensor coefs = at::stack({w / (1 - sa), w / (1 - sb), -2.0 * w});
  const at::Tensor diagonal = w.sum() * (sa / (1 - sa) + sb / (1 - sb));  // sum_k w_k (sum a^2 + ...) taken out
  const at::Tensor total = weighted_pair_sum_op(x, y, a.unsqueeze(1), b.unsqueeze(1), sigmas, coefs);
  return (total - diagonal.to(total.scalar_type()));
}

// Per-class weights: column c divided by its sum; a class without weight in x or in y is dropped (zero
// weights on both sides), so it contributes nothing instead of a 0/0.
std::pair<at::Tensor, at::Tensor> class_weights(const at::Tensor& x_probs, const at::Tensor& y_probs) {
  const at::Tensor sx = x_probs.sum(0), sy = y_probs.sum(0);
  const at::Tensor present = at::logical_and(sx > 0, sy > 0);
  const at::Tensor keep_x = present.to(x_probs.scalar_type()), keep_y = present.to(y_probs.scalar_type());
  const at::Tensor a = x_probs / at::where(present, sx, at::ones_like(sx)) * keep_x;
  const at::Tensor b = y_probs / at::where(present, sy, at::ones_like(sy)) * keep_y;
  return {a, b};
}

at::Tensor class_conditional_mmd2_composite(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_probs,
                                            const at::Tensor& y_probs, const at::Tensor& sigmas,
                                            const at::Tensor& weights) {
  const char* op = kClassConditionalOp;
  check_sample_pair(x, y, op);
  check_weight_matrix(x_probs, x.size(0), x.device(), "x_probs", "x", op);
  check_weight_matrix(y_probs, y.size(0), x.device(), "y_probs", "y", op);
  TORCH_CHECK_VALUE(x_probs.size(1) == y_probs.size(1), op,
                    "x_probs and y_probs must have one column per class, the same C, got ", x_probs.sizes(), " and ",
                    y_probs.sizes());
  check_sigmas(sigmas, x.device(), "x", op);
  check_weights(weights, sigmas, x.device(), "x", op);
  check_sample_weight_values(x_probs, "x_probs", op);
  check_sample_weight_values(y_probs, "y_probs", op);
  if (has_readable_data(weights)) check_mmd_weight_values(weights);
  const auto [a, b] = class_weights(x_probs, y_probs);
  return weighted_pair_sum_op(x, y, a, b, sigmas, biased_coefs(weights));
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CompositeImplicitAutograd, m) {
  m.impl("weighted_mmd2", &pytl::weighted_mmd2_composite);
  m.impl("class_conditional_mmd2", &pytl::class_conditional_mmd2_composite);
}
