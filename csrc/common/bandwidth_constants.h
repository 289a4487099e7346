// The per-bandwidth constants of the CUDA MMD kernels, computed from the bandwidths' values where they
// are (on the GPU, by one thread: csrc/cuda/mmd_cuda.cu), so that a call never reads them to the host.
// Same compute order, constants and ladder rule as compute_order in bandwidths.h and the host code this
// replaced; plain C++ on the host too, so that tests/cpp checks it against compute_order on the CPU.
#pragma once
#include <cstdint>
#include <limits>

#include "bandwidths.h"

#if defined(__CUDACC__)
#define PYTL_HOST_DEVICE __host__ __device__
#else
#define PYTL_HOST_DEVICE
#endif

namespace pytl {

constexpr double kLog2e = 1.4426950408889634073599246810019;

// s: K <= kMaxBandwidths bandwidths in double. Writes, in compute order q (descending sigma, ties in the
// caller's order, as std::stable_sort in compute_order):
//   order[q]            the caller's index;  inverse[order[q]] = q
//   neg_gamma_log2e[q]  -log2(e) / (2 s^2), clamped at T's lowest value (so that -gamma * 0 cannot be NaN)
//   *ladder             1 when gamma_q = 2 gamma_{q-1} for every q, within tol * gamma_q (tol 1e-6 for
//                       float, 1e-13 for double, computed in double), else 0
// and returns whether every s is positive and finite. With a bad s the outputs are meaningless: the caller
// must not use them (on the device it stops with an assertion).
template <typename T>
PYTL_HOST_DEVICE bool bandwidth_constants(const double* s, int K, T* neg_gamma_log2e, int64_t* order,
                                          int64_t* inverse, int* ladder) {
  bool valid = true;
  for (int k = 0; k < K; ++k) valid = valid && s[k] > 0.0 && s[k] <= std::numeric_limits<double>::max();  // NaN fails

  // stable insertion sort by descending sigma: an entry moves only past strictly smaller ones
  for (int k = 0; k < K; ++k) {
    int j = k;
    while (j > 0 && s[k] > s[order[j - 1]]) {
      order[j] = order[j - 1];
      --j;
    }
    order[j] = k;
  }

  const double lowest = -static_cast<double>(std::numeric_limits<T>::max());
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-13;
  bool is_ladder = true;
  double prev = 0.0;
  for (int q = 0; q < K; ++q) {
    const double sq = s[order[q]];
    const double ng = -0.5 / (sq * sq) * kLog2e;
    neg_gamma_log2e[q] = static_cast<T>(ng < lowest ? lowest : ng);  // std::max(ng, lowest)
    inverse[order[q]] = q;
    const double gamma = 0.5 / (sq * sq);
    if (q > 0) {
      // prev + prev, not 2.0 * prev: the same value, and no multiply that nvcc could fuse into the subtraction
      const double diff = gamma - (prev + prev);
      is_ladder = is_ladder && (diff < 0.0 ? -diff : diff) <= tol * gamma;  // |diff|; NaN compares false
    }
    prev = gamma;
  }
  *ladder = is_ladder ? 1 : 0;
  return valid;
}

}  // namespace pytl
