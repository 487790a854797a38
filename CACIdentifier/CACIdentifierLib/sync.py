"""Cardiac synchronization: pair each non-contrast frame with a contrast frame of the same phase.

De Rose et al. (Int J CARS 2025, "Image frame synchronization", Fig. 2) derive an
ECG-like signal from the images (eq. 1: the normalised Euclidean distance of
every frame to the first), take its period from the FFT peak, and pair the
non-contrast frames with contrast frames one or more periods later.  That
method is kept as ``method="paper"``.  The default method (see docs/sync.md)
improves every step:

- contrast onset detected from a per-frame statistic of dark, vessel-like
  structure (not "the first half"), with the frame where contrast has fully
  arrived (``contrast_start``): only frames from there on are pairing candidates;
- the signal is computed on 4x4 block means, per frame normalised (insensitive
  to exposure control), high-passed in time (insensitive to respiration and
  contrast arrival) and separately inside the non-contrast and the contrast
  parts (every frame after contrast arrival is far from a non-contrast frame);
- a sub-frame period from the autocorrelation of the image motion;
- a phase that follows heart-rate variability: one landmark per beat (the
  time each frame's state comes back, found with sub-frame interpolation
  between frames), phase linear between landmarks, averaged over many
  reference frames;
- the two parts are put on one phase scale by matching frames on the pixels
  that contrast does not change;
- every non-contrast frame pairs with the contrast frame of nearest phase.

When the file has an ECG (R Wave Pointer or ECG curve) its R waves give the
phase directly (gold standard); the image-based estimate is kept beside it.

Conventions: frames are 0-based; times in frames are fractional frame
indices; phases are in cycles, in [0, 1).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import CacError, CacWarning

METHODS = ("default", "paper")
# Physiological range used to bound period searches when the frame time is known.
MIN_BPM = 35.0
MAX_BPM = 200.0
# Periodicity score below which the cine is declared non-periodic (see docs/sync.md).
PERIODIC_THRESHOLD = 0.25
# Side of the block-averaged frames the default method works on.
SMALL_SIDE = 128
JSON_KEYS = (
    "onset_frame",
    "period_frames",
    "heart_rate_bpm",
    "phase",
    "pairs",
    "signal",
    "confidence",
    "ecg_used",
    "method",
)


# --------------------------------------------------------------------------- results


@dataclass
class PhaseEstimate:
    """One estimate of the cardiac phase of every frame (from the images or from the ECG).

    ``phase`` is in cycles in [0, 1) per frame; ``beat_frames`` are the
    (fractional) frames where the phase crosses 0; ``period_frames`` the mean
    period in frames (None when there is no periodicity); ``pairs`` the
    ``[non_contrast, contrast]`` frame pairs that this estimate gives.
    """

    source: str
    phase: np.ndarray
    period_frames: float | None
    beat_frames: list[float]
    pairs: list[list[int]]
    confidence: float
    periodic: bool
    heart_rate_bpm: float | None = None


@dataclass
class SyncResult:
    """Outcome of :func:`synchronize`.

    The attributes in :data:`JSON_KEYS` are what ``cac sync --json`` prints
    (:meth:`to_json`).  ``signal`` is paper eq. 1 with the first frame as
    reference (first non-blank frame when frame 0 is blank).  ``phase``,
    ``pairs``, ``period_frames``, ``heart_rate_bpm``, ``beat_frames`` come from
    the ECG when ``ecg_used`` is true, else from the images; ``image`` always
    holds the image-based estimate and ``ecg`` the ECG-based one (or None).
    """

    onset_frame: int
    period_frames: float | None
    heart_rate_bpm: float | None
    phase: list[float]
    pairs: list[list[int]]
    signal: list[float]
    confidence: float
    ecg_used: bool
    method: str
    periodic: bool
    warnings: list[str] = field(default_factory=list)
    beat_frames: list[float] = field(default_factory=list)
    contrast_start: int = 0
    onset_score: float = 0.0
    onset_detected: bool = True
    contrast_statistic: list[float] = field(default_factory=list)
    blank_frames: list[int] = field(default_factory=list)
    frame_time_ms: float | None = None
    image: PhaseEstimate | None = None
    ecg: PhaseEstimate | None = None

    @property
    def image_period_frames(self) -> float | None:
        return None if self.image is None else self.image.period_frames

    @property
    def image_heart_rate_bpm(self) -> float | None:
        return None if self.image is None else self.image.heart_rate_bpm

    @property
    def image_beat_frames(self) -> list[float]:
        return [] if self.image is None else list(self.image.beat_frames)

    @property
    def ecg_r_frames(self) -> list[float]:
        return [] if self.ecg is None else list(self.ecg.beat_frames)

    @property
    def non_contrast_frames(self) -> list[int]:
        return sorted({int(a) for a, _ in self.pairs})

    def to_json(self) -> dict:
        """The ``cac sync --json`` object: exactly the keys of :data:`JSON_KEYS`."""
        return {
            "onset_frame": int(self.onset_frame),
            "period_frames": None if self.period_frames is None else float(self.period_frames),
            "heart_rate_bpm": None if self.heart_rate_bpm is None else float(self.heart_rate_bpm),
            "phase": [float(p) for p in self.phase],
            "pairs": [[int(a), int(b)] for a, b in self.pairs],
            "signal": [float(s) for s in self.signal],
            "confidence": float(self.confidence),
            "ecg_used": bool(self.ecg_used),
            "method": str(self.method),
        }


@dataclass
class ContrastCourse:
    """Contrast arrival found by :func:`contrast_course`.

    ``onset_frame``: first frame where contrast is visible (frames before it are
    non-contrast); ``contrast_start``: first frame where the darkening statistic
    has reached its plateau (contrast fully arrived; pairing candidates start
    here); ``score``: fraction of the statistic's variance explained by the
    ramp model (R^2, 0-1); ``snr``: ramp height over the robust residual noise;
    ``detected``: whether a significant arrival was found; ``statistic``: the
    per-frame darkening statistic.
    """

    onset_frame: int
    contrast_start: int
    score: float
    snr: float
    detected: bool
    statistic: np.ndarray


# --------------------------------------------------------------------------- eq. 1


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise CacError(f"expected a cine of shape (frames, rows, columns), got shape {frames.shape}")
    if frames.shape[0] < 2:
        raise CacError("a cine needs at least 2 frames to be synchronized")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise CacError(f"empty frames of shape {frames.shape[1:]}")
    return frames


def ecg_like_signal(frames, reference: int = 0, *, chunk: int = 4) -> np.ndarray:
    """Paper eq. 1: normalised Euclidean distance of every frame to a reference frame.

    ``S_k = ||f_ref - f_k|| / (||f_ref|| + ||f_k||)`` with Frobenius norms over all
    pixels, for every frame ``k`` (``S_ref = 0``).  Dimensionless, in [0, 1].

    Parameters
    ----------
    frames : array (N, rows, cols)
        The cine, any numeric dtype.  Processed ``chunk`` frames at a time:
        each chunk is converted to float32 (exact for 8-16-bit integers),
        squared and summed per image row in float32, and the row sums are
        accumulated in float64, so no float64 copy of the cine is made.
    reference : int
        Index of the reference frame (the paper uses the first frame).

    Returns
    -------
    ndarray (N,) float64.  A frame pair with both norms zero gives 0.
    """
    frames = _check_frames(frames)
    n, rows, cols = frames.shape
    if not -n <= reference < n:
        raise CacError(f"reference frame {reference} is outside the cine's {n} frames")
    work = np.float64 if frames.dtype.itemsize > 4 or frames.dtype == np.float32 else np.float32
    ref = frames[reference].astype(work)
    diff2 = np.empty(n)
    norm2 = np.empty(n)
    for start in range(0, n, chunk):
        block = frames[start : start + chunk].astype(work)
        m = block.shape[0]
        rows_view = block.reshape(-1, cols)
        norm2[start : start + m] = np.einsum("ij,ij->i", rows_view, rows_view).reshape(m, rows).sum(1, dtype=np.float64)
        block -= ref
        diff2[start : start + m] = np.einsum("ij,ij->i", rows_view, rows_view).reshape(m, rows).sum(1, dtype=np.float64)
    denom = np.sqrt(norm2[reference]) + np.sqrt(norm2)
    out = np.zeros(n)
    ok = denom > 0
    out[ok] = np.sqrt(diff2[ok]) / denom[ok]
    return out


def block_mean(frames, side: int = SMALL_SIDE) -> np.ndarray:
    """Downsample frames by averaging ``f x f`` pixel blocks, ``f = min(rows, cols) // side``.

    Rows/columns beyond a multiple of ``f`` are dropped.  Returns float32
    (N, rows // f, cols // f).  Integer frames are summed in integers (exact).
    """
    frames = _check_frames(frames)
    n, rows, cols = frames.shape
    f = max(1, min(rows, cols) // side)
    if f == 1:
        return frames.astype(np.float32)
    r, c = rows // f, cols // f
    view = frames[:, : r * f, : c * f]
    if frames.dtype.kind in "ui" and frames.dtype.itemsize == 1 and f * f * 255 < 2**16:
        acc = np.uint16 if frames.dtype.kind == "u" else np.int32
    elif frames.dtype.kind in "ui" and frames.dtype.itemsize <= 2:
        acc = np.int64 if frames.dtype.kind == "i" else np.uint32
    else:
        acc = np.float64
    # Strided adds: one light pass per block offset, no float copy of the cine.
    v = view.reshape(n, r, f, c * f)
    rsum = v[:, :, 0].astype(acc)
    for i in range(1, f):
        rsum += v[:, :, i]
    w = rsum.reshape(n, r, c, f)
    out = w[..., 0].copy()
    for i in range(1, f):
        out += w[..., i]
    return out.astype(np.float32) / np.float32(f * f)


# --------------------------------------------------------------------------- contrast onset


def _darkness_statistic(small: np.ndarray) -> np.ndarray:
    """Per-frame amount of dark, thin structure relative to the frame's mean brightness.

    ``mean(max(box7(f) - f, 0)) / mean(f)`` on the block-averaged frame: contrast
    filled vessels are thin and darker than their surroundings (XA stores higher
    attenuation as darker pixels); the ratio ignores exposure gain changes, and
    moving anatomy (respiration) changes where dark structures are, not how much.
    """
    local = ndimage.uniform_filter(small, size=(1, 7, 7), mode="nearest")
    dark = np.maximum(local - small, 0).mean(axis=(1, 2), dtype=np.float64)
    mean = small.mean(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.where(mean > 0, dark / np.where(mean > 0, mean, 1), 0.0)
    return stat


def _fit_ramp(stat: np.ndarray, valid: np.ndarray, fixed_t0: int | None = None):
    """Least-squares fit of baseline + step ramp: ``a + b * clip((k - t0) / (t1 - t0), 0, 1)``.

    ``t0`` (last baseline frame, may be -1) and ``t1`` (first plateau frame) are
    integers searched exhaustively.  Returns (t0, t1, a, b, sse).
    """
    n = stat.size
    k = np.arange(n, dtype=float)
    w = valid.astype(float)
    y = np.where(valid, stat, 0.0)
    sw, sy = w.sum(), (w * y).sum()
    best = (None, None, 0.0, 0.0, np.inf)
    t0_range = [fixed_t0] if fixed_t0 is not None else range(-1, n - 1)
    for t0 in t0_range:
        t1 = np.arange(t0 + 1, n)
        if t1.size == 0:
            continue
        r = np.clip((k[None, :] - t0) / (t1[:, None] - t0), 0.0, 1.0)
        sr = r @ w
        srr = (r * r) @ w
        sry = r @ (w * y)
        det = sw * srr - sr * sr
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(det > 1e-12, (sw * sry - sr * sy) / det, 0.0)
        a = (sy - b * sr) / sw
        resid = (y[None, :] - a[:, None] - b[:, None] * r) * w[None, :]
        sse = (resid * resid).sum(1)
        # Only darkening (b > 0) is a contrast arrival.
        sse = np.where(b > 0, sse, np.inf)
        i = int(np.argmin(sse))
        if sse[i] < best[4]:
            best = (int(t0), int(t1[i]), float(a[i]), float(b[i]), float(sse[i]))
    return best


def contrast_course(small: np.ndarray, valid: np.ndarray | None = None, onset: int | None = None) -> ContrastCourse:
    """Find the contrast arrival in block-averaged frames (see :class:`ContrastCourse`).

    The darkening statistic (:func:`_darkness_statistic`) is fitted with a
    baseline, a linear rise and a plateau; the onset is the first frame after
    the baseline, ``contrast_start`` the first frame of the plateau.  The
    arrival is "detected" when the rise is at least 6 robust noise standard
    deviations and 3 % of the baseline.  With ``onset`` given, only the plateau
    start is fitted.
    """
    n = small.shape[0]
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    stat = _darkness_statistic(small)
    fixed = None if onset is None else int(onset) - 1
    t0, t1, a, b, sse = _fit_ramp(stat, valid, fixed)
    if t0 is None:  # no darkening at all
        return ContrastCourse(n // 2 if onset is None else int(onset), n // 2 if onset is None else int(onset),
                              0.0, 0.0, False, stat)
    k = np.arange(n, dtype=float)
    model = a + b * np.clip((k - t0) / max(t1 - t0, 1e-9), 0, 1)
    resid = (stat - model)[valid]
    noise = 1.4826 * np.median(np.abs(resid - np.median(resid))) + 1e-12
    total = ((stat[valid] - stat[valid].mean()) ** 2).sum()
    score = float(max(0.0, 1.0 - sse / total)) if total > 0 else 0.0
    snr = float(b / noise)
    detected = snr >= 6.0 and b >= 0.03 * max(a, 1e-12)
    return ContrastCourse(int(t0) + 1, int(t1), score, snr, bool(detected), stat)


def detect_contrast_onset(frames, blank_frames=()) -> tuple[int, float]:
    """First frame where contrast is visible, and the fit score (R^2 in [0, 1]).

    Frames before the onset are non-contrast.  See :func:`contrast_course` for
    the statistic and the change-point fit and for ``contrast_start``, the
    first frame where contrast has fully arrived.  When no significant
    darkening is found the paper's assumption (first half non-contrast) is
    returned with score 0 and a :class:`~.errors.CacWarning`.
    """
    frames = _check_frames(frames)
    valid = np.ones(frames.shape[0], bool)
    valid[list(blank_frames)] = False
    course = contrast_course(block_mean(frames), valid)
    if not course.detected:
        warnings.warn("no contrast arrival found; assuming the first half of the cine is non-contrast",
                      CacWarning, stacklevel=2)
        return frames.shape[0] // 2, 0.0
    return course.onset_frame, course.score


# --------------------------------------------------------------------------- phase tools


def _circ_dist(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b)) % 1.0
    return np.minimum(d, 1.0 - d)


def _circ_mean(values, weights=None, axis=None):
    ang = 2 * np.pi * np.asarray(values, float)
    w = np.ones_like(ang) if weights is None else np.broadcast_to(np.asarray(weights, float), ang.shape)
    s = (w * np.sin(ang)).sum(axis=axis)
    c = (w * np.cos(ang)).sum(axis=axis)
    return (np.arctan2(s, c) / (2 * np.pi)) % 1.0


def phase_from_landmarks(landmarks, n_frames: int, period: float | None = None) -> np.ndarray:
    """Unwrapped phase (cycles) of frames ``0..n-1`` from beat landmarks (fractional frames).

    Phase is ``i`` at landmark ``i`` (0 at the first), linear in between, and
    extrapolated with the mean landmark interval (or ``period``) outside.
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


def _zero_crossings(unwrapped: np.ndarray) -> list[float]:
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


def _unwrap_phase(phase: np.ndarray, period: float) -> np.ndarray:
    """Unwrap per-frame phases (mod 1) assuming an advance near ``1/period`` per frame."""
    adv = 1.0 / period
    out = np.empty_like(phase, dtype=float)
    out[0] = phase[0]
    for k in range(1, phase.size):
        d = (phase[k] - phase[k - 1] - adv + 0.5) % 1.0 - 0.5 + adv
        out[k] = out[k - 1] + d
    return out


def pair_by_phase(phase, non_contrast, candidates, frame_distance=None, tolerance: float = 0.005) -> list[list[int]]:
    """Pair each non-contrast frame with the candidate of nearest phase (circular distance).

    Candidates within ``tolerance`` cycles of the best are ties, broken by the
    smallest ``frame_distance[i, j]`` when given, else by the nearest in time.
    """
    phase = np.asarray(phase, float)
    cand = np.asarray(sorted(candidates), int)
    pairs = []
    if cand.size == 0:
        return pairs
    for i in non_contrast:
        d = _circ_dist(phase[i], phase[cand])
        near = cand[d <= d.min() + tolerance]
        if near.size > 1 and frame_distance is not None:
            j = int(near[np.argmin(frame_distance[i, near])])
        else:
            j = int(near[np.argmin(np.abs(near - i))])
        pairs.append([int(i), j])
    return pairs


# --------------------------------------------------------------------------- ECG


def r_peaks_from_ecg(samples, times_ms) -> np.ndarray:
    """R-peak times (ms) of an ECG lead with :func:`scipy.signal.find_peaks`.

    The baseline (median) is removed and the polarity chosen so that R is
    positive (the larger of the 99.5th-percentile excursions); peaks must be at
    least 250 ms apart (240 bpm) and rise by half the robust range.
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
    rng = np.percentile(x, 99.5) - np.percentile(x, 5)
    if rng <= 0:
        return np.zeros(0)
    peaks, _ = find_peaks(x, distance=max(1, int(250.0 / dt)), prominence=0.5 * rng)
    return t[peaks]


def _ecg_estimate(n, r_wave_frames, ecg, frame_time_ms, warn_list) -> PhaseEstimate | None:
    r = None
    source = ""
    if r_wave_frames is not None and len(r_wave_frames) >= 2:
        r = np.asarray(sorted(float(x) for x in r_wave_frames))
        source = "ecg-r-wave-pointer"
    elif ecg is not None and frame_time_ms:
        peaks = r_peaks_from_ecg(ecg.samples, ecg.times_ms)
        if peaks.size >= 2:
            r = peaks / float(frame_time_ms)
            source = "ecg-curve"
    if r is None:
        if r_wave_frames is not None or ecg is not None:
            warn_list.append("the ECG has fewer than two R waves; the phase comes from the images")
        return None
    unwrapped = phase_from_landmarks(r, n)
    period = float(np.mean(np.diff(r)))
    hr = 60000.0 / (period * frame_time_ms) if frame_time_ms else None
    return PhaseEstimate(source, unwrapped % 1.0, period, [float(x) for x in r], [], 1.0, True, hr)


# --------------------------------------------------------------------------- paper method


def _paper_estimate(signal, valid, frame_time_ms, onset, contrast_start) -> PhaseEstimate:
    """The paper's method: FFT peak period of eq. 1, pair frame k with k + m*T rounded."""
    n = signal.size
    x = signal.copy()
    k = np.arange(n)
    if not valid.all():  # blank frames: interpolate the signal so they do not create a spike
        x[~valid] = np.interp(k[~valid], k[valid], x[valid])
    spec = np.abs(np.fft.rfft(x - x.mean()))
    bins = np.arange(spec.size)
    lo_period, hi_period = _period_bounds(n, frame_time_ms)
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


def _period_bounds(n: int, frame_time_ms: float | None) -> tuple[float, float]:
    """Shortest and longest period (frames) searched: physiological when the frame time is known."""
    if frame_time_ms:
        lo = 60000.0 / (MAX_BPM * frame_time_ms)
        hi = 60000.0 / (MIN_BPM * frame_time_ms)
        return max(2.0, lo), hi
    return 2.0, n / 2.0


# --------------------------------------------------------------------------- default method


def _normalise(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-frame z-score over ``mask`` pixels (all when None): removes exposure offset and gain."""
    flat = x.reshape(x.shape[0], -1)
    if mask is not None:
        flat = flat[:, mask.ravel()]
    mu = flat.mean(1, keepdims=True)
    sd = flat.std(1, keepdims=True)
    sd[sd == 0] = 1
    return (flat - mu) / sd


def _highpass(y: np.ndarray, period: float) -> np.ndarray:
    """Remove the part of each pixel's time course slower than one period (moving-average subtraction)."""
    size = max(3, int(round(period)))
    if y.shape[0] <= size:
        return y - y.mean(0, keepdims=True)
    return y - ndimage.uniform_filter1d(y, size=size, axis=0, mode="reflect")


def _lag_correlation(feats: list[tuple[np.ndarray, np.ndarray]], max_lag: int) -> np.ndarray:
    """Normalised correlation of feature vectors ``lag`` frames apart, pooled over parts.

    ``feats`` is a list of (times, vectors (m, P)); returns rho[0..max_lag].
    """
    num = np.zeros(max_lag + 1)
    den_a = np.zeros(max_lag + 1)
    den_b = np.zeros(max_lag + 1)
    for times, v in feats:
        if len(times) < 2:
            continue
        g = v @ v.T
        d = np.diag(g)
        tt = np.asarray(times)
        lag = tt[None, :] - tt[:, None]
        for L in range(1, max_lag + 1):
            i, j = np.nonzero(lag == L)
            if i.size == 0:
                continue
            num[L] += g[i, j].sum()
            den_a[L] += d[i].sum()
            den_b[L] += d[j].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den_a * den_b > 0, num / np.sqrt(den_a * den_b), 0.0)
    rho[0] = 1.0
    return rho


def _peak_lag(rho: np.ndarray, lo: float, hi: float) -> tuple[float | None, float]:
    """Lag of the highest local maximum of ``rho`` in [lo, hi], parabolic sub-frame refinement."""
    best, best_val = None, -np.inf
    for L in range(max(1, int(np.floor(lo))), min(rho.size - 1, int(np.ceil(hi)) + 1)):
        if L + 1 >= rho.size:
            break
        if rho[L] >= rho[L - 1] and rho[L] >= rho[L + 1] and rho[L] > best_val:
            best, best_val = L, rho[L]
    if best is None:
        return None, 0.0
    a, b, c = rho[best - 1], rho[best], rho[best + 1]
    den = a - 2 * b + c
    off = 0.5 * (a - c) / den if den < 0 else 0.0
    off = float(np.clip(off, -0.5, 0.5))
    return best + off, float(b - 0.25 * (a - c) * off)


def _landmarks_for_reference(dist_row: np.ndarray, gram: np.ndarray, times: np.ndarray, r: int, period: float):
    """Times (fractional frames) where the part returns to reference frame ``r``'s state, one per beat.

    Walks forward and backward from ``r`` by about one period, takes the
    closest frame in a +-40 % window and refines it to sub-frame by projecting
    the reference onto the segments to the neighbouring frames (state assumed
    linear between frames).
    """
    pos = {int(t): i for i, t in enumerate(times)}
    out = [float(times[r])]
    sharp = []
    for direction in (1, -1):
        t = float(times[r])
        while True:
            centre = t + direction * period
            lo, hi = centre - 0.4 * period, centre + 0.4 * period
            cand = [i for i, tt in enumerate(times) if lo <= tt <= hi]
            if not cand:
                break
            j = cand[int(np.argmin(dist_row[cand]))]
            tj = float(times[j])
            best_t, best_d = tj, dist_row[j]
            for nb in (int(times[j]) - 1, int(times[j]) + 1):
                m = pos.get(nb)
                if m is None:
                    continue
                # |y_r - (y_j + s (y_m - y_j))|^2 minimised over s in [0, 1]
                seg2 = gram[j, j] + gram[m, m] - 2 * gram[j, m]
                if seg2 <= 0:
                    continue
                s = (gram[r, m] - gram[r, j] - gram[j, m] + gram[j, j]) / seg2
                s = float(np.clip(s, 0.0, 1.0))
                d = dist_row[j] - s * s * seg2 if s > 0 else dist_row[j]
                if d < best_d:
                    best_d, best_t = d, tj + s * (nb - tj)
            mean_d = float(np.mean(dist_row))
            sharp.append(1.0 - best_d / mean_d if mean_d > 0 else 0.0)
            out.append(best_t)
            if abs(best_t - t) < 0.3 * period:  # no progress: stop
                break
            t = best_t
    return sorted(out), (float(np.mean(sharp)) if sharp else 0.0)


def _part_phase(y: np.ndarray, times: np.ndarray, period: float, n_refs: int = 16):
    """Phase (mod 1) of each frame of a part from landmark-interpolated beats, many references.

    Returns (phase per part frame, weight of the estimate) or (None, 0) when
    the part is shorter than about 1.3 periods.
    """
    if times[-1] - times[0] < 1.3 * period or len(times) < 4:
        return None, 0.0
    gram = y @ y.T
    d = np.diag(gram)
    dist = d[:, None] + d[None, :] - 2 * gram
    refs = np.unique(np.linspace(0, len(times) - 1, min(n_refs, len(times))).round().astype(int))
    estimates, weights = [], []
    for r in refs:
        lm, sharp = _landmarks_for_reference(dist[r], gram, times, r, period)
        if len(lm) < 2 or sharp <= 0:
            continue
        ph = phase_from_landmarks(lm, int(times[-1]) + 1)[times.astype(int)] % 1.0
        estimates.append(ph)
        weights.append(sharp)
    if not estimates:
        return None, 0.0
    est = np.array(estimates)
    w = np.array(weights)
    ref = est[int(np.argmax(w))]
    for _ in range(2):  # align every reference's arbitrary zero to the consensus, then average
        offs = _circ_mean(ref[None, :] - est, axis=1)
        ref = _circ_mean(est + offs[:, None], weights=w[:, None], axis=0)
    return ref, float(np.mean(w))


def _cross_cost(u_a: np.ndarray, u_b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of two feature matrices."""
    return (u_a * u_a).sum(1)[:, None] + (u_b * u_b).sum(1)[None, :] - 2 * u_a @ u_b.T


def _phase_grid_cost(dist: np.ndarray, phase_b: np.ndarray, grid: np.ndarray, width: float = 0.05) -> np.ndarray:
    """For each row i and phase g of ``grid``: kernel-weighted mean distance to frames of phase near g."""
    w = np.exp(-0.5 * (_circ_dist(grid[:, None], phase_b[None, :]) / width) ** 2)  # (G, nb)
    w = w / w.sum(1, keepdims=True)
    return dist @ w.T  # (na, G)


def _refine_min(cost: np.ndarray, grid: np.ndarray) -> float:
    """Argmin of a cost on a circular grid with parabolic refinement."""
    g = int(np.argmin(cost))
    a, b, c = cost[g - 1], cost[g], cost[(g + 1) % cost.size]
    den = a - 2 * b + c
    off = 0.5 * (a - c) / den if den > 0 else 0.0
    step = grid[1] - grid[0]
    return float((grid[g] + np.clip(off, -0.5, 0.5) * step) % 1.0)


def _default_estimate(small, valid, frame_time_ms, onset, contrast_start, warn_list) -> tuple[PhaseEstimate, np.ndarray]:
    """The default image-based phase estimate (see module docstring and docs/sync.md).

    Returns the estimate and the contrast-insensitive frame distance matrix
    (used to break ties and for the non-periodic fallback).
    """
    n = small.shape[0]
    all_k = np.arange(n)
    nc = all_k[(all_k < onset) & valid]
    cp = all_k[(all_k >= contrast_start) & valid]
    lo_p, hi_p = _period_bounds(n, frame_time_ms)

    # Pixels that contrast does not change, for comparing frames across the two parts.
    z = _normalise(small).reshape(small.shape)
    diff = np.abs(z[nc].mean(0) - z[cp].mean(0)) if nc.size and cp.size else np.zeros(small.shape[1:])
    thr = np.median(diff) + 3 * 1.4826 * np.median(np.abs(diff - np.median(diff)))
    stable = ~ndimage.binary_dilation(diff > thr, iterations=2)
    if stable.mean() < 0.2:
        stable = diff <= np.quantile(diff, 0.5)
    u = _normalise(small, stable)
    cross_all = _cross_cost(u, u)  # contrast-insensitive distances of all frame pairs

    parts = [p for p in (nc, cp) if p.size >= 3]
    feats = [(p, _normalise(small[p])) for p in parts]
    # First period estimate: correlation of frame-to-frame changes (image velocity),
    # insensitive to slow trends (respiration, contrast, exposure).
    vel = []
    for times, y in feats:
        consec = np.nonzero(np.diff(times) == 1)[0]
        if consec.size >= 3:
            vel.append((times[consec], y[consec + 1] - y[consec]))
    max_lag = int(min(np.ceil(hi_p) + 1, max((len(t) for t, _ in feats), default=2) - 1))
    period, conf = None, 0.0
    if vel and max_lag >= 3:
        rho_v = _lag_correlation(vel, max_lag)
        period, _ = _peak_lag(rho_v, lo_p, hi_p)
    if period is not None:
        # Refine on high-passed images: the correlation at one period is the periodicity score.
        hp = [(t, _highpass(y, period)) for t, y in feats]
        rho = _lag_correlation(hp, max_lag)
        p2, c2 = _peak_lag(rho, max(lo_p, 0.75 * period), min(hi_p, 1.3 * period))
        if p2 is not None:
            period, conf = p2, float(np.clip(c2, 0.0, 1.0))
    if period is None or conf < PERIODIC_THRESHOLD:
        warn_list.append(
            f"no clear cardiac periodicity in the images (score {conf:.2f} < {PERIODIC_THRESHOLD}); "
            "each non-contrast frame is paired with the most similar contrast frame instead"
        )
        pairs = [[int(i), int(cp[np.argmin(cross_all[i, cp])])] for i in nc] if cp.size else []
        est = PhaseEstimate("image-default", np.zeros(n), None, [], pairs, conf, False, None)
        return est, cross_all

    # Phase within each part from per-beat landmarks.
    part_phase = {}
    for name, p in (("nc", nc), ("cp", cp)):
        if p.size >= 4:
            y = _highpass(_normalise(small[p]), period)
            ph, _w = _part_phase(y, p.astype(float), period)
            if ph is not None:
                part_phase[name] = ph
    grid = np.linspace(0, 1, 200, endpoint=False)
    phase = np.full(n, np.nan)
    if "nc" in part_phase and "cp" in part_phase:
        # One offset puts the two parts on one scale: matched on contrast-free pixels.
        dist = cross_all[np.ix_(nc, cp)]
        cost = _phase_grid_cost(dist, part_phase["cp"], grid)  # (n_nc, G)
        # cost of offset delta: mean over i of cost[i, phase_nc(i) + delta]
        idx = (np.round((part_phase["nc"][:, None] + grid[None, :]) * grid.size).astype(int)) % grid.size
        off_cost = np.take_along_axis(cost, idx, axis=1).mean(0)
        delta = _refine_min(off_cost, grid)
        phase[nc] = (part_phase["nc"] + delta) % 1.0
        phase[cp] = part_phase["cp"]
        anchor = "cp"
    elif "cp" in part_phase and nc.size:
        # Too few non-contrast frames for beats of their own: each takes the phase of the
        # contrast frames it resembles most (on contrast-free pixels).
        cost = _phase_grid_cost(cross_all[np.ix_(nc, cp)], part_phase["cp"], grid)
        phase[nc] = [_refine_min(c, grid) for c in cost]
        phase[cp] = part_phase["cp"]
        anchor = "cp"
    elif "nc" in part_phase and cp.size:
        cost = _phase_grid_cost(cross_all[np.ix_(cp, nc)], part_phase["nc"], grid)
        phase[cp] = [_refine_min(c, grid) for c in cost]
        phase[nc] = part_phase["nc"]
        anchor = "nc"
    else:
        warn_list.append("the non-contrast and contrast parts are each shorter than about 1.3 beats; "
                         "the phase assumes a constant period")
        phase[:] = (all_k / period) % 1.0
        anchor = None

    # Frames outside both parts (wash-in, blank frames): constant-period extrapolation
    # from the nearest estimated frames.
    known = np.nonzero(~np.isnan(phase))[0]
    unwrapped_known = _unwrap_phase(phase[known], period)  # frames in `known` may skip: fine for small gaps
    # unwrap respecting gaps between known frames
    uk = np.empty(known.size)
    uk[0] = phase[known[0]]
    for i in range(1, known.size):
        gap = known[i] - known[i - 1]
        expect = gap / period
        d = (phase[known[i]] - phase[known[i - 1]] - expect + 0.5) % 1.0 - 0.5 + expect
        uk[i] = uk[i - 1] + d
    del unwrapped_known
    unwrapped = np.interp(all_k.astype(float), known.astype(float), uk)
    before = all_k < known[0]
    after = all_k > known[-1]
    unwrapped[before] = uk[0] - (known[0] - all_k[before]) / period
    unwrapped[after] = uk[-1] + (all_k[after] - known[-1]) / period

    # Phase 0: the phase of fastest image change (largest frame-to-frame difference),
    # i.e. systole, measured in the part with its own beats.
    ref_part = cp if anchor == "cp" else nc if anchor == "nc" else np.concatenate([nc, cp])
    zero = _fastest_change_phase(small, ref_part, unwrapped % 1.0)
    unwrapped = unwrapped - zero
    phase = unwrapped % 1.0
    beats = _zero_crossings(unwrapped)
    if len(beats) >= 2:
        mean_period = float((beats[-1] - beats[0]) / (len(beats) - 1))
    else:
        mean_period = float(period)
    hr = 60000.0 / (mean_period * frame_time_ms) if frame_time_ms else None
    pairs = pair_by_phase(phase, nc, cp, frame_distance=cross_all)
    est = PhaseEstimate("image-default", phase, mean_period, beats, pairs, conf, True, hr)
    return est, cross_all


def _fastest_change_phase(small, frames, phase, bins: int = 20) -> float:
    """Phase (cycles) at which the mean frame-to-frame image change is largest."""
    frames = np.asarray(frames)
    consec = frames[:-1][np.diff(frames) == 1]
    if consec.size < bins // 2:
        return 0.0
    y = _normalise(small[np.concatenate([consec, consec + 1])])
    m = consec.size
    energy = ((y[m:] - y[:m]) ** 2).mean(1)
    mid = (phase[consec] + 0.5 * ((phase[consec + 1] - phase[consec] + 0.5) % 1.0 - 0.5)) % 1.0
    # Smooth circular histogram of energy against phase.
    grid = (np.arange(bins) + 0.5) / bins
    w = np.exp(-0.5 * (_circ_dist(grid[:, None], mid[None, :]) / (1.0 / bins)) ** 2)
    prof = (w @ energy) / np.maximum(w.sum(1), 1e-12)
    g = int(np.argmax(prof))
    a, b, c = prof[g - 1], prof[g], prof[(g + 1) % bins]
    den = a - 2 * b + c
    off = 0.5 * (a - c) / den if den < 0 else 0.0
    return float((grid[g] + np.clip(off, -0.5, 0.5) / bins) % 1.0)


# --------------------------------------------------------------------------- entry points


def synchronize(
    frames,
    frame_time_ms: float | None = None,
    *,
    onset: int | None = None,
    method: str = "default",
    r_wave_frames=None,
    ecg=None,
    use_ecg: bool = True,
    blank_frames=(),
    progress=None,
) -> SyncResult:
    """Cardiac synchronization of a cine: onset, period, per-frame phase and frame pairs.

    Parameters
    ----------
    frames : array (N, rows, cols)
        The cine (any numeric dtype; XA convention: contrast is dark).
    frame_time_ms : float, optional
        Time between frames; gives the heart rate and bounds the period search
        to 35-200 bpm.  Without it the period is searched in 2..N/2 frames.
    onset : int, optional
        Manual contrast onset (first contrast frame), overriding detection.
    method : "default" or "paper"
        See the module docstring.
    r_wave_frames : list of int/float, optional
        0-based frames of the R waves (Cine.r_wave_frames).
    ecg : EcgTrace, optional
        ECG samples and times (ms); R peaks found with scipy.signal.find_peaks.
    use_ecg : bool
        Use the ECG for phase and pairs when present (the image-based estimate
        is computed and kept in ``result.image`` either way).
    blank_frames : sequence of int
        Frames without an image (Cine.blank_frames): excluded from references,
        signals and pairing; they still get a phase.
    progress : callable(done, total, message), optional

    Raises
    ------
    CacError
        Bad shape, an unknown method, or no non-contrast / no contrast frames.
    """
    if method not in METHODS:
        raise CacError(f"unknown synchronization method {method!r}; use one of {', '.join(METHODS)}")
    frames = _check_frames(frames)
    n = frames.shape[0]
    if frame_time_ms is not None and not (np.isfinite(frame_time_ms) and frame_time_ms > 0):
        raise CacError(f"frame time must be a positive number of ms, got {frame_time_ms}")
    blank = sorted({int(b) for b in blank_frames if 0 <= int(b) < n})
    valid = np.ones(n, bool)
    valid[blank] = False
    if valid.sum() < 2:
        raise CacError("fewer than two non-blank frames: nothing to synchronize")
    if onset is not None:
        onset = int(onset)
        if onset <= 0:
            raise CacError(f"onset {onset} leaves no non-contrast frames; the onset is the first contrast "
                           "frame, so it must be at least 1")
        if onset >= n:
            raise CacError(f"onset {onset} leaves no contrast frames in this {n}-frame cine; "
                           f"use an onset between 1 and {n - 1}")
    report = progress or (lambda *a: None)
    warn_list: list[str] = []
    report(0, 4, "ECG-like signal")

    reference = int(np.argmax(valid))
    if reference != 0:
        warn_list.append(f"frame 0 is blank; the ECG-like signal uses frame {reference} as reference")
    signal = ecg_like_signal(frames, reference)
    small = block_mean(frames)
    report(1, 4, "contrast onset")
    course = contrast_course(small, valid, onset)
    if onset is None:
        if course.detected:
            onset_frame = course.onset_frame
        else:
            onset_frame = n // 2
            warn_list.append("no contrast arrival found; assuming the paper's convention that the first half "
                             f"(frames 0-{onset_frame - 1}) is non-contrast; pass --onset to set it")
    else:
        onset_frame = onset
    contrast_start = max(onset_frame, min(course.contrast_start, n - 1)) if course.detected or onset is not None \
        else onset_frame
    if onset_frame <= 0 or not valid[:onset_frame].any():
        raise CacError("contrast is present from the first frame: there are no non-contrast frames to pair; "
                       "pass --onset N if the onset detection is wrong")
    if not valid[contrast_start:].any():
        raise CacError(f"no usable contrast frames after frame {contrast_start}; pass --onset N to set the onset")

    report(2, 4, "cardiac phase")
    if method == "paper":
        image = _paper_estimate(signal, valid, frame_time_ms, onset_frame, contrast_start)
        if not image.periodic:
            warn_list.append(f"no clear periodicity in the ECG-like signal (score {image.confidence:.2f})")
        frame_distance = None
    else:
        image, frame_distance = _default_estimate(small, valid, frame_time_ms, onset_frame, contrast_start,
                                                  warn_list)
    ecg_est = _ecg_estimate(n, r_wave_frames, ecg, frame_time_ms, warn_list) if use_ecg else None
    report(3, 4, "pairing")
    nc = [i for i in range(onset_frame) if valid[i]]
    cp = [j for j in range(contrast_start, n) if valid[j]]
    if ecg_est is not None:
        ecg_est.pairs = pair_by_phase(ecg_est.phase, nc, cp, frame_distance=frame_distance)
        chosen = ecg_est
    else:
        chosen = image
    for w in warn_list:
        warnings.warn(w, CacWarning, stacklevel=2)
    report(4, 4, "done")
    return SyncResult(
        onset_frame=int(onset_frame),
        period_frames=chosen.period_frames if chosen.periodic else None,
        heart_rate_bpm=chosen.heart_rate_bpm if chosen.periodic else None,
        phase=[float(p) for p in chosen.phase],
        pairs=chosen.pairs,
        signal=[float(s) for s in signal],
        confidence=float(chosen.confidence),
        ecg_used=ecg_est is not None,
        method=method,
        periodic=bool(chosen.periodic),
        warnings=warn_list,
        beat_frames=list(chosen.beat_frames),
        contrast_start=int(contrast_start),
        onset_score=float(course.score),
        onset_detected=bool(course.detected) if onset is None else True,
        contrast_statistic=[float(s) for s in course.statistic],
        blank_frames=blank,
        frame_time_ms=frame_time_ms,
        image=image,
        ecg=ecg_est,
    )


def synchronize_cine(cine, **kw) -> SyncResult:
    """:func:`synchronize` on a :class:`~.cine.Cine` (frame time, R waves, ECG and blank frames from it)."""
    kw.setdefault("r_wave_frames", cine.r_wave_frames)
    kw.setdefault("ecg", cine.ecg)
    kw.setdefault("blank_frames", cine.blank_frames)
    return synchronize(cine.frames, cine.frame_time_ms, **kw)


# --------------------------------------------------------------------------- picture


def plot_sync(result: SyncResult, path, *, overwrite: bool = False, title: str | None = None) -> None:
    """Write a PNG: eq. 1 signal with beats, onset and contrast arrival, the phase, and the pairs.

    Top: the ECG-like signal (paper eq. 1) per frame, the non-contrast part and
    the fully-arrived contrast part shaded, beats (phase 0) as vertical lines
    (ECG R waves dashed when an ECG was used, image-based beats dotted).
    Middle: the phase per frame (image-based, and ECG-based when present).
    Bottom: each pair as a line from its non-contrast frame to its contrast frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileutil import atomic_output

    n = len(result.signal)
    k = np.arange(n)
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]})
    ax = axes[0]
    ax.plot(k, result.signal, "k.-", lw=1, ms=3, label="eq. 1 signal (frame 0 reference)")
    ax.axvspan(-0.5, result.onset_frame - 0.5, color="tab:blue", alpha=0.08, label="non-contrast")
    ax.axvspan(result.contrast_start - 0.5, n - 0.5, color="tab:red", alpha=0.08, label="contrast arrived")
    if result.ecg is not None:
        for i, b in enumerate(result.ecg.beat_frames):
            ax.axvline(b, color="tab:green", ls="--", lw=1, label="ECG R wave" if i == 0 else None)
    if result.image is not None:
        for i, b in enumerate(result.image.beat_frames):
            ax.axvline(b, color="tab:purple", ls=":", lw=1.2, label="image beat (phase 0)" if i == 0 else None)
    ax.set_ylabel("dist_norm (eq. 1)")
    ax.legend(loc="lower right", fontsize=7, ncol=3)
    head = title or "cardiac synchronization"
    per = "no period" if result.period_frames is None else f"period {result.period_frames:.2f} frames"
    ax.set_title(f"{head}\n{per}, confidence {result.confidence:.2f}, "
                 f"{'ECG' if result.ecg_used else result.method + ' method'}", fontsize=9)
    ax = axes[1]
    if result.image is not None:
        ax.plot(k, result.image.phase, ".", color="tab:purple", ms=4, label="image phase")
    if result.ecg is not None:
        ax.plot(k, result.ecg.phase, "x", color="tab:green", ms=4, label="ECG phase")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("phase (cycles)")
    ax.legend(loc="upper right", fontsize=7)
    ax = axes[2]
    for a, b in result.pairs:
        ax.plot([a, b], [0, 1], "-", color="tab:gray", lw=0.7)
    if result.pairs:
        pa = np.array(result.pairs)
        ax.plot(pa[:, 0], np.zeros(len(pa)), "o", color="tab:blue", ms=3, label="non-contrast frame")
        ax.plot(pa[:, 1], np.ones(len(pa)), "o", color="tab:red", ms=3, label="paired contrast frame")
        ax.legend(loc="center right", fontsize=7)
    ax.set_yticks([0, 1], ["non-contrast", "contrast"])
    ax.set_xlabel("frame (0-based)")
    ax.set_xlim(-0.5, n - 0.5)
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
