// The register-blocked sweep of the fused MMD over every pair of two samples, shared by the unweighted MMD
// (mmd_cpu.cpp) and the sample-weighted pair sums (weighted_pairs_cpu.cpp). Each of those files compiles
// its own instantiations (the SIMD clones of the sweep are large: one file would take minutes longer to
// build, and two build in parallel).
//
// The sweep of the fused multi-bandwidth RBF MMD. No pairwise matrix is ever built: the pair
// space is cut into row tiles (the unit of parallel work), L2-sized column blocks and register
// blocks of 6 rows x 2 vectors of columns, GEMM style:
//   distances   D = |a|^2 + |b|^2 - 2 a.b on centred data (centring keeps the cancellation small
//               for data far from the origin), accumulated in registers, clamped at 0;
//   exps        a vectorised exp; for a geometric ladder (gamma ratio 2) one exp per pair, the
//               other bandwidths by squaring (e_{k+1} = e_k^2);
//   symmetry    the x-x and y-y blocks visit each unordered pair once (upper triangle);
//   gradient    in the same sweep when asked: the pair weights C of a register block feed two
//               register-blocked products, G_rows += C B and G_cols += C^T A, so the backward
//               costs no second sweep.
// Determinism: the tiles and their partial sums depend only on the sizes, and are reduced in tile
// order; the gradient's column side goes to one buffer per thread, reduced in thread order. No
// atomics: bitwise reproducible run to run (the statistic for any thread count).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../common/bandwidths.h"
#include "mmd_cpu.h"
#include "thread_budget.h"
#include "register_gemm.h"
#include "simd.h"

