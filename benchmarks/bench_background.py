"""What the cine background costs a training set: time per cine and memory per frame, with and without it.

Frame-only training builds its sets with ``background=False``
(:func:`CACTrainerLib.dataset.frames_from_acquisition`); ``frame+residual`` training needs the
background (the median of the cine's paired non-contrast frames, kept per frame).  For
``--patients`` phantom-pool cines (:func:`CACTrainerLib.phantom_pool.pool_acquisition`, generated
once, untimed) this times building the training frames both ways, alternating the order, and
prints seconds per cine, bytes per frame and the ratios, all measured in this one run, next to the
time of generating a cine (what a stream epoch also pays per new patient).

Usage: ``python benchmarks/bench_background.py [--patients 6] [--seed 1000]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from CACTrainerLib import dataset as D
from CACTrainerLib.phantom_pool import patient_name, pool_acquisition


def frame_bytes(fs: D.FrameSet) -> float:
    return sum(getattr(fs, k).nbytes for k in fs.array_fields()) / len(fs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args(argv)
    gen, with_bg, without_bg, bytes_with, bytes_without = [], [], [], [], []
    for i in range(args.patients):
        t = time.perf_counter()
        acq = pool_acquisition(args.seed, i)
        gen.append(time.perf_counter() - t)
        name = patient_name(args.seed, i)
        order = (True, False) if i % 2 == 0 else (False, True)
        for bg in order:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                fs = D.frames_from_acquisition(acq, acquisition=name, patient=name, frames_per_acquisition=6,
                                               background=bg)
                dt = time.perf_counter() - t
            (with_bg if bg else without_bg).append(dt)
            (bytes_with if bg else bytes_without).append(frame_bytes(fs))
    tw, to, tg = (float(np.median(x)) for x in (with_bg, without_bg, gen))
    bw, bo = float(np.median(bytes_with)), float(np.median(bytes_without))
    print(f"{args.patients} pool cines (seed {args.seed}), medians:")
    print(f"  generate a cine                     {tg:7.2f} s")
    print(f"  training frames, with background    {tw:7.2f} s   {bw / 2**20:5.2f} MiB/frame")
    print(f"  training frames, without            {to:7.2f} s   {bo / 2**20:5.2f} MiB/frame")
    print(f"  ratio with/without: time {tw / to:.2f}, memory {bw / bo:.2f}; "
          f"time saved per new cine incl. generation {(tw - to) / (tg + tw):.1%}")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
