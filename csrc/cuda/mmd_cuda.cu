// CUDA kernels for pytl.mmd2_terms and pytl.mmd2_terms_backward (schemas in ../ops.cpp).
//
// Flash-attention-style tiling; no pairwise (n x m, n x n, n x n x K) buffer is ever built.
//
//   pair tile  = 64 rows (side A) x 64 columns (side B), 256 threads as a 16 x 16 grid;
//                thread (tx, ty) owns rows ty + 16*i and columns tx + 16*j (i, j < 4): 16 distances in registers
//   d chunks   = 32 features at a time, staged in shared memory as [feature][row] (half/bf16 -> float on load)
//   distance   = sum_t (a_t - b_t)^2, by direct differences: exact zero on the diagonal and no cancellation
//                for data far from the origin
//   exps       = exp2(-gamma_k * log2(e) * D), the constant folded on the device before the launch
//
// Determinism: no floating-point atomics. Every CTA reduces its own sums in a fixed order (warp shuffles, then
// the 8 warps in order) and writes them to its own row of a small partial buffer (double); at::sum over fixed
// slices of that buffer gives the totals. The backward gives each CTA a tile of output rows, so it writes its
// gradient rows without atomics; optional column splits write separate workspace slices summed by at::sum.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../mmd_checks.h"

namespace pytl {
namespace {

constexpr int kThreads = 256;                         // 16 x 16 threads
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 64;                             // rows of A and columns of B per pair tile
constexpr int kPerThread = kTile / 16;                // 4 x 4 register tile of distances per thread
constexpr int kChunk = 32;                            // features per shared-memory chunk
constexpr int kLd = kTile + 1;                        // padded leading dimension: conflict-free transposed stores
constexpr int kChunkElems = kChunk * kLd;             // one staged chunk, [feature][row]
constexpr int kMaxK = static_cast<int>(kMaxBandwidths);
constexpr double kLog2e = 1.4426950408889634073599246810019;

// Forward: at most this many CTAs; each CTA takes a contiguous run of tiles (shares its A tile, L2 friendly).
constexpr int64_t kForwardMaxCtas = 4096;
// Backward: split the column tiles so that about this many CTAs run, within a workspace budget.
constexpr int64_t kBackwardTargetCtas = 1024;
constexpr int64_t kBackwardMaxSplits = 16;
constexpr int64_t kBackwardWorkspaceBytes = int64_t{256} << 20;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float exp2_acc(float v) { return exp2f(v); }
__device__ __forceinline__ double exp2_acc(double v) { return exp2(v); }

// Running per-thread sum. In float it is Kahan-compensated: a CTA may add up millions of tile sums, and the
// extra adds are free next to the exps. In double a plain sum is accurate enough.
template <typename acc_t>
struct RunningSum {
  static constexpr bool kCompensated = std::is_same<acc_t, float>::value;
  acc_t s = 0, c = 0;
  __device__ __forceinline__ void add(acc_t v) {
    if constexpr (kCompensated) {
      const acc_t yv = v - c;
      const acc_t t = s + yv;
      c = (t - s) - yv;
      s = t;
    } else {
      s += v;
    }
  }
  __device__ __forceinline__ double value() const {
    return kCompensated ? static_cast<double>(s) - static_cast<double>(c) : static_cast<double>(s);
  }
  __device__ __forceinline__ void reset() { s = 0; c = 0; }
};

// Sums acc[k] over the CTA in a fixed order and writes out[k] (k < K). Every thread must call it.
template <typename acc_t>
__device__ __forceinline__ void block_reduce_store(const RunningSum<acc_t> (&acc)[kMaxK], int K,
                                                   double (&red)[kWarps][kMaxK], double* __restrict__ out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    if (k < K) {
      double v = acc[k].value();
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
      if (lane == 0) red[warp][k] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x < K) {
    double t = 0;
    for (int w = 0; w < kWarps; ++w) t += red[w][threadIdx.x];
    out[threadIdx.x] = t;
  }
  __syncthreads();  // red may be reused right away
}

// Stages rows [row0, row0 + 64) x features [d0, d0 + 32) of src (row-major, nrows x d) as sm[feature][row],
// zero outside the matrix. A warp reads 32 consecutive features of one row (coalesced).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_chunk(acc_t* __restrict__ sm, const scalar_t* __restrict__ src, int64_t row0,
                                           int64_t nrows, int64_t d, int64_t d0) {
#pragma unroll
  for (int s = 0; s < kChunk * kTile / kThreads; ++s) {
    const int l = threadIdx.x + s * kThreads;
    const int t = l % kChunk, r = l / kChunk;
    const int64_t row = row0 + r, col = d0 + t;
    acc_t v = 0;
    if (row < nrows && col < d) v = static_cast<acc_t>(src[row * d + col]);
    sm[t * kLd + r] = v;
  }
}

// D[i][j] += sum over the first kc staged features of (A[row_i] - B[col_j])^2, rows ty + 16i, cols tx + 16j.
// In a warp the A reads are broadcasts (two rows) and the B reads hit 16 consecutive banks.
template <typename acc_t>
__device__ __forceinline__ void accumulate_distances(const acc_t* __restrict__ As, const acc_t* __restrict__ Bs,
                                                     int kc, acc_t (&D)[kPerThread][kPerThread]) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  auto step = [&](int kk) {
    acc_t a[kPerThread], b[kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) a[i] = As[kk * kLd + ty + 16 * i];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) b[j] = Bs[kk * kLd + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const acc_t diff = a[i] - b[j];
        D[i][j] += diff * diff;
      }
  };
  if (kc == kChunk) {
#pragma unroll
    for (int kk = 0; kk < kChunk; ++kk) step(kk);
  } else {  // last, partial chunk (or d < 32): skip the zero padding
#pragma unroll 4
    for (int kk = 0; kk < kc; ++kk) step(kk);
  }
}

