"""The facts of an XA cine read from its DICOM tags: spacing, frame time, R waves, ECG, identifiers.

Nothing is invented: a value the file does not give, or gives outside its
physical range (a corrupt or mis-scaled tag), is ``None`` with a warning, so
the next rule or the user's value applies (see ``docs/cine_io.md``).  Pixel
data and file layouts are :mod:`.dicom_io`'s.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path

import numpy as np

from .cine import FRAME_TIME_RANGE_MS, SPACING_RANGE_MM, EcgTrace
from .errors import CacError, CacWarning, printable

XA_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1.1": "Enhanced XA Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.3": "X-Ray Angiographic Bi-Plane Image Storage (Retired)",
}

# Identifiers copied into Cine.identifiers when present (as strings).
IDENTIFIER_KEYWORDS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyDate",
    "SeriesNumber",
    "AcquisitionNumber",
    "InstanceNumber",
    "Manufacturer",
    "ManufacturerModelName",
)

# Curve Data Value Representation (5000,0103) -> numpy dtype (little endian).
_CURVE_DTYPES = {0: "u2", 1: "i2", 2: "f4", 3: "f8", 4: "i4"}

# Physical ranges of the facts read from tags; a value outside is treated as absent (with a warning).
# FRAME_TIME_RANGE_MS and SPACING_RANGE_MM (cine.py) also bound the user's --frame-time and --spacing.
MAGNIFICATION_RANGE = (0.5, 10.0)  # Estimated Radiographic Magnification Factor, SID/SOD
DISTANCE_RANGE_MM = (1.0, 100_000.0)  # SID, SOD, source to isocentre
ECG_FREQUENCY_RANGE_HZ = (1.0, 100_000.0)


def exception_text(exc: BaseException) -> str:
    """A parser's exception as a short printable phrase (its text may quote raw bytes of the file)."""
    text = " ".join(str(exc).split())
    return printable(text or type(exc).__name__, 160)


def format_value(value) -> str:
    if isinstance(value, tuple):
        return "x".join(f"{v:.6g}" for v in value)
    return f"{value:.6g}"


def _functional_items(ds):
    """Shared functional group item then the first per-frame item (Enhanced IODs), if any."""
    items = []
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(keyword)
        if seq:
            items.append(seq[0])
    return items


def find_value(ds, keyword: str):
    """The value of ``keyword`` at the top level, else in the functional groups (Enhanced IODs).

    Functional groups are searched one macro deep: shared item first, then
    the first per-frame item, e.g. SharedFunctionalGroupsSequence[0]
    .PixelMeasuresSequence[0].PixelSpacing.
    """
    value = ds.get(keyword)
    if value not in (None, "") and not is_empty_value(value):
        return value
    for group in _functional_items(ds):
        value = group.get(keyword)
        if value not in (None, "") and not is_empty_value(value):
            return value
        for element in group:
            if element.VR == "SQ" and element.value:
                value = element.value[0].get(keyword)
                if value not in (None, "") and not is_empty_value(value):
                    return value
    return None


def is_empty_value(value) -> bool:
    try:
        return len(value) == 0 and not isinstance(value, (int, float))
    except TypeError:
        return False


def floats_of(value) -> list[float] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            return [float(value)]
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _positive(value) -> float | None:
    vals = floats_of(value)
    if not vals or not np.isfinite(vals[0]) or vals[0] <= 0:
        return None
    return vals[0]


def _pair(value) -> tuple[float, float] | None:
    vals = floats_of(value)
    if not vals or any(not np.isfinite(v) or v <= 0 for v in vals):
        return None
    if len(vals) == 1:
        return (vals[0], vals[0])
    return (vals[0], vals[1])


