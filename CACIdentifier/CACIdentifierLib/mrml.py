"""Cines, masks and results as MRML nodes.

Everything that touches Slicer's MRML classes lives here (the files Slicer
reads are written and read without MRML by :mod:`CACIdentifierLib.nrrd_io`,
which the dataset, phantom and annotation code call directly); the workflow core
works on :class:`~CACIdentifierLib.cine.Cine` and numpy arrays.  The same code
runs inside the Slicer application (on ``slicer.mrmlScene``) and headless
through the slicer-core wheel (see :mod:`CACIdentifierLib.slicercore`).

Geometry (docs/ARCHITECTURE.md, "Geometry of files")
----------------------------------------------------
- A frame is a 2D scalar volume: column index along image x, row index along
  image y, spacing ``(column_spacing, row_spacing, 1)`` mm, origin 0, and
  IJK-to-RAS directions ``diag(-1, -1, 1)``, i.e. identity directions in LPS,
  the way Slicer shows an image read from DICOM (column to the screen's right,
  row down in the axial view).
- The frame-stack volume stacks the frames along k (slice ``k`` = frame
  ``k``, slice spacing 1); ``slicer.util.arrayFromVolume`` gives
  ``[k, row, col]``.  ``.seg.nrrd`` files use exactly this geometry, so an
  annotation drawn in Slicer over the frame-stack volume lines up with the
  cine frame by frame.
- Unknown spacing is written as 1.0 with ``CAC_spacing_source:=unknown``; the
  frame time (``CAC_frame_time_ms``) and the R waves travel as key-value pairs
  too.  A Sequence node is indexed by time in ms (index name ``time``, unit
  ``ms``) or, when the frame time is unknown, by frame number (index name
  ``frame``, no unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import slicercore
from .cine import Cine
from .errors import CacError
from .nrrd_io import ATTR_ROLE, DEFAULT_SEGMENT_COLORS, xy_spacing
from .nrrd_io import apply_attributes as _apply_attributes
from .nrrd_io import cine_attributes as _cine_attributes
from .nrrd_io import format_number as _format_number
from .nrrd_io import normalize_segments as _normalize_segments
from .nrrd_io import round_spacing as _round_spacing

# An output node refers to the input node whose results it holds through a node reference of this
# role, and carries an attribute of the same name ("yes").  A reference, not an ID in an attribute:
# Slicer renames references when a saved scene is imported into one whose node IDs clash, so an ID
# kept in an attribute would then name another cine.  The attribute stays when the input is deleted
# (Slicer then drops the reference): such an output is still known to hold some cine's results.
REF_MADE_FOR = ATTR_MADE_FOR = "CAC_made_for"
# A second browser made to show a cine's paired contrast frame refers to the cine's own browser so.
REF_PAIR_OF_BROWSER = "CAC_pair_of_browser"


def mark_made_for(node, input_node) -> None:
    """Record on output ``node`` that it holds ``input_node``'s results (see :data:`REF_MADE_FOR`)."""
    node.SetNodeReferenceID(REF_MADE_FOR, input_node.GetID())
    node.SetAttribute(ATTR_MADE_FOR, "yes")


def upgrade_link(node, role: str) -> None:
    """Turn a link kept the old way into a node reference: scenes saved by development builds before the
    references kept the linked node's ID in the attribute ``role`` itself (no reference).

    When that ID names a node of the scene, it becomes the reference; the attribute becomes "yes" either
    way.  (The old ID was right in the scene it was saved from; a scene loaded on its own keeps its IDs.)
    """
    if node is None:
        return
    value = node.GetAttribute(role)
    if value is None or value == "yes" or node.GetNodeReferenceID(role):
        return
    scene = node.GetScene()
    if scene is not None and scene.GetNodeByID(value) is not None:
        node.SetNodeReferenceID(role, value)
    node.SetAttribute(role, "yes")


def made_for(node):
    """The input node whose results ``node`` holds; None when unmarked or when that input was deleted."""
    upgrade_link(node, REF_MADE_FOR)
    return node.GetNodeReference(REF_MADE_FOR) if node is not None else None


def is_made_for(node, input_node) -> bool:
    """Whether ``node`` is marked as holding ``input_node``'s results."""
    upgrade_link(node, REF_MADE_FOR)
    return node is not None and input_node is not None and node.GetNodeReferenceID(REF_MADE_FOR) == input_node.GetID()


def is_output(node) -> bool:
    """Whether ``node`` was made to hold some input's results (even if that input is gone)."""
    return node is not None and node.GetAttribute(ATTR_MADE_FOR) is not None


# IJK-to-RAS direction cosines of every frame: identity in LPS.
FRAME_DIRECTIONS_RAS = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))

_VTK_TYPES = {
    np.dtype(np.uint8): "VTK_UNSIGNED_CHAR",
    np.dtype(np.int8): "VTK_SIGNED_CHAR",
    np.dtype(np.uint16): "VTK_UNSIGNED_SHORT",
    np.dtype(np.int16): "VTK_SHORT",
    np.dtype(np.uint32): "VTK_UNSIGNED_INT",
    np.dtype(np.int32): "VTK_INT",
    np.dtype(np.float32): "VTK_FLOAT",
    np.dtype(np.float64): "VTK_DOUBLE",
}


@dataclass
class SyncNodes:
    """The nodes :func:`sync_to_scene` creates."""

    signal_table: object
    chart: object
    pairs_table: object
    beats_table: object | None = None


# --------------------------------------------------------------------------- helpers


def _slicer():
    return slicercore.import_slicer()


def _vtk():
    import vtk

    return vtk


def _numpy_support():
    from vtkmodules.util import numpy_support

    return numpy_support


def _image_from_array(array: np.ndarray):
    """A ``vtkImageData`` holding ``array`` ``(slices, rows, columns)`` (deep copy), x = column."""
    vtk = _vtk()
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype not in _VTK_TYPES:
        raise CacError(f"pixel type {array.dtype} is not supported; convert the cine to uint8/uint16")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(getattr(vtk, _VTK_TYPES[array.dtype]), 1)
    _numpy_support().vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    return image


def _array_from_image(image) -> np.ndarray:
    """``(slices, rows, columns)`` copy of a single-component ``vtkImageData``."""
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise CacError("the volume has no pixel data; load it again")
    if scalars.GetNumberOfComponents() != 1:
        raise CacError(
            f"the volume has {scalars.GetNumberOfComponents()} components per pixel; "
            "an angiography cine must be grayscale (convert colour frames to gray first)"
        )
    nx, ny, nz = image.GetDimensions()
    return _numpy_support().vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


