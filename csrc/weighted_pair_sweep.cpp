// Kernels of pytl.weighted_pair_sums and weighted_pair_sums_and_grad, the sweep behind the sample-weighted
// and class-conditional MMD: for x (n, d) with weight rows a_i (C columns) and y (m, d) with rows b_j,
//   S[0, k] = sum_{i, j} (a_i . a_j) e_k(x_i, x_j)     S[1, k] = sum_{i, j} (b_i . b_j) e_k(y_i, y_j)
//   S[2, k] = sum_{i, j} (a_i . b_j) e_k(x_i, y_j)     e_k(p, q) = exp(-||p - q||^2 / (2 sigma_k^2)),
// over all ordered pairs, diagonal included. With C class columns the pair weight a_i . a_j sums the C
// per-class statistics at once (LMMD = sum_c MMD^2_c is S with per-class normalised columns).
//
// The sweep walks tiles of pairs (tile_rows() x tile_rows()): per tile, distances and pair weights by two
// GEMMs, the K exponentials, the sums, and with `coefs` (3, K) the gradient of L = sum_{b, k} coefs[b, k]
// S[b, k] in the same pass. Memory: O(tile^2 K) work space plus O((n + m)(d + C)), never an n x m matrix.
// The self blocks visit tiles j >= i once and count the off-diagonal ones twice.
//
// Gradients (M_ij = (a_i . b_j) sum_k c_k (-gamma_k) e_k(ij), E_ij = sum_k c_k e_k(ij), one block):
//   dL/dp_i = 2 sum_j M_ij (p_i - q_j)   dL/dq_j = 2 sum_i M_ij (q_j - p_i)
//   dL/da_i = sum_j E_ij b_j             dL/db_j = sum_i E_ij a_i
//   dL/dsigma_k = c_k sum_ij (a_i . b_j) e_k(ij) D_ij / sigma_k^3
// and in a self block each pair counts in both roles (factors 4 and 2).
//
// Written with ATen ops on tiles, so one source serves every device (GEMMs by the backend's BLAS): the CUDA
// kernel, and on the CPU the route for small pooled batches of wide features (cpu/weighted_pairs_cpu.cpp;
// elsewhere the CPU runs the register-blocked sweep of cpu/mmd_cpu.cpp with pair weights). No host
// synchronisation on CUDA (bandwidths and weights stay on the device; their values are device-asserted).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "common/sample_weight_checks.h"
#include "weighted_pair_sweep.h"