def _in_range(value, limits: tuple[float, float], what: str, unit: str):
    """``value`` (a number or a pair) if every entry lies within ``limits``, else None with a warning.

    A value outside the physical range is a corrupt or mis-scaled tag: it is
    treated as absent (so the next rule, or the user's value, applies).
    """
    if value is None:
        return None
    values = value if isinstance(value, tuple) else (value,)
    if all(limits[0] <= v <= limits[1] for v in values):
        return value
    warnings.warn(
        f"the file gives {what} {format_value(value)} {unit}, outside the physical range "
        f"{limits[0]:g}-{limits[1]:g} {unit}; ignored",
        CacWarning,
        stacklevel=3,
    )
    return None


def dicom_spacing(ds) -> tuple[tuple[float, float] | None, str]:
    """Pixel spacing at the isocentre, (row, column) in mm, and the rule that gave it.

    Rules, first that applies:

    1. ``PixelSpacing`` (0028,0030) -> ``"PixelSpacing"`` (already calibrated);
    2. ``ImagerPixelSpacing`` (0018,1164) / ``EstimatedRadiographicMagnificationFactor``
       (0018,1114) -> ``"ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"``;
    3. ``ImagerPixelSpacing`` / (``DistanceSourceToDetector`` / ``DistanceSourceToPatient``)
       -> ``"ImagerPixelSpacing/(SID/SOD)"``; Enhanced XA gives the source-to-isocentre
       distance instead: ``"ImagerPixelSpacing/(SID/DistanceSourceToIsocenter)"``;
    4. otherwise ``(None, "unknown")`` (ImagerPixelSpacing alone is the detector
       pitch, not the spacing in the patient: a warning says so).

    Tags are looked up at the top level and in the Enhanced functional groups.
    Values outside the physical ranges (``SPACING_RANGE_MM``,
    ``MAGNIFICATION_RANGE``, ``DISTANCE_RANGE_MM``) are ignored with a warning.
    """
    pixel_spacing = _in_range(_pair(find_value(ds, "PixelSpacing")), SPACING_RANGE_MM, "PixelSpacing", "mm")
    if pixel_spacing:
        return pixel_spacing, "PixelSpacing"
    imager = _in_range(_pair(find_value(ds, "ImagerPixelSpacing")), SPACING_RANGE_MM, "ImagerPixelSpacing", "mm")
    if imager is None:
        return None, "unknown"
    magnification = _in_range(
        _positive(find_value(ds, "EstimatedRadiographicMagnificationFactor")),
        MAGNIFICATION_RANGE,
        "EstimatedRadiographicMagnificationFactor",
        "",
    )
    if magnification:
        return (imager[0] / magnification, imager[1] / magnification), (
            "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
        )
    sid = _in_range(_positive(find_value(ds, "DistanceSourceToDetector")), DISTANCE_RANGE_MM, "SID", "mm")
    sod = _in_range(_positive(find_value(ds, "DistanceSourceToPatient")), DISTANCE_RANGE_MM, "SOD", "mm")
    sod_name = "SOD"
    if sod is None:
        sod = _in_range(
            _positive(find_value(ds, "DistanceSourceToIsocenter")), DISTANCE_RANGE_MM, "source to isocentre", "mm"
        )
        sod_name = "DistanceSourceToIsocenter"
    if sid and sod and _in_range(sid / sod, MAGNIFICATION_RANGE, "magnification SID/SOD", ""):
        magnification = sid / sod
        return (imager[0] / magnification, imager[1] / magnification), f"ImagerPixelSpacing/(SID/{sod_name})"
    warnings.warn(
        "the file gives ImagerPixelSpacing (detector pitch) but no magnification; spacing at the "
        "isocentre unknown: pass --spacing MM if you know it",
        CacWarning,
        stacklevel=2,
    )
    return None, "unknown"


