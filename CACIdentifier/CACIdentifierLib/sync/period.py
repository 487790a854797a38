"""The paper's method: the period from the FFT peak of eq. 1, frame k paired with k + m T.

De Rose et al., "Image frame synchronization" (Fig. 2): the ECG-like signal's
spectrum peaks at the heart rate; a non-contrast frame ``k`` is paired with
the contrast frame ``k + m T`` (rounded), ``m`` the smallest whole number of
periods that lands in the contrast part.  ``synchronize(..., method="paper")``.
"""

from __future__ import annotations

import math

import numpy as np

from .phase import pair_by_phase
from .result import PhaseEstimate

# Physiological range used to bound period searches when the frame time is known.
MIN_BPM = 35.0
MAX_BPM = 200.0
# Periodicity score below which the cine is declared non-periodic (see docs/sync.md).
PERIODIC_THRESHOLD = 0.25


def paper_estimate(signal, valid, frame_time_ms, onset, contrast_start) -> PhaseEstimate:
    """The paper's method: FFT peak period of eq. 1, pair frame k with k + m*T rounded."""
    n = signal.size
    x = signal.copy()
    k = np.arange(n)
    if not valid.all():  # blank frames: interpolate the signal so they do not create a spike
        x[~valid] = np.interp(k[~valid], k[valid], x[valid])
    spec = np.abs(np.fft.rfft(x - x.mean()))
    bins = np.arange(spec.size)
    lo_period, hi_period = period_bounds(n, frame_time_ms)
    with np.errstate(divide="ignore"):
        periods = np.where(bins > 0, n / np.maximum(bins, 1), np.inf)
    band = (bins >= 1) & (periods >= lo_period) & (periods <= hi_period)
    if not band.any():
        band = bins >= 1
    b = int(bins[band][np.argmax(spec[band])])
    period = n / b
    conf = _autocorr_at(x, period)
    periodic = conf >= PERIODIC_THRESHOLD
    unwrapped = k / period
    phase = unwrapped % 1.0
    cands = [j for j in range(contrast_start, n) if valid[j]]
    pairs = []
    cand_set = set(cands)
    for i in range(onset):
        if not valid[i]:
            continue
        j = None
        m = 1
        while True:
            jj = int(round(i + m * period))
            if jj >= n:
                break
            if jj >= contrast_start and jj in cand_set:
                j = jj
                break
            m += 1
        if j is None and cands:  # no whole number of periods lands in the contrast part
            j = pair_by_phase(phase, [i], cands)[0][1]
        if j is not None:
            pairs.append([i, j])
    hr = 60000.0 / (period * frame_time_ms) if frame_time_ms else None
    beats = [float(m * period) for m in range(int(np.ceil((n - 1) / period)) + 1) if m * period <= n - 1]
    return PhaseEstimate("image-paper", phase, period, beats, pairs, conf, periodic, hr)


def _autocorr_at(x: np.ndarray, lag: float) -> float:
    """Normalised autocorrelation of a mean-removed 1-D signal at a fractional lag (linear interp.)."""
    x = np.asarray(x, float) - np.mean(x)
    lo = int(np.floor(lag))
    vals = []
    for L in (lo, lo + 1):
        if L <= 0 or L >= x.size - 1:
            vals.append(0.0)
            continue
        a, b = x[:-L], x[L:]
        den = math.sqrt((a * a).sum() * (b * b).sum())
        vals.append(float((a * b).sum() / den) if den > 0 else 0.0)
    f = lag - lo
    return float(np.clip((1 - f) * vals[0] + f * vals[1], 0.0, 1.0))


def period_bounds(n: int, frame_time_ms: float | None) -> tuple[float, float]:
    """Shortest and longest period (frames) searched: physiological when the frame time is known."""
    if frame_time_ms:
        lo = 60000.0 / (MAX_BPM * frame_time_ms)
        hi = 60000.0 / (MIN_BPM * frame_time_ms)
        return max(2.0, lo), hi
    return 2.0, n / 2.0
