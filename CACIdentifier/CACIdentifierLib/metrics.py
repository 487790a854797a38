"""Evaluation metrics of the paper: patch classification and ROI identification.

Conventions
-----------
- Classification (patch level): precision, recall and F1 from the counts of
  true/false positives/negatives.  A 0/0 ratio is 1.0 when there is nothing
  to find and nothing was claimed (all-negative truth and prediction: perfect
  agreement), else 0.0 (scikit-learn's ``zero_division=0``).
- IoM, intersection over minimum (paper ref. 23):
  ``|A ∩ B| / min(|A|, |B|)``; both empty -> None (undefined), one empty ->
  0.0.  1.0 whenever one region lies inside the other - it rewards a ROI that
  encloses the calcifications (the paper's goal) without penalising its
  extra area.
- Hausdorff distance (HD, paper ref. 24): the symmetric Hausdorff distance
  between the *sets of foreground pixel centres* of the two masks, in
  millimetres with the (row, col) pixel spacing:
  ``max(max_{a in A} d(a, B), max_{b in B} d(b, A))``, exact (Euclidean
  distance transform).  This is the convention of SimpleITK's
  ``HausdorffDistanceImageFilter`` (checked in the tests); it is *not* a
  boundary/surface-voxel variant or a percentile HD.  Any empty mask -> None.
- Summaries: median and quartiles (numpy's linear interpolation) over the
  defined values; None/NaN values are left out and counted in ``n`` only
  when defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .errors import CacError


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if den:
        return num / den
    return 1.0 if both_empty else 0.0


def precision_recall_f1(y_true: Sequence, y_pred: Sequence) -> dict:
    """Precision, recall, F1 of binary labels; returns also ``tp, fp, fn, tn``.

    See the module docstring for the 0/0 cases.
    """
    t = np.asarray(y_true).astype(bool).ravel()
    p = np.asarray(y_pred).astype(bool).ravel()
    if t.shape != p.shape:
        raise CacError(f"{t.size} true labels but {p.size} predictions; give one prediction per patch")
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    nothing = tp + fp + fn == 0
    precision = _ratio(tp, tp + fp, nothing)
    recall = _ratio(tp, tp + fn, nothing)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, nothing)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _masks(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise CacError(f"masks of different shapes {a.shape} and {b.shape}; they must share the frame grid")
    return a, b


def iom(a: np.ndarray, b: np.ndarray) -> float | None:
    """Intersection over minimum ``|A ∩ B| / min(|A|, |B|)``; None if both are empty, 0.0 if one is.

    The paper's overlap measure: a ROI inside a larger annotation scores 1.

    Examples
    --------
    >>> a = np.zeros((8, 8), bool); a[2:4, 2:4] = True  # 4 px
    >>> b = np.zeros((8, 8), bool); b[2:6, 2:6] = True  # 16 px, holds a
    >>> iom(a, b)
    1.0
    >>> iom(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) is None
    True
    """
    a, b = _masks(a, b)
    na, nb = int(a.sum()), int(b.sum())
    if na == 0 and nb == 0:
        return None
    if na == 0 or nb == 0:
        return 0.0
    return float(np.sum(a & b)) / min(na, nb)


def hausdorff_mm(a: np.ndarray, b: np.ndarray, spacing_mm: Sequence[float] | None = (1.0, 1.0)) -> float | None:
    """Symmetric Hausdorff distance between the foreground pixels of ``a`` and ``b``, in mm.

    ``spacing_mm`` is the (row, col) pixel spacing (None: pixels).  Returns
    None when either mask is empty (undefined).  Computed with Euclidean
    distance transforms (``scipy.ndimage.distance_transform_edt`` with
    ``sampling``), exact.

    Examples
    --------
    >>> a = np.zeros((10, 10), bool); a[0, 0] = True
    >>> b = np.zeros((10, 10), bool); b[3, 4] = True
    >>> hausdorff_mm(a, b)  # a 3-4-5 triangle
    5.0
    >>> hausdorff_mm(a, b, spacing_mm=(0.5, 0.5))
    2.5
    """
    a, b = _masks(a, b)
    if not a.any() or not b.any():
        return None
    sampling = None if spacing_mm is None else tuple(float(s) for s in spacing_mm)
    if sampling is not None and len(sampling) != a.ndim:
        raise CacError(f"spacing {spacing_mm} does not match {a.ndim}D masks")
    # Restrict to the common bounding box grown to include both sets: distances between the
    # sets never need pixels outside it (the nearest point of a set lies inside its box).
    both = a | b
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(both))
    a, b = a[box], b[box]
    d_to_b = ndimage.distance_transform_edt(~b, sampling=sampling)
    d_to_a = ndimage.distance_transform_edt(~a, sampling=sampling)
    return float(max(d_to_b[a].max(), d_to_a[b].max()))


def _defined(values: Iterable) -> np.ndarray:
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if not math.isnan(v):
            out.append(v)
    return np.asarray(out, dtype=float)


def median_iqr(values: Iterable) -> dict:
    """``{"median", "q1", "q3", "n"}`` of the defined values (None and NaN ignored); None entries when n == 0."""
    v = _defined(values)
    if v.size == 0:
        return {"median": None, "q1": None, "q3": None, "n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "n": int(v.size)}


def wilcoxon(a: Sequence, b: Sequence) -> dict:
    """Paired two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of ``a`` vs ``b``.

    Pairs where either value is None/NaN are dropped.  Returns
    ``{"statistic", "p", "n"}``; with no pair, or all differences zero
    (the test is undefined), statistic and p are None.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b)
        if x is not None and y is not None and not (math.isnan(float(x)) or math.isnan(float(y)))
    ]
    n = len(pairs)
    if n == 0 or all(x == y for x, y in pairs):
        return {"statistic": None, "p": None, "n": n}
    x, y = np.array(pairs).T
    res = stats.wilcoxon(x, y, alternative="two-sided")
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "n": n}


