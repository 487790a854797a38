"""Benchmark of the phantom generator, measured in one run on this machine.

Prints, for a default cine (200 frames of 512x512 at 15 fps, calcium present):
- the time to generate it in memory (frames, truth masks, three annotators, majority, truth),
  wall clock and CPU time of this process (the machine may be shared);
- the ratio to the 10 s budget (target: <= 1.0 on 2 CPU cores);
- the ratio to one plain pass over the same array (copy + sum of the uint8 frames), measured here,
  and the time per frame;
- the time to write it to disk (DICOM + five .seg.nrrd + truth.json), for information.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from CACTrainerLib.phantom import PhantomParams, generate_acquisition

BUDGET_S = 10.0


def main() -> int:
    from script_entry import options

    options(__doc__)
    params = PhantomParams()
    print(f"machine: {os.cpu_count()} CPU cores; cine: {params.n_frames} frames of {params.rows}x{params.cols}, "
          f"{params.fps:g} fps, {params.bits} bits")
    times, cpu = [], []
    acq = None
    for rep in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        acq = generate_acquisition(params, seed=100 + rep, patient=0, acquisition=0, calcium_free=False)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    t_gen = min(times)
    frames = acq.frames
    plain = []
    for _ in range(5):
        t0 = time.perf_counter()
        frames.copy().sum(dtype=np.uint64)
        plain.append(time.perf_counter() - t0)
    t_plain = min(plain)
    n = frames.shape[0]
    print(f"generate_acquisition: {t_gen:.2f} s per cine (best of {len(times)}: "
          + ", ".join(f"{t:.2f}" for t in times) + f"), {1000 * t_gen / n:.1f} ms per frame")
    print(f"CPU time of this process: {min(cpu):.2f} s (wall > CPU means other processes share the cores; "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"ratio to the {BUDGET_S:g} s budget: {t_gen / BUDGET_S:.2f} ({'OK' if t_gen <= BUDGET_S else 'OVER'})")
    print(f"plain pass (copy + sum of the frames): {1000 * t_plain:.1f} ms; ratio generate / plain pass: "
          f"{t_gen / t_plain:.0f}x")
    try:
        from CACTrainerLib.phantom_writer import write_acquisition

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_acquisition(Path(tmp) / "acq", acq)
            t_write = time.perf_counter() - t0
        print(f"write_acquisition (DICOM + 5 .seg.nrrd + truth.json): {t_write:.2f} s")
    except ImportError as exc:  # mrml (slicer-core) missing
        print(f"write_acquisition skipped: {exc}")
    return 0 if t_gen <= BUDGET_S else 1


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
