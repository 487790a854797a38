"""The ROIs as a DICOM Segmentation (SEG) that references the source XA instance and its frames.

PACS and DICOM viewers read DICOM SEG, not ``.seg.nrrd``.  The SEG is written
with highdicom (binary segmentation, one segment "CAC ROI", algorithm
"SlicerCAC"), one SEG frame per cine frame with a ROI; each SEG frame's
Derivation Image / Source Image Sequence names the source SOP Instance UID and
its (1-based) Referenced Frame Number.  Patient and study attributes are
copied by highdicom from the source, and nothing else of the patient is added.

A legacy X-Ray Angiographic image has no plane position per frame (often no
Frame of Reference either; the ``cac phantom`` cines and some vendors' have
one, but still no positions), and highdicom only writes a multi-frame SEG of
a source whose frames each have a distinct plane position (it refuses "Only a
single frame is supported when the source image has no Frame of Reference
UID", and "Plane positions must not contain duplicates").  So unless the
source has such positions (:func:`_has_frame_positions`), a header-only copy
of it (pixels not read) is given a new Frame of Reference UID and plane
positions ``(0, 0, k)`` for frame ``k`` (orientation identity, spacing the
cine's or 1 mm); the SEG carries that frame of reference and those
positions, which say nothing about the patient and serve only to pair SEG
frames with source frames.  (A new frame of reference, not the source's: the
made-up positions must not be read as places in the patient.)

:func:`check_source` builds a SEG of a two-pixel ROI before the long work, so a
source highdicom cannot reference fails before anything is computed or written.

Needs highdicom: 0.23 and later need pydicom >= 3.0.1.  With pydicom 2.4
the last release that installs is highdicom 0.22.0 (pydicom >= 2.3, != 2.4.0),
and it needs numpy < 2 (it uses ``np.float_``): checked here, pydicom 2.4.4 +
highdicom 0.22.0 + numpy 1.26 gives the same round trip, numpy 2.0.2 fails.
3D Slicer 5.10 bundles pydicom 2.4.4 *and* numpy 2.0.2, so no highdicom
release runs in its Python as shipped: export the SEG with the ``cac``
command (its own environment) there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CacError, printable
from .fileutil import atomic_output, check_writable

SEGMENT_LABEL = "CAC ROI"


def _source_dataset(source):
    """The source DICOM file's header (no pixels), or a clear error when the cine is not one DICOM file."""
    from .dicom_io import looks_like_dicom

    path = Path(source)
    if not path.is_file() or not looks_like_dicom(path):
        raise CacError(f"--dicom-seg needs a DICOM cine file as input, but {path.name} is not one; "
                       "write the ROIs as roi.seg.nrrd instead, or identify in the DICOM file")
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if _n_frames(ds) < 1 or "SOPInstanceUID" not in ds:
        raise CacError(f"{path.name} has no SOP Instance UID or frames; a DICOM SEG cannot reference it")
    return ds


def check_source(source, out, overwrite: bool = False, check_output: bool = True) -> None:
    """Fail early (before inference) when the SEG cannot be written.

    Refused: a non-DICOM source, one highdicom cannot make a SEG of (tried with
    a ROI of one pixel on the first and on the last frame, kept in memory), an
    output that exists (without ``overwrite``) or cannot be written.
    ``check_output=False`` skips the output check, for a SEG that goes into a
    folder the caller creates and has checked itself.

    Raises
    ------
    CacError
        One line saying what is wrong and what to do.
    """
    _import_highdicom()
    ds = _source_dataset(source)
    if check_output:
        check_writable(out, overwrite)
    probe = np.zeros((_n_frames(ds), int(ds.Rows), int(ds.Columns)), bool)
    probe[0, 0, 0] = probe[-1, -1, -1] = True
    build_dicom_seg(source, probe)


def _import_highdicom():
    try:
        import highdicom
    except ImportError:
        raise CacError("--dicom-seg needs the highdicom package; install it with `pip install highdicom`") from None
    return highdicom


