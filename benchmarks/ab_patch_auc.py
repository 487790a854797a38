"""Paired A/B of patch AUCs on the difficulty test fold, with a patient-level bootstrap of the differences.

    python benchmarks/ab_patch_auc.py A1.safetensors B1.safetensors [A2 B2 ...] [--test 36] [--out ab.json]

Models come in pairs (A, B); for each pair and each group of negatives of ``difficulty.py`` (all;
clean and holding metal; clean in a metal cine without metal in the patch; clean in a cine without
metal) it prints the AUC of all positives against that group for B minus A, with a 95 % interval
from 1,000 bootstrap resamples of the test patients and the share of resamples where B is not better.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import difficulty  # noqa: E402


def main():
    import torch
    from CACIdentifierLib.metrics import auc_difference
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="pairs of model files: A1 B1 [A2 B2 ...]")
    ap.add_argument("--test", type=int, default=36)
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--out", default="ab_patch_auc.json")
    args = ap.parse_args()
    models = args.models
    if len(models) % 2:
        ap.error("give the models in pairs (A B)")
    torch.set_num_threads(2)
    fs, snr, rendered, metal = difficulty.test_fold(args.test, args.seed, 2)
    labels = fs.patch_labels
    patch_metal = fs.metal.reshape(-1)
    patient = np.repeat(np.asarray(fs.patient), 5)
    probs, res = {}, {}
    for m in models:
        model, _ = load_model(m)
        probs[m] = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
        res[m] = difficulty.analyse(probs[m], labels, snr, rendered, metal, patch_metal)
        print(m, json.dumps(res[m]), flush=True)
    pos = labels > 0.5
    neg = difficulty.negative_strata(labels, rendered, metal, patch_metal)
    strata = {"all": neg["negatives"], **{k: neg[k] for k in ("holding_metal", "metal_cines_patch_free", "no_metal")}}
    out = {"models": res, "pairs": {}}
    for a, b in zip(models[0::2], models[1::2]):
        for name, group in strata.items():
            sel = pos | group
            r = auc_difference(pos[sel], probs[a][sel], probs[b][sel], patient[sel])
            d0, (lo, hi) = r["diff"], r["ci95"]
            out["pairs"][f"{b} - {a}: {name}"] = {"diff": d0, "ci95": [lo, hi], "p_le_0": r["share_le_0"],
                                                   "n_neg": int(group.sum())}
            print(f"{b} - {a} [{name}, {int(group.sum())} negatives]: AUC diff {d0:+.3f} (95 % CI {lo:+.3f}..{hi:+.3f}; "
                  f"share of resamples <= 0: {r['share_le_0']:.3f})", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
