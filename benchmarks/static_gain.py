"""Does removing ROIs on static structures (``identify``'s static filter) cost calcium?  What does it remove?

    python benchmarks/static_gain.py MODEL.safetensors [--patients 12] [--seed 3000] [--second 8] [--out F.json]

The filter (``CACIdentifierLib.static_structures``) needs whole cines, so this runs ``identify``
without it on complete cines and applies it as ``identify`` does (``filter_cine``) to the same ROIs:

- domain-randomised phantom cines of the GPU protocol's test patients (``phantom_pool`` seed 3000,
  40 % calcium-free, 64 frames), scored against the annotators' majority and the calcium truth;
- cines of the independently written second generator (``second_generator.make_cine``: calcified
  seeds 0.., calcium-free seeds 10000..), scored against its calcium masks;
- the real cines of ``../shared/data`` (no truth: what is removed, and the ROI area).

Per source: ROI components judged and removed, removed components that touch calcium (any deposit,
labelled or not) or the majority, frame sensitivity and the share of calcium-free frames with an ROI
before and after, ROI area (% of the exposed field, median over cines), and the filter's time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
for sub in ("CACIdentifier", "CACTrainer"):
    sys.path.insert(0, str(HERE.parent / sub))
sys.path.insert(0, str(HERE))

REAL = [("xa/rubo-rca-ecg-96f.dcm", {}), ("xa/rubo-biplane-b-ecg-17f.dcm", {}),
        ("frames/lca-clinical-37f", {"spacing_mm": 0.308, "frame_time_ms": 66.7, "onset": 5}),
        ("xa/ge-static-phantom-jpegls.dcm", {})]


def removed_components(before: np.ndarray, after: np.ndarray, frames, truth=None) -> tuple[int, int, int]:
    """Components of ``before`` on ``frames``, those gone in ``after``, and of those the ones touching ``truth``."""
    total = gone = on_truth = 0
    for f in frames:
        labels, n = ndi.label(before[f])
        total += n
        for c in range(1, n + 1):
            comp = labels == c
            if not (comp & after[f]).any():
                gone += 1
                if truth is not None and (comp & truth[f]).any():
                    on_truth += 1
    return total, gone, on_truth


def score(res, roi_after, truth_frames, field_px: int) -> dict:
    """Frame figures before (``res.roi``) and after (``roi_after``) the filter."""
    out = {}
    for name, roi in (("before", res.roi), ("after", roi_after)):
        pred = [bool(roi[f].any()) for f in res.frames]
        hits = [p for p, t in zip(pred, truth_frames) if t]
        out[name] = {"frames_with_roi": int(sum(pred)), "frames": len(pred),
                     "found": int(sum(hits)), "frames_with_truth": len(hits),
                     "roi_area_pct_field": float(np.median([100.0 * roi[f].sum() / field_px for f in res.frames]))
                     if res.frames else 0.0}
    return out


def run_one(cine, model, meta, onset, truth=None, calcium=None, metal=None) -> dict:
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.static_structures import filter_cine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = identify(cine, model, meta, device="cpu", onset=onset, static_filter=False)
    t = time.perf_counter()
    after, removed, note = filter_cine(res.roi, res.frames, cine, res.sync)
    seconds = time.perf_counter() - t
    truth_frames = [bool(truth[f].any()) for f in res.frames] if truth is not None else [False] * len(res.frames)
    total, gone, on_truth = removed_components(res.roi, after, res.frames, truth)
    _, _, on_calcium = removed_components(res.roi, after, res.frames, calcium)
    # Dense metal that is not calcium (the phantom's sternal wires, clips, stents).
    on_metal = removed_components(res.roi, after, res.frames, metal)[2] if metal is not None else 0
    row = score(res, after, truth_frames, max(int(res.exposed_field.sum()), 1))
    row.update(components=total, removed=gone, removed_on_truth=on_truth, removed_on_calcium=on_calcium,
               removed_on_metal=on_metal,
               note=note, filter_seconds=round(seconds, 3), calcium_free=not any(truth_frames))
    return row


def totals(rows: list[dict]) -> dict:
    out = {k: int(sum(r[k] for r in rows)) for k in ("components", "removed", "removed_on_truth", "removed_on_calcium",
                                              "removed_on_metal")}
    for name in ("before", "after"):
        calc = [r[name] for r in rows if not r["calcium_free"]]
        free = [r[name] for r in rows if r["calcium_free"]]
        out[name] = {"found": f"{sum(c['found'] for c in calc)} of {sum(c['frames_with_truth'] for c in calc)}",
                     "calcium_free_frames_with_roi": f"{sum(c['frames_with_roi'] for c in free)} of "
                                                     f"{sum(c['frames'] for c in free)}",
                     "roi_area_pct_field_median": float(np.median([r[name]["roi_area_pct_field"] for r in rows]))
                     if rows else None}
    out["filter_seconds_median"] = float(np.median([r["filter_seconds"] for r in rows])) if rows else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--patients", type=int, default=12, help="phantom test patients")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--second", type=int, default=8, help="second-generator cines of each kind (calcified, free)")
    ap.add_argument("--out", help="JSON of the per-cine figures")
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.cine import Cine
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib.phantom import generate_acquisition
    from CACTrainerLib.phantom_domain import randomized_params
    from second_generator import make_cine

    torch.set_num_threads(2)
    model, meta = load_model(args.model)
    result = {"phantom": [], "second_generator": [], "real": {}}
    for patient in range(args.patients):
        rng = np.random.default_rng([args.seed, patient, 0xD0])  # as phantom_pool draws the test patients
        params = randomized_params(rng, n_frames=64, calcium_free_fraction=0.4)
        params.onset_fraction_range, params.early_onset_prob = (0.4, 0.55), 0.0
        acq = generate_acquisition(params, seed=args.seed, patient=patient, acquisition=0)
        row = run_one(acq.to_cine(), model, meta, None, acq.majority, acq.calcium, acq.metal)
        row["patient"] = patient
        result["phantom"].append(row)
        print(f"phantom P{patient}: {row['removed']} of {row['components']} components removed "
              f"({row['removed_on_calcium']} on calcium); ROI frames {row['before']['frames_with_roi']} -> "
              f"{row['after']['frames_with_roi']}", flush=True)
    for i in range(2 * args.second):
        seed, calcium = (i, True) if i < args.second else (10_000 + i - args.second, False)
        frames, masks, info = make_cine(seed, calcium=calcium)
        cine = Cine(frames=frames, frame_time_ms=info["frame_time_ms"],
                    spacing_mm=(info["spacing_mm"], info["spacing_mm"]), spacing_source="synthetic",
                    bits_stored=8, source="second_generator")
        row = run_one(cine, model, meta, info["onset"], masks, masks)
        row["seed"] = seed
        result["second_generator"].append(row)
        print(f"second generator seed {seed}: {row['removed']} of {row['components']} removed "
              f"({row['removed_on_calcium']} on calcium)", flush=True)
    for rel, opts in REAL:
        p = HERE.parent.parent / "shared" / "data" / rel
        if not p.exists():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cine = load_cine(p, spacing_mm=opts.get("spacing_mm"), frame_time_ms=opts.get("frame_time_ms"))
        result["real"][rel] = run_one(cine, model, meta, opts.get("onset"))
        print(f"{rel}: {json.dumps(result['real'][rel])}", flush=True)
    summary = {"phantom": totals(result["phantom"]), "second_generator": totals(result["second_generator"])}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, **result}, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
