"""Paired A/B of patch AUCs on the difficulty test folds, with a patient-level bootstrap of the differences.

    python benchmarks/ab_patch_auc.py A1.safetensors B1.safetensors [A2 B2 ...] [--test 36] [--seed 3000,4000]
        [--out ab.json]

Models come in pairs (A, B); for each pair and each group of negatives of ``difficulty.py`` (all;
clean and holding metal; clean in a metal cine without metal in the patch; clean in a cine without
metal) it prints the AUC of all positives against that group for B minus A, with a 95 % interval
from 1,000 bootstrap resamples of the test patients and the share of resamples where B is not better.
With several ``--seed`` folds the groups are pooled over them, and the difference over all negatives
is also given per fold, with the A/B rule the project's training comparisons fix beforehand
(:func:`b_beats_a`: higher on every fold and the pooled interval above 0).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import difficulty  # noqa: E402
from script_entry import check_models  # noqa: E402


def fold_differences(y, scores_a, scores_b, patient, fold, n_boot: int = 1000) -> dict:
    """Patch AUC of B minus A on each fold and, with several folds, pooled over them.

    Parameters
    ----------
    y : (n,) bool
        Patch labels.
    scores_a, scores_b : (n,) float
        The two models' probabilities of the same patches.
    patient : (n,)
        The patient of each patch (the bootstrap's cluster); unique over the folds.
    fold : (n,)
        The fold (test seed) of each patch.
    n_boot : int
        Bootstrap resamples.

    Returns
    -------
    dict
        ``{str(fold): auc_difference(...), ..., "pooled": ...}`` (``"pooled"`` only with two folds or more).

    Examples
    --------
    >>> y = np.array([1, 0, 1, 0] * 2, bool)
    >>> a = np.array([.6, .5, .4, .5] * 2)
    >>> fold = np.repeat([3000, 4000], 4)
    >>> r = fold_differences(y, a, y.astype(float), np.arange(8) // 2, fold, n_boot=100)
    >>> sorted(r), r["3000"]["diff"], r["pooled"]["diff"]
    (['3000', '4000', 'pooled'], 0.5, 0.5)
    """
    from CACIdentifierLib.metrics import auc_difference

    fold = np.asarray(fold)
    keys = list(dict.fromkeys(fold.tolist()))
    out = {}
    for f in keys:
        sel = fold == f
        out[str(f)] = auc_difference(y[sel], scores_a[sel], scores_b[sel], patient[sel], n_boot=n_boot)
    if len(keys) > 1:
        out["pooled"] = auc_difference(y, scores_a, scores_b, patient, n_boot=n_boot)
    return out


def b_beats_a(differences: dict) -> bool:
    """The A/B rule of the training comparisons: B higher on every fold and the pooled 95 % interval above 0.

    With one fold, its own interval must lie above 0.

    Examples
    --------
    >>> ok = {"diff": 0.02, "ci95": [0.001, 0.04]}
    >>> b_beats_a({"3000": ok, "4000": {"diff": 0.01, "ci95": [-0.02, 0.03]}, "pooled": ok})
    True
    >>> b_beats_a({"3000": ok, "4000": {"diff": -0.001, "ci95": [-0.02, 0.03]}, "pooled": ok})
    False
    >>> b_beats_a({"3000": ok, "4000": ok, "pooled": {"diff": 0.02, "ci95": [-0.001, 0.04]}})
    False
    """
    folds = [v for k, v in differences.items() if k != "pooled"]
    overall = differences.get("pooled", folds[0] if len(folds) == 1 else None)
    return overall is not None and all(v["diff"] > 0 for v in folds) and overall["ci95"][0] > 0


def main():
    import torch
    from CACIdentifierLib.metrics import auc_difference, roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation
    from CACTrainerLib.dataset import FrameSet

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="pairs of model files: A1 B1 [A2 B2 ...]")
    ap.add_argument("--test", type=int, default=36)
    ap.add_argument("--seed", default="3000", help="test fold seed, or several comma-separated (pooled)")
    ap.add_argument("--out", default="ab_patch_auc.json")
    args = ap.parse_args()
    models = args.models
    if len(models) % 2:
        ap.error("give the models in pairs (A B)")
    try:
        seeds = [int(v) for v in str(args.seed).split(",")]
    except ValueError:
        ap.error(f"--seed: give integers separated by commas, not {args.seed!r}")
    check_models(models)
    torch.set_num_threads(2)
    folds = [difficulty.test_fold(args.test, seed, 2) for seed in seeds]
    fs = FrameSet.concat([f[0] for f in folds])
    snr, rendered, metal = (np.concatenate([f[i] for f in folds]) for i in (1, 2, 3))
    fold = np.concatenate([np.full(len(f[1]), seed) for seed, f in zip(seeds, folds)])
    labels = fs.patch_labels
    patch_metal = fs.metal.reshape(-1)
    patient = np.array([f"{s}/{p}" for s, p in zip(fold, np.repeat(np.asarray(fs.patient), 5))])
    probs, res = {}, {}
    for m in models:
        model, _ = load_model(m)
        probs[m] = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
        res[m] = difficulty.analyse(probs[m], labels, snr, rendered, metal, patch_metal)
        print(m, json.dumps(res[m]), flush=True)
    pos = labels > 0.5
    neg = difficulty.negative_strata(labels, rendered, metal, patch_metal)
    strata = {"all": neg["negatives"], **{k: neg[k] for k in ("holding_metal", "metal_cines_patch_free", "no_metal")}}
    out = {"models": res, "pairs": {}, "folds": seeds}
    for m in models:
        res[m]["auc_per_fold"] = {str(k): roc_auc(pos[fold == k], probs[m][fold == k]) for k in seeds}
        print(m, "patch AUC per fold", json.dumps(res[m]["auc_per_fold"]), flush=True)
    for a, b in zip(models[0::2], models[1::2]):
        diffs = fold_differences(pos, probs[a], probs[b], patient, fold)
        out["pairs"][f"{b} - {a}: by fold"] = {**diffs, "b_beats_a": b_beats_a(diffs)}
        for k, r in diffs.items():
            print(f"{b} - {a} [all negatives, {k}]: AUC diff {r['diff']:+.3f} (95 % CI {r['ci95'][0]:+.3f}.."
                  f"{r['ci95'][1]:+.3f}; share of resamples <= 0: {r['share_le_0']:.3f})", flush=True)
        print(f"{b} beats {a} by the A/B rule (higher on every fold, pooled interval above 0): "
              f"{'yes' if b_beats_a(diffs) else 'no'}", flush=True)
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
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