// Bit (i * 4 + j) set when the thread's pair (row ty + 16i, col tx + 16j) is a real pair: both in range and,
// on a diagonal tile of the x-x or y-y block, not the diagonal itself.
__device__ __forceinline__ unsigned pair_mask(int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
                                              bool diag_tile) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  unsigned mask = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int r = ty + 16 * i, c = tx + 16 * j;
      const bool ok = row0 + r < nrows && col0 + c < ncols && !(diag_tile && r == c);
      mask |= static_cast<unsigned>(ok) << (i * kPerThread + j);
    }
  return mask;
}

// Upper triangle (j >= i) of a T x T tile grid, row-major: row i starts at S(i) = i*T - i(i-1)/2.
__device__ inline void triangle_tile(int64_t t, int64_t T, int64_t& i, int64_t& j) {
  const double b = 2.0 * static_cast<double>(T) + 1.0;
  int64_t r = static_cast<int64_t>(floor((b - sqrt(fmax(b * b - 8.0 * static_cast<double>(t), 0.0))) * 0.5));
  r = r < 0 ? 0 : (r > T - 1 ? T - 1 : r);
  auto start = [T](int64_t q) { return q * T - q * (q - 1) / 2; };
  while (r > 0 && start(r) > t) --r;  // fix rounding of the sqrt
  while (r + 1 < T && start(r + 1) <= t) ++r;
  i = r;
  j = r + (t - start(r));
}

// ---------------------------------------------------------------------------------------------------------
// Forward. Three sections of tiles: x-x (upper triangle), y-y (upper triangle), x-y (full n x m grid).
// Off-diagonal triangle tiles count twice; diagonal tiles hold every ordered pair i != j once.
// partials[cta][k] = this CTA's sum of e_k over its pairs.
// Two CTAs per SM in float (<= 128 registers); double needs the whole register file of one.
template <typename acc_t>
constexpr int kMinBlocks = sizeof(acc_t) == 4 ? 2 : 1;

