"""What synchronization returns: the phase estimates, the result and the contrast course."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("default", "paper")


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
    ``pairs`` leave out the ``guard_frames`` valid non-contrast frames just
    before a detected onset (the estimates' own ``pairs`` keep them).
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
    guard_frames: int = 0
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
