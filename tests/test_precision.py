"""Mixed precision: the ops under torch.autocast run in float32 (csrc/autocast.cpp), and
TwoStageTrainer(amp=True) trains under autocast (pytl/train/precision.py)."""

import pytest
import torch

import pytl
from pytl.data import make_domain_shift
from pytl.models import default_model
from pytl.testing import mmd2_reference64

pytestmark = pytest.mark.usefixtures("one_thread")


def half_pair(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g).to(device, dtype)
    y = (torch.randn(33, 6, generator=g) * 1.2 + 0.3).to(device, dtype)
    return x, y


def autocast_dtype(device):
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def device_type(device):
    return torch.device(device).type


def test_mmd2_under_autocast_is_float32_and_equals_the_upcast_inputs(device):
    dt = autocast_dtype(device)
    x, y = half_pair(device, dt)
    sig = torch.tensor([0.5, 1.0, 2.0], device=device)
    w = torch.tensor([0.2, 0.3, 0.5], device=device)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    with torch.autocast(device_type(device), dtype=dt):
        value = pytl.mmd2(xa, ya, sig, w)
        terms = torch.ops.pytl.mmd2_terms(xa, ya, sig, False)
        km = torch.ops.pytl.rbf_kernel_matmul(torch.cat([x, y]), torch.ones(73, 2, device=device, dtype=dt), sig, w)
    assert value.dtype == terms.dtype == km.dtype == torch.float32
    # the same computation on the inputs cast up by hand, outside autocast
    xf, yf = x.float().requires_grad_(), y.float().requires_grad_()
    expected = pytl.mmd2(xf, yf, sig, w)
    assert torch.equal(value, expected)
    torch.testing.assert_close(value.double().cpu(), mmd2_reference64(x.double().cpu(), y.double().cpu(),
                                                                       sig.double().cpu(), w.double().cpu()),
                               rtol=1e-5, atol=1e-7)
    # gradients reach the half inputs, in their dtype: the float32 gradients, rounded
    value.backward()
    expected.backward()
    assert xa.grad.dtype == dt and ya.grad.dtype == dt
    assert torch.equal(xa.grad, xf.grad.to(dt)) and torch.equal(ya.grad, yf.grad.to(dt))


def test_float64_stays_float64_under_autocast(device):
    x, y = half_pair(device, torch.float64)
    with torch.autocast(device_type(device), dtype=autocast_dtype(device)):
        value = pytl.mmd2(x, y)
    assert value.dtype == torch.float64 and torch.equal(value, pytl.mmd2(x, y))


def test_trainer_amp_trains_in_reduced_precision_and_stays_close_to_float32(device):
    data = make_domain_shift(0, n_source=300, n_target_unlabeled=300, n_target_test=500)
    seen = set()

    def fit(amp):
        model = default_model(2, 2, seed=0)
        hook = model.encoder.register_forward_hook(lambda m, i, o: seen.add(o.dtype) if m.training else None)
        t = pytl.TwoStageTrainer(model, lambda_mmd=0.5, align_epochs=15, finetune_epochs=10, progress=False,
                                 device=device, amp=amp, seed=0)
        t.fit(data.source, data.target_unlabeled, data.target_labeled)
        hook.remove()
        return t

    full = fit(False)
    assert seen == {torch.float32}
    seen.clear()
    mixed = fit(True)
    assert seen == {autocast_dtype(device)}  # the encoder's forward ran under autocast
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())  # the weights did not
    for rec in mixed.history["align"] + mixed.history["finetune"]:
        assert all(v is None or v == v for v in (rec["loss"], rec["mmd2"]))  # finite, recorded
    xt, yt = data.target_test
    a_full, a_mixed = full.score(xt, yt), mixed.score(xt, yt)
    assert abs(a_full - a_mixed) <= 0.05, (a_full, a_mixed)
    assert any(not torch.equal(a, b) for a, b in zip(full.model.parameters(), mixed.model.parameters()))


def test_amp_setting_is_checked():
    with pytest.raises(TypeError, match="amp must be True or False"):
        pytl.TwoStageTrainer(amp="yes")
