// CPU kernels of pytl.weighted_pair_sums and weighted_pair_sums_and_grad: the register-blocked MMD sweep with
// pair weights (mmd_sweep.h's kWeighted instantiation, here), or for small pooled batches of wide features, where that
// sweep pays for its padded tiles, the tile sweep of ATen ops (weighted_pair_sweep.cpp), as for the
// unweighted MMD (mmd_cpu.h). PYTL_CPU_WEIGHTED_ROUTE=sweep|tiles forces one (tests, benchmarks).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "../common/sample_weight_checks.h"
#include "../weighted_pair_sweep.h"
#include "mmd_cpu.h"
#include "mmd_sweep.h"

namespace pytl {
namespace {

PYTL_CPU_CLONES void weighted_sweep_tile(const Side<float>& A, int64_t i0, int64_t i1, const Pass<float>* p, int np,
                                         const Bandwidths<float>& bw, float* grad, float* wgrad) {
  if (grad)
    sweep_tile_impl<float, true, true>(A, i0, i1, p, np, bw, grad, wgrad);
  else
    sweep_tile_impl<float, false, true>(A, i0, i1, p, np, bw, nullptr, nullptr);
}
PYTL_CPU_CLONES void weighted_sweep_tile(const Side<double>& A, int64_t i0, int64_t i1, const Pass<double>* p, int np,
                                         const Bandwidths<double>& bw, double* grad, double* wgrad) {
  if (grad)
    sweep_tile_impl<double, true, true>(A, i0, i1, p, np, bw, grad, wgrad);
  else
    sweep_tile_impl<double, false, true>(A, i0, i1, p, np, bw, nullptr, nullptr);
}

// The sample-weighted pair sums S (3, K), row-major in the caller's order, the sums of S times D (for
// dL/dsigma) likewise, and with coefs the gradients of sum coefs S.
struct WeightedPairResult {
  std::vector<double> sums, sigma_sums;
  at::Tensor grad_x, grad_y, grad_xw, grad_yw;
};

// The weighted pair sums S (3, K) of pytl.weighted_pair_sums (weighted_pair_sweep.cpp has the maths) and,
// with coefs (the (3, K) combination, row-major, caller's order), the gradients of sum coefs S: the same
// sweep with the pair weights u_i . v_j in every kernel value, the self blocks' diagonal (D = 0, pair
// weight |u_i|^2) added in closed form.
WeightedPairResult weighted_pairs_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& xw_in,
                                      const at::Tensor& yw_in, const std::vector<double>& sig,
                                      const std::vector<double>& coefs, bool cross_only = false) {
  const bool with_grad = !coefs.empty();
  const auto dtype = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t n = x_in.size(0), m = y_in.size(0);
  TORCH_CHECK_VALUE(n < (int64_t{1} << 30) && m < (int64_t{1} << 30), kWeightedPairOp,
                    "at most 2^30 rows per sample, got n=", n, ", m=", m);
  const int K = static_cast<int>(sig.size());
  WeightedPairResult res;
  AT_DISPATCH_FLOATING_TYPES(dtype, "pytl::weighted_pairs_cpu", [&] {
    using T = scalar_t;
    const at::Tensor center = x_in.to(at::kDouble).mean(0, /*keepdim=*/true).to(dtype);
    const at::Tensor xw = xw_in.to(dtype), yw = yw_in.to(dtype);
    const PreparedSide<T> px(x_in, center, xw), py(y_in, center, yw);
    std::vector<int> order;
    const Bandwidths<T> bw = compute_order<T>(sig, order);
    std::array<std::array<T, kMaxBandwidths>, 3> coef{}, wcoef{};
    if (with_grad) {
      const double pos_scale[3] = {4.0, 4.0, 2.0}, weight_scale[3] = {2.0, 2.0, 1.0};
      for (int b = 0; b < 3; ++b) {
        const std::vector<double> row(coefs.begin() + b * K, coefs.begin() + (b + 1) * K);
        coef[b] = pair_weight_coefs<T>(pos_scale[b], row, order, bw);
        for (int q = 0; q < K; ++q) wcoef[b][q] = static_cast<T>(weight_scale[b] * row[order[q]]);
      }
    }
    SweepSums out = run_sweep<T, true>(px, py, bw, with_grad, coef, wcoef, weighted_sweep_tile, cross_only);
    // S[b][k]: tiles summed in order; the self blocks' unordered pairs twice, plus their diagonal
    const double diag[2] = {cross_only ? 0.0 : xw.to(at::kDouble).pow(2).sum().item<double>(),
                            cross_only ? 0.0 : yw.to(at::kDouble).pow(2).sum().item<double>()};
    res.sums.assign(3 * K, 0.0);
    res.sigma_sums.assign(3 * K, 0.0);
    for (int q = 0; q < K; ++q) {
      const int k = order[q];
      for (int b = 0; b < 3; ++b) {
        double s = 0.0, e = 0.0;
        for (int64_t t = 0; t < out.tiles; ++t) s += out.sums[(t * 3 + b) * K + q], e += out.sig_sums[(t * 3 + b) * K + q];
        const double pairs = b < 2 ? 2.0 : 1.0;
        res.sums[b * K + k] = pairs * s + (b < 2 ? diag[b] : 0.0);
        res.sigma_sums[b * K + k] = pairs * e;
      }
    }
    if (with_grad) {
      res.grad_x = out.gx;
      res.grad_y = out.gy;
      // the diagonal's weight gradient: d/du_i of |u_i|^2 sum_k coefs[b][k]
      double csum[2] = {0.0, 0.0};
      for (int k = 0; k < K; ++k) csum[0] += coefs[k], csum[1] += coefs[K + k];
      res.grad_xw = out.gxw + (2.0 * csum[0]) * xw;
      res.grad_yw = out.gyw + (2.0 * csum[1]) * yw;
    }
  });
  return res;
}

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

void check_weight_values(const at::Tensor& x_weights, const at::Tensor& y_weights, const char* op, bool signed_ok) {
  check_sample_weight_values(x_weights, "x_weights", op, signed_ok);
  check_sample_weight_values(y_weights, "y_weights", op, signed_ok);
}

using PairGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// S (3, K) in the compute dtype, by the tile route or the register sweep (arguments checked); cross_only: the
// x-y block alone (rows 0 and 1 stay 0).
at::Tensor pair_sums(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights, const at::Tensor& y_weights,
                     const at::Tensor& sigmas, const std::vector<double>& sig, bool cross_only) {
  if (use_tiles(x, y)) return weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, at::Tensor(), cross_only).sums;
  const WeightedPairResult r = weighted_pairs_cpu(x, y, x_weights, y_weights, sig, {}, cross_only);
  return to_tensor(r.sums, 3, compute_dtype_of(x).scalar_type());
}

