"""Leave-one-out cross-validation and its report in the layout of the paper's Table 2.

Folds (:func:`make_folds`): the paper leaves one *acquisition* out per fold
("For each fold, one acquisition was left as test set").  A patient's other
projections of the same coronary tree and calcium then sit in the training
set, so the default here leaves one *patient* out (``by="patient"``);
``by="acquisition"`` reproduces the paper.  The same fold serves both
training stages (as in the paper).  Inside a fold, checkpoint selection (best
validation F1 in stage 1, best validation IoM in stage 2) uses a validation
split of the *training* patients (:func:`validation_split`), never the test
fold.

Each fold can run in its own process (``cac train DATA --out RUN --cv patient
--fold K``; folds may run as separate jobs on several machines) and writes
``RUN/fold_K.json``; :func:`summarize` merges the fold files into
``report.json`` and ``report.md``: precision, recall, F1 (patch level) and
IoM, HD (frame level, median over the fold's frames) per fold, reported as
median (Q1-Q3) over folds beside the paper's Table 2, plus a paired Wilcoxon
signed-rank test over folds of the IoM with classifier gating against the
IoM of the same decoder without gating (does the classifier help the ROI?).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from CACIdentifierLib.errors import CacError, printable
from CACIdentifierLib.fileutil import atomic_output

from . import distributed
from .dataset import FrameSet
from .evaluation import evaluate
from .training import TrainConfig, train

PAPER_TABLE2 = {
    "precision": (0.89, 0.81, 0.94),
    "recall": (0.89, 0.79, 0.95),
    "f1": (0.87, 0.77, 0.94),
    "iom": (0.64, 0.46, 0.86),
    "hd_mm": (47.16, 35.05, 63.77),
}
ROWS = [
    ("Classification", "precision", "Precision"),
    ("Classification", "recall", "Recall"),
    ("Classification", "f1", "F1-score"),
    ("Identification", "iom", "IoM"),
    ("Identification", "hd_mm", "HD (mm)"),
    # Not in the paper; an ROI covering everything scores IoM 1.0 but is caught by these.
    ("Classification", "auc", "Patch AUC"),
    ("Identification", "roi_area_pct_field", "ROI area (% of exposed field)"),
    ("Identification", "roi_precision", "ROI precision (share inside ROI_GT)"),
    ("Detection", "frame_sensitivity", "Frame sensitivity"),
    ("Detection", "frame_specificity", "Frame specificity"),
]


def groups_of(fs: FrameSet, by: str) -> list:
    if by == "patient":
        return list(fs.patient)
    if by == "acquisition":
        return list(fs.acquisition)
    raise CacError(f"unknown fold unit {by!r}; choose 'patient' or 'acquisition'")


def make_folds(fs: FrameSet, by: str = "patient") -> list[list[str]]:
    """Leave-one-out folds: fold ``k`` tests the ``k``-th group (sorted ids) of patients or acquisitions."""
    groups = sorted(set(groups_of(fs, by)))
    if len(groups) < 2:
        raise CacError(f"cross-validation by {by} needs at least two {by}s; the dataset has {len(groups)}")
    return [[g] for g in groups]


def validation_split(fs: FrameSet, fraction: float = 0.15, seed: int = 0) -> tuple[FrameSet, FrameSet | None]:
    """Split off whole patients (about ``fraction`` of them, at least one) for checkpoint selection.

    With a single patient the split is by acquisition; with a single
    acquisition, or ``fraction`` 0, there is no validation set (the last
    epoch is kept).  ``fraction`` must lie in [0, 1).
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise CacError(f"--val-fraction {fraction} must be at least 0 and below 1")
    if fraction == 0:
        return fs, None
    for unit in ("patient", "acquisition"):
        groups = groups_of(fs, unit)
        if len(set(groups)) >= 2:
            val = validation_groups(groups, fraction, seed)
            is_val = np.array([g in val for g in groups])
            return fs.subset(~is_val), fs.subset(is_val)
    return fs, None


