// CUDA kernels for pytl.mmd2_terms, pytl.mmd2_terms_and_grad and pytl.mmd2_terms_backward (schemas in
// ../ops.cpp). Flash-attention-style tiling; no pairwise (n x m, n x n, n x n x K) buffer is ever built.
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
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/bandwidths.h"
#include "../common/checks.h"

namespace pytl {
namespace {

constexpr int kThreads = 256;                  // 16 x 16 threads
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 64;                      // rows of A and columns of B per pair tile
constexpr int kPer = kTile / 16;               // 4 x 4 register tile of pairs per thread
constexpr int kChunk = 32;                     // features per shared-memory chunk
constexpr int kLd = kTile + 4;                 // [feature][row] leading dimension: 16-byte aligned rows
constexpr int kChunkElems = kChunk * kLd;      // one staged chunk
constexpr int kLdT = kChunk + 4;               // [col][feature] leading dimension of the phase-2 operand
constexpr int kMaxK = static_cast<int>(kMaxBandwidths);
constexpr double kLog2e = 1.4426950408889634073599246810019;
static_assert(kPer == 4, "the 16-byte shared-memory reads assume 4 rows / columns per thread");

// Forward: at most this many CTAs; each CTA takes a contiguous run of tiles (shares its A tile, L2 friendly).
constexpr int64_t kForwardMaxCtas = 4096;
// Gradient sweep: split the column tiles so that about this many CTAs run, within a workspace budget.
constexpr int64_t kSweepTargetCtas = 1024;
constexpr int64_t kSweepMaxSplits = 16;
constexpr int64_t kSweepWorkspaceBytes = int64_t{256} << 20;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float exp2_acc(float v) { return exp2f(v); }
__device__ __forceinline__ double exp2_acc(double v) { return exp2(v); }
__device__ __forceinline__ float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return fma(a, b, c); }

// v = p[0..3] (p[0..1]); p is aligned to the whole read (float: one 16-byte read; double: two).
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
  const double2 q0 = *reinterpret_cast<const double2*>(p), q1 = *reinterpret_cast<const double2*>(p + 2);
  v[0] = q0.x, v[1] = q0.y, v[2] = q1.x, v[3] = q1.y;
}
__device__ __forceinline__ void load2(const float* p, float& v0, float& v1) {
  const float2 q = *reinterpret_cast<const float2*>(p);
  v0 = q.x, v1 = q.y;
}
__device__ __forceinline__ void load2(const double* p, double& v0, double& v1) {
  const double2 q = *reinterpret_cast<const double2*>(p);
  v0 = q.x, v1 = q.y;
}
__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(double* p, const double (&v)[4]) {
  *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  *reinterpret_cast<double2*>(p + 2) = make_double2(v[2], v[3]);
}

// Running per-thread sum. In float it is Kahan-compensated: a forward CTA may add up hundreds of tile sums.
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
};