struct ForwardPlan {
  int64_t tiles[3];      // tiles per section
  int64_t cta_start[4];  // first CTA of each section; cta_start[3] = grid size
  int64_t tiles_per_cta;
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks<acc_t>)
    mmd_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t n, int64_t m,
                       int64_t d, const acc_t* __restrict__ neg_gamma_log2e, int K, ForwardPlan plan,
                       double* __restrict__ partials) {
  __shared__ acc_t As[kChunkElems];
  __shared__ acc_t Bs[kChunkElems];
  __shared__ acc_t s_ng[kMaxK];
  __shared__ double red[kWarps][kMaxK];

  const int64_t cta = blockIdx.x;
  const int section = cta < plan.cta_start[1] ? 0 : (cta < plan.cta_start[2] ? 1 : 2);
  const bool triangle = section < 2;
  const scalar_t* A = section == 1 ? y : x;
  const scalar_t* B = section == 0 ? x : y;
  const int64_t nA = section == 1 ? m : n;
  const int64_t nB = section == 0 ? n : m;
  const int64_t tile_cols = ceil_div(nB, kTile);

  // (scalar selects, not plan.x[section]: a runtime index into a kernel parameter costs a local-memory copy)
  const int64_t first_cta = section == 0 ? 0 : (section == 1 ? plan.cta_start[1] : plan.cta_start[2]);
  const int64_t section_tiles = section == 0 ? plan.tiles[0] : (section == 1 ? plan.tiles[1] : plan.tiles[2]);
  const int64_t t_begin = (cta - first_cta) * plan.tiles_per_cta;
  const int64_t t_end =
      t_begin + plan.tiles_per_cta < section_tiles ? t_begin + plan.tiles_per_cta : section_tiles;

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

    acc_t D[kPerThread][kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) D[i][j] = 0;

    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t d0 = c * kChunk;
      __syncthreads();  // previous readers of As/Bs are done (also publishes s_ng on the first pass)
      if (nchunks > 1 || loaded_ti != ti) load_chunk(As, A, row0, nA, d, d0);
      load_chunk(Bs, B, col0, nB, d, d0);
      __syncthreads();
      accumulate_distances(As, Bs, static_cast<int>((d - d0 < kChunk ? d - d0 : kChunk)), D);
    }
    loaded_ti = ti;

    const bool diag_tile = triangle && ti == tj;
    const unsigned mask = pair_mask(row0, nA, col0, nB, diag_tile);
    const acc_t mult = (triangle && !diag_tile) ? acc_t(2) : acc_t(1);  // the mirrored tile, exactly x2
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k < K) {
        const acc_t ng = s_ng[k];
        acc_t tile_sum = 0;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) {
            const acc_t e = exp2_acc(ng * D[i][j]);
            tile_sum += ((mask >> (i * kPerThread + j)) & 1u) ? e : acc_t(0);
          }
        acc[k].add(tile_sum * mult);
      }
    }

    // next tile of this CTA's contiguous run
    if (++tj == tile_cols) {
      ++ti;
      tj = triangle ? ti : 0;
    }
  }

  block_reduce_store(acc, K, red, partials + cta * K);
}

