"""Mixed precision of the training step (CACTrainerLib.amp), without a GPU.

The scaler-free path (fp32, bf16) must be exactly ``loss.backward(); opt.step()``;
the GradScaler path (fp16 on CUDA) is run on the CPU with torch's CPU GradScaler
injected: a finite step equals the unscaled one (Adam on unscaled gradients), an
overflowing one is skipped and halves the scale.
"""

import pytest
import torch
from CACTrainerLib.amp import MixedPrecision, needs_scaler


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _loss(model, scale=1.0):
    torch.manual_seed(1)
    x, y = torch.randn(8, 6), torch.rand(8, 1)
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x) * scale, y)


def test_scaler_only_for_fp16_on_cuda():
    assert needs_scaler("cuda", torch.float16)
    for device, dtype in (("cuda", torch.bfloat16), ("cuda", None), ("cpu", torch.bfloat16), ("cpu", None),
                          ("cpu", torch.float16), ("mps", None)):
        assert not needs_scaler(device, dtype)
    assert MixedPrecision("cpu", dtype=torch.bfloat16).scaler is None
    assert MixedPrecision("cpu", enabled=False).dtype is None and MixedPrecision("cpu", enabled=False).scaler is None
    # fp16 on a CUDA device gets torch's CUDA GradScaler (built, not run: no GPU needed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on CPU-only machines
        mp = MixedPrecision(torch.device("cuda"), dtype=torch.float16)
    assert isinstance(mp.scaler, torch.amp.GradScaler)


def test_scaler_free_step_is_the_plain_step():
    a, opt_a = _model_and_opt()
    b, opt_b = _model_and_opt()
    mp = MixedPrecision("cpu", dtype=torch.bfloat16)
    for _ in range(3):
        opt_a.zero_grad()
        assert mp.step(_loss(a), opt_a)
        opt_b.zero_grad()
        _loss(b).backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_gradscaler_path_steps_like_the_plain_step_and_skips_overflow():
    a, opt_a = _model_and_opt()
    b, opt_b = _model_and_opt()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=1000)
    mp = MixedPrecision("cpu", dtype=torch.float16, scaler=scaler)
    opt_a.zero_grad()
    assert mp.step(_loss(a), opt_a)
    opt_b.zero_grad()
    _loss(b).backward()
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    # an infinite loss: no step, the scale halves
    before = [p.detach().clone() for p in a.parameters()]
    opt_a.zero_grad()
    assert not mp.step(_loss(a, scale=float("inf")), opt_a)
    assert mp.skipped == 1 and scaler.get_scale() == pytest.approx(2.0 ** 11)
    for p, q in zip(a.parameters(), before):
        assert torch.equal(p, q)