// Sums value(k) over the CTA in a fixed order and writes out[k] (k < K). Every thread must call it.
template <typename Get>
__device__ __forceinline__ void block_reduce_store(Get value, int K, double (&red)[kWarps][kMaxK],
                                                   double* __restrict__ out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    if (k < K) {
      double v = value(k);
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
// zero outside the matrix. A warp covers 4 rows x 8 features: 32-byte global segments, and the transposed
// shared stores land in 32 distinct banks (kLd = 4 mod 32). Each thread keeps one feature and steps 8 rows at
// a time, so the index arithmetic is one pointer increment per element.
template <typename acc_t>
__device__ __forceinline__ void load_chunk(acc_t* __restrict__ sm, const acc_t* __restrict__ src, int64_t row0,
                                           int64_t nrows, int64_t d, int64_t d0) {
  static_assert(kThreads == 256, "the index map below assumes 256 threads");
  const int t = ((threadIdx.x >> 5) & 3) * 8 + (threadIdx.x & 7);
  const int r0 = (threadIdx.x >> 7) * 4 + ((threadIdx.x >> 3) & 3);
  const bool col_ok = d0 + t < d;
  const acc_t* p = src + (row0 + r0) * d + d0 + t;
#pragma unroll
  for (int s = 0; s < kChunk * kTile / kThreads; ++s, p += 8 * d) {
    const int r = r0 + 8 * s;
    sm[t * kLd + r] = (col_ok && row0 + r < nrows) ? *p : acc_t(0);
  }
}

// Stages rows [row0, row0 + 64) x features [d0, d0 + 32) of src as sm[row][feature] (phase 2's operand):
// a warp reads 32 consecutive features of one row; each thread steps 8 rows at a time.
template <typename acc_t>
__device__ __forceinline__ void load_rows(acc_t* __restrict__ sm, const acc_t* __restrict__ src, int64_t row0,
                                          int64_t nrows, int64_t d, int64_t d0) {
  const int t = threadIdx.x % kChunk, r0 = threadIdx.x / kChunk;
  const bool col_ok = d0 + t < d;
  const acc_t* p = src + (row0 + r0) * d + d0 + t;
#pragma unroll
  for (int s = 0; s < kChunk * kTile / kThreads; ++s, p += (kThreads / kChunk) * d) {
    const int r = r0 + (kThreads / kChunk) * s;
    sm[r * kLdT + t] = (col_ok && row0 + r < nrows) ? *p : acc_t(0);
  }
}

// G[i][j] += sum over the first kc staged features of A[4ty + i] * B[4tx + j], one FMA each, in feature order
// (the same order as row_sq_norms_kernel, which makes identical points exactly 0 apart).
template <typename acc_t>
__device__ __forceinline__ void accumulate_dots(const acc_t* __restrict__ As, const acc_t* __restrict__ Bs, int kc,
                                                acc_t (&G)[kPer][kPer]) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  auto step = [&](int kk) {
    acc_t a[kPer], b[kPer];
    load4(As + kk * kLd + ty * kPer, a);  // a warp reads two addresses: a broadcast
    load4(Bs + kk * kLd + tx * kPer, b);  // 256 consecutive bytes
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) G[i][j] = fma_acc(a[i], b[j], G[i][j]);
  };
  if (kc == kChunk) {
#pragma unroll
    for (int kk = 0; kk < kChunk; ++kk) step(kk);
  } else {  // last, partial chunk (or d < 32): skip the zero padding
#pragma unroll 4
    for (int kk = 0; kk < kc; ++kk) step(kk);
  }
}

// Dot products -> squared distances, in place: G = max(|a|^2 + |b|^2 - 2 G, 0), NaN kept.
template <typename acc_t>
__device__ __forceinline__ void to_distances(acc_t (&G)[kPer][kPer], const acc_t* __restrict__ norms_a, int64_t row0,
                                             int64_t nrows, const acc_t* __restrict__ norms_b, int64_t col0,
                                             int64_t ncols) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  acc_t na[kPer], nb[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t r = row0 + ty * kPer + i, c = col0 + tx * kPer + i;
    na[i] = r < nrows ? norms_a[r] : acc_t(0);
    nb[i] = c < ncols ? norms_b[c] : acc_t(0);
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const acc_t v = fma_acc(acc_t(-2), G[i][j], na[i] + nb[j]);
      G[i][j] = v < acc_t(0) ? acc_t(0) : v;  // (not fmax: a NaN must stay NaN)
    }
}

// Bit (i * 4 + j) set when the thread's pair (row 4ty + i, col 4tx + j) is a real pair: both in range and,
// on a diagonal tile of the x-x or y-y block, not the diagonal itself.
__device__ __forceinline__ unsigned pair_mask(int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
                                              bool diag_tile) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  unsigned mask = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int r = ty * kPer + i, c = tx * kPer + j;
      const bool ok = row0 + r < nrows && col0 + c < ncols && !(diag_tile && r == c);
      mask |= static_cast<unsigned>(ok) << (i * kPer + j);
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
                       const acc_t* __restrict__ neg_gamma_log2e, int K, bool ladder, ForwardPlan plan,
                       double* __restrict__ partials) {
  __shared__ __align__(16) acc_t As[kChunkElems];
  __shared__ __align__(16) acc_t Bs[kChunkElems];
  __shared__ acc_t s_ng[kMaxK];
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

    acc_t D[kPer][kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) D[i][j] = 0;

    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t d0 = c * kChunk;
      __syncthreads();  // previous readers of As/Bs are done (also publishes s_ng on the first pass)
      if (nchunks > 1 || loaded_ti != ti) load_chunk(As, A, row0, nA, d, d0);
      load_chunk(Bs, B, col0, nB, d, d0);
      __syncthreads();
      accumulate_dots(As, Bs, static_cast<int>((d - d0 < kChunk ? d - d0 : kChunk)), D);
    }
    loaded_ti = ti;
    to_distances(D, NA, row0, nA, NB, col0, nB);

    const bool diag_tile = triangle && ti == tj;
    // Only diagonal and edge tiles need the pair mask; interior tiles (almost all) skip it.
    const bool masked = diag_tile || row0 + kTile > nA || col0 + kTile > nB;
    const unsigned mask = masked ? pair_mask(row0, nA, col0, nB, diag_tile) : ~0u;
    const acc_t mult = (triangle && !diag_tile) ? acc_t(2) : acc_t(1);  // the mirrored tile, exactly x2
    auto sum_tile = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      acc_t e[kPer][kPer];
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
                     bool ladder, acc_t coef_xx, acc_t coef_yy, acc_t coef_xy, int64_t splits,
                     acc_t* __restrict__ gx_ws, acc_t* __restrict__ gy_ws, double* __restrict__ e_part,
                     double* __restrict__ d_part) {
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

    // ---- phase 1: distances
    acc_t D[kPer][kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) D[i][j] = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t d0 = c * kChunk;
      __syncthreads();  // previous readers of As/Bs are done (also publishes s_ng, s_cg, s_roww)
      if (nchunks > 1 || ct == ct_begin) load_chunk(As, self, row0, nself, d, d0);
      load_chunk(Bs, cols, col0, ncols, d, d0);
      __syncthreads();
      accumulate_dots(As, Bs, static_cast<int>((d - d0 < kChunk ? d - d0 : kChunk)), D);
    }
    to_distances(D, norms_self, row0, nself, norms_cols, col0, ncols);

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

