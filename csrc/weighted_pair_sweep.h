// The tile sweep of weighted_pair_sweep.cpp (ATen ops on tiles of pairs: any device), for the kernels that
// register it: CUDA, and the CPU's route for small pooled batches of wide features (cpu/weighted_pairs_cpu.cpp).
#pragma once
#include <ATen/ATen.h>

namespace pytl {

// S (3, K) in the compute dtype (float32 for half inputs) and, with coefs, the gradients of sum coefs S.
struct WeightedPairTensors {
  at::Tensor sums;
  at::Tensor gx, gy, gxw, gyw, gsig;
};

// Arguments already checked; coefs undefined: the sums only. cross_only: the x-y block alone (rows 0 and 1 of S
// stay 0).
WeightedPairTensors weighted_pair_tiles(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                        const at::Tensor& y_weights, const at::Tensor& sigmas, const at::Tensor& coefs,
                                        bool cross_only = false);

// coefs (K,) of the x-y block as the (3, K) combination of the pair sums (rows 0 and 1 zero).
inline at::Tensor cross_block_coefs(const at::Tensor& coefs) {
  return at::cat({at::zeros({2, coefs.size(0)}, coefs.options()), coefs.unsqueeze(0)});
}

}  // namespace pytl
