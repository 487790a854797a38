"""How much one model's AUC moves between held-out phantom pools of the same size: the test folds' own noise.

    python benchmarks/pool_spread.py MODEL [--pools 3000:0:36,5000:0:36,1000:50000:36] [--cff 0.4] [--out F.json]

Each pool is ``phantom_pool(N, seed=SEED, first_patient=FIRST)``: N new randomised phantom patients, one
cine each, as compare_models.py and score_epochs.py draw their test folds (64 frames, 6 paired frames per
cine, ``--cff`` of them calcium-free).  Seed 1000 with a large FIRST gives patients of the generator seed
``cac train --phantom-pool --seed 0`` trains on, beyond any stream's reach.  Per pool the script prints
the patch, frame and cine AUC (separability.evidence), the patch AUC over the patches of calcified cines
only, and the mean probability of the negative patches of calcium-free and of calcified cines.  The
spread of a fixed model's figures over pools is the noise of one fold of that size, against which a
difference between recipes, or between validation and test patients, has to be read.
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


def pool_figures(probs: np.ndarray, labels: np.ndarray, acquisitions) -> dict:
    """Figures of one pool: evidence() plus the calcified-cines-only patch AUC and the negatives' mean p.

    Parameters
    ----------
    probs, labels : (F*5,) arrays
        Patch probabilities and labels, five patches per frame in ``acquisitions`` order.
    acquisitions : sequence of str, (F,)
        The cine of each frame.

    Examples
    --------
    >>> p = np.array([.9, .2, .1, .1, .1, .6, .1, .1, .1, .1])
    >>> y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    >>> r = pool_figures(p, y, ["a", "b"])
    >>> r["patch_auc_calcified_cines"], round(r["neg_mean_p_calcium_free"], 2), round(r["neg_mean_p_calcified"], 3)
    (1.0, 0.2, 0.125)
    """
    from CACIdentifierLib.metrics import roc_auc
    from separability import evidence

    y = np.asarray(labels, bool).reshape(-1)
    p = np.asarray(probs, np.float64).reshape(-1)
    cine = np.repeat(np.asarray(acquisitions), 5)  # five patches per frame
    calcified = np.isin(cine, np.unique(cine[y]))
    out = dict(evidence(p, y, acquisitions))
    out["patch_auc_calcified_cines"] = roc_auc(y[calcified], p[calcified])
    free = ~calcified
    out["neg_mean_p_calcium_free"] = float(p[free].mean()) if free.any() else None
    out["neg_mean_p_calcified"] = float(p[calcified & ~y].mean()) if (calcified & ~y).any() else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--pools", default="3000:0:36,4000:0:36,5000:0:36,6000:0:36",
                    help="SEED:FIRST_PATIENT:PATIENTS,...")
    ap.add_argument("--cff", type=float, default=0.4, help="calcium-free fraction of each pool")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="pool_spread.json")
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation
    from CACTrainerLib.phantom_pool import phantom_pool

    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    rows = {}
    for spec in args.pools.split(","):
        seed, first, n = (int(v) for v in spec.split(":"))
        t0 = time.perf_counter()
        fs = phantom_pool(n, seed=seed, first_patient=first, calcium_free_fraction=args.cff, n_frames=64,
                          frames_per_acquisition=6, workers=args.workers)
        probs = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
        rows[spec] = {"pool": fs.summary(), **pool_figures(probs, fs.patch_labels > 0.5, fs.acquisition),
                      "seconds": round(time.perf_counter() - t0, 1)}
        r = rows[spec]
        log(f"pool {spec}: patch AUC {r['patch_auc']:.3f} (calcified cines only {r['patch_auc_calcified_cines']:.3f}), "
            f"frame {r['frame_auc']:.3f}, cine {r['cine_auc']:.3f}; {r['calcified_cines']} calcified cines of "
            f"{r['cines']}")
    aucs = np.array([r["patch_auc"] for r in rows.values()])
    summary = {"patch_auc_mean": float(aucs.mean()), "patch_auc_sd": float(aucs.std(ddof=1)) if len(aucs) > 1 else None,
               "patch_auc_range": [float(aucs.min()), float(aucs.max())]}
    log(f"patch AUC over {len(aucs)} pools: mean {summary['patch_auc_mean']:.3f}, range "
        f"{summary['patch_auc_range'][0]:.3f}-{summary['patch_auc_range'][1]:.3f}"
        + (f", SD {summary['patch_auc_sd']:.3f}" if summary["patch_auc_sd"] is not None else ""))
    Path(args.out).write_text(json.dumps({"model": str(args.model), "cff": args.cff, "pools": rows,
                                          "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
