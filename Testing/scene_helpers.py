"""Small cines, masks and node readers shared by the scene and file tests (test_mrml.py, test_nrrd_io.py)."""

from __future__ import annotations

import numpy as np
from CACIdentifierLib.cine import Cine


def synthetic_cine(n=6, rows=40, cols=52, spacing=(0.2, 0.3), frame_time=33.3, seed=0) -> Cine:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 4096, size=(n, rows, cols)).astype(np.uint16)
    return Cine(
        frames=frames,
        frame_time_ms=frame_time,
        spacing_mm=spacing,
        spacing_source="imager" if spacing else "unknown",
        r_wave_frames=[1, 4],
    )


def masks_like(cine: Cine, seed=1) -> dict[str, np.ndarray]:
    n, r, c = cine.frames.shape
    calcium = np.zeros((n, r, c), bool)
    calcium[1, 5:9, 10:20] = True
    calcium[3, r - 3 : r, c - 4 : c] = True  # touches the border
    other = np.zeros((n, r, c), bool)
    other[1, 7:12, 15:18] = True  # overlaps calcium: needs a second layer
    other[n - 1, 0, 0] = True
    return {"calcium": calcium, "catheter": other}


def volume_array(node) -> np.ndarray:
    """A scalar volume node's voxels as (k, j, i), read through VTK (not through our code)."""
    from vtkmodules.util import numpy_support

    nx, ny, nz = node.GetImageData().GetDimensions()
    return numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(nz, ny, nx)


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def load_segmentation(scene, path, name):
    """A .seg.nrrd read into a node by slicer-core's storage node, as Slicer's Add Data loads it."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), path
    return node


def drawn_over_crop(scene, cine: Cine, calcium: np.ndarray, box, name="drawn"):
    """A segmentation node drawn in the Segment Editor over a cropped copy (``box`` = r0, r1, c0, c1) of the
    cine's frame-stack volume, as Crop Volume leaves it: on the volume's pixels, fewer rows and columns."""
    from CACIdentifierLib import mrml

    r0, r1, c0, c1 = box
    crop = mrml.cine_to_frame_stack_volume(scene, Cine(frames=cine.frames[:, r0:r1, c0:c1].copy(),
                                                       frame_time_ms=cine.frame_time_ms, spacing_mm=cine.spacing_mm),
                                           f"{name} crop")
    row, col = cine.spacing_mm
    crop.SetOrigin(-col * c0, -row * r0, 0.0)
    drawn = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    drawn.SetReferenceImageGeometryParameterFromVolumeNode(crop)  # the Segment Editor's source volume: the crop
    mrml._fill_segmentation(drawn, {"calcium": calcium[:, r0:r1, c0:c1]}, None, {}, mrml.frame_stack_geometry(crop))
    return drawn
