"""Contrast onset: the first frame where contrast is visible, and where it has fully arrived.

The paper takes the first half of the cine as non-contrast; here a per-frame
statistic of dark, thin structure (contrast-filled vessels) is fitted with a
baseline, a rise and a plateau (see docs/sync.md).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from ..errors import CacWarning
from .default import prepare_features
from .gram import one_cycle_mean
from .result import ContrastCourse
from .signal import bin_mean, block_mean, check_frames

# Non-contrast frames just before a detected onset that are not analysed (synchronize's onset_guard):
# the detected onset is more often late than early (benchmarks/onset_guard.py, docs/sync.md).
ONSET_GUARD_FRAMES = 2
DARK_BIN = 2  # onset statistic on 64x64 means with a 3x3 box: as accurate as 128x128 with 7x7, 4x cheaper
DARK_BOX = 3


def _darkness_statistic(small: np.ndarray) -> np.ndarray:
    """Per-frame amount of dark, thin structure relative to the frame's mean brightness.

    ``mean(max(box7(f) - f, 0)) / mean(f)`` on the block-averaged frame: contrast
    filled vessels are thin and darker than their surroundings (XA stores higher
    attenuation as darker pixels); the ratio ignores exposure gain changes, and
    moving anatomy (respiration) changes where dark structures are, not how much.
    """
    if DARK_BIN > 1:
        small = bin_mean(small, DARK_BIN)
    local = ndimage.uniform_filter(small, size=(1, DARK_BOX, DARK_BOX), mode="nearest")
    np.subtract(local, small, out=local)
    np.maximum(local, 0, out=local)
    n = small.shape[0]
    dark = local.reshape(n, -1).sum(1).astype(np.float64) / local[0].size
    mean = small.reshape(n, -1).sum(1).astype(np.float64) / local[0].size
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.where(mean > 0, dark / np.where(mean > 0, mean, 1), 0.0)
    return stat


def fit_ramp(stat: np.ndarray, valid: np.ndarray, fixed_t0: int | None = None, t0_window=None):
    """Least-squares fit of baseline + step ramp: ``a + b * clip((k - t0) / (t1 - t0), 0, 1)``.

    ``t0`` (last baseline frame, may be -1) and ``t1`` (first plateau frame) are
    integers searched exhaustively; every candidate's sums come from prefix sums,
    so the search is O(N^2) in time.  The candidates are evaluated a block of
    ``t0`` rows at a time, so memory stays linear in N (a whole N x N table
    per sum took gigabytes for long cines); the arithmetic per candidate and
    the first-minimum choice are those of the whole table.  ``t0_window`` =
    (lo, hi) limits t0.  Returns (t0, t1, a, b, sse).
    """
    n = stat.size
    k = np.arange(n, dtype=float)
    w = valid.astype(float)
    y = np.where(valid, stat, 0.0)

    def prefix(v):
        return np.concatenate([[0.0], np.cumsum(v)])

    W, KW, K2W, YW, KYW = (prefix(v) for v in (w, k * w, k * k * w, y * w, k * y * w))
    sw, sy, syy = W[-1], YW[-1], float((w * y * y).sum())
    t0_all = np.arange(-1, n - 1, dtype=float) if fixed_t0 is None else np.array([float(fixed_t0)])
    t1 = np.arange(0, n, dtype=float)[None, :]
    rows = max(1, (1 << 18) // max(n, 1))
    best = None  # (sse, t0, t1, a, b)
    for start in range(0, t0_all.size, rows):
        t0 = t0_all[start : start + rows, None]
        ok = t1 > t0
        if t0_window is not None:
            ok = ok & (t0 >= t0_window[0]) & (t0 <= t0_window[1])
        t0b, t1b = np.broadcast_arrays(t0, t1)
        a_i = (t0b + 1).astype(int).clip(0, n)  # ramp frames t0+1 .. t1-1
        b_i = t1b.astype(int).clip(0, n)
        L = np.where(ok, t1b - t0b, 1.0)

        def seg(P, a_i=a_i, b_i=b_i):
            return P[b_i] - P[np.minimum(a_i, b_i)]

        sW, sKW, sK2W, sYW, sKYW = seg(W), seg(KW), seg(K2W), seg(YW), seg(KYW)
        plateau_w = W[-1] - W[b_i]
        plateau_y = YW[-1] - YW[b_i]
        sr = (sKW - t0b * sW) / L + plateau_w
        srr = (sK2W - 2 * t0b * sKW + t0b * t0b * sW) / (L * L) + plateau_w
        sry = (sKYW - t0b * sYW) / L + plateau_y
        det = sw * srr - sr * sr
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(det > 1e-12, (sw * sry - sr * sy) / det, 0.0)
        a = (sy - b * sr) / sw
        sse = syy - a * sy - b * sry
        # Only darkening (b > 0) is a contrast arrival.
        sse = np.where(ok & (b > 0), sse, np.inf)
        if not np.isfinite(sse).any():
            continue
        i, j = np.unravel_index(int(np.argmin(sse)), sse.shape)
        if best is None or sse[i, j] < best[0]:  # strictly: the earlier block keeps a tie, as argmin does
            best = (float(sse[i, j]), int(t0b[i, j]), int(t1b[i, j]), float(a[i, j]), float(b[i, j]))
    if best is None:
        return (None, None, 0.0, 0.0, np.inf)
    return (best[1], best[2], best[3], best[4], float(max(best[0], 0.0)))


def _fit_smooth_ramp(stat: np.ndarray, valid: np.ndarray, t0: int, t1: int, fixed_t0: int | None = None):
    """Refine a linear-ramp fit with a smoothstep rise ``a + b s((k - t0)/(t1 - t0))``, s = 3x^2 - 2x^3.

    Filling a vessel tree starts slowly (only the proximal vessel at first), so a
    linear ramp puts its start late; the smoothstep's start is where the rise
    departs from the baseline.  Searched near the linear fit: t0 from
    ``t0 - (t1 - t0) - 2`` to ``t0 + 2``, t1 from ``t1 - L/2`` to ``t1 + L``.
    Returns (t0, t1).
    """
    n = stat.size
    L = max(t1 - t0, 1)
    k = np.arange(n, dtype=float)
    w = valid.astype(float)
    y = np.where(valid, stat, 0.0)
    c0 = [fixed_t0] if fixed_t0 is not None else range(max(-1, t0 - L - 2), min(n - 2, t0 + 2) + 1)
    cand = [(a, b) for a in c0 for b in range(max(a + 1, t1 - L // 2), min(n - 1, t1 + L) + 1)]
    if not cand:
        return t0, t1
    ca = np.array(cand, float)
    sw, sy = w.sum(), (w * y).sum()
    sse = np.empty(len(cand))
    # A block of candidates at a time: a long ramp has many candidates, each a row of N values.
    rows = max(1, (1 << 18) // max(n, 1))
    for s in range(0, len(cand), rows):
        c = ca[s:s + rows]
        x = np.clip((k[None, :] - c[:, :1]) / (c[:, 1:] - c[:, :1]), 0.0, 1.0)
        r = x * x * (3 - 2 * x)
        sr, srr, sry = r @ w, (r * r) @ w, r @ (w * y)
        det = sw * srr - sr * sr
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(det > 1e-12, (sw * sry - sr * sy) / det, 0.0)
        a = (sy - b * sr) / sw
        sse[s:s + rows] = np.where(b > 0, (w * y * y).sum() - a * sy - b * sry, np.inf)
    i = int(np.argmin(sse))
    if not np.isfinite(sse[i]):
        return t0, t1
    return int(ca[i, 0]), int(ca[i, 1])


def contrast_course(small: np.ndarray, valid: np.ndarray | None = None, onset: int | None = None,
                    period: float | None = None) -> ContrastCourse:
    """Find the contrast arrival in block-averaged frames (see :class:`ContrastCourse`).

    The darkening statistic (:func:`_darkness_statistic`) is fitted with a
    baseline, a linear rise and a plateau (:func:`fit_ramp`).  The heart beat
    also modulates the statistic, so when the cardiac ``period`` (frames) is
    known the statistic is first averaged over one period around every frame;
    that beat-free course decides whether there is an arrival at all and
    roughly where, and the raw statistic then places it to the frame (its
    baseline end searched within one period of the smoothed fit).  The onset
    is the first frame after the baseline, ``contrast_start`` the first frame
    of the plateau.  The arrival is "detected" when, on the beat-free course,
    the ramp model explains at least 60 % of the variance, the rise is at least
    4 robust residual standard deviations and 2 % of the baseline.  With
    ``onset`` given, only the plateau start is fitted.
    """
    n = small.shape[0]
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    stat = _darkness_statistic(small)
    vk = np.nonzero(valid)[0]
    smooth = stat.copy()
    use_period = period is not None and period >= 2 and vk.size > 1.5 * period
    if use_period:
        smooth[vk] = one_cycle_mean(vk.astype(float), period, stat[vk])
    fixed = None if onset is None else int(onset) - 1
    t0, t1, a, b, sse = fit_ramp(smooth, valid, fixed)
    if t0 is None:  # no darkening at all
        guess = n // 2 if onset is None else int(onset)
        return ContrastCourse(guess, guess, 0.0, 0.0, False, stat)
    k = np.arange(n, dtype=float)
    model = a + b * np.clip((k - t0) / max(t1 - t0, 1e-9), 0, 1)
    resid = (smooth - model)[valid]
    noise = 1.4826 * np.median(np.abs(resid - np.median(resid))) + 1e-12
    total = ((smooth[valid] - smooth[valid].mean()) ** 2).sum()
    score = float(max(0.0, 1.0 - sse / total)) if total > 0 else 0.0
    snr = float(b / noise)
    detected = score >= 0.6 and snr >= 4.0 and b >= 0.02 * max(a, 1e-12)
    if use_period:
        window = None if fixed is not None else (t0 - period, t0 + period)
        r0, r1, *_ = fit_ramp(stat, valid, fixed, window)
        if r0 is not None:
            t0, t1 = r0, r1
    t0, t1 = _fit_smooth_ramp(stat, valid, t0, t1, fixed)
    return ContrastCourse(int(t0) + 1, int(t1), score, snr, bool(detected), stat)


def detect_contrast_onset(frames, blank_frames=()) -> tuple[int, float]:
    """First frame where contrast is visible, and the fit score (R^2 in [0, 1]).

    Frames before the onset are non-contrast.  See :func:`contrast_course` for
    the statistic and the change-point fit and for ``contrast_start``, the
    first frame where contrast has fully arrived.  When no significant
    darkening is found the paper's assumption (first half non-contrast) is
    returned with score 0 and a :class:`~.errors.CacWarning`.
    """
    frames = check_frames(frames)
    valid = np.ones(frames.shape[0], bool)
    valid[list(blank_frames)] = False
    small = block_mean(frames)
    course = contrast_course(small, valid, None, prepare_features(small, valid, None).rough_period)
    if not course.detected:
        warnings.warn("no contrast arrival found; assuming the first half of the cine is non-contrast",
                      CacWarning, stacklevel=2)
        return frames.shape[0] // 2, 0.0
    return course.onset_frame, course.score
