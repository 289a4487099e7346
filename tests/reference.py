"""Independent float64 references for the MMD statistics, by a different formula from the kernels:
explicit sums over all pair differences (no tiling, no exp tricks, no centring)."""

import torch


def pair_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances by broadcasting the differences, in float64."""
    a, b = a.double(), b.double()
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def terms_reference(x, y, sigmas, unbiased):
    """T_k per bandwidth (float64) from the textbook definition of the V/U statistics."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).to(x.device)
    n, m = x.shape[0], y.shape[0]
    out = []
    for s in sig:
        kxx = torch.exp(-pair_sq_dists(x, x) / (2 * s * s))
        kyy = torch.exp(-pair_sq_dists(y, y) / (2 * s * s))
        kxy = torch.exp(-pair_sq_dists(x, y) / (2 * s * s))
        if unbiased:
            txx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            tyy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        else:
            txx, tyy = kxx.sum() / n**2, kyy.sum() / m**2
        out.append(txx + tyy - 2 * kxy.sum() / (n * m))
    return torch.stack(out)


def mmd2_reference64(x, y, sigmas, weights=None, unbiased=False):
    terms = terms_reference(x, y, sigmas, unbiased)
    w = torch.full_like(terms, 1 / terms.numel()) if weights is None else torch.as_tensor(weights, dtype=torch.float64).to(terms.device)
    return (w * terms).sum()
