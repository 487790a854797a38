"""Loading a cine from whatever the user points at.

:func:`load_cine` dispatches on the path:

===============================  ==============================================
path                             reader
===============================  ==============================================
``*.nrrd`` / ``*.seq.nrrd``      :func:`CACIdentifierLib.nrrd_io.read_nrrd_cine`
                                 (frame stack or volume sequence, slicer-core)
folder of PNG/JPEG/TIFF/BMP      :func:`read_image_folder` (natural name order)
folder of DICOM files            :func:`CACIdentifierLib.dicom_io.read_dicom_folder`
any other file                   :func:`CACIdentifierLib.dicom_io.read_dicom_cine`
===============================  ==============================================

User-given ``spacing_mm``/``frame_time_ms`` fill in what the file lacks; when
the file has its own value, the file wins and a
:class:`~CACIdentifierLib.errors.CacWarning` says so if the two differ by
more than 1 %.  Image folders carry neither, so the user's values are used
(``spacing_source="user"``) or the facts stay unknown.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from .blank import detect_blank_frames
from .cine import MAX_FRAME_SIDE, Cine, check_cine_size
from .errors import CacError, CacWarning, printable
from .fileutil import natural_sort_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NRRD_SUFFIXES = (".nrrd", ".nhdr")

def _missing_path_error(path: Path) -> CacError:
    return CacError(
        f"{path} does not exist; check the path of the cine (DICOM file, folder of frames or .nrrd)"
    )


def load_cine(path, *, spacing_mm=None, frame_time_ms=None) -> Cine:
    """Load a cine from a DICOM file, a DICOM folder, an image folder or an NRRD file.

    Parameters
    ----------
    path : str or Path
        What to read (see the module docstring for the dispatch).
    spacing_mm : float or (float, float), optional
        Pixel spacing (row, column) in mm at the isocentre, used when the file
        has none.
    frame_time_ms : float, optional
        Time between frames in ms, used when the file has none.

    Returns
    -------
    Cine
        With ``blank_frames`` filled in by :func:`detect_blank_frames`.

    Raises
    ------
    CacError
        Missing path, empty folder, not a cine, undecodable or truncated file,
        a single frame, NaN or infinite pixel values.
    """
    path = Path(path)
    cine = _load(path, spacing_mm, frame_time_ms)
    frames = np.asarray(cine.frames)
    if frames.dtype.kind == "f" and not np.isfinite(frames).all():
        bad = int(np.count_nonzero(~np.isfinite(frames)))
        raise CacError(f"{printable(str(path), 200)} holds {bad} NaN or infinite pixel value(s); "
                       "re-export the cine with real pixel values")
    return cine


def _load(path: Path, spacing_mm, frame_time_ms) -> Cine:
    """:func:`load_cine`'s dispatch on what ``path`` is."""
    from . import dicom_io

    if not path.exists():
        raise _missing_path_error(path)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        if not files:
            raise CacError(f"folder {path} is empty; give a folder of DICOM or PNG/JPEG frames")
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        dicoms = [p for p in files if dicom_io.looks_like_dicom(p)]
        if dicoms:
            return dicom_io.read_dicom_folder(path, spacing_mm=spacing_mm, frame_time_ms=frame_time_ms)
        if images:
            return read_image_folder(path, spacing_mm, frame_time_ms)
        raise CacError(
            f"folder {path} holds neither DICOM files nor PNG/JPEG/TIFF frames; give a folder of cine frames"
        )
    if not path.is_file():
        # A device or pipe (/dev/zero, /dev/urandom, a FIFO) would be read forever.
        raise CacError(f"{path} is not a regular file or folder; give a DICOM file, a folder of frames or an .nrrd")
    suffix = path.suffix.lower()
    if suffix in NRRD_SUFFIXES:
        return _read_nrrd(path, spacing_mm, frame_time_ms)
    if suffix in IMAGE_SUFFIXES:
        raise CacError(
            f"{path} is a single image; a cine needs at least 2 frames: give the folder holding all its frames"
        )
    return dicom_io.read_dicom_cine(path, spacing_mm=spacing_mm, frame_time_ms=frame_time_ms)


