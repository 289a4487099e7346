// CPU kernels of the fused multi-bandwidth RBF MMD: forward (per-bandwidth statistics T_k) and
// backward (gradients for x, y, sigmas). No pairwise matrix is ever built: the pair space is
// cut into row tiles (the unit of parallel work) and column chunks (kept in L1), distances are
// formed by direct differences in a small register/L1 block, and the exps are reduced on the spot.
//
// Determinism: the row-tile partition depends only on the sizes, never on the thread count;
// every tile writes its own partial sums, reduced afterwards in tile order. No atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../mmd_checks.h"
#include "vec_exp.h"

namespace pytl {
namespace {

constexpr int64_t kRowTile = 32;   // rows of A per work item
constexpr int64_t kRowBlock = 4;   // rows sharing one pass over a column chunk
constexpr int64_t kColChunk = 64;  // columns of B per chunk (d x 64 of B^T stays in L1/L2)

// Clones of the tile kernels for AVX-512 and AVX2+FMA machines, picked at load time, so that one
// binary is both portable and vectorised on the machine it runs on.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PYTL_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYTL_CPU_CLONES
#endif

__attribute__((always_inline)) inline float exp_neg(float x) { return exp_nonpositive(x); }
__attribute__((always_inline)) inline double exp_neg(double x) { return std::exp(x); }

// One side of a sweep: the rows of A (row-major) against the columns of B, given both
// row-major (for the gradient's weighted sums) and transposed (for vectorised distances).
template <typename T>
struct Sweep {
  const T* A;     // (na, d)
  int64_t na;
  const T* B;     // (nb, d)
  const T* BT;    // (d, nb)
  int64_t nb;
  int64_t d;
};

// Squared distances between rows [i, i + rows) of A and columns [j0, j0 + cols) of B.
template <typename T>
__attribute__((always_inline)) inline void distance_block(const Sweep<T>& s, int64_t i, int64_t rows, int64_t j0,
                                                          int64_t cols, T (&D)[kRowBlock][kColChunk]) {
  for (int64_t r = 0; r < kRowBlock; ++r)
    for (int64_t j = 0; j < kColChunk; ++j) D[r][j] = T(0);
  for (int64_t t = 0; t < s.d; ++t) {
    const T* bt = s.BT + t * s.nb + j0;
    for (int64_t r = 0; r < rows; ++r) {
      const T a = s.A[(i + r) * s.d + t];
      T* Dr = D[r];
      for (int64_t j = 0; j < cols; ++j) {
        const T diff = a - bt[j];
        Dr[j] += diff * diff;
      }
    }
  }
}

// Forward on rows [i0, i1): sums[k] += sum over pairs of exp(-gamma_k D). With upper_only (a
// self block, A == B) only pairs j > i are visited; the caller doubles them.
template <typename T>
__attribute__((always_inline)) inline void forward_tile_impl(const Sweep<T>& s, int64_t i0, int64_t i1,
                                                             bool upper_only, const T* neg_gamma, int64_t K,
                                                             double* sums) {
  T D[kRowBlock][kColChunk];
  double lanes[kMaxBandwidths][kColChunk];  // per-column accumulators: vectorisable, fixed order
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < kColChunk; ++j) lanes[k][j] = 0.0;
  for (int64_t i = i0; i < i1; i += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, i1 - i);
    const int64_t jstart = upper_only ? i : 0;  // pairs with j <= i of this block are masked below
    for (int64_t j0 = jstart; j0 < s.nb; j0 += kColChunk) {
      const int64_t cols = std::min(kColChunk, s.nb - j0);
      distance_block(s, i, rows, j0, cols, D);
      for (int64_t r = 0; r < rows; ++r) {
        // columns below this index are j <= i + r: outside the upper triangle
        const int64_t first = upper_only ? std::max<int64_t>(0, i + r + 1 - j0) : 0;
        for (int64_t k = 0; k < K; ++k) {
          const T ng = neg_gamma[k];
          for (int64_t j = 0; j < cols; ++j) {
            const T e = exp_neg(ng * D[r][j]);
            lanes[k][j] += j >= first ? static_cast<double>(e) : 0.0;
          }
        }
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    double total = 0.0;
    for (int64_t j = 0; j < kColChunk; ++j) total += lanes[k][j];
    sums[k] += total;
  }
}

// Backward on rows [i0, i1) of A against all of B. With phi(D) = sum_k coef_k exp(-gamma_k D):
//   grad[p] += scale * (sum_j phi_pj * (a_p - b_j)) = scale * (r_p a_p - sum_j phi_pj b_j),
// and, when sigma_sums is given, sigma_sums[k] += sum over pairs of exp(-gamma_k D) * D.
// A and B are centred by the caller, so r_p a_p and the weighted sum do not cancel badly.
// The diagonal of a self block needs no mask: a_p - a_p = 0 and D = 0 there.
template <typename T>
__attribute__((always_inline)) inline void backward_tile_impl(const Sweep<T>& s, int64_t i0, int64_t i1,
                                                              const T* neg_gamma, const T* coef, int64_t K,
                                                              T scale, T* grad, double* sigma_sums) {
  T D[kRowBlock][kColChunk];
  T phi[kRowBlock][kColChunk];
  double lanes[kMaxBandwidths][kColChunk];
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < kColChunk; ++j) lanes[k][j] = 0.0;
  std::vector<T> weighted(kRowBlock * s.d);  // sum_j phi_pj b_j for the rows of the block
  for (int64_t i = i0; i < i1; i += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, i1 - i);
    std::fill(weighted.begin(), weighted.end(), T(0));
    T row_sum[kRowBlock][kColChunk];
    for (int64_t r = 0; r < kRowBlock; ++r)
      for (int64_t j = 0; j < kColChunk; ++j) row_sum[r][j] = T(0);
    for (int64_t j0 = 0; j0 < s.nb; j0 += kColChunk) {
      const int64_t cols = std::min(kColChunk, s.nb - j0);
      distance_block(s, i, rows, j0, cols, D);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < cols; ++j) phi[r][j] = T(0);
        for (int64_t k = 0; k < K; ++k) {
          const T ng = neg_gamma[k];
          const T c = coef[k];
          for (int64_t j = 0; j < cols; ++j) {
            const T e = exp_neg(ng * D[r][j]);
            phi[r][j] += c * e;
            if (sigma_sums) lanes[k][j] += static_cast<double>(e * D[r][j]);
          }
        }
        for (int64_t j = 0; j < cols; ++j) row_sum[r][j] += phi[r][j];
        T* w = weighted.data() + r * s.d;
        for (int64_t j = 0; j < cols; ++j) {
          const T p = phi[r][j];
          const T* b = s.B + (j0 + j) * s.d;
          for (int64_t t = 0; t < s.d; ++t) w[t] += p * b[t];
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      T rs = T(0);
      for (int64_t j = 0; j < kColChunk; ++j) rs += row_sum[r][j];
      const T* a = s.A + (i + r) * s.d;
      const T* w = weighted.data() + r * s.d;
      T* g = grad + (i + r) * s.d;
      for (int64_t t = 0; t < s.d; ++t) g[t] += scale * (rs * a[t] - w[t]);
    }
  }
  if (sigma_sums) {
    for (int64_t k = 0; k < K; ++k) {
      double total = 0.0;
      for (int64_t j = 0; j < kColChunk; ++j) total += lanes[k][j];
      sigma_sums[k] += total;
    }
  }
}

