"""Compare model files on held-out phantom patients and on the real cines, as a user would see them.

    python benchmarks/compare_models.py OLD.safetensors NEW.safetensors [--test 36] [--calibrate NEW_OUT]

The test fold is the GPU protocol's (phantom_pool seed 3000, or ``--test-seed``: new patients,
40 % calcium-free, randomised domain; several comma-separated seeds pool their folds); every model is scored as inference does it (gated, stitched, refined,
exposed field), per cine: IoM, HD, ROI precision, ROI area (% of field), frames with an ROI on
calcium-free cines; patch F1 and AUC; Wilcoxon over cines of every later model against the first
(and of the per-cine frame sensitivity on the calcified cines).
``--calibrate OUT`` fits the last model's temperature and bias (Platt scaling) on the validation
pool (``--val`` patients of ``--val-seed``, default 12 of seed 2000), writes them with the
reliability figures into a copy of the model (OUT) and OUT's reliability PNG, and compares that copy
as one more model.  ``--sensitivity S`` also sets that copy's operating point on the validation pool
(``cac calibrate --sensitivity``); with ``--match-first`` the target is the first model's frame
sensitivity on the same pool if that is higher (a replacement must not miss more calcium; measured in fp32,
the precision of the operating point's own passes);
``--island-sizes`` as ``cac calibrate``'s.  ``--cache DIR`` keeps the pools (pool_cache.py), shared with frame_score.py.
On the real cines of ../shared/data: median ROI area (% of field), ROI pixels outside the field, and the ROIs
``identify``'s static filter removed (docs/identify.md "ROIs on structures that do not move").
Last, issue 12's replacement rule for every later model against the first (:func:`item4_verdict`).
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
from script_entry import check_models  # noqa: E402

REAL = [("xa/rubo-rca-ecg-96f.dcm", {}), ("xa/rubo-biplane-b-ecg-17f.dcm", {}),
        ("frames/lca-clinical-37f", {"spacing_mm": 0.308, "frame_time_ms": 66.7, "onset": 5})]

# Issue 12, item 4: a new default replaces the shipped one only if it beats it on each of these.
# (name, how to read it from a summary, True where higher is better)
ITEM4 = (("frame_sensitivity", lambda s: s["frame_detection"]["sensitivity"], True),
         ("frame_specificity", lambda s: s["frame_detection"]["specificity"], True),
         ("roi_area_pct_field", lambda s: s["roi_area_pct_field"]["median"], False),
         ("roi_precision", lambda s: s["roi_precision"]["median"], True))


def item4_verdict(first: dict, other: dict) -> dict:
    """Issue 12's replacement rule: does ``other`` beat ``first`` on every item-4 measure?

    Parameters
    ----------
    first, other : dict
        Test summaries (:func:`gpu_protocol.summarize`) of the shipped model and a candidate on the
        same fold: pooled frame sensitivity and specificity, median ROI area (% of the exposed
        field) over the cines, median ROI precision over the calcified cines.

    Returns
    -------
    dict
        ``measures``: per measure the two values and ``"better"``, ``"equal"`` or ``"worse"``
        (smaller is better for the ROI area); ``beats_every``: better on all four;
        ``worse_on``: the measures on which it is worse.

    Examples
    --------
    Fewer false alarms and smaller ROIs do not make up for one more missed frame:

    >>> def s(sens, spec, area, prec):
    ...     return {"frame_detection": {"sensitivity": sens, "specificity": spec},
    ...             "roi_area_pct_field": {"median": area}, "roi_precision": {"median": prec}}
    >>> v = item4_verdict(s(0.933, 0.159, 1.05, 0.48), s(0.922, 0.325, 0.96, 0.47))
    >>> v["beats_every"], v["worse_on"]
    (False, ['frame_sensitivity', 'roi_precision'])
    >>> item4_verdict(s(0.933, 0.159, 1.05, 0.48), s(0.944, 0.2, 0.9, 0.5))["beats_every"]
    True
    """
    measures = {}
    for name, get, higher in ITEM4:
        a, b = get(first), get(other)
        if a is None or b is None:
            verdict = "worse"  # an unmeasured value cannot count as a win
        elif b == a:
            verdict = "equal"
        else:
            verdict = "better" if (b > a) == higher else "worse"
        measures[name] = {"first": a, "other": b, "verdict": verdict}
    return {"measures": measures, "beats_every": all(m["verdict"] == "better" for m in measures.values()),
            "worse_on": [k for k, m in measures.items() if m["verdict"] == "worse"]}


def match_config(meta: dict):
    """The first model's card settings for ``--match-first``'s target, in fp32.

    ``calibrate_file`` chooses the candidate's operating point on fp32 network passes; the target it
    matches must come from the same precision.  ``evaluate`` at the card's own ``amp`` runs bf16 on a
    CPU with AVX512-BF16 or AMX, where the shipped default found 198 of 212 validation frames against
    200 in fp32 (docs/learning.md, RULE54): the candidate was matched two frames short.

    >>> match_config({"classifier_threshold": 0.24}).amp
    False
    """
    from CACTrainerLib import training

    return training.card_config(meta, amp=False)


def test_seeds(text: str) -> list[int]:
    """``--test-seed`` as a list: one seed, or several comma-separated whose folds are pooled.

    Examples
    --------
    >>> test_seeds("3000"), test_seeds("3000,4000, 5000")
    ([3000], [3000, 4000, 5000])
    """
    seeds = [int(v) for v in text.split(",") if v.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"give distinct seeds, comma-separated, not {text!r}")
    return seeds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--test", type=int, default=36)
    ap.add_argument("--test-seed", type=test_seeds, default=[3000], metavar="SEED[,SEED...]",
                    help="test pool seed (3000: the GPU protocol's fold; another gives a fresh fold); several, "
                         "comma-separated, pool their folds (--test patients each): one fold of 36 moves by "
                         "+-0.04 in patch AUC (docs/learning.md), four pooled are steadier")
    ap.add_argument("--out", default="compare.json")
    ap.add_argument("--cache", type=Path, metavar="DIR",
                    help="keep the test and validation pools here, or read them from it (the same pools and names "
                         "as frame_score.py --cache)")
    ap.add_argument("--calibrate", help="write the last model, calibrated, to this path")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--val", type=int, default=12, help="validation patients for --calibrate")
    ap.add_argument("--val-seed", type=int, default=2000)
    ap.add_argument("--sensitivity", type=float, help="with --calibrate: target frame sensitivity (operating point)")
    ap.add_argument("--match-first", action="store_true",
                    help="with --sensitivity: at least the first model's frame sensitivity on the validation pool")
    ap.add_argument("--cine-gate", action="store_true",
                    help="with --sensitivity: also choose a cine threshold (cac calibrate --cine-gate)")
    ap.add_argument("--island-sizes",
                    help="with --sensitivity: smaller refinement island sizes the operating point may use, or none "
                         "(default: cac calibrate's)")
    ap.add_argument("--roi-patches", type=int, choices=range(1, 6), metavar="K",
                    help="with --sensitivity: the calibrated copy draws each frame's ROI from its K most probable "
                         "gated patches (cac calibrate --roi-patches), the operating point chosen so")
    args = ap.parse_args(argv)
    if (args.roi_patches is not None or args.cine_gate or args.island_sizes) and args.sensitivity is None:
        ap.error("--roi-patches, --cine-gate and --island-sizes are chosen with the operating point: give "
                 "--calibrate OUT --sensitivity S too")
    if args.sensitivity is not None and not args.calibrate:
        ap.error("--sensitivity sets the calibrated copy's operating point: give --calibrate OUT too")

    import torch
    from CACIdentifierLib.allocator import keep_freed_memory

    keep_freed_memory()  # as `cac` does: reuse freed blocks (docs/learning.md, Speed)
    from CACIdentifierLib.metrics import wilcoxon
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.phantom_pool import phantom_pool

    check_models(args.models)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    kw = dict(n_frames=64, frames_per_acquisition=6, workers=args.workers)
    from CACTrainerLib.dataset import FrameSet

    test = cached_pool(args.cache, test_pool_name(args.test, args.test_seed), lambda: FrameSet.concat(
        [phantom_pool(args.test, seed=seed, calcium_free_fraction=0.4, **kw) for seed in args.test_seed]))
    log(f"test pool {test.summary()} in {time.perf_counter() - t0:.0f} s")
    results = {"test": test.summary(), "models": {}}
    device = torch.device("cpu")
    if args.calibrate:
        # Platt scaling of the last model on the validation pool (seed 2000): temperature and bias
        # (the bias moves the balanced-batch prior to the pool's prevalence); the calibrated copy is
        # then compared as one more model.
        from cac.cli_calibrate import parse_island_sizes
        from CACTrainerLib.calibrate import calibrate_file

        val = cached_pool(args.cache, val_pool_name(args.val, args.val_seed),
                          lambda: phantom_pool(args.val, seed=args.val_seed, calcium_free_fraction=0.4, **kw))
        log(f"validation pool {val.summary()}")
        target = args.sensitivity
        if target is not None and args.match_first:
            first, first_meta = load_model(args.models[0])
            first_cfg = match_config(first_meta)  # fp32, as calibrate_file's operating point
            first_val = evaluation.evaluate(first, val, first_cfg, device, calibration=first_meta.get("calibration"))
            results["first_model_validation_detection"] = first_val["detection"]
            log(f"{args.models[0]} on the validation pool: {first_val['detection']}")
            target = max(target, first_val["detection"]["sensitivity"])
        done = calibrate_file(args.models[-1], args.calibrate, val, method="platt", overwrite=True,
                              data=f"phantom_pool seed {args.val_seed}, {args.val} patients x 6 frames",
                              sensitivity=target, island_sizes=parse_island_sizes(args.island_sizes),
                              cine_gate=args.cine_gate, roi_patches=args.roi_patches)
        cal, rel = done["card"]["calibration"], done["reliability"]
        results["calibration"] = {"temperature": cal["temperature"], "bias": cal["bias"],
                                  "before": rel["before"], "after": rel["after"],
                                  "operating_point": done["card"].get("operating_point"),
                                  "cine_threshold": done["card"].get("cine_threshold"),
                                  "roi_patches": done["card"].get("roi_patches", 5)}
        log(f"operating point: {done['card'].get('operating_point')}")
        log(f"calibration T={cal['temperature']:.3f} b={cal['bias']:.3f} "
            f"ECE {rel['before']['ece']:.3f} -> {rel['after']['ece']:.3f}")
        args.models.append(args.calibrate)
    for path in args.models:
        model, meta = load_model(path)
        cfg = training.card_config(meta)
        ev = evaluation.evaluate(model, test, cfg, device, calibration=meta.get("calibration"))
        cines = per_cine(ev, test)
        results["models"][path] = {"test": summarize(ev, cines), "cines": cines}
        log(f"{path}: {json.dumps(results['models'][path]['test'], default=float)}")
        real = {}
        from CACIdentifierLib.cine_io import load_cine
        from CACIdentifierLib.inference import identify

        for rel, opts in REAL:
            p = HERE.parent.parent / "shared" / "data" / rel
            if not p.exists():
                continue
            cine = load_cine(p, spacing_mm=opts.get("spacing_mm"), frame_time_ms=opts.get("frame_time_ms"))
            res = identify(cine, model, meta, device="cpu", onset=opts.get("onset"))
            outside = int(sum((res.roi[f] & ~res.exposed_field).sum() for f in res.frames))
            real[rel] = {"frames": len(res.frames),
                         "frames_with_roi": int(sum(bool(res.roi[f].any()) for f in res.frames)),
                         "roi_area_pct_field_median": float(np.median(res.roi_area_pct_field)),
                         "roi_px_outside_field": outside,
                         "static_rois_removed": int(res.parameters.get("static_rois_removed", 0)),
                         "p_median": float(np.median(res.probabilities))}
        results["models"][path]["real"] = real
        log(f"{path} real: {real}")
        Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    if len(args.models) >= 2:
        # Every later model against the first (paired over the same cines); "last_vs_first" as before.
        cb = results["models"][args.models[0]]["cines"]
        calc = [k for k in cb if not cb[k]["calcium_free"]]
        free = [k for k in cb if cb[k]["calcium_free"]]
        results["wilcoxon_vs_first"] = {}
        for a in args.models[1:]:
            ca = results["models"][a]["cines"]
            results["wilcoxon_vs_first"][a] = {
                key: wilcoxon([ca[k][key] for k in keys], [cb[k][key] for k in keys])
                for key, keys in (("iom", calc), ("hd_mm", calc), ("roi_precision", calc),
                                  ("roi_area_pct_field", calc + free), ("frames_with_roi_pct", free))}
            # Per-cine frame sensitivity (calcified cines): a replacement must not miss more calcium.
            results["wilcoxon_vs_first"][a]["frame_sensitivity"] = wilcoxon(
                [ca[k].get("frame_sensitivity") for k in calc], [cb[k].get("frame_sensitivity") for k in calc])
        results["wilcoxon_last_vs_first"] = results["wilcoxon_vs_first"][args.models[-1]]
        first = results["models"][args.models[0]]["test"]
        results["item4_vs_first"] = {a: item4_verdict(first, results["models"][a]["test"]) for a in args.models[1:]}
        for a, v in results["item4_vs_first"].items():
            log(f"{a}: {'beats' if v['beats_every'] else 'does not beat'} {args.models[0]} on every item-4 "
                f"measure" + (f" (worse on {', '.join(v['worse_on'])})" if v["worse_on"] else "")
                + "".join(f" (equal on {k})" for k, m in v["measures"].items() if m["verdict"] == "equal"))
    Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
