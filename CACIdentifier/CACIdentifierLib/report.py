"""Reports of an identification: the per-frame JSON, the comparison with annotators, the overlay picture.

Shared by ``cac identify`` and the Slicer Logic so both give the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _num(value, digits: int = 4):
    """JSON-safe number: None for NaN/inf/None, rounded float otherwise."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, digits)


def frame_rows(result, evaluation: dict | None = None) -> list[dict]:
    """One dict per analysed (non-contrast) frame: index, contrast_frame, probability, roi_area_mm2 (+ iom, hd_mm)."""
    per_frame = {}
    if evaluation is not None:
        per_frame = {row["index"]: row for row in evaluation["frames"]}
    rows = []
    for k, frame in enumerate(result.frames):
        row = {
            "index": int(frame),
            "contrast_frame": int(result.contrast_frames[k]),
            "probability": _num(result.probabilities[k]),
            "roi_area_mm2": _num(result.roi_area_mm2[k], 2),
        }
        if getattr(result, "roi_area_pct_field", None) is not None:
            row["roi_area_pct_field"] = _num(result.roi_area_pct_field[k], 3)
        if getattr(result, "ood_scores", None) is not None:
            row["activation_score"] = _num(result.ood_scores[k], 3)
        if evaluation is not None:
            ev = per_frame.get(int(frame), {})
            row["iom"] = _num(ev.get("iom"))
            row["hd_mm"] = _num(ev.get("hd_mm"), 3)
            row["roi_precision"] = _num(ev.get("roi_precision"))
        rows.append(row)
    return rows


def evaluate_against_annotations(result, annotator_masks: list[np.ndarray], spacing_mm) -> dict:
    """IoM and HD (mm) of the AI ROI against the annotators' majority vote, on the analysed frames.

    ``annotator_masks`` are (n_frames, rows, columns) bool arrays, one per annotator;
    several annotators are combined by strict majority (as the paper's ground truth).
    Returns ``{"frames": [...], "summary": {...}, "truth": majority}`` as ``cac evaluate``.
    """
    from .metrics import evaluate_masks, majority_vote

    truth = annotator_masks[0] if len(annotator_masks) == 1 else majority_vote(annotator_masks)
    frames = list(result.frames)
    ev = evaluate_masks(result.roi[frames], truth[frames], spacing_mm,
                        field=getattr(result, "exposed_field", None))
    # evaluate_masks indexes the stack it was given: map back to cine frame numbers.
    for row in ev["frames"]:
        row["index"] = int(frames[row["index"]])
    ev["truth"] = truth
    return ev