def _n_frames(ds) -> int:
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def _functional_group(ds, k: int, name: str):
    """Item 0 of sequence ``name`` for frame ``k``: the frame's own functional group, else the shared one."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", k), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index and items[index].get(name):
            return items[index].get(name)[0]
    return None


def _has_frame_positions(ds) -> bool:
    """Whether ``ds`` places each of its frames in its Frame of Reference, as highdicom needs.

    That is: a Frame of Reference UID and, for every frame, a plane position,
    orientation and pixel spacing (functional groups), the positions all
    distinct (highdicom pairs SEG frames with source frames by position).
    """
    n = _n_frames(ds)
    if "FrameOfReferenceUID" not in ds or len(ds.get("PerFrameFunctionalGroupsSequence") or ()) != n:
        return False
    positions = set()
    for k in range(n):
        position = _functional_group(ds, k, "PlanePositionSequence")
        orientation = _functional_group(ds, k, "PlaneOrientationSequence")
        measures = _functional_group(ds, k, "PixelMeasuresSequence")
        if (position is None or orientation is None or measures is None or "ImagePositionPatient" not in position
                or "ImageOrientationPatient" not in orientation or "PixelSpacing" not in measures):
            return False
        try:
            positions.add(tuple(float(v) for v in position.ImagePositionPatient))
        except (TypeError, ValueError):  # an unreadable position places nothing
            return False
    return len(positions) == n


def _add_frame_positions(ds, hd, spacing_mm) -> None:
    """Give the header copy ``ds`` a new frame of reference and positions ``(0, 0, k)`` (module docstring)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.FrameOfReferenceUID = hd.UID()
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        if keyword in ds:  # a root-level geometry would contradict the one given here
            delattr(ds, keyword)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    measures = Dataset()
    # Decimal String holds at most 16 characters: 6 significant digits (a micrometre of a mm spacing).
    measures.PixelSpacing = [f"{float(v):.6g}" for v in (spacing_mm or (1.0, 1.0))]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in range(_n_frames(ds)):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(k)]
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)


def build_dicom_seg(source, roi: np.ndarray, spacing_mm=None, *, software_version: str = ""):
    """The DICOM SEG of ``roi`` (n_frames, rows, cols) bool referencing the DICOM cine file ``source``, in memory.

    Frames without a ROI are left out (highdicom's ``omit_empty_frames``);
    when no frame has one, every frame is written, empty (a SEG needs a frame).

    Parameters
    ----------
    source : str or Path
        The DICOM cine file the ROIs were found on.
    roi : ndarray of bool, (n_frames, rows, cols)
        The ROI of each frame of ``source``.
    spacing_mm : (float, float), optional
        Pixel spacing written with made-up frame positions (module docstring); default 1 mm.
    software_version : str
        Recorded in the SEG; default this package's version.

    Returns
    -------
    highdicom.seg.Segmentation
        A pydicom Dataset; nothing is written.

    Raises
    ------
    CacError
        ``source`` is not a DICOM cine, ``roi`` does not match it, or highdicom cannot make a SEG of it.
    """
    hd = _import_highdicom()
    from pydicom.sr.codedict import codes

    from . import __version__

    ds = _source_dataset(source)
    n = _n_frames(ds)
    roi = np.asarray(roi, bool)
    if roi.shape != (n, int(ds.Rows), int(ds.Columns)):
        raise CacError(f"ROIs of shape {roi.shape} do not match {Path(source).name} "
                       f"({n} frames of {ds.Rows}x{ds.Columns}); write the SEG of this cine's ROIs")
    if not _has_frame_positions(ds):
        _add_frame_positions(ds, hd, spacing_mm)
    version = software_version or __version__
    import warnings

    try:
        description = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label=SEGMENT_LABEL,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.MorphologicallyAbnormalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="SlicerCAC", version=version, family=codes.cid7162.ArtificialIntelligence),
        )
        with warnings.catch_warnings():
            # highdicom re-checks the source's Patient Name format; the value is the source's, kept as is.
            warnings.simplefilter("ignore", UserWarning)
            return hd.seg.Segmentation(
                source_images=[ds],
                pixel_array=roi,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[description],
                series_instance_uid=hd.UID(),
                series_number=int(getattr(ds, "SeriesNumber", 0) or 0) + 9000,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="SlicerCAC",
                manufacturer_model_name="CAC Identifier",
                software_versions=version,
                device_serial_number="0",
                series_description="CAC ROI (AI)",
                omit_empty_frames=bool(roi.any()),
            )
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
        # highdicom's refusal of an unusual source header (its checks raise these): the user's file, not a bug.
        raise CacError(f"cannot make a DICOM SEG of {printable(Path(source).name, 200)} "
                       f"({printable(str(exc), 300)}); leave out --dicom-seg and use roi.seg.nrrd") from None


def write_dicom_seg(path, source, roi: np.ndarray, spacing_mm=None, *, overwrite: bool = False,
                    software_version: str = "") -> Path:
    """Write ``roi`` (n_frames, rows, cols) bool as a DICOM SEG referencing the DICOM cine file ``source``.

    See :func:`build_dicom_seg`; the file appears whole or not at all (:func:`.fileutil.atomic_output`).
    """
    seg = build_dicom_seg(source, roi, spacing_mm, software_version=software_version)
    with atomic_output(path, overwrite) as tmp:
        seg.save_as(tmp)
    return Path(path)


def read_dicom_seg(path, n_frames: int) -> np.ndarray:
    """The ROI masks of a SEG written here, back on the source's frames ``(n_frames, rows, cols)`` bool.

    Read with pydicom alone: each SEG frame goes to the source frame named by
    its Referenced Frame Number.
    """
    import pydicom

    seg = pydicom.dcmread(path)
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    out = np.zeros((n_frames, int(seg.Rows), int(seg.Columns)), bool)
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        out[int(source.ReferencedFrameNumber) - 1] |= pixels[i].astype(bool)
    return out
