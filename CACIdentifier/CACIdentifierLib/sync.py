"""Cardiac synchronization: pair each non-contrast frame with a contrast frame of the same phase.

De Rose et al. (Int J CARS 2025, "Image frame synchronization", Fig. 2) derive an
ECG-like signal from the images (eq. 1: the normalised Euclidean distance of
every frame to the first), take its period from the FFT peak, and pair the
non-contrast frames with contrast frames one or more periods later.  That
method is kept as ``method="paper"``.  The default method (see docs/sync.md)
improves every step:

- contrast onset detected from a per-frame statistic of dark, vessel-like
  structure averaged over one heart beat (not "the first half"), with the
  frame where contrast has fully arrived (``contrast_start``): only frames
  from there on are pairing candidates;
- a sub-frame period from the correlation of the image motion, inside the
  non-contrast and the fully-contrasted parts;
- the phase from the pixels that contrast does not change, per frame
  normalised (insensitive to exposure control) and with the slow trend
  removed (respiration, table drift, contrast arrival), for all frames at
  once (no break at the onset, where the frames to pair are);
- a phase that follows heart-rate variability: one landmark per beat (the
  time each reference clip's state comes back, found with sub-frame
  interpolation between frames), phase linear between landmarks, averaged
  over many reference frames;
- every non-contrast frame pairs with the contrast frame of nearest phase.

When the file has an ECG (R Wave Pointer or ECG curve) its R waves give the
phase directly (gold standard); the image-based estimate is kept beside it.

Conventions: frames are 0-based; times in frames are fractional frame
indices; phases are in cycles, in [0, 1).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
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
# Most moving pixels (of the block means) used for the period and the onset statistic's period.
MAX_PIXELS = 4096
# Clip half-width (period / CLIP_DIV) and number of reference frames of the landmark phase.
CLIP_DIV = 4
DARK_BIN = 2  # onset statistic on 64x64 means with a 3x3 box: as accurate as 128x128 with 7x7, 4x cheaper
DARK_BOX = 3
STABLE_BIN = 2  # contrast-free features on 2x2 means of the block means (64x64): as accurate, 4x less work
N_REFS = 48
PAIR_TOL = 0.005  # cycles: candidates this close to the best phase are ties
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


# --------------------------------------------------------------------------- BLAS threads


def _openblas():
    """numpy's bundled OpenBLAS (get, set thread-count functions), or None."""
    import ctypes
    import glob
    import os

    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                return get, put
    return None


@contextlib.contextmanager
def _single_threaded_blas():
    """Run numpy's BLAS on one thread inside the block (what threadpoolctl does).

    The matrices here are small (frames x frames, or frames x 4096 pixels):
    OpenBLAS's thread pool gains little on them and, on a busy machine, its
    spinning threads cost up to 50x (one 200 x 4096 Gram matrix: 110 ms with
    2 threads vs 2.4 ms with one, measured on the 2-core development machine
    under load).  No-op where numpy's OpenBLAS is not found.
    """
    fns = _openblas_fns()
    if fns is None:
        yield
        return
    get, put = fns
    before = get()
    put(1)
    try:
        yield
    finally:
        put(before)


_OPENBLAS = []


def _openblas_fns():
    if not _OPENBLAS:
        try:
            _OPENBLAS.append(_openblas())
        except Exception:  # never let a missing/odd BLAS break synchronization
            _OPENBLAS.append(None)
    return _OPENBLAS[0]


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
        The cine, any numeric dtype.  Processed ``chunk`` frames at a time, so
        no float64 copy of the whole cine is made: 8-bit frames are squared and
        summed per image row in float32 (exact: integers below 2**24 for rows
        up to 258 pixels, within 1 ulp beyond) and the row sums accumulated in
        float64; other dtypes are processed in float64.
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
    return _signal_and_small(frames, reference, chunk=chunk, small=False)[0]


