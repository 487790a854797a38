"""What XA display processing costs a model: the same patients' frames plain and processed, paired by patient.

    python benchmarks/frame_score.py MODEL --cache DIR --test-seed 39000,40000,41000,42000 [--display-processing 1]
    python benchmarks/display_shift.py MODEL [MODEL ...] --cache DIR --pool test36-39000_40000_41000_42000
        [--bootstrap 2000] [--out display_shift.json]

``--pool NAME`` is a plain pool of frame_score.py's cache and ``NAME-dp1`` its processed copy (the same patients and
non-contrast frames, ``frame_score.py --display-processing 1``); every model needs a cached pass of both.  Per
model: the frame AUC of its gate score on each, and processed minus plain (frame AUC, specificity at a few
sensitivities) with a 95 % interval over resamples of patients.  The simulated annotators judge visibility on the
frames they see, so a few frames change label between the two; the paired difference uses the frames whose truth
both share (their count is reported).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from frame_curves import paired_bootstrap  # noqa: E402
from frame_score import cached_pool, cached_predictions, frame_evidence, not_cached  # noqa: E402
from gpu_protocol import log  # noqa: E402


def shift(plain: dict, processed: dict, n: int, seed: int = 0) -> dict:
    """Processed minus plain for one model, paired by patient on the frames whose truth both panels share.

    Parameters
    ----------
    plain, processed : dict
        ``gate`` (F,) gate scores, ``truth`` (F,) bool and ``groups`` (F patient ids) of the same F frames in the
        same order (frame_score.frame_evidence and calibrate.frame_groups).
    n : int
        Patient resamples.

    Returns
    -------
    dict
        ``frames``, ``frames_same_truth``, ``calcified`` (plain, processed), ``frame_auc`` (plain, processed,
        each on all its frames) and ``processed_minus_plain`` (frame_curves.paired_bootstrap on the shared frames).

    Examples
    --------
    A model whose scores lose their signal when processed; one frame changes label and is left out.

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(rng.random(30) < 0.5, 4); groups = np.repeat(np.arange(30), 4)
    >>> a = {"gate": y + rng.normal(0, 0.5, y.size), "truth": y, "groups": groups}
    >>> y2 = y.copy(); y2[0] = not y2[0]
    >>> b = {"gate": rng.normal(0, 1, y.size), "truth": y2, "groups": groups}
    >>> s = shift(a, b, n=100)
    >>> s["frames"], s["frames_same_truth"], s["processed_minus_plain"]["frame_auc"]["high"] < 0
    (120, 119, True)
    """
    from CACIdentifierLib.metrics import roc_auc

    if list(plain["groups"]) != list(processed["groups"]):
        raise ValueError("the two panels must hold the same patients' frames in the same order")
    ya, yb = np.asarray(plain["truth"], bool), np.asarray(processed["truth"], bool)
    same = ya == yb
    groups = [g for g, k in zip(plain["groups"], same) if k]
    d = paired_bootstrap(np.asarray(plain["gate"])[same], np.asarray(processed["gate"])[same], ya[same], groups, n,
                         seed=seed)
    return {"frames": int(same.size), "frames_same_truth": int(same.sum()),
            "calcified": [int(ya.sum()), int(yb.sum())],
            "frame_auc": [roc_auc(ya, plain["gate"]), roc_auc(yb, processed["gate"])],
            "processed_minus_plain": d}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--cache", type=Path, required=True, help="frame_score.py's cache folder")
    ap.add_argument("--pool", required=True, help="the plain pool's name; NAME-dp1 is its processed copy")
    ap.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="patient resamples (default 2000)")
    ap.add_argument("--out", default="display_shift.json")
    args = ap.parse_args(argv)
    if args.bootstrap < 1:
        ap.error("--bootstrap needs at least one resample")
    pools = (args.pool, f"{args.pool}-dp1")
    for pool in pools:
        if (lack := not_cached(args.cache, args.models, pool)) is not None:
            ap.error(f"{lack}; run frame_score.py with --cache (and --display-processing 1 for the processed copy) "
                     "first")

    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib.calibrate import frame_groups

    out = {"pools": list(pools), "models": {}}
    for path in args.models:
        model, meta = load_model(path)
        panels = []
        for pool in pools:
            fs = cached_pool(args.cache, pool, None)
            if panels and not np.array_equal(fs.frame_index, panels[0]["frame_index"]):
                raise SystemExit(f"display_shift: {pool} does not hold {pools[0]}'s frames")
            ev = frame_evidence(cached_predictions(args.cache, path, pool, model, fs), meta, fs)
            panels.append({"gate": ev["gate"], "truth": ev["truth"], "groups": frame_groups(fs),
                           "frame_index": np.asarray(fs.frame_index)})
        row = shift(panels[0], panels[1], args.bootstrap)
        out["models"][path] = row
        f = row["processed_minus_plain"]["frame_auc"]
        log(f"{Path(path).name}: frame AUC plain {row['frame_auc'][0]:.3f}, processed {row['frame_auc'][1]:.3f}; "
            f"processed - plain {f['difference']:+.3f} (95 % {f['low']:+.3f}..{f['high']:+.3f}) on "
            f"{row['frames_same_truth']} of {row['frames']} frames")
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
