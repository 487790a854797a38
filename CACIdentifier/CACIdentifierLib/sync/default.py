"""The default image-based method: sub-frame period, landmark phase on contrast-free pixels.

Improves every step of the paper's method (see docs/sync.md and the package
docstring): the period from the correlation of image motion inside the
non-contrast and the contrast parts, the phase from the pixels that contrast
does not change with one landmark per beat (it follows heart-rate
variability), and each non-contrast frame paired with the contrast frame of
nearest phase.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .gram import LazyGram, clip_maps, highpass, lag_sums, normalise, row_norms, step_energy, velocity
from .period import PERIODIC_THRESHOLD, period_bounds
from .phase import PAIR_TOL, circ_dist, circ_mean, pair_by_phase, phase_from_landmarks, zero_crossings
from .result import PhaseEstimate
from .signal import bin_mean

# Most moving pixels (of the block means) used for the period and the onset statistic's period.
MAX_PIXELS = 4096
# Clip half-width (period / CLIP_DIV) and number of reference frames of the landmark phase.
CLIP_DIV = 4
STABLE_BIN = 2  # contrast-free features on 2x2 means of the block means (64x64): as accurate, 4x less work
N_REFS = 48


def _lag_correlation(parts: list[tuple[np.ndarray, np.ndarray]], max_lag: int) -> np.ndarray:
    """Normalised correlation of feature vectors ``lag`` frames apart, pooled over parts.

    ``parts`` is a list of (integer frame times, features (frames x pixels)).
    Each part's correlation is normalised by its own energy and the parts are
    averaged weighted by their number of frame pairs, so a part where contrast
    adds large, not quite periodic changes does not drown a clean one.  Only
    lags up to ``max_lag`` are formed (:func:`.gram.lag_sums`): memory linear
    in the frames.  Returns rho[0..max_lag].
    """
    acc = np.zeros(max_lag + 1)
    cnt = np.zeros(max_lag + 1)
    for times, y in parts:
        tt = np.asarray(times).astype(int)
        if tt.size < 2:
            continue
        span = int(tt[-1] - tt[0]) + 1
        lags = min(max_lag, span - 1)
        num = lag_sums(y, tt - tt[0], lags)
        d = np.zeros(span)
        d[tt - tt[0]] = row_norms(y)
        pres = np.zeros(span, bool)
        pres[tt - tt[0]] = True
        for L in range(1, lags + 1):
            if tt.size == span:  # no gaps: every pair L apart is present
                c, a, b = span - L, d[:-L].sum(), d[L:].sum()
            else:
                m = pres[:-L] & pres[L:]
                c, a, b = int(m.sum()), d[:-L][m].sum(), d[L:][m].sum()
            den = math.sqrt(a * b)
            if c == 0 or den <= 0:
                continue
            acc[L] += c * num[L] / den
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
    """Period (frames, sub-frame) and periodicity score from the parts' (times, features).

    First from the correlation of frame-to-frame changes (image velocity: blind
    to slow trends), then refined on one-period high-passed frames, whose
    correlation at one period is the periodicity score.
    """
    longest = max((int(t[-1] - t[0]) for t, _ in parts), default=0)
    max_lag = int(min(np.ceil(hi_p) + 1, longest - 1))
    if max_lag < 3:
        return None, 0.0
    vel = [velocity(y, t) for t, y in parts]
    vel = [(t, v) for t, v in vel if t.size >= 3]
    if not vel:
        return None, 0.0
    period, _ = _peak_lag(_lag_correlation(vel, max_lag), lo_p, hi_p)
    if period is None:
        return None, 0.0
    hp = [(t, highpass(y, t, period)) for t, y in parts]
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


def _landmarks_for_reference(dist_row: np.ndarray, gram_row: np.ndarray, diag: np.ndarray, nxt: np.ndarray,
                             times: np.ndarray, r: int, period: float, pos: dict | None = None):
    """Times (fractional frames) where the part comes back to reference ``r``'s state, one per beat.

    Walks forward and backward from ``r`` by about one period, takes the
    closest frame in a +-40 % window and refines it to sub-frame by projecting
    the reference onto the segments to the neighbouring frames (state assumed
    linear between frames).  Needs only reference ``r``'s row of the Gram
    matrix (``gram_row``, distances ``dist_row``), its diagonal and the inner
    product of every frame with the next one (``nxt``, NaN where none).
    Returns (landmarks, sharpness in [0, 1]).
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
            gjj, grj = float(diag[j]), float(gram_row[j])
            for nb in (int(tj) - 1, int(tj) + 1):
                m = pos.get(nb)
                if m is None:
                    continue
                # |y_r - (y_j + s (y_m - y_j))|^2 is smallest at s = <y_r - y_j, y_m - y_j> / |y_m - y_j|^2
                gjm = float(nxt[j] if nb > tj else nxt[m])
                seg2 = gjj + float(diag[m]) - 2 * gjm
                if seg2 <= 0:
                    continue
                s = min(1.0, max(0.0, (float(gram_row[m]) - grj - gjm + gjj) / seg2))
                d = float(dist_row[j]) - s * s * seg2
                if s > 0 and d < best_d:
                    best_d, best_t = d, tj + s * (nb - tj)
            sharp.append(1.0 - best_d / mean_d if mean_d > 0 else 0.0)
            if abs(best_t - t) < 0.5 * period:  # no progress
                break
            out.append(best_t)
            t = best_t
    return sorted(out), (float(np.mean(sharp)) if sharp else 0.0)


