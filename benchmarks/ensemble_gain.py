"""Does averaging independently trained models beat each of them?  Patch, frame and cine AUC on the test folds.

    python benchmarks/ensemble_gain.py A.safetensors B.safetensors [C ...] [--ref REF] [--folds 3000:36,4000:36]

Each argument is a model file, or a training checkpoint (``RUN/checkpoint.safetensors`` or a copy of
one) when ``--ref`` names a model file of its architecture.  On each test fold of compare_models.py
(``difficulty.test_fold``) it scores every model alone and the ensemble, whose patch probability is
the sigmoid of the mean of the members' logits (members calibrated differently then weigh alike), and
gives the ensemble's patch-AUC gain over its best member with a 95 % interval from 1,000 bootstrap
resamples of the test patients (the unit the AUC varies with; ``metrics.auc_difference``).
Frame and cine AUCs are separability.py's ``evidence``.  Rows are appended to ``--out`` (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402


def mean_logit(probs: list[np.ndarray]) -> np.ndarray:
    """Sigmoid of the mean logit of several models' probabilities.

    Examples
    --------
    >>> p = mean_logit([np.array([0.5, 0.9]), np.array([0.5, 0.1])])
    >>> np.round(p, 3)
    array([0.5, 0.5])
    """
    eps = 1e-7
    z = [np.log(np.clip(p, eps, 1 - eps)) - np.log1p(-np.clip(p, eps, 1 - eps)) for p in probs]
    return 1.0 / (1.0 + np.exp(-np.mean(z, axis=0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="model files, or checkpoints with --ref")
    ap.add_argument("--ref", help="model file of the checkpoints' architecture")
    ap.add_argument("--folds", default="3000:36,4000:36", help="SEED:PATIENTS,...")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="ensemble_gain.jsonl")
    args = ap.parse_args(argv)
    if len(args.models) < 2:
        ap.error("an ensemble needs two models or more")

    import torch
    from CACIdentifierLib.metrics import auc_difference, roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation
    from difficulty import test_fold
    from epoch_average import load_checkpoint_weights
    from separability import evidence

    torch.set_num_threads(args.threads)
    ref = load_model(args.ref)[0] if args.ref else None
    members = []
    for m in args.models:
        try:
            members.append(load_model(m)[0])
        except Exception:  # a training checkpoint, not a model file
            if ref is None:
                ap.error(f"{m} is not a model file; give --ref for checkpoints")
            members.append(load_checkpoint_weights(m, ref))
    t0 = time.perf_counter()
    for s, n in (f.split(":") for f in args.folds.split(",")):
        fs = test_fold(int(n), int(s), args.threads)[0]
        probs = [evaluation.predict_patches(m, fs, torch.device("cpu"), amp=False).probs for m in members]
        ens = mean_logit(probs)
        y = fs.patch_labels > 0.5
        single = [evidence(p, y, fs.acquisition) for p in probs]
        best = int(np.argmax([r["patch_auc"] for r in single]))
        patient = np.repeat(np.asarray(fs.patient), 5)
        row = {"seed": int(s), "models": args.models, "single": single, "ensemble": evidence(ens, y, fs.acquisition),
               "gain_over_best": auc_difference(y, probs[best], ens, patient),
               "logit_corr_first_two": float(np.corrcoef([np.log(p + 1e-7) - np.log1p(-p + 1e-7)
                                                          for p in probs[:2]])[0, 1]),
               "best_member": args.models[best], "seconds": round(time.perf_counter() - t0, 1)}
        assert abs(row["single"][best]["patch_auc"] - roc_auc(y, probs[best])) < 1e-12
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        g = row["gain_over_best"]
        log(f"seed {s}: " + "; ".join(f"{Path(m).name} {r['patch_auc']:.3f}/{r['frame_auc']:.3f}/{r['cine_auc']:.3f}"
                                      for m, r in zip(args.models, single))
            + f"; ensemble {row['ensemble']['patch_auc']:.3f}/{row['ensemble']['frame_auc']:.3f}/"
              f"{row['ensemble']['cine_auc']:.3f} (patch/frame/cine AUC); gain over the best member "
              f"{g['diff']:+.3f} (95 % CI {g['ci95'][0]:+.3f}..{g['ci95'][1]:+.3f})")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
