"""Compute device selection and mixed precision for inference and training.

``choose_device("auto")`` prefers CUDA, then Apple's MPS, then the CPU.
:func:`autocast` gives the mixed-precision context that suits the device:
bfloat16 on CPUs with native bf16 instructions (AVX512-BF16 or AMX, e.g.
Intel Sapphire Rapids: several times faster than fp32 there), bfloat16 (or
float16 where bf16 is missing) on CUDA, and no autocast elsewhere (older CPUs
emulate bf16 and would be slower than fp32).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .errors import CacError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def choose_device(name: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``name`` ("auto", "cpu", "cuda", "cuda:1", "mps").

    "auto" picks CUDA if available, then MPS, then the CPU.  Asking for a
    device that is not available raises :class:`CacError`.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    kind = name.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise CacError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CacError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist; "
                "choose another index"
            )
        return device
    if kind == "mps":
        if not _mps_available():
            raise CacError(f"device {name!r} requested but Apple MPS is not available; use --device cpu or auto")
        return torch.device("mps")
    raise CacError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16).

    Read from the ``/proc/cpuinfo`` flags on Linux; where that file does not
    exist, torch's reported CPU capability is used (``AVX512`` alone is not
    enough: it says nothing about bf16), and Apple silicon counts as capable
    (ARMv8.6 BF16).
    """
    flags = _cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        capability = ""
    if "AMX" in capability.upper():
        return True
    import platform

    return platform.system() == "Darwin" and platform.machine() == "arm64"


def autocast(device: torch.device | str, enabled: bool = True):
    """Mixed-precision context manager for ``device``.

    bf16 autocast on CPUs with native bf16 (:func:`cpu_supports_bf16`); bf16
    on CUDA devices that support it, fp16 otherwise; a no-op context for MPS,
    other CPUs, or ``enabled=False``.  Only the forward pass belongs inside;
    the network's convolutions run in the reduced type, reductions (BN
    statistics, softmax, losses) stay fp32 as torch's autocast policy says.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def autocast_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """The reduced dtype :func:`autocast` would use on ``device``, or None for plain fp32."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if not enabled:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def to_device(x, device) -> torch.Tensor:
    """``x`` (a tensor or an array) as a tensor on ``device``; a host array is made contiguous first.

    Examples
    --------
    >>> import numpy as np
    >>> to_device(np.arange(6).reshape(2, 3).T, "cpu").is_contiguous()
    True
    """
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


# The name used in docs/ARCHITECTURE.md.
autocast_context = autocast