def _xy_spacing(cine: Cine) -> tuple[float, float]:
    return xy_spacing(cine.spacing_mm)


def _set_frame_geometry(volume_node, cine_or_spacing) -> None:
    if isinstance(cine_or_spacing, Cine):
        sx, sy = _xy_spacing(cine_or_spacing)
    else:
        sx, sy = cine_or_spacing
    volume_node.SetSpacing(sx, sy, 1.0)
    volume_node.SetOrigin(0.0, 0.0, 0.0)
    d = FRAME_DIRECTIONS_RAS
    volume_node.SetIJKToRASDirections(*d[0], *d[1], *d[2])


def _spacing_from_node(volume_node) -> tuple[float, float]:
    sx, sy, _ = volume_node.GetSpacing()
    return _round_spacing(sy), _round_spacing(sx)


def _apply_node_attributes(cine: Cine, node, spacing_node) -> None:
    """Fill ``cine``'s metadata from ``node``'s ``CAC_*`` attributes; keep a spacing the user set.

    A cine read without a spacing is shown at 1.0 mm with ``CAC_spacing_source``
    "unknown"; any other spacing on ``spacing_node`` was set by the user (the
    Volumes module) after loading, and is the best spacing there is.  A user
    spacing of exactly 1.0 mm cannot be told from the placeholder.
    """
    _apply_attributes(cine, node.GetAttribute)
    if cine.spacing_source == "unknown":
        spacing = _spacing_from_node(spacing_node)
        if not np.allclose(spacing, (1.0, 1.0)):
            cine.spacing_mm, cine.spacing_source = spacing, "user"


def _as_array(matrix) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 array."""
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _ijk_to_ras(volume_node) -> np.ndarray:
    """A volume node's 4x4 IJK-to-RAS matrix (its origin, spacing and directions) as an array."""
    m = _vtk().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _as_array(m)


def frame_stack_geometry(node) -> np.ndarray | None:
    """The IJK-to-RAS matrix of the frame-stack grid of the cine behind ``node``, or None.

    A frame-stack volume gives its own; a Sequence of frames (or its browser's
    proxy) gives its first frame's, whose third axis steps one frame.  The ROI
    and annotation segmentations take it, so that they lie on the cine
    wherever the user has moved, turned or rescaled it in the Volumes module.
    A parent transform the volume sits under (not hardened) is not part of it:
    the outputs go under the same transform (:func:`place_under_transform_of`).
    """
    if node is None:
        return None
    sequence = sequence_behind(node)
    if sequence is not None:
        node = sequence.GetNthDataNode(0) if sequence.GetNumberOfDataNodes() else None
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        return None
    return _ijk_to_ras(node)


def _frame_times(cine: Cine) -> tuple[list[float], str, str]:
    """Index values, index name and unit of a cine's Sequence node."""
    times = cine.frame_times_ms()
    if times is None:
        return [float(k) for k in range(cine.n_frames)], "frame", ""
    return [float(t) for t in times], "time", "ms"


# --------------------------------------------------------------------------- cine <-> nodes


def _frame_volume(slicer, cine: Cine, k: int, name: str):
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(f"{name}_{k:04d}")
    node.SetAndObserveImageData(_image_from_array(cine.frames[k][None]))
    _set_frame_geometry(node, cine)
    return node


def _build_sequence(scene, cine: Cine, name: str):
    slicer = _slicer()
    _check_cine(cine)
    values, index_name, unit = _frame_times(cine)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName(index_name)
    sequence.SetIndexUnit(unit)
    sequence.SetIndexType(sequence.NumericIndex)
    for key, value in _cine_attributes(cine).items():
        sequence.SetAttribute(key, value)
    for k, value in enumerate(values):
        # SetDataNodeAtValue deep-copies the node into the sequence's internal scene.
        sequence.SetDataNodeAtValue(_frame_volume(slicer, cine, k, name), _format_number(value))
    return sequence


def _check_cine(cine: Cine) -> None:
    frames = np.asarray(cine.frames)
    if frames.ndim != 3 or min(frames.shape) < 1:
        raise CacError(f"a cine must have frames of shape (n_frames, rows, columns), got {frames.shape}")


def cine_to_sequence(scene, cine: Cine, name: str = "cine"):
    """Add ``cine`` to ``scene`` as a Sequence of 2D scalar volumes with a Sequence Browser.

    Returns ``(sequence_node, browser_node)``.  The sequence is indexed by the
    frame time in ms (``index name`` "time", unit "ms") or by the frame number
    when the frame time is unknown; its proxy volume (named ``name``) shows the
    browser's selected frame.  Spacing is ``cine.spacing_mm`` or 1.0 mm with
    the attribute ``CAC_spacing_source`` = "unknown".
    """
    sequence = _build_sequence(scene, cine, f"{name} sequence")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    if cine.frame_time_ms:
        browser.SetPlaybackRateFps(1000.0 / float(cine.frame_time_ms))
    browser.SetSelectedItemNumber(0)
    _update_proxies(scene, browser)
    proxy = browser.GetProxyNode(sequence)
    if proxy is not None:
        proxy.SetName(name)
        browser.SetOverwriteProxyName(sequence, False)
        for key, value in _cine_attributes(cine).items():
            proxy.SetAttribute(key, value)
    return sequence, browser


def _update_proxies(scene, browser) -> None:
    slicercore.logic(scene, "sequences").UpdateProxyNodesFromSequences(browser)
    for proxy in _proxy_nodes(browser):
        if hasattr(proxy, "CreateDefaultDisplayNodes") and proxy.GetDisplayNode() is None:
            proxy.CreateDefaultDisplayNodes()


