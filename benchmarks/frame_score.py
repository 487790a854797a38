"""Frame decisions beyond the most probable patch: does the cine's evidence buy calcium-free frames at equal sensitivity?

    python benchmarks/frame_score.py FIRST.safetensors [MODEL ...] [--val 72] [--test 36]
        [--test-seed 3000,4000,5000,6000] [--sensitivity S] [--out frame_score.json]

Inference decides per frame: an ROI appears where a patch's probability reaches the classifier threshold
and its decoder map survives refinement.  A frame's *gate score* is the highest threshold at which it
still gets an ROI (``gate_scores`` of calibrate.frame_detection_curve), so "frame found" at threshold t
is "gate score >= t".  Issue 12's measures at a matched sensitivity hinge on how well that score
separates calcified from calcium-free frames.  Calcium is visible in every non-contrast frame of a calcified cine, while a false positive
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
The ``frame+cine_p`` family is what ``cac calibrate --cine-gate`` chooses and inference applies
(calibrate.cine_operating_point, temporal.cine_gate).  ``--cache DIR`` keeps the pools and each
model's predictions, so that later runs (another model, another target) skip the network.
``--display-processing P`` runs the test patients' cines through XA display processing (1: all of them; the
same patients and non-contrast frames otherwise, so a processed panel pairs with the plain one by patient; the
simulated annotators judge visibility on the processed frames, so a few labels may differ).
``--roi-patches 5,2,1`` also scores each card with its ROI drawn from the K most probable positive patches
(the card option ``roi_patches``, docs/identify.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_protocol import log, per_cine, summarize  # noqa: E402
from pool_cache import cached_pool, test_pool_name, val_pool_name  # noqa: E402

FAMILIES = ("frame", "frame+cine_p", "frame+cine_gate")


def prediction_folder(cache: Path, path: str, pool: str) -> Path:
    """The cache folder of model file ``path``'s network pass over ``pool`` (its size and time name it)."""
    from CACIdentifierLib.modelio import read_metadata

    read_metadata(path)  # a wrong path is one line (CacError), not a traceback from stat
    stat = Path(path).stat()
    return cache / f"{Path(path).name}-{stat.st_size}-{int(stat.st_mtime)}-{pool}"


def not_cached(cache: Path, models, pool: str) -> str | None:
    """What ``pool`` lacks in ``cache`` for a run over ``models`` without the network, or None when nothing."""
    missing = [m for m in models if not (prediction_folder(cache, m, pool) / "done").exists()]
    if (cache / pool / "done").exists() and not missing:
        return None
    return f"pool {pool}: no cached pool or pass of {', '.join(missing) or 'the pool'} in {cache}"


def cached_predictions(cache: Path | None, path: str, pool: str, model, fs):
    """The model's uncalibrated patch probabilities and ROI maps on ``fs`` (cached per model file and pool)."""
    import torch
    from CACTrainerLib import evaluation

    if cache is not None:
        folder = prediction_folder(cache, path, pool)
        if (folder / "done").exists():
            return evaluation.PatchPredictions(np.load(folder / "probs.npy"),
                                               np.load(folder / "rois.npy", mmap_mode="r"), None)
    pred = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False, decode=True)
    if cache is not None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "probs.npy", pred.probs)
        np.save(folder / "rois.npy", pred.rois)
        (folder / "done").write_text("")
    return pred


def frame_evidence(pred, meta: dict, fs) -> dict:
    """Calibrated probabilities and the per-frame scores of one network pass ``pred`` over ``fs``.

    ``gate``: the highest classifier threshold at which the frame gets an ROI at the card's refinement
    (calibrate.NO_ROI where none); ``cine_p`` and ``cine_gate``: the means of the most probable patch
    and of ``gate`` over the frame's cine (temporal.cine_evidence).
    """
    from CACIdentifierLib import calibration as calib
    from CACIdentifierLib.temporal import cine_evidence
    from CACTrainerLib.calibrate import frame_detection_curve

    probs = pred.probs
    if meta.get("calibration"):
        probs = calib.apply(probs, meta["calibration"]).astype(np.float32)
    p5 = probs.reshape(-1, 5)
    config = card_config(meta)
    curve = frame_detection_curve(probs, pred.rois, fs, config.refinement, roi_patches=config.roi_patches)
    gate = curve["gate_scores"]
    return {"pred": pred, "gate": gate, "max_p": p5.max(axis=1), "truth": curve["truth"],
            "cine_p": cine_evidence(p5.max(axis=1), fs.acquisition),
            "cine_gate": cine_evidence(gate, fs.acquisition)}