namespace pytl {
namespace {

constexpr int kRB = 6;              // rows per register block
constexpr int64_t kRowTile = 96;    // rows per work item; a multiple of kRB and of every column chunk
// Columns per panel of the transposed copy: (d, kPanel) contiguous, so the distance loop streams one
// contiguous panel instead of d rows n apart (one page each). A multiple of every clone's column chunk.
constexpr int64_t kPanel = 32;
static_assert(kRowTile % kPanel == 0, "the padded rows fill whole panels");
constexpr int64_t kMaxColBlock = 384;     // columns per L2 block (a multiple of kRowTile)...
constexpr int64_t kL2BlockBytes = 1 << 20;  // ...at most: what a block's columns keep in L2

// A column block's B^T slice, B rows and column-gradient rows (3 x dp values per column) must
// stay in L2 while the tile's row blocks sweep it: fewer columns for wide features.
template <typename T>
int64_t column_block(int64_t dp) {
  const int64_t fit = kL2BlockBytes / (3 * dp * static_cast<int64_t>(sizeof(T)));
  return std::max<int64_t>(kRowTile, std::min<int64_t>(kMaxColBlock, fit / kRowTile * kRowTile));
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// One sample prepared for the sweeps: centred, zero padded, in the two layouts the kernels read.
template <typename T>
struct Side {
  int64_t n = 0;   // real rows
  int64_t d = 0;   // features
  int64_t dp = 0;  // row stride: d rounded up to the vector width
  int64_t np = 0;  // padded rows (multiple of kRowTile)
  const T* rows = nullptr;  // (np, dp) row-major
  const T* cols = nullptr;  // (np / kPanel, d, kPanel): the transposed copy in column panels
  const T* sq = nullptr;    // (np) squared norms of the centred rows
  // Weighted sweeps only: a weight row of C columns per sample, zero padded like the rows.
  int64_t C = 0, cp = 0;        // columns, row stride (C rounded up to the vector width)
  const T* wrows = nullptr;     // (np, cp)
  const T* wcols = nullptr;     // (np / kPanel, C, kPanel)
};

// One (row side, column side) sweep of a work item.
template <typename T>
struct Pass {
  const Side<T>* B = nullptr;
  bool self = false;     // B is the row side itself: the diagonal is masked
  bool upper = false;    // visit pairs j > i only (a self block: each unordered pair once)
  double* sums = nullptr;         // (K) += sum of exp(-gamma_k D), or null
  double* sigma_sums = nullptr;   // (K) += sum of exp(-gamma_k D) D, or null (gradient only)
  std::array<T, kMaxBandwidths> coef{};  // gradient pair weight per bandwidth (scale folded in)
  // Gradient only: the column side's share, sum_i C_ij (b_j - a_i) = col_weight_j b_j - col_grad_j,
  // accumulated into buffers that the caller owns and reduces: col_grad in B.cols' panel layout
  // (np_B / kPanel, d, kPanel), col_weight (np_B).
  T* col_grad = nullptr;
  T* col_weight = nullptr;
  // Weighted sweeps, gradient only: the weight gradient's pair weight per bandwidth (E_ij = sum_k wcoef_k
  // exp(-gamma_k D_ij), no pair weight in it), and the column side's share sum_i E_ij u_i, in the panel
  // layout (np_B / kPanel, C, kPanel).
  std::array<T, kMaxBandwidths> wcoef{};
  T* col_wgrad = nullptr;
};

// Offset of column j's first feature in the panel layout (n / kPanel, d, kPanel) of B.cols and of
// the column-gradient buffers.
inline int64_t panel_offset(int64_t j, int64_t d) { return (j / kPanel) * (d * kPanel) + j % kPanel; }

// The pair weights of one register block: kRB rows x (2 vectors) columns.
template <typename T>
using BlockWeights = T[kRB][2 * Simd<T>::W];

// The row side of the gradient: G (kRB rows, dp) += C (kRB x CB) . B rows [j0, j0 + CB) (CB x dp), four
// vectors of each row at a time in registers over the block's columns (one load of b per kRB FMAs
// instead of a load and a store of g).
template <typename T>
__attribute__((always_inline)) inline void row_side_product(const BlockWeights<T>& C, const T* brows, int64_t dp,
                                                            T* g) {
  constexpr int W = Simd<T>::W, CB = 2 * W;
  int64_t tv = 0;
  for (; tv + 4 * W <= dp; tv += 4 * W) register_gemm<T, kRB, 4>(C[0], CB, brows + tv, dp, CB, g + tv, dp);
  register_gemm_tail<T, kRB, 4>(static_cast<int>((dp - tv) / W), C[0], CB, brows + tv, dp, CB, g + tv, dp);
}

// The column side, in the transposed panel layout: colT[t][j] += sum_r a_r[t] C[r][j]. The weights
// stay in registers and the loop has the distance loop's shape (a broadcast per row, two column
// vectors per feature): one load and one store per kRB FMAs.
template <typename T>
__attribute__((always_inline)) inline void column_side_product(const BlockWeights<T>& C, const T* a, int64_t dp,
                                                               int64_t d, T* colT) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  V c[kRB][2];
  for (int r = 0; r < kRB; ++r) c[r][0] = S::load(C[r]), c[r][1] = S::load(C[r] + W);
  for (int64_t t = 0; t < d; ++t) {
    V g0 = S::load(colT + t * kPanel), g1 = S::load(colT + t * kPanel + W);
    for (int r = 0; r < kRB; ++r) {
      const T ar = a[r * dp + t];
      g0 += ar * c[r][0];
      g1 += ar * c[r][1];
    }
    S::store(colT + t * kPanel, g0);
    S::store(colT + t * kPanel + W, g1);
  }
}

// The epilogue of one register block: squared distances from the dot products, the kernel values
// of every bandwidth and their sums; with kGrad also the pair weights C (into Cw), their row and
// column sums and the sigma sums. kMasked: lanes outside the samples, and on or below the diagonal
// of a self block, are zeroed once (squaring keeps zeros) or after each exp. kWeighted: every kernel
// value is multiplied by its pair's weight u_i . v_j (wacc) in the sums and in C, and the weight
// gradient's pair weights (no pair weight in them) go to Ew.
// Straight-line code: the twelve first exps are independent chains for the out-of-order core, and
// the sums are short trees, widened to double once per block.
template <typename T, bool kGrad, bool kMasked, bool kWeighted>
__attribute__((always_inline)) inline void block_epilogue(const typename Simd<T>::V (&acc)[kRB][2],
                                                          const typename Simd<T>::V (&wacc)[kRB][2], const Side<T>& A,
                                                          const Pass<T>& pass, int64_t i, int64_t j0,
                                                          const Bandwidths<T>& bw, typename Simd<T>::DV* sums,
                                                          typename Simd<T>::DV* sig_sums, BlockWeights<T>& Cw,
                                                          BlockWeights<T>& Ew, T* row_weight) {
  using S = Simd<T>;
  using V = typename S::V;
  using IV = typename S::IV;
  using I = typename S::I;
  constexpr int W = S::W;
  constexpr int NV = 2 * kRB;  // vectors in the block
  const Side<T>& B = *pass.B;
  const int K = bw.K;
  V D[NV], E[NV];
  IV valid[NV];
  // The unroll pragmas: GCC keeps these loops rolled (the exp body is large), which sends D and E
  // through stack arrays; unrolled, the forward runs ~10% faster (in-process A/B, 2048/64).
#pragma GCC unroll 12
  for (int v = 0; v < NV; ++v) {
    const int r = v / 2, h = v % 2;
    const V dist = (A.sq[i + r] + S::load(B.sq + j0 + h * W)) - T(2) * acc[r][h];
    D[v] = dist < T(0) ? S::splat(T(0)) : dist;
    E[v] = exp_nonpositive<T>(bw.neg_gamma[0] * D[v]);
    if constexpr (kMasked) {
      const I row = static_cast<I>(i + r);
      const IV col = S::iota() + static_cast<I>(j0 + h * W);
      valid[v] = (col < static_cast<I>(B.n)) & (row < static_cast<I>(A.n));
      if (pass.self) valid[v] &= pass.upper ? (col > row) : (col != row);
      E[v] = valid[v] ? E[v] : S::splat(T(0));
    }
  }
  V part[kMaxBandwidths], sig_part[kMaxBandwidths];  // this block's sums, in float
#pragma GCC unroll 2
  for (int g = 0; g < NV; g += 6) {  // three rows (six vectors) at a time, bandwidth-major
    V* Eg = E + g;
    const V* Dg = D + g;
    V C[6], Ec[6], P[6];
    for (int k = 0; k < K; ++k) {
      if (k > 0) {
#pragma GCC unroll 6
        for (int v = 0; v < 6; ++v) {
          if (bw.ladder) {
            Eg[v] = Eg[v] * Eg[v];
          } else {
            Eg[v] = exp_nonpositive<T>(bw.neg_gamma[k] * Dg[v]);
            if constexpr (kMasked) Eg[v] = valid[g + v] ? Eg[v] : S::splat(T(0));
          }
        }
      }
      // the kernel values as the sums see them: times the pair weights in a weighted sweep
#pragma GCC unroll 6
      for (int v = 0; v < 6; ++v) {
        if constexpr (kWeighted)
          P[v] = wacc[(g + v) / 2][(g + v) % 2] * Eg[v];
        else
          P[v] = Eg[v];
      }
      const V p = ((P[0] + P[1]) + (P[2] + P[3])) + (P[4] + P[5]);
      part[k] = g == 0 ? p : part[k] + p;
      if (kGrad) {
        const T coef = pass.coef[k];
#pragma GCC unroll 6
        for (int v = 0; v < 6; ++v) C[v] = k == 0 ? coef * P[v] : C[v] + coef * P[v];
        if constexpr (kWeighted) {
          const T wcoef = pass.wcoef[k];
#pragma GCC unroll 6
          for (int v = 0; v < 6; ++v) Ec[v] = k == 0 ? wcoef * Eg[v] : Ec[v] + wcoef * Eg[v];
        }
        const V q = (P[0] * Dg[0] + P[2] * Dg[2] + P[4] * Dg[4]) + (P[1] * Dg[1] + P[3] * Dg[3] + P[5] * Dg[5]);
        sig_part[k] = g == 0 ? q : sig_part[k] + q;
      }
    }
    if (kGrad) {
      const int r0 = g / 2;
      for (int v = 0; v < 6; ++v) S::store(&Cw[r0 + v / 2][(v % 2) * W], C[v]);
      if constexpr (kWeighted)
        for (int v = 0; v < 6; ++v) S::store(&Ew[r0 + v / 2][(v % 2) * W], Ec[v]);
      for (int r = r0; r < r0 + 3; ++r) {
        T* rw = row_weight + r * W;
        S::store(rw, S::load(rw) + (C[2 * (r - r0)] + C[2 * (r - r0) + 1]));
      }
      if (pass.col_weight) {
        for (int h = 0; h < 2; ++h) {
          T* cw = pass.col_weight + j0 + h * W;
          S::store(cw, S::load(cw) + (C[h] + C[2 + h] + C[4 + h]));
        }
      }
    }
  }
  for (int k = 0; k < K; ++k) {
    sums[k] += S::widen(part[k]);
    if (kGrad) sig_sums[k] += S::widen(sig_part[k]);
  }
}

// Rows [i0, i1) of A against the passes. With kGrad, grad rows (n_A, d) are set to the row side's
// sum over passes and pairs of C_ij (a_i - b_j), C_ij = sum_k coef_k exp(-gamma_k D_ij), and the
// column side's share goes to the passes' column buffers. kWeighted: C_ij carries the pair weight
// u_i . v_j, and wgrad rows (n_A, C) are set to the row side's sum_j E_ij v_j.
template <typename T, bool kGrad, bool kWeighted>
__attribute__((always_inline)) inline void sweep_tile_impl(const Side<T>& A, int64_t i0, int64_t i1,
                                                           const Pass<T>* passes, int num_passes,
                                                           const Bandwidths<T>& bw, T* grad, T* wgrad) {
  using S = Simd<T>;
  using V = typename S::V;
  using DV = typename S::DV;
  constexpr int W = S::W;
  constexpr int CB = 2 * W;  // columns per register block
  static_assert(kPanel % CB == 0, "a register block lies inside one column panel");
  const int K = bw.K;
  const int64_t d = A.d, dp = A.dp;
  // Register blocks past the last real row are all padding: skipped (their lanes are masked to zero,
  // so this changes no sum; a 32-row sample no longer pays for its tile's 96).
  const int64_t i_end = std::min(i1, round_up(A.n, kRB));

  std::vector<T> G;  // gradient products for the tile's rows, (kRowTile, dp)
  std::vector<T> row_weight;  // per-row lanes of sum_j C_ij, (kRowTile, W)
  std::vector<T> Gw;  // weighted: the weight gradient's row side, (kRowTile, cp)
  if (kGrad) {
    G.assign(kRowTile * dp, T(0));
    row_weight.assign(kRowTile * W, T(0));
    if (kWeighted) Gw.assign(kRowTile * A.cp, T(0));
  }
  alignas(64) BlockWeights<T> Cbuf;
  alignas(64) BlockWeights<T> Ebuf;

  for (int pi = 0; pi < num_passes; ++pi) {
    const Pass<T>& pass = passes[pi];
    const Side<T>& B = *pass.B;
    DV sums[kMaxBandwidths], sig_sums[kMaxBandwidths];
    for (int k = 0; k < K; ++k) sums[k] = sig_sums[k] = DV{};
    const int64_t col_block = column_block<T>(dp);
    const int64_t jb_start = pass.upper ? i0 / col_block * col_block : 0;
    for (int64_t jb = jb_start; jb < B.n; jb += col_block) {
      const int64_t jb_end = std::min(B.n, jb + col_block);
      // Columns outer, rows inner: a register block's columns (B panel, B rows, their gradient
      // panel) stay in L1 while the tile's rows pass over them.
      for (int64_t j0 = jb; j0 < jb_end; j0 += CB) {
        for (int64_t i = i0; i < i_end; i += kRB) {
          if (pass.upper && j0 + CB - 1 <= i) break;  // no column above the diagonal from here on
          const T* a = A.rows + i * dp;
          // distances: acc[r][h] = a_{i+r} . b_{j0 + h W + lanes}
          V acc[kRB][2];
          for (int r = 0; r < kRB; ++r) acc[r][0] = acc[r][1] = S::splat(T(0));
          const T* bt = B.cols + panel_offset(j0, d);
          for (int64_t t = 0; t < d; ++t) {
            const V b0 = S::load(bt + t * kPanel);
            const V b1 = S::load(bt + t * kPanel + W);
            for (int r = 0; r < kRB; ++r) {
              const T ar = a[r * dp + t];
              acc[r][0] += ar * b0;
              acc[r][1] += ar * b1;
            }
          }
          // pair weights: wacc[r][h] = u_{i+r} . v_{j0 + h W + lanes}, the distance loop over the C columns
          V wacc[kRB][2];
          if constexpr (kWeighted) {
            for (int r = 0; r < kRB; ++r) wacc[r][0] = wacc[r][1] = S::splat(T(0));
            const T* u = A.wrows + i * A.cp;
            const T* vt = B.wcols + panel_offset(j0, B.C);
            for (int64_t c = 0; c < A.C; ++c) {
              const V v0 = S::load(vt + c * kPanel);
              const V v1 = S::load(vt + c * kPanel + W);
              for (int r = 0; r < kRB; ++r) {
                const T ur = u[r * A.cp + c];
                wacc[r][0] += ur * v0;
                wacc[r][1] += ur * v1;
              }
            }
          }
          // Blocks away from the diagonal and the padded edges need no mask at all.
          const bool interior = j0 + CB <= B.n && i + kRB <= A.n &&
                                (!pass.self || (pass.upper ? j0 > i + kRB - 1 : (j0 >= i + kRB || j0 + CB <= i)));
          T* rw = kGrad ? row_weight.data() + (i - i0) * W : nullptr;
          if (interior)
            block_epilogue<T, kGrad, false, kWeighted>(acc, wacc, A, pass, i, j0, bw, sums, sig_sums, Cbuf, Ebuf, rw);
          else
            block_epilogue<T, kGrad, true, kWeighted>(acc, wacc, A, pass, i, j0, bw, sums, sig_sums, Cbuf, Ebuf, rw);
          if (kGrad) {
            row_side_product<T>(Cbuf, B.rows + j0 * dp, dp, G.data() + (i - i0) * dp);
            if (pass.col_grad) column_side_product<T>(Cbuf, a, dp, d, pass.col_grad + panel_offset(j0, d));
            if constexpr (kWeighted) {
              row_side_product<T>(Ebuf, B.wrows + j0 * A.cp, A.cp, Gw.data() + (i - i0) * A.cp);
              if (pass.col_wgrad)
                column_side_product<T>(Ebuf, A.wrows + i * A.cp, A.cp, A.C, pass.col_wgrad + panel_offset(j0, A.C));
            }
          }
        }
      }
    }
    for (int k = 0; k < K; ++k) {  // lanes reduced in a fixed order
      if (pass.sums)
        for (int l = 0; l < W; ++l) pass.sums[k] += sums[k][l];
      if (kGrad && pass.sigma_sums)
        for (int l = 0; l < W; ++l) pass.sigma_sums[k] += sig_sums[k][l];
    }
  }
  if (kGrad) {  // grad_i = sum_j C_ij (a_i - b_j) = (sum_j C_ij) a_i - G_i
    for (int64_t i = i0; i < std::min(i1, A.n); ++i) {
      T w = T(0);
      for (int l = 0; l < W; ++l) w += row_weight[(i - i0) * W + l];
      const T* a = A.rows + i * dp;
      const T* g = G.data() + (i - i0) * dp;
      T* out = grad + i * d;
      for (int64_t t = 0; t < d; ++t) out[t] = w * a[t] - g[t];
      if constexpr (kWeighted) std::copy_n(Gw.data() + (i - i0) * A.cp, A.C, wgrad + i * A.C);
    }
  }
}


// An entry point of the sweep for rows [i0, i1) of A (a tile): the non-template functions that each file
// versions for the running CPU (PYTL_CPU_CLONES), sweep_tile in mmd_cpu.cpp, weighted_sweep_tile (pair
// weights; wgrad their gradient rows) in weighted_pairs_cpu.cpp.
template <typename T>
using TileFn = void (*)(const Side<T>& A, int64_t i0, int64_t i1, const Pass<T>* passes, int num_passes,
                        const Bandwidths<T>& bw, T* grad, T* wgrad);

// Owns the padded, centred copies of one sample (and of its weight rows, for a weighted sweep).
template <typename T>
struct PreparedSide {
  at::Tensor rows, cols, sq, wrows, wcols;
  Side<T> side;
  PreparedSide(const at::Tensor& s, const at::Tensor& center, const at::Tensor& weights = at::Tensor()) {
    const int64_t n = s.size(0), d = s.size(1);
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    const int64_t dp = round_up(d, Simd<T>::W), np = round_up(n, kRowTile);
    const at::Tensor c = s.to(opts.dtype()) - center;
    rows = at::zeros({np, dp}, opts);
    rows.narrow(0, 0, n).narrow(1, 0, d).copy_(c);
    cols = rows.narrow(1, 0, d).reshape({np / kPanel, kPanel, d}).transpose(1, 2).contiguous();
    sq = at::zeros({np}, opts);
    sq.narrow(0, 0, n).copy_(at::sum(c * c, {1}, false, at::kDouble));
    side = Side<T>{n, d, dp, np, rows.data_ptr<T>(), cols.data_ptr<T>(), sq.data_ptr<T>()};
    if (weights.defined()) {
      const int64_t C = weights.size(1), cp = round_up(C, Simd<T>::W);
      wrows = at::zeros({np, cp}, opts);
      wrows.narrow(0, 0, n).narrow(1, 0, C).copy_(weights);
      wcols = wrows.narrow(1, 0, C).reshape({np / kPanel, kPanel, C}).transpose(1, 2).contiguous();
      side.C = C;
      side.cp = cp;
      side.wrows = wrows.data_ptr<T>();
      side.wcols = wcols.data_ptr<T>();
    }
  }
};

// What a sweep over the three blocks computes: per-tile partial sums laid out [tile][block][q] (blocks
// 0 = x-x and 1 = y-y over unordered pairs i < j, 2 = x-y; q in compute order; x tiles first) of the
// kernel values (times the pair weights in a weighted sweep) and of the same times D; with the
// gradient, grad rows of x and y (and of their weight rows in a weighted sweep).
struct SweepSums {
  std::vector<double> sums, sig_sums;
  int64_t tiles = 0;
  at::Tensor gx, gy, gxw, gyw;
};

// The sweep over every pair of x and y, split over threads, one tile at a time through `tile_fn`. coef[b] /
// wcoef[b]: the pair weights of block b's position and weight gradients (compute order; used with with_grad).
// cross_only: the x-y block alone (blocks 0 and 1 stay 0): the blocks between two shards of a ring exchange.
template <typename T, bool kWeighted>
SweepSums run_sweep(const PreparedSide<T>& px, const PreparedSide<T>& py, const Bandwidths<T>& bw, bool with_grad,
                    const std::array<std::array<T, kMaxBandwidths>, 3>& coef,
                    const std::array<std::array<T, kMaxBandwidths>, 3>& wcoef, TileFn<T> tile_fn,
                    bool cross_only = false) {
  const int K = bw.K;
  const int64_t n = px.side.n, m = py.side.n, d = px.side.d, C = px.side.C;
  const int64_t tx = px.side.np / kRowTile, ty = py.side.np / kRowTile;
  SweepSums out;
  out.tiles = tx + ty;
  out.sums.assign((tx + ty) * 3 * K, 0.0);
  out.sig_sums.assign((tx + ty) * 3 * K, 0.0);
  auto slot = [&](std::vector<double>& v, int64_t tile, int block) { return v.data() + (tile * 3 + block) * K; };

  // Work units: a tile paired with its mirror (t, T-1-t) balances the triangles; x and y units
  // interleaved balance the x-y block, which the x tiles carry.
  std::vector<std::pair<int, int64_t>> units;  // (side: 0 = x, 1 = y; tile w of the pair)
  for (int64_t u = 0; u < std::max((tx + 1) / 2, (ty + 1) / 2); ++u) {
    if (u < (tx + 1) / 2) units.emplace_back(0, u);
    if (u < (ty + 1) / 2 && !cross_only) units.emplace_back(1, u);
  }
  // Gradient: the column side of each pair goes to per-slot buffers (one slot per thread, fewer if
  // memory is short), summed in slot order: bitwise reproducible for a given thread count.
  // Buffer layout: x rows' col_grad, y rows' col_grad, x col_weight, y col_weight; weighted: then x and y
  // col_wgrad.
  const int64_t wgrad_elems = kWeighted ? (px.side.np + py.side.np) * C : 0;
  const int64_t buffer_elems = (px.side.np + py.side.np) * (px.side.dp + 1) + wgrad_elems;
  // Slots take contiguous runs of units of equal work (columns swept), not equal counts: with an odd
  // tile count the middle tile has no mirror, and a split by count gave slot 0 ~5% more work.
  std::vector<int64_t> unit_work(units.size());
  for (size_t u = 0; u < units.size(); ++u) {
    const int side = units[u].first;
    const int64_t tiles = side == 0 ? tx : ty, np = side == 0 ? px.side.np : py.side.np;
    const int64_t cross = side == 0 ? py.side.np : 0;  // the x tiles also sweep the x-y block
    const int64_t t = units[u].second, partner = tiles - 1 - t;
    const int64_t self_work = cross_only ? 0 : np;  // the self block's columns from tile t on
    unit_work[u] = self_work - (cross_only ? 0 : t * kRowTile) + cross;
    if (partner != t) unit_work[u] += self_work - (cross_only ? 0 : partner * kRowTile) + cross;
  }
  // Threads: as many as the work pays for (thread_budget.h), at most one per unit.
  double work = 0.0;  // pair-features swept
  for (int64_t w : unit_work) work += static_cast<double>(w) * kRowTile * static_cast<double>(d + K);
  int64_t slots = threads_for_work(work, std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(units.size())));
  if (with_grad) slots = std::max<int64_t>(1, std::min<int64_t>(slots, (int64_t{512} << 20) / (buffer_elems * sizeof(T))));
  slots = std::max<int64_t>(1, slots);
  std::vector<T> col_buffers(with_grad ? slots * buffer_elems : 0, T(0));
  if (with_grad) {
    out.gx = at::empty({n, d}, px.rows.options());
    // the tiles set their rows' gradient; cross_only sweeps no y tile, so y's rows start from 0
    out.gy = cross_only ? at::zeros({m, d}, py.rows.options()) : at::empty({m, d}, py.rows.options());
    if (kWeighted) {
      out.gxw = at::empty({n, C}, px.rows.options());
      out.gyw = cross_only ? at::zeros({m, C}, py.rows.options()) : at::empty({m, C}, py.rows.options());
    }
  }