// Non-template entry points, so that target_clones can version them.
PYTL_CPU_CLONES void forward_tile(const Sweep<float>& s, int64_t i0, int64_t i1, bool upper, const float* ng,
                                  int64_t K, double* sums) {
  forward_tile_impl(s, i0, i1, upper, ng, K, sums);
}
PYTL_CPU_CLONES void forward_tile(const Sweep<double>& s, int64_t i0, int64_t i1, bool upper, const double* ng,
                                  int64_t K, double* sums) {
  forward_tile_impl(s, i0, i1, upper, ng, K, sums);
}
PYTL_CPU_CLONES void backward_tile(const Sweep<float>& s, int64_t i0, int64_t i1, const float* ng,
                                   const float* coef, int64_t K, float scale, float* grad, double* sigma_sums) {
  backward_tile_impl(s, i0, i1, ng, coef, K, scale, grad, sigma_sums);
}
PYTL_CPU_CLONES void backward_tile(const Sweep<double>& s, int64_t i0, int64_t i1, const double* ng,
                                   const double* coef, int64_t K, double scale, double* grad,
                                   double* sigma_sums) {
  backward_tile_impl(s, i0, i1, ng, coef, K, scale, grad, sigma_sums);
}

int64_t num_tiles(int64_t rows) { return (rows + kRowTile - 1) / kRowTile; }

