// CPU kernels of the fused multi-bandwidth RBF MMD: the register-blocked sweep of mmd_sweep.h (its unweighted
// instantiation) or, for small pooled batches of wide features, the GEMM on tiles (mmd_gemm_tiles_cpu.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "mmd_cpu.h"
#include "mmd_sweep.h"

namespace pytl {
namespace {

// Non-template entry points, so that target_clones can version them for the running CPU.
// (The unused last argument makes them TileFns, like the weighted ones.)
PYTL_CPU_CLONES void sweep_tile(const Side<float>& A, int64_t i0, int64_t i1, const Pass<float>* p, int np,
                                const Bandwidths<float>& bw, float* grad, float* /*wgrad*/) {
  if (grad)
    sweep_tile_impl<float, true, false>(A, i0, i1, p, np, bw, grad, nullptr);
  else
    sweep_tile_impl<float, false, false>(A, i0, i1, p, np, bw, nullptr, nullptr);
}
PYTL_CPU_CLONES void sweep_tile(const Side<double>& A, int64_t i0, int64_t i1, const Pass<double>* p, int np,
                                const Bandwidths<double>& bw, double* grad, double* /*wgrad*/) {
  if (grad)
    sweep_tile_impl<double, true, false>(A, i0, i1, p, np, bw, grad, nullptr);
  else
    sweep_tile_impl<double, false, false>(A, i0, i1, p, np, bw, nullptr, nullptr);
}

// The whole computation; sig: the bandwidths' values (read and checked once by the caller);
// grad_weights (the upstream dL/dT_k) is empty for the forward only.
MMDResult mmd_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const std::vector<double>& sig, bool unbiased,
                  const std::vector<double>& grad_weights) {
  const bool with_grad = !grad_weights.empty();
  const auto dtype = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // half -> float
  const int64_t n = x_in.size(0), m = y_in.size(0);
  TORCH_CHECK_VALUE(n < (int64_t{1} << 30) && m < (int64_t{1} << 30), kMMDOp,
                    "at most 2^30 rows per sample, got n=", n, ", m=", m);
  const BlockScales w = block_scales(n, m, unbiased);
  MMDResult res;
  AT_DISPATCH_FLOATING_TYPES(dtype, "pytl::mmd_cpu", [&] {
    using T = scalar_t;
    // Centre both samples on x's mean: distances do not change, cancellation shrinks.
    const at::Tensor center = x_in.to(at::kDouble).mean(0, /*keepdim=*/true).to(dtype);
    const PreparedSide<T> px(x_in, center), py(y_in, center);
    std::vector<int> order;
    const Bandwidths<T> bw = compute_order<T>(sig, order);
    const std::array<std::array<T, kMaxBandwidths>, 3> coef = {
        pair_weight_coefs<T>(4.0 * w.a, grad_weights, order, bw), pair_weight_coefs<T>(4.0 * w.b, grad_weights, order, bw),
        pair_weight_coefs<T>(2.0 * w.c, grad_weights, order, bw)};
    SweepSums out = run_sweep<T, false>(px, py, bw, with_grad, coef, {}, sweep_tile);
    res.grad_x = out.gx;
    res.grad_y = out.gy;
    assemble_terms(res, out.sums, out.sig_sums, out.tiles, order, sig, w, n, m, unbiased, grad_weights);
  });
  return res;
}


// The route for these samples: the machine's GEMM on tiles (mmd_gemm_tiles_cpu.cpp) for small pooled
// batches of wide features, the register-blocked sweep above otherwise. PYTL_CPU_MMD_ROUTE=sweep|gemm
// forces one (benchmarks, tests).
MMDResult mmd_cpu_route(const at::Tensor& x, const at::Tensor& y, const std::vector<double>& sig, bool unbiased,
                        const std::vector<double>& grad_weights) {
  const char* forced = std::getenv("PYTL_CPU_MMD_ROUTE");
  const std::string route = forced ? forced : "";
  TORCH_CHECK_VALUE(route.empty() || route == "sweep" || route == "gemm", kMMDOp,
                    "PYTL_CPU_MMD_ROUTE must be 'sweep' or 'gemm' (or unset), got '", route, "'");
  const bool small_and_wide = x.size(0) + y.size(0) <= kGemmTilesMaxPooledRows && x.size(1) >= kGemmTilesMinFeatures;
  const bool gemm = route.empty() ? small_and_wide : route == "gemm";
  return gemm ? mmd_gemm_tiles_cpu(x, y, sig, unbiased, grad_weights) : mmd_cpu(x, y, sig, unbiased, grad_weights);
}

at::Tensor to_tensor(const std::vector<double>& v, at::ScalarType dtype) {
  return at::tensor(v, at::TensorOptions().dtype(at::kDouble)).to(dtype);
}

at::Tensor mmd2_terms_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  check_mmd_inputs(x, y, sigmas, unbiased);
  const std::vector<double> sigma_values = check_sigma_values(sigmas);  // read once, checked and used
  return to_tensor(mmd_cpu_route(x, y, sigma_values, unbiased, {}).terms, x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mmd2_terms_and_grad_cpu(const at::Tensor& grad_terms,
                                                                                   const at::Tensor& x,
                                                                                   const at::Tensor& y,
                                                                                   const at::Tensor& sigmas,
                                                                                   bool unbiased) {
  check_mmd_backward_inputs(grad_terms, x, y, sigmas, unbiased);
  const std::vector<double> sigma_values = check_sigma_values(sigmas);  // read once, checked and used
  MMDResult r = mmd_cpu_route(x, y, sigma_values, unbiased, host_doubles(grad_terms));
  return {to_tensor(r.terms, x.scalar_type()), r.grad_x.to(x.scalar_type()), r.grad_y.to(y.scalar_type()),
          to_tensor(r.sigma_grad, sigmas.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd2_terms_backward_cpu(const at::Tensor& grad_terms,
                                                                        const at::Tensor& x, const at::Tensor& y,
                                                                        const at::Tensor& sigmas, bool unbiased) {
  auto r = mmd2_terms_and_grad_cpu(grad_terms, x, y, sigmas, unbiased);
  return {std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CPU, m) {
  m.impl("mmd2_terms", &pytl::mmd2_terms_cpu);
  m.impl("mmd2_terms_backward", &pytl::mmd2_terms_backward_cpu);
  m.impl("mmd2_terms_and_grad", &pytl::mmd2_terms_and_grad_cpu);
}

