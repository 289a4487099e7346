"""Sample-weighted and class-conditional MMD (pytl.mmd2's x_weights/y_weights, pytl.class_conditional_mmd2):
values and gradients against float64 references computed class by class from the definitions, the
registration (opcheck, gradcheck, torch.compile), determinism, and bad weights.

Every test body runs on each available device (conftest.device); references are computed on the CPU.
"""

import random

import pytest
import torch

import pytl
from pytl.testing import (class_conditional_mmd2_naive, class_conditional_mmd2_reference64, make_pair,
                          weighted_mmd2_reference64)

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
GTOL = {torch.float32: dict(rtol=1e-3, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-12)}


def _memberships(n, classes, kind, seed, empty=()):
    """(n, C) source memberships: one-hot labels or softmax probabilities; classes in `empty` get no weight."""
    g = torch.Generator().manual_seed(seed)
    if kind == "onehot":
        allowed = [c for c in range(classes) if c not in empty]
        labels = torch.tensor(allowed)[torch.randint(len(allowed), (n,), generator=g)]
        p = torch.nn.functional.one_hot(labels, classes).double()
    else:
        p = torch.softmax(2 * torch.randn(n, classes, generator=g, dtype=torch.float64), 1)
        p[:, list(empty)] = 0
    return p


def _cmmd_grid():
    """A seeded sample of (n, m, d, C, source kind, empty classes, dtype): classes 2..64, n != m, classes
    empty in a batch, sizes past one tile (512 rows on the CPU)."""
    rng = random.Random(16)
    cases = []
    for dtype in (torch.float32, torch.float64):
        for _ in range(5):
            C = rng.choice([2, 3, 10, 31, 64])
            n, m = rng.choice([3, 17, 64, 130]), rng.choice([5, 40, 99])
            empty = tuple(rng.sample(range(C), k=min(C - 1, rng.choice([0, 1, 2]))))
            cases.append((n, m, rng.choice([1, 4, 33]), C, rng.choice(["onehot", "probs"]), empty, dtype))
    cases += [(700, 530, 5, 10, "onehot", (3,), torch.float64), (2, 1, 3, 64, "probs", (), torch.float64)]
    return cases


@pytest.mark.parametrize("n,m,d,C,kind,empty,dtype", _cmmd_grid())
def test_class_conditional_matches_float64_reference(device, n, m, d, C, kind, empty, dtype):
    x, y = make_pair(n, m, d, dtype, device, seed=n + m + C)
    xp = _memberships(n, C, kind, seed=C, empty=empty)
    yp = _memberships(m, C, "probs", seed=C + 1)
    sig = torch.tensor([0.5, 1.5, 4.0], dtype=torch.float64) * max(1.0, d**0.5)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    xr = x.clone().requires_grad_()
    ypr = yp.to(device=device, dtype=dtype).requires_grad_()
    got = pytl.class_conditional_mmd2(xr, y, xp.to(device=device, dtype=dtype), ypr, sig.to(device, dtype),
                                      w.to(device, dtype))
    gx, gyp = torch.autograd.grad(got, [xr, ypr])
    x64 = x.detach().cpu().double().requires_grad_()
    yp64 = yp.clone().requires_grad_()
    want = class_conditional_mmd2_reference64(x64, y.cpu().double(), xp, yp64, sig, w)
    wx, wyp = torch.autograd.grad(want, [x64, yp64])
    assert got.dim() == 0 and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])
    scale = max(wx.abs().max().item(), 1e-12)
    torch.testing.assert_close(gx.cpu().double(), wx, rtol=GTOL[dtype]["rtol"], atol=GTOL[dtype]["atol"] * scale)
    # a lone target row's weight is p / p = 1: its gradient is 0, computed as g / p - g p / p^2 (rounding ~ g / p)
    floor = (1e-9 if dtype == torch.float64 else 1e-5) * (m == 1)
    scale = max(wyp.abs().max().item(), 1e-12)
    torch.testing.assert_close(gyp.cpu().double(), wyp, rtol=GTOL[dtype]["rtol"],
                               atol=GTOL[dtype]["atol"] * scale + floor)


def test_class_conditional_equals_the_sum_of_per_class_weighted_mmds(device):
    # a second formula: sum_c of pytl.mmd2 with the class column as sample weights
    x, y = make_pair(50, 44, 3, torch.float64, device, seed=5)
    xp, yp = _memberships(50, 4, "probs", 1).to(device), _memberships(44, 4, "probs", 2).to(device)
    sig = [0.8, 2.0]
    per_class = sum(pytl.mmd2(x, y, sig, x_weights=xp[:, c], y_weights=yp[:, c]) for c in range(4))
    torch.testing.assert_close(pytl.class_conditional_mmd2(x, y, xp, yp, sig), per_class, rtol=1e-12, atol=1e-14)