// Sum over pairs of one block (x-x, y-y or x-y) of exp(-gamma_k D), per bandwidth, in double.
// Self blocks visit the upper triangle only; tile w is paired with tile T-1-w so that the two
// threads' shares of the triangle are balanced.
template <typename T>
std::vector<double> block_sums(const Sweep<T>& s, bool self_block, const std::vector<T>& neg_gamma) {
  const int64_t K = static_cast<int64_t>(neg_gamma.size());
  const int64_t tiles = num_tiles(s.na);
  std::vector<double> partial(tiles * K, 0.0);
  const int64_t items = self_block ? (tiles + 1) / 2 : tiles;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t pair[2] = {w, self_block ? tiles - 1 - w : w};
      for (int64_t q = 0; q < (pair[1] != pair[0] ? 2 : 1); ++q) {
        const int64_t t = pair[q];
        forward_tile(s, t * kRowTile, std::min(s.na, (t + 1) * kRowTile), self_block, neg_gamma.data(), K,
                     partial.data() + t * K);
      }
    }
  });
  std::vector<double> sums(K, 0.0);
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t k = 0; k < K; ++k) sums[k] += partial[t * K + k];
  if (self_block)
    for (int64_t k = 0; k < K; ++k) sums[k] *= 2.0;  // ordered pairs i != j
  return sums;
}

