// Random Fourier features (Rahimi & Recht 2007) of the RBF kernels, streamed over row tiles: the scalable
// MMD estimators need only column sums of the features, never the n x F feature matrix.
//
//   rff_sums(x, W, u, squares)[0, f] = sum_i cos(w_f . x_i + u_f)
//   rff_sums(x, W, u, true)[1, f]    = sum_i cos^2(w_f . x_i + u_f)      (only when asked for: a second pass)
//
// With w_f ~ N(0, I / sigma^2) and u_f ~ U[0, 2 pi), phi(a) = sqrt(2 / D) cos(W a + u) has E[phi(a) . phi(b)] =
// exp(-||a - b||^2 / (2 sigma^2)); pytl.ops turns the sums into MMD^2 estimates (row 1 gives the diagonal
// sum_i ||phi(x_i)||^2 that the U-statistic leaves out). Per tile: one GEMM (rows x d) @ (d x F), the cosines in
// place, the column sums as a GEMM with a row of ones (in the tile's dtype, then added to float64 accumulators);
// memory O(tile x F), independent of n. The cosines dominate the cost (n x F of them).
// The backward of sum_f g0_f S0_f + g1_f S1_f is
//   d/dx_i = -(sin(theta_i) * (g0 + 2 g1 * cos(theta_i))) @ W,   theta_i = W x_i + u,
// another streamed pass. No gradient to W or u (random draws, not parameters).
//
// Written with ATen ops on tiles, so one source serves the CPU and CUDA (the GEMM by the backend's BLAS), with
// no host synchronisation. Half inputs compute in float32; the sums accumulate in float64.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>

#include "common/random_feature_checks.h"

namespace pytl {
namespace {

// Rows per tile: the tile's angles take rows x F elements; 2^20 floats (4 MB, cache-sized) on a CPU, 2^26 on
// a GPU (few launches).
int64_t tile_rows(const at::Tensor& x, int64_t features) {
  const int64_t budget = x.is_cuda() ? (int64_t{1} << 26) : (int64_t{1} << 20);
  return std::max<int64_t>(1, budget / std::max<int64_t>(features, 1));
}

at::ScalarType compute_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor rff_sums_kernel(const at::Tensor& x, const at::Tensor& frequencies, const at::Tensor& phases, bool squares) {
  check_random_feature_inputs(x, frequencies, phases);
  const auto cdt = compute_dtype(x);
  const at::Tensor w_t = frequencies.to(cdt).t().contiguous();  // (d, F)
  const at::Tensor u = phases.to(cdt);
  const int64_t n = x.size(0), features = frequencies.size(0), step = tile_rows(x, features);
  const at::Tensor ones = at::ones({1, std::min(step, n)}, x.options().dtype(cdt));
  // float64 accumulators: sums over up to 10^7 rows keep their digits (a tile's own sum stays in cdt)
  at::Tensor sums = at::zeros({squares ? 2 : 1, features}, x.options().dtype(at::kDouble));
  for (int64_t r0 = 0; r0 < n; r0 += step) {
    const int64_t rows = std::min(step, n - r0);
    const at::Tensor one_row = ones.narrow(1, 0, rows);
    at::Tensor c = at::addmm(u, x.narrow(0, r0, rows).to(cdt), w_t).cos_();  // (rows, F)
    sums[0].add_(at::mm(one_row, c)[0]);
    if (squares) sums[1].add_(at::mm(one_row, c.square_())[0]);
  }
  return sums;
}

at::Tensor rff_sums_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& frequencies,
                                   const at::Tensor& phases) {
  check_random_feature_inputs(x, frequencies, phases);
  check_random_feature_grad(grad, frequencies, x);
  const auto cdt = compute_dtype(x);
  const at::Tensor w = frequencies.to(cdt).contiguous();  // (F, d)
  const at::Tensor w_t = w.t();
  const at::Tensor u = phases.to(cdt);
  const at::Tensor g = grad.to(cdt);
  const bool squares = grad.size(0) == 2;
  const at::Tensor g0 = g[0];
  const int64_t n = x.size(0), step = tile_rows(x, frequencies.size(0));
  at::Tensor gx = at::empty({n, x.size(1)}, x.options().dtype(cdt));
  for (int64_t r0 = 0; r0 < n; r0 += step) {
    const int64_t rows = std::min(step, n - r0);
    const at::Tensor theta = at::addmm(u, x.narrow(0, r0, rows).to(cdt), w_t);
    // d/dx of g0 cos + g1 cos^2 = -(g0 + 2 g1 cos) sin (W row by row)
    const at::Tensor coef = squares ? theta.sin().mul_(at::addcmul(g0, g[1], theta.cos(), 2.0)) : theta.sin().mul_(g0);
    gx.narrow(0, r0, rows).copy_(at::mm(coef, w).neg_());
  }
  return gx.to(x.scalar_type());
}

at::Tensor rff_sums_meta(const at::Tensor& x, const at::Tensor& frequencies, const at::Tensor& phases, bool squares) {
  check_random_feature_inputs(x, frequencies, phases);
  return at::empty({squares ? 2 : 1, frequencies.size(0)}, x.options().dtype(at::kDouble));
}

at::Tensor rff_sums_backward_meta(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& frequencies,
                                  const at::Tensor& phases) {
  check_random_feature_inputs(x, frequencies, phases);
  check_random_feature_grad(grad, frequencies, x);
  return at::empty(x.sizes(), x.options());
}

at::Tensor call_rff_sums(const at::Tensor& x, const at::Tensor& frequencies, const at::Tensor& phases, bool squares) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::rff_sums", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(x, frequencies, phases, squares);
}

at::Tensor call_rff_sums_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& frequencies,
                                  const at::Tensor& phases) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pytl::rff_sums_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, x, frequencies, phases);
}

class RFFSumsFunction : public torch::autograd::Function<RFFSumsFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& frequencies,
                            const at::Tensor& phases, bool squares) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, frequencies, phases});
    return call_rff_sums(x, frequencies, phases, squares);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor none;
    if (!grad_outputs[0].defined()) return {none, none, none, none};
    return {call_rff_sums_backward(grad_outputs[0], saved[0], saved[1], saved[2]), none, none, none};
  }
};

at::Tensor rff_sums_autograd(const at::Tensor& x, const at::Tensor& frequencies, const at::Tensor& phases, bool squares) {
  TORCH_CHECK_VALUE(!(at::GradMode::is_enabled() && (frequencies.requires_grad() || phases.requires_grad())),
                    kRandomFeatureOp,
                    "frequencies and phases are random draws with no gradient; detach them (a learnt bandwidth "
                    "needs the exact statistic, method='exact')");
  return RFFSumsFunction::apply(x, frequencies, phases, squares);
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CPU, m) {
  m.impl("rff_sums", &pytl::rff_sums_kernel);
  m.impl("rff_sums_backward", &pytl::rff_sums_backward_kernel);
}

TORCH_LIBRARY_IMPL(pytl, CUDA, m) {
  m.impl("rff_sums", &pytl::rff_sums_kernel);
  m.impl("rff_sums_backward", &pytl::rff_sums_backward_kernel);
}

TORCH_LIBRARY_IMPL(pytl, Meta, m) {
  m.impl("rff_sums", &pytl::rff_sums_meta);
  m.impl("rff_sums_backward", &pytl::rff_sums_backward_meta);
}

TORCH_LIBRARY_IMPL(pytl, Autograd, m) {
  m.impl("rff_sums", &pytl::rff_sums_autograd);
  m.impl("rff_sums_backward", torch::autograd::autogradNotImplementedFallback());
}