def _proxy_nodes(browser) -> list:
    vtk = _vtk()
    collection = vtk.vtkCollection()
    browser.GetAllProxyNodes(collection)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def sequence_to_cine(sequence_node) -> Cine:
    """The :class:`Cine` held by a Sequence of 2D scalar volumes (e.g. from :func:`cine_to_sequence`).

    Pixels are kept as stored; spacing comes from the first frame (``None``
    when the attribute ``CAC_spacing_source`` says "unknown"); the frame time
    from ``CAC_frame_time_ms`` or, for an index in ms or s, from the median
    step of the index values.
    """
    n = sequence_node.GetNumberOfDataNodes()
    if n == 0:
        raise CacError(f"sequence {sequence_node.GetName()!r} is empty; load a cine into it first")
    frames = []
    for k in range(n):
        node = sequence_node.GetNthDataNode(k)
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
            raise CacError(
                f"item {k} of sequence {sequence_node.GetName()!r} is not a scalar volume; "
                "choose a sequence of grayscale frames"
            )
        array = _array_from_image(node.GetImageData())
        if array.shape[0] != 1:
            raise CacError(
                f"item {k} of sequence {sequence_node.GetName()!r} has {array.shape[0]} slices; "
                "each item of a cine sequence must be one 2D frame"
            )
        if frames and array.shape != frames[0].shape:
            raise CacError(
                f"frames of sequence {sequence_node.GetName()!r} differ in size "
                f"({frames[0].shape[1:]} vs {array.shape[1:]}); a cine needs equal frames"
            )
        frames.append(array)
    first = sequence_node.GetNthDataNode(0)
    cine = Cine(
        frames=np.concatenate(frames, axis=0),
        spacing_mm=_spacing_from_node(first),
        spacing_source="sequence",
        source=sequence_node.GetName() or "",
    )
    unit = (sequence_node.GetIndexUnit() or "").strip().lower()
    if unit in ("ms", "s") and n > 1:
        try:
            values = np.array([float(sequence_node.GetNthIndexValue(k)) for k in range(n)])
            step = float(np.median(np.diff(values)))
            if step > 0:
                cine.frame_time_ms = step * (1000.0 if unit == "s" else 1.0)
        except ValueError:
            pass
    _apply_node_attributes(cine, sequence_node, first)
    return cine


def cine_to_frame_stack_volume(scene, cine: Cine, name: str = "cine frames"):
    """Add ``cine`` as one scalar volume, slice ``k`` = frame ``k`` (slice spacing 1).

    This is the volume to draw annotations on in Slicer's Segment Editor: the
    ``.seg.nrrd`` files of this project use its geometry.
    """
    _check_cine(cine)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    volume.SetAndObserveImageData(_image_from_array(np.asarray(cine.frames)))
    _set_frame_geometry(volume, cine)
    for key, value in _cine_attributes(cine).items():
        volume.SetAttribute(key, value)
    if volume.GetScene() is not None and volume.GetDisplayNode() is None:
        volume.CreateDefaultDisplayNodes()
    return volume


def frame_stack_volume_to_cine(volume_node) -> Cine:
    """The :class:`Cine` of a frame-stack scalar volume (array ``[k, row, col]``)."""
    image = volume_node.GetImageData()
    if image is None:
        raise CacError(f"volume {volume_node.GetName()!r} has no pixel data; load it again")
    cine = Cine(
        frames=_array_from_image(image),
        spacing_mm=_spacing_from_node(volume_node),
        spacing_source="nrrd",
        source=volume_node.GetName() or "",
    )
    _apply_node_attributes(cine, volume_node, volume_node)
    return cine


def sequence_behind(node):
    """The Sequence node that ``node`` stands for, or None: the one home of this rule.

    A Sequence stands for itself; a sequence browser's proxy node stands for the
    sequence it shows (the whole cine, not the one frame on screen).
    """
    if node is None:
        return None
    if node.IsA("vtkMRMLSequenceNode"):
        return node
    scene = node.GetScene()
    if scene is None:
        return None
    for browser in scene.GetNodesByClass("vtkMRMLSequenceBrowserNode"):
        sequence = browser.GetSequenceNode(node)
        if sequence is not None:
            return sequence
    return None


def parent_transform_id(scene, node):
    """The ID of the transform the cine behind ``node`` is shown under, or None.

    A volume's own parent transform; for a Sequence (which cannot be
    transformed), that of its browser's proxy volume, the node on screen.
    """
    if node is None:
        return None
    if node.IsA("vtkMRMLSequenceNode"):
        browser = browser_of(scene, node)
        node = browser.GetProxyNode(node) if browser is not None else None
    return node.GetTransformNodeID() if node is not None and node.IsA("vtkMRMLTransformableNode") else None


def place_under_transform_of(scene, output_node, input_node) -> None:
    """Put ``output_node`` under the transform ``input_node``'s cine is shown under, so the two line up.

    Outputs lie on the input's IJK grid (:func:`frame_stack_geometry`); a
    transform the user put the cine under (not hardened) must move them too.
    """
    if output_node is not None:
        output_node.SetAndObserveTransformNodeID(parent_transform_id(scene, input_node))


def node_to_cine(node) -> Cine:
    """The :class:`Cine` behind a node the user picked as input.

    Accepts a Sequence of 2D frames, the proxy volume of a sequence browser
    (which stands for its whole sequence, not the one frame it shows) or a
    frame-stack scalar volume (slice ``k`` = frame ``k``).
    """
    if node is None:
        raise CacError("no input node; choose a cine (a Sequence or a frame-stack volume)")
    if node.IsA("vtkMRMLSequenceNode"):
        return sequence_to_cine(node)
    if node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
        sequence = sequence_behind(node)
        return sequence_to_cine(sequence) if sequence is not None else frame_stack_volume_to_cine(node)
    raise CacError(
        f"{node.GetName()!r} is a {node.GetClassName()}; choose a cine (a Sequence of frames or a frame-stack volume)"
    )


# --------------------------------------------------------------------------- masks -> segmentations


def _oriented_image(mask: np.ndarray, spacing_xy: tuple[float, float], ijk_to_ras=None):
    """``mask`` as a ``vtkOrientedImageData``: on ``ijk_to_ras`` (4x4) if given, else on the default
    frame geometry (origin 0, ``FRAME_DIRECTIONS_RAS``) with ``spacing_xy``."""
    slicer = _slicer()
    image = _image_from_array(np.asarray(mask, dtype=np.uint8))
    oriented = slicer.vtkOrientedImageData()
    oriented.ShallowCopy(image)
    if ijk_to_ras is not None:
        matrix = _vtk().vtkMatrix4x4()
        for i in range(4):
            for j in range(4):
                matrix.SetElement(i, j, float(ijk_to_ras[i][j]))
        oriented.SetImageToWorldMatrix(matrix)
        return oriented
    oriented.SetSpacing(spacing_xy[0], spacing_xy[1], 1.0)
    oriented.SetOrigin(0.0, 0.0, 0.0)
    oriented.SetDirections([list(row) for row in FRAME_DIRECTIONS_RAS])
    return oriented


