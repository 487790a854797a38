"""The in-memory angiography cine shared by every stage of the workflow.

A :class:`Cine` is what every reader returns (DICOM XA multi-frame, a folder
of single-frame DICOM, NRRD frame stacks, a folder of PNG/JPEG frames) and
what synchronization, inference and the MRML code consume.

Conventions
-----------
- ``frames`` has shape ``(n_frames, rows, columns)``; pixel values are kept as
  stored (``uint8``/``uint16``), never rescaled.  Frame ``k`` (0-based) is the
  ``k``-th frame in acquisition order.
- ``spacing_mm`` is ``(row_spacing, column_spacing)`` in millimetres at the
  isocentre, or ``None`` when the file does not allow computing it; then
  ``spacing_source`` is ``"unknown"`` and nothing downstream invents a value.
- ``frame_time_ms`` is the time between frames, or ``None`` when unknown.
- ``r_wave_frames`` are 0-based frame indices (DICOM's R Wave Pointer is
  1-based; readers convert).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EcgTrace:
    """An ECG recorded with the cine.

    ``samples`` is the lead in arbitrary units; ``times_ms`` the time of each
    sample from the start of the first frame.
    """

    samples: np.ndarray
    times_ms: np.ndarray
    source: str = ""  # "curve-5000" (retired curve group) or "waveform"


@dataclass
class Cine:
    """An X-ray angiography cine and the facts about it that the workflow needs."""

    frames: np.ndarray
    frame_time_ms: float | None = None
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "unknown"
    bits_stored: int = 8
    transfer_syntax: str | None = None
    r_wave_frames: list[int] | None = None
    ecg: EcgTrace | None = None
    identifiers: dict[str, str] = field(default_factory=dict)
    modality: str | None = None
    blank_frames: list[int] = field(default_factory=list)
    source: str = ""

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def rows(self) -> int:
        return int(self.frames.shape[1])

    @property
    def columns(self) -> int:
        return int(self.frames.shape[2])

    @property
    def ecg_present(self) -> bool:
        return self.ecg is not None or bool(self.r_wave_frames)

    def frame_times_ms(self) -> np.ndarray | None:
        """Acquisition time of each frame in ms from the first, or None if unknown."""
        if self.frame_time_ms is None:
            return None
        return np.arange(self.n_frames, dtype=float) * float(self.frame_time_ms)