def summary_line(summary: dict) -> str:
    """The one-line comparison with the annotators, rounded as ``cac evaluate`` prints it, ``-`` where undefined.

    >>> summary_line({"iom": {"median": 0.8108108108108109}, "hd_mm": {"median": 17.61819385018477}})
    'IoM median 0.81, HD median 17.6 mm'
    >>> summary_line({"iom": {"median": None}, "hd_mm": {"median": None}})
    'IoM median -, HD median - (no frame where both mark calcium, or the spacing is unknown)'

    With the measures that cannot be gamed (IoM divides by the smaller area: a ROI over everything
    scores 1), as :func:`CACIdentifierLib.metrics.evaluate_masks` gives them:

    >>> summary_line({"iom": {"median": 1.0}, "hd_mm": {"median": 9.04}, "roi_precision": {"median": 0.5},
    ...               "roi_area_pct_field": {"median": 0.4213}, "detection": {"sensitivity": 1.0, "specificity": None}})
    'IoM median 1.00, HD median 9.0 mm; ROI precision median 0.50, ROI area median 0.42 % of the field; frames with calcium found 1.00, calcium-free frames clean -'
    """
    def text(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    iom_median, hd_median = summary["iom"]["median"], summary["hd_mm"]["median"]
    # HD needs calcium in both masks and a known spacing: say why there is no number.
    hd_text = ("- (no frame where both mark calcium, or the spacing is unknown)" if hd_median is None
               else f"{hd_median:.1f} mm")
    line = f"IoM median {text(iom_median)}, HD median {hd_text}"
    if "roi_precision" in summary or "roi_area_pct_field" in summary:
        line += (f"; ROI precision median {text((summary.get('roi_precision') or {}).get('median'))}, ROI area "
                 f"median {text((summary.get('roi_area_pct_field') or {}).get('median'))} % of the field")
    detection = summary.get("detection")
    if detection:
        line += (f"; frames with calcium found {text(detection.get('sensitivity'))}, calcium-free frames clean "
                 f"{text(detection.get('specificity'))}")
    return line


def build_report(result, cine, evaluation: dict | None = None, model_info: dict | None = None,
                 record_source: bool = False) -> dict:
    """The ``report.json`` content of ``cac identify``.

    The cine is named by its pixel fingerprint (``source_fingerprint``, the one
    its ``roi.seg.nrrd`` records); its file path, which can name the patient,
    only with ``record_source``.
    """
    sync = result.sync
    report = {
        "source_fingerprint": cine.fingerprint(),
        **({"source": cine.source} if record_source else {}),
        "frames": frame_rows(result, evaluation),
        "onset_frame": int(sync.onset_frame) if sync.onset_frame is not None else None,
        "period_frames": _num(sync.period_frames),
        "heart_rate_bpm": _num(getattr(sync, "heart_rate_bpm", None), 1),
        "sync_confidence": _num(getattr(sync, "confidence", None), 3),
        "ecg_used": bool(getattr(sync, "ecg_used", False)),
        "spacing_mm": list(cine.spacing_mm) if cine.spacing_mm is not None else None,
        "spacing_source": cine.spacing_source,
        "parameters": result.parameters,
        "timings": result.timings,
        "warnings": list(getattr(sync, "warnings", []) or []),
    }
    if model_info is not None:
        report["model"] = model_info
    areas = getattr(result, "roi_area_pct_field", None)
    if areas is not None:
        report["exposed_field_pct"] = _num(100.0 * float(np.mean(result.exposed_field)), 2)
        report["roi_summary"] = {
            "frames_with_roi": int(sum(bool(result.roi[f].any()) for f in result.frames)),
            "frames": len(result.frames),
            "roi_area_pct_field_median": _num(float(np.median(areas)) if len(areas) else None, 3),
        }
        report["distribution_warnings"] = distribution_warnings(result)
        scores = getattr(result, "ood_scores", None)
        if scores is not None and len(scores):
            report["activation_score_median"] = _num(float(np.median(scores)), 3)
    spots = getattr(result, "static_spots", None)
    if spots:
        # Centres (row, column; pixels) of the ROIs removed as spots that never move, by frame (static_structures.py).
        report["static_spots"] = {str(f): [list(c) for c in spots[f]] for f in sorted(spots)}
    if evaluation is not None:
        report["summary"] = evaluation["summary"]
    return report


# Calcium ROIs (ROI_GT of a few deposits) cover well under 5 % of the field on the phantom and in
# the paper's figures; ROIs larger than this mean the model does not recognise what it sees.
MAX_PLAUSIBLE_ROI_PCT = 5.0


def distribution_warnings(result) -> list[str]:
    """Warnings that the cine lies outside what the model was trained on: from the activation
    statistics of the model card (:mod:`.ood`), and from the output (ROIs far larger than calcium)."""
    out = []
    if getattr(result, "ood_warning", None):
        out.append(result.ood_warning)
    areas = getattr(result, "roi_area_pct_field", None)
    areas = np.zeros(0) if areas is None else np.asarray(areas, float)
    if areas.size == 0:
        return out
    median = float(np.median(areas))
    if median > MAX_PLAUSIBLE_ROI_PCT:
        out.append(f"the ROIs cover a median {median:.1f} % of the exposed field, far more than calcium does: "
                   "this cine may lie outside the model's training data; do not read the ROIs as calcium")
    return out


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def frames_that_matter(result, truth: np.ndarray | None = None, limit: int = 4) -> list[int]:
    """Rows of the overlay: the most probable frames with an ROI, then annotated frames, at most ``limit``."""
    order = np.argsort(-np.asarray(result.probabilities))
    # Leave room for annotated frames when there are annotations.
    roi_quota = (limit + 1) // 2 if truth is not None else limit
    chosen: list[int] = []
    for k in order:
        f = int(result.frames[k])
        if len(chosen) >= roi_quota:
            break
        if result.roi[f].any():
            chosen.append(f)
    if truth is not None:
        for f in result.frames:
            if truth[f].any() and f not in chosen:
                chosen.append(int(f))
            if len(chosen) >= limit:
                break
    if not chosen and result.frames:
        chosen = [int(result.frames[int(order[0])])]
    return sorted(chosen[:limit])


OOD_BANNER = "This cine lies outside the model's training data: do not trust the ROIs or the probability"
AREA_BANNER = "The ROIs are far larger than calcium: this cine may lie outside the model's training data"


def overlay_notes(result) -> tuple[str | None, list[str]]:
    """What the overlay says besides the frames: a warning banner (or None) and notes under the legend.

    A picture is shared without the terminal's warnings, so it carries the ones that change how it is
    read: a cine unlike the model's training data (:func:`distribution_warnings`), the operating point that
    decided which frames have ROIs (p(CAC) in the frame titles is compared with it), and a cine gate
    that withheld every ROI.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> r = SimpleNamespace(parameters={"classifier_threshold": 0.2431}, ood_warning=None)
    >>> overlay_notes(r)
    (None, ["ROIs are drawn only on frames with p(CAC) >= 0.24 (the model's operating point)"])
    >>> r = SimpleNamespace(parameters={"classifier_threshold": 0.5, "cine_gate_withheld": True}, ood_warning="...")
    >>> banner, notes = overlay_notes(r)
    >>> banner == OOD_BANNER, notes[1]
    (True, 'the cine gate judged the whole cine calcium-free: its ROIs are withheld')
    """
    params = getattr(result, "parameters", None) or {}
    notes = []
    threshold = params.get("classifier_threshold")
    if threshold is not None:
        notes.append(f"ROIs are drawn only on frames with p(CAC) >= {float(threshold):.2f} (the model's operating point)")
    if params.get("cine_gate_withheld"):
        notes.append("the cine gate judged the whole cine calcium-free: its ROIs are withheld")
    banner = None
    if distribution_warnings(result):
        banner = OOD_BANNER if getattr(result, "ood_warning", None) else AREA_BANNER
    return banner, notes


def save_overlay_png(path: Path, cine, result, truth: np.ndarray | None = None, frames: list[int] | None = None) -> None:
    """Non-contrast frame, paired contrast frame, AI ROI contour (and annotation contour) per row.

    Under the legend, the notes of :func:`overlay_notes`; above the frames, its banner when the cine
    lies outside the model's training data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = frames if frames is not None else frames_that_matter(result, truth)
    pair = dict(zip(result.frames, result.contrast_frames))
    prob = dict(zip(result.frames, result.probabilities))
    nrows = max(1, len(frames))
    fig, axes = plt.subplots(nrows, 2, figsize=(8, 4 * nrows), squeeze=False)
    for r, f in enumerate(frames):
        c = pair[f]
        for ax, idx, title in (
            (axes[r, 0], f, f"non-contrast frame {f}  p(CAC)={prob[f]:.2f}"),
            (axes[r, 1], c, f"paired contrast frame {c}"),
        ):
            ax.imshow(cine.frames[idx], cmap="gray")
            field_mask = getattr(result, "exposed_field", None)
            if field_mask is not None and not field_mask.all():
                ax.contour(field_mask, levels=[0.5], colors=["#ffd000"], linewidths=0.8, linestyles="dashed")
            if result.roi[f].any():
                ax.contour(result.roi[f], levels=[0.5], colors=["#ff2fb0"], linewidths=1.5)
            if truth is not None and truth[f].any():
                ax.contour(truth[f], levels=[0.5], colors=["#30ff30"], linewidths=1.0)
            spots = (getattr(result, "static_spots", None) or {}).get(f, [])
            if spots:
                ax.plot([s[1] for s in spots], [s[0] for s in spots], "x", color="#40c0ff", markersize=7, mew=1.5)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    handles = [plt.Line2D([], [], color="#ff2fb0", label="AI ROI"),
               plt.Line2D([], [], color="#ffd000", linestyle="dashed", label="exposed field")]
    if truth is not None:
        handles.append(plt.Line2D([], [], color="#30ff30", label="annotators (majority)"))
    if any((getattr(result, "static_spots", None) or {}).get(f) for f in frames):
        handles.append(plt.Line2D([], [], color="#40c0ff", marker="x", linestyle="none",
                                  label="ROI removed: spot that never moves"))
    banner, notes = overlay_notes(result)
    height = fig.get_size_inches()[1]
    line = 0.2 / height  # one line of small text, as a fraction of the figure's height
    for i, note in enumerate(reversed(notes)):
        fig.text(0.5, 0.004 + i * line, note, ha="center", va="bottom", fontsize=8, color="#444444")
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), bbox_to_anchor=(0.5, len(notes) * line))
    top = 1.0
    if banner:
        top = 1 - 1.5 * line
        fig.text(0.5, 1 - 0.2 * line, banner, ha="center", va="top", fontsize=9, color="white", weight="bold",
                 bbox={"facecolor": "#c00000", "edgecolor": "none", "pad": 3})
    fig.tight_layout(rect=(0, 0.03 + len(notes) * line, 1, top))
    fig.savefig(path, dpi=80)
    plt.close(fig)
