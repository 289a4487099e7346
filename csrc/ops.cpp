// Every pytl schema, in one place. Kernels live in cpu/, cuda/, meta.cpp and composite.cpp;
// autograd in autograd.cpp.
#include <torch/library.h>

TORCH_LIBRARY(pytl, m) {
  // Per-bandwidth MMD statistics T_k (shape (K,), dtype of x) for the RBF kernels
  // exp(-||a-b||^2 / (2 sigma_k^2)); unbiased=true gives the U-statistic (needs n, m >= 2).
  m.def("mmd2_terms(Tensor x, Tensor y, Tensor sigmas, bool unbiased) -> Tensor");
  // Gradients of sum_k grad_terms[k] * T_k with respect to x, y and sigmas.
  m.def(
      "mmd2_terms_backward(Tensor grad_terms, Tensor x, Tensor y, Tensor sigmas, bool unbiased)"
      " -> (Tensor, Tensor, Tensor)");
  // T and the gradients of sum_k grad_terms[k] * T_k, in one sweep over the pairs where the
  // backend can (CPU); elsewhere the composite of the two ops above.
  m.def(
      "mmd2_terms_and_grad(Tensor grad_terms, Tensor x, Tensor y, Tensor sigmas, bool unbiased)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // MMD^2 = sum_k weights[k] T_k (0-dim, dtype of x). Its autograd computes the gradients in
  // the forward sweep when an input needs them, so the backward is a multiply.
  m.def("mmd2(Tensor x, Tensor y, Tensor sigmas, Tensor weights, bool unbiased) -> Tensor");
  // K(z, z) @ s for z (N, d), s (N, P), K(a, b) = sum_k weights[k] exp(-||a-b||^2 / (2 sigmas[k]^2)),
  // diagonal included, without building the N x N matrix. (N, P) in z's dtype; no gradient.
  m.def("rbf_kernel_matmul(Tensor z, Tensor s, Tensor sigmas, Tensor weights) -> Tensor");
  // sigma_0 = sqrt(median / 2) over the squared distances of `points` well-spread pooled rows of (x, y)
  // (0-dim, float32 for half inputs, else x's dtype; detached). pytl.bandwidths chooses `points`.
  m.def("median_heuristic(Tensor x, Tensor y, int points) -> Tensor");
}
