// Every pytl schema, in one place. Kernels live in cpu/, cuda/, meta.cpp; autograd in autograd.cpp.
#include <torch/library.h>

TORCH_LIBRARY(pytl, m) {
  // Per-bandwidth MMD statistics T_k (shape (K,), dtype of x) for the RBF kernels
  // exp(-||a-b||^2 / (2 sigma_k^2)); unbiased=true gives the U-statistic (needs n, m >= 2).
  // MMD^2 = sum_k w_k T_k is formed by the caller, so the weights get gradients for free.
  m.def("mmd2_terms(Tensor x, Tensor y, Tensor sigmas, bool unbiased) -> Tensor");
  // Gradients of sum_k grad_terms[k] * T_k with respect to x, y and sigmas.
  m.def(
      "mmd2_terms_backward(Tensor grad_terms, Tensor x, Tensor y, Tensor sigmas, bool unbiased)"
      " -> (Tensor, Tensor, Tensor)");
}
