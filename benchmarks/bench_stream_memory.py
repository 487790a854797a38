"""Memory a training stream holds during an epoch: its window once, not twice.

``PatientStream`` (``cac train --phantom-pool N --refresh-patients K``) keeps the window's patients for the
next windows.  It once kept them as separate arrays beside the concatenated window training reads, so an
epoch held every frame twice (a 160-patient stream: the control arm of session 46 was 7.5 GB resident for 2.5 GiB of frames); they are
now views of that window.  This generates a small stream of real phantom patients, then measures with
``tracemalloc`` (numpy reports its arrays to it) what the stream and its window hold after the first and
the second window, against the window's own bytes, and what keeping separate copies would hold (the old
way: the window plus a copy of its patients), in the same run.

Then the copy of a dataset or a fixed pool into one set (``build_frameset``, ``phantom_pool``): its peak with
``FrameSet.concat(..., consume=True)``, which empties each input field once copied, against a plain concat
that holds the frames twice, on the same patients.

Usage: ``python benchmarks/bench_stream_memory.py [--window 4] [--refresh 2]``.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
import warnings

from CACTrainerLib.dataset import FrameSet
from CACTrainerLib.phantom_pool import PatientRecipe, PatientStream, _generate, phantom_pool


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=4, help="patients in a window")
    ap.add_argument("--refresh", type=int, default=2, help="new patients per window")
    args = ap.parse_args(argv)
    stream = PatientStream(range(args.window), args.refresh, next_patient=args.window, seed=1000,
                           frames_per_acquisition=6, background=True, workers=1, ahead=False)
    window = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # One patient outside the stream first: the modules generation imports are not counted as held.
        phantom_pool(0, patients=[10**6], seed=1000, frames_per_acquisition=6, workers=1)
        gc.collect()
        tracemalloc.start()
        for epoch in (0, 1):
            window = None  # as training: the old window is released before the next is asked for
            gc.collect()
            window = stream(epoch)
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
            size = window.nbytes
            copies = FrameSet.concat([fs.subset(range(len(fs))) for fs in stream._cache.values()])  # the old way
            old = held + copies.nbytes
            copies = None
            print(f"window {epoch}: {len(window)} frames, {size / 2**20:.0f} MiB; held {held / 2**20:.0f} MiB "
                  f"({held / size:.2f}x the window); with the patients as separate copies "
                  f"{old / 2**20:.0f} MiB ({old / size:.2f}x); ratio {held / old:.2f}")
        tracemalloc.stop()
        window = copies = None
        stream._cache.clear()
        gc.collect()
        parts = _generate(list(range(args.window)), seed=1000, workers=1,
                          recipe=PatientRecipe(n_frames=64, frames_per_acquisition=6, calcium_free_fraction=0.4))
        peaks = {}
        for consume in (False, True):
            tracemalloc.start()  # before the inputs, so that freeing them counts
            sets = [fs.subset(range(len(fs))) for fs in parts]
            size = sum(fs.nbytes for fs in sets)
            tracemalloc.reset_peak()
            FrameSet.concat(sets, consume=consume)  # the peak is what counts; the set is freed at once
            peaks[consume] = tracemalloc.get_traced_memory()[1] / size
            tracemalloc.stop()
            sets = None
            gc.collect()
        print(f"one set from {args.window} patients ({size / 2**20:.0f} MiB): peak {peaks[True]:.2f}x the frames "
              f"consumed, {peaks[False]:.2f}x plain; ratio {peaks[True] / peaks[False]:.2f}")


if __name__ == "__main__":
    main()
