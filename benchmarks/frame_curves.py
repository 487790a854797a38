"""Frame sensitivity against frame specificity over the classifier threshold, for model cards on cached pools.

    python benchmarks/frame_score.py MODEL [MODEL ...] --cache DIR --test-seed 3000,4000,5000,6000   # passes
    python benchmarks/frame_curves.py MODEL [MODEL ...] --cache DIR --pools val72-2000,test36-3000_4000_5000_6000
        [--pools test36-15000_16000_17000_18000 ...] [--png frame_curves.png] [--out frame_curves.json] [--bootstrap 2000]

A card decides per frame: an ROI appears where a patch reaches the classifier threshold and its decoder map
survives refinement, so a frame is found at threshold t when its gate score (the highest threshold at which it
still gets an ROI, frame_score.frame_evidence) is at least t.  Moving t traces the card's whole trade between
calcified frames found and calcium-free frames left clean; the card's own threshold is one point on it.  The
curve stops at the *ceiling*: calcified frames that get no ROI at any threshold (the decoder draws nothing that
survives the island cut) are missed whatever t is.

Each ``--pools`` is one panel: the named pools of frame_score.py's cache, pooled.  Per model and panel the JSON
holds the ceiling, the frame AUC of the gate score, the specificity at the highest threshold reaching each of a
few sensitivities, and the card's own point; ``--png`` draws the curves with the card points marked.  No network
runs: every pool needs a cached pass of every model (frame_score.py with ``--cache``).

``--bootstrap N`` adds, for each model after the first, the paired difference from the first (frame AUC and
specificity at each sensitivity) with a 95 % interval over N resamples of the panel's patients: the frames of one
patient move together, so a difference smaller than its interval is what another set of patients may reverse
(docs/learning.md, session 51: one model's specificity at sensitivity 0.90 spanned 0.24-0.56 between sets).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from frame_score import cached_pool, cached_predictions, frame_evidence, not_cached  # noqa: E402
from gpu_protocol import log  # noqa: E402

LEVELS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95)


def frame_curve(gate_scores, truth) -> dict:
    """Frame sensitivity and specificity at every threshold a frame's gate score sets, highest first.

    Parameters
    ----------
    gate_scores : (F,) float
        Per frame, the highest classifier threshold at which it gets an ROI; negative where it gets none at any.
    truth : (F,) bool
        The frame has calcium.

    Returns
    -------
    dict
        ``thresholds`` (descending), ``sensitivity`` and ``specificity`` at each (a frame is found when its gate
        score is >= the threshold), and ``ceiling``: the calcified frames found at the lowest threshold.

    Examples
    --------
    >>> c = frame_curve(np.array([0.9, 0.4, -1.0, 0.6, 0.1]), np.array([1, 1, 1, 0, 0], bool))
    >>> c["thresholds"].tolist(), c["sensitivity"].round(2).tolist(), c["specificity"].tolist()
    ([0.9, 0.6, 0.4, 0.1], [0.33, 0.33, 0.67, 0.67], [1.0, 0.5, 0.5, 0.0])
    >>> round(c["ceiling"], 2)
    0.67
    """
    g = np.asarray(gate_scores, float)
    y = np.asarray(truth, bool)
    t = np.unique(g[g >= 0])[::-1]
    pos, neg = np.sort(g[y]), np.sort(g[~y])
    # Frames with a score >= t: everything right of the first index not below t.
    found = len(pos) - np.searchsorted(pos, t, side="left")
    flagged = len(neg) - np.searchsorted(neg, t, side="left")
    sens = found / max(len(pos), 1)
    spec = 1.0 - flagged / max(len(neg), 1)
    return {"thresholds": t, "sensitivity": sens, "specificity": spec,
            "ceiling": float((pos >= 0).mean()) if len(pos) else float("nan")}


def specificity_at(gate_scores, truth, sensitivity: float) -> float | None:
    """The specificity at the highest threshold whose sensitivity reaches ``sensitivity`` (None beyond the ceiling):
    calibrate's frame-only operating point (every cine passes the cine gate), as ``cac calibrate`` chooses it.

    >>> specificity_at(np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0], bool), 1.0)
    0.5
    """
    from CACTrainerLib.calibrate import cine_operating_point

    g = np.asarray(gate_scores, float)
    op = cine_operating_point(g, np.ones(g.size), truth, sensitivity)
    return None if op is None else op["specificity"]


def paired_bootstrap(gate_a, gate_b, truth, groups, n: int, seed: int = 0, levels=LEVELS) -> dict:
    """Model B minus model A on the same frames, with a 95 % interval over resamples of whole patients.

    Parameters
    ----------
    gate_a, gate_b : (F,) float
        The two models' gate scores (frame_score.frame_evidence) on the same frames.
    truth : (F,) bool
        The frame has calcium.
    groups : sequence of hashable, length F
        The frame's patient; a resample draws patients with replacement and keeps all their frames.
    n : int
        Resamples (>= 1).
    seed : int
    levels : sequence of float
        Sensitivities at which :func:`specificity_at` is compared.

    Returns
    -------
    dict
        ``frame_auc`` and ``specificity_at_S`` for each level: ``difference`` (B - A on all frames), ``low`` and
        ``high`` (2.5th and 97.5th percentiles over the resamples where both are defined), ``resamples`` used.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(rng.random(40) < 0.5, 6)                     # 40 patients, 6 frames each
    >>> groups = np.repeat(np.arange(40), 6)
    >>> a = y + rng.normal(0, 1, y.size)
    >>> d = paired_bootstrap(a, a, y, groups, n=50, levels=(0.8,))
    >>> d["frame_auc"]["difference"], d["frame_auc"]["low"], d["frame_auc"]["high"]
    (0.0, 0.0, 0.0)
    >>> d = paired_bootstrap(a, a + 3 * y, y, groups, n=200, levels=(0.8,))
    >>> d["frame_auc"]["low"] > 0
    True
    """
    from CACIdentifierLib.metrics import roc_auc

    if n < 1:
        raise ValueError("the bootstrap needs at least one resample")
    ga, gb = np.asarray(gate_a, float), np.asarray(gate_b, float)
    y = np.asarray(truth, bool)
    _, code = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    members = [np.flatnonzero(code == k) for k in range(code.max() + 1)]

    def stats(idx):
        out = {}
        a, b = roc_auc(y[idx], ga[idx]), roc_auc(y[idx], gb[idx])
        out["frame_auc"] = None if a is None or b is None else b - a
        for s in levels:
            a, b = specificity_at(ga[idx], y[idx], s), specificity_at(gb[idx], y[idx], s)
            out[f"specificity_at_{s}"] = None if a is None or b is None else b - a
        return out

    full = stats(np.arange(y.size))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in full}
    for _ in range(n):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        for k, v in stats(idx).items():
            if v is not None:
                draws[k].append(v)
    result = {}
    for k, v in full.items():
        lo, hi = (np.percentile(draws[k], [2.5, 97.5]).tolist() if draws[k] else (None, None))
        result[k] = {"difference": v, "low": lo, "high": hi, "resamples": len(draws[k])}
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--cache", type=Path, required=True, help="frame_score.py's cache folder")
    ap.add_argument("--pools", action="append", required=True,
                    help="comma-separated cached pool names, pooled into one panel (repeat for more panels)")
    ap.add_argument("--out", default="frame_curves.json")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N",
                    help="each later model minus the first, with a 95 %% interval over N resamples of patients")
    args = ap.parse_args(argv)
    if args.bootstrap < 0:
        ap.error("--bootstrap: the number of resamples cannot be negative")

    from CACIdentifierLib.metrics import roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import training
    from CACTrainerLib.calibrate import frame_groups

    panels = [[p for p in spec.split(",") if p] for spec in args.pools]
    for pools in panels:
        for pool in pools:
            if (lack := not_cached(args.cache, args.models, pool)) is not None:
                ap.error(f"{lack}; run frame_score.py with --cache first")
    loaded = {path: load_model(path) for path in args.models}  # once, for every panel
    out = {"panels": []}
    for pools in panels:
        panel = {"pools": pools, "models": {}}
        gates, groups = {}, []
        for pool in pools:  # a patient id is only unique within its pool
            groups += [f"{pool}/{p}" for p in frame_groups(cached_pool(args.cache, pool, None))]
        for path, (model, meta) in loaded.items():
            gate, truth = [], []
            for pool in pools:
                fs = cached_pool(args.cache, pool, None)
                ev = frame_evidence(cached_predictions(args.cache, path, pool, model, fs), meta, fs)
                gate.append(ev["gate"])
                truth.append(ev["truth"])
            g, y = np.concatenate(gate), np.concatenate(truth)
            curve = frame_curve(g, y)
            t = training.card_config(meta).classifier_threshold
            row = {"ceiling": curve["ceiling"], "frame_auc": roc_auc(y, g), "calcified_frames": int(y.sum()),
                   "calcium_free_frames": int((~y).sum()),
                   "card": {"threshold": t, "sensitivity": float((g[y] >= t).mean()),
                            "specificity": float((g[~y] < t).mean())},
                   "specificity_at": {str(s): specificity_at(g, y, s) for s in LEVELS},
                   "curve": {k: curve[k].tolist() for k in ("thresholds", "sensitivity", "specificity")}}
            panel["models"][path] = row
            gates[path], truth_of = g, y  # the truth comes from the pools, the same for every model
            log(f"{'+'.join(pools)} {Path(path).name}: ceiling {row['ceiling']:.3f}, frame AUC {row['frame_auc']:.3f}, "
                f"card sens {row['card']['sensitivity']:.3f} spec {row['card']['specificity']:.3f}; "
                f"spec at {json.dumps(row['specificity_at'])}")
        if args.bootstrap:
            first = args.models[0]
            for path in args.models[1:]:
                d = paired_bootstrap(gates[first], gates[path], truth_of, groups, args.bootstrap)
                panel["models"][path]["minus_first"] = d
                f = d["frame_auc"]
                log(f"{'+'.join(pools)} {Path(path).name} minus {Path(first).name}: frame AUC "
                    f"{f['difference']:+.3f} (95 % {f['low']:+.3f}..{f['high']:+.3f}, {f['resamples']} resamples "
                    f"of {len(set(groups))} patients)")
        out["panels"].append(panel)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    if args.png:
        figure(out, args.png)
    return 0


def figure(out: dict, path: Path) -> None:
    """One panel per pooled set: each model's curve, its ceiling in the legend, its card's point as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CACIdentifierLib.fileutil import atomic_output

    n = len(out["panels"])
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4.3), squeeze=False)
    for ax, panel in zip(axes[0], out["panels"]):
        frames = None
        for model_path, row in panel["models"].items():  # not ``path``: that is the PNG's (a model was overwritten)
            c = row["curve"]
            line, = ax.plot(c["specificity"], c["sensitivity"], lw=1.2,
                            label=f"{Path(model_path).stem} (ceiling {row['ceiling']:.3f})")
            ax.plot(row["card"]["specificity"], row["card"]["sensitivity"], "o", color=line.get_color(), ms=5)
            frames = row["calcified_frames"] + row["calcium_free_frames"]
        ax.set_xlabel("frame specificity (calcium-free frames without an ROI)")
        ax.set_ylabel("frame sensitivity (calcified frames with an ROI)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0.5, 1.0)
        ax.set_title(f"{' + '.join(panel['pools'])}\n{frames} frames; dot: the card's own threshold", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