def test_integer_labels_are_one_hot_and_the_dsan_formula_agrees(device):
    x, y = make_pair(60, 35, 4, torch.float64, device, seed=7)
    labels = torch.randint(0, 6, (60,), generator=torch.Generator().manual_seed(0)).to(device)
    yp = _memberships(35, 6, "probs", 3).to(device)
    onehot = torch.nn.functional.one_hot(labels, 6).double()
    got = pytl.class_conditional_mmd2(x, y, labels, yp, [1.0, 2.0])
    torch.testing.assert_close(got, pytl.class_conditional_mmd2(x, y, onehot, yp, [1.0, 2.0]), rtol=0, atol=0)
    torch.testing.assert_close(got, class_conditional_mmd2_naive(x, y, onehot, yp, [1.0, 2.0]), rtol=1e-10, atol=1e-13)


def test_one_class_with_uniform_probabilities_is_the_plain_mmd(device):
    x, y = make_pair(31, 23, 5, torch.float64, device, seed=9)
    ones_x, ones_y = torch.ones(31, 1, dtype=torch.float64, device=device), torch.ones(23, 1, dtype=torch.float64,
                                                                                       device=device)
    torch.testing.assert_close(pytl.class_conditional_mmd2(x, y, ones_x, ones_y, [0.7, 3.0]),
                               pytl.mmd2(x, y, [0.7, 3.0]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_mmd2_matches_float64_reference(device, estimator, dtype):
    x, y = make_pair(45, 610, 6, dtype, device, seed=11)  # y spans two CPU tiles
    g = torch.Generator().manual_seed(4)
    xw, yw = torch.rand(45, generator=g, dtype=torch.float64), torch.rand(610, generator=g, dtype=torch.float64)
    sig = torch.tensor([0.6, 1.7, 5.0], dtype=torch.float64)
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    xr, sr = x.clone().requires_grad_(), sig.to(device, dtype).requires_grad_()
    xwr, wr = xw.to(device, dtype).requires_grad_(), w.to(device, dtype).requires_grad_()
    got = pytl.mmd2(xr, y, sr, wr, x_weights=xwr, y_weights=yw.to(device, dtype), estimator=estimator)
    grads = torch.autograd.grad(got, [xr, sr, xwr, wr])
    x64, s64, xw64 = x.detach().cpu().double().requires_grad_(), sig.clone().requires_grad_(), xw.clone().requires_grad_()
    w64 = w.clone().requires_grad_()
    want = weighted_mmd2_reference64(x64, y.cpu().double(), s64, w64, xw64, yw, estimator == "unbiased")
    wants = torch.autograd.grad(want, [x64, s64, xw64, w64])
    torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])
    for a, b in zip(grads, wants):
        scale = max(b.abs().max().item(), 1e-12)
        torch.testing.assert_close(a.cpu().double(), b, rtol=GTOL[dtype]["rtol"], atol=GTOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_uniform_weights_give_the_unweighted_mmd_and_no_weights_the_same_op(device, estimator):
    x, y = make_pair(40, 27, 3, torch.float64, device, seed=13)
    plain = pytl.mmd2(x, y, [0.9, 2.5], estimator=estimator)
    uniform = pytl.mmd2(x, y, [0.9, 2.5], x_weights=torch.full((40,), 3.0, dtype=torch.float64, device=device),
                        estimator=estimator)
    torch.testing.assert_close(uniform, plain, rtol=1e-12, atol=1e-14)
    # without weights the unweighted fused op runs, bit for bit
    sig = torch.tensor([0.9, 2.5], dtype=torch.float64, device=device)
    assert torch.equal(plain, torch.ops.pytl.mmd2(x, y, sig, torch.full_like(sig, 0.5), estimator == "unbiased"))


def test_all_weight_on_one_sample(device):
    # biased: the MMD between a point mass and y; unbiased: undefined, a clear error
    x, y = make_pair(20, 15, 2, torch.float64, device, seed=1)
    xw = torch.zeros(20, dtype=torch.float64, device=device)
    xw[7] = 2.0
    got = pytl.mmd2(x, y, [1.0], x_weights=xw)
    torch.testing.assert_close(got, pytl.mmd2(x[7:8], y, [1.0]), rtol=1e-12, atol=1e-14)
    if device == "cpu":
        with pytest.raises(ValueError, match="at least 2 samples with positive weight in x_weights"):
            pytl.mmd2(x, y, [1.0], x_weights=xw, estimator="unbiased")


def test_gradcheck_every_input_of_the_pair_sum(device):
    x, y = make_pair(9, 7, 3, torch.float64, device, seed=2)
    g = torch.Generator().manual_seed(0)
    xw = torch.rand(9, 3, generator=g, dtype=torch.float64).to(device)
    yw = torch.rand(7, 3, generator=g, dtype=torch.float64).to(device)
    sig = torch.tensor([0.7, 1.9], dtype=torch.float64, device=device)
    coefs = torch.randn(3, 2, generator=g, dtype=torch.float64).to(device)
    args = [t.clone().requires_grad_() for t in (x, y, xw, yw, sig, coefs)]
    assert torch.autograd.gradcheck(lambda *a: torch.ops.pytl.weighted_pair_sum(*a), args)
    xp, yp = (xw / xw.sum(1, keepdim=True)).requires_grad_(), (yw / yw.sum(1, keepdim=True)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, p, q: pytl.class_conditional_mmd2(a, b, p, q, [0.7, 1.9]),
                                    [x.clone().requires_grad_(), y.clone().requires_grad_(), xp, yp])
    for estimator in ("biased", "unbiased"):
        assert torch.autograd.gradcheck(
            lambda a, p, q: pytl.mmd2(a, y, [0.7, 1.9], x_weights=p, y_weights=q, estimator=estimator),
            [x.clone().requires_grad_(), xw[:, 0].clone().requires_grad_(), yw[:, 1].clone().requires_grad_()])


def test_opcheck(device):
    x, y = make_pair(12, 9, 4, torch.float64, device)
    g = torch.Generator().manual_seed(1)
    xw = torch.rand(12, 3, generator=g, dtype=torch.float64).to(device)
    yw = torch.rand(9, 3, generator=g, dtype=torch.float64).to(device)
    sig = torch.tensor([0.5, 2.0], dtype=torch.float64, device=device)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64, device=device)
    coefs = torch.tensor([[1.0, 0.5], [1.0, 0.5], [-2.0, -1.0]], dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.pytl.weighted_pair_sums.default, (x, y, xw, yw, sig))
    torch.library.opcheck(torch.ops.pytl.weighted_pair_sums_and_grad.default, (coefs, x, y, xw, yw, sig))
    xg = x.clone().requires_grad_()
    torch.library.opcheck(torch.ops.pytl.weighted_pair_sum.default, (xg, y, xw, yw, sig, coefs))
    for unbiased in (False, True):
        torch.library.opcheck(torch.ops.pytl.weighted_mmd2.default, (xg, y, sig, w, xw[:, 0], yw[:, 0], unbiased))
    torch.library.opcheck(torch.ops.pytl.class_conditional_mmd2.default, (xg, y, xw, yw, sig, w))


