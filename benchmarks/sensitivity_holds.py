"""Does a stated frame sensitivity hold on new patients?  The plain operating point against ``--confidence``.

    python benchmarks/frame_score.py MODEL --cache DIR --test-seed 3000,4000,5000,6000   # network passes, cached
    python benchmarks/sensitivity_holds.py MODEL --cache DIR [--splits 400] [--cal 36,72,144]
        [--sensitivity 0.9,0.934] [--confidence 0.9,0.95] [--out sensitivity_holds.json]

``cac calibrate --sensitivity S`` puts the classifier threshold at the highest value whose frame sensitivity on
the held-out frames reaches S; ``--confidence C`` lowers it until a lower confidence bound of the sensitivity
does (:func:`sensitivity_bound`, here).  This script pools every patient of every pool in the cache that has a pass
of MODEL (frame_score.py's cache: pools of 6 frames per cine, 40 % calcium-free cines), and draws ``--splits``
random calibration sets of each size in ``--cal`` patients; the patients left over are the new ones.  Each rule
(the plain point, and each C) chooses its threshold on the calibration set with the card's refinement
(calibrate.cine_operating_point with every cine passing: the frame-only point, as ``cac calibrate`` chooses it
without --cine-gate; no island-size search) and is scored on the new patients: how often the point is reached
at all, how often the new patients' sensitivity falls short of S (share of all draws: what a confidence C
promises to keep under 1 - C), the same against all patients, median sensitivity, specificity and share of
the calcium-free cines' frames with an ROI (the price).  The pool named ``val...`` also chooses once, alone,
with every other patient as the new ones (the case of compare_models.py --calibrate).

Measured and not adopted into ``cac calibrate`` (docs/learning.md): the bound kept the share of draws that fall
short near 1 - C, but a point it gave still fell short in 15-60 % of the draws that got one at 72 patients (C 0.9-0.95).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from frame_score import cached_pool, cached_predictions, frame_evidence, prediction_folder  # noqa: E402
from gpu_protocol import log  # noqa: E402


def sensitivity_bound(gate_scores, truth, groups, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-sided lower confidence bound of the frame sensitivity at each threshold a calcified frame sets.

    A threshold ``t`` finds a calcified frame when its gate score is at least
    ``t`` (:func:`frame_detection_curve`).  The frames of one patient are not
    independent (the same heart, dose and deposits), so the bound is a
    Clopper-Pearson bound on an effective number of frames: the sensitivity's
    variance over patients (the cluster, or ratio-estimator, variance) sets
    how many independent frames the data are worth (Kish's design effect), at
    most all of them; where no patient differs from the others (everything
    found) the number of calcified patients.  Chosen over a cluster bootstrap,
    whose percentile bound held the target less often on simulated patients
    (docs/learning.md, "Does a stated sensitivity hold on new patients?").

    Parameters
    ----------
    gate_scores : (F,) float
        Per frame, the highest threshold at which it gets an ROI (:data:`NO_ROI`: none).
    truth : (F,) bool
        The frame has calcium.
    groups : sequence of hashable, length F
        The frame's patient (calibrate.frame_groups).
    confidence : float
        In (0, 1), e.g. 0.9.

    Returns
    -------
    levels, sensitivity, bound : ndarray
        The distinct gate scores of the calcified frames that can get an ROI, descending; the
        sensitivity at each on these frames; its lower bound.  Both rise as the level falls.

    Examples
    --------
    Ten patients of two calcified frames each; the frames of a patient share their gate score, so
    they count as ten frames, not twenty:

    >>> g = np.repeat(np.linspace(0.95, 0.5, 10), 2); y = np.ones(20, bool)
    >>> levels, sens, bound = sensitivity_bound(g, y, np.repeat(np.arange(10), 2), 0.9)
    >>> float(sens[7]), round(float(bound[7]), 3), round(float(bound[-1]), 3)
    (0.8, 0.533, 0.794)
    """
    from CACTrainerLib.calibrate import ratio_variance
    from scipy import stats

    g = np.asarray(gate_scores, float)
    y = np.asarray(truth, bool)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    _, gid = np.unique(np.asarray([str(v) for v in groups], dtype=object), return_inverse=True)
    found = y & (g >= 0)
    levels = np.unique(g[found])[::-1]
    if not levels.size:
        return levels, np.zeros(0), np.zeros(0)
    n_groups = int(gid.max()) + 1
    positives = np.bincount(gid[y], minlength=n_groups).astype(float)
    calcified = positives > 0
    # hits[k, j]: calcified frames of patient k found at levels[j] (a frame counts from its own level down).
    hits = np.zeros((n_groups, levels.size))
    np.add.at(hits, (gid[found], np.searchsorted(-levels, -g[found])), 1.0)
    hits = np.cumsum(hits, axis=1)[calcified]
    m, total, k = positives[calcified], positives.sum(), int(calcified.sum())
    sens = hits.sum(axis=0) / total
    var = ratio_variance(hits, m)  # over patients; zero with one calcified patient
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where(var > 0, np.minimum(total, sens * (1.0 - sens) / var), float(k))
    x = sens * n_eff
    bound = np.where(x > 0, stats.beta.ppf(1.0 - confidence, np.maximum(x, 1e-12), n_eff - x + 1.0), 0.0)
    # The true sensitivity only rises as the level falls, so a bound at a lower level also bounds every higher
    # one: each level keeps the least of them, so that the first level whose bound reaches a target is not merely
    # the first lucky one among noisy bounds (the effective number moves from level to level; on the phantom data
    # it changed no figure, docs/learning.md).
    bound = np.minimum.accumulate(np.minimum(bound, sens)[::-1])[::-1]
    return levels, sens, bound


