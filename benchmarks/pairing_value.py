"""What the paired contrast frame is worth to the classifier: the right pair, a wrong phase, or none.

    python benchmarks/pairing_value.py MODEL.safetensors --cache DIR --pool test36-7000_8000_9000_10000

The double-head network reads each non-contrast patch with the patch of its contrast frame at the same
cardiac phase (synchronization's pair).  Three inputs on the same frames (a pool that
``benchmarks/frame_score.py --cache DIR`` kept):

- ``paired``: the contrast frame synchronization chose (what inference does);
- ``other phase``: the contrast frame paired with another non-contrast frame of the same cine
  (:func:`shifted_within`: half the cine's frames along), as a pairing error would give;
- ``no contrast``: the non-contrast frame in place of the contrast frame (no vessel map at all).

Prints the patch AUC pooled and within each patch position (``metrics.within_position_auc``) of
each input, and the paired input's gain over the others with a patient-bootstrap 95 % interval
(``metrics.auc_difference``).  If a wrong phase costs little, the identification does not hinge
on the synchronization; if no contrast costs little, the second head adds little.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402


def shifted_within(groups) -> np.ndarray:
    """For each item, the index of the item half its group's length further along (cyclically).

    A cine's frames shifted by half their number: each non-contrast frame gets the contrast frame
    of another frame of the same cine (a group of one keeps its own).

    Examples
    --------
    >>> shifted_within(["a", "a", "a", "a", "b", "b", "c"]).tolist()
    [2, 3, 0, 1, 5, 4, 6]
    """
    groups = np.asarray(groups)
    out = np.arange(len(groups))
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        out[idx] = np.roll(idx, -(len(idx) // 2))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--pool", required=True, help="a pool folder name in the cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib import metrics
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation
    from frame_score import cached_pool

    torch.set_num_threads(args.threads)
    if not (args.cache / args.pool / "done").exists():
        raise SystemExit(f"no pool {args.pool} in {args.cache}; run benchmarks/frame_score.py --cache first")
    fs = cached_pool(args.cache, args.pool, None)
    model, _ = load_model(args.model)
    y = np.asarray(fs.labels).reshape(-1) > 0.5
    groups = np.repeat(np.asarray(fs.patient), 5)
    shift = shifted_within(fs.acquisition)
    inputs = {"paired": fs,
              "other phase": dataclasses.replace(fs, c=np.asarray(fs.c)[shift]),
              "no contrast": dataclasses.replace(fs, c=fs.nc)}
    probs, rows = {}, {}
    for name, variant in inputs.items():
        t0 = time.perf_counter()
        probs[name] = evaluation.predict_patches(model, variant, torch.device("cpu"), amp=False).probs
        within = metrics.within_position_auc(y, probs[name])
        rows[name] = {"patch_auc": metrics.roc_auc(y, probs[name]), "within_position": within}
        log(f"{name}: patch AUC {rows[name]['patch_auc']:.3f}, within positions {within['mean']:.3f} "
            f"({' '.join('-' if a is None else f'{a:.3f}' for a in within['per_position'])}) "
            f"in {time.perf_counter() - t0:.0f} s")
    for name in ("other phase", "no contrast"):
        d = metrics.auc_difference(y, probs[name], probs["paired"], groups)
        rows[name]["paired_minus_this"] = d
        log(f"paired minus {name}: {d['diff']:+.3f} (95 % interval {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})")
    if args.out:
        args.out.write_text(json.dumps({"model": Path(args.model).name, "pool": args.pool, "inputs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
