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

  // ---- Sample-weighted pairs (weighted_pair_sweep.cpp). x_weights (n, C), y_weights (m, C): non-negative
  // weight rows a_i, b_j (C = 1 for sample weights, C classes for the class-conditional MMD). S (3, K):
  // S[0,k] = sum_ij (a_i.a_j) e_k(x_i,x_j), S[1,k] = the same over y, S[2,k] = sum_ij (a_i.b_j) e_k(x_i,y_j),
  // e_k(p, q) = exp(-||p-q||^2 / (2 sigmas[k]^2)), all ordered pairs, diagonal included; dtype of x
  // (float32 for half inputs).
  m.def("weighted_pair_sums(Tensor x, Tensor y, Tensor x_weights, Tensor y_weights, Tensor sigmas) -> Tensor");
  // S and the gradients of sum_{b,k} coefs[b,k] S[b,k] to x, y, x_weights, y_weights, sigmas: one sweep.
  m.def(
      "weighted_pair_sums_and_grad(Tensor coefs, Tensor x, Tensor y, Tensor x_weights, Tensor y_weights,"
      " Tensor sigmas) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // sum_{b,k} coefs[b,k] S[b,k] (0-dim, dtype of x), differentiable in every argument; like mmd2, its
  // autograd computes the gradients in the forward sweep when an input needs them.
  m.def("weighted_pair_sum(Tensor x, Tensor y, Tensor x_weights, Tensor y_weights, Tensor sigmas, Tensor coefs) -> Tensor");
  // MMD^2 = sum_k weights[k] T_k with sample weights x_weights (n,), y_weights (m,) (normalised to sum 1):
  // biased T_k = a'Kxx a + b'Kyy b - 2 a'Kxy b; unbiased excludes the diagonal and renormalises the self
  // terms by 1 - sum a_i^2 (the weighted U-statistic; uniform weights give the usual one).
  m.def(
      "weighted_mmd2(Tensor x, Tensor y, Tensor sigmas, Tensor weights, Tensor x_weights, Tensor y_weights,"
      " bool unbiased) -> Tensor");
  // LMMD = sum_c MMD^2_c (biased), the class-c weights x_probs[:, c] / sum_i x_probs[i, c] (and the same for
  // y): x_probs (n, C) one-hot source labels or probabilities, y_probs (m, C) target probabilities. A class
  // with no weight in x or in y contributes 0.
  m.def(
      "class_conditional_mmd2(Tensor x, Tensor y, Tensor x_probs, Tensor y_probs, Tensor sigmas, Tensor weights)"
      " -> Tensor");

  // ---- The x-y block alone (the blocks between two shards of a ring exchange, pytl.ring_mmd): with weight rows
  // of either sign, S (K,) = sum_{i, j} (a_i . b_j) e_k(x_i, y_j) in the compute dtype (float32 for half inputs).
  m.def("cross_pair_sums(Tensor x, Tensor y, Tensor x_weights, Tensor y_weights, Tensor sigmas) -> Tensor");
  // S and the gradients of sum_k coefs[k] S[k] (coefs (K,)) to x, y, x_weights, y_weights, sigmas: one sweep.
  m.def(
      "cross_pair_sums_and_grad(Tensor coefs, Tensor x, Tensor y, Tensor x_weights, Tensor y_weights,"
      " Tensor sigmas) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // ---- Random Fourier features (random_features.cpp). x (n, d), frequencies W (F, d), phases u (F,):
  // column sums over the rows of cos(W x_i + u) (row 0) and, with squares, cos^2(W x_i + u) (row 1): (1, F) or
  // (2, F), float64, streamed over row tiles (never n x F). Differentiable in x only.
  m.def("rff_sums(Tensor x, Tensor frequencies, Tensor phases, bool squares=False) -> Tensor");
  // The gradient to x of sum_{r,f} grad[r, f] * rff_sums(x, W, u)[r, f] (x's shape and dtype).
  m.def("rff_sums_backward(Tensor grad, Tensor x, Tensor frequencies, Tensor phases) -> Tensor");
}
