// CPU kernel of pytl.rbf_kernel_matmul: out = K(z, z) @ s, K(a, b) = sum_k w_k exp(-gamma_k ||a - b||^2),
// gamma_k = 1 / (2 sigma_k^2), diagonal included, without the N x N matrix.
//
// Tiling (the MMD kernel's, one side): the rows are cut into row tiles (the unit of parallel work); a row
// tile walks the columns in blocks of kColBlock. Per (row tile, column block):
//   kernel tile  Kt (kRowTile x kColBlock) from register blocks of 6 rows x 2 vectors of columns:
//                distances D = |a|^2 + |b|^2 - 2 a.b on centred data, clamped at 0, D_ii forced to 0
//                (so K_ii = sum_k w_k exactly), then sum_k w_k exp(-gamma_k D) with the vector exp
//                (one exp and squarings for a geometric ladder with gamma ratio 2);
//   product      O (kRowTile x P) += Kt . s[block rows], register_gemm of 6 rows x 4 vectors
//                of s columns with AVX-512 (32 registers), 6 x 2 elsewhere.
// Memory: O(tile) per thread plus padded copies of z and s. Determinism: each tile owns its output rows
// and computes them in a fixed order, so the result is bitwise the same for any thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../common/checks.h"
#include "thread_budget.h"
#include "../common/bandwidths.h"
#include "register_gemm.h"
#include "simd.h"

namespace pytl {
namespace {

constexpr int kRB = 6;                // rows per register block
constexpr int64_t kRowTile = 48;      // rows per work item (a multiple of kRB)
constexpr int64_t kColBlock = 256;    // columns per kernel tile (a multiple of 2 vectors of float and double)
constexpr int64_t kRowPad = 96;       // z and s rows are padded to this (covers row tiles and column vectors)

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename T>
struct KMArgs {
  int64_t n = 0, d = 0, dp = 0, np = 0;  // rows, features, row stride, padded rows
  const T* rows = nullptr;               // (np, dp) centred rows, zero padded
  const T* cols = nullptr;               // (d, np) transposed
  const T* sq = nullptr;                 // (np) squared norms
  const T* s = nullptr;                  // (np, pp) zero padded
  int64_t P = 0, pp = 0;                 // columns of s, padded to the vector width
  T* out = nullptr;                      // (n, P)
  int K = 0;
  bool ladder = false;
  std::array<T, kMaxBandwidths> neg_gamma{};  // ascending gamma
  std::array<T, kMaxBandwidths> weight{};     // in the same order
};

// One row tile. NV: vectors of s columns per register block of the product (4 with AVX-512's 32
// registers, 2 elsewhere).
template <typename T, int NV>
__attribute__((always_inline)) inline void km_tile_impl(const KMArgs<T>& a, int64_t tile) {
  using S = Simd<T>;
  using V = typename S::V;
  using IV = typename S::IV;
  using I = typename S::I;
  constexpr int W = S::W;
  constexpr int CB = 2 * W;
  const int64_t i0 = tile * kRowTile, dp = a.dp, pp = a.pp;
  const IV lane = S::iota();
  std::vector<T> O(kRowTile * pp, T(0));
  std::vector<T> Kt(kRowTile * kColBlock);

  for (int64_t jb = 0; jb < a.n; jb += kColBlock) {
    const int64_t jn = std::min(a.n - jb, kColBlock);
    // kernel tile
    for (int64_t i = i0; i < i0 + kRowTile; i += kRB) {
      const T* arow = a.rows + i * dp;
      for (int64_t j0 = jb; j0 < jb + jn; j0 += CB) {
        V acc[kRB][2];
        for (int r = 0; r < kRB; ++r) acc[r][0] = acc[r][1] = S::splat(T(0));
        const T* bt = a.cols + j0;
        for (int64_t t = 0; t < a.d; ++t) {
          const V b0 = S::load(bt + t * a.np);
          const V b1 = S::load(bt + t * a.np + W);
          for (int r = 0; r < kRB; ++r) {
            const T ar = arow[r * dp + t];
            acc[r][0] += ar * b0;
            acc[r][1] += ar * b1;
          }
        }
        for (int r0 = 0; r0 < kRB; r0 += 3) {
          V D[6], E[6], Ksum[6];
          IV valid[6];
          for (int v = 0; v < 6; ++v) {
            const int r = r0 + v / 2, h = v % 2;
            const I row = static_cast<I>(i + r);
            const IV col = lane + static_cast<I>(j0 + h * W);
            valid[v] = (col < static_cast<I>(a.n)) & (row < static_cast<I>(a.n));
            const V dist = (a.sq[i + r] + S::load(a.sq + j0 + h * W)) - T(2) * acc[r][h];
            const V clamped = dist < T(0) ? S::splat(T(0)) : dist;
            D[v] = col == row ? S::splat(T(0)) : clamped;  // exact zero on the diagonal
            E[v] = exp_nonpositive<T>(a.neg_gamma[0] * D[v]);
            Ksum[v] = a.weight[0] * E[v];
          }
          for (int k = 1; k < a.K; ++k) {
            for (int v = 0; v < 6; ++v) {
              E[v] = a.ladder ? E[v] * E[v] : exp_nonpositive<T>(a.neg_gamma[k] * D[v]);
              Ksum[v] += a.weight[k] * E[v];
            }
          }
          for (int v = 0; v < 6; ++v) {
            const int r = r0 + v / 2, h = v % 2;
            S::store(Kt.data() + (i - i0 + r) * kColBlock + (j0 - jb) + h * W, valid[v] ? Ksum[v] : S::splat(T(0)));
          }
        }
      }
    }
    // O += Kt . s[jb .. jb + jn): a panel of s (jn x 2 vectors, L1-sized) serves every row group
    const T* sb = a.s + jb * pp;
    for (int64_t pv = 0; pv < pp; pv += NV * W) {
      const int nv = static_cast<int>(std::min<int64_t>(NV, (pp - pv) / W));
      for (int64_t r0 = 0; r0 < kRowTile; r0 += kRB) {
        const T* kt = Kt.data() + r0 * kColBlock;
        T* o = O.data() + r0 * pp;
        if (nv == NV)
          register_gemm<T, kRB, NV>(kt, kColBlock, sb + pv, pp, jn, o + pv, pp);
        else
          register_gemm_tail<T, kRB, NV>(nv, kt, kColBlock, sb + pv, pp, jn, o + pv, pp);
      }
    }
  }
  const int64_t rows_here = std::min(kRowTile, a.n - i0);
  for (int64_t r = 0; r < rows_here; ++r) std::copy_n(O.data() + r * pp, a.P, a.out + (i0 + r) * a.P);
}

// Non-template entry points, versioned for the running CPU: an AVX-512 build with the wider product
// block, and target_clones (AVX2 / baseline) of the 2-vector one.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target("avx512f"))) void km_tile_avx512(const KMArgs<float>& a, int64_t tile) {
  km_tile_impl<float, 4>(a, tile);
}
__attribute__((target("avx512f"))) void km_tile_avx512(const KMArgs<double>& a, int64_t tile) {
  km_tile_impl<double, 4>(a, tile);
}
__attribute__((target_clones("avx2", "default"))) void km_tile_generic(const KMArgs<float>& a, int64_t tile) {
  km_tile_impl<float, 2>(a, tile);
}
__attribute__((target_clones("avx2", "default"))) void km_tile_generic(const KMArgs<double>& a, int64_t tile) {
  km_tile_impl<double, 2>(a, tile);
}
template <typename T>
void km_tile(const KMArgs<T>& a, int64_t tile) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512)
    km_tile_avx512(a, tile);
  else
    km_tile_generic(a, tile);
}
#else
template <typename T>
void km_tile(const KMArgs<T>& a, int64_t tile) {
  km_tile_impl<T, 2>(a, tile);
}
#endif

