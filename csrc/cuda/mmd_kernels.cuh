// CUDA kernels for pytl.mmd2_terms, pytl.mmd2_terms_and_grad and pytl.mmd2_terms_backward (schemas in
// ../ops.cpp, launched by the host code in mmd_cuda.cu). Flash-attention-style tiling; no pairwise
// (n x m, n x n, n x n x K) buffer is ever built.
//
//   data       = both samples centred on x's mean (computed in double), in the accumulation type (float for
//                half/bf16), with their squared row norms; centring keeps |a|^2 + |b|^2 - 2ab free of
//                cancellation for data far from the origin
//   pair tile  = 64 rows (side A) x 64 columns (side B), 256 threads as a 16 x 16 grid; thread (tx, ty) owns
//                rows 4ty..4ty+3 and columns 4tx..4tx+3: 16 dot products in registers, fed by one 16-byte
//                shared-memory read per side and feature (features staged 32 at a time as [feature][row])
//   distance   = max(|a|^2 + |b|^2 - 2 a.b, 0); the norms use the same sequence of FMAs as the dot products, so
//                a point against an identical point gives exactly 0
//   exps       = exp2(-gamma_k log2(e) D), bandwidths in ascending-gamma order; for a ratio-2 ladder
//                (gamma_{k+1} = 2 gamma_k, the default) one exp per pair, the other K-1 values by squaring
//
// Two sweeps:
//   forward (statistic only): the x-x and y-y upper triangles (mirrored tiles count twice) and the x-y block.
//   gradient sweep (statistic + gradients, used whenever autograd needs gradients): CTA = (row tile of x or y,
//     column split); it walks its share of the column tiles (same side, then the other side), and per tile
//       phase 1: distances, then in registers W = coef * sum_k g_k (-gamma_k) e_k and the sums of e_k and e_k D
//       phase 2: out[row][t] -= sum_col W[row][col] b[col][t]   (a 64 x 64 x 32 GEMM through shared memory)
//     and at the end out[row][t] += a[row][t] * sum_col W[row][col], since sum_j W_pj (z_p - z_j) =
//     z_p sum_j W_pj - sum_j W_pj z_j (one FMA per pair and feature instead of two).
//
// Determinism: no floating-point atomics. Each CTA reduces its sums in a fixed order (warp shuffles, then the
// 8 warps in order) into its own row of a small double buffer; at::sum over fixed slices gives the totals.
// The gradient sweep gives each CTA a tile of output rows, so it writes its gradient rows without atomics;
// column splits write separate workspace slices summed by at::sum.
#pragma once
#include <c10/macros/Macros.h>

#include <cstdint>
#include <type_traits>

#include "../common/bandwidth_constants.h"
#include "mmd_tiles.cuh"
#include "tiles.cuh"

