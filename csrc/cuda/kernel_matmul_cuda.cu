// CUDA kernel of pytl.rbf_kernel_matmul: out = K(z, z) @ s (schema in ../ops.cpp), no N x N buffer.
//
//   grid       = (row tiles of 64 output rows) x (chunks of 64 columns of s); 256 threads as a 16 x 16 grid.
//                A CTA owns its 64 x 64 block of the output and loops over all column tiles of K, so it
//                writes its outputs once: no atomics, bitwise reproducible run to run.
//   per column tile (64 columns of K):
//     distances  sum_t (a_t - b_t)^2 by direct differences (exact 0 on the diagonal), features staged in
//                shared memory 32 at a time as [feature][row]; thread (tx, ty) holds rows ty + 16 i and
//                columns tx + 16 j (i, j < 4) in registers
//     kernel     sum_k w_k exp2(-gamma_k log2(e) D) (constant folded before the launch), written to a shared
//                64 x 64 tile
//     product    the 64 x 64 tile of s (staged over the feature buffers, which are free by then) times the
//                kernel tile, accumulated in registers: thread (tx, ty) owns outputs (ty + 16 i, tx + 16 j)
//   Large P is handled by the grid's second dimension (each chunk recomputes its kernel tiles).
// float32/float64 compute in their own type; half/bfloat16 compute in float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../common/checks.h"
#include "tiles.cuh"

