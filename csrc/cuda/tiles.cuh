// Tile geometry and accumulation-type math shared by the CUDA kernels (mmd_kernels.cuh and
// kernel_matmul_cuda.cu): 256 threads as a 16 x 16 grid, each owning a 4 x 4 register tile of a 64 x 64
// pair tile, features staged through shared memory 32 at a time.
#pragma once
#include <cstdint>

#include "../common/bandwidth_constants.h"  // kMaxBandwidths, kLog2e

namespace pytl {

constexpr int kThreads = 256;                  // 16 x 16 threads
constexpr int kTile = 64;                      // rows x columns of a pair tile
constexpr int kPer = kTile / 16;               // 4 x 4 register tile of pairs per thread
constexpr int kChunk = 32;                     // features per shared-memory chunk
constexpr int kMaxK = static_cast<int>(kMaxBandwidths);

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float exp2_acc(float v) { return exp2f(v); }
__device__ __forceinline__ double exp2_acc(double v) { return exp2(v); }
__device__ __forceinline__ float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return fma(a, b, c); }

}  // namespace pytl
