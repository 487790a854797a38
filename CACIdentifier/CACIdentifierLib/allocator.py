"""Keep freed memory in the process instead of handing every large block back to the kernel.

glibc's ``malloc`` serves each request above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and ``munmap``s it on ``free``.  A training step of the ResUNet-18 (batch
32 of 256x256 patch pairs) allocates and frees activations of tens of MiB every step, so
the kernel zero-fills about half a million new 4 KiB pages per step: on a 2-core AMD EPYC
that was 0.9 s of system time in a 1.8 s step.  :func:`keep_freed_memory` tells glibc
(``mallopt``) to serve large blocks from the heap and not to trim it, so freed blocks are
reused: the same step took 1.27 s (``benchmarks/bench_allocator.py``, docs/learning.md,
Speed).  The process then keeps its peak memory until it ends, which suits the ``cac``
commands (one job per process; inside Slicer they run in a child process), not a
long-lived host such as Slicer itself: only ``cac``'s entry point calls it.

Long-lived data freed in bulk (a training stream's window of patients, gigabytes made partly in
other threads' arenas) would then stay resident too: a 34-epoch stream run grew from 9.6 to 11.7 GB
resident over six epochs, of which ``malloc_trim`` handed 4.9 GB back at once.
:func:`release_freed_memory` does that where such data was just dropped (once an epoch, not per
step: the next step faults its activations in once).

Set ``CAC_SYSTEM_MALLOC=1`` to keep glibc's defaults; elsewhere than Linux with glibc
(macOS, Windows, musl) nothing changes.

Examples
--------
>>> from CACIdentifierLib.allocator import keep_freed_memory, release_freed_memory
>>> keep_freed_memory() in (True, False)
True
>>> release_freed_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV_OPT_OUT = "CAC_SYSTEM_MALLOC"
# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4


def _glibc():
    """The C library where it is glibc on Linux, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc reuse freed large blocks (no mmap per block, no trimming); True when applied.

    Process-wide and for the rest of the process; a no-op (False) where glibc is absent or
    ``CAC_SYSTEM_MALLOC`` is set.
    """
    if os.environ.get(ENV_OPT_OUT, "").strip() not in ("", "0"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1  # large blocks from the heap, not one mmap each
    ok = libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok  # freed heap memory stays for reuse
    ok = libc.mallopt(M_TOP_PAD, 64 << 20) == 1 and ok  # grow the heap in 64 MiB steps
    return ok


def release_freed_memory() -> bool:
    """Hand the free pages of every malloc arena back to the kernel (glibc ``malloc_trim(0)``); True when done.

    Call it where long-lived data were just released (a new training window), not per step.  A no-op
    (False) where glibc is absent.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
