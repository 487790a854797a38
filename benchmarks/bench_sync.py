"""Speed of cardiac synchronization: a 200-frame 512x512 8-bit cine.

Target (issue 4): at most 100 ms for the default method on 2 CPU cores.  The
cine is the project's phantom at 512x512 (CACTrainerLib.phantom; the
phantom is installed with the project).  Prints
best-of-N wall times and their ratios to one plain pass over the same array
(``frames.astype(np.float32).sum()``) measured in the same run, so the figures
compare across machines.  Run: ``.venv/bin/python benchmarks/bench_sync.py`` (``BENCH_REPEATS=N``:
best of N, default 15).
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
from CACIdentifierLib import sync
from CACTrainerLib.phantom import PhantomParams, generate_acquisition


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def make_cine():
    acq = generate_acquisition(PhantomParams(rows=512, cols=512, n_frames=200, fps=15.0, bits=8), seed=1)
    return acq.frames, acq.frame_time_ms, "CACTrainerLib.phantom 512x512, seed 1"


def main() -> None:
    from script_entry import options

    options(__doc__)
    repeats = int(os.environ.get("BENCH_REPEATS", "15"))
    frames, frame_time, source = make_cine()
    print(f"cine: {frames.shape[0]} frames {frames.shape[1]}x{frames.shape[2]} {frames.dtype} ({source}); "
          f"best of {repeats}; {os.cpu_count()} CPUs visible")
    plain = best_of(lambda: frames.astype(np.float32).sum(), repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_signal = best_of(lambda: sync.ecg_like_signal(frames), repeats)
        t_small = best_of(lambda: sync.block_mean(frames), repeats)
        t_default = best_of(lambda: sync.synchronize(frames, frame_time), repeats)
        t_paper = best_of(lambda: sync.synchronize(frames, frame_time, method="paper"), repeats)
    rows = [
        ("plain pass frames.astype(float32).sum()", plain),
        ("eq. 1 signal, full resolution", t_signal),
        ("4x4 block means", t_small),
        ("synchronize, default method", t_default),
        ("synchronize, paper method", t_paper),
    ]
    for name, t in rows:
        print(f"{name:<42s} {t * 1000:8.1f} ms   {t / plain:6.2f} x plain pass")
    print(f"default method vs 100 ms target: {t_default / 0.100:.2f} of the budget")


if __name__ == "__main__":
    main()
