"""Reading X-ray angiography cines from DICOM.

Two layouts are read:

- one multi-frame file (:func:`read_dicom_cine`): legacy X-Ray Angiographic
  Image Storage and Enhanced XA (functional groups), any transfer syntax that
  pydicom can decode with the installed plugins (uncompressed, deflated,
  RLE Lossless, JPEG Baseline/Extended/Lossless via pylibjpeg-libjpeg or
  Pillow, JPEG-LS via pylibjpeg-libjpeg, JPEG 2000 via Pillow/openjpeg);
- a folder of single-frame files of one series (:func:`read_dicom_folder`),
  ordered by InstanceNumber, then acquisition/content time, then file name.

The facts the workflow needs are taken from the tags by :mod:`.dicom_tags`
(see ``docs/cine_io.md``): pixel spacing at the isocentre, frame time, the R
Wave Pointer as 0-based frame indices and the ECG recorded with the cine.
This module reads the file, checks and decodes its pixel data, and builds
the :class:`~CACIdentifierLib.cine.Cine`.

Bad input raises :class:`~CACIdentifierLib.errors.CacError` with one line.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .blank import detect_blank_frames
from .cine import FRAME_TIME_RANGE_MS, SPACING_RANGE_MM, Cine, check_cine_size
from .dicom_tags import (
    XA_SOP_CLASSES,
    check_modality,
    dicom_ecg,
    dicom_frame_time,
    dicom_identifiers,
    dicom_r_wave_frames,
    dicom_spacing,
    exception_text,
    floats_of,
    format_value,
    frame_clock_s,
    is_empty_value,
)
from .errors import CacError, CacWarning, printable
from .fileutil import natural_sort_key

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
                f"{path} could not be read as DICOM ({exception_text(exc)}); the file may be truncated or corrupt"
            ) from None
        dropped = _parse_elements(ds)
    messages = [str(w.message) for w in caught]
    for tag, exc in dropped[:3]:
        warnings.warn(
            f"{path.name}: tag {tag} could not be read ({exception_text(exc)}); ignored", CacWarning, stacklevel=3
        )
    if len(dropped) > 3:
        warnings.warn(f"{path.name}: {len(dropped) - 3} more unreadable tags ignored", CacWarning, stacklevel=3)
    try:
        _fill_transfer_syntax(ds)
    except Exception as exc:  # a corrupt file meta group
        raise CacError(f"{path} has a corrupt file meta header ({exception_text(exc)}); the file is damaged") from None
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
            problem = f"transfer syntax {printable(uid, 80)} is not usable ({exception_text(exc)})"
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
        text = exception_text(exc)
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
            raise CacError(f"{path} is truncated ({exception_text(w.message)}); copy the complete file")

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
    if value is None or value == "" or is_empty_value(value):
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
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "").strip().upper()
    needed = 1 if photometric.startswith("MONOCHROME") else 3 if photometric.startswith(("RGB", "YBR")) else None
    if needed is not None and samples != needed:
        raise CacError(f"{path} gives PhotometricInterpretation {printable(photometric, 20)} with SamplesPerPixel "
                       f"{samples} (it needs {needed}); the header is inconsistent, export the cine again")
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
            f"the file gives {what} {format_value(file_value)} {unit}; the value given ({format_value(user_value)} {unit}) "
            "is ignored because the file's own value wins",
            CacWarning,
            stacklevel=3,
        )
    return file_value, False


def normalize_spacing(spacing_mm) -> tuple[float, float] | None:
    """A user spacing (number or (row, col) pair, mm) as a (row, col) tuple; CacError if not positive."""
    if spacing_mm is None:
        return None
    vals = floats_of(spacing_mm)
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
    modality = check_modality(ds, path)
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
        time_s = frame_clock_s(ds)
        return (
            number if number is not None else 10**9,
            time_s if time_s is not None else float("inf"),
        )

    entries.sort(key=order)  # stable: file-name order breaks ties
    first_path, first, _ = entries[0]
    modality = check_modality(first, first_path)
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
        times = [frame_clock_s(ds) for _, ds, _ in entries]
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
    "decoder_problem",
    "looks_like_dicom",
    "transfer_syntax_name",
]
