"""Phase tools: circular distances and means, phase from beat landmarks, pairing by phase.

Phases are in cycles, in [0, 1); landmarks and beats are fractional frames.
"""

from __future__ import annotations

import numpy as np

PAIR_TOL = 0.005  # cycles: candidates this close to the best phase are ties


def circ_dist(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b)) % 1.0
    return np.minimum(d, 1.0 - d)


def circ_mean(values, weights=None, axis=None):
    ang = 2 * np.pi * np.asarray(values, float)
    w = np.ones_like(ang) if weights is None else np.broadcast_to(np.asarray(weights, float), ang.shape)
    s = (w * np.sin(ang)).sum(axis=axis)
    c = (w * np.cos(ang)).sum(axis=axis)
    return (np.arctan2(s, c) / (2 * np.pi)) % 1.0


def phase_from_landmarks(landmarks, n_frames: int, period: float | None = None) -> np.ndarray:
    """Unwrapped phase (cycles) of frames ``0..n-1`` from beat landmarks (fractional frames).

    Phase is ``i`` at landmark ``i`` (0 at the first), linear in between, and
    extrapolated with the mean landmark interval (or ``period``) outside.

    Examples
    --------
    Beats (R waves) at frames 2, 12 and 20: the phase follows the shorter second beat, and
    before the first one it goes back at the mean interval (9 frames).

    >>> phase_from_landmarks([2, 12, 20], 22).round(3).tolist()[::4]
    [-0.222, 0.2, 0.6, 1.0, 1.5, 2.0]
    """
    lm = np.asarray(sorted(landmarks), float)
    if lm.size == 0:
        raise ValueError("need at least one landmark")
    if lm.size == 1 and period is None:
        raise ValueError("need two landmarks or a period")
    mean_rr = float(np.mean(np.diff(lm))) if lm.size >= 2 else float(period)
    step = float(period) if (period is not None and lm.size < 2) else mean_rr
    k = np.arange(n_frames, dtype=float)
    beats = np.arange(lm.size, dtype=float)
    ph = np.interp(k, lm, beats)
    ph = np.where(k < lm[0], (k - lm[0]) / step, ph)
    ph = np.where(k > lm[-1], lm.size - 1 + (k - lm[-1]) / step, ph)
    return ph


def zero_crossings(unwrapped: np.ndarray) -> list[float]:
    """Fractional frames where an unwrapped phase crosses an integer."""
    out = []
    for k in range(unwrapped.size - 1):
        a, b = unwrapped[k], unwrapped[k + 1]
        if b <= a:
            continue
        for m in range(int(np.floor(a)) + 1, int(np.floor(b)) + 1):
            out.append(float(k + (m - a) / (b - a)))
        if a == np.floor(a) and k == 0:
            out.insert(0, 0.0)
    return sorted(set(round(x, 9) for x in out))


def pair_by_phase(phase, non_contrast, candidates, frame_distance=None, tolerance: float = 0.005) -> list[list[int]]:
    """Pair each non-contrast frame with the candidate of nearest phase (circular distance).

    Candidates within ``tolerance`` cycles of the best are ties, broken by the
    smallest ``frame_distance[i, j]`` when given, else by the nearest in time.

    Parameters
    ----------
    phase : sequence of float
        Phase of every frame, in cycles.
    non_contrast, candidates : sequence of int
        The frames to pair, and the contrast frames they may pair with.

    Returns
    -------
    list of [int, int]
        ``[non_contrast_frame, contrast_frame]`` pairs.

    Examples
    --------
    >>> phase = [0.0, 0.25, 0.5, 0.75, 0.02, 0.27, 0.52, 0.77]
    >>> pair_by_phase(phase, [0, 1, 2, 3], [4, 5, 6, 7])
    [[0, 4], [1, 5], [2, 6], [3, 7]]
    """
    phase = np.asarray(phase, float)
    cand = np.asarray(sorted(candidates), int)
    pairs = []
    if cand.size == 0:
        return pairs
    nears = []
    for i in non_contrast:
        d = circ_dist(phase[i], phase[cand])
        nears.append(cand[d <= d.min() + tolerance])
    tied = [k for k, near in enumerate(nears) if near.size > 1] if frame_distance is not None else []
    dist = {}
    if tied:
        # All tie-breaking distances in one request (frame_distance may compute them on demand).
        rows = np.concatenate([np.full(nears[k].size, int(non_contrast[k])) for k in tied])
        flat = np.asarray(frame_distance[rows, np.concatenate([nears[k] for k in tied])], float)
        dist = dict(zip(tied, np.split(flat, np.cumsum([nears[k].size for k in tied])[:-1])))
    for k, (i, near) in enumerate(zip(non_contrast, nears)):
        j = int(near[np.argmin(dist[k])]) if k in dist else int(near[np.argmin(np.abs(near - i))])
        pairs.append([int(i), j])
    return pairs
