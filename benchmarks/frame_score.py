"""Frame decisions beyond the most probable patch: does the cine's evidence buy calcium-free frames at equal sensitivity?

    python benchmarks/frame_score.py FIRST.safetensors [MODEL ...] [--val 72] [--test 36]
        [--test-seed 3000,4000,5000,6000] [--sensitivity S] [--out frame_score.json]

Inference decides per frame: an ROI appears where a patch's probability reaches the classifier threshold
and its decoder map survives refinement.  A frame's *gate score* is the highest threshold at which it
still gets an ROI (:func:`gate_score`), so "frame found" at threshold t is "gate score >= t".  Issue 12's
measures at a matched sensitivity hinge on how well that score separates calcified from calcium-free
frames.  Calcium is visible in every non-contrast frame of a calcified cine, while a false positive
comes and goes, so the mean evidence over a cine's frames may separate better than any one frame.

Every model (FIRST first, then each MODEL) is run once on a validation pool (``--val`` patients of
phantom_pool seed 2000, as compare_models.py's ``--calibrate``) and on the pooled test folds, with
its card's calibration and refinement.  Per model and frame decision ("family"):

- ``frame``: gate score >= t (the card's rule with the threshold moved);
- ``frame+cine_p``: gate score >= t and the cine's mean most-probable-patch >= c;
- ``frame+cine_gate``: gate score >= t and the cine's mean gate score >= c;

the operating point (t, or t and c) is chosen on the validation pool: the highest validation
specificity whose sensitivity reaches the target (``--sensitivity``; default FIRST's validation
sensitivity at its card's point, as ``compare_models.py --match-first``).  The test pool then gets
issue 12's item-4 measures at that point (evaluation.evaluate with ``frame_gate``) and the verdict
against FIRST at its card's point (compare_models.item4_verdict); frame AUCs of each score beside.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_protocol import log, per_cine, summarize  # noqa: E402

FAMILIES = ("frame", "frame+cine_p", "frame+cine_gate")


def gate_score(probs: np.ndarray, rois: np.ndarray, field: np.ndarray, refinement: dict) -> float:
    """The highest classifier threshold at which the frame still gets an ROI; 0 when none does.

    ``probs`` (5,) calibrated patch probabilities, ``rois`` (5, 256, 256) decoder maps, ``field`` the
    frame's exposed field.  Gating in more patches only adds to the stitched map (max), so the ROI
    grows monotonically as the threshold falls and one pass down the sorted probabilities finds it.
    """
    from CACTrainerLib.evaluation import frame_roi

    for p in sorted(set(np.asarray(probs, float).tolist()), reverse=True):
        if frame_roi(rois, probs >= p, field, refinement).any():
            return float(p)
    return 0.0


def cine_mean(scores, cines) -> np.ndarray:
    """Each frame's score replaced by the mean over the frames of its cine.

    Examples
    --------
    >>> cine_mean([0.2, 0.4, 0.9], ["a", "a", "b"]).tolist()
    [0.30000000000000004, 0.30000000000000004, 0.9]
    """
    s = np.asarray(scores, float)
    c = np.asarray(cines, dtype=object)
    out = np.empty_like(s)
    for name in set(c.tolist()):
        sel = c == name
        out[sel] = s[sel].mean()
    return out


def operating_point(frame: np.ndarray, truth: np.ndarray, target: float, cine=None) -> dict:
    """The validation point of highest specificity whose frame sensitivity reaches ``target``.

    A frame is found when ``frame >= t`` (and ``cine >= c`` when ``cine`` is given: per-frame cine
    scores).  Ties in specificity keep the higher sensitivity, then the higher thresholds.

    Examples
    --------
    Three calcified frames (scores 0.9, 0.6, 0.3) and three calcium-free ones (0.8, 0.2, 0.1):
    finding two of three costs one false positive; with cine scores that set the calcium-free
    frame at 0.8 apart, none.

    >>> f = np.array([0.9, 0.6, 0.3, 0.8, 0.2, 0.1]); y = np.array([1, 1, 1, 0, 0, 0], bool)
    >>> operating_point(f, y, 0.6)
    {'t': 0.6, 'c': None, 'sensitivity': 0.6666666666666666, 'specificity': 0.6666666666666666}
    >>> operating_point(f, y, 0.6, cine=np.array([0.7, 0.7, 0.7, 0.4, 0.4, 0.4]))
    {'t': 0.6, 'c': 0.7, 'sensitivity': 0.6666666666666666, 'specificity': 1.0}
    """
    frame = np.asarray(frame, float)
    truth = np.asarray(truth, bool)
    need = math.ceil(target * truth.sum() - 1e-9)
    best = None
    for c in ([None] if cine is None else sorted(set(np.asarray(cine, float).tolist()))):
        ok = np.ones_like(truth) if c is None else np.asarray(cine, float) >= c
        pos = np.sort(frame[truth & ok])[::-1]
        if need < 1 or len(pos) < need:
            continue
        t = float(pos[need - 1])
        found = (frame >= t) & ok
        sens = float(found[truth].mean())
        spec = float((~found[~truth]).mean())
        key = (spec, sens, t, -1.0 if c is None else c)
        if best is None or key > best[0]:
            best = (key, {"t": t, "c": c, "sensitivity": sens, "specificity": spec})
    if best is None:
        raise ValueError(f"no point reaches sensitivity {target}")
    return best[1]


def frame_evidence(model, meta: dict, fs) -> dict:
    """One network pass over ``fs``: predictions, calibrated probabilities and the per-frame scores."""
    import torch
    from CACIdentifierLib import calibration as calib
    from CACIdentifierLib.field import exposed_field
    from CACTrainerLib import evaluation

    cfg = card_config(meta)
    pred = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False, decode=True)
    probs = pred.probs
    if meta.get("calibration"):
        probs = calib.apply(probs, meta["calibration"]).astype(np.float32)
    p5 = probs.reshape(-1, 5)
    gate = np.array([gate_score(p5[f], pred.rois[5 * f:5 * f + 5], exposed_field(fs.nc[f], margin_px=3),
                                cfg.refinement) for f in range(len(fs))])
    truth = np.asarray([bool(c.any()) for c in fs.calcium])
    return {"pred": pred, "gate": gate, "max_p": p5.max(axis=1), "truth": truth,
            "cine_p": cine_mean(p5.max(axis=1), fs.acquisition), "cine_gate": cine_mean(gate, fs.acquisition)}


def card_config(meta: dict, threshold: float | None = None):
    """TrainConfig with a card's refinement and classifier threshold (or ``threshold``)."""
    from CACTrainerLib import training

    return training.TrainConfig(
        refinement=dict(meta.get("refinement", {})) or training.TrainConfig().refinement,
        classifier_threshold=float(meta.get("classifier_threshold", 0.5) if threshold is None else threshold))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--val", type=int, default=72)
    ap.add_argument("--val-seed", type=int, default=2000)
    ap.add_argument("--test", type=int, default=36)
    ap.add_argument("--test-seed", default="3000,4000,5000,6000")
    ap.add_argument("--sensitivity", type=float, help="target frame sensitivity (default: FIRST's on validation)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="frame_score.json")
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.allocator import keep_freed_memory
    from CACIdentifierLib.metrics import frame_detection, roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation
    from CACTrainerLib.dataset import FrameSet
    from CACTrainerLib.phantom_pool import phantom_pool
    from compare_models import item4_verdict

    keep_freed_memory()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    kw = dict(n_frames=64, frames_per_acquisition=6, workers=args.workers, calcium_free_fraction=0.4)
    val = phantom_pool(args.val, seed=args.val_seed, **kw)
    test = FrameSet.concat([phantom_pool(args.test, seed=int(s), **kw) for s in args.test_seed.split(",")])
    log(f"validation {val.summary()}; test {test.summary()} in {time.perf_counter() - t0:.0f} s")
    out = {"validation": val.summary(), "test": test.summary(), "models": {}}
    cpu = torch.device("cpu")
    target, reference = args.sensitivity, None
    for i, path in enumerate(args.models):
        model, meta = load_model(path)
        ev_val, ev_test = frame_evidence(model, meta, val), frame_evidence(model, meta, test)
        card = card_config(meta)
        row = {"frame_auc": {}, "families": {}}
        for name, split in (("validation", ev_val), ("test", ev_test)):
            row["frame_auc"][name] = {k: roc_auc(split["truth"], split[k])
                                      for k in ("max_p", "gate", "cine_p", "cine_gate")}
        # The card's own point: the gate score against the card's threshold.
        card_val = frame_detection(ev_val["gate"] >= card.classifier_threshold, ev_val["truth"])
        ev = evaluation.evaluate(model, test, card, cpu, calibration=meta.get("calibration"),
                                 predictions=ev_test["pred"])
        row["card"] = {"validation": card_val, "test": summarize(ev, per_cine(ev, test))}
        if i == 0:
            reference = row["card"]["test"]
            if target is None:
                target = card_val["sensitivity"]
            out["target_sensitivity"] = target
        for fam in FAMILIES:
            cine_key = {"frame": None, "frame+cine_p": "cine_p", "frame+cine_gate": "cine_gate"}[fam]
            point = operating_point(ev_val["gate"], ev_val["truth"], target,
                                    cine=None if cine_key is None else ev_val[cine_key])
            gate = np.ones(len(test), bool) if cine_key is None else ev_test[cine_key] >= point["c"]
            ev = evaluation.evaluate(model, test, card_config(meta, point["t"]), cpu,
                                     calibration=meta.get("calibration"), predictions=ev_test["pred"],
                                     frame_gate=gate)
            summary = summarize(ev, per_cine(ev, test))
            row["families"][fam] = {"validation": point, "test": summary,
                                    "item4_vs_first_card": item4_verdict(reference, summary)}
            d = summary["frame_detection"]
            log(f"{Path(path).name} {fam}: t={point['t']:.4f} c={point['c']} validation sens "
                f"{point['sensitivity']:.3f} spec {point['specificity']:.3f}; test found {d['tp']}/{d['tp'] + d['fn']}"
                f" clean {d['tn']}/{d['tn'] + d['fp']} area {summary['roi_area_pct_field']['median']:.2f} % "
                f"precision {summary['roi_precision']['median']:.2f}")
        out["models"][path] = row
        log(f"{Path(path).name} frame AUC {json.dumps(row['frame_auc'], default=float)}; card test "
            f"{row['card']['test']['frame_detection']}")
        Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
        del ev_val, ev_test
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