// ---------------------------------------------------------------------------------------------------------
// Host side.

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Both samples centred on x's mean, in the accumulation type, with their squared row norms.
struct Centred {
  at::Tensor x, y, nx, ny;
};

at::Tensor row_sq_norms(const at::Tensor& z) {
  at::Tensor out = at::empty({z.size(0)}, z.options());
  if (z.size(0) == 0) return out;
  const int threads = 256;
  const auto blocks = static_cast<unsigned>(ceil_div(z.size(0), threads));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pytl_row_sq_norms", [&] {
    row_sq_norms_kernel<scalar_t><<<blocks, threads, 0, stream>>>(z.data_ptr<scalar_t>(), z.size(0), z.size(1),
                                                                  out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Centred centre(const at::Tensor& x, const at::Tensor& y, at::ScalarType acc) {
  const at::Tensor center = x.to(at::kDouble).mean(0, /*keepdim=*/true).to(acc);
  Centred c;
  c.x = (x.to(acc) - center).contiguous();
  c.y = (y.to(acc) - center).contiguous();
  c.nx = row_sq_norms(c.x);
  c.ny = row_sq_norms(c.y);
  return c;
}

// The bandwidths in compute order (ascending gamma), as the kernels take them.
struct DeviceBandwidths {
  at::Tensor neg_gamma_log2e;  // (K,) acc dtype, compute order
  at::Tensor order;            // (K,) int64: compute position q -> the caller's index
  at::Tensor inverse;          // (K,) int64: the caller's index -> compute position
  bool ladder = false;
};

// s: the bandwidths' values, read once (and checked) by check_sigma_values.
DeviceBandwidths device_bandwidths(const std::vector<double>& s, const at::Device& device, at::ScalarType acc) {
  std::vector<int> order;
  DeviceBandwidths bw;
  bw.ladder = acc == at::kFloat ? compute_order<float>(s, order).ladder : compute_order<double>(s, order).ladder;
  const double lowest = acc == at::kFloat ? -static_cast<double>(std::numeric_limits<float>::max())
                                          : -std::numeric_limits<double>::max();
  std::vector<double> ng(s.size());
  std::vector<int64_t> ord(s.size()), inv(s.size());
  for (size_t q = 0; q < s.size(); ++q) {
    // clamped so that a tiny sigma cannot turn -gamma * 0 into NaN
    ng[q] = std::max(-0.5 / (s[order[q]] * s[order[q]]) * kLog2e, lowest);
    ord[q] = order[q];
    inv[order[q]] = static_cast<int64_t>(q);
  }
  const auto dev = at::TensorOptions().device(device);
  bw.neg_gamma_log2e = at::tensor(ng, at::TensorOptions().dtype(at::kDouble)).to(dev.dtype(acc));
  bw.order = at::tensor(ord, at::TensorOptions().dtype(at::kLong)).to(dev);
  bw.inverse = at::tensor(inv, at::TensorOptions().dtype(at::kLong)).to(dev);
  return bw;
}

// T_k from the block sums (the self sums over ordered pairs i != j).
at::Tensor terms_from_sums(const at::Tensor& Sxx, const at::Tensor& Syy, const at::Tensor& Sxy, int64_t n, int64_t m,
                           bool unbiased) {
  const double nd = static_cast<double>(n), md = static_cast<double>(m);
  if (unbiased) return Sxx / (nd * (nd - 1)) + Syy / (md * (md - 1)) - Sxy * (2.0 / (nd * md));
  return (Sxx + nd) / (nd * nd) + (Syy + md) / (md * md) - Sxy * (2.0 / (nd * md));  // diagonals: exactly n, m
}

at::Tensor mmd2_terms_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& sigmas,
                           bool unbiased) {
  check_mmd_inputs(x_in, y_in, sigmas, unbiased);
  const std::vector<double> sigma_values = check_sigma_values(sigmas);  // read once, used twice
  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t n = x_in.size(0), m = y_in.size(0), d = x_in.size(1), K = sigmas.size(0);
  const at::ScalarType acc = acc_dtype(x_in);
  const Centred c = centre(x_in, y_in, acc);
  const DeviceBandwidths bw = device_bandwidths(sigma_values, sigmas.device(), acc);

  ForwardPlan plan;
  const int64_t Tx = ceil_div(n, kTile), Ty = ceil_div(m, kTile);
  plan.tiles[0] = Tx * (Tx + 1) / 2;
  plan.tiles[1] = Ty * (Ty + 1) / 2;
  plan.tiles[2] = Tx * Ty;
  plan.tiles_per_cta = ceil_div(plan.tiles[0] + plan.tiles[1] + plan.tiles[2], kForwardMaxCtas);
  plan.cta_start[0] = 0;
  for (int s = 0; s < 3; ++s) plan.cta_start[s + 1] = plan.cta_start[s] + ceil_div(plan.tiles[s], plan.tiles_per_cta);
  const int64_t grid = plan.cta_start[3];

  at::Tensor partials = at::empty({grid, K}, x_in.options().dtype(at::kDouble));  // every row is written
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "pytl_mmd2_terms_cuda", [&] {
    mmd_forward_kernel<scalar_t><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
        c.x.data_ptr<scalar_t>(), c.y.data_ptr<scalar_t>(), c.nx.data_ptr<scalar_t>(), c.ny.data_ptr<scalar_t>(), n,
        m, d, bw.neg_gamma_log2e.data_ptr<scalar_t>(), static_cast<int>(K), bw.ladder, plan,
        partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // fixed-shape sums over the per-CTA partials: deterministic
  const at::Tensor Sxx = partials.narrow(0, plan.cta_start[0], plan.cta_start[1] - plan.cta_start[0]).sum(0);
  const at::Tensor Syy = partials.narrow(0, plan.cta_start[1], plan.cta_start[2] - plan.cta_start[1]).sum(0);
  const at::Tensor Sxy = partials.narrow(0, plan.cta_start[2], plan.cta_start[3] - plan.cta_start[2]).sum(0);
  return terms_from_sums(Sxx, Syy, Sxy, n, m, unbiased).index_select(0, bw.inverse).to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mmd2_terms_and_grad_cuda(const at::Tensor& grad_terms,
                                                                                    const at::Tensor& x_in,
                                                                                    const at::Tensor& y_in,
                                                                                    const at::Tensor& sigmas,
                                                                                    bool unbiased) {
  check_mmd_backward_inputs(grad_terms, x_in, y_in, sigmas, unbiased);
  const std::vector<double> sigma_values = check_sigma_values(sigmas);  // read once, used twice
  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t n = x_in.size(0), m = y_in.size(0), d = x_in.size(1), K = sigmas.size(0);
  const at::ScalarType acc = acc_dtype(x_in);
  const size_t acc_bytes = acc == at::kDouble ? sizeof(double) : sizeof(float);
  const Centred c = centre(x_in, y_in, acc);
  const DeviceBandwidths bw = device_bandwidths(sigma_values, sigmas.device(), acc);

  // per-bandwidth constants in compute order
  const at::Tensor sig_c = sigmas.detach().to(at::kDouble).index_select(0, bw.order);
  const at::Tensor g_c = grad_terms.detach().to(at::kDouble).index_select(0, bw.order);
  const at::Tensor cg = (g_c * sig_c.pow(-2) * -0.5).to(acc).contiguous();  // g_k * (-gamma_k)

  const double nd = static_cast<double>(n), md = static_cast<double>(m);
  const double a = unbiased ? 1.0 / (nd * (nd - 1)) : 1.0 / (nd * nd);
  const double b = unbiased ? 1.0 / (md * (md - 1)) : 1.0 / (md * md);
  const double cxy = -2.0 / (nd * md);

  // Column splits: enough CTAs to fill the GPU on small inputs, within a workspace budget.
  const int64_t Tx = ceil_div(n, kTile), Ty = ceil_div(m, kTile);
  const int64_t row_tiles = Tx + Ty;  // also the number of column tiles each row tile walks
  int64_t splits = std::min<int64_t>({ceil_div(kSweepTargetCtas, row_tiles), kSweepMaxSplits, row_tiles});
  const int64_t slice_bytes = std::max<int64_t>((n + m) * d * static_cast<int64_t>(acc_bytes), 1);
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, kSweepWorkspaceBytes / slice_bytes));

  at::Tensor gx_ws = at::empty({splits, n, d}, x_in.options().dtype(acc));  // every in-range element is written
  at::Tensor gy_ws = at::empty({splits, m, d}, x_in.options().dtype(acc));
  const auto part_opts = x_in.options().dtype(at::kDouble);
  at::Tensor e_part = at::zeros({row_tiles, splits, 2, K}, part_opts);  // some slots stay 0
  at::Tensor d_part = at::zeros({row_tiles, splits, 2, K}, part_opts);

  // tiles and weights (43 KB in float, 86 KB in double) + the per-thread sums (12 or 16 bytes per thread and k)
  const size_t smem = (2 * kChunkElems + kTile * kLd + kTile * kLdT) * acc_bytes +
                      static_cast<size_t>(K) * kThreads * (sizeof(double) + acc_bytes);
  int smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, x_in.get_device()));
  TORCH_CHECK(smem + 4096 <= static_cast<size_t>(smem_optin), "pytl.mmd2_terms_and_grad: the ", acc,
              " CUDA kernel needs ", smem + 4096, " bytes of shared memory per block, this GPU offers ", smem_optin,
              " (use float32, or compute on the CPU)");
  const int64_t grid = row_tiles * splits;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "pytl_mmd2_terms_and_grad_cuda", [&] {
    auto kernel = mmd_sweep_kernel<scalar_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(
        c.x.data_ptr<scalar_t>(), c.y.data_ptr<scalar_t>(), c.nx.data_ptr<scalar_t>(), c.ny.data_ptr<scalar_t>(), n,
        m, d, bw.neg_gamma_log2e.data_ptr<scalar_t>(), cg.data_ptr<scalar_t>(), static_cast<int>(K), bw.ladder,
        static_cast<scalar_t>(4.0 * a), static_cast<scalar_t>(4.0 * b), static_cast<scalar_t>(2.0 * cxy), splits,
        gx_ws.data_ptr<scalar_t>(), gy_ws.data_ptr<scalar_t>(), e_part.data_ptr<double>(), d_part.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // fixed-shape sums: deterministic
  const at::Tensor gx = (splits == 1 ? gx_ws.select(0, 0) : gx_ws.sum(0)).to(x_in.scalar_type());
  const at::Tensor gy = (splits == 1 ? gy_ws.select(0, 0) : gy_ws.sum(0)).to(y_in.scalar_type());
  auto block = [](const at::Tensor& part, int64_t first, int64_t count, int64_t slot) {
    return part.narrow(0, first, count).select(2, slot).sum(at::IntArrayRef{0, 1});
  };
  const at::Tensor terms =
      terms_from_sums(block(e_part, 0, Tx, 0), block(e_part, Tx, Ty, 0), block(e_part, 0, Tx, 1), n, m, unbiased);
  const at::Tensor dS = block(d_part, 0, Tx, 0) * a + block(d_part, Tx, Ty, 0) * b + block(d_part, 0, Tx, 1) * cxy;
  const at::Tensor gsig = g_c * sig_c.pow(-3) * dS;  // dT_k/dsigma_k = sigma_k^-3 * sum of e_k D over the blocks
  return {terms.index_select(0, bw.inverse).to(x_in.scalar_type()), gx, gy,
          gsig.index_select(0, bw.inverse).to(sigmas.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd2_terms_backward_cuda(const at::Tensor& grad_terms,
                                                                         const at::Tensor& x, const at::Tensor& y,
                                                                         const at::Tensor& sigmas, bool unbiased) {
  auto r = mmd2_terms_and_grad_cuda(grad_terms, x, y, sigmas, unbiased);
  return {std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pytl, CUDA, m) {
  m.impl("mmd2_terms", &mmd2_terms_cuda);
  m.impl("mmd2_terms_and_grad", &mmd2_terms_and_grad_cuda);
  m.impl("mmd2_terms_backward", &mmd2_terms_backward_cuda);
}

}  // namespace pytl
