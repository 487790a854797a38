"""How late the detected contrast onset is, and what a guard band before it buys.

Frames analysed as non-contrast are those before the onset.  When the detected onset is late,
the first frames of the wash-in (iodine near the ostium, dark and vessel-like) are analysed as
non-contrast, where iodine can pass for calcium.  A guard band of ``g`` frames analyses only the
frames before ``onset - g`` when the onset was *detected* (a user's ``--onset`` is taken as is).
For each ``g`` this prints, over phantom cines with a known onset:

* iodine frames analysed: frames at or after the true onset and before ``detected - g``;
* cines with any iodine frame analysed;
* non-contrast frames lost: true non-contrast frames at or after ``detected - g``, as a share of
  all true non-contrast frames.

Cines: domain-randomised phantoms (:func:`CACTrainerLib.phantom_domain.randomized_params`, the
phantom's own onset timing: 15 % early onsets, wash-in 0.5-1.5 s) and the independent second
generator (``benchmarks/second_generator.py``, iodine over four frames).

Run: ``.venv/bin/python benchmarks/onset_guard.py [--cines 40] [--frames 96] [--out onset_guard.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def phantom_cases(n: int, frames: int, seed: int):
    from CACTrainerLib.phantom import generate_acquisition
    from CACTrainerLib.phantom_domain import randomized_params

    for k in range(n):
        rng = np.random.default_rng([seed, k, 0x0E])
        params = randomized_params(rng, n_frames=frames)
        acq = generate_acquisition(params, seed=seed, patient=k, acquisition=0)
        yield f"phantom {seed}/{k}", acq.frames, acq.frame_time_ms, acq.onset_frame


def second_generator_cases(n: int, frames: int, seed: int):
    from second_generator import make_cine

    for k in range(n):
        cine, _, info = make_cine(seed + k, calcium=bool(k % 2), n_frames=frames, size=256)
        yield f"second {seed + k}", cine, info["frame_time_ms"], int(info["onset"])


def measure(cases) -> list[dict]:
    from CACIdentifierLib import sync

    rows = []
    for name, frames, frame_time_ms, onset_true in cases:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sync.synchronize(frames, frame_time_ms)
        rows.append({"cine": name, "frames": int(frames.shape[0]), "onset_true": int(onset_true),
                     "onset_found": int(res.onset_frame), "detected": bool(res.onset_detected),
                     "seconds": time.perf_counter() - t})
        print(f"{name:<18s} onset {onset_true:3d} -> {res.onset_frame:3d}"
              f"{'' if res.onset_detected else ' (not detected)'}", flush=True)
    return rows


def guard_table(rows: list[dict], guards) -> list[dict]:
    out = []
    for g in guards:
        iodine, lost, total_nc, hit = 0, 0, 0, 0
        for r in rows:
            t, d = r["onset_true"], r["onset_found"]
            end = max(d - g, 0) if r["detected"] else d  # the guard applies to a detected onset only
            n_iodine = max(0, end - t)
            iodine += n_iodine
            hit += n_iodine > 0
            lost += max(0, t - end)
            total_nc += t
        out.append({"guard": g, "iodine_frames": iodine, "cines_with_iodine": hit, "cines": len(rows),
                    "nc_frames_lost": lost, "nc_frames": total_nc})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cines", type=int, default=40, help="phantom cines (and half as many of the second generator)")
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--seed", type=int, default=7000)
    ap.add_argument("--max-guard", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    results = {}
    for label, cases in (("phantom", phantom_cases(args.cines, args.frames, args.seed)),
                         ("second generator", second_generator_cases(max(1, args.cines // 2), args.frames, args.seed))):
        rows = measure(cases)
        err = np.array([r["onset_found"] - r["onset_true"] for r in rows if r["detected"]])
        table = guard_table(rows, range(args.max_guard + 1))
        results[label] = {"cines": rows, "guards": table}
        print(f"\n{label}: {len(rows)} cines, onset detected in {err.size}; detected - true: median {np.median(err):+.0f}, "
              f"range {err.min():+d}..{err.max():+d}, late in {(err > 0).sum()}, early in {(err < 0).sum()}")
        print("guard | iodine frames analysed | cines with any | non-contrast frames lost")
        for row in table:
            print(f"{row['guard']:5d} | {row['iodine_frames']:22d} | {row['cines_with_iodine']:4d}/{row['cines']:<3d} | "
                  f"{row['nc_frames_lost']:4d} of {row['nc_frames']} ({100 * row['nc_frames_lost'] / max(row['nc_frames'], 1):.1f} %)")
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