def _parse_dicom_datetime(text) -> _dt.datetime | None:
    text = str(text or "").strip()
    if not text:
        return None
    text = text.split("+")[0].split("-")[0] if len(text) > 14 else text
    for fmt in ("%Y%m%d%H%M%S.%f", "%Y%m%d%H%M%S", "%Y%m%d%H%M"):
        try:
            return _dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _parse_dicom_time(text) -> float | None:
    """A DICOM TM value in seconds since midnight, or None."""
    text = str(text or "").strip().replace(":", "")
    if not text:
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def frame_clock_s(ds) -> float | None:
    """AcquisitionTime, else ContentTime, in seconds since midnight."""
    value = _parse_dicom_time(ds.get("AcquisitionTime"))
    return value if value is not None else _parse_dicom_time(ds.get("ContentTime"))


def dicom_frame_time(ds) -> tuple[float | None, str]:
    """Time between frames in ms and the tag that gave it.

    ``FrameTime`` (0018,1063); else ``FrameTimeVector`` (0018,1065), the median
    of its entries after the first (the first is 0 by definition); else
    1000 / ``CineRate`` (0018,0040); else, for Enhanced IODs, the median
    difference of the per-frame ``FrameAcquisitionDateTime``; else
    1000 / ``RecommendedDisplayFrameRate`` (0008,2144), which is only the
    display rate; else ``(None, "unknown")``.  A value outside
    ``FRAME_TIME_RANGE_MS`` is ignored with a warning.
    """

    def checked(value, tag):
        return _in_range(value, FRAME_TIME_RANGE_MS, f"frame time ({tag})", "ms")

    frame_time = checked(_positive(find_value(ds, "FrameTime")), "FrameTime")
    if frame_time:
        return frame_time, "FrameTime"
    vector = floats_of(find_value(ds, "FrameTimeVector"))
    if vector and len(vector) > 1:
        value = checked(_positive(float(np.median(vector[1:]))), "FrameTimeVector")
        if value:
            return value, "FrameTimeVector"
    cine_rate = _positive(find_value(ds, "CineRate"))
    if cine_rate and checked(1000.0 / cine_rate, "CineRate"):
        return 1000.0 / cine_rate, "CineRate"
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) > 1:
        times = []
        for item in per_frame:
            content = item.get("FrameContentSequence")
            stamp = _parse_dicom_datetime(content[0].get("FrameAcquisitionDateTime")) if content else None
            times.append(stamp)
        if all(t is not None for t in times):
            diffs = np.diff([(t - times[0]).total_seconds() * 1000.0 for t in times])
            if len(diffs) and checked(_positive(float(np.median(diffs))), "FrameAcquisitionDateTime"):
                return float(np.median(diffs)), "FrameAcquisitionDateTime"
    display_rate = _positive(find_value(ds, "RecommendedDisplayFrameRate"))
    if display_rate and checked(1000.0 / display_rate, "RecommendedDisplayFrameRate"):
        return 1000.0 / display_rate, "RecommendedDisplayFrameRate"
    return None, "unknown"


def dicom_r_wave_frames(ds, n_frames: int) -> list[int] | None:
    """R Wave Pointer (0028,6040) as 0-based frame indices, or None if absent.

    DICOM numbers frames from 1 in this tag, so 1 is subtracted.  Entries
    outside the cine are dropped with a warning.
    """
    value = ds.get("RWavePointer")
    if value is None or is_empty_value(value):
        return None
    items = value if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    values = []
    for v in items:
        try:
            values.append(int(v))
        except (TypeError, ValueError, OverflowError):
            values.append(-1)  # not a frame number: reported below with those outside the cine
    frames = [v - 1 for v in values if 1 <= v <= n_frames]
    if len(frames) != len(values):
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        warnings.warn(
            f"R Wave Pointer [{shown}] lists frames outside 1..{n_frames}; those were ignored",
            CacWarning,
            stacklevel=2,
        )
    return sorted(set(frames))