def _fill_segmentation(segmentation_node, segments: dict[str, np.ndarray], spacing_xy, colors,
                       ijk_to_ras=None) -> None:
    """Add one binary-labelmap segment per entry of ``segments`` on the frame-stack geometry
    (``ijk_to_ras``, the cine volume's matrix, or the default one with ``spacing_xy``)."""
    slicer = _slicer()
    shape = next(iter(segments.values())).shape
    converter = slicer.vtkSegmentationConverter
    geometry = _oriented_image(np.zeros((1, 1, 1), np.uint8), spacing_xy, ijk_to_ras)
    geometry.SetExtent(0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1)
    segmentation = segmentation_node.GetSegmentation()
    segmentation_node.SetSourceRepresentationToBinaryLabelmap()
    segmentation.SetConversionParameter(
        converter.GetReferenceImageGeometryParameterName(), converter.SerializeImageGeometry(geometry)
    )
    extent = [0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1]
    for i, (name, mask) in enumerate(segments.items()):
        color = colors.get(name) if colors else None
        if color is None:
            color = DEFAULT_SEGMENT_COLORS[i % len(DEFAULT_SEGMENT_COLORS)]
        segment_id = segmentation.AddEmptySegment(name, name, [float(c) for c in color[:3]])
        segment = segmentation.GetSegment(segment_id)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            _oriented_image(mask, spacing_xy, ijk_to_ras),
            segmentation_node,
            segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
            extent,
        )


def refill_segmentation(segmentation_node, segments: dict[str, np.ndarray], cine: Cine, colors=None,
                        ijk_to_ras=None):
    """Replace every segment of an existing Segmentation node by ``segments`` on the cine's frame-stack grid.

    ``ijk_to_ras`` as in :func:`masks_to_frame_stack_segmentation`; the node keeps its name, ID and display.
    """
    segmentation_node.GetSegmentation().RemoveAllSegments()
    segmentation_node.CreateDefaultDisplayNodes()
    _fill_segmentation(segmentation_node, _normalize_segments(segments), _xy_spacing(cine), colors or {}, ijk_to_ras)
    return segmentation_node


def masks_to_frame_stack_segmentation(scene, masks, cine: Cine, name: str = "CAC ROI", segments=None,
                                      colors=None, reference_volume=None, ijk_to_ras=None):
    """Add a Segmentation node holding ``masks`` over the cine's frame-stack geometry.

    ``masks`` is one ``(n_frames, rows, columns)`` bool array (its segment is
    named ``segments`` if that is a string, else "CAC ROI") or a dict of
    them, one segment each.  ``reference_volume`` (the frame-stack volume, if
    in the scene) is set as the segmentation's source geometry for Slicer's
    Segment Editor, and its IJK-to-RAS matrix places the masks;
    ``ijk_to_ras`` (:func:`frame_stack_geometry` of the input) places them
    otherwise.  Without either, the default frame geometry with the cine's spacing.
    """
    if isinstance(masks, np.ndarray):
        masks = {segments if isinstance(segments, str) else "CAC ROI": masks}
    masks = _normalize_segments(masks)
    shape = next(iter(masks.values())).shape
    if shape != tuple(np.asarray(cine.frames).shape):
        raise CacError(f"masks have shape {shape} but the cine is {tuple(np.asarray(cine.frames).shape)}")
    if ijk_to_ras is None and reference_volume is not None:
        ijk_to_ras = _ijk_to_ras(reference_volume)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    _fill_segmentation(node, masks, _xy_spacing(cine), colors or {}, ijk_to_ras)
    if reference_volume is not None:
        node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), reference_volume.GetID())
    return node


def masks_to_segmentation_sequence(scene, masks: np.ndarray, cine_sequence, browser, name: str = "CAC ROI",
                                   segment_name: str = "CAC ROI", color=DEFAULT_SEGMENT_COLORS[0]):
    """Add per-frame masks as a Sequence of Segmentation nodes synchronized in ``browser``.

    ``masks`` is ``(n_frames, rows, columns)`` bool, one frame per item of
    ``cine_sequence`` (same index values); each item is a segmentation with one
    segment ``segment_name`` on that frame's 2D geometry.  The browser's proxy
    segmentation (named ``name``) then shows the ROI of the selected frame.
    Returns the segmentation sequence node.
    """
    slicer = _slicer()
    masks = np.asarray(masks).astype(bool)
    n = cine_sequence.GetNumberOfDataNodes()
    if masks.ndim != 3 or masks.shape[0] != n:
        raise CacError(f"masks have shape {masks.shape} but the cine sequence has {n} frames")
    first = cine_sequence.GetNthDataNode(0)
    dims = first.GetImageData().GetDimensions()
    if (masks.shape[2], masks.shape[1]) != (dims[0], dims[1]):
        raise CacError(f"masks are {masks.shape[1:]} (rows, columns) but frames are {(dims[1], dims[0])}")
    sequence = _sequence_like(scene, cine_sequence, f"{name} sequence", "roi")
    for k in range(n):
        item = slicer.vtkMRMLSegmentationNode()
        item.SetName(f"{name}_{k:04d}")
        # Each ROI on its own frame's grid (origin, spacing and directions as the user left them).
        frame = cine_sequence.GetNthDataNode(k)
        _fill_segmentation(item, {segment_name: masks[k][None]}, None, {segment_name: color}, _ijk_to_ras(frame))
        sequence.SetDataNodeAtValue(item, cine_sequence.GetNthIndexValue(k))
    _show_in_browser(scene, browser, sequence, name)
    return sequence


def _sequence_like(scene, cine_sequence, name: str, role: str):
    """A new Sequence node indexed as ``cine_sequence`` (name, unit, type), with ``CAC_role`` ``role``."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName(cine_sequence.GetIndexName())
    sequence.SetIndexUnit(cine_sequence.GetIndexUnit())
    sequence.SetIndexType(cine_sequence.GetIndexType())
    sequence.SetAttribute(ATTR_ROLE, role)
    return sequence


def _show_in_browser(scene, browser, sequence, name: str):
    """Synchronize ``sequence`` in ``browser``; its proxy (returned, None if not made) is named ``name``."""
    browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    _update_proxies(scene, browser)
    proxy = browser.GetProxyNode(sequence)
    if proxy is not None:
        proxy.SetName(name)
        browser.SetOverwriteProxyName(sequence, False)
    return proxy


def _default_ijk_to_ras(spacing_xy) -> np.ndarray:
    """The default frame geometry's IJK-to-RAS matrix (origin 0, ``FRAME_DIRECTIONS_RAS``, ``spacing_xy``)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(FRAME_DIRECTIONS_RAS, float) @ np.diag([float(spacing_xy[0]), float(spacing_xy[1]), 1.0])
    return m


