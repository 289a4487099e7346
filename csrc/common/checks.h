// Argument checks of the pytl ops, shared by every backend (CPU, CUDA, Meta). Each op call checks its
// arguments once, in the kernel the call reaches (the autograd and composite kernels of mmd2 check only
// the weights, which no kernel below them sees). Value checks (sigmas positive, weights non-negative)
// read the data, so the CPU and CUDA kernels do them, not the Meta kernel; they return the values they
// read, so that a kernel reads them once.
//
// CUDA tensors are the exception to value checks on the host: see "Value checks on CUDA" below.
//
// The exception says what kind of mistake it is, in Python and in C++ alike: TORCH_CHECK_TYPE
// (TypeError, c10::TypeError) for a wrong dtype, TORCH_CHECK_VALUE (ValueError, c10::ValueError) for a
// wrong shape, value or device. Both are c10::Error. Every message names the argument.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "bandwidths.h"
#include "host_values.h"

namespace pytl {

constexpr const char* kMMDOp = "pytl.mmd2: ";
constexpr const char* kKernelMatmulOp = "pytl.rbf_kernel_matmul: ";

// sigmas: a 1-D floating-point tensor of 1..kMaxBandwidths bandwidths on `device` (the samples' device).
inline void check_sigmas(const at::Tensor& sigmas, const at::Device& device, const char* sample, const char* op) {
  TORCH_CHECK_VALUE(sigmas.dim() == 1 && sigmas.size(0) >= 1, op,
                    "sigmas must be a 1-D tensor of K >= 1 bandwidths, got shape ", sigmas.sizes());
  TORCH_CHECK_VALUE(sigmas.size(0) <= kMaxBandwidths, op, "sigmas may hold at most ", kMaxBandwidths,
                    " bandwidths, got ", sigmas.size(0));
  TORCH_CHECK_TYPE(at::isFloatingType(sigmas.scalar_type()), op, "sigmas must be a floating-point tensor, got ",
                   sigmas.scalar_type());
  TORCH_CHECK_VALUE(sigmas.device() == device, op, "sigmas must be on the same device as ", sample, " (", device,
                    "), got ", sigmas.device());
}

// weights: one non-negative weight per bandwidth, floating point, on `device`. The count is compared
// only with a 1-D sigmas: a malformed sigmas is reported by its own check.
inline void check_weights(const at::Tensor& weights, const at::Tensor& sigmas, const at::Device& device,
                          const char* sample, const char* op) {
  TORCH_CHECK_VALUE(weights.dim() == 1, op, "weights must be a 1-D tensor with one entry per bandwidth, got shape ",
                    weights.sizes());
  if (sigmas.dim() == 1) {
    TORCH_CHECK_VALUE(weights.size(0) == sigmas.size(0), op, "weights must have one entry per bandwidth (K = ",
                      sigmas.size(0), "), got ", weights.size(0));
  }
  TORCH_CHECK_TYPE(at::isFloatingType(weights.scalar_type()), op, "weights must be a floating-point tensor, got ",
                   weights.scalar_type());
  TORCH_CHECK_VALUE(weights.device() == device, op, "weights must be on the same device as ", sample, " (", device,
                    "), got ", weights.device());
}

// Two samples x (n, d) and y (m, d): non-empty, the same features, one floating-point dtype and device.
inline void check_sample_pair(const at::Tensor& x, const at::Tensor& y, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, "x must be a 2-D tensor (n, d), got shape ", x.sizes());
  TORCH_CHECK_VALUE(y.dim() == 2, op, "y must be a 2-D tensor (m, d), got shape ", y.sizes());
  TORCH_CHECK_VALUE(x.size(1) == y.size(1), op, "x and y must have the same number of features, got x: ", x.sizes(),
                    " and y: ", y.sizes());
  TORCH_CHECK_VALUE(x.size(0) >= 1, op, "x is empty: it needs at least one row (sample), got shape ", x.sizes());
  TORCH_CHECK_VALUE(y.size(0) >= 1, op, "y is empty: it needs at least one row (sample), got shape ", y.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 1, op, "x and y must have at least one feature column");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op,
                   "x must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", x.scalar_type());
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type(), op, "x and y must have the same dtype, got ", x.scalar_type(),
                   " and ", y.scalar_type());
  TORCH_CHECK_VALUE(x.device() == y.device(), op, "x and y must be on the same device, got ", x.device(), " and ",
                    y.device());
}

// x (n, d) and y (m, d), one floating-point dtype and device, and the bandwidths.
inline void check_mmd_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  const char* op = kMMDOp;
  check_sample_pair(x, y, op);
  check_sigmas(sigmas, x.device(), "x", op);
  if (unbiased) {
    TORCH_CHECK_VALUE(x.size(0) >= 2 && y.size(0) >= 2, op,
                      "the unbiased estimator needs at least 2 samples (rows) in x and in y, got n=", x.size(0),
                      ", m=", y.size(0));
  }
}

inline void check_mmd_backward_inputs(const at::Tensor& grad_terms, const at::Tensor& x, const at::Tensor& y,
                                      const at::Tensor& sigmas, bool unbiased) {
  check_mmd_inputs(x, y, sigmas, unbiased);
  constexpr const char* op = "pytl.mmd2_terms_backward: ";
  TORCH_CHECK_VALUE(grad_terms.dim() == 1 && grad_terms.size(0) == sigmas.size(0), op,
                    "grad_terms must have shape (K,) = (", sigmas.size(0), ",), got ", grad_terms.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_terms.scalar_type()), op, "grad_terms must be floating point, got ",
                   grad_terms.scalar_type());
  TORCH_CHECK_VALUE(grad_terms.device() == x.device(), op, "grad_terms must be on ", x.device(), ", got ",
                    grad_terms.device());
}