def _curve_ecg(ds, n_frames: int, frame_time_ms: float | None) -> EcgTrace | None:
    """The first ECG curve of the retired Curve module (groups 5000-501E).

    A curve that is empty or disagrees with its own header (number of points,
    dimensions, time axis) is ignored with a warning: the cine is still read.
    """
    for group in range(0x5000, 0x5020, 2):
        data_element = ds.get((group, 0x3000))
        if data_element is None:
            continue
        type_of_data = ds.get((group, 0x0020))
        if type_of_data is not None and str(type_of_data.value).strip().upper() not in ("ECG", ""):
            continue
        try:
            return _curve_trace(ds, group, data_element.value, n_frames, frame_time_ms)
        except CacError as exc:
            warnings.warn(f"the ECG curve ({group:04X},3000) {exc}; it was ignored", CacWarning, stacklevel=3)
            return None
    return None


def _curve_trace(ds, group: int, raw, n_frames: int, frame_time_ms: float | None) -> EcgTrace | None:
    """One curve group as an EcgTrace; CacError (a phrase) when it is empty or inconsistent."""

    def number(element: int, default, kind=float):
        value = _elem(ds, group, element)
        if value is None or value == "" or is_empty_value(value):
            return default
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            value = next(iter(value), None)
        try:
            return kind(value)
        except (TypeError, ValueError, OverflowError):
            raise CacError(f"has an unreadable value in ({group:04X},{element:04X})") from None

    n_points = number(0x0010, 0, int)
    dims = number(0x0005, 1, int)
    representation = number(0x0103, 0, int)
    if not 1 <= dims <= 8:
        raise CacError(f"announces {dims} dimensions")
    if representation not in _CURVE_DTYPES:
        raise CacError(f"has an unknown data representation {representation}")
    descriptor = _elem(ds, group, 0x0110)
    units = _elem(ds, group, 0x0030)
    dtype = np.dtype(_CURVE_DTYPES[representation])
    if not ds.is_little_endian:
        dtype = dtype.newbyteorder(">")
    if isinstance(raw, (list, tuple)):
        raw = b"".join(r for r in raw if isinstance(r, bytes))
    if not raw or not isinstance(raw, (bytes, bytearray)):
        raise CacError("is empty")
    values = np.frombuffer(bytes(raw)[: (len(raw) // dtype.itemsize) * dtype.itemsize], dtype=dtype)
    # Curve Data Descriptor: per dimension, 0 = computed from start/step (not stored), 1 = stored.
    if descriptor is not None and not is_empty_value(descriptor):
        try:
            descriptor = [int(d) for d in (descriptor if hasattr(descriptor, "__iter__") else [descriptor])]
        except (TypeError, ValueError, OverflowError):
            raise CacError("has an unreadable data descriptor") from None
        stored = max(1, sum(1 for d in descriptor if d == 1))
    else:
        stored = dims
    available = values.size // stored
    if n_points <= 0 or n_points > available:
        n_points = available
    if n_points < 2:
        raise CacError(f"holds {values.size} values, not a trace")
    values = values[: n_points * stored].reshape(n_points, stored).astype(np.float64)
    samples = values[:, -1]  # y is the last dimension
    x_units = None
    if units is not None and not is_empty_value(units):
        units_list = list(units) if hasattr(units, "__iter__") and not isinstance(units, str) else [units]
        x_units = str(units_list[0]).strip().upper()
    if stored == 2 and x_units == "SEC":
        times_ms = values[:, 0] * 1000.0
    elif descriptor and descriptor[0] == 0 and x_units == "SEC":
        start = number(0x0112, 0.0)
        step = number(0x0114, 0.0)
        times_ms = (start + step * np.arange(n_points)) * 1000.0
    else:
        # No usable time axis ("DPPS", "NONE"...): the samples cover the cine uniformly.
        if frame_time_ms is None:
            warnings.warn(
                "the file has an ECG curve but no frame time, so its timing is unknown; "
                "pass --frame-time MS to use it",
                CacWarning,
                stacklevel=4,
            )
            return None
        times_ms = np.arange(n_points, dtype=np.float64) * (n_frames * frame_time_ms / n_points)
    if not (np.isfinite(samples).all() and np.isfinite(times_ms).all()):
        raise CacError("holds values that are not finite numbers")
    if np.any(np.diff(times_ms) <= 0):
        raise CacError("has sample times that do not increase")
    return EcgTrace(samples=samples, times_ms=times_ms, source="curve-5000")


def _elem(ds, group: int, element: int):
    item = ds.get((group, element))
    return None if item is None else item.value


def _waveform_ecg(ds) -> EcgTrace | None:
    """The first ECG channel of the Waveform Sequence (5400,0100), lead II when labelled."""
    sequence = ds.get("WaveformSequence")
    if not sequence:
        return None
    for index, item in enumerate(sequence):
        labels = []
        for channel in item.get("ChannelDefinitionSequence", []):
            source = channel.get("ChannelSourceSequence")
            meaning = str(source[0].get("CodeMeaning", "")) if source else ""
            labels.append((meaning + " " + str(channel.get("ChannelLabel", ""))).strip())
        group_label = str(item.get("MultiplexGroupLabel", ""))
        text = " ".join(labels + [group_label]).upper()
        if labels and not any(k in text for k in ("ECG", "LEAD", "EKG", "II")):
            continue
        try:
            data = ds.waveform_array(index)
        except Exception as exc:  # pydicom raises several types for bad waveform data
            warnings.warn(f"the ECG waveform could not be read ({exception_text(exc)}); ignored", CacWarning, stacklevel=3)
            return None
        data = np.asarray(data, dtype=np.float64)
        if data.ndim == 1:
            data = data[:, np.newaxis]
        channel = 0
        for i, label in enumerate(labels):
            if "LEAD II" in label.upper() and "III" not in label.upper():
                channel = i
                break
        frequency = _positive(item.get("SamplingFrequency"))
        offset = floats_of(item.get("MultiplexGroupTimeOffset", 0.0) or 0.0)
        problem = None
        if data.ndim != 2 or data.shape[0] < 2 or channel >= data.shape[1]:
            problem = f"has {data.shape} samples, not a trace"
        elif not frequency or not ECG_FREQUENCY_RANGE_HZ[0] <= frequency <= ECG_FREQUENCY_RANGE_HZ[1]:
            problem = f"has no usable sampling frequency ({format_value(frequency) if frequency else 'none'} Hz)"
        elif not offset or not np.isfinite(offset[0]):
            problem = "has an unreadable time offset"
        elif not np.isfinite(data[:, channel]).all():
            problem = "holds values that are not finite numbers"
        if problem:
            warnings.warn(f"the ECG waveform {problem}; it was ignored", CacWarning, stacklevel=3)
            return None
        times_ms = offset[0] + np.arange(data.shape[0], dtype=np.float64) * 1000.0 / frequency
        return EcgTrace(samples=data[:, channel], times_ms=times_ms, source="waveform")
    return None


def dicom_ecg(ds, n_frames: int, frame_time_ms: float | None) -> EcgTrace | None:
    """The ECG recorded with the cine: Waveform Sequence first, else the retired curve, else None."""
    return _waveform_ecg(ds) or _curve_ecg(ds, n_frames, frame_time_ms)


def dicom_identifiers(ds) -> dict[str, str]:
    """Identifying tags present in the file, as strings (see ``IDENTIFIER_KEYWORDS``)."""
    out = {}
    for keyword in IDENTIFIER_KEYWORDS:
        value = ds.get(keyword)
        if value is not None and str(value).strip() != "":
            out[keyword] = str(value)
    return out


def check_modality(ds, path: Path) -> str | None:
    modality = str(ds.get("Modality", "") or "").strip() or None
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if modality != "XA" and sop_class not in XA_SOP_CLASSES:
        warnings.warn(
            f"{path.name} has modality {modality or 'unset'}, not XA (X-ray angiography); "
            "reading it anyway, results may not make sense",
            CacWarning,
            stacklevel=3,
        )
    return modality


__all__ = [
    "dicom_spacing",
    "dicom_frame_time",
    "dicom_r_wave_frames",
    "dicom_ecg",
    "dicom_identifiers",
    "find_value",
]
