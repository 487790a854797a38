"""The files 3D Slicer reads and writes, without MRML: ``.nrrd``, ``.seq.nrrd``, ``.seg.nrrd``.

Frame stacks and volume sequences are read and written with pynrrd, segmentations
with slicerio (which knows Slicer's ``Segment*`` and ``Segmentation_*`` header
fields).  Nothing here imports ``slicer``: the ``cac`` command line, the worker
that CAC Identifier starts, and the training jobs run in any Python, including
``PythonSlicer``, where Slicer's module logics are not loaded.  The tests check
every file against slicer-core's own storage nodes (what Slicer uses to load
them), and files written by slicer-core against these readers.

Geometry (docs/ARCHITECTURE.md, "Geometry of files")
----------------------------------------------------
- Frame-stack volume (``.nrrd``): slice ``k`` = frame ``k``; voxel ``(i, j,
  k)`` = column ``i``, row ``j`` of frame ``k``; LPS identity directions,
  spacing ``(column_spacing, row_spacing, 1)`` mm, origin 0.
- ``.seq.nrrd``: a 4D NRRD ``domain domain domain list`` (one 2D frame per list
  item), the index values in ``axis 3 index values`` (time in ms, or frame
  numbers when the frame time is unknown), ``DataNodeClassName`` =
  ``vtkMRMLScalarVolumeNode``: Slicer's ``vtkMRMLVolumeSequenceStorageNode``
  layout.
- ``.seg.nrrd``: on the frame-stack grid, overlapping segments in layers, the
  frame-stack grid stored as the ``Reference image geometry`` conversion
  parameter, so Slicer opens it over the frame-stack volume.
- ``CAC_*`` key-value pairs carry the spacing source (``unknown`` when the
  spacing was not known and 1.0 was written), frame time and R waves; a
  ``.seg.nrrd`` written here carries the spacing source and the content
  fingerprint of its cine (``CAC_source_fingerprint``,
  :func:`~CACIdentifierLib.cine.pixel_fingerprint`).

>>> import numpy as np
>>> from CACIdentifierLib.cine import Cine
>>> cine = Cine(frames=np.zeros((3, 4, 5), np.uint8), frame_time_ms=66.7, spacing_mm=(0.2, 0.3))
>>> path = write_frame_stack_nrrd(cine, "run.nrrd")                  # doctest: +SKIP
>>> read_nrrd_cine(path).frames.shape                                # doctest: +SKIP
(3, 4, 5)
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cine import FRAME_TIME_RANGE_MS, Cine
from .errors import CacError, CacWarning, printable
from .fileutil import atomic_output

# Key-value pairs of this project (node attributes in Slicer; NRRD ``key:=value`` in files).
ATTR_SPACING_SOURCE = "CAC_spacing_source"
ATTR_FRAME_TIME_MS = "CAC_frame_time_ms"
ATTR_R_WAVE_FRAMES = "CAC_r_wave_frames"
ATTR_SOURCE = "CAC_source"
ATTR_ROLE = "CAC_role"
# In segmentations: the content fingerprint of the cine they were drawn on (cine.pixel_fingerprint).
ATTR_SOURCE_FINGERPRINT = "CAC_source_fingerprint"
_FINGERPRINT_PATTERN = r"pixels-sha256:[0-9a-f]{64}"

DEFAULT_SEGMENT_COLORS = (
    (1.0, 0.85, 0.0),  # CAC ROI: yellow
    (0.9, 0.2, 0.2),
    (0.2, 0.7, 0.3),
    (0.25, 0.45, 0.95),
    (0.8, 0.4, 0.9),
    (0.95, 0.55, 0.2),
)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_REFERENCE_GEOMETRY = "Reference image geometry"
_REFERENCE_GEOMETRY_HELP = (
    "Image geometry description string determining the geometry of the labelmap that is created in course "
    "of conversion. Can be copied from a volume, using the button."
)
_SEQUENCE_AXIS = 3


@dataclass
class SegFile:
    """The segments of one ``.seg.nrrd`` file on the frame-stack geometry.

    ``segments`` maps each segment name to a bool array ``(n_frames, rows,
    columns)`` in frame order; ``spacing_mm`` is ``(row_spacing,
    column_spacing)`` in mm as stored in the file (1.0 when the cine's spacing
    was unknown); ``colors`` maps segment names to RGB in [0, 1].

    ``ijk_to_ras`` (4x4) places the arrays in physical space: array element
    ``[k, j, i]`` is at ``ijk_to_ras @ (i, j, k, 1)``; ``has_reference`` is
    true when the grid is the reference image geometry stored in the file
    (the volume it was drawn on), false when it is only the labelmap's own
    extent (padded from index 0).  :mod:`CACIdentifierLib.seg_align` uses them
    to compare files saved with different extents or origins.

    ``source_fingerprint`` is the content fingerprint of the cine the file
    was drawn on, when the file records it (files written by this project);
    ``spacing_known`` is False when the file says its spacing was unknown
    (1.0 written), True when it says it was known, None when it says
    nothing (Slicer's own files, older ones).
    """

    segments: dict[str, np.ndarray]
    spacing_mm: tuple[float, float]
    colors: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    path: str = ""
    ijk_to_ras: np.ndarray | None = None
    has_reference: bool = False
    source_fingerprint: str | None = None
    spacing_known: bool | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        first = next(iter(self.segments.values()), None)
        return tuple(first.shape) if first is not None else (0, 0, 0)

    def union(self) -> np.ndarray:
        """The union of all segments, ``(n_frames, rows, columns)`` bool."""
        out = np.zeros(self.shape, dtype=bool)
        for mask in self.segments.values():
            out |= mask
        return out


# --------------------------------------------------------------------------- shared helpers


def format_number(value: float) -> str:
    """A float as Slicer writes index values and attributes (10 significant digits, no trailing zeros)."""
    return format(float(value), ".10g")


def round_spacing(value: float) -> float:
    # NRRD stores spacings as direction vectors; the round trip adds noise in the 17th digit.
    return float(f"{value:.12g}")


def xy_spacing(spacing_mm) -> tuple[float, float]:
    """(column spacing, row spacing) in mm for the x and y axes from ``(row, column)``; 1.0 when unknown."""
    if spacing_mm is None:
        return 1.0, 1.0
    row, col = spacing_mm
    return float(col), float(row)


def cine_attributes(cine: Cine, record_source: bool = True) -> dict[str, str]:
    """The ``CAC_*`` key-value pairs that carry a cine's metadata in nodes and files.

    ``record_source=False`` leaves out ``CAC_source`` (the path the cine was read from): files are
    shared (with annotators, other sites), and an archive path often names the patient.
    """
    if cine.spacing_mm is None:
        source = "unknown"
    else:
        # A spacing without a recorded source (Cine's default) is still a known spacing.
        source = cine.spacing_source if cine.spacing_source not in ("", "unknown") else "given"
    attrs = {
        ATTR_SPACING_SOURCE: source,
        ATTR_FRAME_TIME_MS: "unknown" if cine.frame_time_ms is None else format_number(cine.frame_time_ms),
    }
    if cine.r_wave_frames:
        attrs[ATTR_R_WAVE_FRAMES] = " ".join(str(int(k)) for k in cine.r_wave_frames)
    if cine.source and record_source:
        attrs[ATTR_SOURCE] = str(cine.source)
    return attrs


def apply_attributes(cine: Cine, get_attribute) -> None:
    """Fill ``cine``'s metadata from ``CAC_*`` attributes (``get_attribute(name) -> str | None``)."""
    source = get_attribute(ATTR_SPACING_SOURCE)
    if source == "unknown":
        cine.spacing_mm = None
        cine.spacing_source = "unknown"
    elif source:
        cine.spacing_source = source
    frame_time = get_attribute(ATTR_FRAME_TIME_MS)
    if frame_time and frame_time != "unknown":
        with contextlib.suppress(ValueError):
            value = float(frame_time)
            if math.isfinite(value) and FRAME_TIME_RANGE_MS[0] <= value <= FRAME_TIME_RANGE_MS[1]:
                cine.frame_time_ms = value
            else:
                warnings.warn(f"{ATTR_FRAME_TIME_MS} {printable(frame_time, 40)} is not a frame time; it is "
                              "ignored (give --frame-time MS if the cine needs one)", CacWarning, stacklevel=2)
    r_waves = get_attribute(ATTR_R_WAVE_FRAMES)
    if r_waves:
        with contextlib.suppress(ValueError):
            cine.r_wave_frames = [int(v) for v in r_waves.split()]


def normalize_segments(segments, what: str = "segments") -> dict[str, np.ndarray]:
    """``{name: (n_frames, rows, columns) bool}`` from a dict of masks (2D masks are one frame) or one array."""
    if isinstance(segments, np.ndarray):
        segments = {"CAC ROI": segments}
    if not segments:
        raise CacError(f"no {what} to write; give at least one named mask array")
    out: dict[str, np.ndarray] = {}
    shape = None
    for name, mask in segments.items():
        mask = np.asarray(mask)
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3:
            raise CacError(f"segment {name!r} must be a (n_frames, rows, columns) mask, got shape {mask.shape}")
        if shape is None:
            shape = mask.shape
        elif mask.shape != shape:
            raise CacError(f"segment {name!r} has shape {mask.shape} but the others have {shape}")
        out[str(name)] = mask.astype(bool)
    return out


def _ascii(text: str) -> str:
    # NRRD headers are ASCII; a non-ASCII file name must not make the write fail.
    return str(text).encode("ascii", "backslashreplace").decode("ascii").replace("\n", " ")


def _nrrd():
    try:
        import nrrd
    except ImportError as exc:
        raise CacError("the pynrrd package is missing; install it with `pip install pynrrd`") from exc
    return nrrd


def _frame_stack_ijk_to_lps(spacing_xy) -> np.ndarray:
    return np.diag([float(spacing_xy[0]), float(spacing_xy[1]), 1.0, 1.0])


def _check_cine(cine: Cine) -> np.ndarray:
    frames = np.asarray(cine.frames)
    if frames.ndim != 3 or min(frames.shape) < 1:
        raise CacError(f"a cine must have frames of shape (n_frames, rows, columns), got {frames.shape}")
    if frames.dtype == np.bool_:
        frames = frames.astype(np.uint8)
    if frames.dtype.kind not in "uif":
        raise CacError(f"pixel type {frames.dtype} is not supported; convert the cine to uint8/uint16")
    return frames


# --------------------------------------------------------------------------- cines


def write_frame_stack_nrrd(cine: Cine, path, overwrite: bool = False, record_source: bool = False) -> Path:
    """Write ``cine`` as a 3D ``.nrrd`` frame stack (gzip), the volume to annotate in Slicer.

    Slice ``k`` = frame ``k``, in-plane spacing = ``cine.spacing_mm`` (1.0 and
    ``CAC_spacing_source:=unknown`` when unknown), slice spacing 1, origin 0,
    LPS identity directions.  Never replaces ``path`` unless ``overwrite``.
    The source path goes into the header (``CAC_source``) only with ``record_source``.
    """
    frames = _check_cine(cine)
    header = {
        "space": "left-posterior-superior",
        "space directions": _frame_stack_ijk_to_lps(xy_spacing(cine.spacing_mm))[:3, :3].T,
        "space origin": np.zeros(3),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    header.update({key: _ascii(value) for key, value in cine_attributes(cine, record_source).items()})
    with atomic_output(path, overwrite) as tmp:
        _nrrd().write(str(tmp), np.ascontiguousarray(frames.transpose(2, 1, 0)), header, index_order="F")
    return Path(path)


def write_seq_nrrd(cine: Cine, path, overwrite: bool = False, encoding: str = "gzip",
                   record_source: bool = False) -> Path:
    """Write ``cine`` as a ``.seq.nrrd`` volume sequence, the layout of Slicer's volume sequence storage.

    3D Slicer opens it as a Sequence with a browser (drag and drop).  The
    index is the time in ms, or the frame number when unknown; ``CAC_*`` keys
    carry the spacing source, frame time and R waves.  ``encoding="raw"``
    skips compression (the Logic's hand-over file to the worker: written in
    Slicer's GUI thread, read once, deleted).  The source path goes into the
    header (``CAC_source``) only with ``record_source``.
    """
    frames = _check_cine(cine)
    times = cine.frame_times_ms()
    if times is None:
        values, label, unit = [float(k) for k in range(cine.n_frames)], "frame", ""
    else:
        values, label, unit = [float(t) for t in times], "time", "ms"
    sx, sy = xy_spacing(cine.spacing_mm)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1.0], [np.nan] * 3]),
        "space origin": np.zeros(3),
        "kinds": ["domain", "domain", "domain", "list"],
        "labels": ["", "", "", label],
        "units": ["", "", "", unit],
        "encoding": encoding,
    }
    header.update({key: _ascii(value) for key, value in cine_attributes(cine, record_source).items()})
    header["DataNodeClassName"] = "vtkMRMLScalarVolumeNode"
    header[f"axis {_SEQUENCE_AXIS} index type"] = "numeric"
    header[f"axis {_SEQUENCE_AXIS} index values"] = " ".join(format_number(v) for v in values)
    # (columns, rows, 1, frames): one 2D scalar volume per list item.
    data = np.ascontiguousarray(frames.transpose(2, 1, 0)[:, :, None, :])
    with atomic_output(path, overwrite) as tmp:
        _nrrd().write(str(tmp), data, header, index_order="F")
    return Path(path)


