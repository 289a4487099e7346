// The two CPU routes of the fused MMD (mmd_cpu.cpp: the register-blocked micro-GEMM sweep;
// mmd_gemm_tiles_cpu.cpp: the machine's GEMM on tiles, for wide features) share their result type and
// the block normalisations.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace pytl {

// Block normalisations: T_k = a Sxx + b Syy + c Sxy, the self sums over ordered pairs i != j.
struct BlockScales {
  double a, b, c;
};

inline BlockScales block_scales(int64_t n, int64_t m, bool unbiased) {
  const double dn = static_cast<double>(n), dm = static_cast<double>(m);
  return {unbiased ? 1.0 / (dn * (dn - 1.0)) : 1.0 / (dn * dn), unbiased ? 1.0 / (dm * (dm - 1.0)) : 1.0 / (dm * dm),
          -2.0 / (dn * dm)};
}

struct MMDResult {
  std::vector<double> terms;        // (K) in the caller's order
  std::vector<double> sigma_grad;   // (K), gradient only
  at::Tensor grad_x, grad_y;        // gradient only
};

// Where the GEMM-on-tiles route is taken: small pooled batches of wide features, where the sweep pays
// for its padded 96-row tiles and per-thread buffers. Everywhere else the sweep's micro-GEMM is faster
// than this machine's sgemm (measured: benchmarks/RESULTS.md, issue 15).
constexpr int64_t kGemmTilesMinFeatures = 512;
constexpr int64_t kGemmTilesMaxPooledRows = 128;  // n + m

// The GEMM-on-tiles route; the same contract as mmd_cpu.cpp's sweep: sig are the bandwidths' values
// (read and checked by the caller), grad_weights the upstream dL/dT_k, empty for the forward only.
MMDResult mmd_gemm_tiles_cpu(const at::Tensor& x, const at::Tensor& y, const std::vector<double>& sig, bool unbiased,
                             const std::vector<double>& grad_weights);

}  // namespace pytl
