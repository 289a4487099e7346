// Argument checks shared by every backend (CPU, CUDA, Meta): C++ callers get the same clear
// messages as Python users. Value checks on sigmas (positive, finite) need the data, so the
// CPU and CUDA kernels do those, not the Meta kernel.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "bandwidths.h"
#include "host_values.h"

namespace pytl {

inline void check_mmd_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
                             bool unbiased) {
  TORCH_CHECK(x.dim() == 2, "pytl.mmd2: x must be a 2-D tensor (n, d), got ", x.dim(), " dimensions");
  TORCH_CHECK(y.dim() == 2, "pytl.mmd2: y must be a 2-D tensor (m, d), got ", y.dim(), " dimensions");
  TORCH_CHECK(x.size(1) == y.size(1), "pytl.mmd2: x and y must have the same feature dimension, got x: ",
              x.sizes(), " and y: ", y.sizes());
  TORCH_CHECK(x.size(0) >= 1, "pytl.mmd2: x must have at least one row (got an empty x)");
  TORCH_CHECK(y.size(0) >= 1, "pytl.mmd2: y must have at least one row (got an empty y)");
  TORCH_CHECK(x.size(1) >= 1, "pytl.mmd2: x and y must have at least one feature column");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "pytl.mmd2: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "pytl.mmd2: x and y must have the same dtype, got ",
              x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(x.device() == y.device(), "pytl.mmd2: x and y must be on the same device, got ", x.device(),
              " and ", y.device());
  TORCH_CHECK(sigmas.dim() == 1 && sigmas.size(0) >= 1,
              "pytl.mmd2: sigmas must be a 1-D tensor of K >= 1 bandwidths, got shape ", sigmas.sizes());
  TORCH_CHECK(sigmas.size(0) <= kMaxBandwidths, "pytl.mmd2: at most ", kMaxBandwidths,
              " bandwidths are supported, got ", sigmas.size(0));
  TORCH_CHECK(at::isFloatingType(sigmas.scalar_type()),
              "pytl.mmd2: sigmas must be a floating-point tensor, got ", sigmas.scalar_type());
  TORCH_CHECK(sigmas.device() == x.device(), "pytl.mmd2: sigmas must be on the same device as x (",
              x.device(), "), got ", sigmas.device());
  if (unbiased) {
    TORCH_CHECK(x.size(0) >= 2 && y.size(0) >= 2,
                "pytl.mmd2: the unbiased estimator needs at least 2 rows in x and in y, got n=", x.size(0),
                ", m=", y.size(0));
  }
}

inline void check_mmd_backward_inputs(const at::Tensor& grad_terms, const at::Tensor& x, const at::Tensor& y,
                                      const at::Tensor& sigmas, bool unbiased) {
  check_mmd_inputs(x, y, sigmas, unbiased);
  TORCH_CHECK(grad_terms.dim() == 1 && grad_terms.size(0) == sigmas.size(0),
              "pytl.mmd2_terms_backward: grad_terms must have shape (K,) = (", sigmas.size(0), ",), got ",
              grad_terms.sizes());
  TORCH_CHECK(at::isFloatingType(grad_terms.scalar_type()),
              "pytl.mmd2_terms_backward: grad_terms must be floating point, got ", grad_terms.scalar_type());
  TORCH_CHECK(grad_terms.device() == x.device(), "pytl.mmd2_terms_backward: grad_terms must be on ",
              x.device(), ", got ", grad_terms.device());
}

// Bandwidths must be positive and finite. Reads the values (on CUDA this costs one sync) and returns
// them, so that the caller need not read them again.
inline std::vector<double> check_sigma_values(const at::Tensor& sigmas) {
  std::vector<double> s = host_doubles(sigmas);
  for (size_t k = 0; k < s.size(); ++k) {
    TORCH_CHECK(std::isfinite(s[k]) && s[k] > 0.0,
                "pytl.mmd2: every bandwidth in sigmas must be positive and finite, got sigmas[", k, "] = ", s[k]);
  }
  return s;
}