// ---------------------------------------------------------------------------------------------------------
// Backward. CTA = (row tile of x or of y, column split). It walks its share of the column tiles: first the
// same side ("self": x-x or y-y), then the other side ("cross": x-y). Per column tile:
//   phase 1: distances as in the forward, then in registers
//            W = coef_blk * phi(D),  phi(D) = sum_k g_k (-gamma_k) e_k(D)   -> shared Ws[row][col]
//            sigma sums sum e_k * D (x-x, y-y, and x-y from the x rows only, so each pair counts once)
//   phase 2: for each d chunk, out[row][t] += sum_col W[row][col] * (a[row][t] - b[col][t])
//            (direct differences again), read-modify-written into the CTA's own workspace rows.
// grad[p] = sum_j W_pj (z_p - z_j) with coef 4a / 4b (self) and 2c (cross), as in the maths.
// partials[(row_tile * splits + split) * 2 + slot][k], slot 0 = self block, 1 = cross block.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks<acc_t>)
    mmd_backward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t n, int64_t m,
                        int64_t d, const acc_t* __restrict__ neg_gamma_log2e, const acc_t* __restrict__ phi_coef,
                        int K, acc_t coef_xx, acc_t coef_yy, acc_t coef_xy, int64_t splits,
                        acc_t* __restrict__ gx_ws, acc_t* __restrict__ gy_ws, double* __restrict__ partials) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* As = reinterpret_cast<acc_t*>(smem_raw);  // [feature][row] of the CTA's own rows
  acc_t* Bs = As + kChunkElems;                    // [feature][col] of the column tile
  acc_t* Ws = Bs + kChunkElems;                    // [row][col] pair weights of the current column tile
  __shared__ acc_t s_ng[kMaxK];
  __shared__ acc_t s_cg[kMaxK];
  __shared__ double red[kWarps][kMaxK];

  const int64_t Tx = ceil_div(n, kTile), Ty = ceil_div(m, kTile);
  const int64_t row_tile = blockIdx.x / splits, split = blockIdx.x % splits;
  const bool rows_x = row_tile < Tx;
  const int64_t row0 = (rows_x ? row_tile : row_tile - Tx) * kTile;
  const scalar_t* self = rows_x ? x : y;
  const scalar_t* other = rows_x ? y : x;
  const int64_t nself = rows_x ? n : m, nother = rows_x ? m : n;
  acc_t* grad = rows_x ? gx_ws + split * n * d : gy_ws + split * m * d;
  const acc_t coef_self = rows_x ? coef_xx : coef_yy;

  const int64_t Ts = ceil_div(nself, kTile);
  const int64_t Ct = Ts + ceil_div(nother, kTile);  // column tiles: self ones, then cross ones
  const int64_t ct_begin = split * Ct / splits, ct_end = (split + 1) * Ct / splits;
  double* part = partials + (row_tile * splits + split) * 2 * K;

  if (threadIdx.x < K) {
    s_ng[threadIdx.x] = neg_gamma_log2e[threadIdx.x];
    s_cg[threadIdx.x] = phi_coef[threadIdx.x];
  }

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  // phase-2 layout: a warp covers 2 rows x 16 features; thread rows rb + 16i, features f0 and f0 + 16
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int f0 = lane & 15, rb = warp * 2 + (lane >> 4);

  RunningSum<acc_t> sig[kMaxK];
  const int64_t nchunks = ceil_div(d, kChunk);

  for (int64_t ct = ct_begin; ct < ct_end; ++ct) {
    const bool is_self = ct < Ts;
    const scalar_t* cols = is_self ? self : other;
    const int64_t ncols = is_self ? nself : nother;
    const int64_t col0 = (is_self ? ct : ct - Ts) * kTile;

    // ---- phase 1: distances
    acc_t D[kPerThread][kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) D[i][j] = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t d0 = c * kChunk;
      __syncthreads();  // previous readers of As/Bs/Ws are done (also publishes s_ng, s_cg)
      if (nchunks > 1 || ct == ct_begin) load_chunk(As, self, row0, nself, d, d0);
      load_chunk(Bs, cols, col0, ncols, d, d0);
      __syncthreads();
      accumulate_distances(As, Bs, static_cast<int>((d - d0 < kChunk ? d - d0 : kChunk)), D);
    }

    // ---- weights and sigma sums, in registers
    const unsigned mask = pair_mask(row0, nself, col0, ncols, is_self && col0 == row0);
    const bool want_sigma = is_self || rows_x;  // x-y pairs are counted from the x side only
    acc_t W[kPerThread][kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) W[i][j] = 0;
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k < K) {
        const acc_t ng = s_ng[k], cg = s_cg[k];
        acc_t tile_sum = 0;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) {
            const acc_t e = exp2_acc(ng * D[i][j]);
            W[i][j] += cg * e;
            tile_sum += ((mask >> (i * kPerThread + j)) & 1u) ? e * D[i][j] : acc_t(0);
          }
        if (want_sigma) sig[k].add(tile_sum);
      }
    }
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const bool ok = (mask >> (i * kPerThread + j)) & 1u;
        Ws[(ty + 16 * i) * kLd + tx + 16 * j] = ok ? (is_self ? coef_self : coef_xy) * W[i][j] : acc_t(0);
      }

    // The self part of this CTA's run ends here, or the run itself: flush the sigma sums to their slot.
    // (Uniform over the CTA, so every thread reaches the barriers inside.)
    if (ct == Ts - 1 || ct == ct_end - 1) {
      block_reduce_store(sig, K, red, part + (is_self ? 0 : K));
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) sig[k].reset();
    }

    // ---- phase 2: out = W (a - b), chunk by chunk over d; the last chunk of phase 1 is still staged,
    // so walk the chunks backwards and start with it.
    for (int64_t c = nchunks - 1; c >= 0; --c) {
      const int64_t d0 = c * kChunk;
      __syncthreads();  // Ws is complete; previous readers of As/Bs are done
      if (c != nchunks - 1) {
        load_chunk(As, self, row0, nself, d, d0);
        load_chunk(Bs, cols, col0, ncols, d, d0);
        __syncthreads();
      }
      acc_t a[kPerThread][2], out[kPerThread][2];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          a[i][f] = As[(f0 + 16 * f) * kLd + rb + 16 * i];
          out[i][f] = 0;
        }
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) {
        acc_t w[kPerThread], b[2];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) w[i] = Ws[(rb + 16 * i) * kLd + j];  // broadcast
