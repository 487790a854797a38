"""Temporal consistency across beats (the paper's stated future work).

Calcium sits on the vessel wall: at the same cardiac phase it is at the same
place in every beat, so its ROI recurs.  A false positive from noise or a
passing structure flickers.  :func:`temporal_filter` keeps an ROI component
only when a frame of about the same phase in *another* beat has an ROI within
``radius_px`` of it; frames with no same-phase partner keep their ROIs (no
evidence either way).

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