def validation_groups(groups, fraction: float = 0.15, seed: int = 0) -> set:
    """The patient (or acquisition) ids :func:`validation_split` holds out, from the ids alone.

    Examples
    --------
    >>> sorted(validation_groups(["a", "b", "c", "d"], 0.5, seed=0)) == sorted(validation_groups(list("dcba"), 0.5))
    True
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise CacError(f"--val-fraction {fraction} must be at least 0 and below 1")
    groups = sorted(set(groups))
    if fraction == 0 or len(groups) < 2:
        return set()
    rng = np.random.default_rng([int(seed), 7])
    n_val = max(1, int(round(float(fraction) * len(groups))))
    return set(rng.choice(groups, size=n_val, replace=False).tolist())


def _fold_metrics(ev: dict) -> dict:
    from CACIdentifierLib.metrics import median_iqr

    frames = ev.get("frames", [])
    return {
        "precision": ev.get("precision"),
        "recall": ev.get("recall"),
        "f1": ev.get("f1"),
        "patches": ev.get("patches"),
        "positives": ev.get("positives"),
        "iom": median_iqr([f["iom"] for f in frames])["median"],
        "iom_ungated": median_iqr([f.get("iom_ungated") for f in frames])["median"],
        "hd_mm": median_iqr([f["hd_mm"] for f in frames])["median"],
        "frames_scored": len(frames),
        **{k: ev[k] for k in ("tp", "fp", "fn", "tn") if k in ev},
        # Measures that an ROI covering everything cannot game (IoM can).
        "auc": ev.get("auc"),
        "roi_area_pct_field": ev.get("roi_area_pct_field_median"),
        "roi_precision": ev.get("roi_precision_median"),
        "frame_sensitivity": (ev.get("detection") or {}).get("sensitivity"),
        "frame_specificity": (ev.get("detection") or {}).get("specificity"),
        "decoder_sensitivity": ev.get("decoder_sensitivity"),
        "frame_decoder_found": ev.get("decoder_frames_found"),
        # Frame counts, pooled over folds in the report (one patient's fold may have no calcium-free frame).
        **{f"frame_{k}": (ev.get("detection") or {}).get(k) for k in ("tp", "fp", "fn", "tn")},
    }


def _as_shipped(config: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """External validation (``--init`` with no epochs): score the model as inference uses it.

    Its card's classifier threshold, refinement and calibration then apply;
    after any training they do not (the weights change; calibrate again).
    """
    if not config.init or config.epochs1 or config.epochs2:
        return config, None
    from dataclasses import replace

    from CACIdentifierLib.modelio import read_metadata

    meta = read_metadata(config.init)
    refinement = dict(config.refinement, **(meta.get("refinement") or {}))
    threshold = float(meta.get("classifier_threshold", config.classifier_threshold))
    return (replace(config, refinement=refinement, classifier_threshold=threshold,
                    cine_threshold=meta.get("cine_threshold"), roi_patches=int(meta.get("roi_patches", 5))),
            meta.get("calibration"))


def run_fold(fs: FrameSet, k: int, by: str, config: TrainConfig, out_dir, *, resume: bool = False,
             emit=None, progress=None, overwrite: bool = False, val_fraction: float = 0.15,
             run_dir=None, source: dict | None = None) -> dict:
    """Train and test fold ``k``; write ``out_dir/fold_K.json`` and return its content.

    The fold's checkpoints go to ``run_dir/fold_K/`` (``run_dir`` defaults to ``out_dir``); ``source``
    (:func:`~CACTrainerLib.checkpoint_io.data_source`) is recorded in them.
    """
    out_dir = Path(out_dir)
    folds = make_folds(fs, by)
    if not 0 <= k < len(folds):
        raise CacError(f"fold {k} does not exist: cross-validation by {by} has folds 0..{len(folds) - 1}")
    target = out_dir / f"fold_{k}.json"
    if target.exists() and not overwrite:
        raise CacError(f"{target} already exists; pass --overwrite to run the fold again")
    config, calibration = _as_shipped(config)
    test_groups = folds[k]
    is_test = np.isin(np.array(groups_of(fs, by), dtype=object), test_groups)
    test = fs.subset(is_test)
    train_all = fs.subset(~is_test)
    train_set, val_set = validation_split(train_all, val_fraction, config.seed)
    t0 = time.perf_counter()
    emit = emit or (lambda e: None)
    emit({"event": "fold", "fold": k, "folds": len(folds), "by": by, "test": test_groups,
          "val": sorted(set(val_set.patient)) if val_set is not None else []})
    result = train(train_set, val_set, config, Path(run_dir or out_dir) / f"fold_{k}", resume=resume, emit=emit,
                   progress=progress or (lambda *a: None), restart=overwrite and not resume, source=source)
    if not distributed.is_main():
        return {}  # data-parallel run: rank 0 tests the fold and writes fold_K.json
    from CACIdentifierLib.device import choose_device

    ev = evaluate(result.model.to(choose_device(config.device)), test, config, choose_device(config.device),
                  calibration=calibration)
    record = {
        "fold": k,
        "folds": len(folds),
        "by": by,
        "test": test_groups,
        "test_summary": test.summary(),
        "val": sorted(set(val_set.patient)) if val_set is not None else [],
        "train_summary": train_set.summary(),
        "metrics": _fold_metrics(ev),
        "frames": ev.get("frames", []),
        "best": result.best,
        "train_seconds": round(result.seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "config": asdict(config),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(target, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    emit({"event": "fold_done", "fold": k, "metrics": record["metrics"]})
    return record


def _fmt(stats: dict, digits: int = 2) -> str:
    if stats.get("median") is None:
        return "n/a"
    return f"{stats['median']:.{digits}f} ({stats['q1']:.{digits}f}–{stats['q3']:.{digits}f})"


def _read_fold(path: Path) -> dict:
    """A fold file as run_fold wrote it, or one error line naming it."""
    try:
        fold = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacError(f"{path} is not a readable fold file ({printable(str(exc), 80)}); delete it or run the fold "
                       "again with --overwrite") from None
    if not isinstance(fold, dict) or not isinstance(fold.get("metrics"), dict) or "by" not in fold:
        raise CacError(f"{path} is not a fold file of cac train --cv (no 'by' or 'metrics'); move it away")
    return fold


def summarize(run_dir, *, overwrite: bool = True, notes: str = "") -> dict:
    """Merge ``fold_*.json`` of ``run_dir`` into ``report.json`` and ``report.md`` (Table 2 layout)."""
    from CACIdentifierLib.metrics import median_iqr, wilcoxon

    run_dir = Path(run_dir)
    # Only fold_K.json: a copy such as fold_1.bak.json beside them is not a fold.
    files = sorted((p for p in run_dir.glob("fold_*.json") if re.fullmatch(r"fold_\d+\.json", p.name)),
                   key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise CacError(f"{run_dir} holds no fold_K.json files; run `cac train DATA --out {run_dir} --cv ... --fold K` first")
    folds = [_read_fold(p) for p in files]
    by = {f["by"] for f in folds}
    per_fold = {key: [f["metrics"].get(key) for f in folds] for _, key, _ in ROWS}
    stats = {key: median_iqr(vals) for key, vals in per_fold.items()}
    # Pooled patch counts over all test folds (micro average), for reference.
    counts = {k: sum(int(f["metrics"].get(k) or 0) for f in folds) for k in ("tp", "fp", "fn")}
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    pooled = {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        **counts,
    }
    frame = {k: sum(int(f["metrics"].get(f"frame_{k}") or 0) for f in folds) for k in ("tp", "fp", "fn", "tn")}
    pooled_frames = {
        "sensitivity": frame["tp"] / (frame["tp"] + frame["fn"]) if frame["tp"] + frame["fn"] else None,
        "specificity": frame["tn"] / (frame["tn"] + frame["fp"]) if frame["tn"] + frame["fp"] else None,
        **frame,
    }
    # Calcified frames that the decoder draws an ROI on with every patch gated in: the most that any
    # classifier threshold can find (fold files written before this measure lack it).
    found = [f["metrics"].get("frame_decoder_found") for f in folds]
    if all(v is not None for v in found) and frame["tp"] + frame["fn"]:
        pooled_frames["decoder_found"] = int(sum(found))
        pooled_frames["decoder_sensitivity"] = sum(found) / (frame["tp"] + frame["fn"])
    gated = [f["metrics"].get("iom") for f in folds]
    ungated = [f["metrics"].get("iom_ungated") for f in folds]
    test = wilcoxon(gated, ungated)
    report = {
        "by": sorted(by),
        "folds_run": len(folds),
        "folds_total": max(f["folds"] for f in folds),
        "per_fold": [{"fold": f["fold"], "test": f["test"], **f["metrics"]} for f in folds],
        "summary": stats,
        "pooled": pooled,
        "pooled_frames": pooled_frames,
        "paper": {k: {"median": v[0], "q1": v[1], "q3": v[2]} for k, v in PAPER_TABLE2.items()},
        "wilcoxon_gated_vs_ungated_iom": {
            **test,
            "gated_median": median_iqr(gated)["median"],
            "ungated_median": median_iqr(ungated)["median"],
        },
        "config": folds[0].get("config", {}),
    }
    lines = [
        f"Cross-validation by {', '.join(sorted(by))}: {len(folds)} of {report['folds_total']} folds run "
        f"(median (Q1–Q3) over folds).",
        "",
        "| | Metric | This run | Paper (Table 2) |",
        "|---|---|---|---|",
    ]
    for group, key, label in ROWS:
        digits = 2
        paper = _fmt(report["paper"][key], digits) if key in report["paper"] else "not reported"
        lines.append(f"| {group} | {label} (median (Q1–Q3)) | {_fmt(stats[key], digits)} | {paper} |")
    w = report["wilcoxon_gated_vs_ungated_iom"]
    lines += [
        "",
        f"Pooled over all test patches: precision {_num(pooled['precision'])}, recall {_num(pooled['recall'])}, "
        f"F1 {_num(pooled['f1'])} (TP {tp}, FP {fp}, FN {fn}).",
        "",
        f"Pooled over all test frames (a frame is positive when its ROI is not empty): sensitivity "
        f"{_num(pooled_frames['sensitivity'])}, specificity {_num(pooled_frames['specificity'])} "
        f"(TP {frame['tp']}, FP {frame['fp']}, FN {frame['fn']}, TN {frame['tn']}; an ROI on a calcium-free "
        f"frame is a false positive)."
        + (f"  With every patch gated in, the decoder draws an ROI on {pooled_frames['decoder_found']} of the "
           f"{frame['tp'] + frame['fn']} calcified frames (sensitivity {_num(pooled_frames['decoder_sensitivity'])}): "
           "no classifier threshold finds more." if "decoder_found" in pooled_frames else ""),
        "",
        "Paired Wilcoxon signed-rank test over folds, IoM with classifier gating vs the same decoder "
        f"without gating: median {_num(w['gated_median'])} vs {_num(w['ungated_median'])}, "
        f"statistic {_num(w.get('statistic'))}, p = {_num(w.get('p'), 4)} (n = {w.get('n')}).",
    ]
    if notes:
        lines += ["", notes]
    report["markdown"] = "\n".join(lines) + "\n"
    with atomic_output(run_dir / "report.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_output(run_dir / "report.md", overwrite=overwrite) as tmp:
        tmp.write_text(report["markdown"])
    return report


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"