def roi_patches_figure(pred, meta: dict, fs, k: int, path, name: str = "") -> None:
    """A PNG of the card's ROIs drawn from all five patches and from the ``k`` most probable ones.

    Three calcified frames where the two ROIs differ most (largest area drawn by all five but not by
    ``k``) and two calcium-free frames that have an ROI with five patches and none with ``k`` (or the
    largest such difference): the frame, ROI_GT's calcium in green, the all-patch ROI outlined in red,
    the ``k``-patch ROI filled in yellow.  Chosen for showing the difference, not at random.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CACIdentifierLib import calibration as calib
    from CACIdentifierLib.field import exposed_field
    from CACIdentifierLib.fileutil import atomic_output
    from CACIdentifierLib.refinement import most_probable_patches
    from CACTrainerLib import evaluation
    from scipy import ndimage

    config = card_config(meta)
    probs = pred.probs if not meta.get("calibration") else calib.apply(pred.probs, meta["calibration"])
    p5 = np.asarray(probs, np.float32).reshape(-1, 5)
    gate = p5 >= config.classifier_threshold
    few = most_probable_patches(p5, gate, k)
    rows = []
    for f in np.flatnonzero(gate.sum(axis=1) > k):
        field = exposed_field(fs.nc[f], margin_px=3)
        sl = slice(5 * f, 5 * f + 5)
        all5 = evaluation.frame_roi(pred.rois[sl], gate[f], field, config.refinement)
        some = evaluation.frame_roi(pred.rois[sl], few[f], field, config.refinement)
        rows.append((int((all5 & ~some).sum()), bool(fs.calcium[f].any()), f, all5, some))
    calcified = sorted((r for r in rows if r[1]), key=lambda r: -r[0])[:3]
    free = sorted((r for r in rows if not r[1]), key=lambda r: (r[4].any(), -r[0]))[:2]
    shown = calcified + free
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6))
    for ax, (_, has_calcium, f, all5, some) in zip(np.atleast_1d(axes), shown):
        ax.imshow(fs.nc[f], cmap="gray")
        overlay = np.zeros((*some.shape, 4))
        overlay[some] = (1.0, 0.9, 0.0, 0.45)
        overlay[ndimage.binary_dilation(fs.calcium[f], iterations=2) & ~ndimage.binary_erosion(fs.calcium[f])] = (
            0.1, 1.0, 0.2, 1.0)
        ax.imshow(overlay)
        if all5.any():
            ax.contour(all5, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{'calcified' if has_calcium else 'calcium-free'} frame\narea 5: {all5.mean() * 100:.1f} %, "
                     f"{k}: {some.mean() * 100:.1f} %", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{name + ': ' if name else ''}ROI from all 5 patches (red outline) and from the {k} most "
                 "probable (yellow); calcium green", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # room for the title above the panels' own
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def item4_line(summary: dict) -> str:
    """The test summary's item-4 measures in one log line."""
    d = summary["frame_detection"]
    return (f"test found {d['tp']}/{d['tp'] + d['fn']} clean {d['tn']}/{d['tn'] + d['fp']} area "
            f"{summary['roi_area_pct_field']['median']:.2f} % precision {summary['roi_precision']['median']:.2f}")


