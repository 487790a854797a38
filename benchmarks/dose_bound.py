"""How much of a model's patch AUC the quantum noise costs: the same phantom frames at k times the photons.

    python benchmarks/dose_bound.py MODEL.safetensors [MODEL2 ...] [--test 36] [--seed 3000] [--factors 1,2,4,10000]

Each held-out patient of the test fold (compare_models.py's: ``phantom_pool.pool_acquisition``'s draw,
64 frames, 40 % calcium-free) is rendered again with ``factor`` times its photons and nothing else
changed: the anatomy, motion, calcium, metal and annotators are drawn from their own random streams,
and only the quantum noise shrinks, by ``1 / sqrt(factor)``.  Every twin is paired and labelled with
the factor-1 cine's synchronization and majority vote, so the patches and their labels are the same
in every column.  A factor of k is what an average of k perfectly registered frames of the same phase
(other beats, neighbours) would give at best, and a very large factor is a noise-free frame: the
columns bound what multi-frame denoising, before the network or inside it, can add to this model.
Prints the patch AUC per model and factor, overall and for the patients below and above the fold's
median dose; writes OUT (JSON).
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_protocol import log  # noqa: E402

# The phantom's own upper limit on photons (phantom.py's parameter check).
MAX_PHOTONS = 9.9e6


def photon_twins(seed: int, patient: int, factors, *, n_frames: int = 64, size: int | None = None,
                 calcium_free_fraction: float = 0.4, frames_per_acquisition: int = 6) -> tuple[dict, float]:
    """``{factor: FrameSet}`` of one pool patient rendered at each ``factor`` x its photons, and its photons.

    All twins share the factor-1 cine's frame pairs and majority-vote labels (``factors`` must hold 1).
    """
    from CACIdentifierLib.sync import synchronize
    from CACTrainerLib import dataset
    from CACTrainerLib.phantom import generate_acquisition
    from CACTrainerLib.phantom_pool import pool_params

    factors = sorted(float(f) for f in factors)
    if factors[0] != 1.0:
        raise ValueError("factors must include 1 (the cine as drawn)")
    params = pool_params(seed, patient, n_frames=n_frames, size=size, calcium_free_fraction=calcium_free_fraction)
    out, pairs, majority = {}, None, None
    for factor in factors:
        p = copy.deepcopy(params)
        p.photons = min(params.photons * factor, MAX_PHOTONS)
        acq = generate_acquisition(p, seed=seed, patient=patient, acquisition=0)
        if pairs is None:
            majority = acq.majority
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame_time = getattr(acq, "frame_time_ms", None) or acq.truth.get("frame_time_ms")
                pairs = synchronize(acq.frames, frame_time, onset=dataset._truth_onset(acq.truth)).pairs
        name = f"S{seed}_P{patient:05d}"
        out[factor] = dataset.frames_from_arrays(acq.frames, majority, frame_time_ms=None, spacing_mm=acq.spacing_mm,
                                                 pairs=pairs, frames_per_acquisition=frames_per_acquisition,
                                                 acquisition=name, patient=name, background=False)
    return out, float(params.photons)


def _fmt(auc) -> str:
    return "-" if auc is None else f"{auc:.3f}"  # None: a group without both classes


def _job(args):
    seed, patient, factors = args
    return photon_twins(seed, patient, factors)


def main(argv=None) -> int:
    from difficulty import fold_parser

    ap = fold_parser("dose_bound.json")
    ap.add_argument("--factors", default="1,2,4,10000", help="photon factors (1 must be one of them)")
    args = ap.parse_args(argv)
    factors = sorted(float(f) for f in args.factors.split(","))

    import multiprocessing

    import torch
    from CACIdentifierLib.metrics import roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation
    from CACTrainerLib.dataset import FrameSet

    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(max(1, args.workers)) as pool:
        parts = pool.map(_job, [(args.seed, p, factors) for p in range(args.test)])
    photons = np.array([ph for _, ph in parts])
    low_patients = {i for i, ph in enumerate(photons) if ph < np.median(photons)}
    log(f"{args.test} patients x {len(factors)} doses generated in {time.perf_counter() - t0:.0f} s "
        f"(photons {photons.min():.0f}-{photons.max():.0f}, median {np.median(photons):.0f})")
    torch.set_num_threads(2)
    results = {"seed": args.seed, "test": args.test, "factors": factors, "photons": photons.tolist(), "models": {}}
    for path in args.models:
        model, _ = load_model(path)
        rows = {}
        for factor in factors:
            parts_k = [twins[factor] for twins, _ in parts]
            fs = FrameSet.concat(parts_k)
            low = np.concatenate([np.full(parts_k[i].n_patches, i in low_patients) for i in range(len(parts_k))])
            labels = fs.patch_labels > 0.5
            probs = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
            rows[str(factor)] = {"patch_auc": roc_auc(labels, probs), "patches": int(labels.size),
                                 "positives": int(labels.sum()),
                                 "patch_auc_low_dose_half": roc_auc(labels[low], probs[low]),
                                 "patch_auc_high_dose_half": roc_auc(labels[~low], probs[~low])}
            log(f"{Path(path).name} x{factor:g}: {json.dumps(rows[str(factor)])}")
        results["models"][path] = rows
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"| model (seed {args.seed}) | " + " | ".join(f"x{f:g} photons" for f in factors) + " |")
    print("|---|" + "---|" * len(factors))
    for path, rows in results["models"].items():
        cells = [f"{_fmt(r['patch_auc'])} ({_fmt(r['patch_auc_low_dose_half'])} / {_fmt(r['patch_auc_high_dose_half'])})"
                 for r in rows.values()]
        print(f"| {Path(path).name} | " + " | ".join(cells) + " |")
    log(f"done in {time.perf_counter() - t0:.0f} s; {args.out}")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
