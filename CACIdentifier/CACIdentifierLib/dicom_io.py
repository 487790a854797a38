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
import os
import warnings
from pathlib import Path

import numpy as np

from .blank import detect_blank_frames
from .cine import FRAME_TIME_RANGE_MS, SPACING_RANGE_MM, Cine, EcgTrace, check_cine_size
from .errors import CacError, CacWarning, printable
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

# Physical ranges of the facts read from tags; a value outside is treated as absent (with a warning).
# FRAME_TIME_RANGE_MS and SPACING_RANGE_MM (cine.py) also bound the user's --frame-time and --spacing.
MAGNIFICATION_RANGE = (0.5, 10.0)  # Estimated Radiographic Magnification Factor, SID/SOD
DISTANCE_RANGE_MM = (1.0, 100_000.0)  # SID, SOD, source to isocentre
ECG_FREQUENCY_RANGE_HZ = (1.0, 100_000.0)


# --------------------------------------------------------------------------- reading the file


def _read_dataset(path: Path):
    """dcmread with the failures mapped to one-line CacErrors; returns (dataset, pydicom warnings)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _BoundedFile(path) as fp:
                ds = pydicom.dcmread(fp)
        except InvalidDicomError:
            # Files without the 128-byte preamble are legal in the wild; accept them only if
            # they parse into something that looks like an image.
            try:
                with _BoundedFile(path) as fp:
                    ds = pydicom.dcmread(fp, force=True)
            except Exception:
                ds = None
            if ds is None or "SOPClassUID" not in ds and "Rows" not in ds:
                raise CacError(
                    f"{path} is not a DICOM file; give a DICOM XA cine, a folder of frames or an .nrrd"
                ) from None
        except CacError:
            raise
        except Exception as exc:  # pydicom raises many types on corrupt files
            raise CacError(
                f"{path} could not be read as DICOM ({_exc_text(exc)}); the file may be truncated or corrupt"
            ) from None
        dropped = _parse_elements(ds)
    messages = [str(w.message) for w in caught]
    for tag, exc in dropped[:3]:
        warnings.warn(
            f"{path.name}: tag {tag} could not be read ({_exc_text(exc)}); ignored", CacWarning, stacklevel=3
        )
    if len(dropped) > 3:
        warnings.warn(f"{path.name}: {len(dropped) - 3} more unreadable tags ignored", CacWarning, stacklevel=3)
    try:
        _fill_transfer_syntax(ds)
    except Exception as exc:  # a corrupt file meta group
        raise CacError(f"{path} has a corrupt file meta header ({_exc_text(exc)}); the file is damaged") from None
    return ds, messages


class _BoundedFile:
    """A buffered file whose reads never ask for more than the bytes left in it.

    An element whose length field was corrupted to gigabytes makes pydicom
    read that many bytes, and Python allocates the whole request before
    reading: a 2 MB file could demand 4 GB.  Capping each read at the rest of
    the file keeps memory at the file's size; pydicom then sees the short read
    and reports the file as truncated.
    """

    def __init__(self, path):
        self._file = open(path, "rb")
        self._size = os.fstat(self._file.fileno()).st_size
        self.name = str(path)

    def read(self, size=-1):
        if size is not None and size >= 0:
            size = max(0, min(size, self._size - self._file.tell()))
        return self._file.read(size)

    def seek(self, *args):
        return self._file.seek(*args)

    def tell(self):
        return self._file.tell()

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _exc_text(exc: BaseException) -> str:
    """A parser's exception as a short printable phrase (its text may quote raw bytes of the file)."""
    text = " ".join(str(exc).split())
    return printable(text or type(exc).__name__, 160)


def _parse_elements(ds, depth: int = 0) -> list:
    """Convert every element now (pydicom converts lazily), dropping those that cannot be converted.

    pydicom parses a value the first time it is accessed, so a corrupt VR or
    value would otherwise raise (``NotImplementedError``, ``ValueError``...)
    wherever the tag happens to be read.  Returns ``[(tag, exception)]`` of
    the dropped elements.  Pixel data is not copied (its value is raw bytes).
    """
    dropped = []
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            value = element.value
        except Exception as exc:  # pydicom raises several types for corrupt elements
            dropped.append((tag, exc))
            del ds[tag]
            continue
        if element.VR == "SQ" and value and depth < 8:
            for item in value:
                dropped.extend(_parse_elements(item, depth + 1))
    return dropped


