"""Reading X-ray angiography cines from DICOM.

Two layouts are read:

- one multi-frame file (:func:`read_dicom_cine`): legacy X-Ray Angiographic
  Image Storage and Enhanced XA (functional groups), any transfer syntax that
  pydicom can decode with the installed plugins (uncompressed, deflated,
  RLE Lossless, JPEG Baseline/Extended/Lossless via pylibjpeg-libjpeg or
  Pillow, JPEG-LS via pylibjpeg-libjpeg, JPEG 2000 via Pillow/openjpeg);
- a folder of single-frame files of one series (:func:`read_dicom_folder`),
  ordered by InstanceNumber, then acquisition/content time, then file name.

The facts the workflow needs are taken from the tags (see ``docs/cine_io.md``):
pixel spacing at the isocentre (:func:`dicom_spacing`), frame time
(:func:`dicom_frame_time`), the R Wave Pointer converted to 0-based frame
indices (:func:`dicom_r_wave_frames`) and the ECG recorded with the cine,
either a retired curve (group 5000) or a Waveform Sequence
(:func:`dicom_ecg`).  Nothing is invented: a value the file does not give is
``None``.

Bad input raises :class:`~CACIdentifierLib.errors.CacError` with one line.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path

import numpy as np

from .blank import detect_blank_frames
from .cine import Cine, EcgTrace
from .errors import CacError, CacWarning
from .fileutil import natural_sort_key

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


# --------------------------------------------------------------------------- reading the file


def _read_dataset(path: Path):
    """dcmread with the failures mapped to one-line CacErrors; returns (dataset, pydicom warnings)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # Files without the 128-byte preamble are legal in the wild; accept them only if
            # they parse into something that looks like an image.
            try:
                ds = pydicom.dcmread(path, force=True)
            except Exception:
                ds = None
            if ds is None or "SOPClassUID" not in ds and "Rows" not in ds:
                raise CacError(
                    f"{path} is not a DICOM file; give a DICOM XA cine, a folder of frames or an .nrrd"
                ) from None
        except CacError:
            raise
        except Exception as exc:  # pydicom raises many types on corrupt files
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CacError(
                f"{path} could not be read as DICOM ({text}); the file may be truncated or corrupt"
            ) from None
    messages = [str(w.message) for w in caught]
    _fill_transfer_syntax(ds)
    return ds, messages


def _fill_transfer_syntax(ds) -> None:
    """Give a dataset read without file meta (no preamble) the uncompressed syntax it was parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _truncation_hint(messages: list[str]) -> bool:
    return any("End of file" in m or "unexpected end" in m.lower() for m in messages)


def transfer_syntax_of(ds) -> str | None:
    """The Transfer Syntax UID of the file, or None for a dataset without file meta."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid else None


def transfer_syntax_name(uid: str | None) -> str | None:
    """pydicom's name of a Transfer Syntax UID (the UID itself when unknown)."""
    if not uid:
        return None
    from pydicom.uid import UID

    name = UID(uid).name
    return name or uid