// S and the gradients of sum coefs S (coefs (3, K)), likewise.
PairGrads pair_sums_and_grad(const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y,
                             const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& sigmas,
                             const std::vector<double>& sig, bool cross_only) {
  if (use_tiles(x, y)) {
    const WeightedPairTensors r = weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, coefs, cross_only);
    return {r.sums, r.gx, r.gy, r.gxw, r.gyw, r.gsig};
  }
  const std::vector<double> c = host_doubles(coefs);
  const WeightedPairResult r = weighted_pairs_cpu(x, y, x_weights, y_weights, sig, c, cross_only);
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

at::Tensor weighted_pair_sums_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                  const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr);
  const std::vector<double> sig = check_sigma_values(sigmas, kWeightedPairOp);
  check_weight_values(x_weights, y_weights, kWeightedPairOp, false);
  return pair_sums(x, y, x_weights, y_weights, sigmas, sig, false);
}

PairGrads weighted_pair_sums_and_grad_cpu(const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y,
                                          const at::Tensor& x_weights, const at::Tensor& y_weights,
                                          const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, &coefs);
  const std::vector<double> sig = check_sigma_values(sigmas, kWeightedPairOp);
  check_weight_values(x_weights, y_weights, kWeightedPairOp, false);
  return pair_sums_and_grad(coefs, x, y, x_weights, y_weights, sigmas, sig, false);
}

// The x-y block alone (cross_pair_sums): the same sweep without its self blocks, weights of either sign.
at::Tensor cross_pair_sums_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                               const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_cross_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr);
  const std::vector<double> sig = check_sigma_values(sigmas, kCrossPairOp);
  check_weight_values(x_weights, y_weights, kCrossPairOp, true);
  return pair_sums(x, y, x_weights, y_weights, sigmas, sig, true)[2];
}

PairGrads cross_pair_sums_and_grad_cpu(const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y,
                                       const at::Tensor& x_weights, const at::Tensor& y_weights,
                                       const at::Tensor& sigmas) {
  check_cross_pair_inputs(x, y, x_weights, y_weights, sigmas, &coefs);
  const std::vector<double> sig = check_sigma_values(sigmas, kCrossPairOp);
  check_weight_values(x_weights, y_weights, kCrossPairOp, true);
  PairGrads r = pair_sums_and_grad(cross_block_coefs(coefs), x, y, x_weights, y_weights, sigmas, sig, true);
  std::get<0>(r) = std::get<0>(r)[2];
  return r;
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CPU, m) {
  m.impl("weighted_pair_sums", &pytl::weighted_pair_sums_cpu);
  m.impl("weighted_pair_sums_and_grad", &pytl::weighted_pair_sums_and_grad_cpu);
  m.impl("cross_pair_sums", &pytl::cross_pair_sums_cpu);
  m.impl("cross_pair_sums_and_grad", &pytl::cross_pair_sums_and_grad_cpu);
}
