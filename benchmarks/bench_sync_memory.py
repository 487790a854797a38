"""Peak memory of cardiac synchronization (default method) against the frame count.

Synthetic cines (``Testing/synthetic.py``: moving texture, contrast arriving halfway, 15 fps,
70 bpm) of 64x64 pixels, so the cine itself stays small and what grows is what synchronization
keeps per frame or per pair of frames.  Each size runs in a fresh subprocess; the peak is
tracemalloc's (numpy reports its arrays to it) over ``synchronize`` alone, the cine excluded.
Memory linear in the frame count gives a ratio of about 4 per 4x frames; frame-by-frame
(N x N) matrices give about 16.

Run: ``.venv/bin/python benchmarks/bench_sync_memory.py [--frames 400 1600 6400] [--size 64]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, tracemalloc, warnings
sys.path.insert(0, {testing!r})
from synthetic import synthetic_cine
from CACIdentifierLib.sync import synchronize
frames, _ = synthetic_cine(n_frames={n}, size={size}, fps=15.0, bpm=70.0, seed=3)
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    res = synchronize(frames, 1000.0 / 15.0)
dt = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1] - base
print(json.dumps({{"frames": {n}, "peak": peak, "seconds": dt, "period": res.period_frames}}))
"""


def measure(n: int, size: int) -> dict:
    """Peak traced memory (bytes) and time of ``synchronize`` on an ``n``-frame cine, in a subprocess."""
    code = CHILD.format(testing=str(ROOT / "Testing"), n=n, size=size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[400, 1600, 6400])
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    prev = None
    for n in args.frames:
        r = measure(n, args.size)
        ratio = "" if prev is None else f"   x{r['peak'] / prev['peak']:5.2f} for x{n / prev['frames']:g} frames"
        print(f"{n:6d} frames {args.size}x{args.size}: peak {r['peak'] / 2**20:8.1f} MiB  "
              f"{r['seconds']:7.2f} s  period {r['period']}{ratio}", flush=True)
        prev = r


if __name__ == "__main__":
    main()