def decoder_problem(uid: str) -> str | None:
    """Why pydicom cannot decode pixel data in transfer syntax ``uid``, or None if it can.

    The message names the syntax and the packages that would decode it (as
    pydicom lists them).
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    name = transfer_syntax_name(uid)
    try:
        decoder = get_decoder(UID(uid))
    except NotImplementedError:
        return (
            f"pixel data in {name} ({uid}) cannot be decoded: pydicom has no decoder for this transfer "
            "syntax; export the frames (e.g. with ffmpeg or dcmtk's dcmj2pnm) and load the folder of images"
        )
    if not UID(uid).is_compressed or decoder.available_plugins:  # native syntaxes need no plugin
        return None
    missing = "; ".join(decoder.missing_dependencies) or "a pydicom decoding plugin"
    return f"pixel data in {name} ({uid}) cannot be decoded with the installed packages; install one of: {missing}"


def _decode_pixels(ds, path: Path, pydicom_messages: list[str]) -> np.ndarray:
    """All frames as an array (n_frames, rows, cols), polarity MONOCHROME2, values as stored."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop_name = _sop_class_name(ds)
        if _truncation_hint(pydicom_messages):
            raise CacError(f"{path} is truncated (the file ends inside its data); copy the complete file")
        if "Rows" in ds or "NumberOfFrames" in ds or "Image Storage" in sop_name:
            raise CacError(
                f"{path} is an image file ({sop_name}) without its pixel data: it is truncated or its pixels "
                "were stripped; copy the complete file"
            )
        raise CacError(
            f"{path} is a DICOM file without pixel data ({sop_name}), not an image; give an XA cine"
        )
    uid = transfer_syntax_of(ds)
    if uid:
        problem = decoder_problem(uid)
        if problem:
            raise CacError(f"{path}: {problem}")
        shortfall = _native_shortfall(ds, uid)
        if shortfall:
            raise CacError(f"{path} is truncated ({shortfall}); copy the complete file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types on corrupt data
        text = " ".join(str(exc).split())[:240] or type(exc).__name__
        if _truncation_hint(pydicom_messages) or any(
            word in text.lower() for word in ("length", "less than expected", "fragment", "end of")
        ):
            raise CacError(
                f"{path} is truncated or its pixel data is corrupt ({text}); copy the complete file"
            ) from None
        raise CacError(f"{path}: pixel data could not be decoded ({text}); the file may be corrupt") from None
    if _truncation_hint(pydicom_messages):
        raise CacError(f"{path} is truncated (the file ends inside its pixel data); copy the complete file")
    for w in caught:
        # pydicom warns (and pads) when pixel data is shorter than announced in a recoverable way.
        if "shorter" in str(w.message).lower() or "less than expected" in str(w.message).lower():
            raise CacError(f"{path} is truncated ({w.message}); copy the complete file")

    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples > 1:
        warnings.warn(
            f"{path.name} is a colour image; converted to grey (ITU-R 601 luma)", CacWarning, stacklevel=3
        )
        pixels = _luma(pixels)
    if n_frames == 1 and pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        # Every stage assumes MONOCHROME2 (higher value = brighter); invert within the stored range.
        bits = int(getattr(ds, "BitsStored", 8 * pixels.dtype.itemsize))
        if np.issubdtype(pixels.dtype, np.signedinteger):
            pixels = (pixels.max() + pixels.min() - pixels).astype(pixels.dtype)
        else:
            pixels = ((1 << bits) - 1 - pixels).astype(pixels.dtype)
    return np.ascontiguousarray(pixels)


def _sop_class_name(ds) -> str:
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid:
        return "no SOP class"
    from pydicom.uid import UID

    return XA_SOP_CLASSES.get(uid) or UID(uid).name or uid


def _native_shortfall(ds, uid: str) -> str | None:
    """For uncompressed pixel data: 'N of M bytes' when the element is shorter than the image needs."""
    from pydicom.uid import UID

    if UID(uid).is_compressed or "PixelData" not in ds:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None
    expected = (rows * cols * frames * samples * bits + 7) // 8
    actual = len(ds.PixelData)
    return (
        f"pixel data has {actual} of the {expected} bytes its {frames} frames need"
        if actual < expected
        else None
    )


def _luma(rgb: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114])
    grey = rgb[..., :3].astype(np.float64) @ weights
    return np.clip(np.rint(grey), 0, np.iinfo(rgb.dtype).max).astype(rgb.dtype)


# --------------------------------------------------------------------------- tags


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
    if value not in (None, "") and not _is_empty(value):
        return value
    for group in _functional_items(ds):
        value = group.get(keyword)
        if value not in (None, "") and not _is_empty(value):
            return value
        for element in group:
            if element.VR == "SQ" and element.value:
                value = element.value[0].get(keyword)
                if value not in (None, "") and not _is_empty(value):
                    return value
    return None


def _is_empty(value) -> bool:
    try:
        return len(value) == 0 and not isinstance(value, (int, float))
    except TypeError:
        return False


def _floats(value) -> list[float] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            return [float(value)]
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _positive(value) -> float | None:
    vals = _floats(value)
    if not vals or not np.isfinite(vals[0]) or vals[0] <= 0:
        return None
    return vals[0]


