// The two CPU routes of the fused MMD (mmd_cpu.cpp: the register-blocked micro-GEMM sweep;
// mmd_gemm_tiles_cpu.cpp: the machine's GEMM on tiles, for wide features) share their result type, the
// block normalisations, the gradient's pair-weight coefficients, the split of work units over threads
// and the assembly of the statistics from per-tile sums.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../common/bandwidths.h"

namespace pytl {

// Block normalisations: T_k = a Sxx + b Syy + c Sxy, the self sums over ordered pairs i != j.
struct BlockScales {
  double a, b, c;
};

inline BlockScales block_scales(int64_t n, int64_t m, bool unbiased) {
  const double dn = static_cast<double>(n), dm = static_cast<double>(m);
  return {unbiased ? 1.0 / (dn * (dn - 1.0)) : 1.0 / (dn * dn), unbiased ? 1.0 / (dm * (dm - 1.0)) : 1.0 / (dm * dm),
          -2.0 / (dn * dm)};
}

struct MMDResult {
  std::vector<double> terms;        // (K) in the caller's order
  std::vector<double> sigma_grad;   // (K), gradient only
  at::Tensor grad_x, grad_y;        // gradient only
};

// The gradient's pair weight per bandwidth (compute order q) of a block with normalisation `scale`
// (4a, 4b or 2c): C_ij = sum_q coef_q exp(-gamma_q D_ij), coef_q = scale g_k (-gamma_q), k = order[q].
template <typename T>
std::array<T, kMaxBandwidths> pair_weight_coefs(double scale, const std::vector<double>& grad_weights,
                                                const std::vector<int>& order, const Bandwidths<T>& bw) {
  std::array<T, kMaxBandwidths> c{};
  if (!grad_weights.empty())
    for (int q = 0; q < bw.K; ++q) c[q] = static_cast<T>(scale * grad_weights[order[q]] * bw.neg_gamma[q]);
  return c;
}

// Slots (threads) take contiguous runs of work units of equal work, not equal counts: slot s starts at
// the first unit whose midpoint on the cumulative work axis lies in its share. Returns slots + 1
// boundaries: slot s takes units [first[s], first[s + 1]).
inline std::vector<int64_t> slot_boundaries(const std::vector<int64_t>& unit_work, int64_t slots) {
  std::vector<int64_t> twice_mid(unit_work.size());  // 2 x each unit's midpoint on the cumulative work axis
  int64_t total = 0;
  for (size_t u = 0; u < unit_work.size(); ++u) {
    twice_mid[u] = 2 * total + unit_work[u];
    total += unit_work[u];
  }
  std::vector<int64_t> first(slots + 1);
  for (int64_t s = 0; s <= slots; ++s)
    first[s] = std::find_if(twice_mid.begin(), twice_mid.end(), [&](int64_t mid) { return mid * slots >= 2 * s * total; }) -
               twice_mid.begin();
  return first;
}

// The K statistics T_k (the caller's order) and, with grad_weights, dL/dsigma_k, from per-tile partial sums
// laid out [tile][block][q] (blocks xx, yy, xy; the self blocks over unordered pairs i < j; q in compute
// order): sums of exp(-gamma_q D) and sig_sums of exp(-gamma_q D) D. Tiles are summed in order.
inline void assemble_terms(MMDResult& res, const std::vector<double>& sums, const std::vector<double>& sig_sums,
                           int64_t tiles, const std::vector<int>& order, const std::vector<double>& sig,
                           const BlockScales& w, int64_t n, int64_t m, bool unbiased,
                           const std::vector<double>& grad_weights) {
  const int K = static_cast<int>(sig.size());
  const double pair_factor = 2.0;  // self blocks: each unordered pair once -> ordered pairs
  const double diag_x = unbiased ? 0.0 : static_cast<double>(n);  // exp(0) = 1 per diagonal pair
  const double diag_y = unbiased ? 0.0 : static_cast<double>(m);
  res.terms.assign(K, 0.0);
  res.sigma_grad.assign(K, 0.0);
  for (int q = 0; q < K; ++q) {
    double s[3] = {0, 0, 0}, e[3] = {0, 0, 0};
    for (int64_t t = 0; t < tiles; ++t)
      for (int b = 0; b < 3; ++b) s[b] += sums[(t * 3 + b) * K + q], e[b] += sig_sums[(t * 3 + b) * K + q];
    const int k = order[q];
    res.terms[k] = w.a * (pair_factor * s[0] + diag_x) + w.b * (pair_factor * s[1] + diag_y) + w.c * s[2];
    if (!grad_weights.empty()) {  // dT_k/dsigma_k = (a Exx + b Eyy + c Exy) / sigma_k^3
      res.sigma_grad[k] = grad_weights[k] * (w.a * pair_factor * e[0] + w.b * pair_factor * e[1] + w.c * e[2]) /
                          (sig[k] * sig[k] * sig[k]);
    }
  }
}

// Where the GEMM-on-tiles route is taken: small pooled batches of wide features, where the sweep pays
// for its padded 96-row tiles and per-thread buffers. Everywhere else the sweep's micro-GEMM is faster
// than this machine's sgemm (measured: benchmarks/RESULTS.md, issue 15).
constexpr int64_t kGemmTilesMinFeatures = 512;
constexpr int64_t kGemmTilesMaxPooledRows = 128;  // n + m

// The GEMM-on-tiles route; the same contract as mmd_cpu.cpp's sweep: sig are the bandwidths' values
// (read and checked by the caller), grad_weights the upstream dL/dT_k, empty for the forward only.
MMDResult mmd_gemm_tiles_cpu(const at::Tensor& x, const at::Tensor& y, const std::vector<double>& sig, bool unbiased,
                             const std::vector<double>& grad_weights);

}  // namespace pytl