def _read_nrrd(path: Path, what: str):
    nrrd = _nrrd()
    with open(path, "rb") as f:
        if not f.read(4).startswith(b"NRRD"):
            raise CacError(f"{path} is not a NRRD file (no NRRD magic); give a .nrrd or .seq.nrrd file")
    import zlib

    try:
        return nrrd.read(str(path), index_order="F")
    except (nrrd.NRRDError, ValueError, OSError, EOFError, zlib.error) as exc:
        raise CacError(f"could not read {path} as {what} ({exc}); save it again from Slicer") from exc


def _axis_spacings(header: dict, axes) -> list[float | None]:
    """Spacing of each of ``axes`` (norm of its space direction, else the ``spacings`` field, else None:
    a file without either, or with zero, does not know its spacing)."""
    directions = header.get("space directions")
    spacings = header.get("spacings")
    out = []
    for axis in axes:
        value = None
        if directions is not None:
            vector = np.asarray(directions[axis], dtype=float)
            if np.all(np.isfinite(vector)):
                value = float(np.linalg.norm(vector))
        if value is None and spacings is not None and np.isfinite(spacings[axis]):
            value = abs(float(spacings[axis]))
        out.append(value or None)
    return out


def read_nrrd_cine(path) -> Cine:
    """Read a cine from a ``.nrrd`` frame stack (slice ``k`` = frame ``k``) or a ``.seq.nrrd`` sequence.

    Spacing, frame time and R waves written by this project (``CAC_*`` keys)
    come back; otherwise spacing is the file's (``spacing_source`` "nrrd") and,
    for a sequence, the frame time comes from an index in ms or s.  Files saved
    by Slicer (volumes, volume sequences of 2D frames) are read the same way.
    """
    from .nrrd_check import check_nrrd

    path = Path(path)
    if not path.is_file():
        raise CacError(f"{path} not found")
    check_nrrd(path)  # sizes and encoding checked before any pixel is read
    data, header = _read_nrrd(path, "a cine")
    if any(re.fullmatch(r"Segment\d+_ID", str(key)) for key in header):
        # A .seg.nrrd reads as a volume of labels; synchronizing it fails far from the real mistake.
        raise CacError(f"{path} is a segmentation (it has Segment0_ID...), not a cine; give the cine it was drawn on")
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * data.ndim)]
    components = [a for a, kind in enumerate(kinds) if kind not in ("domain", "space", "list", "time")]
    if components and data.shape[components[0]] > 1:
        raise CacError(
            f"{path} has {data.shape[components[0]]} components per pixel; an angiography cine must be "
            "grayscale (convert colour frames to gray first)"
        )
    sequence_axes = [a for a, kind in enumerate(kinds) if kind in ("list", "time")]
    frame_time = None
    if data.ndim == 4 and sequence_axes:
        axis = sequence_axes[-1]
        data = np.moveaxis(data, axis, -1)  # (i, j, k, item)
        spatial = [a for a in range(4) if a != axis]
        if data.shape[2] != 1:
            raise CacError(
                f"{path} is a sequence of 3D volumes ({data.shape[2]} slices each); "
                "each item of a cine sequence must be one 2D frame"
            )
        frames = data[:, :, 0, :].transpose(2, 1, 0)
        sx, sy = _axis_spacings(header, spatial[:2])
        unit = ""
        with contextlib.suppress(IndexError, TypeError):
            unit = str(header.get("units", [""] * 4)[axis]).strip().lower()
        values = str(header.get(f"axis {axis} index values", "")).split()
        if unit in ("ms", "s") and len(values) > 1:
            with contextlib.suppress(ValueError):
                step = float(np.median(np.diff([float(v) for v in values])))
                if step > 0:
                    frame_time = step * (1000.0 if unit == "s" else 1.0)
    elif data.ndim == 3 and not sequence_axes:
        frames = data.transpose(2, 1, 0)
        sx, sy = _axis_spacings(header, (0, 1))
    elif data.ndim == 2:
        frames = data.T[None]
        sx, sy = _axis_spacings(header, (0, 1))
    else:
        raise CacError(
            f"{path} has {data.ndim} axes ({' '.join(kinds)}); give a frame stack (3D volume) "
            "or a sequence of 2D frames"
        )
    known = sx is not None and sy is not None
    cine = Cine(
        frames=np.ascontiguousarray(frames),
        frame_time_ms=frame_time,
        spacing_mm=(round_spacing(sy), round_spacing(sx)) if known else None,
        spacing_source="nrrd" if known else "unknown",
        source=str(path),
    )
    apply_attributes(cine, lambda key: header.get(key))
    if not known:  # a recorded source cannot vouch for a spacing the file does not hold
        cine.spacing_mm, cine.spacing_source = None, "unknown"
    cine.source = str(path)
    return cine


