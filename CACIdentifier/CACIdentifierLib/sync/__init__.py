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

Where each part lives:

- ``signal``: eq. 1 and the block means (one pass over the cine);
- ``onset``: the contrast onset and the frame where contrast has fully arrived;
- ``period``: the paper's method (FFT peak period, k + m T pairs);
- ``default``: the default method (motion-correlation period, landmark phase);
- ``gram``: frame features and their inner products on demand (memory linear in the frames);
- ``ecg``: the phase from the ECG's R waves;
- ``phase``: phase tools and pairing by phase;
- ``pipeline``: :func:`synchronize`, which runs them in order;
- ``result``: the result types; ``plot``: the picture; ``blas``: BLAS threads.
"""

from .ecg import r_peaks_from_ecg
from .onset import ONSET_GUARD_FRAMES, contrast_course, detect_contrast_onset
from .period import MAX_BPM, MIN_BPM, PERIODIC_THRESHOLD
from .phase import pair_by_phase, phase_from_landmarks
from .pipeline import synchronize, synchronize_cine
from .plot import plot_sync
from .result import JSON_KEYS, METHODS, ContrastCourse, PhaseEstimate, SyncResult
from .signal import SMALL_SIDE, block_mean, ecg_like_signal

__all__ = [
    "JSON_KEYS",
    "MAX_BPM",
    "METHODS",
    "MIN_BPM",
    "ONSET_GUARD_FRAMES",
    "PERIODIC_THRESHOLD",
    "SMALL_SIDE",
    "ContrastCourse",
    "PhaseEstimate",
    "SyncResult",
    "block_mean",
    "contrast_course",
    "detect_contrast_onset",
    "ecg_like_signal",
    "pair_by_phase",
    "phase_from_landmarks",
    "plot_sync",
    "r_peaks_from_ecg",
    "synchronize",
    "synchronize_cine",
]