def confident_level(gate_scores, truth, groups, sensitivity: float,
                    confidence: float) -> tuple[float | None, float | None, float]:
    """The highest level whose sensitivity and its lower bound (:func:`sensitivity_bound`) reach ``sensitivity``.

    Returns
    -------
    (level, bound, best) : float or None, float or None, float
        The level (a calcified frame's gate score) and the bound there (both None where no level
        reaches it), and the highest bound reached.

    Examples
    --------
    Ten patients: 0.7 of the frames are found from 0.65 down, but with 90 % confidence only at 0.5,
    where all are; 0.8 cannot be promised with ten patients (at most 0.794):

    >>> g = np.repeat(np.linspace(0.95, 0.5, 10), 2); y = np.ones(20, bool); grp = np.repeat(np.arange(10), 2)
    >>> level, bound, best = confident_level(g, y, grp, 0.7, 0.9)
    >>> float(level), round(bound, 3)
    (0.5, 0.794)
    >>> confident_level(g, y, grp, 0.8, 0.9)[:2], round(confident_level(g, y, grp, 0.8, 0.9)[2], 3)
    ((None, None), 0.794)
    """
    levels, sens, bound = sensitivity_bound(gate_scores, truth, groups, confidence)
    ok = np.flatnonzero((bound >= sensitivity - 1e-12) & (sens >= sensitivity - 1e-12))
    best = float(bound.max()) if bound.size else 0.0
    if not ok.size:
        return None, None, best
    return float(levels[ok[0]]), float(bound[ok[0]]), best


def confident_point(gate_scores, truth, groups, sensitivity: float, confidence: float) -> dict | None:
    """The threshold of :func:`confident_level`, put halfway down to the next lower gate score (as
    calibrate.cine_operating_point puts the plain one); None where no level reaches it.

    >>> g = np.repeat(np.linspace(0.95, 0.5, 10), 2); grp = np.repeat(np.arange(10), 2)
    >>> confident_point(g, np.ones(20, bool), grp, 0.7, 0.9)["threshold"]
    0.5
    """
    from CACTrainerLib.calibrate import halfway_down

    level, bound, _ = confident_level(gate_scores, truth, groups, sensitivity, confidence)
    if level is None:
        return None
    g = np.asarray(gate_scores, float)
    return {"threshold": halfway_down(level, g[g >= 0]), "sensitivity_lower_bound": bound}


