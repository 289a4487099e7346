// CPU kernels of pytl.weighted_pair_sums and weighted_pair_sums_and_grad: the register-blocked MMD sweep with
// pair weights (mmd_cpu.cpp, weighted_pairs_cpu), or for small pooled batches of wide features, where that
// sweep pays for its padded tiles, the tile sweep of ATen ops (weighted_pair_sweep.cpp), as for the
// unweighted MMD (mmd_cpu.h). PYTL_CPU_WEIGHTED_ROUTE=sweep|tiles forces one (tests, benchmarks).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "../common/sample_weight_checks.h"
#include "../weighted_pair_sweep.h"
#include "mmd_cpu.h"

namespace pytl {
namespace {

bool use_tiles(const at::Tensor& x, const at::Tensor& y) {
  const char* forced = std::getenv("PYTL_CPU_WEIGHTED_ROUTE");
  const std::string route = forced ? forced : "";
  TORCH_CHECK_VALUE(route.empty() || route == "sweep" || route == "tiles", kWeightedPairOp,
                    "PYTL_CPU_WEIGHTED_ROUTE must be 'sweep' or 'tiles' (or unset), got '", route, "'");
  if (!route.empty()) return route == "tiles";
  return x.size(0) + y.size(0) <= kGemmTilesMaxPooledRows && x.size(1) >= kGemmTilesMinFeatures;
}

at::Tensor to_tensor(const std::vector<double>& v, int64_t rows, at::ScalarType dtype) {
  return at::tensor(v, at::TensorOptions().dtype(at::kDouble)).view({rows, -1}).to(dtype);
}

at::Tensor compute_dtype_of(const at::Tensor& x) {
  return at::empty({0}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
}

at::Tensor weighted_pair_sums_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                  const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr);
  const std::vector<double> sig = check_sigma_values(sigmas, kWeightedPairOp);
  check_sample_weight_values(x_weights, "x_weights", kWeightedPairOp);
  check_sample_weight_values(y_weights, "y_weights", kWeightedPairOp);
  if (use_tiles(x, y)) return weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, at::Tensor()).sums;
  const WeightedPairResult r = weighted_pairs_cpu(x, y, x_weights, y_weights, sig, {});
  return to_tensor(r.sums, 3, compute_dtype_of(x).scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> weighted_pair_sums_and_grad_cpu(
    const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, &coefs);
  const std::vector<double> sig = check_sigma_values(sigmas, kWeightedPairOp);
  check_sample_weight_values(x_weights, "x_weights", kWeightedPairOp);
  check_sample_weight_values(y_weights, "y_weights", kWeightedPairOp);
  if (use_tiles(x, y)) {
    const WeightedPairTensors r = weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, coefs);
    return {r.sums, r.gx, r.gy, r.gxw, r.gyw, r.gsig};
  }
  const std::vector<double> c = host_doubles(coefs);
  const WeightedPairResult r = weighted_pairs_cpu(x, y, x_weights, y_weights, sig, c);
  const int64_t K = sigmas.size(0);
  std::vector<double> gsig(K, 0.0);  // dL/dsigma_k = sum_b coefs[b][k] sum (a.b) e_k D / sigma_k^3
  for (int64_t k = 0; k < K; ++k) {
    for (int b = 0; b < 3; ++b) gsig[k] += c[b * K + k] * r.sigma_sums[b * K + k];
    gsig[k] /= sig[k] * sig[k] * sig[k];
  }
  return {to_tensor(r.sums, 3, compute_dtype_of(x).scalar_type()), r.grad_x.to(x.scalar_type()),
          r.grad_y.to(y.scalar_type()), r.grad_xw.to(x_weights.scalar_type()), r.grad_yw.to(y_weights.scalar_type()),
          at::tensor(gsig, at::TensorOptions().dtype(at::kDouble)).to(sigmas.scalar_type())};
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CPU, m) {
  m.impl("weighted_pair_sums", &pytl::weighted_pair_sums_cpu);
  m.impl("weighted_pair_sums_and_grad", &pytl::weighted_pair_sums_and_grad_cpu);
}