#pragma unroll
        for (int f = 0; f < 2; ++f) b[f] = Bs[(f0 + 16 * f) * kLd + j];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int f = 0; f < 2; ++f) out[i][f] += w[i] * (a[i][f] - b[f]);
      }
      // this CTA owns these rows of its workspace slice: plain read-modify-write, no atomics
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          const int64_t row = row0 + rb + 16 * i, col = d0 + f0 + 16 * f;
          if (row < nself && col < d) {
            acc_t* p = grad + row * d + col;
            *p = (ct == ct_begin) ? out[i][f] : *p + out[i][f];
          }
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host side.

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// -gamma_k * log2(e) with gamma_k = 1 / (2 sigma_k^2), computed in double on the device, then rounded once;
// clamped to the accumulation type's range so that a tiny sigma cannot turn -gamma * 0 into NaN.
at::Tensor neg_gamma_log2e(const at::Tensor& sigmas_d, at::ScalarType acc) {
  const double lowest = acc == at::kFloat ? -static_cast<double>(std::numeric_limits<float>::max())
                                          : -std::numeric_limits<double>::max();
  return (sigmas_d.pow(-2) * (-0.5 * kLog2e)).clamp_min(lowest).to(acc).contiguous();
}

at::Tensor mmd2_terms_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& sigmas,
                           bool unbiased) {
  check_mmd_inputs(x_in, y_in, sigmas, unbiased);
  check_sigma_values(sigmas);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1), K = sigmas.size(0);
  const at::ScalarType acc = acc_dtype(x);
  const at::Tensor sig_d = sigmas.detach().to(at::kDouble);
  const at::Tensor ng = neg_gamma_log2e(sig_d, acc);

  ForwardPlan plan;
  const int64_t Tx = ceil_div(n, kTile), Ty = ceil_div(m, kTile);
  plan.tiles[0] = Tx * (Tx + 1) / 2;
  plan.tiles[1] = Ty * (Ty + 1) / 2;
  plan.tiles[2] = Tx * Ty;
  plan.tiles_per_cta = ceil_div(plan.tiles[0] + plan.tiles[1] + plan.tiles[2], kForwardMaxCtas);
  plan.cta_start[0] = 0;
  for (int s = 0; s < 3; ++s) plan.cta_start[s + 1] = plan.cta_start[s] + ceil_div(plan.tiles[s], plan.tiles_per_cta);
  const int64_t grid = plan.cta_start[3];

  at::Tensor partials = at::empty({grid, K}, x.options().dtype(at::kDouble));  // every row is written
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pytl_mmd2_terms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    mmd_forward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n, m, d, ng.data_ptr<acc_t>(), static_cast<int>(K), plan,
        partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // fixed-shape sums over the per-CTA partials: deterministic
  const at::Tensor Sxx = partials.narrow(0, plan.cta_start[0], plan.cta_start[1] - plan.cta_start[0]).sum(0);
  const at::Tensor Syy = partials.narrow(0, plan.cta_start[1], plan.cta_start[2] - plan.cta_start[1]).sum(0);
  const at::Tensor Sxy = partials.narrow(0, plan.cta_start[2], plan.cta_start[3] - plan.cta_start[2]).sum(0);
  const double nd = static_cast<double>(n), md = static_cast<double>(m);
  at::Tensor T;
  if (unbiased) {
    T = Sxx / (nd * (nd - 1)) + Syy / (md * (md - 1)) - Sxy * (2.0 / (nd * md));
  } else {  // the diagonals contribute exactly n and m
    T = (Sxx + nd) / (nd * nd) + (Syy + md) / (md * md) - Sxy * (2.0 / (nd * md));
  }
  return T.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd2_terms_backward_cuda(const at::Tensor& grad_terms,
                                                                        const at::Tensor& x_in,
                                                                        const at::Tensor& y_in,
                                                                        const at::Tensor& sigmas, bool unbiased) {
  check_mmd_backward_inputs(grad_terms, x_in, y_in, sigmas, unbiased);
  check_sigma_values(sigmas);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1), K = sigmas.size(0);
  const at::ScalarType acc = acc_dtype(x);
  const size_t acc_bytes = acc == at::kDouble ? sizeof(double) : sizeof(float);

  const at::Tensor sig_d = sigmas.detach().to(at::kDouble);
  const at::Tensor g_d = grad_terms.detach().to(at::kDouble);
  const at::Tensor ng = neg_gamma_log2e(sig_d, acc);
  const at::Tensor cg = (g_d * sig_d.pow(-2) * -0.5).to(acc).contiguous();  // g_k * (-gamma_k)

  const double nd = static_cast<double>(n), md = static_cast<double>(m);
  const double a = unbiased ? 1.0 / (nd * (nd - 1)) : 1.0 / (nd * nd);
  const double b = unbiased ? 1.0 / (md * (md - 1)) : 1.0 / (md * md);
  const double c = -2.0 / (nd * md);

  // Column splits: enough CTAs to fill the GPU on small inputs, within a workspace budget.
  const int64_t Tx = ceil_div(n, kTile), Ty = ceil_div(m, kTile);
  const int64_t row_tiles = Tx + Ty;  // also the number of column tiles each row tile walks
  int64_t splits = std::min<int64_t>({ceil_div(kBackwardTargetCtas, row_tiles), kBackwardMaxSplits, row_tiles});
  const int64_t slice_bytes = (n + m) * d * static_cast<int64_t>(acc_bytes);
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, kBackwardWorkspaceBytes / slice_bytes));

  at::Tensor gx_ws = at::empty({splits, n, d}, x.options().dtype(acc));  // every in-range element is written
  at::Tensor gy_ws = at::empty({splits, m, d}, x.options().dtype(acc));
  at::Tensor partials = at::zeros({row_tiles, splits, 2, K}, x.options().dtype(at::kDouble));  // some slots stay 0

  const size_t smem = (2 * kChunkElems + kTile * kLd) * acc_bytes;  // 33 KB in float, 66 KB in double
  int smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, x.get_device()));
  TORCH_CHECK(smem + 2048 <= static_cast<size_t>(smem_optin), "pytl.mmd2_terms_backward: the ", x.scalar_type(),
              " CUDA kernel needs ", smem + 2048, " bytes of shared memory per block, this GPU offers ", smem_optin,
              " (use float32, or compute on the CPU)");
  const int64_t grid = row_tiles * splits;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pytl_mmd2_terms_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = mmd_backward_kernel<scalar_t, acc_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n, m, d, ng.data_ptr<acc_t>(), cg.data_ptr<acc_t>(),
        static_cast<int>(K), static_cast<acc_t>(4.0 * a), static_cast<acc_t>(4.0 * b), static_cast<acc_t>(2.0 * c),
        splits, gx_ws.data_ptr<acc_t>(), gy_ws.data_ptr<acc_t>(), partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // fixed-shape sums: deterministic
  const at::Tensor gx = (splits == 1 ? gx_ws.select(0, 0) : gx_ws.sum(0)).to(x.scalar_type());
  const at::Tensor gy = (splits == 1 ? gy_ws.select(0, 0) : gy_ws.sum(0)).to(y.scalar_type());
  const at::Tensor Sxx = partials.narrow(0, 0, Tx).select(2, 0).sum(at::IntArrayRef{0, 1});
  const at::Tensor Syy = partials.narrow(0, Tx, Ty).select(2, 0).sum(at::IntArrayRef{0, 1});
  const at::Tensor Sxy = partials.narrow(0, 0, Tx).select(2, 1).sum(at::IntArrayRef{0, 1});
  const at::Tensor gsig = (g_d * sig_d.pow(-3) * (Sxx * a + Syy * b + Sxy * c)).to(sigmas.scalar_type());
  return std::make_tuple(gx, gy, gsig);
}

}  // namespace

TORCH_LIBRARY_IMPL(pytl, CUDA, m) {
  m.impl("mmd2_terms", &mmd2_terms_cuda);
  m.impl("mmd2_terms_backward", &mmd2_terms_backward_cuda);
}

}  // namespace pytl