def _part_phase(gram: LazyGram, times: np.ndarray, period: float, n_refs: int | None = None):
    """Phase (mod 1) of each frame of a part from landmark-interpolated beats, many references.

    Each reference frame gives one landmark per beat; the phase is linear
    between landmarks (so it follows beat-to-beat variability).  References
    spread over the part give estimates with different zeros; they are aligned
    to each other and averaged (circular mean weighted by landmark sharpness).
    Only the references' rows of the Gram matrix are formed (n_refs x frames).
    Returns the phase per part frame, or None when the part is shorter than
    about 1.3 periods.
    """
    if times[-1] - times[0] < 1.3 * period or times.size < 4:
        return None
    n_refs = N_REFS if n_refs is None else n_refs
    # References whose clip is complete (not within a clip half-width of the part's ends).
    edge = min(max(1, int(round(period / CLIP_DIV))), (times.size - 1) // 4)
    refs = np.unique(np.linspace(edge, times.size - 1 - edge, min(n_refs, times.size)).round().astype(int))
    estimates, weights = [], []
    span = int(times[-1]) + 1
    pos = {int(t): i for i, t in enumerate(times)}
    # Inner product of every frame with the frame one later (the landmarks' sub-frame refinement).
    after = np.array([pos.get(int(t) + 1, -1) for t in times])
    has = np.nonzero(after >= 0)[0]
    nxt = np.full(times.size, np.nan)
    nxt[has] = gram.products(has, after[has])
    diag = gram.diag
    rows = gram.rows(refs)
    for r, grow in zip(refs, rows):
        dist_row = np.maximum(diag[r] + diag - 2 * grow, 0.0)
        lm, sharp = _landmarks_for_reference(dist_row, grow, diag, nxt, times, r, period, pos)
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
        offs = circ_mean(ref[None, :] - est, weights=w, axis=1)
        ref = circ_mean(est + offs[:, None], weights=w, axis=0)
    return ref


def _top_pixels(motion: np.ndarray, mask: np.ndarray | None, limit: int | None = None) -> np.ndarray:
    """Indices of the ``limit`` (MAX_PIXELS) pixels within ``mask`` with the largest motion energy."""
    limit = MAX_PIXELS if limit is None else limit
    idx = np.arange(motion.size) if mask is None else np.nonzero(mask)[0]
    if idx.size <= limit:
        return idx
    return np.sort(idx[np.argpartition(motion[idx], idx.size - limit)[-limit:]])


def _rows(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``y[idx]``, as a view (no copy of the features) when ``idx`` is a run of consecutive rows."""
    if idx.size and idx[-1] - idx[0] == idx.size - 1:
        return y[idx[0]:idx[-1] + 1]
    return y[idx]


@dataclass
class Features:
    """The block-averaged cine prepared once for onset detection and the default method."""

    small: np.ndarray  # (N, h, w) float32 block means
    z: np.ndarray  # (N, h*w) float32, per-frame z-scored
    motion: np.ndarray  # (h*w,) frame-to-frame change energy per pixel (valid consecutive frames)
    moving: np.ndarray  # (N, <= MAX_PIXELS) float32: z on the most moving pixels
    rough_period: float | None  # period (frames) from all valid frames, for the onset statistic


def prepare_features(small: np.ndarray, valid: np.ndarray, frame_time_ms) -> Features:
    """Z-scored block means, their most moving pixels and a rough period (all linear in the frames)."""
    n = small.shape[0]
    z = normalise(small.reshape(n, -1))
    k = np.nonzero(valid)[0]
    a = k[:-1][np.diff(k) == 1]
    motion = np.zeros(z.shape[1], np.float64)
    # Only the pixels that move carry the heart beat: the period and phase 0 use the
    # MAX_PIXELS with the largest frame-to-frame change (fast, and less noise).
    for s0 in range(0, a.size, 32):
        blk = z[a[s0:s0 + 32] + 1] - z[a[s0:s0 + 32]]
        motion += np.einsum("ij,ij->j", blk, blk, dtype=np.float64)
    top = _top_pixels(motion, None)
    # C order: the column gather comes out Fortran-ordered, and its row blocks would then be
    # copied in every blocked product (it made them 2-3x slower).
    moving = z if top.size == z.shape[1] else np.ascontiguousarray(z[:, top])
    lo_p, hi_p = period_bounds(n, frame_time_ms)
    # Only used to average the beat out of the onset statistic: a weak period is good enough.
    rough, _conf = _estimate_period([(k.astype(float), _rows(moving, k))], lo_p, hi_p)
    return Features(small, z, motion, moving, rough)


def default_estimate(feats: Features, valid, frame_time_ms, onset, contrast_start, warn_list):
    """The default image-based phase estimate (see module docstring and docs/sync.md).

    Returns the estimate and the contrast-insensitive frame distances (a
    :class:`.gram.LazyGram`, indexed ``[i, js]`` like a distance matrix; used
    to break ties and for the non-periodic fallback).
    """
    small, z, moving = feats.small, feats.z, feats.moving
    n = small.shape[0]
    all_k = np.arange(n)
    nc = all_k[(all_k < onset) & valid]
    cp = all_k[(all_k >= contrast_start) & valid]
    lo_p, hi_p = period_bounds(n, frame_time_ms)

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
        zz = bin_mean(z.reshape(n, h, w), b)
        st = stable[:hh * b, :ww * b].reshape(hh, b, ww, b).all((1, 3))
        y_stable = np.ascontiguousarray(normalise(zz.reshape(n, -1)[:, st.ravel()]))
    else:
        y_stable = np.ascontiguousarray(normalise(z[:, stable.ravel()]))
    cross = LazyGram(y_stable)  # contrast-insensitive distances of all frame pairs, on demand

    parts = {name: (p, _rows(moving, p)) for name, p in (("nc", nc), ("cp", cp)) if p.size >= 3}
    period, conf = _estimate_period([(p.astype(float), g) for p, g in parts.values()], lo_p, hi_p)
    if period is None or conf < PERIODIC_THRESHOLD:
        warn_list.append(
            f"no clear cardiac periodicity in the images (score {conf:.2f} < {PERIODIC_THRESHOLD}); "
            "each non-contrast frame is paired with the most similar contrast frame instead"
        )
        pairs = [[int(i), int(j)] for i, j in zip(nc, cross.nearest(nc, cp))] if cp.size else []
        est = PhaseEstimate("image-default", np.zeros(n), None, [], pairs, conf, False, None)
        return est, cross

    half = max(1, int(round(period / CLIP_DIV)))
    phase = np.full(n, np.nan)
    # Phase of every valid frame at once, on the pixels that contrast does not change:
    # no break at the contrast arrival, where the frames to pair are.
    vk = all_k[valid]
    tv = vk.astype(float)
    # Tie-breaking distance too: the same beat-only, contrast-free clips (indexed by frame number).
    clip = LazyGram(highpass(_rows(y_stable, vk), tv, period), clip_maps(tv, half), frames=vk)
    ph = _part_phase(clip, tv, period)
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
    zero = _fastest_change_phase(moving, anchor, unwrapped % 1.0)
    unwrapped = unwrapped - zero
    phase = unwrapped % 1.0
    beats = zero_crossings(unwrapped)
    mean_period = float((beats[-1] - beats[0]) / (len(beats) - 1)) if len(beats) >= 3 else float(period)
    hr = 60000.0 / (mean_period * frame_time_ms) if frame_time_ms else None
    pairs = pair_by_phase(phase, nc, cp, frame_distance=clip, tolerance=PAIR_TOL)
    est = PhaseEstimate("image-default", phase, mean_period, beats, pairs, conf, True, hr)
    return est, cross


def _fastest_change_phase(moving: np.ndarray, frames, phase, bins: int = 20) -> float:
    """Phase (cycles) at which the mean frame-to-frame image change is largest."""
    frames = np.asarray(frames)
    a = frames[:-1][np.diff(frames) == 1]
    if a.size < bins // 2:
        return 0.0
    b = a + 1
    energy = step_energy(moving)[a]
    mid = (phase[a] + 0.5 * ((phase[b] - phase[a] + 0.5) % 1.0 - 0.5)) % 1.0
    grid = (np.arange(bins) + 0.5) / bins
    w = np.exp(-0.5 * (circ_dist(grid[:, None], mid[None, :]) / (1.0 / bins)) ** 2)
    prof = (w @ energy) / np.maximum(w.sum(1), 1e-12)
    g = int(np.argmax(prof))
    p, q, r = prof[g - 1], prof[g], prof[(g + 1) % bins]
    den = p - 2 * q + r
    off = 0.5 * (p - r) / den if den < 0 else 0.0
    return float((grid[g] + np.clip(off, -0.5, 0.5) / bins) % 1.0)
