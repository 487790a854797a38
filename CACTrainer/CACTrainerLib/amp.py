"""Mixed precision of a training step: the autocast type, and a GradScaler only where fp16 needs one.

bfloat16 (CPUs with native bf16, most CUDA GPUs) has float32's exponent range:
gradients do not underflow and the step is the plain ``loss.backward();
opt.step()``.  float16 (CUDA GPUs without bf16, e.g. V100, T4) underflows small
gradients, so the loss is scaled before the backward pass and the step is
skipped when a gradient overflowed (``torch.amp.GradScaler``).  The choice is
a function of the device type and the dtype (:func:`needs_scaler`), and the
scaler can be injected, so both paths are tested without a GPU.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def needs_scaler(device_type: str, dtype: torch.dtype | None) -> bool:
    """True for float16 autocast on CUDA, the one case where gradients need loss scaling.

    Examples
    --------
    >>> needs_scaler("cuda", torch.float16), needs_scaler("cuda", torch.bfloat16), needs_scaler("cpu", None)
    (True, False, False)
    """
    return device_type == "cuda" and dtype == torch.float16


class MixedPrecision:
    """Backward pass and optimiser step under the precision of ``device``.

    ``dtype``: the autocast type (default: what :func:`CACIdentifierLib.device.autocast_dtype`
    picks for the device); ``scaler``: a ``GradScaler`` to use instead of the default one
    (which exists only when :func:`needs_scaler`).
    """

    def __init__(self, device, enabled: bool = True, *, dtype=AUTO, scaler=None):
        from CACIdentifierLib.device import autocast_dtype

        self.device = torch.device(device)
        self.dtype = autocast_dtype(self.device, enabled) if dtype is AUTO else dtype
        if scaler is None and needs_scaler(self.device.type, self.dtype):
            scaler = torch.amp.GradScaler("cuda")
        self.scaler = scaler
        self.skipped = 0  # steps skipped because a scaled gradient overflowed

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> bool:
        """Backward and step; False when the scaler skipped the step (inf/NaN gradient)."""
        if self.scaler is None:
            loss.backward()
            opt.step()
            return True
        self.scaler.scale(loss).backward()
        before = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        taken = self.scaler.get_scale() >= before  # the scale drops exactly when the step was skipped
        self.skipped += not taken
        return taken
