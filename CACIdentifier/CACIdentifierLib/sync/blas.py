"""numpy's BLAS on one thread while synchronization runs (what threadpoolctl does, without it).

The matrices of synchronization are small (frames x frames, or frames x 4096
pixels): OpenBLAS's thread pool gains little on them and, on a busy machine,
its spinning threads cost many times the work (measured in docs/sync.md).
"""

from __future__ import annotations

import contextlib

import numpy as np


def _openblas():
    """numpy's bundled OpenBLAS (get, set thread-count functions), or None."""
    import ctypes
    import glob
    import os

    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                return get, put
    return None


@contextlib.contextmanager
def single_threaded_blas():
    """Run numpy's BLAS on one thread inside the block (what threadpoolctl does).

    The matrices here are small (frames x frames, or frames x 4096 pixels):
    OpenBLAS's thread pool gains little on them and, on a busy machine, its
    spinning threads cost many times the work (measured in docs/sync.md).
    No-op where numpy's OpenBLAS is not found.
    """
    fns = openblas_fns()
    if fns is None:
        yield
        return
    get, put = fns
    before = get()
    put(1)
    try:
        yield
    finally:
        put(before)

_OPENBLAS = []


def openblas_fns():
    if not _OPENBLAS:
        try:
            _OPENBLAS.append(_openblas())
        except Exception:  # never let a missing/odd BLAS break synchronization
            _OPENBLAS.append(None)
    return _OPENBLAS[0]
