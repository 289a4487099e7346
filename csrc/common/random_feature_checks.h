// Argument checks of the random Fourier feature ops (random_features.cpp), shared by the CPU/CUDA kernel and
// the Meta kernel. Shapes, dtypes and devices only: the values are random draws the caller made.
#pragma once
#include <ATen/ATen.h>

namespace pytl {

constexpr const char* kRandomFeatureOp = "pytl.rff_sums: ";

// x (n, d) floating point; frequencies (F, d) and phases (F,) floating point on x's device.
inline void check_random_feature_inputs(const at::Tensor& x, const at::Tensor& frequencies, const at::Tensor& phases) {
  const char* op = kRandomFeatureOp;
  TORCH_CHECK_VALUE(x.dim() == 2, op, "x must be a 2-D tensor (n, d), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 1, op, "x must have at least one feature column, got shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op,
                   "x must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", x.scalar_type());
  TORCH_CHECK_VALUE(frequencies.dim() == 2 && frequencies.size(1) == x.size(1) && frequencies.size(0) >= 1, op,
                    "frequencies must have shape (F, d) = (F, ", x.size(1), ") with F >= 1, got ", frequencies.sizes());
  TORCH_CHECK_VALUE(phases.dim() == 1 && phases.size(0) == frequencies.size(0), op,
                    "phases must have shape (F,) = (", frequencies.size(0), ",), got ", phases.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(frequencies.scalar_type()) && at::isFloatingType(phases.scalar_type()), op,
                   "frequencies and phases must be floating-point tensors, got ", frequencies.scalar_type(), " and ",
                   phases.scalar_type());
  TORCH_CHECK_VALUE(frequencies.device() == x.device() && phases.device() == x.device(), op,
                    "frequencies and phases must be on x's device (", x.device(), "), got ", frequencies.device(),
                    " and ", phases.device());
}

// The backward's incoming gradient: (1, F) or (2, F) (with the squares' row), floating point, on x's device.
inline void check_random_feature_grad(const at::Tensor& grad, const at::Tensor& frequencies, const at::Tensor& x) {
  constexpr const char* op = "pytl.rff_sums_backward: ";
  TORCH_CHECK_VALUE(grad.dim() == 2 && (grad.size(0) == 1 || grad.size(0) == 2) && grad.size(1) == frequencies.size(0),
                    op, "grad must have shape (1, F) or (2, F) with F = ", frequencies.size(0), ", got ", grad.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, "grad must be floating point, got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == x.device(), op, "grad must be on ", x.device(), ", got ", grad.device());
}

}  // namespace pytl