def _pass_workers(n_values: int) -> int:
    """Threads for the pass over the cine: all cores for a large cine, one for a small one."""
    if n_values < 4_000_000:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _signal_and_small(frames: np.ndarray, reference: int, *, chunk: int = 4, small: bool = True):
    """Eq. 1 and (optionally) the block means in one pass over the cine, chunk by chunk.

    Each chunk is read from memory once and used for both while it is in
    cache.  Returns (signal, block means or None).
    """
    n, rows, cols = frames.shape
    # 8-bit: float32 squares and 512-term row sums are exact integers; else float64.
    work = np.float32 if frames.dtype.kind in "ui" and frames.dtype.itemsize == 1 else np.float64
    ref = frames[reference].astype(work)
    diff2 = np.empty(n)
    norm2 = np.empty(n)
    f = max(1, min(rows, cols) // SMALL_SIDE)
    means = np.empty((n, rows // f, cols // f), np.float32) if small else None

    def one_chunk(start: int) -> None:
        raw = frames[start : start + chunk]
        if small:
            means[start : start + raw.shape[0]] = _block_mean_core(raw, f)
        block = raw.astype(work)
        m = block.shape[0]
        rows_view = block.reshape(-1, cols)
        norm2[start : start + m] = np.einsum("ij,ij->i", rows_view, rows_view).reshape(m, rows).sum(1, dtype=np.float64)
        block -= ref
        diff2[start : start + m] = np.einsum("ij,ij->i", rows_view, rows_view).reshape(m, rows).sum(1, dtype=np.float64)

    starts = range(0, n, chunk)
    workers = _pass_workers(n * rows * cols)
    if workers > 1:
        # numpy releases the GIL in these loops: the chunks of one pass run on all cores.
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one_chunk, starts))
    else:
        for start in starts:
            one_chunk(start)
    denom = np.sqrt(norm2[reference]) + np.sqrt(norm2)
    out = np.zeros(n)
    ok = denom > 0
    out[ok] = np.sqrt(diff2[ok]) / denom[ok]
    return out, means


def block_mean(frames, side: int | None = None) -> np.ndarray:
    """Downsample frames by averaging ``f x f`` pixel blocks, ``f = min(rows, cols) // side``
    (``side`` defaults to :data:`SMALL_SIDE`).

    Rows/columns beyond a multiple of ``f`` are dropped.  Returns float32
    (N, rows // f, cols // f).  Integer frames are summed in integers (exact).
    """
    frames = _check_frames(frames)
    return _block_mean_core(frames, max(1, min(frames.shape[1:]) // (side or SMALL_SIDE)))


def _block_mean_core(frames: np.ndarray, f: int) -> np.ndarray:
    n, rows, cols = frames.shape
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


def _bin_mean(x: np.ndarray, b: int) -> np.ndarray:
    """Means of ``b x b`` blocks of float32 frames (N, H, W); rows/columns beyond a multiple of b dropped.

    Rows, then columns, by strided adds: several times faster than a reduction over reshaped axes.
    """
    h, w = x.shape[1] // b * b, x.shape[2] // b * b
    rows = x[:, 0:h:b, :w].copy()
    for i in range(1, b):
        rows += x[:, i:h:b, :w]
    out = rows[:, :, 0::b].copy()
    for j in range(1, b):
        out += rows[:, :, j::b]
    out /= np.float32(b * b)
    return out


# --------------------------------------------------------------------------- contrast onset


def _darkness_statistic(small: np.ndarray) -> np.ndarray:
    """Per-frame amount of dark, thin structure relative to the frame's mean brightness.

    ``mean(max(box7(f) - f, 0)) / mean(f)`` on the block-averaged frame: contrast
    filled vessels are thin and darker than their surroundings (XA stores higher
    attenuation as darker pixels); the ratio ignores exposure gain changes, and
    moving anatomy (respiration) changes where dark structures are, not how much.
    """
    if DARK_BIN > 1:
        small = _bin_mean(small, DARK_BIN)
    local = ndimage.uniform_filter(small, size=(1, DARK_BOX, DARK_BOX), mode="nearest")
    np.subtract(local, small, out=local)
    np.maximum(local, 0, out=local)
    n = small.shape[0]
    dark = local.reshape(n, -1).sum(1).astype(np.float64) / local[0].size
    mean = small.reshape(n, -1).sum(1).astype(np.float64) / local[0].size
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.where(mean > 0, dark / np.where(mean > 0, mean, 1), 0.0)
    return stat


def _fit_ramp(stat: np.ndarray, valid: np.ndarray, fixed_t0: int | None = None, t0_window=None):
    """Least-squares fit of baseline + step ramp: ``a + b * clip((k - t0) / (t1 - t0), 0, 1)``.

    ``t0`` (last baseline frame, may be -1) and ``t1`` (first plateau frame) are
    integers searched exhaustively; every candidate's sums come from prefix sums,
    so the search is O(N^2).  ``t0_window`` = (lo, hi) limits t0.  Returns (t0, t1, a, b, sse).
    """
    n = stat.size
    k = np.arange(n, dtype=float)
    w = valid.astype(float)
    y = np.where(valid, stat, 0.0)

    def prefix(v):
        return np.concatenate([[0.0], np.cumsum(v)])

    W, KW, K2W, YW, KYW = (prefix(v) for v in (w, k * w, k * k * w, y * w, k * y * w))
    sw, sy, syy = W[-1], YW[-1], float((w * y * y).sum())
    t0 = np.arange(-1, n - 1, dtype=float)[:, None] if fixed_t0 is None else np.array([[float(fixed_t0)]])
    t1 = np.arange(0, n, dtype=float)[None, :]
    ok = t1 > t0
    if t0_window is not None:
        ok = ok & (t0 >= t0_window[0]) & (t0 <= t0_window[1])
    t0b, t1b = np.broadcast_arrays(t0, t1)
    a_i = (t0b + 1).astype(int).clip(0, n)  # ramp frames t0+1 .. t1-1
    b_i = t1b.astype(int).clip(0, n)
    L = np.where(ok, t1b - t0b, 1.0)

    def seg(P):
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
        return (None, None, 0.0, 0.0, np.inf)
    i, j = np.unravel_index(int(np.argmin(sse)), sse.shape)
    return (int(t0b[i, j]), int(t1b[i, j]), float(a[i, j]), float(b[i, j]), float(max(sse[i, j], 0.0)))


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
    x = np.clip((k[None, :] - ca[:, :1]) / (ca[:, 1:] - ca[:, :1]), 0.0, 1.0)
    r = x * x * (3 - 2 * x)
    sw, sy = w.sum(), (w * y).sum()
    sr, srr, sry = r @ w, (r * r) @ w, r @ (w * y)
    det = sw * srr - sr * sr
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(det > 1e-12, (sw * sry - sr * sy) / det, 0.0)
    a = (sy - b * sr) / sw
    sse = (w * y * y).sum() - a * sy - b * sry
    sse = np.where(b > 0, sse, np.inf)
    i = int(np.argmin(sse))
    if not np.isfinite(sse[i]):
        return t0, t1
    return int(ca[i, 0]), int(ca[i, 1])


def contrast_course(small: np.ndarray, valid: np.ndarray | None = None, onset: int | None = None,
                    period: float | None = None) -> ContrastCourse:
    """Find the contrast arrival in block-averaged frames (see :class:`ContrastCourse`).

    The darkening statistic (:func:`_darkness_statistic`) is fitted with a
    baseline, a linear rise and a plateau (:func:`_fit_ramp`).  The heart beat
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
        smooth[vk] = _one_cycle_mean_operator(vk.astype(float), period) @ stat[vk]
    fixed = None if onset is None else int(onset) - 1
    t0, t1, a, b, sse = _fit_ramp(smooth, valid, fixed)
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
        r0, r1, *_ = _fit_ramp(stat, valid, fixed, window)
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
    frames = _check_frames(frames)
    valid = np.ones(frames.shape[0], bool)
    valid[list(blank_frames)] = False
    small = block_mean(frames)
    course = contrast_course(small, valid, None, _features(small, valid, None).rough_period)
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


def _ecg_estimate(n, r_wave_frames, ecg, frame_time_ms, warn_list) -> PhaseEstimate | None:
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
        r = np.asarray(sorted(float(x) for x in r_wave_frames))
        source = "ecg-r-wave-pointer"
    elif curve is not None and curve.size >= 2:
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
#
# Everything after the block means works on Gram matrices (frame x frame inner
# products): normalisation, temporal high-pass, frame differences and short
# clips are linear in the frames, so they become small matrix products.


def _normalise(flat: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-frame z-score of (N, P) pixels over ``mask`` (all when None): removes exposure offset and gain."""
    x = flat if mask is None else flat[:, mask.ravel()]
    x = x.astype(np.float32, copy=False)
    # float32 reductions along rows use pairwise summation: within 1e-7 of float64, 5x faster
    mu = x.mean(1, keepdims=True)
    out = x - mu
    # The variance from the centred values (no float32 cancellation), then one in-place scale.
    sd = np.sqrt(np.einsum("ij,ij->i", out, out)[:, None] / np.float32(x.shape[1]))
    sd[sd == 0] = 1
    out *= 1 / sd
    return out


def _gram(z: np.ndarray) -> np.ndarray:
    return (z @ z.T).astype(np.float64)


def _dist_from_gram(g: np.ndarray) -> np.ndarray:
    d = np.diag(g)
    return np.maximum(d[:, None] + d[None, :] - 2 * g, 0.0)


def _one_cycle_mean_operator(times: np.ndarray, period: float) -> np.ndarray:
    """Matrix M with (M y)_k = the slow trend of y at frame k, free of the heart beat.

    In the interior, the mean of y over exactly one period centred on frame k
    (fractional end weights), so the cardiac component cancels and the slow
    trend (respiration, contrast, exposure) is left.  Within half a period of
    the part's ends no centred window fits; there the trend is extrapolated
    linearly from the first (last) two one-period means half a period apart,
    which are also free of the beat.  Parts shorter than 1.5 periods get their
    mean.
    """
    t = np.asarray(times, float)
    m = t.size
    if t[-1] - t[0] + 1 <= 1.5 * period:
        return np.full((m, m), 1.0 / m)
    half = period / 2

    def window(centre):
        lo, hi = centre - half, centre + half
        w = np.clip(np.minimum(hi, t + 0.5) - np.maximum(lo, t - 0.5), 0, None)
        return w / w.sum()

    first, last = t[0] - 0.5 + half, t[-1] + 0.5 - half
    centre = np.clip(t, first, last)[:, None]
    out = np.clip(np.minimum(centre + half, t[None, :] + 0.5) - np.maximum(centre - half, t[None, :] - 0.5), 0, None)
    out /= out.sum(1, keepdims=True)
    a0, a1 = window(first), window(first + half)
    b0, b1 = window(last), window(last - half)
    for k in np.nonzero(t < first)[0]:
        out[k] = a0 + (t[k] - first) / half * (a1 - a0)
    for k in np.nonzero(t > last)[0]:
        out[k] = b0 + (last - t[k]) / half * (b1 - b0)
    return out


def _highpass_gram(g: np.ndarray, times: np.ndarray, period: float) -> np.ndarray:
    """Gram matrix of the frames minus their one-period moving average (slow trends removed)."""
    h = np.eye(times.size) - _one_cycle_mean_operator(times, period)
    return h @ g @ h.T


def _clip_gram(g: np.ndarray, times: np.ndarray, half: int) -> np.ndarray:
    """Gram matrix of short clips (frames t-half, t, t+half) from the frames' Gram matrix.

    A clip holds the direction of motion as well as the state, so contraction
    and relaxation through the same shape are told apart.  Missing neighbours
    (part ends, blank frames) are replaced by the frame itself.
    """
    pos = {int(t): i for i, t in enumerate(times)}
    out = np.zeros_like(g)
    for o in (-half, 0, half):
        idx = np.array([pos.get(int(t) + o, i) for i, t in enumerate(times)])
        out += g[np.ix_(idx, idx)]
    return out


def _velocity_gram(g: np.ndarray, times: np.ndarray):
    """Times and Gram matrix of frame-to-frame differences (consecutive frames only)."""
    t = np.asarray(times)
    a = np.nonzero(np.diff(t) == 1)[0]
    b = a + 1
    gv = g[np.ix_(b, b)] - g[np.ix_(b, a)] - g[np.ix_(a, b)] + g[np.ix_(a, a)]
    return t[a], gv


def _lag_correlation(parts: list[tuple[np.ndarray, np.ndarray]], max_lag: int) -> np.ndarray:
    """Normalised correlation of feature vectors ``lag`` frames apart, pooled over parts.

    ``parts`` is a list of (integer frame times, Gram matrix).  Each part's
    correlation is normalised by its own energy and the parts are averaged
    weighted by their number of frame pairs, so a part where contrast adds
    large, not quite periodic changes does not drown a clean one.
    Returns rho[0..max_lag].
    """
    acc = np.zeros(max_lag + 1)
    cnt = np.zeros(max_lag + 1)
    for times, g in parts:
        tt = np.asarray(times).astype(int)
        if tt.size < 2:
            continue
        span = int(tt[-1] - tt[0]) + 1
        full = np.zeros((span, span))
        full[np.ix_(tt - tt[0], tt - tt[0])] = g
        d = np.zeros(span)
        d[tt - tt[0]] = np.diag(g)
        pres = np.zeros(span, bool)
        pres[tt - tt[0]] = True
        for L in range(1, min(max_lag, span - 1) + 1):
            m = pres[:-L] & pres[L:]
            c = int(m.sum())
            den = math.sqrt(d[:-L][m].sum() * d[L:][m].sum())
            if c == 0 or den <= 0:
                continue
            acc[L] += c * np.diagonal(full, L)[m].sum() / den
            cnt[L] += c
    rho = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0)
    rho[0] = 1.0
    return rho


def _peak_lag(rho: np.ndarray, lo: float, hi: float) -> tuple[float | None, float]:
    """Lag of the highest local maximum of ``rho`` in [lo, hi], parabolic sub-frame refinement."""
    best, best_val = None, -np.inf
    for L in range(max(1, int(np.floor(lo))), min(rho.size - 1, int(np.ceil(hi)) + 1)):
        if rho[L] >= rho[L - 1] and rho[L] >= rho[L + 1] and rho[L] > best_val:
            best, best_val = L, rho[L]
    if best is None:
        return None, 0.0
    a, b, c = rho[best - 1], rho[best], rho[best + 1]
    den = a - 2 * b + c
    off = 0.5 * (a - c) / den if den < 0 else 0.0
    off = float(np.clip(off, -0.5, 0.5))
    return best + off, float(b - 0.25 * (a - c) * off)


def _estimate_period(parts, lo_p: float, hi_p: float):
    """Period (frames, sub-frame) and periodicity score from the parts' Gram matrices.

    First from the correlation of frame-to-frame changes (image velocity: blind
    to slow trends), then refined on one-period high-passed frames, whose
    correlation at one period is the periodicity score.
    """
    longest = max((int(t[-1] - t[0]) for t, _ in parts), default=0)
    max_lag = int(min(np.ceil(hi_p) + 1, longest - 1))
    if max_lag < 3:
        return None, 0.0
    vel = [_velocity_gram(g, t) for t, g in parts]
    vel = [(t, g) for t, g in vel if t.size >= 3]
    if not vel:
        return None, 0.0
    period, _ = _peak_lag(_lag_correlation(vel, max_lag), lo_p, hi_p)
    if period is None:
        return None, 0.0
    hp = [(t, _highpass_gram(g, t, period)) for t, g in parts]
    rho = _lag_correlation(hp, max_lag)
    p2, c2 = _peak_lag(rho, max(lo_p, 0.8 * period), min(hi_p, 1.25 * period))
    if p2 is None:
        return period, 0.0
    # Octave check: at low frame rates the velocity correlation can peak at two
    # periods; if half the lag correlates about as well, the period is the half.
    half_p, half_c = _peak_lag(rho, max(lo_p, 0.4 * p2), min(hi_p, 0.6 * p2))
    if half_p is not None and half_c >= 0.8 * c2:
        p2, c2 = half_p, half_c
    return p2, float(np.clip(c2, 0.0, 1.0))


def _landmarks_for_reference(dist_row: np.ndarray, gram: np.ndarray, times: np.ndarray, r: int, period: float,
                             pos: dict | None = None):
    """Times (fractional frames) where the part comes back to reference ``r``'s state, one per beat.

    Walks forward and backward from ``r`` by about one period, takes the
    closest frame in a +-40 % window and refines it to sub-frame by projecting
    the reference onto the segments to the neighbouring frames (state assumed
    linear between frames).  Returns (landmarks, sharpness in [0, 1]).
    """
    if pos is None:
        pos = {int(t): i for i, t in enumerate(times)}
    # Plain Python floats and bisect: this walk runs for every reference, numpy scalars are slow here.
    tlist = times.tolist()
    out = [float(times[r])]
    mean_d = float(np.mean(dist_row))
    sharp = []
    for direction in (1, -1):
        t = float(times[r])
        while True:
            centre = t + direction * period
            if not tlist[0] <= centre <= tlist[-1]:
                # The expected return lies beyond the frames: the closest frame of the truncated
                # window would be a false landmark (it biased the first half beat of a cine).
                break
            lo = bisect.bisect_left(tlist, centre - 0.4 * period)
            hi = bisect.bisect_right(tlist, centre + 0.4 * period)
            if hi <= lo:
                break
            j = int(lo + np.argmin(dist_row[lo:hi]))
            tj = tlist[j]
            if (int(tj) - 1 not in pos) or (int(tj) + 1 not in pos):
                # At the end of the frames the true return may lie beyond them:
                # the closest frame is then no landmark.
                break
            best_t, best_d = tj, float(dist_row[j])
            gjj, grj = float(gram[j, j]), float(gram[r, j])
            for nb in (int(tj) - 1, int(tj) + 1):
                m = pos.get(nb)
                if m is None:
                    continue
                # |y_r - (y_j + s (y_m - y_j))|^2 is smallest at s = <y_r - y_j, y_m - y_j> / |y_m - y_j|^2
                gjm = float(gram[j, m])
                seg2 = gjj + float(gram[m, m]) - 2 * gjm
                if seg2 <= 0:
                    continue
                s = min(1.0, max(0.0, (float(gram[r, m]) - grj - gjm + gjj) / seg2))
                d = float(dist_row[j]) - s * s * seg2
                if s > 0 and d < best_d:
                    best_d, best_t = d, tj + s * (nb - tj)
            sharp.append(1.0 - best_d / mean_d if mean_d > 0 else 0.0)
            if abs(best_t - t) < 0.5 * period:  # no progress
                break
            out.append(best_t)
            t = best_t
    return sorted(out), (float(np.mean(sharp)) if sharp else 0.0)


def _part_phase(gram: np.ndarray, times: np.ndarray, period: float, n_refs: int | None = None):
    """Phase (mod 1) of each frame of a part from landmark-interpolated beats, many references.

    Each reference frame gives one landmark per beat; the phase is linear
    between landmarks (so it follows beat-to-beat variability).  References
    spread over the part give estimates with different zeros; they are aligned
    to each other and averaged (circular mean weighted by landmark sharpness).
    Returns the phase per part frame, or None when the part is shorter than
    about 1.3 periods.
    """
    if times[-1] - times[0] < 1.3 * period or times.size < 4:
        return None
    dist = _dist_from_gram(gram)
    n_refs = N_REFS if n_refs is None else n_refs
    # References whose clip is complete (not within a clip half-width of the part's ends).
    edge = min(max(1, int(round(period / CLIP_DIV))), (times.size - 1) // 4)
    refs = np.unique(np.linspace(edge, times.size - 1 - edge, min(n_refs, times.size)).round().astype(int))
    estimates, weights = [], []
    span = int(times[-1]) + 1
    pos = {int(t): i for i, t in enumerate(times)}
    for r in refs:
        lm, sharp = _landmarks_for_reference(dist[r], gram, times, r, period, pos)
        if len(lm) < 2 or sharp <= 0:
            continue
        estimates.append(phase_from_landmarks(lm, span)[times.astype(int)] % 1.0)
        weights.append(np.full(times.size, sharp**2))
    if not estimates:
        return None
    est = np.array(estimates)
    w = np.array(weights)
    ref = est[int(np.argmax(w.sum(1)))]
    for _ in range(3):  # align every reference's arbitrary zero to the consensus, then average
        offs = _circ_mean(ref[None, :] - est, weights=w, axis=1)
        ref = _circ_mean(est + offs[:, None], weights=w, axis=0)
    return ref


def _top_pixels(motion: np.ndarray, mask: np.ndarray | None, limit: int | None = None) -> np.ndarray:
    """Indices of the ``limit`` (MAX_PIXELS) pixels within ``mask`` with the largest motion energy."""
    limit = MAX_PIXELS if limit is None else limit
    idx = np.arange(motion.size) if mask is None else np.nonzero(mask)[0]
    if idx.size <= limit:
        return idx
    return np.sort(idx[np.argpartition(motion[idx], idx.size - limit)[-limit:]])


@dataclass
class _Features:
    """The block-averaged cine prepared once for onset detection and the default method."""

    small: np.ndarray  # (N, h, w) float32 block means
    z: np.ndarray  # (N, h*w) float32, per-frame z-scored
    motion: np.ndarray  # (h*w,) frame-to-frame change energy per pixel (valid consecutive frames)
    g_all: np.ndarray  # (N, N) Gram matrix of z on the MAX_PIXELS most moving pixels
    rough_period: float | None  # period (frames) from all valid frames, for the onset statistic


def _features(small: np.ndarray, valid: np.ndarray, frame_time_ms) -> _Features:
    n = small.shape[0]
    z = _normalise(small.reshape(n, -1))
    k = np.nonzero(valid)[0]
    a = k[:-1][np.diff(k) == 1]
    motion = np.zeros(z.shape[1], np.float64)
    # Only the pixels that move carry the heart beat: the Gram matrices use the
    # MAX_PIXELS with the largest frame-to-frame change (fast, and less noise).
    for s0 in range(0, a.size, 32):
        blk = z[a[s0:s0 + 32] + 1] - z[a[s0:s0 + 32]]
        motion += np.einsum("ij,ij->j", blk, blk, dtype=np.float64)
    g_all = _gram(z[:, _top_pixels(motion, None)])
    lo_p, hi_p = _period_bounds(n, frame_time_ms)
    # Only used to average the beat out of the onset statistic: a weak period is good enough.
    rough, _conf = _estimate_period([(k.astype(float), g_all[np.ix_(k, k)])], lo_p, hi_p)
    return _Features(small, z, motion, g_all, rough)


def _default_estimate(feats: _Features, valid, frame_time_ms, onset, contrast_start, warn_list):
    """The default image-based phase estimate (see module docstring and docs/sync.md).

    Returns the estimate and the contrast-insensitive frame distance matrix
    (used to break ties and for the non-periodic fallback).
    """
    small, z, g_all = feats.small, feats.z, feats.g_all
    n = small.shape[0]
    all_k = np.arange(n)
    nc = all_k[(all_k < onset) & valid]
    cp = all_k[(all_k >= contrast_start) & valid]
    lo_p, hi_p = _period_bounds(n, frame_time_ms)

    # Pixels that contrast does not change, for comparing frames across the two parts.
    if nc.size and cp.size:
        diff = np.abs(z[nc].mean(0) - z[cp].mean(0)).reshape(small.shape[1:])
        thr = np.median(diff) + 3 * 1.4826 * np.median(np.abs(diff - np.median(diff)))
        stable = ~ndimage.binary_dilation(diff > thr, iterations=2)
        if stable.mean() < 0.2:
            stable = diff <= np.quantile(diff, 0.5)
    else:
        stable = np.ones(small.shape[1:], bool)
    # The phase uses every contrast-free pixel: keeping only the most moving ones loses accuracy.
    if STABLE_BIN > 1:
        h, w = small.shape[1:]
        b = STABLE_BIN
        hh, ww = h // b, w // b
        zz = _bin_mean(z.reshape(n, h, w), b)
        st = stable[:hh * b, :ww * b].reshape(hh, b, ww, b).all((1, 3))
        g_stable = _gram(_normalise(zz.reshape(n, -1)[:, st.ravel()]))
    else:
        g_stable = _gram(_normalise(z[:, stable.ravel()]))
    cross_all = _dist_from_gram(g_stable)  # contrast-insensitive distances of all frame pairs

    parts = {name: (p, g_all[np.ix_(p, p)]) for name, p in (("nc", nc), ("cp", cp)) if p.size >= 3}
    period, conf = _estimate_period([(p.astype(float), g) for p, g in parts.values()], lo_p, hi_p)
    if period is None or conf < PERIODIC_THRESHOLD:
        warn_list.append(
            f"no clear cardiac periodicity in the images (score {conf:.2f} < {PERIODIC_THRESHOLD}); "
            "each non-contrast frame is paired with the most similar contrast frame instead"
        )
        pairs = [[int(i), int(cp[np.argmin(cross_all[i, cp])])] for i in nc] if cp.size else []
        est = PhaseEstimate("image-default", np.zeros(n), None, [], pairs, conf, False, None)
        return est, cross_all

    half = max(1, int(round(period / CLIP_DIV)))
    phase = np.full(n, np.nan)
    # Phase of every valid frame at once, on the pixels that contrast does not change:
    # no break at the contrast arrival, where the frames to pair are.
    vk = all_k[valid]
    tv = vk.astype(float)
    clip = _clip_gram(_highpass_gram(g_stable[np.ix_(vk, vk)], tv, period), tv, half)
    ph = _part_phase(clip, tv, period)
    # Tie-breaking distance: the same beat-only, contrast-free clips.
    tie = np.full((n, n), np.inf)
    tie[np.ix_(vk, vk)] = _dist_from_gram(clip)
    if ph is not None:
        phase[vk] = ph
    else:
        warn_list.append("the cine is shorter than about 1.3 beats; the phase assumes a constant period")
        phase[vk] = (vk / period) % 1.0
    anchor = np.concatenate([nc, cp])  # not the wash-in: contrast arriving is not motion

    # Unwrap the known phases (gaps allowed) and extrapolate to the other frames
    # (wash-in, blank frames) with the period.
    known = np.nonzero(~np.isnan(phase))[0]
    uk = np.empty(known.size)
    uk[0] = phase[known[0]]
    for i in range(1, known.size):
        expect = (known[i] - known[i - 1]) / period
        uk[i] = uk[i - 1] + (phase[known[i]] - phase[known[i - 1]] - expect + 0.5) % 1.0 - 0.5 + expect
    unwrapped = np.interp(all_k.astype(float), known.astype(float), uk)
    unwrapped[all_k < known[0]] = uk[0] - (known[0] - all_k[all_k < known[0]]) / period
    unwrapped[all_k > known[-1]] = uk[-1] + (all_k[all_k > known[-1]] - known[-1]) / period

    # Phase 0: the phase of fastest image change (largest frame-to-frame difference,
    # i.e. systole), measured outside the wash-in.
    zero = _fastest_change_phase(g_all, anchor, unwrapped % 1.0)
    unwrapped = unwrapped - zero
    phase = unwrapped % 1.0
    beats = _zero_crossings(unwrapped)
    mean_period = float((beats[-1] - beats[0]) / (len(beats) - 1)) if len(beats) >= 3 else float(period)
    hr = 60000.0 / (mean_period * frame_time_ms) if frame_time_ms else None
    pairs = pair_by_phase(phase, nc, cp, frame_distance=tie, tolerance=PAIR_TOL)
    est = PhaseEstimate("image-default", phase, mean_period, beats, pairs, conf, True, hr)
    return est, cross_all


def _fastest_change_phase(g_all: np.ndarray, frames, phase, bins: int = 20) -> float:
    """Phase (cycles) at which the mean frame-to-frame image change is largest."""
    frames = np.asarray(frames)
    a = frames[:-1][np.diff(frames) == 1]
    if a.size < bins // 2:
        return 0.0
    b = a + 1
    energy = g_all[a, a] + g_all[b, b] - 2 * g_all[a, b]
    mid = (phase[a] + 0.5 * ((phase[b] - phase[a] + 0.5) % 1.0 - 0.5)) % 1.0
    grid = (np.arange(bins) + 0.5) / bins
    w = np.exp(-0.5 * (_circ_dist(grid[:, None], mid[None, :]) / (1.0 / bins)) ** 2)
    prof = (w @ energy) / np.maximum(w.sum(1), 1e-12)
    g = int(np.argmax(prof))
    p, q, r = prof[g - 1], prof[g], prof[(g + 1) % bins]
    den = p - 2 * q + r
    off = 0.5 * (p - r) / den if den < 0 else 0.0
    return float((grid[g] + np.clip(off, -0.5, 0.5) / bins) % 1.0)


# --------------------------------------------------------------------------- entry points


@_single_threaded_blas()  # a fresh context per call (contextlib's ContextDecorator)
def synchronize(
    frames,
    frame_time_ms: float | None = None,
    *,
    onset: int | None = None,
    method: str = "default",
    r_wave_frames=None,
    ecg=None,
    use_ecg: bool = True,
    blank_frames=None,
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
    blank_frames : sequence of int, optional
        Frames without an image (Cine.blank_frames): excluded from references,
        signals and pairing; they still get a phase.  None (default): found
        here (:func:`_auto_blank`, with a warning); ``()`` means none.
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

    given = None if blank_frames is None else sorted({int(b) for b in blank_frames if 0 <= int(b) < n})
    reference = 0 if given is None or 0 not in given else next((k for k in range(n) if k not in given), 0)
    signal, small = _signal_and_small(frames, reference)
    if given is None:
        blank = _auto_blank(small)
        if blank:
            warn_list.append(f"frame(s) {', '.join(map(str, blank))} look blank (no image); they are not used")
    else:
        blank = given
    valid = np.ones(n, bool)
    valid[blank] = False
    if valid.sum() < 2:
        raise CacError("fewer than two non-blank frames: nothing to synchronize")
    if not valid[reference]:
        reference = int(np.argmax(valid))
        signal = ecg_like_signal(frames, reference)
    if reference != 0:
        warn_list.append(f"frame 0 is blank; the ECG-like signal uses frame {reference} as reference")
    feats = _features(small, valid, frame_time_ms)
    report(1, 4, "contrast onset")
    course = contrast_course(small, valid, onset, feats.rough_period)
    if onset is None:
        if course.detected:
            onset_frame = course.onset_frame
        else:
            onset_frame = n // 2
            warn_list.append("no contrast arrival found; assuming the paper's convention that the first half "
                             f"(frames 0-{onset_frame - 1}) is non-contrast; pass --onset to set it")
    else:
        onset_frame = onset
    # Without a significant rise (even at a given onset) there is no plateau to wait for.
    contrast_start = max(onset_frame, min(course.contrast_start, n - 1)) if course.detected else onset_frame
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
        image, frame_distance = _default_estimate(feats, valid, frame_time_ms, onset_frame, contrast_start,
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
        warnings.warn(w, CacWarning, stacklevel=3)
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
        beat_frames=list(chosen.beat_frames) if chosen.periodic else [],
        contrast_start=int(contrast_start),
        onset_score=float(course.score),
        onset_detected=bool(course.detected) if onset is None else True,
        contrast_statistic=[float(s) for s in course.statistic],
        blank_frames=blank,
        frame_time_ms=frame_time_ms,
        image=image,
        ecg=ecg_est,
    )


def _auto_blank(small: np.ndarray) -> list[int]:
    """Blank frames of a cine from its block means, by :func:`.cine_io.detect_blank_frames`'s rule.

    That rule costs about one pass per frame, so it is only asked about the
    frames that differ from both neighbours far more than frames usually do
    (a blank frame is an outlier in time), with eight ordinary frames as
    context for its cine-wide ranges.
    """
    n = small.shape[0]
    if n < 3:
        return []
    m = _bin_mean(small, 2)
    step = np.abs(np.diff(m.reshape(n, -1), axis=0)).mean(1)  # step[k]: frame k -> k + 1
    prev = np.concatenate([[np.inf], step])
    nxt = np.concatenate([step, [np.inf]])
    score = np.minimum(prev, nxt)
    score[0], score[-1] = step[0], step[-1]
    med = float(np.median(step))
    cand = np.nonzero(score > 4 * max(med, 1e-6))[0]
    if cand.size == 0:
        return []
    from .cine_io import detect_blank_frames

    others = np.setdiff1d(np.arange(n), cand)
    context = others[np.linspace(0, others.size - 1, min(8, others.size)).round().astype(int)] if others.size else []
    pick = np.concatenate([cand, context]).astype(int)
    found = detect_blank_frames(m[pick])
    return sorted(int(pick[i]) for i in found if i < cand.size)


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


# --------------------------------------------------------------------------- test signal


def synthetic_cine(
    n_frames: int = 120,
    size: int = 128,
    *,
    fps: float = 15.0,
    bpm: float = 70.0,
    rr_jitter: float = 0.03,
    onset_fraction: float = 0.5,
    washin_s: float = 1.0,
    respiration_px: float = 2.0,
    respiration_hz: float = 0.25,
    gain_drift: float = 0.05,
    noise: float = 0.01,
    seed: int = 0,
):
    """A small synthetic angiography cine with known phase, for tests and benchmarks.

    Not the project's phantom (CACTrainerLib.phantom): a quick moving texture.
    A textured background and a heart-shaped attenuating region carrying a few
    vessels; the heart contracts toward its centre with a fast systole (first
    third of each cycle) and a slow diastole, beat lengths jitter by
    ``rr_jitter`` (relative SD), the heart moves with respiration
    (``respiration_px`` amplitude at ``respiration_hz``), contrast fills the
    vessels from ``onset_fraction`` of the run over ``washin_s`` seconds, the
    exposure gain drifts slowly, and Poisson-like noise is added.  Dark =
    attenuating (XA convention).  Returns ``(frames uint16 (N, size, size), truth)``
    with ``truth`` = {"phase": (N,) cycles, phase 0 at the start of systole,
    "onset_frame", "contrast_start", "beat_frames", "period_frames"}.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    rr0 = 60.0 / bpm
    beats = [-rng.uniform(0, rr0)]
    while beats[-1] < t[-1] + rr0:
        beats.append(beats[-1] + rr0 * max(0.5, 1 + rr_jitter * rng.standard_normal()))
    beats = np.array(beats)
    unwrapped = np.interp(t, beats, np.arange(beats.size))
    phase = unwrapped % 1.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 25) * 0.4 + 0.6 * yy + 0.3
    cy, cx = 0.5 + 0.05 * rng.standard_normal(), 0.5 + 0.05 * rng.standard_normal()
    heart = 0.6 / (1 + np.exp(((((yy - cy) / 0.3) ** 2 + ((xx - cx) / 0.35) ** 2) - 1) * 12))
    vessels = np.zeros((size, size))
    for _ in range(4):  # random smooth curves
        ang = rng.uniform(0, 2 * np.pi)
        p = np.array([cy, cx]) + 0.15 * np.array([np.sin(ang), np.cos(ang)])
        d = rng.uniform(0, 2 * np.pi)
        for _s in range(int(size * 0.6)):
            d += 0.15 * rng.standard_normal()
            p = p + np.array([np.sin(d), np.cos(d)]) / size
            r, c = int(p[0] * size), int(p[1] * size)
            if 0 <= r < size and 0 <= c < size:
                vessels[r, c] = 1.0
    vessels = ndimage.gaussian_filter(vessels, max(0.8, size / 160)) * 6
    layer_static = heart + 0.03 * vessels
    layer_contrast = vessels
    onset_t = onset_fraction * t[-1]
    conc = np.clip((t - onset_t) / max(washin_s, 1e-6), 0, 1)
    onset_frame = int(np.argmax(conc > 0)) if (conc > 0).any() else n_frames
    contrast_start = int(np.argmax(conc >= 1)) if (conc >= 1).any() else n_frames
    resp_phase = rng.uniform(0, 2 * np.pi)
    gain = 1 + gain_drift * np.sin(2 * np.pi * t / max(t[-1], 1e-6) + rng.uniform(0, 2 * np.pi))
    frames = np.empty((n_frames, size, size), np.uint16)
    Y, X = np.mgrid[0:size, 0:size].astype(np.float32)
    for k in range(n_frames):
        ph = phase[k]
        s = (1 - np.cos(np.pi * ph * 3)) / 2 if ph < 1 / 3 else (1 + np.cos(np.pi * (ph - 1 / 3) * 1.5)) / 2
        shrink = 0.12 * s
        twist = 0.06 * s
        dy = respiration_px * np.sin(2 * np.pi * respiration_hz * t[k] + resp_phase)
        ry, rx = Y - cy * size - dy, X - cx * size
        sy = cy * size + ry * (1 + shrink) + twist * rx
        sx = cx * size + rx * (1 + shrink) - twist * ry
        moving = ndimage.map_coordinates(layer_static + conc[k] * layer_contrast, [sy, sx], order=1, mode="nearest")
        att = bg + moving
        img = gain[k] * 3000 * np.exp(-att)
        img = img + noise * np.sqrt(3000 * np.maximum(img, 0)) * rng.standard_normal(img.shape)
        frames[k] = np.clip(img, 0, 4095).astype(np.uint16)
    truth = {
        "phase": phase,
        "onset_frame": onset_frame,
        "contrast_start": contrast_start,
        "beat_frames": (beats * fps).tolist(),
        "period_frames": rr0 * fps,
    }
    return frames, truth
