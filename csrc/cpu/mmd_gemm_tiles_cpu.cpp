// The fused MMD for wide features: the machine's GEMM (MKL/OpenBLAS through at::mm) on tiles.
//
// For d in the hundreds the pair loop is a GEMM with a cheap epilogue: 2d multiply-adds per pair against
// one exp (and K-1 squarings on the ladder). ARCHITECTURE.md's "BLAS-on-tiles" route: the pooled,
// centred sample Z = [x; y] (N = n + m rows) is cut into row tiles of R rows and, per tile pair
// (I, J >= I), into one thread's buffers:
//   dots       P = Z_I Z_J^T                         (GEMM, R x R buffer)
//   epilogue   D = |z_i|^2 + |z_j|^2 - 2 P, exp(-gamma_k D) for every bandwidth, the per-block sums
//              (xx, yy, xy by the rows' and columns' sides), and with the gradient the pair weights
//              C_ij = sum_k coef_{block,k} exp(-gamma_k D_ij), written over P;
//   gradient   grad_i = sum_j C_ij (z_i - z_j) = w_i z_i - (C Z)_i, w_i = sum_j C_ij: G_I += C Z_J and
//              G_J += C^T Z_I (two GEMMs into the thread's (N, d) accumulator), w from the epilogue.
// A diagonal tile pair (I, I) computes its whole R x R block, diagonal masked: both orders of each pair,
// so its sums count half and its gradient needs only G_I += C Z_I.
// Memory: R^2 + N d per thread (the accumulator), plus Z. Determinism: the statistic's partial sums are
// per row tile, reduced in tile order (the same for any thread count); the gradient's per-thread
// accumulators are summed in thread order (bitwise reproducible for a given thread count).
// Measured against the sweep (benchmarks/RESULTS.md, issue 15): torch's sgemm here runs at ~95 GFLOP/s a
// core where the sweep's micro-GEMM reaches ~150, so this route wins only on small pooled batches
// (n + m <= 128, d >= 512), where the sweep's padded tiles and buffers cost more than the pairs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "../common/bandwidths.h"
#include "mmd_cpu.h"
#include "simd.h"
#include "thread_budget.h"

