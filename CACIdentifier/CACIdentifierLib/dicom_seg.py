"""The ROIs as a DICOM Segmentation (SEG) that references the source XA instance and its frames.

PACS and DICOM viewers read DICOM SEG, not ``.seg.nrrd``.  The SEG is written
with highdicom (binary segmentation, one segment "CAC ROI", algorithm
"SlicerCAC"), one SEG frame per cine frame with a ROI; each SEG frame's
Derivation Image / Source Image Sequence names the source SOP Instance UID and
its (1-based) Referenced Frame Number.  Patient and study attributes are
copied by highdicom from the source, and nothing else of the patient is added.

A legacy X-Ray Angiographic image has no Frame of Reference and no plane
positions, and highdicom only writes multi-frame SEGs with them (it refuses
"Only a single frame is supported when the source image has no Frame of
Reference UID").  So a header-only copy of the source (pixels not read) is
given a new Frame of Reference UID and plane positions ``(0, 0, k)`` for
frame ``k`` (orientation identity, spacing the cine's or 1 mm); the SEG
carries that frame of reference and those positions, which say nothing about
the patient and serve only to pair SEG frames with source frames.

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

from .errors import CacError
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
    if int(getattr(ds, "NumberOfFrames", 1) or 1) < 1 or "SOPInstanceUID" not in ds:
        raise CacError(f"{path.name} has no SOP Instance UID or frames; a DICOM SEG cannot reference it")
    return ds


def check_source(source, out, overwrite: bool = False) -> None:
    """Fail early (before inference) when the SEG cannot be written: non-DICOM source or existing output."""
    _import_highdicom()
    _source_dataset(source)
    check_writable(out, overwrite)


def _import_highdicom():
    try:
        import highdicom
    except ImportError:
        raise CacError("--dicom-seg needs the highdicom package; install it with `pip install highdicom`") from None
    return highdicom


def write_dicom_seg(path, source, roi: np.ndarray, spacing_mm=None, *, overwrite: bool = False,
                    software_version: str = "") -> Path:
    """Write ``roi`` (n_frames, rows, cols) bool as a DICOM SEG referencing the DICOM cine file ``source``.

    Frames without a ROI are left out (highdicom's ``omit_empty_frames``);
    when no frame has one, every frame is written, empty (a SEG needs a frame).
    """
    hd = _import_highdicom()
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.sr.codedict import codes

    from . import __version__

    ds = _source_dataset(source)
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    roi = np.asarray(roi, bool)
    if roi.shape != (n, int(ds.Rows), int(ds.Columns)):
        raise CacError(f"ROIs of shape {roi.shape} do not match {Path(source).name} "
                       f"({n} frames of {ds.Rows}x{ds.Columns}); write the SEG of this cine's ROIs")
    if "FrameOfReferenceUID" not in ds:
        # See the module docstring: positions that only pair SEG frames with source frames.
        ds.FrameOfReferenceUID = hd.UID()
        shared = Dataset()
        orientation = Dataset()
        orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PlaneOrientationSequence = Sequence([orientation])
        measures = Dataset()
        measures.PixelSpacing = [float(v) for v in (spacing_mm or (1.0, 1.0))]
        measures.SliceThickness = 1.0
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per_frame = []
        for k in range(n):
            item, position = Dataset(), Dataset()
            position.ImagePositionPatient = [0.0, 0.0, float(k)]
            item.PlanePositionSequence = Sequence([position])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    version = software_version or __version__
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="SlicerCAC", version=version, family=codes.cid7162.ArtificialIntelligence),
    )
    import warnings

    with warnings.catch_warnings():
        # highdicom re-checks the source's Patient Name format; the value is the source's, kept as is.
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
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