namespace pytl {

// Squared row norms by sequential FMAs over the features: the same order as accumulate_dots.
template <typename acc_t>
__global__ void row_sq_norms_kernel(const acc_t* __restrict__ z, int64_t rows, int64_t d, acc_t* __restrict__ out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const acc_t* p = z + r * d;
  acc_t s = 0;
  for (int64_t t = 0; t < d; ++t) s = fma_acc(p[t], p[t], s);
  out[r] = s;
}

// The bandwidth constants from the sigmas (in double), by one thread (K <= 16). The value check of sigmas
// lives here, on the device, so that no call waits for the GPU: a bad sigma stops the stream with a
// device-side assertion (checks.h says what the caller sees), before any kernel uses the constants.
template <typename acc_t>
__global__ void bandwidth_constants_kernel(const double* __restrict__ sigmas, int K,
                                           acc_t* __restrict__ neg_gamma_log2e, int64_t* __restrict__ order,
                                           int64_t* __restrict__ inverse, int* __restrict__ ladder) {
  const bool valid = bandwidth_constants(sigmas, K, neg_gamma_log2e, order, inverse, ladder);
  CUDA_KERNEL_ASSERT(valid && "pytl.mmd2: every bandwidth in sigmas must be positive and finite");
}

// Two CTAs per SM in float (<= 128 registers); double needs the whole register file of one.
template <typename acc_t>
constexpr int kMinBlocks = sizeof(acc_t) == 4 ? 2 : 1;

// ---------------------------------------------------------------------------------------------------------
// Forward. Three sections of tiles: x-x (upper triangle), y-y (upper triangle), x-y (full n x m grid).
// Off-diagonal triangle tiles count twice; diagonal tiles hold every ordered pair i != j once.
// partials[cta][k] = this CTA's sum of e_k over its pairs (k in compute order).
struct ForwardPlan {
  int64_t tiles[3];      // tiles per section
  int64_t cta_start[4];  // first CTA of each section; cta_start[3] = grid size
  int64_t tiles_per_cta;
};

template <typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks<acc_t>)
    mmd_forward_kernel(const acc_t* __restrict__ x, const acc_t* __restrict__ y, const acc_t* __restrict__ nx,
                       const acc_t* __restrict__ ny, int64_t n, int64_t m, int64_t d,
                       const acc_t* __restrict__ neg_gamma_log2e, int K, const int* __restrict__ ladder_flag,
                       ForwardPlan plan, double* __restrict__ partials) {
  __shared__ __align__(16) acc_t As[kChunkElems];
  __shared__ __align__(16) acc_t Bs[kChunkElems];
  __shared__ acc_t s_ng[kMaxK];
  __shared__ int s_ladder;
  __shared__ double red[kWarps][kMaxK];

  const int64_t cta = blockIdx.x;
  const int section = cta < plan.cta_start[1] ? 0 : (cta < plan.cta_start[2] ? 1 : 2);
  const bool triangle = section < 2;
  const acc_t* A = section == 1 ? y : x;
  const acc_t* B = section == 0 ? x : y;
  const acc_t* NA = section == 1 ? ny : nx;
  const acc_t* NB = section == 0 ? nx : ny;
  const int64_t nA = section == 1 ? m : n;
  const int64_t nB = section == 0 ? n : m;
  const int64_t tile_cols = ceil_div(nB, kTile);

  // (scalar selects, not plan.x[section]: a runtime index into a kernel parameter costs a local-memory copy)
  const int64_t first_cta = section == 0 ? 0 : (section == 1 ? plan.cta_start[1] : plan.cta_start[2]);
  const int64_t section_tiles = section == 0 ? plan.tiles[0] : (section == 1 ? plan.tiles[1] : plan.tiles[2]);
  const int64_t t_begin = (cta - first_cta) * plan.tiles_per_cta;
  const int64_t t_end =
      t_begin + plan.tiles_per_cta < section_tiles ? t_begin + plan.tiles_per_cta : section_tiles;

  // The ladder flag comes from the device (bandwidth_constants_kernel), not the host: read once per CTA into
  // shared memory and from there per tile (a register for it across the whole run costs a spill in float).
  if (threadIdx.x == 0) s_ladder = *ladder_flag;
  if (threadIdx.x < K) s_ng[threadIdx.x] = neg_gamma_log2e[threadIdx.x];

  RunningSum<acc_t> acc[kMaxK];
  const int64_t nchunks = ceil_div(d, kChunk);

  int64_t ti, tj;
  if (triangle) {
    triangle_tile(t_begin, tile_cols, ti, tj);
  } else {
    ti = t_begin / tile_cols;
    tj = t_begin % tile_cols;
  }
  int64_t loaded_ti = -1;  // with a single chunk, the A tile stays in shared memory while ti does not change

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t row0 = ti * kTile, col0 = tj * kTile;

    // (on the first tile, distance_tile's first barrier also publishes s_ng and s_ladder)
    acc_t D[kPer][kPer];
    distance_tile(As, Bs, A, NA, row0, nA, B, NB, col0, nB, d, nchunks, loaded_ti == ti, D);
    loaded_ti = ti;

    const bool diag_tile = triangle && ti == tj;
    // Only diagonal and edge tiles need the pair mask; interior tiles (almost all) skip it.
    const bool masked = diag_tile || row0 + kTile > nA || col0 + kTile > nB;
    const unsigned mask = masked ? pair_mask(row0, nA, col0, nB, diag_tile) : ~0u;
    const acc_t mult = (triangle && !diag_tile) ? acc_t(2) : acc_t(1);  // the mirrored tile, exactly x2
    auto sum_tile = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      acc_t e[kPer][kPer];
      const bool ladder = s_ladder != 0;
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) {
        if (k < K) {
          const acc_t ng = s_ng[k];
          const bool square = ladder && k > 0;
          acc_t tile_sum = 0;
#pragma unroll
          for (int i = 0; i < kPer; ++i)
#pragma unroll
            for (int j = 0; j < kPer; ++j) {
              e[i][j] = square ? e[i][j] * e[i][j] : exp2_acc(ng * D[i][j]);
              if constexpr (kMasked) {
                tile_sum += ((mask >> (i * kPer + j)) & 1u) ? e[i][j] : acc_t(0);
              } else {
                tile_sum += e[i][j];
              }
            }
          acc[k].add(tile_sum * mult);
        }
      }
    };
    if (masked) {
      sum_tile(std::true_type{});
    } else {
      sum_tile(std::false_type{});
    }

    // next tile of this CTA's contiguous run
    if (++tj == tile_cols) {
      ++ti;
      tj = triangle ? ti : 0;
    }
  }

  block_reduce_store([&](int k) { return acc[k].value(); }, K, red, partials + cta * K);
}