  const std::vector<int64_t> first_unit = slot_boundaries(unit_work, slots);
  const int64_t wgrad_base = (px.side.np + py.side.np) * (px.side.dp + 1);

  at::parallel_for(0, slots, 1, [&](int64_t slot_begin, int64_t slot_end) {
    for (int64_t sl = slot_begin; sl < slot_end; ++sl) {
      T* buf = with_grad ? col_buffers.data() + sl * buffer_elems : nullptr;
      T* cg[2] = {buf, buf ? buf + px.side.np * px.side.dp : nullptr};
      T* cw[2] = {buf ? buf + (px.side.np + py.side.np) * px.side.dp : nullptr, nullptr};
      cw[1] = buf ? cw[0] + px.side.np : nullptr;
      T* cwg[2] = {buf && kWeighted ? buf + wgrad_base : nullptr, buf && kWeighted ? buf + wgrad_base + px.side.np * C
                                                                                      : nullptr};
      const int64_t u0 = first_unit[sl], u1 = first_unit[sl + 1];
      for (int64_t u = u0; u < u1; ++u) {
        const int side = units[u].first;
        const PreparedSide<T>& A = side == 0 ? px : py;
        const int64_t tiles = side == 0 ? tx : ty;
        const int64_t partner = tiles - 1 - units[u].second;
        for (int64_t t : {units[u].second, partner}) {
          const int64_t tile = side == 0 ? t : tx + t;
          Pass<T> passes[2];
          passes[0].B = &A.side;
          passes[0].self = passes[0].upper = true;
          passes[0].sums = slot(out.sums, tile, side);
          passes[0].sigma_sums = slot(out.sig_sums, tile, side);
          passes[0].coef = coef[side];
          passes[0].wcoef = wcoef[side];
          passes[0].col_grad = cg[side];
          passes[0].col_weight = cw[side];
          passes[0].col_wgrad = cwg[side];
          if (side == 0) {  // the x-y block, from the x rows
            passes[1].B = &py.side;
            passes[1].sums = slot(out.sums, tile, 2);
            passes[1].sigma_sums = slot(out.sig_sums, tile, 2);
            passes[1].coef = coef[2];
            passes[1].wcoef = wcoef[2];
            passes[1].col_grad = cg[1];
            passes[1].col_weight = cw[1];
            passes[1].col_wgrad = cwg[1];
          }
          T* grad = with_grad ? (side == 0 ? out.gx : out.gy).data_ptr<T>() : nullptr;
          T* wgrad = kWeighted && with_grad ? (side == 0 ? out.gxw : out.gyw).data_ptr<T>() : nullptr;
          if (cross_only)  // the x-y pass alone
            tile_fn(A.side, t * kRowTile, (t + 1) * kRowTile, passes + 1, 1, bw, grad, wgrad);
          else
            tile_fn(A.side, t * kRowTile, (t + 1) * kRowTile, passes, side == 0 ? 2 : 1, bw, grad, wgrad);
          if (partner == units[u].second) break;
        }
      }
    }
  });