def _read_nrrd(path: Path, spacing_mm, frame_time_ms) -> Cine:
    from . import dicom_io
    from .nrrd_io import read_nrrd_cine

    cine = read_nrrd_cine(path)
    if cine.n_frames < 2:
        raise CacError(f"{path} holds a single frame; a cine needs at least 2 frames")
    user_spacing = dicom_io.normalize_spacing(spacing_mm)
    if cine.spacing_source == "unknown" or cine.spacing_mm is None:
        if user_spacing is not None:
            cine.spacing_mm, cine.spacing_source = user_spacing, "user"
        else:
            cine.spacing_mm = None
    else:
        dicom_io.prefer_file_value(cine.spacing_mm, user_spacing, "pixel spacing", "mm")
    cine.frame_time_ms, _ = dicom_io.prefer_file_value(
        cine.frame_time_ms, dicom_io.normalize_frame_time(frame_time_ms), "frame time", "ms"
    )
    if not cine.blank_frames:
        cine.blank_frames = detect_blank_frames(cine.frames)
    cine.source = cine.source or str(path)
    return cine


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # The header's size is checked before decoding: a small file can claim 30000 x 30000 pixels.
            if max(image.size) > MAX_FRAME_SIDE:
                raise CacError(
                    f"{path} claims {image.size[0]} x {image.size[1]} pixels, more than the {MAX_FRAME_SIDE} "
                    "a cine frame may have; the file is corrupt or not a frame"
                )
            image.load()
            mode = image.mode
            array = np.asarray(image)
            if array.ndim == 3:
                rgb = array[..., :3]
                if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                    array = np.ascontiguousarray(rgb[..., 0])
                else:
                    warnings.warn(
                        f"{path.name} is a colour image; converted to grey (ITU-R 601 luma)",
                        CacWarning,
                        stacklevel=3,
                    )
                    array = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise CacError(
            f"{path} could not be read as an image ({printable(' '.join(str(exc).split()), 160)}); "
            "the file may be truncated or corrupt"
        ) from None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif mode.startswith("I") and array.dtype != np.uint16:
        if array.min() < 0 or array.max() > 65535:
            raise CacError(
                f"{path} has pixel values outside 0..65535; export the frames as 8- or 16-bit images"
            )
        array = array.astype(np.uint16)
    return array


def _name_pattern(path: Path) -> tuple[str, str]:
    return re.sub(r"\d+", "#", path.stem.lower()), path.suffix.lower()


def _frame_group(files: list[Path]) -> list[Path]:
    """The largest group of files sharing a name pattern (digits as wildcards) and extension.

    Exported frames are named alike (``IM0_01.jpg``...); a montage or preview
    saved beside them (``proj0_montage.png``) is not a frame.
    """
    groups: dict[tuple[str, str], list[Path]] = {}
    for file in files:
        groups.setdefault(_name_pattern(file), []).append(file)
    return max(groups.values(), key=len)


def read_image_folder(path, spacing_mm=None, frame_time_ms=None) -> Cine:
    """Read a folder of PNG/JPEG/TIFF/BMP frames as a cine.

    Frames are the largest group of image files named alike (digit runs as
    wildcards, same extension), ordered by the natural sort of their names
    (``IM0_2`` before ``IM0_10``); other files (a ``dicominfo.txt``, a
    ``montage.png``) are ignored, with a warning for ignored images.
    Grey images are kept as stored (8- or 16-bit); colour images are converted
    to grey with the ITU-R 601 luma weights (a warning says so).  Image files
    carry no geometry or timing: ``spacing_mm`` and ``frame_time_ms`` are the
    user's, else unknown (``None``).
    """
    from . import dicom_io

    folder = Path(path)
    if not folder.is_dir():
        raise _missing_path_error(folder) if not folder.exists() else CacError(f"{folder} is not a folder")
    candidates = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not candidates:
        raise CacError(f"folder {folder} holds no PNG/JPEG/TIFF frames; give a folder of cine frames")
    files = sorted(_frame_group(candidates), key=lambda p: natural_sort_key(p.name))
    kept = set(files)
    ignored = sorted((p for p in candidates if p not in kept), key=lambda p: natural_sort_key(p.name))
    if ignored:
        # Named, so a user can tell a stray montage from frames misnamed by an export.
        shown = ", ".join(printable(p.name, 60) for p in ignored[:3])
        more = f" and {len(ignored) - 3} more" if len(ignored) > 3 else ""
        warnings.warn(
            f"{len(ignored)} image(s) in {printable(folder.name, 80)} do not follow the frames' naming "
            f"({printable(files[0].name, 60)}...) and were ignored: {shown}{more}",
            CacWarning,
            stacklevel=2,
        )
    if len(files) < 2:
        raise CacError(f"folder {folder} holds a single frame; a cine needs at least 2 frames")
    frames = []
    for file in files:
        array = _read_image(file)
        if not frames:
            check_cine_size(len(files), array.shape[0], array.shape[1], array.dtype.itemsize, folder)
        if frames and array.shape != frames[0].shape:
            raise CacError(
                f"{file.name} is {array.shape[0]}x{array.shape[1]} but {files[0].name} is "
                f"{frames[0].shape[0]}x{frames[0].shape[1]}; all frames of a cine must have the same size"
            )
        frames.append(array)
    dtype = np.result_type(*[f.dtype for f in frames])
    stack = np.stack(frames).astype(dtype, copy=False)
    spacing = dicom_io.normalize_spacing(spacing_mm)
    bits = 8 if stack.dtype == np.uint8 else int(max(8, int(stack.max()).bit_length()))
    return Cine(
        frames=stack,
        frame_time_ms=dicom_io.normalize_frame_time(frame_time_ms),
        spacing_mm=spacing,
        spacing_source="user" if spacing is not None else "unknown",
        bits_stored=bits,
        transfer_syntax=None,
        r_wave_frames=None,
        ecg=None,
        identifiers={},
        modality=None,
        blank_frames=detect_blank_frames(stack),
        source=str(folder),
    )


__all__ = ["load_cine", "read_image_folder", "detect_blank_frames", "natural_sort_key"]