// ---------------------------------------------------------------------------------------------------------
// Gradient sweep (see the top of the file). Sums per (row tile, split, slot, k), slot 0 = the self block,
// 1 = the cross block (counted from the x rows only, so each x-y pair counts once):
//   e_part: sum of e_k over the pairs;  d_part: sum of e_k * D.
// grad[p] = sum_j W_pj (z_p - z_j) with coef 4a / 4b (self) and 2c (cross), as in the maths.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks<acc_t>)
    mmd_sweep_kernel(const acc_t* __restrict__ x, const acc_t* __restrict__ y, const acc_t* __restrict__ nx,
                     const acc_t* __restrict__ ny, int64_t n, int64_t m, int64_t d,
                     const acc_t* __restrict__ neg_gamma_log2e, const acc_t* __restrict__ phi_coef, int K,
                     const int* __restrict__ ladder_flag, acc_t coef_xx, acc_t coef_yy, acc_t coef_xy,
                     int64_t splits, acc_t* __restrict__ gx_ws, acc_t* __restrict__ gy_ws,
                     double* __restrict__ e_part, double* __restrict__ d_part) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* As = reinterpret_cast<acc_t*>(smem_raw);  // [feature][row] of the CTA's own rows
  acc_t* Bs = As + kChunkElems;                    // [feature][col] of the column tile
  acc_t* Ws = Bs + kChunkElems;                    // [col][row] pair weights of the current column tile
  acc_t* Bt = Ws + kTile * kLd;                    // [col][feature] of the column tile (phase 2)
  // Per-thread sums over the run, [k][thread] (in registers they would spill): e_k in double (they become
  // the statistic), e_k * D in the accumulation type (sigma gradients). Each thread touches only its own.
  double* s_esum = reinterpret_cast<double*>(Bt + kTile * kLdT);
  acc_t* s_dsum = reinterpret_cast<acc_t*>(s_esum + K * kThreads);
  __shared__ acc_t s_ng[kMaxK];
  __shared__ acc_t s_cg[kMaxK];
  __shared__ acc_t s_roww[kTile];  // sum over this CTA's columns of W[row][col]
  __shared__ double red[kWarps][kMaxK];

  const int64_t Tx = ceil_div(n, kTile);
  const int64_t row_tile = blockIdx.x / splits, split = blockIdx.x % splits;
  const bool rows_x = row_tile < Tx;
  const int64_t row0 = (rows_x ? row_tile : row_tile - Tx) * kTile;
  const acc_t* self = rows_x ? x : y;
  const acc_t* other = rows_x ? y : x;
  const acc_t* norms_self = rows_x ? nx : ny;
  const acc_t* norms_other = rows_x ? ny : nx;
  const int64_t nself = rows_x ? n : m, nother = rows_x ? m : n;
  acc_t* grad = rows_x ? gx_ws + split * n * d : gy_ws + split * m * d;
  const acc_t coef_self = rows_x ? coef_xx : coef_yy;

  const int64_t Ts = ceil_div(nself, kTile);
  const int64_t Ct = Ts + ceil_div(nother, kTile);  // column tiles: self ones, then cross ones
  const int64_t ct_begin = split * Ct / splits, ct_end = (split + 1) * Ct / splits;
  const int64_t part_row = (row_tile * splits + split) * 2 * K;

  // the ladder flag comes from the device (bandwidth_constants_kernel); here a register for it costs no spill
  const bool ladder = *ladder_flag != 0;
  if (threadIdx.x < K) {
    s_ng[threadIdx.x] = neg_gamma_log2e[threadIdx.x];
    s_cg[threadIdx.x] = phi_coef[threadIdx.x];
  }
  if (threadIdx.x < kTile) s_roww[threadIdx.x] = 0;

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  // phase-2 layout: thread rows 4rg..4rg+3, features 2fp, 2fp+1 of the chunk; a warp covers 8 rows x 32 features
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int fp = lane & 15, rg = warp * 2 + (lane >> 4);

  for (int k = 0; k < K; ++k) s_esum[k * kThreads + threadIdx.x] = 0, s_dsum[k * kThreads + threadIdx.x] = 0;
  const int64_t nchunks = ceil_div(d, kChunk);

  for (int64_t ct = ct_begin; ct < ct_end; ++ct) {
    const bool is_self = ct < Ts;
    const acc_t* cols = is_self ? self : other;
    const acc_t* norms_cols = is_self ? norms_self : norms_other;
    const int64_t ncols = is_self ? nself : nother;
    const int64_t col0 = (is_self ? ct : ct - Ts) * kTile;

    // ---- phase 1: distances (the first barrier also publishes s_ng, s_cg, s_roww); with a single chunk the
    // CTA's own rows stay in As for its whole run
    acc_t D[kPer][kPer];
    distance_tile(As, Bs, self, norms_self, row0, nself, cols, norms_cols, col0, ncols, d, nchunks, ct != ct_begin,
                  D);

    // ---- weights and sums, in registers
    // Only diagonal and edge tiles need the pair mask; interior tiles (almost all) skip it.
    const bool diag_tile = is_self && col0 == row0;
    const bool masked = diag_tile || row0 + kTile > nself || col0 + kTile > ncols;
    const unsigned mask = masked ? pair_mask(row0, nself, col0, ncols, diag_tile) : ~0u;
    const bool want_sums = is_self || rows_x;  // x-y pairs are counted from the x side only
    acc_t W[kPer][kPer];
    auto weigh_tile = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      acc_t e[kPer][kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) W[i][j] = 0;
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) {
        if (k < K) {
          const acc_t ng = s_ng[k], cg = s_cg[k];
          const bool square = ladder && k > 0;
          acc_t e_tile = 0, d_tile = 0;
#pragma unroll
          for (int i = 0; i < kPer; ++i)
#pragma unroll
            for (int j = 0; j < kPer; ++j) {
              e[i][j] = square ? e[i][j] * e[i][j] : exp2_acc(ng * D[i][j]);
              W[i][j] = fma_acc(cg, e[i][j], W[i][j]);
              if constexpr (kMasked) {
                const bool ok = (mask >> (i * kPer + j)) & 1u;
                e_tile += ok ? e[i][j] : acc_t(0);
                d_tile += ok ? e[i][j] * D[i][j] : acc_t(0);
              } else {
                e_tile += e[i][j];
                d_tile = fma_acc(e[i][j], D[i][j], d_tile);
              }
            }
          if (want_sums) {
            s_esum[k * kThreads + threadIdx.x] += static_cast<double>(e_tile);
            s_dsum[k * kThreads + threadIdx.x] += d_tile;
          }
        }
      }
    };
    if (masked) {
      weigh_tile(std::true_type{});
    } else {
      weigh_tile(std::false_type{});
    }
    // masked, scaled weights -> Ws[col][row]; this thread's row sums -> reduced over the 16 threads of its rows
    const acc_t coef = is_self ? coef_self : coef_xy;
    acc_t rsum[kPer] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      acc_t v[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        v[i] = ((mask >> (i * kPer + j)) & 1u) ? coef * W[i][j] : acc_t(0);
        rsum[i] += v[i];
      }
      store4(Ws + (tx * kPer + j) * kLd + ty * kPer, v);
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) rsum[i] += __shfl_xor_sync(0xffffffffu, rsum[i], off);  // within 16 lanes
    }
    if (tx == 0) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) s_roww[ty * kPer + i] += rsum[i];  // this thread alone owns these rows
    }

    // The self part of this CTA's run ends here, or the run itself: flush the sums to their slot.
    // (Uniform over the CTA, so every thread reaches the barriers inside.)
    if (ct == Ts - 1 || ct == ct_end - 1) {
      const int64_t slot = part_row + (is_self ? 0 : K);
      block_reduce_store([&](int k) { return s_esum[k * kThreads + threadIdx.x]; }, K, red, e_part + slot);
      block_reduce_store([&](int k) { return static_cast<double>(s_dsum[k * kThreads + threadIdx.x]); }, K, red,
                         d_part + slot);
      for (int k = 0; k < K; ++k) s_esum[k * kThreads + threadIdx.x] = 0, s_dsum[k * kThreads + threadIdx.x] = 0;
    }

    // ---- phase 2: out[row][t] -= sum_col W[row][col] b[col][t], chunk by chunk over d
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t d0 = c * kChunk;
      __syncthreads();  // Ws is complete; previous readers of Bt are done
      load_rows(Bt, cols, col0, ncols, d, d0);
      __syncthreads();
      acc_t out[kPer][2];
