"""Segmentation files written by slicer-core's own ``vtkMRMLSegmentationStorageNode``, as Slicer saves them.

Independent of the project's writer: the tests use these files as what a user
brings from Slicer (full extent, cropped to the minimum extent, drawn over a
cropped copy of the frame-stack volume, or without a reference geometry).
"""

from __future__ import annotations

import numpy as np

slicer = None


def _slicer():
    global slicer
    if slicer is None:
        from CACIdentifierLib import slicercore

        slicercore.get_scene()  # registers the Segmentations logic headless
        import slicer as _s

        slicer = _s
    return slicer


def _oriented(array: np.ndarray, spacing_mm, origin_px=(0, 0)):
    """vtkOrientedImageData of ``array`` (frames, rows, cols) on the frame-stack axes (LPS as in files).

    ``origin_px`` (row, col): the array's first pixel is that pixel of the full frame.
    """
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    s = _slicer()
    array = np.ascontiguousarray(array.astype(np.uint8))
    image = vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(3, 1)  # VTK_UNSIGNED_CHAR
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    out = s.vtkOrientedImageData()
    out.ShallowCopy(image)
    row, col = spacing_mm
    out.SetSpacing(col, row, 1.0)
    # RAS = (-x, -y, z) of LPS: the frame-stack volume's axes.
    out.SetDirections([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    out.SetOrigin(-col * origin_px[1], -row * origin_px[0], 0.0)
    return out


def write(path, masks: dict, spacing_mm=(0.3, 0.3), *, box=None, reference=True, crop=False) -> str:
    """Write ``masks`` (name -> full-frame (frames, rows, cols) bool) with slicer-core's storage node.

    ``box`` (row0, row1, col0, col1): the segmentation was drawn over a cropped
    copy of the frame-stack volume: its reference geometry and labelmaps cover
    only that box, with the origin moved to the box's first pixel (pixels
    outside the box are dropped).  ``reference=False`` stores no reference
    geometry.  ``crop=True`` saves cropped to the minimum extent (Slicer's
    "crop to minimum extent" option).
    """
    s = _slicer()
    scene = s.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotation")
    node.SetSourceRepresentationToBinaryLabelmap()
    segmentation = node.GetSegmentation()
    first = next(iter(masks.values()))
    r0, r1, c0, c1 = box or (0, first.shape[1], 0, first.shape[2])
    if reference:
        geometry = _oriented(np.zeros((first.shape[0], r1 - r0, c1 - c0), np.uint8), spacing_mm, (r0, c0))
        converter = s.vtkSegmentationConverter
        segmentation.SetConversionParameter(converter.GetReferenceImageGeometryParameterName(),
                                            converter.SerializeImageGeometry(geometry))
    for name, mask in masks.items():
        sid = segmentation.AddEmptySegment(name, name, [1.0, 0.8, 0.0])
        labelmap = _oriented(np.asarray(mask)[:, r0:r1, c0:c1], spacing_mm, (r0, c0))
        s.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, node, sid, s.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, labelmap.GetExtent())
    storage = s.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetCropToMinimumExtent(bool(crop))
    assert storage.WriteData(node), f"slicer-core could not write {path}"
    return str(path)