def _pair(value) -> tuple[float, float] | None:
    vals = _floats(value)
    if not vals or any(not np.isfinite(v) or v <= 0 for v in vals):
        return None
    if len(vals) == 1:
        return (vals[0], vals[0])
    return (vals[0], vals[1])


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
    """
    pixel_spacing = _pair(find_value(ds, "PixelSpacing"))
    if pixel_spacing:
        return pixel_spacing, "PixelSpacing"
    imager = _pair(find_value(ds, "ImagerPixelSpacing"))
    if imager is None:
        return None, "unknown"
    magnification = _positive(find_value(ds, "EstimatedRadiographicMagnificationFactor"))
    if magnification:
        return (imager[0] / magnification, imager[1] / magnification), (
            "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
        )
    sid = _positive(find_value(ds, "DistanceSourceToDetector"))
    sod = _positive(find_value(ds, "DistanceSourceToPatient"))
    sod_name = "SOD"
    if sod is None:
        sod = _positive(find_value(ds, "DistanceSourceToIsocenter"))
        sod_name = "DistanceSourceToIsocenter"
    if sid and sod:
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


def _frame_clock(ds) -> float | None:
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
    display rate; else ``(None, "unknown")``.
    """
    frame_time = _positive(find_value(ds, "FrameTime"))
    if frame_time:
        return frame_time, "FrameTime"
    vector = _floats(find_value(ds, "FrameTimeVector"))
    if vector and len(vector) > 1:
        value = float(np.median(vector[1:]))
        if value > 0:
            return value, "FrameTimeVector"
    cine_rate = _positive(find_value(ds, "CineRate"))
    if cine_rate:
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
            if len(diffs) and np.median(diffs) > 0:
                return float(np.median(diffs)), "FrameAcquisitionDateTime"
    display_rate = _positive(find_value(ds, "RecommendedDisplayFrameRate"))
    if display_rate:
        return 1000.0 / display_rate, "RecommendedDisplayFrameRate"
    return None, "unknown"


def dicom_r_wave_frames(ds, n_frames: int) -> list[int] | None:
    """R Wave Pointer (0028,6040) as 0-based frame indices, or None if absent.

    DICOM numbers frames from 1 in this tag, so 1 is subtracted.  Entries
    outside the cine are dropped with a warning.
    """
    value = ds.get("RWavePointer")
    if value is None or _is_empty(value):
        return None
    values = [int(v) for v in (value if hasattr(value, "__iter__") else [value])]
    frames = [v - 1 for v in values if 1 <= v <= n_frames]
    if len(frames) != len(values):
        warnings.warn(
            f"R Wave Pointer {values} lists frames outside 1..{n_frames}; those were ignored",
            CacWarning,
            stacklevel=2,
        )
    return sorted(set(frames))


