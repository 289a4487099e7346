// MMD^2 = sum_k w_k T_k, shared by the composite kernel and the autograd forward.
#pragma once
#include <ATen/ATen.h>

namespace pytl {

// t in the given dtype; t itself when it already is (a no-op `to` would still be dispatched,
// and opcheck's schema check rejects ops that hand back their input).
inline at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// Summed in the weights' dtype (float32 for half inputs), returned in out_dtype.
inline at::Tensor weighted_sum(const at::Tensor& terms, const at::Tensor& weights, at::ScalarType out_dtype) {
  return as_dtype((weights * as_dtype(terms, weights.scalar_type())).sum(), out_dtype);
}

}  // namespace pytl
