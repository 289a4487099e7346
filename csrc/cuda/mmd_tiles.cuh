// The MMD kernels' tile stages (mmd_kernels.cuh): staging rows into shared memory, the 4 x 4 dot products,
// distances (together: distance_tile), pair masks, the triangle walk and the CTA reductions. Tile geometry in
// tiles.cuh.
#pragma once
#include <cstdint>
#include <type_traits>

#include "tiles.cuh"

namespace pytl {

constexpr int kWarps = kThreads / 32;
constexpr int kLd = kTile + 4;                 // [feature][row] leading dimension: 16-byte aligned rows
constexpr int kChunkElems = kChunk * kLd;      // one staged chunk
constexpr int kLdT = kChunk + 4;               // [col][feature] leading dimension of the phase-2 operand
static_assert(kPer == 4, "the 16-byte shared-memory reads assume 4 rows / columns per thread");

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

// The squared distances of one pair tile, D[i][j] for row row0 + 4ty + i of A and row col0 + 4tx + j of B:
// the features staged 32 at a time into As and Bs (load_chunk), the dot products accumulated in registers
// (accumulate_dots), then to_distances. Every thread of the CTA must call it. Each chunk begins with a barrier
// (the previous readers of As/Bs are done; it also publishes the caller's earlier shared-memory writes) and
// another follows its staging; none follows the last chunk's reads, so the next writer of As/Bs must sync
// first (the next call does). nchunks = ceil_div(d, kChunk), computed once by the caller. a_staged: As still
// holds this row tile from the previous call; honoured only with a single chunk (d <= kChunk), where only the
// B tile is then staged.
template <typename acc_t>
__device__ __forceinline__ void distance_tile(acc_t* __restrict__ As, acc_t* __restrict__ Bs,
                                              const acc_t* __restrict__ A, const acc_t* __restrict__ norms_a,
                                              int64_t row0, int64_t nrows, const acc_t* __restrict__ B,
                                              const acc_t* __restrict__ norms_b, int64_t col0, int64_t ncols,
                                              int64_t d, int64_t nchunks, bool a_staged,
                                              acc_t (&D)[kPer][kPer]) {
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) D[i][j] = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t d0 = c * kChunk;
    __syncthreads();  // previous readers of As/Bs are done
    if (nchunks > 1 || !a_staged) load_chunk(As, A, row0, nrows, d, d0);
    load_chunk(Bs, B, col0, ncols, d, d0);
    __syncthreads();
    accumulate_dots(As, Bs, static_cast<int>((d - d0 < kChunk ? d - d0 : kChunk)), D);
  }
  to_distances(D, norms_a, row0, nrows, norms_b, col0, ncols);
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

}  // namespace pytl