def _fill_points(markups_node, points_ijk, ijk_to_ras, color, label: str) -> None:
    """Put one locked control point per ``(column, row, slice)`` IJK position on ``markups_node``."""
    m = np.asarray(ijk_to_ras, float)
    for ijk in points_ijk:
        ras = m @ np.array([float(ijk[0]), float(ijk[1]), float(ijk[2]), 1.0])
        markups_node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]), label)
    markups_node.SetLocked(True)  # where an ROI was removed is a fact of the run, not something to edit
    _style_points(markups_node.GetDisplayNode(), color)


def _style_points(display, color) -> None:
    """Small crosses in ``color``, no labels (many points on one frame would hide the image)."""
    if display is None:
        return
    display.SetSelectedColor(*[float(c) for c in color[:3]])
    display.SetColor(*[float(c) for c in color[:3]])
    display.SetGlyphTypeFromString("Cross2D")
    display.SetPointLabelsVisibility(False)


def points_to_frame_stack_markups(scene, points: dict, cine: Cine, name: str, color, label: str = "",
                                  ijk_to_ras=None):
    """A point list (``vtkMRMLMarkupsFiducialNode``) of ``points`` on the cine's frame-stack geometry.

    ``points`` maps a frame index to ``(row, column)`` pixel positions on that
    frame (fractions allowed); each becomes a locked control point on slice
    ``frame`` of the frame-stack grid (``ijk_to_ras``, :func:`frame_stack_geometry`
    of the input, else the default geometry with the cine's spacing).
    """
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.CreateDefaultDisplayNodes()
    m = _default_ijk_to_ras(_xy_spacing(cine)) if ijk_to_ras is None else ijk_to_ras
    _fill_points(node, [(c, r, int(f)) for f in sorted(points, key=int) for r, c in points[f]], m, color, label)
    return node


def points_to_markups_sequence(scene, points: dict, cine_sequence, browser, name: str, color, label: str = "",
                               role: str = "points"):
    """``points`` (frame index -> ``(row, column)`` list) as a Sequence of point lists synchronized in ``browser``.

    One locked point list per item of ``cine_sequence`` (frames without points get an empty one),
    on that frame's own 2D geometry, so the browser's proxy shows the selected frame's points.
    Returns the sequence node (attribute ``CAC_role`` = ``role``).
    """
    slicer = _slicer()
    sequence = _sequence_like(scene, cine_sequence, f"{name} sequence", role)
    by_frame = {int(f): v for f, v in points.items()}
    for k in range(cine_sequence.GetNumberOfDataNodes()):
        item = slicer.vtkMRMLMarkupsFiducialNode()
        item.SetName(f"{name}_{k:04d}")
        _fill_points(item, [(c, r, 0) for r, c in by_frame.get(k, [])],
                     _ijk_to_ras(cine_sequence.GetNthDataNode(k)), color, label)
        sequence.SetDataNodeAtValue(item, cine_sequence.GetNthIndexValue(k))
    proxy = _show_in_browser(scene, browser, sequence, name)
    if proxy is not None:
        if proxy.GetDisplayNode() is None:  # items in a sequence keep no display node: the proxy's shows them all
            proxy.CreateDefaultDisplayNodes()
        _style_points(proxy.GetDisplayNode(), color)
    return sequence


def markups_points(markups_node) -> np.ndarray:
    """``(n, 3)`` RAS positions of a point list's control points."""
    return np.array([markups_node.GetNthControlPointPositionVector(i)
                     for i in range(markups_node.GetNumberOfControlPoints())], float).reshape(-1, 3)


def drawn_over(segmentation_node):
    """The node whose cine ``segmentation_node`` belongs to, or None if it records none.

    The input it was made for (:data:`REF_MADE_FOR`), else the volume it was
    drawn over (the Segment Editor's source volume, its reference image geometry).
    """
    return made_for(segmentation_node) or segmentation_node.GetNodeReference(
        segmentation_node.GetReferenceImageGeometryReferenceRole())


def check_same_cine(segmentation_nodes, cine_node, cine: Cine | None = None) -> None:
    """Refuse segmentations made for, or drawn over, another cine than ``cine_node``'s.

    A segmentation of another cine with the same frame count and size would
    otherwise be read as this cine's calcium (a shape check cannot tell them
    apart).  Cines are compared by pixel content (:meth:`Cine.fingerprint`), so
    a segmentation over a cine's frame-stack volume goes with its Sequence and
    the other way round.  A segmentation that records no volume is let through.
    ``cine`` is ``cine_node``'s, when already read.
    """
    fingerprint = None
    for node in segmentation_nodes:
        source = drawn_over(node)
        if source is None or source.GetID() == cine_node.GetID():
            continue
        if fingerprint is None:
            fingerprint = (cine if cine is not None else node_to_cine(cine_node)).fingerprint()
        try:
            other = node_to_cine(source).fingerprint()
        except CacError:
            other = None
        if other != fingerprint:
            raise CacError(f"segmentation {node.GetName()!r} belongs to {source.GetName()!r}, another cine than "
                           f"{cine_node.GetName()!r}; choose this cine's segmentations (or {source.GetName()!r} "
                           "as the cine)")


def check_nodes_not_cropped(segmentation_nodes, shape, ijk_to_ras=None,
                            volume_name: str = "the frame-stack volume") -> None:
    """Refuse a segmentation drawn over a cropped copy of the frame-stack volume (``shape`` on ``ijk_to_ras``).

    Its reference image geometry (the volume it was drawn over, or the
    geometry of the file it was loaded from) has the volume's frames and axes
    but fewer rows or columns: it could be put back on the frames only by the
    crop's origin, which nothing checks.  The line is
    :func:`CACIdentifierLib.seg_align.check_not_cropped`'s, as ``cac dataset
    add``, ``cac evaluate`` and ``cac identify --annotations`` give it for
    the file (without "and save it again").  CAC Identifier's Apply and CAC
    Annotator run this before :func:`check_same_cine`, which would call the
    crop another cine.  A node without a reference geometry is let through.
    """
    from .seg_align import check_not_cropped

    for node in segmentation_nodes:
        grid = _reference_geometry(node)
        if grid is not None:
            check_not_cropped(f"segmentation {node.GetName()!r}", grid.ijk_to_ras, grid.shape, ijk_to_ras, shape,
                              volume_name, saved=False)