at::Tensor rbf_kernel_matmul_cpu(const at::Tensor& z, const at::Tensor& s, const at::Tensor& sigmas,
                                 const at::Tensor& weights) {
  check_kernel_matmul_inputs(z, s, sigmas, weights);
  // read to the host once: checked here, then the kernel's constants
  const std::vector<double> sig = check_sigma_values(sigmas, kKernelMatmulOp);
  const std::vector<double> wts = check_weight_values(weights, kKernelMatmulOp);
  const int64_t n = z.size(0), d = z.size(1), P = s.size(1);
  TORCH_CHECK_VALUE(n < (int64_t{1} << 30), kKernelMatmulOp, "at most 2^30 rows in z, got ", n);
  const auto dtype = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // half/bf16 -> float
  if (n == 0 || P == 0) return at::zeros({n, P}, z.options());
  const int K = static_cast<int>(sig.size());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(dtype, "pytl::rbf_kernel_matmul_cpu", [&] {
    using T = scalar_t;
    constexpr int W = Simd<T>::W;
    const auto opts = at::TensorOptions().dtype(dtype);
    KMArgs<T> a;
    a.n = n;
    a.d = d;
    a.dp = round_up(d, W);
    a.np = round_up(n, kRowPad);
    a.P = P;
    a.pp = round_up(P, W);
    // centred on the mean (in double): distances unchanged, cancellation in |a|^2 + |b|^2 - 2ab smaller
    const at::Tensor zd = z.contiguous().to(at::kDouble);  // a fixed layout: the same bits for any strides
    const at::Tensor c = (zd - zd.mean(0, /*keepdim=*/true)).to(dtype);
    const at::Tensor rows = at::zeros({a.np, a.dp}, opts);
    rows.narrow(0, 0, n).narrow(1, 0, d).copy_(c);
    const at::Tensor cols = at::zeros({d, a.np}, opts);
    cols.narrow(1, 0, n).copy_(c.t());
    const at::Tensor sq = at::zeros({a.np}, opts);
    sq.narrow(0, 0, n).copy_(at::sum(c * c, {1}, false, at::kDouble));
    const at::Tensor sp = at::zeros({a.np, a.pp}, opts);
    sp.narrow(0, 0, n).narrow(1, 0, P).copy_(s);
    out = at::empty({n, P}, opts);
    a.rows = rows.data_ptr<T>();
    a.cols = cols.data_ptr<T>();
    a.sq = sq.data_ptr<T>();
    a.s = sp.data_ptr<T>();
    a.out = out.data_ptr<T>();
    // bandwidths by ascending gamma; a ladder (gamma_{k+1} = 2 gamma_k) needs one exp per pair
    std::vector<int> order;
    const Bandwidths<T> bw = compute_order<T>(sig, order);
    a.K = bw.K;
    a.ladder = bw.ladder;
    a.neg_gamma = bw.neg_gamma;
    for (int q = 0; q < K; ++q) a.weight[q] = static_cast<T>(wts[order[q]]);
    const int64_t tiles = (n + kRowTile - 1) / kRowTile;
    // a grain of tiles worth a thread (thread_budget.h): each tile is kRowTile x n pairs of d + P + K values
    const double tile_work = static_cast<double>(kRowTile) * static_cast<double>(n) * static_cast<double>(d + P + K);
    const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(kMinWorkPerThread / tile_work));
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) km_tile(a, t);
    });
  });
  return out.scalar_type() == z.scalar_type() ? out : out.to(z.scalar_type());
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CPU, m) { m.impl("rbf_kernel_matmul", &pytl::rbf_kernel_matmul_cpu); }
