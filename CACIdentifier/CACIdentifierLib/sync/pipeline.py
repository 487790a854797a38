"""``synchronize``: onset, period, per-frame phase and pairs of a cine (Fig. 2 as a whole)."""

from __future__ import annotations

import warnings

import numpy as np

from ..blank import detect_blank_frames
from ..cine import FRAME_TIME_RANGE_MS, MIN_FRAME_SIDE, memory_available_bytes, memory_text
from ..errors import CacError, CacWarning
from .blas import single_threaded_blas
from .default import default_estimate, prepare_features
from .ecg import ecg_estimate
from .onset import ONSET_GUARD_FRAMES, contrast_course
from .period import paper_estimate
from .phase import pair_by_phase
from .result import METHODS, SyncResult
from .signal import SMALL_SIDE, bin_mean, check_frames, ecg_like_signal, signal_and_small

#: A pair that differs by more than this fraction of a cardiac cycle in phase is worth a warning: frame
#: quantisation alone gives up to half a frame, 0.02-0.05 cycle at 10-25 frames a beat.
PHASE_MISMATCH_WARN = 0.1


@single_threaded_blas()  # a fresh context per call (contextlib's ContextDecorator)
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
    onset_guard: int | None = None,
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
    onset_guard : int, optional
        Non-contrast frames just before a *detected* onset that get no pair
        (default :data:`.onset.ONSET_GUARD_FRAMES`): the detected onset is more
        often late than early, and a late one would have the first frames of
        the wash-in analysed as non-contrast.  Not applied to a given
        ``onset`` nor to the first-half fallback; at least the first valid
        frame always stays.  ``result.guard_frames`` says how many were left out.
    progress : callable(done, total, message), optional

    Raises
    ------
    CacError
        Bad shape, an unknown method, or no non-contrast / no contrast frames.
    """
    if method not in METHODS:
        raise CacError(f"unknown synchronization method {method!r}; use one of {', '.join(METHODS)}")
    frames = check_frames(frames, MIN_FRAME_SIDE)
    n = frames.shape[0]
    _check_memory(frames)
    lo_ft, hi_ft = FRAME_TIME_RANGE_MS
    if frame_time_ms is not None and not (np.isfinite(frame_time_ms) and lo_ft <= frame_time_ms <= hi_ft):
        raise CacError(f"frame time must be a number of ms between {lo_ft:g} and {hi_ft:g}, got {frame_time_ms}")
    if onset is not None:
        onset = int(onset)
        if onset <= 0:
            raise CacError(f"onset {onset} leaves no non-contrast frames; the onset is the first contrast "
                           "frame, so it must be at least 1")
        if onset >= n:
            raise CacError(f"onset {onset} leaves no contrast frames in this {n}-frame cine; "
                           f"use an onset between 1 and {n - 1}")
    guard = ONSET_GUARD_FRAMES if onset_guard is None else int(onset_guard)
    if guard < 0:
        raise CacError(f"the onset guard must be 0 or more frames, got {guard}")
    if onset is not None and onset_guard is not None:
        # The guard hedges against a late *detected* onset; a given onset is taken as it is.
        warnings.warn(f"the onset guard ({guard} frames) applies only to a detected onset; it is ignored "
                      f"with the given onset {onset}", CacWarning, stacklevel=2)
    report = progress or (lambda *a: None)
    warn_list: list[str] = []
    report(0, 4, "ECG-like signal")

    given = None if blank_frames is None else sorted({int(b) for b in blank_frames if 0 <= int(b) < n})
    reference = 0 if given is None or 0 not in given else next((k for k in range(n) if k not in given), 0)
    signal, small = signal_and_small(frames, reference)
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
    feats = prepare_features(small, valid, frame_time_ms)
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
        if onset is not None:
            # The user's onset is not a detection error: only a later onset can help.
            first = int(np.argmax(valid))
            before = "frame 0 is" if onset == 1 else f"frames 0-{onset - 1} are"
            raise CacError(f"onset {onset} leaves no non-blank non-contrast frame ({before} blank); "
                           f"give a later onset, --onset {first + 1} or more")
        # The rise is fitted from frame 0 when the cine starts with contrast, and also when its arrival comes
        # within the first few frames: too short a baseline to tell from the rise (docs/sync.md, "Limits").
        first = "first frame" if valid[0] else "first non-blank frame"
        found = (f" (the detected rise starts at frame {onset_frame}, fully arrived from frame {contrast_start})"
                 if course.detected else "")
        raise CacError(f"contrast is present from the {first}{found}: there are no non-contrast frames to pair; "
                       "a run filmed after the injection has none, and an arrival within the first few frames "
                       "leaves too short a baseline to detect it: look at the frames and pass --onset N (N: the "
                       "first frame with contrast in the vessels)")
    if not valid[contrast_start:].any():
        raise CacError(f"no usable contrast frames after frame {contrast_start}; pass --onset N to set the onset")

    report(2, 4, "cardiac phase")
    # The image estimate's warnings (no periodicity and its pairing fallback, a constant period)
    # are only true of the result when it gives the phase, not when the ECG does.
    image_warns: list[str] = []
    if method == "paper":
        image = paper_estimate(signal, valid, frame_time_ms, onset_frame, contrast_start)
        if not image.periodic:
            image_warns.append(f"no clear periodicity in the ECG-like signal (score {image.confidence:.2f})")
        frame_distance = None
    else:
        image, frame_distance = default_estimate(feats, valid, frame_time_ms, onset_frame, contrast_start,
                                                  image_warns)
    ecg_warns: list[str] = []
    ecg_est = ecg_estimate(n, r_wave_frames, ecg, frame_time_ms, ecg_warns) if use_ecg else None
    warn_list += (image_warns if ecg_est is None else []) + ecg_warns
    report(3, 4, "pairing")
    nc = [i for i in range(onset_frame) if valid[i]]
    cp = [j for j in range(contrast_start, n) if valid[j]]
    if ecg_est is not None:
        ecg_est.pairs = pair_by_phase(ecg_est.phase, nc, cp, frame_distance=frame_distance)
        chosen = ecg_est
    else:
        chosen = image
    pairs = chosen.pairs
    guarded = guard > 0 and onset is None and course.detected
    kept = [i for i in nc if i < onset_frame - guard] if guarded else nc
    kept = kept or nc[:1]
    if len(kept) < len(nc):
        keep = set(kept)
        pairs = [p for p in pairs if int(p[0]) in keep]
    worst = 0.0
    if chosen.periodic and cp and chosen.period_frames and cp[-1] - cp[0] + 1 < chosen.period_frames:
        # Fewer contrast frames than one beat: some non-contrast phases may have no contrast frame of their phase.
        worst = max((abs((chosen.phase[i] - chosen.phase[j] + 0.5) % 1.0 - 0.5) for i, j in pairs), default=0.0)
    if worst > PHASE_MISMATCH_WARN:
        span = f"frames {cp[0]}-{cp[-1]}" if len(cp) > 1 else f"frame {cp[0]}"
        warn_list.append(f"only contrast {span} can be paired with ({len(cp)} of a cardiac cycle of "
                         f"{chosen.period_frames:.1f} frames), so pairs differ by up to {worst:.2f} cycle in phase; "
                         "a run that films at "
                         "least one beat after the contrast arrives pairs by phase"
                         + ("" if onset is not None else "; if the contrast arrives earlier than "
                            f"frame {onset_frame}, pass --onset N"))
    for w in warn_list:
        warnings.warn(w, CacWarning, stacklevel=3)
    report(4, 4, "done")
    return SyncResult(
        onset_frame=int(onset_frame),
        period_frames=chosen.period_frames if chosen.periodic else None,
        heart_rate_bpm=chosen.heart_rate_bpm if chosen.periodic else None,
        phase=[float(p) for p in chosen.phase],
        pairs=pairs,
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
        guard_frames=len(nc) - len(kept),
        frame_time_ms=frame_time_ms,
        image=image,
        ecg=ecg_est,
    )


def _auto_blank(small: np.ndarray) -> list[int]:
    """Blank frames of a cine from its block means, by :func:`..blank.detect_blank_frames`'s rule.

    That rule costs about one pass per frame, so it is only asked about the
    frames that differ from both neighbours far more than frames usually do
    (a blank frame is an outlier in time), with eight ordinary frames as
    context for its cine-wide ranges.
    """
    n = small.shape[0]
    if n < 3:
        return []
    m = bin_mean(small, 2)
    step = np.abs(np.diff(m.reshape(n, -1), axis=0)).mean(1)  # step[k]: frame k -> k + 1
    prev = np.concatenate([[np.inf], step])
    nxt = np.concatenate([step, [np.inf]])
    score = np.minimum(prev, nxt)
    score[0], score[-1] = step[0], step[-1]
    med = float(np.median(step))
    cand = np.nonzero(score > 4 * max(med, 1e-6))[0]
    if cand.size == 0:
        return []
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


# Synchronization keeps a few float32 copies of the block means per frame (block means, z-scores,
# moving pixels, frame differences, high-passed features): peak 6 copies measured on 400-6,400
# frame cines (benchmarks/bench_sync_memory.py), 8 with a margin.  Nothing grows faster than the
# frame count: inner products between frames are formed a block or a few rows at a time.
FEATURE_COPIES = 8


def _check_memory(frames: np.ndarray) -> None:
    """Refuse, before computing, a cine whose per-frame features would not fit in memory.

    Everything synchronization keeps grows linearly with the frame count (about
    FEATURE_COPIES x 4 bytes per block-mean pixel per frame: 0.5 GB for 16,000
    frames of 128 x 128 block means).
    """
    n, rows, cols = frames.shape
    f = max(1, min(rows, cols) // SMALL_SIDE)
    need = FEATURE_COPIES * 4 * n * (rows // f) * (cols // f)
    available = memory_available_bytes()
    if available is not None and need > 0.5 * available:
        raise CacError(
            f"synchronizing {n} frames needs about {memory_text(need)}, more than this machine can spare "
            f"(half of the {memory_text(available)} available now); close other programs or synchronize a "
            "shorter part of the cine"
        )
