"""Calibrate a trained model on held-out data: Platt or temperature scaling and activation statistics.

What ``cac calibrate`` does (issue 12, item 5).  On frames the model never
trained on (a dataset folder, or a pool of new phantom patients):

- the classifier's probabilities are calibrated (:mod:`CACIdentifierLib.calibration`):
  ``platt`` fits a temperature and a bias (the bias moves the balanced-batch
  prior to the data's prevalence, so it changes which frames get an ROI),
  ``temperature`` fits the temperature only (no decision changes), ``none``
  leaves them (a calibration the model already has is kept);
- the activation statistics of Block6 are stored for the out-of-distribution
  warning of ``cac identify`` (:mod:`CACIdentifierLib.ood`);
- the reliability diagram before and after goes into a PNG beside the model;
- with a target sensitivity, the classifier threshold (the operating point) is
  chosen on the same frames: the highest threshold at which that share of the
  frames with calcium still gets an ROI, as inference makes it
  (:func:`operating_point`).  Where the model's refinement cannot reach the
  target at any threshold (its decoder leaves islands under the paper's
  1000 px on small deposits), smaller island sizes are tried, largest first
  (:func:`choose_operating_point`).

The weights are not changed; the result is a new model file with its card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from CACIdentifierLib.refinement import DEFAULTS as REFINEMENT_DEFAULTS

METHODS = ("platt", "temperature", "none")
NO_ROI = -1.0  # the gate score of a frame without an ROI at any threshold: never found
ISLAND_SIZES = (500, 250)  # px: what the operating point may lower the model's min_island_px to, in turn


def exposed_field_of_frames(fs) -> list:
    """Each frame's exposed field (3-px margin, as :func:`evaluation.evaluate`), computed once for
    every refinement that :func:`choose_operating_point` tries."""
    from CACIdentifierLib.field import exposed_field

    return [exposed_field(fs.nc[f], margin_px=3) for f in range(len(fs))]


def frame_detection_curve(probs: np.ndarray, rois: np.ndarray, fs, refinement: dict, fields=None,
                          roi_patches: int | None = None) -> dict:
    """Frame-level detection at every classifier threshold, exactly, with five refinements per frame.

    A frame's classifier gate at threshold ``t`` keeps the patches with
    probability >= ``t``: always the ``k`` most probable of its five, so a
    frame has only six possible ROIs (k = 0..5).  Each is made once
    (:func:`evaluation.frame_roi`), and the frame detections follow for every
    threshold.

    Parameters
    ----------
    probs : ndarray, shape (F*5,)
        Classifier probabilities (calibrated, if the model is), five per frame.
    rois : ndarray, shape (F*5, 256, 256)
        ROI probabilities of the decoder.
    fs : FrameSet
        The frames (non-contrast images for the exposed field, calcium masks).
    refinement : dict
        The model's refinement parameters.
    fields : sequence of (512, 512) bool, optional
        Each frame's exposed field (:func:`exposed_field_of_frames`); computed
        here when not given.
    roi_patches : int, optional
        A model card's ``roi_patches``: at most that many of the gated patches
        draw the ROI (:func:`CACIdentifierLib.refinement.most_probable_patches`);
        None or 5 (or more) for all; below 1 is a ValueError.

    Returns
    -------
    dict
        ``thresholds`` (ascending candidate thresholds: 0 and every distinct
        probability), ``sensitivity``, ``specificity`` (arrays, NaN where
        undefined), ``positive_frames``, ``negative_frames``; per frame
        ``gate_scores`` (the highest threshold at which the frame still gets
        an ROI, :data:`NO_ROI` where none does) and ``truth`` (it has calcium).
    """
    from . import evaluation

    n = len(fs)
    if fields is None:
        fields = exposed_field_of_frames(fs)
    p = np.asarray(probs, np.float64).reshape(n, 5)
    truth = np.array([bool(fs.calcium[f].any()) for f in range(n)])
    order = np.argsort(-p, axis=1)
    has_roi = np.zeros((n, 6), bool)  # has_roi[f, k]: the ROI with the k most probable patches is non-empty
    if roi_patches is not None and int(roi_patches) < 1:  # as most_probable_patches: no ROI from no patch
        raise ValueError(f"roi_patches must be 1-5, got {roi_patches}")
    drawn = 5 if roi_patches is None else min(5, int(roi_patches))
    for f, field in enumerate(fields):
        for k in range(1, drawn + 1):
            gate = np.zeros(5, bool)
            gate[order[f, :k]] = True
            has_roi[f, k] = bool(evaluation.frame_roi(rois[5 * f:5 * f + 5], gate, field, refinement).any())
        has_roi[f, drawn + 1:] = has_roi[f, drawn]  # more patches gated, the same ones draw the ROI
    thresholds = np.unique(np.concatenate([[0.0], p.ravel()]))
    k = (p[None, :, :] >= thresholds[:, None, None]).sum(axis=2)  # (T, F) patches kept per frame
    detected = has_roi[np.arange(n)[None, :], k]
    npos, nneg = int(truth.sum()), int((~truth).sum())
    sens = (detected & truth).sum(axis=1) / npos if npos else np.full(len(thresholds), np.nan)
    spec = (~detected & ~truth).sum(axis=1) / nneg if nneg else np.full(len(thresholds), np.nan)
    # Each frame's gate score: the highest threshold at which it still gets an ROI (NO_ROI when none does).
    first = np.where(has_roi[:, 1:].any(axis=1), has_roi[:, 1:].argmax(axis=1), -1)
    ranked = np.take_along_axis(p, order, axis=1)
    gate = np.where(first >= 0, ranked[np.arange(n), np.maximum(first, 0)], NO_ROI)
    return {"thresholds": thresholds, "sensitivity": sens, "specificity": spec,
            "positive_frames": npos, "negative_frames": nneg, "gate_scores": gate, "truth": truth}


def sensitivity_standard_error(found, truth, groups) -> tuple[float | None, int]:
    """The frame sensitivity's standard error over patients, and how many patients have calcium.

    A patient's frames are found or missed together more often than apart
    (the same heart, dose and deposits), so the spread of a sensitivity
    from one set of patients to another is that of a ratio over patients:
    ``SE^2 = k / (k - 1) * sum_i (h_i - p m_i)^2 / M^2`` for ``k`` calcified
    patients with ``m_i`` calcified frames, ``h_i`` of them found, ``M``
    in all.  On sets of 72 phantom patients it came out 2-8 % below the
    spread measured over 400 random sets at five thresholds (docs/learning.md, "Does a stated
    sensitivity hold on new patients?").

    Parameters
    ----------
    found, truth : (F,) bool
        The frame gets an ROI; the frame has calcium.
    groups : sequence, length F
        Each frame's patient (:func:`frame_groups`).

    Returns
    -------
    (se, patients) : float or None, int
        None with fewer than two calcified patients.

    Examples
    --------
    Patient a: three calcified frames, all found; patient b: one of three:

    >>> se, k = sensitivity_standard_error([1, 1, 1, 1, 0, 0], [1] * 6, ["a"] * 3 + ["b"] * 3)
    >>> round(se, 3), k
    (0.333, 2)
    """
    f = np.asarray(found, bool)
    y = np.asarray(truth, bool)
    _, gid = np.unique(np.asarray([str(v) for v in groups], dtype=object), return_inverse=True)
    m = np.bincount(gid[y], minlength=gid.max() + 1 if gid.size else 0).astype(float)
    h = np.bincount(gid[y & f], minlength=m.size).astype(float)
    keep = m > 0
    k = int(keep.sum())
    if k < 2:
        return None, k
    return float(np.sqrt(ratio_variance(h[keep], m[keep]))), k


def ratio_variance(hits, positives):
    """The variance over patients of a sensitivity pooled over them (the ratio estimator's).

    ``k / (k - 1) * sum_i (h_i - p m_i)^2 / M^2`` with ``p = sum h / M``: the
    formula of :func:`sensitivity_standard_error`, at one threshold or at
    many (one column each).

    Parameters
    ----------
    hits : (k,) or (k, L) array_like
        Per calcified patient, its calcified frames found (at each of ``L`` thresholds).
    positives : (k,) array_like
        Per calcified patient, its calcified frames (all > 0).

    Returns
    -------
    float or (L,) ndarray
        Zero with fewer than two patients.

    Examples
    --------
    >>> round(float(ratio_variance([3, 1], [3, 3])), 4)
    0.1111
    >>> ratio_variance([[3, 3], [1, 3]], [3, 3]).round(4).tolist()
    [0.1111, 0.0]
    """
    h = np.asarray(hits, float)
    m = np.asarray(positives, float)
    k, total = m.size, m.sum()
    if k < 2:
        return np.zeros(h.shape[1:]) if h.ndim > 1 else 0.0
    p = h.sum(axis=0) / total
    mm = m.reshape((k,) + (1,) * (h.ndim - 1))
    return k / (k - 1) * ((h - p * mm) ** 2).sum(axis=0) / total ** 2


def frame_groups(fs) -> list:
    """Each frame's patient for :func:`sensitivity_standard_error`: its patient id, else its acquisition, else itself.

    >>> class F:
    ...     patient, acquisition = ["p1", "p1", "p2"], ["a", "b", "c"]
    ...     def __len__(self): return 3
    >>> frame_groups(F())
    ['p1', 'p1', 'p2']
    """
    for name in ("patient", "acquisition"):
        ids = list(getattr(fs, name, None) or [])
        if len(ids) == len(fs) and all(str(i) for i in ids):
            return [str(i) for i in ids]
    return [str(f) for f in range(len(fs))]


def operating_point(curve: dict, sensitivity: float) -> dict:
    """The highest classifier threshold whose frame sensitivity on the curve is at least ``sensitivity``.

    The threshold is put halfway down to the next lower candidate: it keeps
    the same held-out patches (none lies between), with a margin below the
    lowest one kept.

    Examples
    --------
    >>> curve = {"thresholds": np.array([0.0, 0.2, 0.6, 0.9]), "sensitivity": np.array([1.0, 1.0, 0.5, 0.0]),
    ...          "specificity": np.array([0.0, 0.5, 1.0, 1.0]), "positive_frames": 2, "negative_frames": 2}
    >>> operating_point(curve, 0.9)["threshold"]
    0.1
    """
    from CACIdentifierLib.errors import CacError

    if not 0.0 < sensitivity <= 1.0:
        raise CacError(f"target sensitivity {sensitivity} must be in (0, 1]")
    if not curve["positive_frames"]:
        raise CacError("choosing an operating point needs frames with calcium in the held-out data")
    t, sens, spec = curve["thresholds"], curve["sensitivity"], curve["specificity"]
    ok = np.flatnonzero(sens >= sensitivity - 1e-12)
    if not ok.size:
        raise CacError(f"no classifier threshold reaches a frame sensitivity of {sensitivity:.3f} on these data "
                       f"(at most {np.nanmax(sens):.3f}); choose a lower --sensitivity")
    i = int(ok.max())
    thr = 0.5 * (t[i - 1] + t[i]) if i > 0 else float(t[i])
    return {"threshold": float(thr), "target_sensitivity": float(sensitivity),
            "sensitivity": float(sens[i]), "specificity": None if np.isnan(spec[i]) else float(spec[i]),
            "positive_frames": int(curve["positive_frames"]), "negative_frames": int(curve["negative_frames"])}


def cine_operating_point(gate_scores, evidence, truth, sensitivity: float) -> dict | None:
    """The classifier and cine thresholds of highest frame specificity whose sensitivity reaches ``sensitivity``.

    A frame is found when its gate score is at least ``t`` and its cine's evidence at least ``c``
    (:func:`CACIdentifierLib.temporal.cine_gate`).  For each candidate ``c`` (every distinct evidence)
    ``t`` is the highest that still finds the target share of the frames with calcium; ties in
    specificity keep the higher sensitivity, then the higher thresholds.  Both are then put halfway
    down to the next lower candidate, as :func:`operating_point` does (the same held-out decisions,
    with a margin).  None when no pair reaches it.

    Parameters
    ----------
    gate_scores : (F,) float
        Per frame, the highest classifier threshold at which it gets an ROI (:func:`frame_detection_curve`).
    evidence : (F,) float
        Per frame, its cine's evidence (:func:`CACIdentifierLib.temporal.cine_evidence` with ``cines``).
    truth : (F,) bool
        The frame has calcium.
    sensitivity : float
        Target frame sensitivity, (0, 1].

    Examples
    --------
    Three calcified frames (gate scores 0.9, 0.6, 0.3) and three calcium-free ones (0.8, 0.2, 0.1):
    alone, finding two of three costs the false positive at 0.8; the cine evidence sets it apart.

    >>> g = np.array([0.9, 0.6, 0.3, 0.8, 0.2, 0.1]); y = np.array([1, 1, 1, 0, 0, 0], bool)
    >>> op = cine_operating_point(g, np.array([0.7, 0.7, 0.7, 0.4, 0.4, 0.4]), y, 0.6)
    >>> round(op["threshold"], 3), round(op["cine_threshold"], 3), round(op["sensitivity"], 3), op["specificity"]
    (0.45, 0.55, 0.667, 1.0)

    A calcified frame without any ROI (``NO_ROI``) is missed at every threshold:

    >>> cine_operating_point(np.array([0.9, NO_ROI, 0.2]), np.ones(3), np.array([1, 1, 0], bool), 0.5)
    {'threshold': 0.55, 'cine_threshold': 1.0, 'sensitivity': 0.5, 'specificity': 1.0}
    >>> cine_operating_point(np.array([NO_ROI, 0.2]), np.ones(2), np.array([1, 0], bool), 0.5) is None
    True
    """
    g = np.asarray(gate_scores, float)
    e = np.asarray(evidence, float)
    y = np.asarray(truth, bool)
    need = int(np.ceil(sensitivity * y.sum() - 1e-9))
    best = None
    for c in np.unique(e):
        ok = e >= c
        pos = np.sort(g[y & ok & (g >= 0)])[::-1]
        if need < 1 or len(pos) < need:
            continue
        t = float(pos[need - 1])
        found = (g >= t) & ok
        sens = float(found[y].mean())
        spec = float((~found[~y]).mean()) if (~y).any() else float("nan")
        key = (-1.0 if np.isnan(spec) else spec, sens, t, float(c))
        if best is None or key > best[0]:
            best = (key, {"threshold": halfway_down(t, g[g >= 0]), "cine_threshold": halfway_down(float(c), e),
                          "sensitivity": sens, "specificity": None if np.isnan(spec) else spec})
    return None if best is None else best[1]


def halfway_down(value: float, values: np.ndarray) -> float:
    """``value`` moved halfway down to the next lower of ``values``: the same held-out decisions, with a
    margin for a probability that comes out a little lower elsewhere (bf16, another thread count).

    >>> halfway_down(0.5, np.array([0.9, 0.5, 0.3])), halfway_down(0.3, np.array([0.9, 0.3]))
    (0.4, 0.3)
    """
    lower = values[values < value]
    return float(0.5 * (value + lower.max())) if lower.size else float(value)


def choose_operating_point(probs: np.ndarray, rois: np.ndarray, fs, refinement: dict, sensitivity: float,
                           island_sizes=ISLAND_SIZES, cine_gate: bool = False,
                           roi_patches: int | None = None) -> tuple[dict, dict, dict]:
    """The operating point at the largest island size that reaches ``sensitivity``, then the highest threshold.

    The model's own ``min_island_px`` is tried first; then each of
    ``island_sizes`` below it, largest first.  A smaller size only comes in
    where the larger cannot reach the target at any classifier threshold,
    because it also lets more small false islands through.

    Parameters
    ----------
    probs, rois, fs
        As :func:`frame_detection_curve`.
    refinement : dict
        The model's refinement parameters.
    sensitivity : float
        Target frame sensitivity, (0, 1].
    island_sizes : sequence of int
        Smaller ``min_island_px`` values that may be used (empty: the model's only).
    cine_gate : bool
        Choose a cine threshold with the classifier threshold (:func:`cine_operating_point`; each
        acquisition of ``fs`` is a cine): the point then has ``cine_threshold``.
    roi_patches : int, optional
        The card's ``roi_patches`` (:func:`frame_detection_curve`).

    Returns
    -------
    (operating_point, refinement, curve) : dict, dict, dict
        :func:`operating_point` with ``min_island_px``, ``sensitivity_se`` (the
        sensitivity's standard error over patients, None with fewer than two
        calcified ones), ``calcified_patients`` and ``ceiling`` (the highest
        sensitivity any threshold reaches at that island size) added; the refinement
        with that island size; the :func:`frame_detection_curve` at it.

    Raises
    ------
    CacError
        If no island size and threshold reach ``sensitivity``; the message
        gives the highest frame sensitivity reached.
    """
    from CACIdentifierLib.errors import CacError

    own = int(refinement["min_island_px"])
    sizes = [own] + sorted({int(s) for s in island_sizes if 0 <= int(s) < own}, reverse=True)
    fields = exposed_field_of_frames(fs)
    best = 0.0
    for size in sizes:
        ref = dict(refinement, min_island_px=size)
        curve = frame_detection_curve(probs, rois, fs, ref, fields, roi_patches=roi_patches)
        if cine_gate:
            if not 0.0 < sensitivity <= 1.0:
                raise CacError(f"target sensitivity {sensitivity} must be in (0, 1]")
            if not curve["positive_frames"]:
                raise CacError("choosing an operating point needs frames with calcium in the held-out data")
            from CACIdentifierLib.temporal import cine_evidence

            evidence = cine_evidence(np.asarray(probs, float).reshape(-1, 5).max(axis=1), fs.acquisition)
            joint = cine_operating_point(curve["gate_scores"], evidence, curve["truth"], sensitivity)
            if joint is None:
                best = max(best, _ceiling(curve))
                continue
            found = (curve["gate_scores"] >= joint["threshold"]) & (evidence >= joint["cine_threshold"])
            return (dict(joint, target_sensitivity=float(sensitivity), min_island_px=size,
                         positive_frames=int(curve["positive_frames"]),
                         negative_frames=int(curve["negative_frames"]), ceiling=_ceiling(curve),
                         **_spread(found, curve["truth"], fs)), ref, curve)
        try:
            op = operating_point(curve, sensitivity)
        except CacError:
            if not curve["positive_frames"]:
                raise
            best = max(best, _ceiling(curve))
            continue
        found = curve["gate_scores"] >= op["threshold"]
        return dict(op, min_island_px=size, ceiling=_ceiling(curve), **_spread(found, curve["truth"], fs)), ref, curve
    # Three decimals: a target of 0.934 against a best of 0.929 must not read "0.93 ... at most 0.93".
    smaller = [str(v) for v in (250, 100, 0) if v < min(sizes)]
    hint = f", or let smaller ROI islands count (--island-sizes {','.join(smaller)})" if smaller else ""
    raise CacError(f"no classifier threshold reaches a frame sensitivity of {sensitivity:.3f} on these data "
                   f"(at most {best:.3f}, island sizes {', '.join(map(str, sizes))} px); "
                   f"choose a lower --sensitivity{hint}")


def _ceiling(curve: dict) -> float:
    """The highest frame sensitivity at any classifier threshold: calcified frames whose decoder draws nothing
    that survives the island cut are missed at every threshold.  Two cards differ least near it (docs/learning.md,
    session 49)."""
    return float(np.nanmax(curve["sensitivity"]))


def _spread(found, truth, fs) -> dict:
    """The operating point's ``sensitivity_se`` and ``calcified_patients`` (:func:`sensitivity_standard_error`)."""
    se, k = sensitivity_standard_error(found, truth, frame_groups(fs))
    return {"sensitivity_se": se, "calcified_patients": k}


def plot_operating_point(curve: dict, op: dict, path, title: str = "") -> None:
    """Frame sensitivity and specificity against the classifier threshold, the chosen point marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    t = curve["thresholds"]
    ax.step(t, curve["sensitivity"], where="post", color="tab:red",
            label=f"sensitivity ({curve['positive_frames']} frames with calcium)")
    ax.step(t, curve["specificity"], where="post", color="tab:blue",
            label=f"specificity ({curve['negative_frames']} calcium-free frames)")
    ax.axvline(op["threshold"], color="k", lw=0.8, ls="--")
    ax.axhline(op["target_sensitivity"], color="tab:red", lw=0.6, ls=":")
    spec = "" if op["specificity"] is None else f", specificity {op['specificity']:.2f}"
    island = f", islands >= {op['min_island_px']} px" if "min_island_px" in op else ""
    ax.set_title((title + "\n" if title else "") + f"threshold {op['threshold']:.3f}{island}: sensitivity "
                 f"{op['sensitivity']:.2f}{spec}", fontsize=9)
    ax.set_xlabel("classifier threshold (calibrated probability)")
    ax.set_ylabel("share of frames")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    from CACIdentifierLib.fileutil import atomic_output

    with atomic_output(path, overwrite=True) as tmp:  # the caller checked the name; no half-written PNG
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def calibrate_metadata(model, metadata: dict, fs, *, method: str = "platt", device="cpu", data: str = "",
                       batch_size: int = 32, sensitivity: float | None = None,
                       island_sizes=ISLAND_SIZES, cine_gate: bool = False,
                       roi_patches: int | None = None) -> tuple[dict, dict]:
    """New metadata with ``calibration`` and ``feature_statistics`` fitted on ``fs``; and the reliability data.

    Parameters
    ----------
    model : ResUNet18
    metadata : dict
        The model's metadata (a copy is returned).
    fs : FrameSet
        Held-out frames with patch labels.
    method : {"platt", "temperature", "none"}
    data : str
        What ``fs`` is, for the model card.
    sensitivity : float, optional
        Target frame-level sensitivity: the classifier threshold is set by
        :func:`operating_point` on ``fs`` (after the calibration) and stored
        as ``classifier_threshold`` with ``operating_point`` in the card
        (:func:`choose_operating_point`; a smaller island size it needs goes
        into the card's ``refinement``).
    island_sizes : sequence of int
        The smaller ``min_island_px`` values the operating point may use.
    cine_gate : bool
        With ``sensitivity``: also choose the cine threshold (``cine_threshold`` in the card; each
        acquisition of ``fs`` is a cine; :func:`choose_operating_point`).  A card's earlier cine
        threshold is dropped whenever the calibration or the point changes without it: it was chosen
        on the old probabilities.
    roi_patches : int, optional
        Store ``roi_patches`` in the card (at most that many of a frame's gated patches draw its ROI,
        :func:`CACIdentifierLib.refinement.most_probable_patches`; 5 removes it); the operating point
        is then chosen with it (needs ``sensitivity``).  None keeps the card's.

    Returns
    -------
    (metadata, reliability) : dict, dict
        ``reliability`` has ``before`` and ``after`` (:func:`calibration.reliability`)
        and, with ``sensitivity``, the ``curve`` of :func:`frame_detection_curve`.
    """
    import torch
    from CACIdentifierLib import calibration
    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.ood import feature_statistics

    from . import evaluation

    if method not in METHODS:
        raise CacError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if len(fs) < 4:
        raise CacError(f"calibration needs at least 4 annotated frames, got {len(fs)}; give more data")
    device = torch.device(device)
    probs, rois, pooled = evaluation.predict_patches(model, fs, device, False, batch_size,
                                                   decode=sensitivity is not None, return_features=True)
    p = np.clip(probs.astype(float), 1e-6, 1 - 1e-6)
    y = fs.patch_labels > 0.5
    if method != "none" and (y.all() or not y.any()):
        raise CacError("the calibration data hold only one class of patches; add calcium-free and calcified runs")
    logit = np.log(p / (1 - p))
    meta = dict(metadata)
    cal = None
    if method == "platt":
        t, b = calibration.fit_platt(logit, y)
        cal = {"temperature": t, "bias": b}
    elif method == "temperature":
        cal = {"temperature": calibration.fit_temperature(logit, y), "bias": 0.0}
    elif meta.get("calibration"):
        # "statistics only": a calibration the model already has stays, and the operating point is chosen
        # on the probabilities identify will see with it.
        old = meta["calibration"]
        cal = {"temperature": float(old.get("temperature", 1.0)), "bias": float(old.get("bias", 0.0))}
    before = calibration.reliability(p, y)
    after = calibration.reliability(calibration.apply(p, cal), y) if cal else before
    if cal and method != "none":
        meta["calibration"] = dict(cal, method=method, data=str(data), patches=int(y.size),
                                   positive_patches=int(y.sum()), ece_before=before["ece"], ece_after=after["ece"])
    rel = {"before": before, "after": after}
    if roi_patches is not None:
        if sensitivity is None:
            raise CacError("the ROI's patch count is chosen with the operating point; give a target sensitivity too")
        if not 1 <= int(roi_patches) <= 5:
            raise CacError(f"roi_patches {roi_patches} must be 1-5 (5: every gated patch draws the ROI)")
        meta.pop("roi_patches", None)
        if int(roi_patches) < 5:
            meta["roi_patches"] = int(roi_patches)
    if cine_gate and sensitivity is None:
        raise CacError("the cine threshold is chosen with the operating point; give a target sensitivity too")
    if "cine_threshold" in meta and (sensitivity is not None or method != "none"):
        del meta["cine_threshold"]  # chosen on the old probabilities: set again below, or gone
    if sensitivity is None and method != "none" and "operating_point" in meta:
        # The operating point was chosen on the old calibration's scale: its threshold is carried to the new
        # one, so the same frames get an ROI (--sensitivity chooses a new point).
        t = calibration.carry_threshold(float(meta.get("classifier_threshold", 0.5)), metadata.get("calibration"),
                                        cal)
        meta["classifier_threshold"] = t
        meta["operating_point"] = {k: v for k, v in dict(meta["operating_point"], threshold=t).items()
                                   if k != "cine_threshold" or "cine_threshold" in meta}
    if sensitivity is not None:
        # float32 as evaluation.evaluate gates them, so that a held-out probability lands on the same side.
        calibrated = (calibration.apply(probs, cal) if cal else probs).astype(np.float32)
        refinement = dict(REFINEMENT_DEFAULTS, **(meta.get("refinement") or {}))
        op, refinement, rel["curve"] = choose_operating_point(calibrated, rois, fs, refinement, sensitivity,
                                                              island_sizes, cine_gate=cine_gate,
                                                              roi_patches=meta.get("roi_patches"))
        if cine_gate:
            meta["cine_threshold"] = op["cine_threshold"]
        meta["refinement"] = refinement
        meta["classifier_threshold"] = op["threshold"]
        meta["operating_point"] = dict(op, data=str(data))
    meta["feature_statistics"] = feature_statistics(pooled, data=str(data))
    return meta, rel


def calibrate_file(model_path, out_path, fs, *, method: str = "platt", data: str = "", overwrite: bool = False,
                   device="cpu", sensitivity: float | None = None, island_sizes=ISLAND_SIZES,
                   cine_gate: bool = False, roi_patches: int | None = None) -> dict:
    """Calibrate the model at ``model_path`` on ``fs`` and write it to ``out_path`` (+ card, reliability PNG)."""
    import torch
    from CACIdentifierLib import calibration
    from CACIdentifierLib.modelio import load_model, save_model

    model, meta = load_model(model_path)
    new_meta, rel = calibrate_metadata(model, meta, fs, method=method, device=device, data=data,
                                       sensitivity=sensitivity, island_sizes=island_sizes, cine_gate=cine_gate,
                                       roi_patches=roi_patches)
    dtype = torch.float16 if str(meta.get("weights_dtype", "")).endswith("16") else torch.float32
    card = save_model(out_path, model, new_meta, overwrite=overwrite, dtype=dtype)
    png = Path(out_path).with_suffix(".reliability.png")
    calibration.plot_reliability(rel["before"], rel["after"], png, title=f"{method} calibration: {data}")
    out = {"card": card, "reliability": rel, "figure": str(png)}
    if "curve" in rel:
        out["operating_point_figure"] = str(Path(out_path).with_suffix(".operating_point.png"))
        plot_operating_point(rel["curve"], card["operating_point"], out["operating_point_figure"], title=str(data))
    return out