def check_annotation_of(segmentation_node, cine: Cine, shape, ijk_to_ras=None,
                        volume_name: str = "the frame-stack volume") -> None:
    """Refuse an annotation that its file or its grid shows to be of another cine than ``cine``.

    What :func:`check_same_cine` cannot see, because the node records no volume
    (a ``.seg.nrrd`` loaded with Add Data or ``loadSegmentation``):

    - the file it was loaded from records another cine
      (``CAC_source_fingerprint``; :func:`check_recorded_source`);
    - it records none, was drawn over no volume, and its own grid (reference
      image geometry) has another pixel spacing, axes or size than ``shape`` on
      ``ijk_to_ras``, the cine's frame-stack grid (:func:`check_annotation_grid`).

    Either would otherwise be read as this cine's calcium.  ``volume_name`` names
    the cine's volume in the messages.  CAC Identifier and CAC Annotator refuse
    such annotations with the same one-line messages.
    """
    same_cine = cine is not None and check_recorded_source(segmentation_node, cine, volume_name)
    if not same_cine and drawn_over(segmentation_node) is None:
        check_annotation_grid(segmentation_node, shape, ijk_to_ras, volume_name)


def recorded_source(segmentation_node) -> tuple[str | None, str | None]:
    """``(fingerprint, file)``: the ``CAC_source_fingerprint`` recorded in the ``.seg.nrrd`` the node was loaded
    from, and that file's path; ``(None, file or None)`` when the node has no file or its file records none."""
    from pathlib import Path

    from .nrrd_io import ATTR_SOURCE_FINGERPRINT

    storage = segmentation_node.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    if not name or not Path(name).is_file():
        return None, None
    try:
        import nrrd

        recorded = nrrd.read_header(name).get(ATTR_SOURCE_FINGERPRINT)
    except Exception:  # not a NRRD header we can read: nothing recorded to check
        return None, name
    return (str(recorded).strip() or None) if recorded else None, name


def check_recorded_source(segmentation_node, cine: Cine, volume_name: str = "the frame-stack volume") -> bool:
    """Refuse a node loaded from a ``.seg.nrrd`` that records another cine (``CAC_source_fingerprint``);
    True when its file records this cine, False when it records none (or the node has no file)."""
    from pathlib import Path

    from .cine import short_fingerprint

    recorded, name = recorded_source(segmentation_node)
    if recorded is None:
        return False
    if recorded != cine.fingerprint():
        raise CacError(f"segmentation {segmentation_node.GetName()!r} was loaded from {Path(name).name}, which "
                       f"records another cine (source fingerprint {short_fingerprint(recorded)}, this cine's is "
                       f"{short_fingerprint(cine.fingerprint())}); choose the annotations made on {volume_name}")
    return True


def _frames_of(shape) -> str:
    return f"{shape[0]} frames of {shape[1]} x {shape[2]} px"


def check_annotation_grid(segmentation_node, shape, ijk_to_ras, volume_name: str = "the frame-stack volume") -> None:
    """Refuse a segmentation whose own grid (reference image geometry) has another pixel spacing, axes or size
    than ``shape`` on ``ijk_to_ras``; one without a reference geometry (or no grid to compare) is let through."""
    grid = _reference_geometry(segmentation_node)
    if grid is None or ijk_to_ras is None:
        return
    name = segmentation_node.GetName()
    own, cine = np.asarray(grid.ijk_to_ras)[:3, :3], np.asarray(ijk_to_ras, float)[:3, :3]
    if not np.allclose(own, cine, rtol=1e-4, atol=1e-6):
        a, b = np.linalg.norm(own, axis=0), np.linalg.norm(cine, axis=0)
        raise CacError(f"segmentation {name!r} has pixel spacing {a[1]:.4g} x {a[0]:.4g} mm, but "
                       f"{volume_name} has {b[1]:.4g} x {b[0]:.4g} mm (or other axes): it was drawn over another cine; "
                       f"choose the segmentations drawn over {volume_name}")
    if tuple(grid.shape) != tuple(shape):
        raise CacError(f"segmentation {name!r} covers {_frames_of(grid.shape)}, but {volume_name} "
                       f"has {_frames_of(shape)}: it was drawn over another cine; choose the segmentations drawn over "
                       f"{volume_name}")


def segmentation_masks(segmentation_node, shape=None, ijk_to_ras=None) -> dict[str, np.ndarray]:
    """Each segment of a (frame-stack) Segmentation node as a ``(n_frames, rows, columns)`` bool array.

    The full geometry is the segmentation's reference image geometry, else
    ``shape`` on the cine's grid ``ijk_to_ras`` (:func:`frame_stack_geometry`
    of the cine node; without it, the labelmap's directions at origin 0);
    labelmaps with a smaller extent (drawn in the Segment Editor) are padded
    back to it.
    """
    full = _reference_geometry(segmentation_node)
    if full is None and shape is not None:
        first = _first_labelmap(segmentation_node)
        if first is not None:
            if ijk_to_ras is not None:
                matrix = np.array(ijk_to_ras, dtype=float)
            else:
                matrix = _matrix_ijk_to_ras(first)
                matrix[:3, 3] = 0.0
            full = _Grid(matrix, (0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1))
    return {name: mask for name, (mask, _) in _segments_on_grid(segmentation_node, full).items()}


def _matrix_ijk_to_ras(oriented) -> np.ndarray:
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(m)
    return _as_array(m)


@dataclass
class _Grid:
    ijk_to_ras: np.ndarray  # 4x4
    extent: tuple[int, int, int, int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        e = self.extent
        return (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)

    @property
    def spacing_xyz(self) -> np.ndarray:
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)


def _reference_geometry(segmentation_node) -> _Grid | None:
    """The frame-stack grid the segmentation was drawn on (reference image geometry), if known."""
    slicer = _slicer()
    converter = slicer.vtkSegmentationConverter
    text = segmentation_node.GetSegmentation().GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName()
    )
    if text:
        geometry = slicer.vtkOrientedImageData()
        if converter.DeserializeImageGeometry(text, geometry, False):
            return _Grid(_matrix_ijk_to_ras(geometry), tuple(int(v) for v in geometry.GetExtent()))
    return None


