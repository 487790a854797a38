"""Test-time augmentation: patch AUC with the classifier's logits averaged over flips and rotations.

    python benchmarks/tta_gain.py MODEL.safetensors [--patients 24] [--seed 2500]

Training flips and rotates patch pairs by multiples of 90 degrees (dataset.Augment), so these
eight transforms are in the training distribution.  Scores the held-out phantom pool of ``--seed``
(40 % calcium-free) under each transform and prints the AUC of each, and of their means
(plain, horizontal flip, four, eight).  docs/identify.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from script_entry import check_models  # noqa: E402

# (quarter turns, flipped first): identity, rot180, rot90, rot270, then the same after a horizontal flip
TRANSFORMS = [(k, f) for f in (False, True) for k in (0, 2, 1, 3)]
MEANS = {"plain": [0], "horizontal flip": [0, 4], "four (id, rot180, hflip, vflip)": [0, 1, 4, 5],
         "eight": list(range(8))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--seed", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.background import model_inputs
    from CACIdentifierLib.metrics import roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import dataset
    from CACTrainerLib.phantom_pool import phantom_pool

    check_models([args.model])
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    fs = phantom_pool(args.patients, seed=args.seed, calcium_free_fraction=0.4, n_frames=64,
                      frames_per_acquisition=6, workers=args.workers)
    model, _ = load_model(args.model)
    model.eval()
    labels = fs.patch_labels > 0.5
    ids = np.arange(fs.n_patches)
    logits = np.zeros((len(TRANSFORMS), len(ids)), np.float32)
    with torch.no_grad():
        for s in range(0, len(ids), 32):
            b = dataset.make_batch(fs, ids[s:s + 32], inputs=model_inputs(model))
            nc, c = torch.from_numpy(b["nc"]), torch.from_numpy(b["c"])
            for t, (k, flipped) in enumerate(TRANSFORMS):
                x, y = (nc.flip(-1), c.flip(-1)) if flipped else (nc, c)
                x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
                logits[t, s:s + 32] = model.classify_features(model.encode(x, y)).float().reshape(-1).numpy()
    result = {"pool": fs.summary(), "seconds": round(time.perf_counter() - t0, 1),
              "means": {name: roc_auc(labels, logits[sel].mean(0)) for name, sel in MEANS.items()},
              "single": {f"rot{90 * k}{' flipped' if f else ''}": roc_auc(labels, logits[t])
                         for t, (k, f) in enumerate(TRANSFORMS)}}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