# --------------------------------------------------------------------------- segmentations


def _reference_geometry_text(ijk_to_lps: np.ndarray, shape_ijk) -> str:
    """Slicer's serialized image geometry: IJK-to-RAS row by row, then the extent, each value + ';'."""
    ras = _LPS_TO_RAS @ ijk_to_lps
    values = [format_number(v + 0.0) for v in ras.ravel()]
    values += [str(v) for n in shape_ijk for v in (0, int(n) - 1)]
    return "".join(f"{v};" for v in values)


def _parse_reference_geometry(text: str):
    """(IJK-to-LPS 4x4, extent) of a serialized Slicer image geometry, or None."""
    try:
        values = [float(v) for v in text.strip().strip(";").split(";")]
    except ValueError:
        return None
    if len(values) != 22:
        return None
    ras = np.array(values[:16]).reshape(4, 4)
    return _LPS_TO_RAS @ ras, tuple(int(v) for v in values[16:])


def reference_shape(conversion_parameters: str) -> tuple[int, int, int] | None:
    """``(frames, rows, columns)`` of the reference image geometry in a ``.seg.nrrd`` header, or None.

    ``conversion_parameters`` is the header's ``Segmentation_ConversionParameters`` field
    (``name|value|description`` entries joined by ``&``); the grid is what :func:`read_seg_nrrd` pads a
    cropped labelmap to.  A header without a readable geometry gives None.

    Examples
    --------
    >>> geometry = "-1;0;0;0;0;-1;0;0;0;0;1;0;0;0;0;1;0;511;0;255;0;9;"
    >>> reference_shape(f"Reference image geometry|{geometry}|Image geometry&Smoothing|0.5|")
    (10, 256, 512)
    >>> reference_shape("Smoothing|0.5|") is None
    True
    """
    for parameter in conversion_parameters.split("&"):
        name, _, rest = parameter.partition("|")
        parsed = _parse_reference_geometry(rest.partition("|")[0]) if name == _REFERENCE_GEOMETRY else None
        if parsed is not None:
            e = parsed[1]
            return e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1
    return None