def _segments_on_grid(segmentation_node, full: _Grid | None) -> dict[str, tuple[np.ndarray, _Grid]]:
    """Each segment as a bool array on ``full`` (or on its own labelmap grid when ``full`` is None)."""
    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    name_rep = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    out: dict[str, tuple[np.ndarray, _Grid]] = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        labelmap = segment.GetRepresentation(name_rep)
        if labelmap is None:
            raise CacError(
                f"segment {segment.GetName()!r} has no binary labelmap; in Slicer convert the "
                "segmentation to a binary labelmap before saving"
            )
        extent = tuple(int(v) for v in labelmap.GetExtent())
        own = _Grid(_matrix_ijk_to_ras(labelmap), extent)
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            values = np.zeros((0, 0, 0), dtype=bool)
        else:
            values = _array_from_image(labelmap) == segment.GetLabelValue()
        grid = full or _Grid(own.ijk_to_ras, (0, max(extent[1], 0), 0, max(extent[3], 0), 0, max(extent[5], 0)))
        out[segment.GetName()] = (_paste(values, own, grid, segment.GetName()), grid)
    return out


def _paste(values: np.ndarray, own: _Grid, full: _Grid, name: str) -> np.ndarray:
    """Place a labelmap ``values`` on grid ``own`` into a zero array on ``full`` (same voxel lattice)."""
    out = np.zeros(full.shape, dtype=bool)
    if values.size == 0:
        return out
    if not np.allclose(own.ijk_to_ras[:3, :3], full.ijk_to_ras[:3, :3], rtol=1e-4, atol=1e-6):
        raise CacError(
            f"segment {name!r} is not on the frame-stack grid (different spacing or orientation); "
            "draw it over the cine's frame-stack volume"
        )
    # Index of the labelmap's first voxel in the full grid (exact integers on a shared lattice).
    start_ras = own.ijk_to_ras @ np.array([own.extent[0], own.extent[2], own.extent[4], 1.0])
    ijk = np.linalg.solve(full.ijk_to_ras, start_ras)[:3]
    if not np.allclose(ijk, np.round(ijk), atol=1e-3):
        raise CacError(f"segment {name!r} is shifted off the frame-stack grid; draw it over the frame-stack volume")
    i0, j0, k0 = (int(v) for v in np.round(ijk))
    i0 -= full.extent[0]
    j0 -= full.extent[2]
    k0 -= full.extent[4]
    nk, nj, ni = values.shape
    # Clip to the full grid: Slicer can grow a labelmap past the volume when painting at the border.
    src = values[
        max(0, -k0) : nk - max(0, k0 + nk - full.shape[0]),
        max(0, -j0) : nj - max(0, j0 + nj - full.shape[1]),
        max(0, -i0) : ni - max(0, i0 + ni - full.shape[2]),
    ]
    ks, js, is_ = max(0, k0), max(0, j0), max(0, i0)
    out[ks : ks + src.shape[0], js : js + src.shape[1], is_ : is_ + src.shape[2]] = src
    return out


def _first_labelmap(node):
    slicer = _slicer()
    name_rep = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    segmentation = node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        labelmap = segmentation.GetNthSegment(i).GetRepresentation(name_rep)
        if labelmap is not None:
            return labelmap
    return None


# --------------------------------------------------------------------------- tables and plots


def refill_table(target, source) -> None:
    """Put ``source``'s rows and columns into table node ``target``, keeping ``target``'s name, storage
    node (where the user saves it) and references; ``Copy`` would replace them with ``source``'s."""
    target.CopyContent(source, True)
    target.Modified()


def remove_with_helpers(scene, node) -> None:
    """Remove ``node`` with its display and storage nodes (``RemoveNode`` alone leaves them in the scene)."""
    if node is None or not scene.IsNodePresent(node):
        return
    helpers = []
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                          ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            helpers += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


def table_from_columns(scene, name: str, columns: dict[str, list]):
    """Add a ``vtkMRMLTableNode`` with one column per entry (ints, floats, bools or strings).

    All columns must have the same length; ``None`` in a numeric column
    becomes NaN.  Empty columns are numeric (doubles), for a table filled row
    by row with :func:`append_table_row`.
    """
    vtk = _vtk()
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise CacError(f"table {name!r}: columns differ in length {lengths}")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    vtable = table.GetTable()
    for key, values in columns.items():
        values = list(values.tolist() if isinstance(values, np.ndarray) else values)
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, (bool, np.bool_, int, np.integer)) for v in present) and len(present) == len(values):
            array = vtk.vtkIntArray()
            for v in values:
                array.InsertNextValue(int(v))
        elif all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in present):
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(float("nan") if v is None else float(v))
        else:
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue("" if v is None else str(v))
        array.SetName(str(key))
        vtable.AddColumn(array)
    table.Modified()
    return table


def append_table_row(table, values: dict) -> int:
    """Append one row to a table: ``values[column]`` in every column, NaN (numeric) or "" where missing.

    Keys that are not columns are an error (a misspelt column would otherwise
    be lost silently).  Returns the new number of rows.
    """
    vtable = table.GetTable()
    arrays = [vtable.GetColumn(i) for i in range(vtable.GetNumberOfColumns())]
    names = [array.GetName() for array in arrays]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise CacError(f"table {table.GetName()!r} has no column {unknown[0]!r} (columns: {names})")
    row = []  # converted first, so that a refused row leaves the table as it was
    for name, array in zip(names, arrays):
        value = values.get(name)
        if array.IsA("vtkStringArray"):
            row.append("" if value is None else str(value))
        elif array.IsA("vtkIntArray"):
            if value is None:
                raise CacError(f"table {table.GetName()!r}: integer column {name!r} needs a value")
            row.append(int(value))
        else:
            row.append(float("nan") if value is None else float(value))
    for array, value in zip(arrays, row):
        array.InsertNextValue(value)
    vtable.Modified()
    table.Modified()
    return vtable.GetNumberOfRows()


_MARKERS = {"none": "MarkerStyleNone", "circle": "MarkerStyleCircle", "square": "MarkerStyleSquare",
            "diamond": "MarkerStyleDiamond", "cross": "MarkerStyleCross", "plus": "MarkerStylePlus"}
_LINES = {"none": "LineStyleNone", "solid": "LineStyleSolid", "dash": "LineStyleDash", "dot": "LineStyleDot"}