namespace pytl {
namespace {

// Rows per tile side. The K exponentials of a tile take K * tile^2 elements: 5 x 512^2 floats is 5 MB
// (cache-sized on a CPU), 5 x 4096^2 is 335 MB (few launches on a GPU).
int64_t tile_rows(const at::Tensor& x) { return x.is_cuda() ? 4096 : 512; }

struct Side {
  at::Tensor z;   // centred samples, compute dtype
  at::Tensor w;   // weight matrix, compute dtype
  at::Tensor sq;  // squared norms of z
};

struct Accumulators {
  at::Tensor sums;   // (3, K) float64
  at::Tensor dsums;  // (3, K) float64: sum (a.b) e_k D, for dL/dsigma
  bool grads = false;
  at::Tensor gz[2], gw[2];  // gradients per side (x, y), compute dtype
};

// One block b (0: x-x, 1: y-y, 2: x-y) between sides p and q (the same side for a self block).
void sweep_block(int b, const Side& P, const Side& Q, int sp, int sq, bool self, const at::Tensor& neg_gamma,
                 const at::Tensor& coef_row, Accumulators& acc, int64_t T) {
  const int64_t np = P.z.size(0), nq = Q.z.size(0), K = neg_gamma.size(0);
  const at::Tensor ng3 = neg_gamma.view({K, 1, 1});
  at::Tensor m_coef, e_coef;  // (1, K): M = m_coef . (W e), E = e_coef . e
  if (acc.grads) {
    m_coef = (coef_row * neg_gamma).view({1, K});
    e_coef = coef_row.view({1, K});
  }
  const double gz_scale = self ? 4.0 : 2.0, gw_scale = self ? 2.0 : 1.0;
  for (int64_t i0 = 0; i0 < np; i0 += T) {
    const int64_t ni = std::min(T, np - i0);
    const at::Tensor Pi = P.z.narrow(0, i0, ni), Ui = P.w.narrow(0, i0, ni), si = P.sq.narrow(0, i0, ni);
    for (int64_t j0 = self ? i0 : 0; j0 < nq; j0 += T) {
      const int64_t nj = std::min(T, nq - j0);
      const at::Tensor Qj = Q.z.narrow(0, j0, nj), Vj = Q.w.narrow(0, j0, nj), sj = Q.sq.narrow(0, j0, nj);
      const bool diag = self && j0 == i0;
      const double f = self && !diag ? 2.0 : 1.0;  // an off-diagonal self tile stands for (i, j) and (j, i)
      at::Tensor D = at::addmm(si.unsqueeze(1) + sj.unsqueeze(0), Pi, Qj.t(), 1.0, -2.0).clamp_min_(0.0);
      if (diag) D.fill_diagonal_(0.0);  // exactly: e_k(p, p) = 1
      const at::Tensor W = at::mm(Ui, Vj.t());
      const at::Tensor E = at::exp(D.unsqueeze(0) * ng3);  // (K, ni, nj)
      const at::Tensor WE = E * W.unsqueeze(0);
      acc.sums.select(0, b).add_(WE.sum({1, 2}, false, at::kDouble), f);
      if (!acc.grads) continue;
      acc.dsums.select(0, b).add_((WE * D.unsqueeze(0)).sum({1, 2}, false, at::kDouble), f);
      const at::Tensor M = at::mm(m_coef, WE.view({K, ni * nj})).view({ni, nj});
      const at::Tensor Ec = at::mm(e_coef, E.view({K, ni * nj})).view({ni, nj});
      // row role: the tile's pairs as (p_i, q_j)
      acc.gz[sp].narrow(0, i0, ni).add_(M.sum(1, true) * Pi - at::mm(M, Qj), gz_scale);
      acc.gw[sp].narrow(0, i0, ni).add_(at::mm(Ec, Vj), gw_scale);
      if (diag) continue;  // a diagonal self tile's column role equals its row role (counted by the scales)
      // column role: the same pairs seen from q_j
      acc.gz[sq].narrow(0, j0, nj).add_(M.sum(0).unsqueeze(1) * Qj - at::mm(M.t(), Pi), gz_scale);
      acc.gw[sq].narrow(0, j0, nj).add_(at::mm(Ec.t(), Ui), gw_scale);
    }
  }
}

}  // namespace

// coefs undefined: the sums only.
WeightedPairTensors weighted_pair_tiles(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                        const at::Tensor& y_weights, const at::Tensor& sigmas, const at::Tensor& coefs,
                                        bool cross_only) {
  const auto cdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // half/bfloat16 in float32
  const int64_t n = x.size(0), m = y.size(0), K = sigmas.size(0);
  // centred on the pooled mean (in double): distances unchanged, less cancellation in |p|^2 + |q|^2 - 2pq
  const at::Tensor xd = x.to(at::kDouble), yd = y.to(at::kDouble);
  const at::Tensor mean = (xd.sum(0) + yd.sum(0)) / static_cast<double>(n + m);
  Side sides[2];
  sides[0].z = (xd - mean).to(cdt).contiguous();
  sides[1].z = (yd - mean).to(cdt).contiguous();
  sides[0].w = x_weights.to(cdt).contiguous();
  sides[1].w = y_weights.to(cdt).contiguous();
  for (auto& s : sides) s.sq = (s.z * s.z).sum(1);
  const at::Tensor sig = sigmas.to(cdt);
  // -gamma, clamped so that a tiny sigma cannot make -gamma * 0 a NaN for duplicate points
  const at::Tensor neg_gamma = (-0.5 / (sig * sig)).clamp_min(-std::numeric_limits<float>::max());

  Accumulators acc;
  const auto dopts = x.options().dtype(at::kDouble);
  acc.sums = at::zeros({3, K}, dopts);
  acc.dsums = at::zeros({3, K}, dopts);
  acc.grads = coefs.defined();
  at::Tensor c;
  if (acc.grads) {
    c = coefs.to(cdt);
    for (int s = 0; s < 2; ++s) {
      acc.gz[s] = at::zeros_like(sides[s].z);
      acc.gw[s] = at::zeros_like(sides[s].w);
    }
  }
  const int64_t T = tile_rows(x);
  const at::Tensor none;
  if (!cross_only) {
    sweep_block(0, sides[0], sides[0], 0, 0, true, neg_gamma, acc.grads ? c.select(0, 0) : none, acc, T);
    sweep_block(1, sides[1], sides[1], 1, 1, true, neg_gamma, acc.grads ? c.select(0, 1) : none, acc, T);
  }
  sweep_block(2, sides[0], sides[1], 0, 1, false, neg_gamma, acc.grads ? c.select(0, 2) : none, acc, T);

  WeightedPairTensors r;
  r.sums = acc.sums.to(cdt);
  if (acc.grads) {
    r.gx = acc.gz[0].to(x.scalar_type());
    r.gy = acc.gz[1].to(y.scalar_type());
    r.gxw = acc.gw[0].to(x_weights.scalar_type());
    r.gyw = acc.gw[1].to(y_weights.scalar_type());
    const at::Tensor s64 = sigmas.to(at::kDouble);
    r.gsig = ((coefs.to(at::kDouble) * acc.dsums).sum(0) / (s64 * s64 * s64)).to(sigmas.scalar_type());
  }
  return r;
}

namespace {

// The values no shape check sees: sigmas positive and finite, weights non-negative (signed_ok: of either sign)
// and finite.
void check_sweep_values(const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& sigmas,
                        const char* op = kWeightedPairOp, bool signed_ok = false) {
  if (sigmas.is_cuda())
    assert_sigma_values(sigmas, op);
  else
    check_sigma_values(sigmas, op);
  check_sample_weight_values(x_weights, "x_weights", op, signed_ok);
  check_sample_weight_values(y_weights, "y_weights", op, signed_ok);
}

at::Tensor weighted_pair_sums_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                     const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr);
  check_sweep_values(x_weights, y_weights, sigmas);
  return weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, at::Tensor()).sums;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> weighted_pair_sums_and_grad_kernel(
    const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, &coefs);
  check_sweep_values(x_weights, y_weights, sigmas);
  WeightedPairTensors r = weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, coefs);
  return {r.sums, r.gx, r.gy, r.gxw, r.gyw, r.gsig};
}

at::Tensor cross_pair_sums_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                  const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_cross_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr);
  check_sweep_values(x_weights, y_weights, sigmas, kCrossPairOp, /*signed_ok=*/true);
  return weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, at::Tensor(), true).sums.select(0, 2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_pair_sums_and_grad_kernel(
    const at::Tensor& coefs, const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, const at::Tensor& sigmas) {
  check_cross_pair_inputs(x, y, x_weights, y_weights, sigmas, &coefs);
  check_sweep_values(x_weights, y_weights, sigmas, kCrossPairOp, /*signed_ok=*/true);
  WeightedPairTensors r = weighted_pair_tiles(x, y, x_weights, y_weights, sigmas, cross_block_coefs(coefs), true);
  return {r.sums.select(0, 2), r.gx, r.gy, r.gxw, r.gyw, r.gsig};
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CUDA, m) {
  m.impl("weighted_pair_sums", &pytl::weighted_pair_sums_kernel);
  m.impl("weighted_pair_sums_and_grad", &pytl::weighted_pair_sums_and_grad_kernel);
  m.impl("cross_pair_sums", &pytl::cross_pair_sums_kernel);
  m.impl("cross_pair_sums_and_grad", &pytl::cross_pair_sums_and_grad_kernel);
}
