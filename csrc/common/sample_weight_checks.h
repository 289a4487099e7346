// Argument checks of the sample-weighted ops (pytl.weighted_pair_sum and the ops built on it:
// weighted_mmd2, class_conditional_mmd2). Same conventions as checks.h: TypeError for a wrong dtype,
// ValueError for a wrong shape, value or device, every message names the argument; values are read on the
// host except on CUDA, where a device-side assertion checks them without waiting for the GPU.
#pragma once
#include <ATen/ATen.h>

#include <limits>
#include <string>

#include "checks.h"

namespace pytl {

constexpr const char* kWeightedPairOp = "pytl.weighted_pair_sum: ";
constexpr const char* kClassConditionalOp = "pytl.class_conditional_mmd2: ";

// A (rows, C) matrix of sample weights (one column per class; C = 1 for plain sample weights) for the
// sample `sample` of `rows` rows: floating point, on `device`, C >= 1 columns.
inline void check_weight_matrix(const at::Tensor& w, int64_t rows, const at::Device& device, const char* name,
                                const char* sample, const char* op) {
  TORCH_CHECK_VALUE(w.dim() == 2, op, name, " must be a 2-D tensor (", rows, ", C) with one row per row of ", sample,
                    ", got shape ", w.sizes());
  TORCH_CHECK_VALUE(w.size(0) == rows, op, name, " must have one row per row of ", sample, " (", rows, "), got shape ",
                    w.sizes());
  TORCH_CHECK_VALUE(w.size(1) >= 1, op, name, " must have at least one column, got shape ", w.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), op, name, " must be a floating-point tensor, got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.device() == device, op, name, " must be on the same device as ", sample, " (", device, "), got ",
                    w.device());
}

// coefs (3, K): the combination of the pair sums S[b, k] (blocks x-x, y-y, x-y) that weighted_pair_sum returns.
inline void check_pair_coefs(const at::Tensor& coefs, const at::Tensor& sigmas, const at::Tensor& x,
                             const char* op = kWeightedPairOp) {
  TORCH_CHECK_VALUE(coefs.dim() == 2 && coefs.size(0) == 3 && coefs.size(1) == sigmas.size(0), op,
                    "coefs must have shape (3, K) = (3, ", sigmas.size(0), "), got ", coefs.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(coefs.scalar_type()), op, "coefs must be a floating-point tensor, got ",
                   coefs.scalar_type());
  TORCH_CHECK_VALUE(coefs.device() == x.device(), op, "coefs must be on the same device as x (", x.device(), "), got ",
                    coefs.device());
}

// weighted_pair_sum(x, y, x_weights, y_weights, sigmas, coefs): shapes, dtypes and devices (coefs: null for
// the ops without it).
inline void check_weighted_pair_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                       const at::Tensor& y_weights, const at::Tensor& sigmas,
                                       const at::Tensor* coefs_or_null, const char* op = kWeightedPairOp) {
  check_sample_pair(x, y, op);
  check_weight_matrix(x_weights, x.size(0), x.device(), "x_weights", "x", op);
  check_weight_matrix(y_weights, y.size(0), x.device(), "y_weights", "y", op);
  TORCH_CHECK_VALUE(x_weights.size(1) == y_weights.size(1), op,
                    "x_weights and y_weights must have the same number of columns (classes), got ", x_weights.sizes(),
                    " and ", y_weights.sizes());
  check_sigmas(sigmas, x.device(), "x", op);
  if (coefs_or_null != nullptr) check_pair_coefs(*coefs_or_null, sigmas, x, op);
}

// cross_pair_sums(x, y, x_weights, y_weights, sigmas) and its _and_grad with coefs (K,): the weighted pair
// sums' shapes, dtypes and devices (the weights may have either sign: the ring's blocks weigh y rows by -1/m).
constexpr const char* kCrossPairOp = "pytl.cross_pair_sums: ";
inline void check_cross_pair_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                                    const at::Tensor& y_weights, const at::Tensor& sigmas,
                                    const at::Tensor* coefs_or_null) {
  const char* op = kCrossPairOp;
  check_weighted_pair_inputs(x, y, x_weights, y_weights, sigmas, nullptr, op);
  if (coefs_or_null == nullptr) return;
  const at::Tensor& coefs = *coefs_or_null;
  TORCH_CHECK_VALUE(coefs.dim() == 1 && coefs.size(0) == sigmas.size(0), op, "coefs must have shape (K,) = (",
                    sigmas.size(0), ",), got ", coefs.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(coefs.scalar_type()), op, "coefs must be a floating-point tensor, got ",
                   coefs.scalar_type());
  TORCH_CHECK_VALUE(coefs.device() == x.device(), op, "coefs must be on the same device as x (", x.device(),
                    "), got ", coefs.device());
}

// Sample weights' values: non-negative and finite (signed: finite, of either sign). On the host (ValueError at
// once), on CUDA a device assertion.
inline void check_sample_weight_values(const at::Tensor& w, const char* name, const char* op, bool signed_ok = false) {
  const at::Tensor v = w.detach();
  if (!has_readable_data(v)) return;  // traced (torch.compile, meta): no values to check
  const std::string msg = c10::str(op, name, signed_ok ? " must be finite" : " must be non-negative and finite");
  constexpr double inf = std::numeric_limits<double>::infinity();
  auto good = [&](const at::Tensor& t) {
    return signed_ok ? at::logical_and(t > -inf, t < inf) : at::logical_and(t >= 0, t < inf);
  };
  if (v.is_cuda()) {
    assert_all_on_device(good(v), msg);
    return;
  }
  c10::impl::ExcludeDispatchKeyGuard no_python(
      c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
  const at::Tensor bad = at::logical_not(good(v));
  if (bad.any().item<bool>()) {
    const int64_t at_flat = bad.reshape(-1).nonzero().select(1, 0).select(0, 0).item<int64_t>();
    const double value = v.reshape(-1).select(0, at_flat).item<double>();
    TORCH_CHECK_VALUE(false, msg, ", got ", value, " at flat index ", at_flat);
  }
}

// Plain sample weights (n,) for pytl.mmd2: 1-D, one per row of the sample, floating point, on its device.
inline void check_sample_weights(const at::Tensor& w, int64_t rows, const at::Device& device, const char* name,
                                 const char* sample) {
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == rows, kMMDOp, name, " must be a 1-D tensor with one weight per row of ",
                    sample, " (", rows, "), got shape ", w.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), kMMDOp, name, " must be a floating-point tensor, got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.device() == device, kMMDOp, name, " must be on the same device as ", sample, " (", device,
                    "), got ", w.device());
}

// A condition on values (e.g. "some weight is positive") that must hold: checked where the values live.
inline void check_holds(const at::Tensor& ok, const std::string& msg) {
  if (!has_readable_data(ok)) return;  // traced (torch.compile, meta): no values to check
  if (ok.is_cuda()) {
    assert_all_on_device(ok, msg);
    return;
  }
  c10::impl::ExcludeDispatchKeyGuard no_python(
      c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
  TORCH_CHECK_VALUE(ok.all().item<bool>(), msg);
}

}  // namespace pytl