def plot_from_table(scene, table, x_column: str, y_columns, title: str = "", x_label: str = "",
                    y_label: str = "", markers=None, line_styles=None, colors=None, chart=None):
    """Plot ``y_columns`` of ``table`` against ``x_column`` in a ``vtkMRMLPlotChartNode``.

    One ``vtkMRMLPlotSeriesNode`` (scatter type, named after the column) per y
    column.  ``markers`` / ``line_styles`` / ``colors`` map a y column to
    "circle"... / "solid", "dash", "none"... / RGB.  Pass ``chart`` to add the
    series to an existing chart.  Returns the chart node.
    """
    slicer = _slicer()
    if isinstance(y_columns, str):
        y_columns = [y_columns]
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    for column in [x_column, *y_columns]:
        if column not in names:
            raise CacError(f"table {table.GetName()!r} has no column {column!r} (columns: {names})")
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", title or f"{table.GetName()} chart")
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_label or x_column)
    chart.SetYAxisTitle(y_label)
    for column in y_columns:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", column)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        marker = (markers or {}).get(column, "none")
        series.SetMarkerStyle(getattr(slicer.vtkMRMLPlotSeriesNode, _MARKERS.get(marker, "MarkerStyleNone")))
        line = (line_styles or {}).get(column, "solid")
        series.SetLineStyle(getattr(slicer.vtkMRMLPlotSeriesNode, _LINES.get(line, "LineStyleSolid")))
        if colors and column in colors:
            series.SetColor(*[float(c) for c in colors[column][:3]])
        else:
            series.SetUniqueColor()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def _beat_frames(sync_result) -> list[float]:
    """Beat landmarks in (possibly fractional) frames: ``beat_frames`` if given, else phase wraps."""
    beats = getattr(sync_result, "beat_frames", None)
    if beats is not None and len(beats) > 0:
        return [float(b) for b in beats]
    phase = getattr(sync_result, "phase", None)
    if phase is None:
        return []
    phase = np.asarray(phase, dtype=float)
    # A beat starts where the phase wraps from near 1 back to near 0.
    wraps = np.flatnonzero(np.diff(phase) < -0.5) + 1
    starts = [0.0] if phase.size and phase[0] < 0.05 else []
    return starts + [float(k) for k in wraps]


def sync_to_scene(scene, sync_result, name: str = "CAC sync", frame_time_ms=None) -> SyncNodes:
    """Show a synchronization result in Slicer: signal table + plot chart, beat markers, pairs table.

    ``sync_result`` is read duck-typed: ``signal`` (one value per frame, the
    ECG-like signal of the paper's eq. 1), ``phase`` (per frame, in [0, 1)),
    ``pairs`` (list of ``[non_contrast_frame, contrast_frame]``),
    ``period_frames``, ``onset_frame`` and optionally ``beat_frames``.  The
    chart plots the signal against the frame number and marks the beats with a
    second series.  Returns :class:`SyncNodes`.
    """
    signal = np.asarray(getattr(sync_result, "signal", None) if getattr(sync_result, "signal", None) is not None
                        else [], dtype=float)
    n = signal.size
    phase = getattr(sync_result, "phase", None)
    phase = np.full(n, np.nan) if phase is None else np.asarray(phase, dtype=float)
    if phase.size != n:
        raise CacError(f"sync result has {n} signal values but {phase.size} phases")
    beats = [b for b in _beat_frames(sync_result) if 0 <= b <= n - 1]
    beat_rows = {int(round(b)) for b in beats}
    onset = getattr(sync_result, "onset_frame", None)
    columns = {
        "frame": list(range(n)),
        "signal": signal.tolist(),
        "phase": phase.tolist(),
        "beat": [int(k in beat_rows) for k in range(n)],
        "contrast": [int(onset is not None and k >= int(onset)) for k in range(n)],
    }
    if frame_time_ms:
        columns["time_ms"] = [k * float(frame_time_ms) for k in range(n)]
    signal_table = table_from_columns(scene, f"{name} signal", columns)
    period = getattr(sync_result, "period_frames", None)
    for key, value in (("period_frames", period), ("onset_frame", onset)):
        signal_table.SetAttribute(f"CAC_{key}", "" if value is None else _format_number(value))
    # Landmarks fall between frames: mark them on the signal, linearly interpolated.
    beats_table = table_from_columns(
        scene,
        f"{name} beats",
        {"frame": beats, "signal": [float(np.interp(b, np.arange(n), signal)) for b in beats]},
    )
    title = f"{name}: ECG-like signal"
    if period:
        title += f" (period {float(period):.1f} frames"
        title += f", onset frame {int(onset)})" if onset is not None else ")"
    chart = plot_from_table(scene, signal_table, "frame", ["signal"], title=title, x_label="frame",
                            y_label="signal (a.u.)", colors={"signal": (0.2, 0.4, 0.9)})
    chart.SetName(f"{name} chart")
    plot_from_table(scene, beats_table, "frame", ["signal"], title=title, x_label="frame",
                    y_label="signal (a.u.)", markers={"signal": "diamond"}, line_styles={"signal": "none"},
                    colors={"signal": (0.9, 0.1, 0.1)}, chart=chart)
    chart.GetNthPlotSeriesNode(1).SetName(f"{name} beats")
    chart.GetNthPlotSeriesNode(0).SetName(f"{name} signal")
    pairs = [tuple(int(v) for v in p) for p in (getattr(sync_result, "pairs", None) or [])]
    pairs_table = table_from_columns(
        scene,
        f"{name} pairs",
        {
            "pair": list(range(len(pairs))),
            "non_contrast_frame": [p[0] for p in pairs],
            "contrast_frame": [p[1] for p in pairs],
        },
    )
    return SyncNodes(signal_table=signal_table, chart=chart, pairs_table=pairs_table, beats_table=beats_table)


# --------------------------------------------------------------------------- browsers


def browser_of(scene, sequence_node):
    """The sequence browser that plays ``sequence_node``, or None.

    A pair browser (:data:`REF_PAIR_OF_BROWSER`, CAC Annotator's paired
    contrast view) plays the cine too, but is never the cine's own browser.
    """
    if sequence_node is None:
        return None
    for browser in scene.GetNodesByClass("vtkMRMLSequenceBrowserNode"):
        if browser.IsSynchronizedSequenceNode(sequence_node.GetID(), True) and not is_pair_browser(browser):
            return browser
    return None


def is_pair_browser(browser) -> bool:
    """Whether ``browser`` is a second browser showing the paired contrast frames of another's cine."""
    return browser.GetAttribute(REF_PAIR_OF_BROWSER) is not None  # set with the reference, kept without it