namespace pytl {
namespace {

constexpr int64_t kMaxTileRows = 256;  // a float tile is 256 KB: L2-resident while the epilogue passes
constexpr int64_t kMinTileRows = 32;
constexpr int kBlocks = 3;  // 0 = xx, 1 = yy, 2 = xy

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows per tile: as large as the GEMM likes, small enough that a small input still makes 4 units of
// parallel work (units pair tile t with its mirror, so T tiles make about T / 2 units). From the size
// alone, not the thread count, so that the statistic's sums are the same for any thread count.
int64_t tile_rows(int64_t pooled) {
  const int64_t r = ceil_div(ceil_div(pooled, 8), 16) * 16;
  return std::clamp<int64_t>(r, kMinTileRows, kMaxTileRows);
}

// One tile pair's epilogue: what it reads and where its results go.
template <typename T>
struct TileEpilogue {
  T* tile = nullptr;      // (rows, cols) dot products in; with the gradient, the pair weights C out
  int64_t rows = 0, cols = 0;
  int64_t row0 = 0, col0 = 0;  // pooled indices of the tile's first row and column
  int64_t n = 0;               // pooled rows below n are x's
  bool diagonal = false;       // the (I, I) tile: the whole block, the diagonal masked
  const T* sq = nullptr;       // (N + W) squared norms of the centred pooled rows, zero padded
  const Bandwidths<T>* bw = nullptr;
  const std::array<std::array<T, kMaxBandwidths>, kBlocks>* coef = nullptr;  // gradient only
  double* sums = nullptr;      // (kBlocks, K) += sum of exp(-gamma_k D)
  double* sig_sums = nullptr;  // (kBlocks, K) += sum of exp(-gamma_k D) D, gradient only
  T* weight = nullptr;         // (N) += row sums of C, and column sums off the diagonal; gradient only
};

template <typename T, bool kGrad>
__attribute__((always_inline)) inline void tile_epilogue_impl(const TileEpilogue<T>& t) {
  using S = Simd<T>;
  using V = typename S::V;
  using IV = typename S::IV;
  using I = typename S::I;
  using DV = typename S::DV;
  constexpr int W = S::W;
  const Bandwidths<T>& bw = *t.bw;
  const int K = bw.K;
  DV sums[kBlocks][kMaxBandwidths] = {}, sig_sums[kBlocks][kMaxBandwidths] = {};
  // columns [0, split) are x's, [split, cols) y's
  const int64_t split = std::clamp<int64_t>(t.n - t.col0, 0, t.cols);
  for (int64_t i = 0; i < t.rows; ++i) {
    const int64_t gi = t.row0 + i;
    const bool row_x = gi < t.n;
    T* p = t.tile + i * t.cols;
    const V sqi = S::splat(t.sq[gi]);
    V row_weight = S::splat(T(0));
    for (int seg = 0; seg < 2; ++seg) {
      const int64_t j_begin = seg == 0 ? 0 : split, j_end = seg == 0 ? split : t.cols;
      if (j_begin >= j_end) continue;
      const int block = row_x ? (seg == 0 ? 0 : 2) : (seg == 0 ? 2 : 1);
      V part[kMaxBandwidths], sig_part[kMaxBandwidths];
      for (int k = 0; k < K; ++k) part[k] = sig_part[k] = S::splat(T(0));
      for (int64_t j = j_begin; j < j_end; j += W) {
        const int64_t lanes = std::min<int64_t>(W, j_end - j);
        V dot = S::splat(T(0));
        std::memcpy(&dot, p + j, lanes * sizeof(T));  // a partial load at the segment's end
        const V dist = (sqi + S::load(t.sq + t.col0 + j)) - T(2) * dot;
        const V D = dist < T(0) ? S::splat(T(0)) : dist;
        const IV lane = S::iota();
        IV valid = lane < static_cast<I>(lanes);
        if (t.diagonal) valid &= (lane + static_cast<I>(t.col0 + j)) != static_cast<I>(gi);
        V E = exp_nonpositive<T>(bw.neg_gamma[0] * D);
        E = valid ? E : S::splat(T(0));
        V C = S::splat(T(0));
        for (int k = 0; k < K; ++k) {
          if (k > 0) {
            if (bw.ladder) {
              E = E * E;
            } else {
              E = exp_nonpositive<T>(bw.neg_gamma[k] * D);
              E = valid ? E : S::splat(T(0));
            }
          }
          part[k] += E;
          if (kGrad) {
            C += (*t.coef)[block][k] * E;
            sig_part[k] += E * D;
          }
        }
        if (kGrad) {
          std::memcpy(p + j, &C, lanes * sizeof(T));
          row_weight += C;
          if (!t.diagonal) {
            T* w = t.weight + t.col0 + j;
            V cw = S::splat(T(0));
            std::memcpy(&cw, w, lanes * sizeof(T));
            cw += C;
            std::memcpy(w, &cw, lanes * sizeof(T));
          }
        }
      }
      for (int k = 0; k < K; ++k) {
        sums[block][k] += S::widen(part[k]);
        if (kGrad) sig_sums[block][k] += S::widen(sig_part[k]);
      }
    }
    if (kGrad) {
      T w = T(0);
      for (int l = 0; l < W; ++l) w += row_weight[l];
      t.weight[gi] += w;
    }
  }
  const double share = t.diagonal ? 0.5 : 1.0;  // a diagonal tile sees each pair in both orders
  for (int b = 0; b < kBlocks; ++b) {
    for (int k = 0; k < K; ++k) {  // lanes reduced in a fixed order
      double s = 0.0, e = 0.0;
      for (int l = 0; l < W; ++l) s += sums[b][k][l], e += sig_sums[b][k][l];
      t.sums[b * K + k] += share * s;
      if (kGrad) t.sig_sums[b * K + k] += share * e;
    }
  }
}

// Non-template entry points, so that target_clones can version them for the running CPU.
PYTL_CPU_CLONES void tile_epilogue(const TileEpilogue<float>& t, bool grad) {
  if (grad)
    tile_epilogue_impl<float, true>(t);
  else
    tile_epilogue_impl<float, false>(t);
}
PYTL_CPU_CLONES void tile_epilogue(const TileEpilogue<double>& t, bool grad) {
  if (grad)
    tile_epilogue_impl<double, true>(t);
  else
    tile_epilogue_impl<double, false>(t);
}

template <typename T>
MMDResult gemm_tiles(const at::Tensor& x_in, const at::Tensor& y_in, const std::vector<double>& sig, bool unbiased,
                     const std::vector<double>& grad_weights) {
  constexpr int W = Simd<T>::W;
  const bool with_grad = !grad_weights.empty();
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  const int64_t n = x_in.size(0), m = y_in.size(0), d = x_in.size(1), N = n + m;
  const BlockScales w = block_scales(n, m, unbiased);
  std::vector<int> order;
  const Bandwidths<T> bw = compute_order<T>(sig, order);
  const int K = bw.K;

  // The pooled sample centred on x's mean (distances do not change, cancellation shrinks).
  const at::Tensor center = x_in.to(at::kDouble).mean(0, /*keepdim=*/true).to(dtype);
  const at::Tensor Z = at::cat({x_in.to(dtype), y_in.to(dtype)}) - center;  // (N, d) contiguous
  const at::Tensor sq = at::zeros({N + W}, Z.options());
  sq.narrow(0, 0, N).copy_(at::sum(Z * Z, {1}, false, at::kDouble));

  // pair-weight coefficients per block (see mmd_cpu.cpp): C_ij = sum_k coef_{b,k} exp(-gamma_k D_ij)
  const std::array<std::array<T, kMaxBandwidths>, kBlocks> coef = {
      pair_weight_coefs<T>(4.0 * w.a, grad_weights, order, bw), pair_weight_coefs<T>(4.0 * w.b, grad_weights, order, bw),
      pair_weight_coefs<T>(2.0 * w.c, grad_weights, order, bw)};

  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t R = tile_rows(N), tiles = ceil_div(N, R);
  // Units: tile t with its mirror (tiles - 1 - t), which balances the triangle of tile pairs.
  const int64_t units = (tiles + 1) / 2;
  const int64_t accumulator_elems = N * d + N;  // the gradient's G (N, d) and weights w (N)
  std::vector<int64_t> unit_work(units);
  for (int64_t u = 0; u < units; ++u) {
    const int64_t partner = tiles - 1 - u;
    unit_work[u] = (tiles - u) + (partner != u ? tiles - partner : 0);  // tile pairs (t, J >= t)
  }
  // Threads: as many as the work pays for (thread_budget.h): R x R pairs of d + K features per tile pair.
  double work = 0.0;
  for (int64_t w : unit_work) work += static_cast<double>(w) * static_cast<double>(R * R) * static_cast<double>(d + K);
  int64_t slots = threads_for_work(work, std::min(threads, units));
  if (with_grad)  // within 512 MB of accumulators, as the sweep route
    slots = std::min<int64_t>(slots, (int64_t{512} << 20) / (accumulator_elems * static_cast<int64_t>(sizeof(T))));
  slots = std::max<int64_t>(1, slots);
  const std::vector<int64_t> first_unit = slot_boundaries(unit_work, slots);

  std::vector<double> sums(tiles * kBlocks * K, 0.0), sig_sums(tiles * kBlocks * K, 0.0);  // per row tile
  std::vector<at::Tensor> acc(slots);
  if (with_grad)
    for (int64_t s = 0; s < slots; ++s) acc[s] = at::zeros({accumulator_elems}, Z.options());

  at::parallel_for(0, slots, 1, [&](int64_t s_begin, int64_t s_end) {
    std::vector<T> buffer(R * R);
    for (int64_t s = s_begin; s < s_end; ++s) {
      at::Tensor G = with_grad ? acc[s].narrow(0, 0, N * d).view({N, d}) : at::Tensor();
      T* weight = with_grad ? acc[s].data_ptr<T>() + N * d : nullptr;
      for (int64_t u = first_unit[s]; u < first_unit[s + 1]; ++u) {
        for (int64_t ti : {u, tiles - 1 - u}) {
          const int64_t r0 = ti * R, rows = std::min(R, N - r0);
          const at::Tensor Zi = Z.narrow(0, r0, rows);
          for (int64_t tj = ti; tj < tiles; ++tj) {
            const int64_t c0 = tj * R, cols = std::min(R, N - c0);
            const at::Tensor Zj = Z.narrow(0, c0, cols);
            at::Tensor P = at::from_blob(buffer.data(), {rows, cols}, Z.options());
            at::mm_out(P, Zi, Zj.t());
            TileEpilogue<T> e;
            e.tile = buffer.data();
            e.rows = rows, e.cols = cols, e.row0 = r0, e.col0 = c0, e.n = n;
            e.diagonal = ti == tj;
            e.sq = sq.data_ptr<T>();
            e.bw = &bw;
            e.coef = &coef;
            e.sums = sums.data() + ti * kBlocks * K;
            e.sig_sums = sig_sums.data() + ti * kBlocks * K;
            e.weight = weight;
            tile_epilogue(e, with_grad);
            if (with_grad) {  // P now holds the pair weights C
              G.narrow(0, r0, rows).addmm_(P, Zj);
              if (tj != ti) G.narrow(0, c0, cols).addmm_(P.t(), Zi);
            }
          }
          if (ti == tiles - 1 - u) break;  // the middle tile has no mirror
        }
      }
    }
  });

  MMDResult res;
  if (with_grad) {  // grad = w z - G, summed over the slots in slot order
    at::Tensor total = acc[0];
    for (int64_t s = 1; s < slots; ++s) total = total + acc[s];
    const at::Tensor grad = total.narrow(0, N * d, N).unsqueeze(1) * Z - total.narrow(0, 0, N * d).view({N, d});
    res.grad_x = grad.narrow(0, 0, n);
    res.grad_y = grad.narrow(0, n, m);
  }
  assemble_terms(res, sums, sig_sums, tiles, order, sig, w, n, m, unbiased, grad_weights);
  return res;
}

}  // namespace

MMDResult mmd_gemm_tiles_cpu(const at::Tensor& x, const at::Tensor& y, const std::vector<double>& sig, bool unbiased,
                             const std::vector<double>& grad_weights) {
  if (x.scalar_type() == at::kDouble) return gemm_tiles<double>(x, y, sig, unbiased, grad_weights);
  return gemm_tiles<float>(x, y, sig, unbiased, grad_weights);  // float, and half inputs in float
}

}  // namespace pytl