def _curve_ecg(ds, n_frames: int, frame_time_ms: float | None) -> EcgTrace | None:
    """The first ECG curve of the retired Curve module (groups 5000-501E)."""
    for group in range(0x5000, 0x5020, 2):
        data_element = ds.get((group, 0x3000))
        if data_element is None:
            continue
        type_of_data = ds.get((group, 0x0020))
        if type_of_data is not None and str(type_of_data.value).strip().upper() not in ("ECG", ""):
            continue
        n_points = int(_elem(ds, group, 0x0010) or 0)
        dims = int(_elem(ds, group, 0x0005) or 1)
        representation = int(_elem(ds, group, 0x0103) or 0)
        descriptor = _elem(ds, group, 0x0110)
        units = _elem(ds, group, 0x0030)
        dtype = np.dtype(_CURVE_DTYPES.get(representation, "u2"))
        if not ds.is_little_endian:
            dtype = dtype.newbyteorder(">")
        raw = data_element.value
        if isinstance(raw, (list, tuple)):
            raw = b"".join(raw)
        values = np.frombuffer(bytes(raw)[: (len(raw) // dtype.itemsize) * dtype.itemsize], dtype=dtype)
        # Curve Data Descriptor: per dimension, 0 = computed from start/step (not stored), 1 = stored.
        if descriptor is not None and not _is_empty(descriptor):
            descriptor = [int(d) for d in (descriptor if hasattr(descriptor, "__iter__") else [descriptor])]
            stored = max(1, sum(1 for d in descriptor if d == 1))
        else:
            stored = dims
        if n_points <= 0:
            n_points = values.size // stored
        values = values[: n_points * stored].reshape(n_points, stored).astype(np.float64)
        samples = values[:, -1]  # y is the last dimension
        x_units = None
        if units is not None and not _is_empty(units):
            units_list = list(units) if hasattr(units, "__iter__") and not isinstance(units, str) else [units]
            x_units = str(units_list[0]).strip().upper()
        if stored == 2 and x_units == "SEC":
            times_ms = values[:, 0] * 1000.0
        elif descriptor and descriptor[0] == 0 and x_units == "SEC":
            start = float(_elem(ds, group, 0x0112) or 0.0)
            step = float(_elem(ds, group, 0x0114) or 0.0)
            times_ms = (start + step * np.arange(n_points)) * 1000.0
        else:
            # No usable time axis ("DPPS", "NONE"...): the samples cover the cine uniformly.
            if frame_time_ms is None:
                warnings.warn(
                    "the file has an ECG curve but no frame time, so its timing is unknown; "
                    "pass --frame-time MS to use it",
                    CacWarning,
                    stacklevel=3,
                )
                return None
            times_ms = np.arange(n_points, dtype=np.float64) * (n_frames * frame_time_ms / n_points)
        return EcgTrace(samples=samples, times_ms=times_ms, source="curve-5000")
    return None


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
            warnings.warn(f"the ECG waveform could not be read ({exc}); ignored", CacWarning, stacklevel=3)
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
        if not frequency:
            return None
        offset_ms = float(item.get("MultiplexGroupTimeOffset", 0.0) or 0.0)
        times_ms = offset_ms + np.arange(data.shape[0], dtype=np.float64) * 1000.0 / frequency
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


def _check_modality(ds, path: Path) -> str | None:
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


# --------------------------------------------------------------------------- readers


def prefer_file_value(file_value, user_value, what: str, unit: str, rtol: float = 0.01):
    """The file's value wins; the user's fills in only when the file has none (warn if they differ)."""
    if user_value is None:
        return file_value, False
    if file_value is None:
        return user_value, True
    a = np.atleast_1d(np.asarray(file_value, dtype=float))
    b = np.atleast_1d(np.asarray(user_value, dtype=float))
    if not np.allclose(a, b, rtol=rtol):
        warnings.warn(
            f"the file gives {what} {_fmt(file_value)} {unit}; the value given ({_fmt(user_value)} {unit}) "
            "is ignored because the file's own value wins",
            CacWarning,
            stacklevel=3,
        )
    return file_value, False


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return "x".join(f"{v:.6g}" for v in value)
    return f"{value:.6g}"


def normalize_spacing(spacing_mm) -> tuple[float, float] | None:
    """A user spacing (number or (row, col) pair, mm) as a (row, col) tuple; CacError if not positive."""
    if spacing_mm is None:
        return None
    vals = _floats(spacing_mm)
    if not vals or len(vals) > 2 or any(not np.isfinite(v) or v <= 0 for v in vals):
        raise CacError(
            f"spacing {spacing_mm!r} is not valid; give a positive number of mm, e.g. --spacing 0.3"
        )
    return (vals[0], vals[-1])


def normalize_frame_time(frame_time_ms) -> float | None:
    if frame_time_ms is None:
        return None
    try:
        value = float(frame_time_ms)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise CacError(f"frame time {frame_time_ms!r} is not valid; give a positive number of ms, e.g. 66.7")
    return value


def _check_frames(frames: np.ndarray, path: Path) -> None:
    if frames.shape[0] < 2:
        raise CacError(
            f"{path} holds a single frame; a cine needs at least 2 frames (give the multi-frame cine "
            "or the folder of all its frames)"
        )


def read_dicom_cine(path, *, spacing_mm=None, frame_time_ms=None) -> Cine:
    """Read a multi-frame DICOM cine (legacy XA or Enhanced XA).

    Parameters
    ----------
    path : str or Path
        The DICOM file.
    spacing_mm : float or (float, float), optional
        Pixel spacing (row, column) in mm at the isocentre, used only when the
        file gives none (``spacing_source`` is then ``"user"``).
    frame_time_ms : float, optional
        Time between frames in ms, used only when the file gives none.

    Returns
    -------
    Cine
        ``frames`` (n_frames, rows, columns) as stored (uint8/uint16),
        MONOCHROME1 inverted to MONOCHROME2.
    """
    path = Path(path)
    ds, messages = _read_dataset(path)
    frames = _decode_pixels(ds, path, messages)
    _check_frames(frames, path)
    modality = _check_modality(ds, path)
    return _build_cine(ds, frames, path, spacing_mm, frame_time_ms, modality)


def _build_cine(ds, frames, path, spacing_mm, frame_time_ms, modality) -> Cine:
    file_spacing, spacing_source = dicom_spacing(ds)
    spacing, used_user = prefer_file_value(file_spacing, normalize_spacing(spacing_mm), "pixel spacing", "mm")
    if used_user:
        spacing_source = "user"
    file_frame_time, _ = dicom_frame_time(ds)
    frame_time, _ = prefer_file_value(file_frame_time, normalize_frame_time(frame_time_ms), "frame time", "ms")
    n_frames = int(frames.shape[0])
    bits = int(ds.get("BitsStored", 8 * frames.dtype.itemsize) or 8 * frames.dtype.itemsize)
    return Cine(
        frames=frames,
        frame_time_ms=frame_time,
        spacing_mm=spacing,
        spacing_source=spacing_source,
        bits_stored=bits,
        transfer_syntax=transfer_syntax_of(ds),
        r_wave_frames=dicom_r_wave_frames(ds, n_frames),
        ecg=dicom_ecg(ds, n_frames, frame_time),
        identifiers=dicom_identifiers(ds),
        modality=modality,
        blank_frames=detect_blank_frames(frames),
        source=str(path),
    )


def looks_like_dicom(path: Path) -> bool:
    """True for files named ``*.dcm``/``*.dicom``, with the DICM magic at byte 128, or (old files
    without preamble) starting with a little-endian group 0008 element."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return head[:2] == b"\x08\x00" and path.suffix.lower() not in (".txt", ".json", ".npy", ".nrrd")


def read_dicom_folder(path, *, spacing_mm=None, frame_time_ms=None) -> Cine:
    """Read a folder of single-frame DICOM files of one series as a cine.

    Frames are ordered by InstanceNumber, then AcquisitionTime (else
    ContentTime), then file name.  A folder that holds exactly one
    multi-frame file is read as that file.  When no file gives a frame time,
    the median difference of the frames' acquisition (or content) times is
    used.  ``spacing_mm``/``frame_time_ms`` as in :func:`read_dicom_cine`.
    """
    folder = Path(path)
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and looks_like_dicom(p)),
        key=lambda p: natural_sort_key(p.name),
    )
    if not files:
        raise CacError(
            f"{folder} holds no DICOM files; give a folder of single-frame DICOM or of PNG/JPEG frames"
        )
    entries = []
    for file in files:
        ds, messages = _read_dataset(file)
        if file.name == "DICOMDIR" or "DirectoryRecordSequence" in ds:
            continue
        entries.append((file, ds, messages))
    if not entries:
        raise CacError(f"{folder} holds no DICOM images; give the folder of the series' image files")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds, _ in entries}
    if len(series) > 1:
        raise CacError(
            f"{folder} mixes {len(series)} series; put one series' files in a folder and load that folder"
        )
    multi = [e for e in entries if int(e[1].get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        if len(entries) == 1:
            return read_dicom_cine(entries[0][0], spacing_mm=spacing_mm, frame_time_ms=frame_time_ms)
        raise CacError(
            f"{folder} holds {len(multi)} multi-frame file(s) among {len(entries)} files; load one cine file at a time"
        )

    def order(entry):
        _, ds, _ = entry
        number = ds.get("InstanceNumber")
        time_s = _frame_clock(ds)
        return (
            int(number) if number not in (None, "") else 10**9,
            time_s if time_s is not None else float("inf"),
        )

    entries.sort(key=order)  # stable: file-name order breaks ties
    first_path, first, _ = entries[0]
    modality = _check_modality(first, first_path)
    frames = []
    for file, ds, messages in entries:
        pixels = _decode_pixels(ds, file, messages)
        if pixels.shape[0] != 1:
            raise CacError(f"{file} holds {pixels.shape[0]} frames; load multi-frame files one at a time")
        if frames and pixels.shape[1:] != frames[0].shape:
            raise CacError(
                f"{file} is {pixels.shape[1]}x{pixels.shape[2]} but earlier frames are "
                f"{frames[0].shape[0]}x{frames[0].shape[1]}; all frames of a cine must have the same size"
            )
        frames.append(pixels[0])
    dtype = np.result_type(*[f.dtype for f in frames])
    stack = np.stack(frames).astype(dtype, copy=False)
    _check_frames(stack, folder)
    cine = _build_cine(first, stack, folder, spacing_mm, None, modality)
    if cine.frame_time_ms is None:
        times = [_frame_clock(ds) for _, ds, _ in entries]
        if all(t is not None for t in times):
            diffs = np.diff(np.asarray(times, dtype=float)) * 1000.0
            if diffs.size and np.median(diffs) > 0:
                cine.frame_time_ms = float(np.median(diffs))
    cine.frame_time_ms, _ = prefer_file_value(
        cine.frame_time_ms, normalize_frame_time(frame_time_ms), "frame time", "ms"
    )
    # The R Wave Pointer and ECG curve of a single-frame file describe that file only.
    cine.r_wave_frames = None
    cine.ecg = None
    cine.identifiers.pop("SOPInstanceUID", None)
    cine.identifiers.pop("InstanceNumber", None)
    cine.source = str(folder)
    return cine


__all__ = [
    "read_dicom_cine",
    "read_dicom_folder",
    "dicom_spacing",
    "dicom_frame_time",
    "dicom_r_wave_frames",
    "dicom_ecg",
    "dicom_identifiers",
    "decoder_problem",
    "looks_like_dicom",
    "transfer_syntax_name",
]