def write_seg_nrrd(path, segments: dict[str, np.ndarray], spacing_mm, colors=None, overwrite: bool = False, *,
                   source_fingerprint: str | None = None) -> Path:
    """Write named per-frame masks as a ``.seg.nrrd`` that 3D Slicer opens over the frame-stack volume.

    Parameters
    ----------
    path : str or Path
        Output file; should end in ``.seg.nrrd``.
    segments : dict[str, ndarray]
        Segment name -> bool mask ``(n_frames, rows, columns)`` (frame ``k`` =
        slice ``k``); all the same shape.  Segments may overlap (they are then
        stored in layers, as Slicer does).
    spacing_mm : (float, float) or None
        ``(row_spacing, column_spacing)`` in mm; ``None`` (unknown) writes 1.0.
    colors : dict[str, (r, g, b)], optional
        Segment colours in [0, 1]; missing ones come from a fixed palette.
    overwrite : bool
        Replace an existing file.
    source_fingerprint : str, optional
        The content fingerprint of the cine the masks belong to
        (:meth:`~CACIdentifierLib.cine.Cine.fingerprint`), stored as
        ``CAC_source_fingerprint`` so that readers can refuse annotations of
        another cine.  ``CAC_spacing_source`` (``unknown`` or ``given``) is
        always written.

    The labelmap covers the full frame stack (also for empty masks) and the
    frame-stack grid is stored as the reference image geometry; written with
    slicerio through :func:`~CACIdentifierLib.fileutil.atomic_output`.

    Examples
    --------
    >>> masks = {"calcium": np.zeros((3, 4, 5), bool)}
    >>> write_seg_nrrd("a.seg.nrrd", masks, (0.2, 0.3))               # doctest: +SKIP
    """
    import slicerio

    segments = normalize_segments(segments)
    spacing_xy = xy_spacing(spacing_mm)
    if min(spacing_xy) <= 0:
        raise CacError(f"spacing must be positive, got {spacing_mm}")
    shape = next(iter(segments.values())).shape
    ijk_to_lps = _frame_stack_ijk_to_lps(spacing_xy)
    shape_ijk = (shape[2], shape[1], shape[0])
    segmentation = slicerio.create_segmentation(shape_ijk, ijk_to_lps)
    for i, (name, mask) in enumerate(segments.items()):
        color = (colors or {}).get(name) or DEFAULT_SEGMENT_COLORS[i % len(DEFAULT_SEGMENT_COLORS)]
        slicerio.add_segment(segmentation, mask.transpose(2, 1, 0), {
            "id": name, "name": _ascii(name), "color": [float(c) for c in color[:3]],
            "nameAutoGenerated": False, "colorAutoGenerated": False,
        })
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]
    segmentation["masterRepresentation"] = "Binary labelmap"
    segmentation["referenceImageExtentOffset"] = [0, 0, 0]
    # Slicer's reader takes a conversion parameter only when "&" ends it, and slicerio puts "&" only
    # between parameters: the description ends with it (slicerio's reader skips the empty rest).
    segmentation["conversionParameters"] = [{
        "name": _REFERENCE_GEOMETRY, "value": _reference_geometry_text(ijk_to_lps, shape_ijk),
        "description": _REFERENCE_GEOMETRY_HELP + "&",
    }]
    segmentation["encoding"] = "gzip"
    segmentation[ATTR_SPACING_SOURCE] = "unknown" if spacing_mm is None else "given"
    if source_fingerprint is not None:
        if not re.fullmatch(_FINGERPRINT_PATTERN, str(source_fingerprint)):
            raise CacError(f"source fingerprint {str(source_fingerprint)[:80]!r} is not a cine's pixel fingerprint")
        segmentation[ATTR_SOURCE_FINGERPRINT] = str(source_fingerprint)
    with atomic_output(path, overwrite) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=6)
    return Path(path)


