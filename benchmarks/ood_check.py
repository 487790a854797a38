"""Does the activation-statistics warning (ood.py) flag cines unlike a model's training data?

    python benchmarks/ood_check.py MODEL.safetensors [--domain randomised|default] [--calcium 0.25]

Fits the statistics on 12 held-out phantom patients of the model's domain (``randomised``: a
``phantom_pool`` of seed 2000; ``default``: the default phantom, seed 2000, calcium ``--calcium``
/mm), then prints the median activation score and whether ``identify`` warns, for the real cines
of ../shared/data and for four new cines of each phantom domain (the randomised ones also through XA display
processing).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for sub in ("CACIdentifier", "CACTrainer"):
    sys.path.insert(0, str(HERE.parent / sub))

REAL = [("xa/rubo-rca-ecg-96f.dcm", {}), ("xa/rubo-biplane-b-ecg-17f.dcm", {}),
        ("frames/lca-clinical-37f", {"spacing_mm": 0.308, "frame_time_ms": 66.7, "onset": 5})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--domain", choices=("randomised", "default"), default="randomised")
    ap.add_argument("--calcium", type=float, default=0.25, help="calcium /mm of the default domain")
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import load_model
    from CACIdentifierLib.ood import MARGIN, feature_statistics
    from CACTrainerLib import dataset, evaluation
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition
    from CACTrainerLib.phantom_domain import randomized_params
    from CACTrainerLib.phantom_pool import phantom_pool

    torch.set_num_threads(2)
    model, meta = load_model(args.model)
    if args.domain == "randomised":
        val = phantom_pool(12, seed=2000, n_frames=64, frames_per_acquisition=6, workers=2)
    else:
        sets = []
        for pt in range(12):
            p = PhantomParams(n_frames=64, calcium_mu_per_mm=args.calcium, onset_fraction_range=(0.4, 0.55),
                              early_onset_prob=0.0)
            acq = generate_acquisition(p, seed=2000, patient=pt)
            sets.append(dataset.frames_from_acquisition(acq, acquisition=f"P{pt}", patient=f"P{pt}",
                                                        frames_per_acquisition=6))
        val = dataset.FrameSet.concat(sets)
    stats = feature_statistics(evaluation.pooled_features(model, val, torch.device("cpu"), False, 32),
                               data=f"{args.domain} phantom, 12 patients")
    print(f"held-out frames: median {stats['frame_score_median']:.3g}, 99th percentile "
          f"{stats['frame_score_q99']:.3g}, warning above {MARGIN * stats['frame_score_q99']:.3g}")
    meta = dict(meta, feature_statistics=stats)
    rows = []
    for rel, opts in REAL:
        path = HERE.parent.parent / "shared" / "data" / rel
        if path.exists():
            cine = load_cine(path, spacing_mm=opts.get("spacing_mm"), frame_time_ms=opts.get("frame_time_ms"))
            rows.append((rel, identify(cine, model, meta, onset=opts.get("onset"))))
    for pt in range(4):
        drawn = randomized_params(np.random.default_rng([5, pt]), n_frames=64)
        drawn.onset_fraction_range, drawn.early_onset_prob = (0.4, 0.55), 0.0  # before the processed copy
        for name, q in (("default phantom", PhantomParams(n_frames=64)), ("randomised phantom", drawn),
                        # the same patient through XA display processing (harmonization, edge enhancement)
                        ("randomised, processed", replace(drawn, display_processing_prob=1.0))):
            q.onset_fraction_range, q.early_onset_prob = (0.4, 0.55), 0.0
            acq = generate_acquisition(q, seed=4242, patient=pt)
            label, dp = f"{name} {pt}", acq.truth["display_processing"]
            if dp:  # how strong: the gains of harmonization and edge enhancement
                label += f" (gains {dp['harmonization_gain']:.2f}, {dp['edge_gain']:.2f})"
            rows.append((label, identify(acq.to_cine(), model, meta)))
    for name, res in rows:
        print(f"{name:<48} score {np.median(res.ood_scores):6.3g}  warning {'yes' if res.ood_warning else 'no'}")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