// pytl.mmd2's weights, the one argument that no kernel below mmd2 sees (shape, dtype, device). Compared
// with x's device, not the sigmas': a misplaced sigmas is then reported as such, by the kernel's checks.
inline void check_mmd_weights(const at::Tensor& weights, const at::Tensor& sigmas, const at::Tensor& x) {
  check_weights(weights, sigmas, x.device(), "x", kMMDOp);
}

// pytl.rbf_kernel_matmul(z, s, sigmas, weights): shapes, dtypes and devices.
inline void check_kernel_matmul_inputs(const at::Tensor& z, const at::Tensor& s, const at::Tensor& sigmas,
                                       const at::Tensor& weights) {
  const char* op = kKernelMatmulOp;
  TORCH_CHECK_VALUE(z.dim() == 2, op, "z must be a 2-D tensor (N, d), got shape ", z.sizes());
  TORCH_CHECK_VALUE(s.dim() == 2, op, "s must be a 2-D tensor (N, P), got shape ", s.sizes());
  TORCH_CHECK_VALUE(s.size(0) == z.size(0), op, "s must have one row per row of z (N = ", z.size(0), "), got s: ",
                    s.sizes());
  TORCH_CHECK_VALUE(z.size(1) >= 1, op, "z must have at least one feature column");
  TORCH_CHECK_TYPE(at::isFloatingType(z.scalar_type()), op,
                   "z must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", z.scalar_type());
  TORCH_CHECK_TYPE(s.scalar_type() == z.scalar_type(), op, "s must have the dtype of z (", z.scalar_type(), "), got ",
                   s.scalar_type());
  TORCH_CHECK_VALUE(s.device() == z.device(), op, "z and s must be on the same device, got ", z.device(), " and ",
                    s.device());
  check_sigmas(sigmas, z.device(), "z", op);
  check_weights(weights, sigmas, z.device(), "z", op);
}

// The bandwidths' values, read to the host once (on CUDA: one sync) and checked: positive and finite.
inline std::vector<double> check_sigma_values(const at::Tensor& sigmas, const char* op = kMMDOp) {
  std::vector<double> s = host_doubles(sigmas);
  for (size_t k = 0; k < s.size(); ++k) {
    TORCH_CHECK_VALUE(std::isfinite(s[k]) && s[k] > 0.0, op,
                      "every bandwidth in sigmas must be positive and finite, got sigmas[", k, "] = ", s[k]);
  }
  return s;
}

// The weights' values, read to the host once and checked: non-negative and finite.
inline std::vector<double> check_weight_values(const at::Tensor& weights, const char* op = kMMDOp) {
  std::vector<double> w = host_doubles(weights);
  for (size_t k = 0; k < w.size(); ++k) {
    TORCH_CHECK_VALUE(std::isfinite(w[k]) && w[k] >= 0.0, op, "weights must be non-negative and finite, got weights[",
                      k, "] = ", w[k]);
  }
  return w;
}

// ---- Value checks on CUDA
// A call on CUDA tensors must not wait for the GPU (a training step stays asynchronous and can be captured
// in a CUDA graph), so the values of CUDA sigmas and weights are not read to the host: a device-side
// assertion checks them (for the sigmas of the MMD ops, bandwidth_constants_kernel in cuda/mmd_kernels.cuh;
// elsewhere the functions below). A bad value makes the GPU print the assertion with its message
// ("pytl.mmd2: every bandwidth in sigmas must be ..."), and nothing queued after it runs: the next call that waits for the GPU (loss.item(),
// torch.cuda.synchronize(), a copy to the CPU) raises RuntimeError "CUDA error: device-side assert
// triggered", and the process's CUDA context stays unusable, as after any device-side assertion. Never a
// silent wrong result. Shapes, dtypes and devices are still checked at once, on the host.

// Asserts on the device that every element of the bool tensor `ok` holds. Dispatched below any Python mode,
// as host_doubles is, so that a TorchDispatchMode sees the op, not this check's helpers.
inline void assert_all_on_device(const at::Tensor& ok, const std::string& msg) {
  c10::impl::ExcludeDispatchKeyGuard no_python(
      c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
  at::_assert_async(ok.all(), msg);
}

// check_sigma_values on the device: positive and finite (NaN fails both comparisons).
inline void assert_sigma_values(const at::Tensor& sigmas, const char* op) {
  const at::Tensor s = sigmas.detach();
  assert_all_on_device(at::logical_and(s > 0, s < std::numeric_limits<double>::infinity()),
                       c10::str(op, "every bandwidth in sigmas must be positive and finite"));
}

// check_weight_values on the device: non-negative and finite.
inline void assert_weight_values(const at::Tensor& weights, const char* op) {
  const at::Tensor w = weights.detach();
  assert_all_on_device(at::logical_and(w >= 0, w < std::numeric_limits<double>::infinity()),
                       c10::str(op, "weights must be non-negative and finite"));
}

// pytl.mmd2's weight values, checked where they live: CUDA on the device, any other device on the host
// (ValueError at once, as before).
inline void check_mmd_weight_values(const at::Tensor& weights) {
  if (weights.is_cuda()) {
    assert_weight_values(weights, kMMDOp);
  } else {
    check_weight_values(weights);
  }
}

}  // namespace pytl