def _fill_transfer_syntax(ds) -> None:
    """Give a dataset read without file meta (no preamble) the uncompressed syntax it was parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None and not hasattr(ds, "original_encoding"):  # pydicom 2.x
        implicit, little = getattr(ds, "is_implicit_VR", None), getattr(ds, "is_little_endian", None)
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
    from pydicom.uid import UID

    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.x: Slicer 5.8 and 5.10 bundle pydicom 2.4.4
        return _decoder_problem_pydicom2(uid)
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


def _pixel_array(ds) -> np.ndarray:
    """``ds.pixel_array``; with pydicom 2, through pylibjpeg when it can, the decoder pydicom 3 takes.

    JPEG Baseline decoders differ by one grey level here and there; pydicom 2
    would take Pillow first, so the same file would give other pixels in
    Slicer (pydicom 2.4.4) than in the command line (pydicom 3).
    """
    import pydicom

    if int(pydicom.__version__.split(".")[0]) < 3:
        from pydicom.pixel_data_handlers import pylibjpeg_handler

        syntax = transfer_syntax_of(ds)
        if syntax and pylibjpeg_handler.is_available() and pylibjpeg_handler.supports_transfer_syntax(syntax):
            ds.convert_pixel_data(handler_name="pylibjpeg")
    return ds.pixel_array


def _decoder_problem_pydicom2(uid: str) -> str | None:
    """:func:`decoder_problem` with pydicom 2's pixel data handlers."""
    import pydicom.config
    from pydicom.uid import UID

    name = transfer_syntax_name(uid)
    handlers = [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(UID(uid))]
    if not handlers:
        return (
            f"pixel data in {name} ({uid}) cannot be decoded: pydicom has no decoder for this transfer "
            "syntax; export the frames (e.g. with ffmpeg or dcmtk's dcmj2pnm) and load the folder of images"
        )
    if any(h.is_available() for h in handlers):
        return None
    missing = "; ".join(
        f"{getattr(h, 'HANDLER_NAME', h.__name__)} ({', '.join(v[1] for v in getattr(h, 'DEPENDENCIES', {}).values())})"
        for h in handlers
    )
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
    if "PixelData" in ds and not ds.PixelData:
        raise CacError(f"{path} has an empty pixel data element: its pixels were stripped; copy the complete file")
    n_frames, rows, cols, samples, bits = _pixel_geometry(ds, path)
    uid = transfer_syntax_of(ds)
    if uid:
        try:
            problem = decoder_problem(uid)
        except Exception as exc:  # a corrupt Transfer Syntax UID (not a UID at all)
            problem = f"transfer syntax {printable(uid, 80)} is not usable ({_exc_text(exc)})"
        if problem:
            raise CacError(f"{path}: {problem}")
        mismatch = _native_length_problem(ds, uid, n_frames, rows, cols, samples, bits)
        if mismatch:
            raise CacError(f"{path} {mismatch}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = _pixel_array(ds)
    except Exception as exc:  # decoders raise many types on corrupt data
        text = _exc_text(exc)
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
            raise CacError(f"{path} is truncated ({_exc_text(w.message)}); copy the complete file")

    expected = (n_frames, rows, cols) if samples == 1 else (n_frames, rows, cols, samples)
    if pixels.shape != expected and not (n_frames == 1 and pixels.shape == expected[1:]):
        raise CacError(
            f"{path}: the pixel data decodes to shape {pixels.shape}, but the header announces "
            f"{' x '.join(map(str, expected))}; the file is corrupt"
        )
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
        bits = _int_tag(ds, "BitsStored", 8 * pixels.dtype.itemsize)
        bits = bits if 1 <= bits <= 8 * pixels.dtype.itemsize else 8 * pixels.dtype.itemsize
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


def _int_tag(ds, keyword: str, default: int | None = None) -> int | None:
    """An integer tag's value, or ``default`` when it is absent, empty or not one integer."""
    value = ds.get(keyword)
    if value is None or value == "" or _is_empty(value):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    if not np.isfinite(number) or number != int(number):
        return default
    return int(number)


def _pixel_geometry(ds, path: Path) -> tuple[int, int, int, int, int]:
    """(frames, rows, columns, samples per pixel, bits allocated) from the header, checked before decoding.

    Sizes must be positive and sane (see :func:`~.cine.check_cine_size`) and
    the decoded frames must fit in memory; otherwise a :class:`CacError`
    says what the header claims.
    """
    rows, cols = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
    if rows is None or cols is None:
        raise CacError(f"{path} gives no valid Rows and Columns (image size); the header is corrupt")
    n_frames = _int_tag(ds, "NumberOfFrames", 1)
    samples = _int_tag(ds, "SamplesPerPixel", 1)
    bits = _int_tag(ds, "BitsAllocated")
    if samples not in (1, 3):
        raise CacError(f"{path} gives SamplesPerPixel {samples}; an image has 1 (grey) or 3 (colour)")
    if bits not in (1, 8, 16, 32, 64):
        raise CacError(f"{path} gives BitsAllocated {bits}; expected 8 or 16 (the header is corrupt)")
    check_cine_size(n_frames, rows, cols, max(1, bits // 8) * samples, path)
    return n_frames, rows, cols, samples, bits


def _native_length_problem(ds, uid: str, n_frames, rows, cols, samples, bits) -> str | None:
    """For uncompressed pixel data: why its length does not fit the header's image size, or None.

    Shorter is a truncated file.  Longer by more than one frame means the
    header's sizes are wrong (a corrupted Rows would otherwise turn 96 frames
    into 49,152).
    """
    from pydicom.uid import UID

    if UID(uid).is_compressed or "PixelData" not in ds:
        return None
    frame_bytes = (rows * cols * samples * bits + 7) // 8
    expected = (rows * cols * samples * bits * n_frames + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        return (
            f"is truncated (pixel data has {actual} of the {expected} bytes its {n_frames} frames need); "
            "copy the complete file"
        )
    if actual > expected + max(frame_bytes, 2):
        return (
            f"has {actual} bytes of pixel data but the header's {n_frames} frames of {rows} x {cols} pixels "
            f"need {expected}; the header is corrupt"
        )
    return None


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
        f"the file gives {what} {_fmt(value)} {unit}, outside the physical range "
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
    display rate; else ``(None, "unknown")``.  A value outside
    ``FRAME_TIME_RANGE_MS`` is ignored with a warning.
    """

    def checked(value, tag):
        return _in_range(value, FRAME_TIME_RANGE_MS, f"frame time ({tag})", "ms")

    frame_time = checked(_positive(find_value(ds, "FrameTime")), "FrameTime")
    if frame_time:
        return frame_time, "FrameTime"
    vector = _floats(find_value(ds, "FrameTimeVector"))
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
    if value is None or _is_empty(value):
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
        if value is None or value == "" or _is_empty(value):
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
    if descriptor is not None and not _is_empty(descriptor):
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
    if units is not None and not _is_empty(units):
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
            warnings.warn(f"the ECG waveform could not be read ({_exc_text(exc)}); ignored", CacWarning, stacklevel=3)
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
        offset = _floats(item.get("MultiplexGroupTimeOffset", 0.0) or 0.0)
        problem = None
        if data.ndim != 2 or data.shape[0] < 2 or channel >= data.shape[1]:
            problem = f"has {data.shape} samples, not a trace"
        elif not frequency or not ECG_FREQUENCY_RANGE_HZ[0] <= frequency <= ECG_FREQUENCY_RANGE_HZ[1]:
            problem = f"has no usable sampling frequency ({_fmt(frequency) if frequency else 'none'} Hz)"
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
    lo, hi = SPACING_RANGE_MM
    if not vals or len(vals) > 2 or any(not np.isfinite(v) or not lo <= v <= hi for v in vals):
        raise CacError(
            f"spacing {printable(repr(spacing_mm), 60)} is not valid; give a number of mm between {lo:g} and "
            f"{hi:g}, e.g. --spacing 0.3"
        )
    return (vals[0], vals[-1])


def normalize_frame_time(frame_time_ms) -> float | None:
    if frame_time_ms is None:
        return None
    try:
        value = float(frame_time_ms)
    except (TypeError, ValueError):
        value = float("nan")
    lo, hi = FRAME_TIME_RANGE_MS
    if not np.isfinite(value) or not lo <= value <= hi:
        raise CacError(
            f"frame time {printable(repr(frame_time_ms), 60)} is not valid; give a number of ms between "
            f"{lo:g} and {hi:g}, e.g. 66.7"
        )
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
    bits = _int_tag(ds, "BitsStored", 8 * frames.dtype.itemsize)
    bits = bits if 1 <= bits <= 8 * frames.dtype.itemsize else 8 * frames.dtype.itemsize
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
    multi = [e for e in entries if _int_tag(e[1], "NumberOfFrames", 1) > 1]
    if multi:
        if len(entries) == 1:
            return read_dicom_cine(entries[0][0], spacing_mm=spacing_mm, frame_time_ms=frame_time_ms)
        raise CacError(
            f"{folder} holds {len(multi)} multi-frame file(s) among {len(entries)} files; load one cine file at a time"
        )

    def order(entry):
        _, ds, _ = entry
        number = _int_tag(ds, "InstanceNumber")
        time_s = _frame_clock(ds)
        return (
            number if number is not None else 10**9,
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
        if not frames:
            check_cine_size(len(entries), pixels.shape[1], pixels.shape[2], pixels.dtype.itemsize, folder)
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
