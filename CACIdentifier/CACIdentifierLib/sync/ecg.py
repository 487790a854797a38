"""The phase from the ECG: R peaks of the ECG curve or the R Wave Pointer (the gold standard)."""

from __future__ import annotations

import numpy as np

from .phase import phase_from_landmarks
from .result import PhaseEstimate


def r_peaks_from_ecg(samples, times_ms, *, edges: bool = False) -> np.ndarray:
    """R-peak times (ms) of an ECG lead with :func:`scipy.signal.find_peaks`.

    The baseline (median) is removed and the polarity chosen so that R is
    positive (the larger of the 99.5th-percentile excursions); peaks must be at
    least 250 ms apart (240 bpm) and rise by half the robust range
    (99.5th - 5th percentile).  With ``edges``, a trace that starts (ends)
    inside an R wave, i.e. above that height and leaving it within 150 ms,
    also gives an R peak at its highest sample there: the recording began
    (stopped) during the R wave.
    """
    from scipy.signal import find_peaks

    x = np.asarray(samples, float).ravel()
    t = np.asarray(times_ms, float).ravel()
    if x.size < 3 or x.size != t.size:
        return np.zeros(0)
    x = x - np.median(x)
    if abs(np.percentile(x, 0.5)) > abs(np.percentile(x, 99.5)):
        x = -x
    dt = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    if dt <= 0:
        return np.zeros(0)
    lo = np.percentile(x, 5)
    rng = np.percentile(x, 99.5) - lo
    if rng <= 0:
        return np.zeros(0)
    peaks, _ = find_peaks(x, distance=max(1, int(250.0 / dt)), prominence=0.5 * rng)
    out = list(t[peaks])
    if edges:
        high = x >= lo + 0.5 * rng
        for run in (high, high[::-1]):
            if not run[0]:
                continue
            length = int(np.argmin(run)) if not run.all() else run.size
            if length * dt > 150.0:
                continue
            seg = np.arange(length) if run is high else x.size - 1 - np.arange(length)
            tp = float(t[seg[np.argmax(x[seg])]])
            if all(abs(tp - q) > 250.0 for q in out):
                out.append(tp)
    return np.array(sorted(out))


def ecg_estimate(n, r_wave_frames, ecg, frame_time_ms, warn_list) -> PhaseEstimate | None:
    """Phase from the R waves: 0 at each R, linear in between, mean RR outside.

    The R Wave Pointer (frames) is used when it lists at least two R waves,
    else the R peaks of the ECG curve.  An R wave that the ECG curve shows at
    the very start or end of the run (outside the pointer's list) is added for
    the phase only; the period is the mean RR of the listed R waves.
    """
    r = None
    source = ""
    curve = None
    if ecg is not None and frame_time_ms:
        curve = r_peaks_from_ecg(ecg.samples, ecg.times_ms, edges=True) / float(frame_time_ms)
    if r_wave_frames is not None and len(r_wave_frames) >= 2:
        # Unique: a pointer that repeats a frame would give a zero period.
        r = np.unique(np.asarray([float(x) for x in r_wave_frames]))
        source = "ecg-r-wave-pointer"
    if r is not None and r.size < 2:
        r = None
    if r is None and curve is not None and curve.size >= 2:
        r = curve
        source = "ecg-curve"
    if r is None:
        if r_wave_frames is not None or ecg is not None:
            warn_list.append("the ECG has fewer than two R waves; the phase comes from the images")
        return None
    period = float(np.mean(np.diff(r)))
    landmarks = r
    if curve is not None and source == "ecg-r-wave-pointer":
        gap = 0.5 * float(np.min(np.diff(r)))
        extra = [x for x in curve if x < r[0] - gap or x > r[-1] + gap]
        if extra:
            landmarks = np.sort(np.concatenate([r, extra]))
            source += "+ecg-curve-edges"
    unwrapped = phase_from_landmarks(landmarks, n)
    unwrapped -= np.floor(unwrapped[0])
    hr = 60000.0 / (period * frame_time_ms) if frame_time_ms else None
    return PhaseEstimate(source, unwrapped % 1.0, period, [float(x) for x in landmarks], [], 1.0, True, hr)
