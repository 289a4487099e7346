"""ctest helper: libpytl_ops.so (the CMake build) loads into Python with torch.ops.load_library and its
ops run. Does not import pytl (that would register the same ops a second time).

usage: python tests/cpp/load_library_check.py /path/to/libpytl_ops.so
"""

import sys

import torch


def main(path: str) -> int:
    torch.ops.load_library(path)
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 4, dtype=torch.float64) + 0.5
    sigmas = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    terms = torch.ops.pytl.mmd2_terms(x, y, sigmas, False)
    d_xx, d_yy, d_xy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    gammas = 1.0 / (2.0 * sigmas**2)
    want = torch.stack(
        [torch.exp(-g * d_xx).mean() + torch.exp(-g * d_yy).mean() - 2 * torch.exp(-g * d_xy).mean() for g in gammas]
    )
    torch.testing.assert_close(terms, want, rtol=1e-9, atol=1e-11)
    terms.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    keys = [k for k in ("CPU", "CUDA", "Meta", "Autograd") if torch._C._dispatch_has_kernel_for_dispatch_key("pytl::mmd2_terms", k)]
    print(f"loaded {path}: pytl::mmd2_terms has kernels for {', '.join(keys)}")
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
