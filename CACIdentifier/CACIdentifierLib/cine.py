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

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import CacError

# Sizes a cine frame may have.  Below MIN_FRAME_SIDE there is no image to speak of (a header whose
# Rows or Columns was corrupted to 1 or 2 otherwise turns one frame into hundreds); above
# MAX_FRAME_SIDE no X-ray detector exists.
MIN_FRAME_SIDE = 16
MAX_FRAME_SIDE = 8192
# Physical ranges of the time between frames and of the pixel spacing (at the isocentre or the
# detector): a value outside is a corrupt tag or a mistyped option.
FRAME_TIME_RANGE_MS = (1.0, 10_000.0)  # 1000 to 0.1 frames per second
SPACING_RANGE_MM = (0.005, 10.0)
# Share of the memory this process may still use that one decoded cine may take: the stages after
# reading need about as much again.
CINE_MEMORY_SHARE = 0.4


def memory_available_bytes() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by RLIMIT_AS; None if unknown."""
    candidates = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            try:
                with open("/proc/self/statm") as handle:
                    used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                used = 0
            candidates.append(max(0, soft - used))
    except (ImportError, OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def memory_short(need: float, share: float = 1.0) -> int | None:
    """The bytes available now if ``need`` is more than ``share`` of them (a refusal is due), else None.

    None also when the available memory is unknown (not Linux): nothing is refused on a guess.  One rule for
    every up-front memory refusal, each with its own message: the kernel's OOM killer stops a process (or
    another program) without a word.

    >>> memory_short(0) is None
    True
    """
    available = memory_available_bytes()
    return available if available is not None and need > share * available else None


def memory_text(nbytes: float) -> str:
    """A memory size for a message: GiB from 1 GiB up, MiB below (``0.0 GiB`` said nothing).

    >>> memory_text(3 * 2**30), memory_text(48 * 2**20), memory_text(1000)
    ('3.00 GiB', '48 MiB', '1 MiB')
    """
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{max(1, round(nbytes / 2**20))} MiB"


def check_cine_size(n_frames: int, rows: int, columns: int, itemsize: int, source) -> None:
    """Refuse, before anything is decoded, a cine whose size is degenerate or does not fit in memory.

    Raises :class:`~.errors.CacError` when a frame side is outside
    ``MIN_FRAME_SIDE..MAX_FRAME_SIDE``, there are no frames, or the frames
    would take more than ``CINE_MEMORY_SHARE`` of the memory still available.
    """
    if n_frames < 1:
        raise CacError(f"{source} says it holds {n_frames} frames; the header is corrupt")
    if not (MIN_FRAME_SIDE <= rows <= MAX_FRAME_SIDE and MIN_FRAME_SIDE <= columns <= MAX_FRAME_SIDE):
        raise CacError(
            f"{source} has frames of {rows} x {columns} pixels; a cine frame must be between "
            f"{MIN_FRAME_SIDE} and {MAX_FRAME_SIDE} pixels a side (the header may be corrupt)"
        )
    need = int(n_frames) * int(rows) * int(columns) * int(itemsize)
    available = memory_short(need, CINE_MEMORY_SHARE)
    if available is not None:
        raise CacError(
            f"{source} holds {n_frames} frames of {rows} x {columns} pixels ({memory_text(need)} decoded), "
            f"more than this machine can spare ({memory_text(available)} available); "
            "close other programs, or use a machine with more memory or a shorter cine"
        )


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

    def fingerprint(self) -> str:
        """The content fingerprint of the pixels (:func:`pixel_fingerprint`)."""
        return pixel_fingerprint(self.frames)


# Scheme of the source fingerprints written into segmentations (CAC_source_fingerprint).
FINGERPRINT_SCHEME = "pixels-sha256"


def pixel_fingerprint(frames) -> str:
    """A content fingerprint of a cine's pixel data: ``"pixels-sha256:"`` + 64 hex digits.

    Segmentations written by this project carry it (``CAC_source_fingerprint``)
    so that ``cac evaluate`` and ``cac dataset add`` can tell annotations of
    another cine with the same frame size from annotations of this one.  It
    depends on the pixel values and the shape only, not on the file format or
    the stored integer type: a DICOM file, its NRRD frame stack and the
    volume Slicer shows give the same fingerprint.  Integer values in
    0-65535 are hashed as little-endian uint16, anything else as float64;
    the header line holds the shape.  A hash of pixels reveals no identifier
    (it cannot be reversed, and matching it needs the cine itself).

    >>> pixel_fingerprint(np.zeros((2, 3, 4), np.uint8)) == pixel_fingerprint(np.zeros((2, 3, 4), np.uint16))
    True
    >>> pixel_fingerprint(np.zeros((2, 3, 4), np.uint8))[:22]
    'pixels-sha256:17cd131e'
    """
    import hashlib

    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    as_u16 = frames.dtype.kind in "bu" and frames.dtype.itemsize <= 2
    if not as_u16 and frames.size and frames.dtype.kind in "iuf":
        lo, hi = frames.min(), frames.max()
        as_u16 = bool(np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 65535)
        if as_u16 and frames.dtype.kind == "f":
            as_u16 = all(np.array_equal(f, np.round(f)) for f in frames)
    digest = hashlib.sha256(("cac-frames/1 " + " ".join(str(int(s)) for s in frames.shape) + "\n").encode())
    dtype = "<u2" if as_u16 else "<f8"
    for frame in frames:  # a frame at a time: no full-size copy of a large cine
        digest.update(np.ascontiguousarray(frame, dtype=dtype).tobytes())
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def short_fingerprint(fingerprint: str | None) -> str:
    """The first 8 hex digits of a fingerprint, for messages (``"none"`` when absent)."""
    if not fingerprint:
        return "none"
    return str(fingerprint).rsplit(":", 1)[-1][:8]
