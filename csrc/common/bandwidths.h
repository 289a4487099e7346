// The bandwidths as the kernels use them: sorted by ascending gamma (the compute order), with
// the check for a geometric ladder (gamma_{k+1} = 2 gamma_k) that lets one exp per pair serve all
// K kernels by squaring. Shared by the CPU kernels and the CUDA host code.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace pytl {

// Fixed upper bound on the number of bandwidths: the kernels keep per-bandwidth constants and
// accumulators in fixed-size arrays.
constexpr int64_t kMaxBandwidths = 16;

// Per-call constants, bandwidths in compute order (ascending gamma).
template <typename T>
struct Bandwidths {
  int K = 0;
  bool ladder = false;  // gamma_{k+1} == 2 gamma_k: one exp, then squarings
  std::array<T, kMaxBandwidths> neg_gamma{};
};

// Bandwidths sorted by ascending gamma (the compute order); order[q] is the caller's index.
template <typename T>
inline Bandwidths<T> compute_order(const std::vector<double>& sigmas, std::vector<int>& order) {
  const int K = static_cast<int>(sigmas.size());
  order.resize(K);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int p, int q) { return sigmas[p] > sigmas[q]; });
  Bandwidths<T> bw;
  bw.K = K;
  bw.ladder = true;
  // a ladder built in float (sigma_0 * 2^(j/2)) is off by a few float ulps: squaring is then as accurate
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-13;
  for (int q = 0; q < K; ++q) {
    const double gamma = 0.5 / (sigmas[order[q]] * sigmas[order[q]]);
    // clamped so that a tiny sigma cannot make -gamma * 0 a NaN for duplicate points
    bw.neg_gamma[q] = static_cast<T>(-std::min(gamma, static_cast<double>(std::numeric_limits<T>::max())));
    if (q > 0) {
      const double prev = 0.5 / (sigmas[order[q - 1]] * sigmas[order[q - 1]]);
      bw.ladder = bw.ladder && std::abs(gamma - 2.0 * prev) <= tol * gamma;
    }
  }
  return bw;
}

}  // namespace pytl