def floats(text: str) -> list:
    return [float(v) for v in text.split(",")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cache", type=Path, required=True, help="frame_score.py's --cache folder")
    ap.add_argument("--splits", type=int, default=400)
    ap.add_argument("--cal", default="36,72,144", help="calibration set sizes (patients)")
    ap.add_argument("--sensitivity", default="0.9,0.934")
    ap.add_argument("--confidence", default="0.9,0.95")
    ap.add_argument("--seed", type=int, default=48)
    ap.add_argument("--out", default="sensitivity_holds.json")
    args = ap.parse_args(argv)

    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib.calibrate import cine_operating_point, frame_groups

    model, meta = load_model(args.model)
    pools = sorted(d.name for d in args.cache.iterdir() if (d / "done").exists() and (d / "nc.npy").exists()
                   and (prediction_folder(args.cache, args.model, d.name) / "done").exists())
    if not pools:
        raise SystemExit(f"no pool in {args.cache} has a network pass of {args.model}; run frame_score.py first")
    gate, truth, patient, pool_of = [], [], [], []
    for name in pools:
        fs = cached_pool(args.cache, name, None)
        ev = frame_evidence(cached_predictions(args.cache, args.model, name, model, fs), meta, fs)
        gate.append(ev["gate"])
        truth.append(ev["truth"])
        patient += frame_groups(fs)
        pool_of += [name] * len(fs)
    g, y, pat, pool_of = np.concatenate(gate), np.concatenate(truth), np.array(patient), np.array(pool_of)
    patients = np.unique(pat)
    free = np.isin(pat, [p for p in patients if not y[pat == p].any()])  # frames of calcium-free cines
    log(f"{len(patients)} patients in {', '.join(pools)}: {int(y.sum())} calcified frames, {int((~y).sum())} "
        f"calcium-free ({int(free.sum())} in calcium-free cines)")
    targets, confidences = floats(args.sensitivity), [None] + floats(args.confidence)

    def point(rows, s, c):
        if c is None:  # cac calibrate's point (every cine passes its gate)
            return cine_operating_point(g[rows], np.zeros(rows.sum()), y[rows], s)
        return confident_point(g[rows], y[rows], pat[rows], s, c)

    def score(rows, threshold):
        found = g[rows] >= threshold
        return {"sensitivity": float(found[y[rows]].mean()), "specificity": float((~found[~y[rows]]).mean()),
                "calcium_free_cine_frames_flagged": float(found[free[rows]].mean()),
                "sensitivity_all_patients": float((g[y] >= threshold).mean())}

    out = {"model": args.model, "pools": pools, "patients": int(len(patients)), "fixed": {}, "splits": {}}
    val = np.char.startswith(pool_of.astype(str), "val")
    if val.any() and (~val).any():
        for s in targets:
            for c in confidences:
                op = point(val, s, c)
                out["fixed"][f"S{s}/C{c}"] = {"point": op, "new": score(~val, op["threshold"]) if op else None}
                log(f"the val pool alone, S {s} C {c}: {json.dumps(out['fixed'][f'S{s}/C{c}'])}")
    rng = np.random.default_rng(args.seed)
    for n_cal in (int(v) for v in args.cal.split(",")):
        for s in targets:
            rows = {str(c): [] for c in confidences}
            for _ in range(args.splits):
                cal = np.isin(pat, rng.choice(patients, n_cal, replace=False))
                for c in confidences:
                    op = point(cal, s, c)
                    rows[str(c)].append(score(~cal, op["threshold"]) if op else None)
            summary = {}
            for c, rs in rows.items():
                ok = [r for r in rs if r]

                def med(key, ok=ok):
                    return float(np.median([r[key] for r in ok])) if ok else None

                summary[c] = {"reached": len(ok) / args.splits,
                              "short_share_of_draws": sum(r["sensitivity"] < s for r in ok) / args.splits,
                              "short_share_all_patients": sum(r["sensitivity_all_patients"] < s for r in ok) / args.splits,
                              "coverage_when_reached": float(np.mean([r["sensitivity"] >= s for r in ok])) if ok else None,
                              "median_sensitivity": med("sensitivity"), "median_specificity": med("specificity"),
                              "median_calcium_free_cine_frames_flagged": med("calcium_free_cine_frames_flagged")}
                log(f"n_cal {n_cal} S {s} C {c}: {json.dumps(summary[c])}")
            out["splits"][f"{n_cal}/S{s}"] = summary
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