def _paste(values: np.ndarray, own: np.ndarray, full: np.ndarray, full_shape, name: str) -> np.ndarray:
    """Place ``values`` ``(i, j, k)`` (IJK-to-LPS ``own``) into a zero array on the grid ``full`` ``full_shape``."""
    out = np.zeros(full_shape, dtype=bool)
    if values.size == 0:
        return out
    if not np.allclose(own[:3, :3], full[:3, :3], rtol=1e-4, atol=1e-6):
        raise CacError(
            f"segment {name!r} is not on the frame-stack grid (different spacing or orientation); "
            "draw it over the cine's frame-stack volume"
        )
    # Index of the file's first voxel in the full grid (exact integers on a shared lattice).
    ijk = np.linalg.solve(full, own[:, 3])[:3]
    if not np.allclose(ijk, np.round(ijk), atol=1e-3):
        raise CacError(f"segment {name!r} is shifted off the frame-stack grid; draw it over the frame-stack volume")
    start = [int(v) for v in np.round(ijk)]
    # Clip to the full grid: Slicer can grow a labelmap past the volume when painting at the border.
    src = values[tuple(slice(max(0, -s), n - max(0, s + n - f)) for s, n, f in zip(start, values.shape, full_shape))]
    dst = tuple(slice(max(0, s), max(0, s) + m) for s, m in zip(start, src.shape))
    out[dst] = src
    marked, kept = int(np.count_nonzero(values)), int(np.count_nonzero(src))
    if marked > kept:
        # A few voxels past the border are a brush stroke; more is an annotation of another grid,
        # which would otherwise become calcium-free training data without a word.
        k_inside = slice(max(0, -start[2]), values.shape[2] - max(0, start[2] + values.shape[2] - full_shape[2]))
        frames_outside = marked - int(np.count_nonzero(values[:, :, k_inside]))
        if kept == 0 or frames_outside:
            where = f"{frames_outside} in frames the cine does not have" if frames_outside else "all of them"
            raise CacError(f"segment {name!r} marks {marked} voxels outside the cine's frame stack ({where}); "
                           "use the annotation made on this cine (drawn over its frame-stack volume)")
        if marked - kept > 0.1 * marked:
            warnings.warn(f"segment {name!r}: {marked - kept} of its {marked} marked voxels lie outside the "
                          "frames and were dropped; check that it was drawn on this cine", CacWarning, stacklevel=3)
    return out


