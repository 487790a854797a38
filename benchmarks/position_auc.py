"""How much of a patch AUC is *where* the patch is: the five patch positions as a score, and the AUC within each.

    python benchmarks/position_auc.py --cache DIR --pool test36-3000_4000_5000_6000 MODEL.safetensors [MODEL ...]

Every frame gives five patch pairs at fixed places (``patches.patch_origins``: four quadrants and the
centre).  Calcium lies over the heart, so some positions hold far more positive patches than others,
and a scorer that knows only the position already ranks patches better than chance.  The pooled patch
AUC (compare_models.py, issue 12's target) mixes that prior with what the network sees in the image;
the AUC within each position, with positives and negatives of the same place
(``metrics.within_position_auc``, also in every evaluation as ``auc_within_position``), does not.

Reads the pools and network passes that ``benchmarks/frame_score.py --cache DIR`` keeps (a pool folder
``DIR/POOL`` and ``DIR/<model file name>-<size>-<mtime>-POOL/probs.npy`` per model; the model file
must be the one scored, as its size and time name the folder).  No network runs here.  Prints one line
per pool and model; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frame_score import prediction_folder  # noqa: E402
from gpu_protocol import log  # noqa: E402


def position_prior_auc(labels) -> float:
    """Patch AUC of a scorer that knows only each patch's position: its rate of positive patches.

    ``labels`` (frames, 5) of bool.  Patches at one position tie, and ties count half.  Below, each
    positive (rate 0.5) outranks the 12 negatives at rate 0 and ties with the 4 at rate 0.5: 14/16.

    Examples
    --------
    >>> position_prior_auc([[1, 0, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    0.875
    """
    from CACIdentifierLib.metrics import roc_auc

    y = np.asarray(labels, bool)
    return roc_auc(y.ravel(), np.broadcast_to(y.mean(axis=0), y.shape).ravel())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--pool", action="append", required=True, help="a pool folder name in the cache (repeatable)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.metrics import roc_auc, within_position_auc

    rows = []
    for pool in args.pool:
        if not (args.cache / pool / "done").exists():
            raise CacError(f"no pool {pool} in {args.cache}; run benchmarks/frame_score.py --cache first")
        labels = np.load(args.cache / pool / "labels.npy").reshape(-1, 5) > 0.5
        prior = position_prior_auc(labels)
        log(f"{pool}: {len(labels)} frames, positive patches per position {labels.sum(axis=0).tolist()}, "
            f"position prior alone {prior:.3f}")
        for model in args.models:
            folder = prediction_folder(args.cache, model, pool)
            if not (folder / "done").exists():
                log(f"  {Path(model).name}: no cached network pass in {folder} (run frame_score.py --cache)")
                continue
            probs = np.load(folder / "probs.npy").reshape(-1, 5)
            within = within_position_auc(labels.ravel(), probs.ravel())["per_position"]
            row = {"pool": pool, "model": Path(model).name, "patch_auc": roc_auc(labels.ravel(), probs.ravel()),
                   "position_prior_auc": prior, "within_position_auc": within,
                   "positives_per_position": labels.sum(axis=0).tolist()}
            rows.append(row)
            log(f"  {row['model']}: pooled {row['patch_auc']:.3f}, within each position "
                + " ".join("-" if a is None else f"{a:.3f}" for a in within))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