// The kernels work in float or double; half and bfloat16 inputs are computed in float.
at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::vector<double> host_doubles(const at::Tensor& t) {
  auto c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// Normalisations of the three blocks: T_k = a*Sxx + b*Syy + c*Sxy (+ diagonal for biased).
struct BlockScales {
  double a, b, c;
};
BlockScales block_scales(int64_t n, int64_t m, bool unbiased) {
  const double dn = static_cast<double>(n), dm = static_cast<double>(m);
  return {unbiased ? 1.0 / (dn * (dn - 1.0)) : 1.0 / (dn * dn), unbiased ? 1.0 / (dm * (dm - 1.0)) : 1.0 / (dm * dm),
          -2.0 / (dn * dm)};
}

at::Tensor mmd2_terms_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& sigmas, bool unbiased) {
  check_mmd_inputs(x_in, y_in, sigmas, unbiased);
  check_sigma_values(sigmas);
  const auto dtype = compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.to(dtype).contiguous();
  const at::Tensor y = y_in.to(dtype).contiguous();
  const at::Tensor xT = x.t().contiguous();
  const at::Tensor yT = y.t().contiguous();
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1), K = sigmas.size(0);
  const std::vector<double> sig = host_doubles(sigmas);
  std::vector<double> terms(K);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pytl::mmd2_terms_cpu", [&] {
    std::vector<scalar_t> neg_gamma(K);
    for (int64_t k = 0; k < K; ++k) neg_gamma[k] = static_cast<scalar_t>(-0.5 / (sig[k] * sig[k]));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const auto sxx = block_sums(Sweep<scalar_t>{xp, n, xp, xT.data_ptr<scalar_t>(), n, d}, true, neg_gamma);
    const auto syy = block_sums(Sweep<scalar_t>{yp, m, yp, yT.data_ptr<scalar_t>(), m, d}, true, neg_gamma);
    const auto sxy = block_sums(Sweep<scalar_t>{xp, n, yp, yT.data_ptr<scalar_t>(), m, d}, false, neg_gamma);
    const BlockScales w = block_scales(n, m, unbiased);
    // the diagonal (i == j) of a self block contributes exp(0) = 1 per row, biased estimator only
    const double diag_x = unbiased ? 0.0 : static_cast<double>(n);
    const double diag_y = unbiased ? 0.0 : static_cast<double>(m);
    for (int64_t k = 0; k < K; ++k) terms[k] = w.a * (sxx[k] + diag_x) + w.b * (syy[k] + diag_y) + w.c * sxy[k];
  });
  return at::tensor(terms, at::TensorOptions().dtype(at::kDouble)).to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd2_terms_backward_cpu(const at::Tensor& grad_terms,
                                                                        const at::Tensor& x_in,
                                                                        const at::Tensor& y_in,
                                                                        const at::Tensor& sigmas, bool unbiased) {
  check_mmd_backward_inputs(grad_terms, x_in, y_in, sigmas, unbiased);
  check_sigma_values(sigmas);
  const auto dtype = compute_dtype(x_in.scalar_type());
  // Centre both samples on one point: distances do not change, and the gradient's r_p a_p - sum
  // phi b_j no longer cancels for data far from the origin.
  const at::Tensor center = x_in.to(at::kDouble).mean(0, /*keepdim=*/true);
  const at::Tensor x = (x_in.to(at::kDouble) - center).to(dtype).contiguous();
  const at::Tensor y = (y_in.to(at::kDouble) - center).to(dtype).contiguous();
  const at::Tensor xT = x.t().contiguous();
  const at::Tensor yT = y.t().contiguous();
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1), K = sigmas.size(0);
  const std::vector<double> sig = host_doubles(sigmas);
  const std::vector<double> g = host_doubles(grad_terms);
  const BlockScales w = block_scales(n, m, unbiased);
  at::Tensor grad_x = at::zeros_like(x);
  at::Tensor grad_y = at::zeros_like(y);
  std::vector<double> sigma_sum(K, 0.0);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pytl::mmd2_terms_backward_cpu", [&] {
    std::vector<scalar_t> neg_gamma(K), coef(K);
    for (int64_t k = 0; k < K; ++k) {
      const double gamma = 0.5 / (sig[k] * sig[k]);
      neg_gamma[k] = static_cast<scalar_t>(-gamma);
      coef[k] = static_cast<scalar_t>(-gamma * g[k]);  // d/dD of g_k exp(-gamma_k D)
    }
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const Sweep<scalar_t> xx{xp, n, xp, xT.data_ptr<scalar_t>(), n, d};
    const Sweep<scalar_t> xy{xp, n, yp, yT.data_ptr<scalar_t>(), m, d};
    const Sweep<scalar_t> yy{yp, m, yp, yT.data_ptr<scalar_t>(), m, d};
    const Sweep<scalar_t> yx{yp, m, xp, xT.data_ptr<scalar_t>(), n, d};
    // Each row tile owns its gradient rows; the sigma sums go to per-tile slots (x-y block once).
    const int64_t tx = num_tiles(n), ty = num_tiles(m);
    std::vector<double> part_xx(tx * K, 0.0), part_xy(tx * K, 0.0), part_yy(ty * K, 0.0);
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    scalar_t* gy = grad_y.data_ptr<scalar_t>();
    at::parallel_for(0, tx + ty, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        if (t < tx) {
          const int64_t i0 = t * kRowTile, i1 = std::min(n, i0 + kRowTile);
          backward_tile(xx, i0, i1, neg_gamma.data(), coef.data(), K, static_cast<scalar_t>(4.0 * w.a), gx,
                        part_xx.data() + t * K);
          backward_tile(xy, i0, i1, neg_gamma.data(), coef.data(), K, static_cast<scalar_t>(2.0 * w.c), gx,
                        part_xy.data() + t * K);
        } else {
          const int64_t u = t - tx;
          const int64_t i0 = u * kRowTile, i1 = std::min(m, i0 + kRowTile);
          backward_tile(yy, i0, i1, neg_gamma.data(), coef.data(), K, static_cast<scalar_t>(4.0 * w.b), gy,
                        part_yy.data() + u * K);
          backward_tile(yx, i0, i1, neg_gamma.data(), coef.data(), K, static_cast<scalar_t>(2.0 * w.c), gy,
                        nullptr);
        }
      }
    });
    for (int64_t k = 0; k < K; ++k) {
      double sxx = 0.0, sxy = 0.0, syy = 0.0;
      for (int64_t t = 0; t < tx; ++t) sxx += part_xx[t * K + k], sxy += part_xy[t * K + k];
      for (int64_t t = 0; t < ty; ++t) syy += part_yy[t * K + k];
      // dT_k/dsigma_k = (a Sxx[eD] + b Syy[eD] + c Sxy[eD]) / sigma_k^3
      sigma_sum[k] = g[k] * (w.a * sxx + w.b * syy + w.c * sxy) / (sig[k] * sig[k] * sig[k]);
    }
  });
  at::Tensor grad_sigmas = at::tensor(sigma_sum, at::TensorOptions().dtype(at::kDouble)).to(sigmas.scalar_type());
  return {grad_x.to(x_in.scalar_type()), grad_y.to(y_in.scalar_type()), grad_sigmas};
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CPU, m) {
  m.impl("mmd2_terms", &pytl::mmd2_terms_cpu);
  m.impl("mmd2_terms_backward", &pytl::mmd2_terms_backward_cpu);
}