  if (with_grad) {  // add the column side: grad_j += (sum_slots col_weight_j) b_j - sum_slots col_grad_j
    for (int side = 0; side < 2; ++side) {
      const Side<T>& B = side == 0 ? px.side : py.side;
      T* grad = (side == 0 ? out.gx : out.gy).data_ptr<T>();
      T* wgrad = kWeighted ? (side == 0 ? out.gxw : out.gyw).data_ptr<T>() : nullptr;
      const int64_t grad_offset = side == 0 ? 0 : px.side.np * px.side.dp;
      const int64_t weight_offset = (px.side.np + py.side.np) * px.side.dp + (side == 0 ? 0 : px.side.np);
      const int64_t wgrad_offset = wgrad_base + (side == 0 ? 0 : px.side.np * C);
      // one thread when the sweep had one: the rows' sums are not worth a second parallel region
      at::parallel_for(0, B.n, slots > 1 ? 64 : std::max<int64_t>(B.n, 1), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          T* o = grad + r * d;
          for (int64_t sl = 0; sl < slots; ++sl) {
            const T* buf = col_buffers.data() + sl * buffer_elems;
            const T weight = buf[weight_offset + r];
            const T* g = buf + grad_offset + panel_offset(r, d);  // panel layout
            const T* b = B.rows + r * B.dp;
            for (int64_t t = 0; t < d; ++t) o[t] += weight * b[t] - g[t * kPanel];
            if constexpr (kWeighted) {  // the weight gradient's column side: + sum_i E_ij u_i
              const T* gw = buf + wgrad_offset + panel_offset(r, C);
              for (int64_t c = 0; c < C; ++c) wgrad[r * C + c] += gw[c * kPanel];
            }
          }
        }
      });
    }
  }
  return out;
}


}  // namespace
}  // namespace pytl