def _check_label_values(segmentation, path) -> None:
    """Refuse a labelmap whose marked voxels match no segment's label value (they would read as empty)."""
    voxels = np.asarray(segmentation["voxels"])
    layers = voxels[None] if voxels.ndim == 3 else voxels
    for layer_index in range(layers.shape[0]):
        labels = {float(seg.get("labelValue", 1)) for seg in segmentation["segments"]
                  if int(seg.get("layer", 0) or 0) == layer_index}
        layer = layers[layer_index]
        values = np.unique(layer[layer != 0])
        orphans = [float(v) for v in values if float(v) not in labels]
        if not orphans:
            continue
        count = int(np.isin(layer, values[[float(v) in orphans for v in values]]).sum())
        shown = ", ".join(format_number(v) for v in orphans[:5])
        message = (f"{path}: {count} voxels hold label value(s) {shown} that no segment uses "
                   f"(segments use {', '.join(format_number(v) for v in sorted(labels)) or 'none'})")
        if len(orphans) == len(values):
            raise CacError(message + "; the file is damaged or not a Slicer segmentation, export it again")
        warnings.warn(message + "; those voxels are ignored", CacWarning, stacklevel=3)


def read_seg_nrrd(path, expected_shape=None, expected_spacing_mm=None, *, expected_ijk_to_ras=None) -> SegFile:
    """Read a ``.seg.nrrd`` (written here or drawn in Slicer over the frame-stack volume).

    Returns a :class:`SegFile` whose masks are ``(n_frames, rows, columns)``
    bool arrays on the full frame-stack geometry: labelmaps Slicer saved with a
    smaller extent (cropped to their content) are padded back using the
    segmentation's reference image geometry, or ``expected_shape`` when the
    file has none.  ``expected_shape`` ``(n_frames, rows, columns)`` and
    ``expected_spacing_mm`` ``(row, column)`` are checked when given: a
    mismatch raises :class:`CacError` (annotations of another cine).  With
    ``expected_ijk_to_ras`` too (the cine's frame-stack matrix,
    :func:`~CACIdentifierLib.seg_align.frame_stack_matrix`), a file drawn over a
    cropped copy of that volume is refused first, before any voxel is placed,
    with :func:`~CACIdentifierLib.seg_align.check_not_cropped`'s line (``cac
    identify --annotations``; ``cac dataset add`` and CAC Annotator give the same).
    """
    import slicerio

    path = Path(path)
    if not path.is_file():
        raise CacError(f"{path} is a folder, not a .seg.nrrd file; give the segmentation file" if path.exists()
                       else f"segmentation file {path} not found")
    from .nrrd_check import check_nrrd

    check_nrrd(path)  # sizes and encoding checked before any voxel is read
    import zlib

    nrrd = _nrrd()
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (nrrd.NRRDError, OSError, ValueError, KeyError, EOFError, zlib.error) as exc:
        raise CacError(
            f"{path} is not a readable segmentation (.seg.nrrd): {exc}; save it from Slicer's Segmentations module"
        ) from exc
    voxels = segmentation.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4) or not segmentation.get("segments"):
        raise CacError(f"{path} has no segments")
    _check_label_values(segmentation, path)
    own = np.asarray(segmentation["ijkToLPS"], dtype=float)
    file_shape = voxels.shape[-3:]
    full, full_shape, has_reference = None, None, False
    for parameter in segmentation.get("conversionParameters", []):
        if parameter.get("name") == _REFERENCE_GEOMETRY:
            parsed = _parse_reference_geometry(parameter.get("value", ""))
            if parsed is not None:
                matrix, extent = parsed
                # Shift the origin to the extent's first voxel so that index 0 is the grid's first voxel.
                matrix[:, 3] = matrix @ np.array([extent[0], extent[2], extent[4], 1.0])
                full, full_shape = matrix, (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1,
                                            extent[5] - extent[4] + 1)
                has_reference = True
    if has_reference and expected_shape is not None and expected_ijk_to_ras is not None:
        from .seg_align import check_not_cropped

        check_not_cropped(str(path), _LPS_TO_RAS @ full, full_shape[::-1], expected_ijk_to_ras, expected_shape)
    if full is None and expected_shape is not None:
        # No reference geometry stored: assume the frame-stack convention (origin 0, the file's axes).
        full = own.copy()
        full[:3, 3] = 0.0
        full_shape = (int(expected_shape[2]), int(expected_shape[1]), int(expected_shape[0]))
    if full is None:
        full, full_shape = own, file_shape
    segments, colors = {}, {}
    for segment in segmentation["segments"]:
        name = segment.get("name", segment.get("id", f"Segment_{len(segments)}"))
        mask = slicerio.segment_mask(segmentation, segment)
        extent = segment.get("extent")
        if extent is not None and (not isinstance(extent, (list, tuple)) or len(extent) != 6):
            raise CacError(f"{path}: segment {printable(name, 60)} has an extent that is not 6 numbers; "
                           "the file is damaged, export the segmentation again")
        if extent is not None and (extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]):
            mask = np.zeros_like(mask)  # Slicer's empty segment
        segments[name] = _paste(mask, own, full, full_shape, name).transpose(2, 1, 0)
        if "color" in segment:
            colors[name] = tuple(float(c) for c in segment["color"][:3])
    spacing = np.linalg.norm(full[:3, :3], axis=0)
    fingerprint = segmentation.get(ATTR_SOURCE_FINGERPRINT)
    if fingerprint is not None and not re.fullmatch(_FINGERPRINT_PATTERN, str(fingerprint).strip()):
        warnings.warn(f"{path} has a malformed {ATTR_SOURCE_FINGERPRINT}; its source cine is not checked",
                      CacWarning, stacklevel=2)
        fingerprint = None
    spacing_source = str(segmentation.get(ATTR_SPACING_SOURCE, "")).strip()
    result = SegFile(
        segments=segments,
        spacing_mm=(round_spacing(spacing[1]), round_spacing(spacing[0])),
        colors=colors,
        path=str(path),
        ijk_to_ras=_LPS_TO_RAS @ full,
        has_reference=has_reference,
        source_fingerprint=None if fingerprint is None else str(fingerprint).strip(),
        spacing_known=None if not spacing_source else spacing_source != "unknown",
    )
    if expected_shape is not None and tuple(result.shape) != tuple(int(v) for v in expected_shape):
        raise CacError(
            f"{path} covers {result.shape[0]} frames of {result.shape[1]}x{result.shape[2]} px but the cine has "
            f"{expected_shape[0]} frames of {expected_shape[1]}x{expected_shape[2]} px; "
            "use the annotation made on this cine"
        )
    if expected_spacing_mm is not None and not np.allclose(result.spacing_mm, expected_spacing_mm, rtol=1e-3):
        raise CacError(
            f"{path} has pixel spacing {result.spacing_mm} mm but the cine has {tuple(expected_spacing_mm)} mm; "
            "use the annotation made on this cine"
        )
    return result


def read_seg_nrrds(paths, expected_shape=None, expected_spacing_mm=None) -> list[SegFile]:
    """Read several annotators' ``.seg.nrrd`` files of one cine; all must share one geometry."""
    files = [read_seg_nrrd(p, expected_shape, expected_spacing_mm) for p in paths]
    if not files:
        raise CacError("no segmentation files given")
    for f in files[1:]:
        if f.shape != files[0].shape or not np.allclose(f.spacing_mm, files[0].spacing_mm, rtol=1e-3):
            raise CacError(
                f"{f.path} ({f.shape}, {f.spacing_mm} mm) does not match {files[0].path} "
                f"({files[0].shape}, {files[0].spacing_mm} mm); all annotations must be of the same cine"
            )
    return files