def test_torch_compile_fullgraph(device):
    x, y = make_pair(64, 48, 8, torch.float32, device)
    xp = _memberships(64, 5, "onehot", 0).float().to(device)
    yp = _memberships(48, 5, "probs", 1).float().to(device)
    yw = torch.rand(48, generator=torch.Generator().manual_seed(2)).to(device)
    x.requires_grad_()

    def loss(a, b):
        return pytl.class_conditional_mmd2(a, b, xp, yp, [1.0, 4.0]) + pytl.mmd2(a, b, [2.0], y_weights=yw)

    compiled = torch.compile(loss, fullgraph=True)
    got = compiled(x, y)
    (gx,) = torch.autograd.grad(got, x)
    want = loss(x, y)
    (wx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, wx)


def test_bitwise_deterministic(device):
    x, y = make_pair(600, 333, 17, torch.float32, device, seed=3)
    x.requires_grad_()
    xp = _memberships(600, 10, "onehot", 4).float().to(device)
    yp = _memberships(333, 10, "probs", 5).float().to(device)

    def run():
        out = pytl.class_conditional_mmd2(x, y, xp, yp, [1.0, 3.0, 9.0])
        (gx,) = torch.autograd.grad(out, x)
        return out, gx

    first = run()
    for _ in range(2):
        again = run()
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_loss_module_reductions(device):
    x, y = make_pair(40, 30, 3, torch.float64, device, seed=6)
    labels = torch.tensor([0, 1, 2] * 13 + [0], device=device)  # class 3 never appears in the source
    yp = _memberships(30, 4, "probs", 8).to(device)
    total = pytl.class_conditional_mmd2(x, y, labels, yp, [1.0, 2.0])
    torch.testing.assert_close(pytl.ClassConditionalMMDLoss([1.0, 2.0], reduction="sum")(x, y, labels, yp), total)
    torch.testing.assert_close(pytl.ClassConditionalMMDLoss([1.0, 2.0])(x, y, labels, yp), total / 3)
    with pytest.raises(ValueError, match="reduction"):
        pytl.ClassConditionalMMDLoss(reduction="max")