#pragma unroll
      for (int i = 0; i < kPer; ++i) out[i][0] = 0, out[i][1] = 0;
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) {
        acc_t w[kPer];
        load4(Ws + j * kLd + rg * kPer, w);  // two addresses per warp: a broadcast
        acc_t b0, b1;
        load2(Bt + j * kLdT + 2 * fp, b0, b1);  // 16 distinct pairs per warp: 128 or 256 consecutive bytes
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
          out[i][0] = fma_acc(w[i], b0, out[i][0]);
          out[i][1] = fma_acc(w[i], b1, out[i][1]);
        }
      }
      // this CTA owns these rows of its workspace slice: plain read-modify-write, no atomics
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          const int64_t row = row0 + rg * kPer + i, col = d0 + 2 * fp + f;
          if (row < nself && col < d) {
            acc_t* p = grad + row * d + col;
            *p = (ct == ct_begin ? acc_t(0) : *p) - out[i][f];
          }
        }
    }
  }

  // ---- the z_p * sum_j W_pj part, once per run
  __syncthreads();  // s_roww complete, phase-2 writes visible to the whole CTA
  for (int64_t idx = threadIdx.x; idx < kTile * d; idx += kThreads) {
    const int64_t r = idx / d, row = row0 + r;
    if (row < nself) grad[row * d + idx % d] += self[row * d + idx % d] * s_roww[r];
  }
}

}  // namespace pytl