// Weights of the bandwidths: one per bandwidth; with check_values, non-negative and finite.
inline void check_weights(const at::Tensor& weights, const at::Tensor& sigmas, bool check_values) {
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == sigmas.size(0),
              "pytl.mmd2: weights must be a 1-D tensor with one entry per bandwidth (", sigmas.size(0),
              "), got shape ", weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "pytl.mmd2: weights must be floating point, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.device() == sigmas.device(), "pytl.mmd2: weights must be on ", sigmas.device(), ", got ",
              weights.device());
  if (!check_values) return;
  const std::vector<double> w = host_doubles(weights);
  for (size_t k = 0; k < w.size(); ++k) {
    TORCH_CHECK(std::isfinite(w[k]) && w[k] >= 0.0, "pytl.mmd2: weights must be non-negative and finite, got weights[",
                k, "] = ", w[k]);
  }
}

// pytl.rbf_kernel_matmul(z, s, sigmas, weights): argument checks (every backend) and, with
// check_values, the value checks on sigmas and weights (they read the data).
inline void check_kernel_matmul_inputs(const at::Tensor& z, const at::Tensor& s, const at::Tensor& sigmas,
                                       const at::Tensor& weights, bool check_values) {
  constexpr const char* op = "pytl.rbf_kernel_matmul: ";
  TORCH_CHECK(z.dim() == 2, op, "z must be a 2-D tensor (N, d), got ", z.dim(), " dimensions");
  TORCH_CHECK(s.dim() == 2, op, "s must be a 2-D tensor (N, P), got ", s.dim(), " dimensions");
  TORCH_CHECK(s.size(0) == z.size(0), op, "s must have one row per row of z (N = ", z.size(0), "), got s: ",
              s.sizes());
  TORCH_CHECK(z.size(1) >= 1, op, "z must have at least one feature column");
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), op, "z must be a floating-point tensor, got ", z.scalar_type());
  TORCH_CHECK(s.scalar_type() == z.scalar_type(), op, "s must have the dtype of z (", z.scalar_type(), "), got ",
              s.scalar_type());
  TORCH_CHECK(s.device() == z.device(), op, "z and s must be on the same device, got ", z.device(), " and ",
              s.device());
  TORCH_CHECK(sigmas.dim() == 1 && sigmas.size(0) >= 1, op,
              "sigmas must be a 1-D tensor of K >= 1 bandwidths, got shape ", sigmas.sizes());
  TORCH_CHECK(sigmas.size(0) <= kMaxBandwidths, op, "at most ", kMaxBandwidths, " bandwidths are supported, got ",
              sigmas.size(0));
  TORCH_CHECK(at::isFloatingType(sigmas.scalar_type()), op, "sigmas must be a floating-point tensor, got ",
              sigmas.scalar_type());
  TORCH_CHECK(sigmas.device() == z.device(), op, "sigmas must be on the same device as z (", z.device(), "), got ",
              sigmas.device());
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == sigmas.size(0), op,
              "weights must be a 1-D tensor with one entry per bandwidth (", sigmas.size(0), "), got shape ",
              weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), op, "weights must be floating point, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.device() == z.device(), op, "weights must be on the same device as z (", z.device(),
              "), got ", weights.device());
  if (!check_values) return;
  const std::vector<double> sv = host_doubles(sigmas), wv = host_doubles(weights);
  for (size_t k = 0; k < sv.size(); ++k) {
    TORCH_CHECK(std::isfinite(sv[k]) && sv[k] > 0.0, op,
                "every bandwidth in sigmas must be positive and finite, got sigmas[", k, "] = ", sv[k]);
    TORCH_CHECK(std::isfinite(wv[k]) && wv[k] >= 0.0, op, "weights must be non-negative and finite, got weights[",
                k, "] = ", wv[k]);
  }
}

}  // namespace pytl