def majority_vote(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Strict majority of several annotators' masks: a pixel is set when more than half set it.

    (With two annotators that is both; with three, at least two - the paper's
    ground truth.)  All masks must have the same shape.
    """
    if len(masks) == 0:
        raise CacError("majority vote of no masks; give at least one annotation")
    arrs = [np.asarray(m).astype(bool) for m in masks]
    shape = arrs[0].shape
    for m in arrs[1:]:
        if m.shape != shape:
            raise CacError(f"annotations of different shapes {shape} and {m.shape}; they must share the frame grid")
    votes = np.sum(np.stack(arrs), axis=0, dtype=np.int32)
    return votes * 2 > len(arrs)


def roi_precision(pred: np.ndarray, reference: np.ndarray) -> float | None:
    """Fraction of the ROI ``pred`` that lies inside ``reference`` (ROI_GT); None for an empty ROI.

    IoM divides by the smaller area, so an ROI covering the frame scores 1.0; the
    ROI precision does not forgive that: it is the share of what the user is shown
    that is near calcium.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.zeros((4, 4), bool); p[:, :2] = True
    >>> r = np.zeros((4, 4), bool); r[:2, :] = True
    >>> roi_precision(p, r)
    0.5
    """
    p, r = _masks(pred, reference)
    n = int(p.sum())
    return None if n == 0 else float((p & r).sum() / n)


def roi_area(pred: np.ndarray, spacing_mm: Sequence[float] | None = None, field: np.ndarray | None = None) -> dict:
    """ROI area of one frame: pixels, mm^2 (None without spacing) and % of the exposed ``field``.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.zeros((10, 10), bool); p[:2, :2] = True
    >>> f = np.zeros((10, 10), bool); f[:, :8] = True
    >>> roi_area(p, (0.5, 0.5), f)
    {'area_px': 4, 'area_mm2': 1.0, 'area_pct_field': 5.0}
    """
    p = np.asarray(pred, bool)
    n = int(p.sum())
    mm2 = None if spacing_mm is None else float(n * float(spacing_mm[0]) * float(spacing_mm[1]))
    f = np.ones(p.shape, bool) if field is None else np.asarray(field, bool)
    pct = 100.0 * n / max(int(f.sum()), 1)
    return {"area_px": n, "area_mm2": mm2, "area_pct_field": float(pct)}


def frame_detection(pred_any: Sequence, truth_any: Sequence) -> dict:
    """Frame-level sensitivity and specificity: a frame "has CAC" when its mask is non-empty.

    An ROI on a calcium-free frame is a false positive; none on a frame with
    calcium a false negative.  Undefined rates are None.

    Examples
    --------
    >>> frame_detection([True, True, False, False], [True, False, False, True])
    {'sensitivity': 0.5, 'specificity': 0.5, 'tp': 1, 'fp': 1, 'fn': 1, 'tn': 1}
    """
    p = np.asarray(pred_any, bool).reshape(-1)
    t = np.asarray(truth_any, bool).reshape(-1)
    tp, fp = int((p & t).sum()), int((p & ~t).sum())
    fn, tn = int((~p & t).sum()), int((~p & ~t).sum())
    return {"sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def roc_auc(y_true: Sequence, scores: Sequence) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); None with one class only.

    Examples
    --------
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    from scipy.stats import rankdata

    y = np.asarray(y_true, bool).reshape(-1)
    s = np.asarray(scores, float).reshape(-1)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def within_position_auc(y_true: Sequence, scores: Sequence, positions: int = 5) -> dict:
    """ROC AUC among the patches of each position of the frame, and their mean.

    Every frame gives its patches at fixed places, and calcium is more
    frequent at some (over the heart), so a scorer that knows only the place
    already beats chance on the pooled AUC (docs/learning.md, session 40);
    within a place it cannot.  ``y_true`` and ``scores`` hold ``positions``
    consecutive patches per frame.

    Returns
    -------
    dict
        ``per_position`` (an AUC, or None where a place holds one class
        only) and ``mean`` (over the places with an AUC; None if none has).

    Examples
    --------
    >>> y = [1, 0, 0, 0, 1,  0, 0, 0, 0, 1,  1, 0, 0, 0, 0,  0, 1, 0, 0, 0]
    >>> s = [.9, .1, .1, .1, .6,  .2, .2, .1, .1, .7,  .8, .3, .1, .1, .9,  .1, .4, .1, .1, .5]
    >>> r = within_position_auc(y, s)
    >>> r["per_position"], r["mean"]
    ([1.0, 1.0, None, None, 0.5], 0.8333333333333334)
    """
    y = np.asarray(y_true, bool).reshape(-1, positions)
    s = np.asarray(scores, float).reshape(-1, positions)
    per = [roc_auc(y[:, k], s[:, k]) for k in range(positions)]
    defined = [a for a in per if a is not None]
    return {"per_position": per, "mean": float(np.mean(defined)) if defined else None}


def auc_difference(y_true: Sequence, scores_a: Sequence, scores_b: Sequence, groups: Sequence, *,
                   n_boot: int = 1000, seed: int = 0) -> dict:
    """ROC AUC of ``scores_b`` minus ``scores_a`` with a cluster-bootstrap 95 % interval.

    Patches of one patient are not independent, so the bootstrap resamples whole ``groups``
    (patients) with replacement; resamples holding one class only are skipped.

    Parameters
    ----------
    y_true : sequence of bool
        Labels of the scored items.
    scores_a, scores_b : sequence of float
        The two scorers' values for the same items (a paired comparison).
    groups : sequence
        The cluster (patient) of each item.
    n_boot : int
        Resamples drawn.
    seed : int
        Seed of the resampling, so that a figure can be reproduced.

    Returns
    -------
    dict
        ``{"diff", "ci95": [lo, hi], "share_le_0", "n_boot"}``: the difference on the data, the
        2.5th and 97.5th percentiles of the resampled differences, the share of resamples where
        ``b`` is not better, and how many resamples were defined.

    Examples
    --------
    >>> y = [1, 0, 1, 0, 1, 0, 1, 0]
    >>> patient = [0, 0, 1, 1, 2, 2, 3, 3]
    >>> a = [.6, .5, .4, .5, .6, .5, .4, .5]  # right in patients 0 and 2 only
    >>> r = auc_difference(y, a, y, patient, n_boot=200)
    >>> r["diff"], r["share_le_0"] > 0  # resamples of patients 0 and 2 alone show no gain
    (0.5, True)
    """
    y = np.asarray(y_true, bool).reshape(-1)
    a = np.asarray(scores_a, float).reshape(-1)
    b = np.asarray(scores_b, float).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if not (y.size == a.size == b.size == g.size):
        raise ValueError(f"labels, scores and groups differ in length: {y.size}, {a.size}, {b.size}, {g.size}")
    auc_a, auc_b = roc_auc(y, a), roc_auc(y, b)
    if auc_a is None:
        raise ValueError("the labels hold one class only; an AUC needs positives and negatives")
    ids = np.unique(g)
    index = [np.flatnonzero(g == i) for i in ids]
    rng = np.random.default_rng(seed)
    ds = []
    for _ in range(n_boot):
        k = np.concatenate([index[i] for i in rng.integers(0, ids.size, ids.size)])
        yk = y[k]
        if yk.all() or not yk.any():
            continue
        ds.append(roc_auc(yk, b[k]) - roc_auc(yk, a[k]))
    ds = np.asarray(ds)
    lo, hi = np.percentile(ds, [2.5, 97.5]) if ds.size else (math.nan, math.nan)
    return {"diff": auc_b - auc_a, "ci95": [float(lo), float(hi)],
            "share_le_0": float((ds <= 0).mean()) if ds.size else math.nan, "n_boot": int(ds.size)}


def evaluate_masks(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float] | None, *,
                   reference: np.ndarray | None = None, field: np.ndarray | None = None) -> dict:
    """Per-frame comparison of ROI masks with the ground truth, and its summary.

    ``pred`` and ``truth`` are (N, H, W) masks on the same grid; frames where
    both are empty are skipped (nothing to find, nothing found).  Each frame
    row holds ``index``, ``iom``, ``hd_mm``; ``roi_area_mm2`` and
    ``roi_area_pct`` (the ROI's area, in mm2 and in % of the frame's H x W
    pixels) and ``roi_area_pct_field`` (% of the exposed ``field``, the whole
    frame when None); ``roi_precision`` (:func:`roi_precision` against
    ``reference``, by default the truth's ROI_GT: the share of the ROI near
    calcium); ``ai_calcium`` and ``truth_calcium`` (whether each mask marks
    anything) and ``agree`` (both or neither).  None where undefined (HD when
    one mask is empty; HD and area in mm2 when ``spacing_mm`` is None).
    ``summary`` holds median and quartiles of ``iom``, ``hd_mm``,
    ``roi_precision``, ``roi_area_pct_field`` (over *all* N frames, an empty
    ROI counting 0), ``presence`` (over all N frames, the counts of frames
    where both, only the AI, only the truth or neither mark calcium, and the
    fraction where they agree) and ``detection`` (:func:`frame_detection`).

    >>> p = np.zeros((2, 64, 64), bool); t = np.zeros_like(p)
    >>> p[0, :32, :32] = True; t[0, 0, 0] = True
    >>> row = evaluate_masks(p, t, (0.5, 0.5))["frames"][0]
    >>> row["iom"], row["roi_area_mm2"], row["roi_area_pct"], round(row["roi_precision"], 3), row["agree"]
    (1.0, 256.0, 25.0, 0.315, True)
    """
    pred, truth = _masks(pred, truth)
    if pred.ndim == 2:
        pred, truth = pred[None], truth[None]
    if pred.ndim != 3:
        raise CacError(f"expected (frames, rows, cols) masks, got shape {pred.shape}")
    if reference is None:
        from .roi_gt import roi_gt

        reference = np.stack([roi_gt(t) for t in truth])
    pixel_mm2 = None if spacing_mm is None else float(spacing_mm[0]) * float(spacing_mm[1])
    frame_px = pred.shape[1] * pred.shape[2]
    frames = []
    areas = []
    counts = {"both": 0, "ai_only": 0, "truth_only": 0, "neither": 0}
    for k in range(pred.shape[0]):
        p, t = pred[k], truth[k]
        has_p, has_t = bool(p.any()), bool(t.any())
        counts["both" if has_p and has_t else "ai_only" if has_p else "truth_only" if has_t else "neither"] += 1
        area = roi_area(p, spacing_mm, field)
        areas.append(area["area_pct_field"])
        if not has_p and not has_t:
            continue
        hd = None if spacing_mm is None else hausdorff_mm(p, t, spacing_mm)
        area_px = int(p.sum())
        frames.append({
            "index": k, "iom": iom(p, t), "hd_mm": hd,
            "roi_area_mm2": None if pixel_mm2 is None else area_px * pixel_mm2,
            "roi_area_pct": 100.0 * area_px / frame_px if frame_px else None,
            "roi_area_pct_field": area["area_pct_field"],
            "roi_precision": roi_precision(p, reference[k]),
            "ai_calcium": has_p, "truth_calcium": has_t, "agree": has_p == has_t,
        })
    summary = {}
    for key in ("iom", "hd_mm", "roi_precision"):
        s = median_iqr(f[key] for f in frames)
        summary[key] = {"median": s["median"], "q1": s["q1"], "q3": s["q3"]}
    n = int(pred.shape[0])
    summary["presence"] = dict(counts, frames=n,
                               agreement=(counts["both"] + counts["neither"]) / n if n else None)
    s = median_iqr(areas)  # over every frame: an empty ROI is an area of 0
    summary["roi_area_pct_field"] = {"median": s["median"], "q1": s["q1"], "q3": s["q3"]}
    summary["detection"] = frame_detection(pred.reshape(len(pred), -1).any(axis=1),
                                           truth.reshape(len(truth), -1).any(axis=1))
    return {"frames": frames, "summary": summary}