namespace pytl {
namespace {

// Tile geometry (kThreads, kTile = output rows per CTA and columns of K per step, kPer, kChunk) in tiles.cuh.
constexpr int kPChunk = 64;                 // columns of s per CTA
constexpr int kLd = kTile + 1;              // padded leading dimension
constexpr int kChunkElems = kChunk * kLd;   // one staged feature chunk, [feature][row]
constexpr int kSmemElems = 2 * kChunkElems + kTile * kLd;  // two chunks (reused for s) + the kernel tile
static_assert(kTile * kPChunk <= 2 * kChunkElems, "the s tile must fit in the feature buffers");
static_assert(kPer * 16 == kPChunk, "thread layout covers the s chunk");

// sm[t][r] = z[row0 + r][d0 + t] (0 outside the matrix); a warp reads 32 consecutive features of one row.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_chunk(acc_t* __restrict__ sm, const scalar_t* __restrict__ src, int64_t row0,
                                           int64_t nrows, int64_t d, int64_t d0) {
#pragma unroll
  for (int q = 0; q < kChunk * kTile / kThreads; ++q) {
    const int l = threadIdx.x + q * kThreads;
    const int t = l % kChunk, r = l / kChunk;
    const int64_t row = row0 + r, col = d0 + t;
    acc_t v = 0;
    if (row < nrows && col < d) v = static_cast<acc_t>(src[row * d + col]);
    sm[t * kLd + r] = v;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    kernel_matmul_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ s, int64_t n, int64_t d,
                         int64_t P, const acc_t* __restrict__ neg_gamma_log2e, const acc_t* __restrict__ weights,
                         int K, acc_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* As = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* Bs = As + kChunkElems;
  acc_t* Ss = As;  // [column][p], kTile x kPChunk, over As/Bs once the distances are done
  acc_t* Ks = As + 2 * kChunkElems;  // [row][column], kTile x kLd
  __shared__ acc_t ng_s[kMaxK];
  __shared__ acc_t w_s[kMaxK];
  if (threadIdx.x < K) {
    ng_s[threadIdx.x] = neg_gamma_log2e[threadIdx.x];
    w_s[threadIdx.x] = weights[threadIdx.x];
  }
  __syncthreads();

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t p0 = static_cast<int64_t>(blockIdx.y) * kPChunk;
  acc_t acc[kPer][kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = 0;

  for (int64_t col0 = 0; col0 < n; col0 += kTile) {
    acc_t D[kPer][kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) D[i][j] = 0;
    for (int64_t d0 = 0; d0 < d; d0 += kChunk) {
      load_chunk<scalar_t, acc_t>(As, z, row0, n, d, d0);
      load_chunk<scalar_t, acc_t>(Bs, z, col0, n, d, d0);
      __syncthreads();
      const int kc = static_cast<int>(d - d0 < kChunk ? d - d0 : kChunk);
      for (int kk = 0; kk < kc; ++kk) {  // zero-padded features would add 0 too, but skip them
        acc_t a[kPer], b[kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i) a[i] = As[kk * kLd + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < kPer; ++j) b[j] = Bs[kk * kLd + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < kPer; ++i)
#pragma unroll
          for (int j = 0; j < kPer; ++j) {
            const acc_t diff = a[i] - b[j];
            D[i][j] += diff * diff;
          }
      }
      __syncthreads();  // As/Bs are overwritten next (by the next chunk or by the s tile)
    }
    // kernel values of the tile (0 outside the matrix)
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t row = row0 + ty + 16 * i, col = col0 + tx + 16 * j;
        acc_t v = 0;
        if (row < n && col < n) {
          for (int k = 0; k < K; ++k) v += w_s[k] * exp2_acc(ng_s[k] * D[i][j]);
        }
        Ks[(ty + 16 * i) * kLd + tx + 16 * j] = v;
      }
    // the s tile: Ss[c][p] = s[col0 + c][p0 + p], 0 outside; a warp reads 32 consecutive p of one row
    for (int l = threadIdx.x; l < kTile * kPChunk; l += kThreads) {
      const int c = l / kPChunk, p = l % kPChunk;
      const int64_t col = col0 + c, pc = p0 + p;
      acc_t v = 0;
      if (col < n && pc < P) v = static_cast<acc_t>(s[col * P + pc]);
      Ss[c * kPChunk + p] = v;
    }
    __syncthreads();
    // acc[i][j] += sum_c K[ty + 16 i][c] s[c][tx + 16 j]
#pragma unroll 8
    for (int c = 0; c < kTile; ++c) {
      acc_t kr[kPer], sv[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) kr[i] = Ks[(ty + 16 * i) * kLd + c];
#pragma unroll
      for (int j = 0; j < kPer; ++j) sv[j] = Ss[c * kPChunk + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] += kr[i] * sv[j];
    }
    __syncthreads();  // Ks and Ss are rewritten by the next column tile
  }

#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t row = row0 + ty + 16 * i, pc = p0 + tx + 16 * j;
      if (row < n && pc < P) out[row * P + pc] = acc[i][j];
    }
}

at::Tensor rbf_kernel_matmul_cuda(const at::Tensor& z_in, const at::Tensor& s_in, const at::Tensor& sigmas,
                                  const at::Tensor& weights) {
  check_kernel_matmul_inputs(z_in, s_in, sigmas, weights);
  // values checked on the device, without a sync (checks.h); the kernel's constants are computed there too
  assert_sigma_values(sigmas, kKernelMatmulOp);
  assert_weight_values(weights, kKernelMatmulOp);
  c10::cuda::CUDAGuard guard(z_in.device());
  const int64_t n = z_in.size(0), d = z_in.size(1), P = s_in.size(1), K = sigmas.size(0);
  const at::ScalarType acc = z_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (n == 0 || P == 0) return at::zeros({n, P}, z_in.options());
  const int64_t row_tiles = ceil_div(n, kTile), p_chunks = ceil_div(P, kPChunk);
  TORCH_CHECK_VALUE(row_tiles <= std::numeric_limits<int32_t>::max() && p_chunks <= 65535,
              "pytl.rbf_kernel_matmul: too large for one launch (N = ", n, ", P = ", P,
              "); split s into column chunks of at most ", 65535 * kPChunk);
  const at::Tensor z = z_in.contiguous(), s = s_in.contiguous();
  const double lowest = acc == at::kFloat ? -static_cast<double>(std::numeric_limits<float>::max())
                                          : -std::numeric_limits<double>::max();
  // -gamma_k log2(e) in double on the device, rounded once; clamped so that -gamma * 0 cannot be NaN
  const at::Tensor ng =
      (sigmas.detach().to(at::kDouble).pow(-2) * (-0.5 * kLog2e)).clamp_min(lowest).to(acc).contiguous();
  const at::Tensor w = weights.detach().to(acc).contiguous();
  at::Tensor out = at::empty({n, P}, z.options().dtype(acc));  // every element is written

  const size_t acc_bytes = acc == at::kDouble ? sizeof(double) : sizeof(float);
  const size_t smem = kSmemElems * acc_bytes;  // 33 KB in float, 67 KB in double
  int smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, z.get_device()));
  TORCH_CHECK(smem + 2 * kMaxK * acc_bytes <= static_cast<size_t>(smem_optin), "pytl.rbf_kernel_matmul: the ",
              z.scalar_type(), " CUDA kernel needs ", smem, " bytes of shared memory per block, this GPU offers ",
              smem_optin, " (use float32, or compute on the CPU)");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(p_chunks));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "pytl_rbf_kernel_matmul_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = kernel_matmul_kernel<scalar_t, acc_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<grid, kThreads, smem, stream>>>(z.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), n, d, P,
                                             ng.data_ptr<acc_t>(), w.data_ptr<acc_t>(), static_cast<int>(K),
                                             out.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.scalar_type() == z_in.scalar_type() ? out : out.to(z_in.scalar_type());
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CUDA, m) { m.impl("rbf_kernel_matmul", &pytl::rbf_kernel_matmul_cuda); }
