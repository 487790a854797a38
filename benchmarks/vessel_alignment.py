"""What the paired contrast frame's residual shows under the calcium, pixel by pixel (no learning).

    python benchmarks/vessel_alignment.py --cache DIR --pool NAME [--out FILE.json]
    python benchmarks/vessel_alignment.py --test 4 --seed 7000 [--out FILE.json]

For every frame with labelled calcium (a ``frame_score.py`` cache pool, or ``--test`` new phantom
patients of ``phantom_pool`` seed ``--seed``, 6 frames each), three maps minus the cine's static
background (background.py): the non-contrast frame (the residual channel), the contrast frame that
synchronization paired with it (what ``--vessel-channel`` puts under the non-contrast head), and the
contrast frame paired with another frame of the same cine (half the cine's frames further on:
another cardiac phase, ``pairing_value.shifted_within``).  Per frame and map: the mean over the
calcium minus the mean over a ring 8-20 px around it (negative: the calcium lies darker than its
surroundings; XA stores attenuation as dark).  If the paired contrast frame is aligned with the
calcium, its residual is darker at the calcium than the other phase's (iodine in the vessel that
carries the calcium, and the calcium itself at the same place); a network can use that only if the
two frames meet at full resolution, which the two heads of the paper's network do not.

Prints and writes the medians, the fraction of frames with the calcium darker than its ring, and
the paired-minus-other-phase difference with a 95 % interval from resampling patients.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402

RING_PX = (8.0, 20.0)
MAPS = ("non-contrast", "paired contrast", "other-phase contrast")


def calcium_minus_ring(image: np.ndarray, calcium: np.ndarray, ring_px=RING_PX) -> float:
    """Mean of ``image`` over the ``calcium`` mask minus its mean over a ring around it.

    Examples
    --------
    >>> img = np.zeros((40, 40), np.float32); img[18:22, 18:22] = -0.1
    >>> m = img < 0
    >>> round(calcium_minus_ring(img, m), 3)
    -0.1
    """
    from scipy import ndimage

    calcium = np.asarray(calcium, bool)
    d = ndimage.distance_transform_edt(~calcium)
    ring = (d > ring_px[0]) & (d < ring_px[1])
    if not calcium.any() or not ring.any():
        raise ValueError("need a calcium mask with a ring of pixels around it")
    return float(image[calcium].mean() - image[ring].mean())


def alignment(fs, seed: int = 0, n_boot: int = 2000) -> dict:
    """The per-map figures (module docstring) for a FrameSet with backgrounds and calcium masks."""
    from pairing_value import shifted_within

    shift = shifted_within(fs.acquisition)
    calcium = np.asarray(fs.calcium)
    values = {k: [] for k in MAPS}
    patients = []
    for f in range(len(calcium)):
        if not calcium[f].any():
            continue
        bg = np.asarray(fs.background[f], np.float32)
        images = (fs.nc[f], fs.c[f], fs.c[shift[f]])
        for k, img in zip(MAPS, images):
            values[k].append(calcium_minus_ring(np.asarray(img, np.float32) - bg, calcium[f]))
        patients.append(fs.patient[f])
    values = {k: np.asarray(v) for k, v in values.items()}
    out = {"frames": int(len(patients)), "patients": len(set(patients)), "ring_px": list(RING_PX), "maps": {}}
    for k, v in values.items():
        out["maps"][k] = {"median": float(np.median(v)) if len(v) else None,
                          "darker_fraction": float(np.mean(v < 0)) if len(v) else None}
    diff = values["paired contrast"] - values["other-phase contrast"]
    groups = np.asarray(patients)
    ids = sorted(set(patients))
    rng = np.random.default_rng(seed)
    boot = []
    by = {p: diff[groups == p] for p in ids}
    for _ in range(n_boot if ids else 0):
        pick = rng.choice(len(ids), len(ids))
        boot.append(float(np.concatenate([by[ids[i]] for i in pick]).mean()))
    out["paired_minus_other_phase"] = {
        "mean": float(diff.mean()) if len(diff) else None,
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))] if boot else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="frame_score.py's cache folder")
    ap.add_argument("--pool", help="a pool folder name in the cache")
    ap.add_argument("--test", type=int, default=4, help="without --cache: new phantom patients")
    ap.add_argument("--seed", type=int, default=7000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.cache is not None:
        from frame_score import cached_pool

        if not args.pool or not (args.cache / args.pool / "done").exists():
            raise SystemExit(f"no pool {args.pool} in {args.cache}; run benchmarks/frame_score.py --cache first")
        fs = cached_pool(args.cache, args.pool, None)
        source = f"{args.cache.name}/{args.pool}"
    else:
        from CACTrainerLib.phantom_pool import phantom_pool

        fs = phantom_pool(args.test, seed=args.seed, n_frames=64, frames_per_acquisition=6, calcium_free_fraction=0.4)
        source = f"phantom_pool {args.test} patients, seed {args.seed}"
    result = dict(alignment(fs), data=source)
    for k, v in result["maps"].items():
        log(f"{k} residual: calcium minus ring, median {v['median']:+.4f}; calcium darker in "
            f"{v['darker_fraction']:.2f} of {result['frames']} frames")
    d = result["paired_minus_other_phase"]
    log(f"paired minus other phase: {d['mean']:+.4f} (95 % interval {d['ci95'][0]:+.4f}..{d['ci95'][1]:+.4f}, "
        f"{result['patients']} patients resampled)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
