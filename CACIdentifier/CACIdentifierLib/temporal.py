"""Temporal consistency across beats and across the cine (the paper's stated future work).

Calcium sits on the vessel wall: at the same cardiac phase it is at the same
place in every beat, so its ROI recurs.  A false positive from noise or a
passing structure flickers.  :func:`temporal_filter` keeps an ROI component
only when a frame of about the same phase in *another* beat has an ROI within
``radius_px`` of it; frames with no same-phase partner keep their ROIs (no
evidence either way).

Calcium is in every non-contrast frame of a calcified run, so the evidence of
the whole cine -- the mean of its frames' CAC probabilities
(:func:`cine_evidence`) -- separates calcified from calcium-free runs better
than any one frame does.  :func:`cine_gate` withholds every ROI of a cine whose
evidence lies below the model card's ``cine_threshold`` (chosen on held-out data
by ``cac calibrate --cine-gate``; docs/identify.md).

Examples
--------
>>> import numpy as np
>>> masks = np.zeros((4, 32, 32), bool)
>>> masks[0, 5:9, 5:9] = masks[2, 6:10, 5:9] = True    # recurs at phase 0.1 in both beats
>>> masks[1, 20:24, 20:24] = True                      # flickers: only in beat 1 at phase 0.6
>>> phase = np.array([0.1, 0.6, 0.1, 0.6])
>>> beat = np.array([0, 0, 1, 1])
>>> out = temporal_filter(masks, [0, 1, 2, 3], phase, beat)
>>> bool(out[0].any()), bool(out[2].any()), bool(out[1].any())
(True, True, False)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def beats_from_phase(phase) -> np.ndarray:
    """Beat number of every frame: a new beat starts where the phase wraps from near 1 to near 0."""
    ph = np.asarray(phase, float)
    wraps = np.concatenate([[False], np.diff(ph) < -0.5])
    return np.cumsum(wraps)


def temporal_filter(masks: np.ndarray, frames, phase, beat=None, *, phase_tol: float = 0.08,
                    radius_px: int = 12) -> np.ndarray:
    """ROI masks with components unsupported by a same-phase frame of another beat removed.

    Parameters
    ----------
    masks : (n_frames, rows, cols) bool
        ROIs of the cine (frames not in ``frames`` are returned unchanged).
    frames : sequence of int
        The analysed (non-contrast) frames.
    phase : (n_frames,) float
        Cardiac phase in [0, 1) of every frame (``SyncResult.phase``).
    beat : (n_frames,) int, optional
        Beat of every frame (default :func:`beats_from_phase`).
    phase_tol : float
        Phase difference (cyclic) within which two frames count as the same phase.
    radius_px : int
        How far (pixels) a supporting ROI may lie (the heart does not return exactly).

    Returns
    -------
    (n_frames, rows, cols) bool
    """
    masks = np.asarray(masks, bool)
    phase = np.asarray(phase, float)
    beat = beats_from_phase(phase) if beat is None else np.asarray(beat)
    frames = [int(f) for f in frames]
    out = masks.copy()
    grown = {f: ndi.binary_dilation(masks[f], iterations=radius_px) if masks[f].any() else masks[f]
             for f in frames}
    for f in frames:
        if not masks[f].any():
            continue
        partners = [g for g in frames if beat[g] != beat[f]
                    and min(abs(phase[g] - phase[f]), 1 - abs(phase[g] - phase[f])) <= phase_tol]
        if not partners:
            continue
        support = np.zeros_like(masks[f])
        for g in partners:
            support |= grown[g]
        labels, n = ndi.label(masks[f])
        keep = np.unique(labels[support & masks[f]])
        out[f] = np.isin(labels, keep[keep > 0])
    return out


def cine_evidence(frame_probabilities, cines=None) -> np.ndarray | float:
    """The mean frame probability of a cine (or of each frame's cine, with ``cines``).

    Parameters
    ----------
    frame_probabilities : sequence of float
        Each analysed frame's CAC probability (its most probable patch, calibrated).
    cines : sequence, optional
        The cine of each frame, when frames of several cines are given together.

    Returns
    -------
    float, or ndarray with ``cines``: every frame's cine evidence.

    Examples
    --------
    >>> cine_evidence([0.25, 0.5, 0.75])
    0.5
    >>> cine_evidence([0.2, 0.4, 0.9], cines=["a", "a", "b"]).round(2).tolist()
    [0.3, 0.3, 0.9]
    """
    p = np.asarray(frame_probabilities, float).reshape(-1)
    if cines is None:
        return float(p.mean()) if p.size else 0.0
    c = np.asarray(cines, dtype=object).reshape(-1)
    if c.size != p.size:
        raise ValueError(f"{c.size} cine names for {p.size} frame probabilities")
    out = np.empty_like(p)
    for name in dict.fromkeys(c.tolist()):
        sel = c == name
        out[sel] = p[sel].mean()
    return out


def cine_gate(frame_probabilities, cine_threshold, cines=None) -> np.ndarray:
    """Per frame: may it keep its ROI?  False on every frame of a cine whose evidence is below ``cine_threshold``.

    ``cine_threshold`` None keeps every frame (a model card without a cine gate).

    Examples
    --------
    >>> cine_gate([0.1, 0.3, 0.9, 0.8], 0.5, cines=["free", "free", "calc", "calc"]).tolist()
    [False, False, True, True]
    >>> cine_gate([0.1, 0.3], None).tolist()
    [True, True]
    """
    p = np.asarray(frame_probabilities, float).reshape(-1)
    if cine_threshold is None:
        return np.ones(p.size, bool)
    evidence = cine_evidence(p, cines) if cines is not None else np.full(p.size, cine_evidence(p))
    return np.asarray(evidence >= float(cine_threshold), bool)

