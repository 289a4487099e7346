// The register-blocked micro-GEMM of the CPU kernels: O (kRows x NV vectors) += L (kRows x jn) . R
// (jn x NV vectors). The kRows x NV accumulators stay in registers over the jn inner steps, so each
// step costs NV loads of R per kRows x NV FMAs, and O is loaded and stored once.
// Used by the MMD gradient (L = a register block's pair weights, R = the column rows) and by
// rbf_kernel_matmul (L = a kernel tile, R = the right-hand side).
#pragma once
#include <cstdint>

#include "simd.h"

namespace pytl {

// Row strides in elements; r and o point at the first of the NV column vectors.
template <typename T, int kRows, int NV>
__attribute__((always_inline)) inline void register_gemm(const T* l, int64_t l_stride, const T* r, int64_t r_stride,
                                                         int64_t jn, T* o, int64_t o_stride) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  V acc[kRows][NV];
  for (int i = 0; i < kRows; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = S::load(o + i * o_stride + v * W);
  for (int64_t j = 0; j < jn; ++j) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = S::load(r + j * r_stride + v * W);
    for (int i = 0; i < kRows; ++i) {
      const T c = l[i * l_stride + j];
      for (int v = 0; v < NV; ++v) acc[i][v] += c * b[v];
    }
  }
  for (int i = 0; i < kRows; ++i)
    for (int v = 0; v < NV; ++v) S::store(o + i * o_stride + v * W, acc[i][v]);
}

// The same for nv < NV vectors (the tail of a row of R), dispatched to the instance of that width.
template <typename T, int kRows, int NV>
__attribute__((always_inline)) inline void register_gemm_tail(int nv, const T* l, int64_t l_stride, const T* r,
                                                              int64_t r_stride, int64_t jn, T* o, int64_t o_stride) {
  if constexpr (NV > 1) {
    if (nv == NV - 1) return register_gemm<T, kRows, NV - 1>(l, l_stride, r, r_stride, jn, o, o_stride);
    return register_gemm_tail<T, kRows, NV - 1>(nv, l, l_stride, r, r_stride, jn, o, o_stride);
  }
}

}  // namespace pytl
