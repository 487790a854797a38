"""Does the temporal consistency filter (``identify --temporal``) help?  Measured on whole phantom cines.

    python benchmarks/temporal_gain.py MODEL.safetensors [--patients 12] [--first 0] [--seed 3000]

The filter needs whole cines (every non-contrast frame and its cardiac phase), so this runs
``identify`` with and without ``temporal=True`` on complete domain-randomised phantom cines (the
GPU protocol's test patients: ``phantom_pool`` seed 3000, 40 % calcium-free) and scores every
analysed frame against the annotators' majority: frames with an ROI on calcium-free cines, frame
sensitivity and specificity, ROI precision (share of the ROI inside ROI_GT) and ROI area; Wilcoxon
over cines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for sub in ("CACIdentifier", "CACTrainer"):
    sys.path.insert(0, str(HERE.parent / sub))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--first", type=int, default=0, help="first patient number")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--out", help="JSON of the per-cine figures")
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.metrics import frame_detection, median_iqr, roi_precision, wilcoxon
    from CACIdentifierLib.modelio import load_model
    from CACIdentifierLib.roi_gt import roi_gt
    from CACTrainerLib.phantom import generate_acquisition
    from CACTrainerLib.phantom_domain import randomized_params

    torch.set_num_threads(2)
    model, meta = load_model(args.model)
    cines = {}
    for patient in range(args.first, args.first + args.patients):
        # As phantom_pool draws the test patients.
        rng = np.random.default_rng([args.seed, patient, 0xD0])
        params = randomized_params(rng, n_frames=64, calcium_free_fraction=0.4)
        params.onset_fraction_range, params.early_onset_prob = (0.4, 0.55), 0.0
        acq = generate_acquisition(params, seed=args.seed, patient=patient, acquisition=0)
        cine = acq.to_cine()
        row = {}
        for mode in ("plain", "temporal"):
            res = identify(cine, model, meta, temporal=mode == "temporal")
            truth_any = [bool(acq.majority[f].any()) for f in res.frames]
            pred_any = [bool(res.roi[f].any()) for f in res.frames]
            precision = [roi_precision(res.roi[f], roi_gt(acq.majority[f])) for f in res.frames if res.roi[f].any()]
            row[mode] = {"frames": len(res.frames), "truth_any": truth_any, "pred_any": pred_any,
                         "frames_with_roi_pct": 100.0 * float(np.mean(pred_any)) if pred_any else 0.0,
                         "roi_precision": median_iqr([p for p in precision if p is not None])["median"],
                         "roi_area_pct_field": float(np.median(res.roi_area_pct_field))}
        row["calcium_free"] = not any(row["plain"]["truth_any"])
        cines[f"P{patient:05d}"] = row
        print(f"P{patient:05d} free={row['calcium_free']} frames with ROI "
              f"{row['plain']['frames_with_roi_pct']:.0f}% -> {row['temporal']['frames_with_roi_pct']:.0f}%", flush=True)
    out = {}
    free = [k for k, r in cines.items() if r["calcium_free"]]
    calc = [k for k, r in cines.items() if not r["calcium_free"]]
    for mode in ("plain", "temporal"):
        t = sum((cines[k][mode]["truth_any"] for k in cines), [])
        p = sum((cines[k][mode]["pred_any"] for k in cines), [])
        out[mode] = {"detection": frame_detection(p, t),
                     "calcium_free_frames_with_roi_pct": median_iqr([cines[k][mode]["frames_with_roi_pct"] for k in free]),
                     "roi_precision": median_iqr([cines[k][mode]["roi_precision"] for k in calc]),
                     "roi_area_pct_field": median_iqr([cines[k][mode]["roi_area_pct_field"] for k in cines])}
    pairs = {"calcium_free_frames_with_roi_pct": (free, "frames_with_roi_pct"),
             "roi_precision": (calc, "roi_precision"), "roi_area_pct_field": (list(cines), "roi_area_pct_field")}
    out["wilcoxon_temporal_vs_plain"] = {}
    for name, (keys, key) in pairs.items():
        ab = [(cines[k]["temporal"][key], cines[k]["plain"][key]) for k in keys
              if cines[k]["temporal"][key] is not None and cines[k]["plain"][key] is not None]
        out["wilcoxon_temporal_vs_plain"][name] = wilcoxon([a for a, _ in ab], [b for _, b in ab]) if ab else None
    print(json.dumps(out, indent=1, default=float))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": out, "cines": cines}, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