def card_config(meta: dict, threshold: float | None = None):
    """The card's scoring settings (training.card_config), without its cine gate (a family sets its own)
    and with ``threshold`` as the classifier threshold where given."""
    from CACTrainerLib import training

    moved = {} if threshold is None else {"classifier_threshold": float(threshold)}
    return training.card_config(meta, cine_threshold=None, **moved)


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
    ap.add_argument("--cache", type=Path, help="keep the pools and each model's predictions here for later runs")
    ap.add_argument("--png", type=Path, help="with --roi-patches: a figure of the last model's ROIs from all five "
                                                 "and from the smallest K patches")
    ap.add_argument("--display-processing", type=float, default=0.0, metavar="P",
                    help="the test patients' cines through XA display processing with probability P (1: every "
                         "one; the same patients, anatomy and noise as without, annotated on what they show; "
                         "pool named ...-dpP)")
    ap.add_argument("--roi-patches", metavar="K[,K...]",
                    help="also score each model's card with its ROI drawn from the K most probable positive patches "
                         "(the card option roi_patches; 5 = all), against FIRST's card")
    args = ap.parse_args(argv)
    roi_ks = [int(v) for v in args.roi_patches.split(",")] if args.roi_patches else []

    import torch
    from CACIdentifierLib.allocator import keep_freed_memory
    from CACIdentifierLib.metrics import frame_detection, roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.calibrate import cine_operating_point
    from CACTrainerLib.dataset import FrameSet
    from CACTrainerLib.phantom_pool import phantom_pool
    from compare_models import item4_verdict

    keep_freed_memory()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    kw = dict(n_frames=64, frames_per_acquisition=6, workers=args.workers, calcium_free_fraction=0.4)
    dp = args.display_processing
    if not 0.0 <= dp <= 1.0:
        ap.error(f"--display-processing is a probability in [0, 1], not {dp}")
    val_name, test_name = val_pool_name(args.val, args.val_seed), test_pool_name(args.test, args.test_seed, dp)
    loaded = [load_model(path) for path in args.models]  # a wrong path fails before minutes of pool making
    val = cached_pool(args.cache, val_name, lambda: phantom_pool(args.val, seed=args.val_seed, **kw))
    test = cached_pool(args.cache, test_name, lambda: FrameSet.concat(
        [phantom_pool(args.test, seed=int(s), display_processing_prob=dp, **kw) for s in args.test_seed.split(",")]))
    log(f"validation {val.summary()}; test {test.summary()} in {time.perf_counter() - t0:.0f} s")
    out = {"validation": val.summary(), "test": test.summary(), "models": {}}
    cpu = torch.device("cpu")
    target, reference = args.sensitivity, None
    for i, (path, (model, meta)) in enumerate(zip(args.models, loaded, strict=True)):
        ev_val = frame_evidence(cached_predictions(args.cache, path, val_name, model, val), meta, val)
        ev_test = frame_evidence(cached_predictions(args.cache, path, test_name, model, test), meta, test)
        card = training.card_config(meta)  # the card's own point, its cine gate included
        row = {"frame_auc": {}, "families": {}}
        for name, split in (("validation", ev_val), ("test", ev_test)):
            row["frame_auc"][name] = {k: roc_auc(split["truth"], split[k])
                                      for k in ("max_p", "gate", "cine_p", "cine_gate")}
        # The card's own point: the gate score against the card's threshold.
        found = ev_val["gate"] >= card.classifier_threshold
        if card.cine_threshold is not None:
            found &= ev_val["cine_p"] >= card.cine_threshold
        card_val = frame_detection(found, ev_val["truth"])
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
            # The frame alone is the cine gate at its lowest candidate (every cine passes).
            cine_val = np.zeros(len(val)) if cine_key is None else ev_val[cine_key]
            point = cine_operating_point(ev_val["gate"], cine_val, ev_val["truth"], target)
            if point is None:  # the decoder draws too few ROIs at any threshold
                row["families"][fam] = {"validation": None, "unreachable_sensitivity": target}
                log(f"{Path(path).name} {fam}: no point reaches validation sensitivity {target:.3f}")
                continue
            gate = np.ones(len(test), bool) if cine_key is None else ev_test[cine_key] >= point["cine_threshold"]
            ev = evaluation.evaluate(model, test, card_config(meta, point["threshold"]), cpu,
                                     calibration=meta.get("calibration"), predictions=ev_test["pred"],
                                     frame_gate=gate)
            summary = summarize(ev, per_cine(ev, test))
            row["families"][fam] = {"validation": point, "test": summary,
                                    "item4_vs_first_card": item4_verdict(reference, summary)}
            log(f"{Path(path).name} {fam}: t={point['threshold']:.4f} c={point['cine_threshold']:.4f} validation sens "
                f"{point['sensitivity']:.3f} spec {point['specificity']:.3f}; {item4_line(summary)}")
        for k in roi_ks:
            # The card's point with the ROI from the k most probable positive patches (the product path:
            # training.card_config -> evaluation.evaluate, as cac calibrate --roi-patches and identify use it).
            ev = evaluation.evaluate(model, test, training.card_config(meta, roi_patches=k), cpu,
                                     calibration=meta.get("calibration"), predictions=ev_test["pred"])
            summary = summarize(ev, per_cine(ev, test))
            row.setdefault("roi_patches", {})[str(k)] = {"test": summary,
                                                         "item4_vs_first_card": item4_verdict(reference, summary)}
            log(f"{Path(path).name} card, roi_patches {k}: {item4_line(summary)} IoM "
                f"{summary['iom']['median'] or float('nan'):.2f} HD {summary['hd_mm']['median'] or float('nan'):.1f} mm")
        if args.png and roi_ks and i == len(args.models) - 1:
            roi_patches_figure(ev_test["pred"], meta, test, min(roi_ks), args.png, Path(path).name)
        out["models"][path] = row
        log(f"{Path(path).name} frame AUC {json.dumps(row['frame_auc'], default=float)}; card test "
            f"{row['card']['test']['frame_detection']}")
        Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
        del ev_val, ev_test
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