# Bad weights: a clear error naming the argument, from the op's C++ checks (the same for C++ callers).
BAD = [
    (dict(x_weights=[1.0, -1.0, 1.0, 1.0]), ValueError, "x_weights must be non-negative and finite"),
    (dict(y_weights=[1.0, float("nan"), 1.0]), ValueError, "y_weights must be non-negative and finite"),
    (dict(x_weights=[1.0, 1.0]), ValueError, "x_weights must be a 1-D tensor with one weight per row of x \\(4\\)"),
    (dict(y_weights=torch.zeros(3)), ValueError, "y_weights must not be all zero"),
    (dict(x_weights=torch.ones(4, dtype=torch.int64)), TypeError, "x_weights must be a floating-point tensor"),
    (dict(x_weights="heavy"), TypeError, "x_weights must be a tensor, sequence or array"),
]


@pytest.mark.parametrize("kwargs,exc,fragment", BAD)
def test_bad_sample_weights(kwargs, exc, fragment):
    x, y = torch.randn(4, 2), torch.randn(3, 2)
    with pytest.raises(exc, match=fragment):
        pytl.mmd2(x, y, [1.0], **kwargs)


def test_bad_class_memberships():
    x, y = torch.randn(4, 2), torch.randn(3, 2)
    yp = torch.full((3, 2), 0.5)
    cases = [
        ((torch.tensor([[1.0, -0.5]] * 4), yp), ValueError, "x_probs must be non-negative and finite"),
        ((torch.ones(4, 3), yp), ValueError, "x_probs and y_probs must have one column per class"),
        ((torch.ones(5, 2), yp), ValueError, "x_probs must have one row per row of x \\(4\\)"),
        ((torch.tensor([0, 1, 2, 1]), yp), ValueError, "integer labels must lie in \\[0, 2\\)"),
        ((torch.ones(4, 2), yp[:, 0]), ValueError, "y_probs must be a 2-D tensor"),
        ((torch.ones(4, 2), torch.full((3, 2), float("inf"))), ValueError, "y_probs must be non-negative and finite"),
    ]
    for (xp, ypp), exc, fragment in cases:
        with pytest.raises(exc, match=fragment):
            pytl.class_conditional_mmd2(x, y, xp, ypp, [1.0])
    # the op itself, as a C++ caller reaches it
    with pytest.raises(ValueError, match="pytl.weighted_pair_sum: coefs must have shape \\(3, K\\) = \\(3, 1\\)"):
        torch.ops.pytl.weighted_pair_sum(x, y, torch.ones(4, 1), torch.ones(3, 1), torch.ones(1), torch.ones(2, 1))
    with pytest.raises(ValueError, match="pytl.weighted_pair_sum: every bandwidth in sigmas must be positive"):
        torch.ops.pytl.weighted_pair_sums(x, y, torch.ones(4, 1), torch.ones(3, 1), torch.tensor([-1.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_routes_agree(monkeypatch, dtype):
    # the register-blocked sweep (the CPU's default) against the tile sweep of ATen ops (CUDA's kernel, and
    # the CPU's for small wide batches): the same sums and gradients, past several 96-row tiles
    x, y = make_pair(250, 190, 7, dtype, seed=21)
    g = torch.Generator().manual_seed(3)
    xw, yw = torch.rand(250, 5, generator=g, dtype=dtype), torch.rand(190, 5, generator=g, dtype=dtype)
    sig = torch.tensor([0.7, 1.4, 2.8], dtype=dtype)
    coefs = torch.randn(3, 3, generator=g, dtype=dtype)

    def run(route):
        monkeypatch.setenv("PYTL_CPU_WEIGHTED_ROUTE", route)
        return torch.ops.pytl.weighted_pair_sums_and_grad(coefs, x, y, xw, yw, sig)

    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(run("sweep"), run("tiles")):
        scale = max(b.abs().max().item(), 1e-12)
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)
    monkeypatch.setenv("PYTL_CPU_WEIGHTED_ROUTE", "fastest")
    with pytest.raises(ValueError, match="PYTL_CPU_WEIGHTED_ROUTE must be 'sweep' or 'tiles'"):
        torch.ops.pytl.weighted_pair_sums(x, y, xw, yw, sig)
