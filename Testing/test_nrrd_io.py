"""The files 3D Slicer reads, written and read without MRML (pynrrd, slicerio).

Every file written here is also read back by slicer-core's own storage nodes
in a fresh scene (what Slicer uses to load it) and, where ITK can read it, by
SimpleITK as an independent check of size, spacing, origin, directions and
pixels; files written by slicer-core's storage nodes are read by our readers.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from CACIdentifierLib import nrrd_io
from CACIdentifierLib.errors import CacError

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
sitk = pytest.importorskip("SimpleITK")

from CACIdentifierLib import mrml, slicercore  # noqa: E402
from scene_helpers import ijk_to_ras, masks_like, synthetic_cine, volume_array  # noqa: E402


@pytest.fixture
def scene():
    return slicercore.new_scene()


def test_file_io_needs_no_slicer_and_no_vtk(tmp_path):
    """The worker and the training jobs run where Slicer's module logics are absent (PythonSlicer)."""
    code = f"""
import sys
import numpy as np
from CACIdentifierLib import nrrd_io
from CACIdentifierLib.cine import Cine
cine = Cine(frames=np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4), frame_time_ms=50.0, spacing_mm=(0.2, 0.3))
nrrd_io.write_seq_nrrd(cine, {str(tmp_path / "a.seq.nrrd")!r})
nrrd_io.write_frame_stack_nrrd(cine, {str(tmp_path / "a.nrrd")!r})
nrrd_io.write_seg_nrrd({str(tmp_path / "a.seg.nrrd")!r}, {{"c": cine.frames > 5}}, cine.spacing_mm)
assert (nrrd_io.read_nrrd_cine({str(tmp_path / "a.seq.nrrd")!r}).frames == cine.frames).all()
assert (nrrd_io.read_seg_nrrd({str(tmp_path / "a.seg.nrrd")!r}).segments["c"] == (cine.frames > 5)).all()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("slicer", "vtk", "vtkmodules", "qt", "torch"))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- cines


def test_frame_stack_nrrd_round_trip(tmp_path):
    cine = synthetic_cine()
    path = nrrd_io.write_frame_stack_nrrd(cine, tmp_path / "run.nrrd")
    back = nrrd_io.read_nrrd_cine(path)
    np.testing.assert_array_equal(back.frames, cine.frames)
    assert back.spacing_mm == pytest.approx((0.2, 0.3))
    assert back.frame_time_ms == pytest.approx(33.3) and back.r_wave_frames == [1, 4]

    # slicer-core's archetype reader (what Slicer's "Add data" uses) in a fresh scene.
    fresh = slicercore.new_scene()
    node = fresh.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    fresh.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    np.testing.assert_array_equal(volume_array(node), cine.frames)
    np.testing.assert_allclose(ijk_to_ras(node)[:3, :3], np.diag([-0.3, -0.2, 1.0]), atol=1e-9)

    # SimpleITK: LPS identity directions, origin 0, spacing (col, row, 1), array [k, row, col].
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (52, 40, 6)
    np.testing.assert_allclose(image.GetSpacing(), (0.3, 0.2, 1.0))
    np.testing.assert_allclose(image.GetOrigin(), (0, 0, 0))
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), cine.frames)



def test_unknown_spacing_is_flagged_in_the_file(tmp_path):
    cine = synthetic_cine(spacing=None)
    path = nrrd_io.write_frame_stack_nrrd(cine, tmp_path / "run.nrrd")
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("CAC_spacing_source") == "unknown"
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.0, 1.0))
    back = nrrd_io.read_nrrd_cine(path)
    assert back.spacing_mm is None and back.spacing_source == "unknown"

    cine.frame_time_ms = None
    seq_path = nrrd_io.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    back = nrrd_io.read_nrrd_cine(seq_path)
    assert back.spacing_mm is None and back.frame_time_ms is None
    np.testing.assert_array_equal(back.frames, cine.frames)
    header = seq_path.read_bytes().split(b"\n\n")[0].decode()
    assert "CAC_spacing_source:=unknown" in header and "axis 3 index values:=0 1 2 3 4 5" in header



def test_seq_nrrd_round_trip(tmp_path):
    cine = synthetic_cine()
    path = nrrd_io.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    back = nrrd_io.read_nrrd_cine(path)
    np.testing.assert_array_equal(back.frames, cine.frames)
    assert back.spacing_mm == pytest.approx((0.2, 0.3))
    assert back.frame_time_ms == pytest.approx(33.3)

    # slicer-core's sequence reader in a fresh scene: index in ms, 2D scalar volumes.
    fresh = slicercore.new_scene()
    sequence = fresh.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    fresh.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(sequence)
    assert sequence.GetNumberOfDataNodes() == 6 and sequence.GetIndexUnit() == "ms"
    assert float(sequence.GetNthIndexValue(2)) == pytest.approx(66.6)
    np.testing.assert_array_equal(volume_array(sequence.GetNthDataNode(4))[0], cine.frames[4])

    # SimpleITK sees the list axis as vector components: (1, rows, cols, n_frames).
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (52, 40, 1) and image.GetNumberOfComponentsPerPixel() == 6
    np.testing.assert_allclose(image.GetSpacing(), (0.3, 0.2, 1.0))
    np.testing.assert_array_equal(np.moveaxis(sitk.GetArrayFromImage(image)[0], -1, 0), cine.frames)



def test_writers_refuse_to_overwrite(tmp_path):
    cine = synthetic_cine(n=2)
    path = nrrd_io.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    with pytest.raises(CacError, match="already exists"):
        nrrd_io.write_seq_nrrd(cine, path)
    with pytest.raises(CacError, match="already exists"):
        nrrd_io.write_seg_nrrd(path, {"a": np.zeros((2, 40, 52), bool)}, (1, 1))
    cine.frames = cine.frames[:1]
    nrrd_io.write_seq_nrrd(cine, path, overwrite=True)
    assert nrrd_io.read_nrrd_cine(path).n_frames == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.seq.nrrd"]  # no temporary left



def test_read_nrrd_cine_errors(tmp_path):
    with pytest.raises(CacError, match="not found"):
        nrrd_io.read_nrrd_cine(tmp_path / "missing.nrrd")
    bad = tmp_path / "bad.nrrd"
    bad.write_text("hello")
    with pytest.raises(CacError, match="not a NRRD"):
        nrrd_io.read_nrrd_cine(bad)


def test_a_segmentation_given_as_the_cine_is_named(tmp_path):
    # Read as a cine, a .seg.nrrd is a stack of label frames; the user must hear which file is wrong.
    seg = nrrd_io.write_seg_nrrd(tmp_path / "roi.seg.nrrd", {"c": np.ones((3, 40, 52), bool)}, (0.3, 0.3))
    with pytest.raises(CacError, match="is a segmentation .*not a cine"):
        nrrd_io.read_nrrd_cine(seg)



def _write_with_storage_node(scene, node, storage, path):
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    return path


@pytest.mark.parametrize("spacing", [(0.2, 0.3), None])
def test_files_slicer_writes_are_read_back(tmp_path, scene, spacing):
    """Frame stacks and sequences written by slicer-core's storage nodes (as Slicer saves them)."""
    cine = synthetic_cine(spacing=spacing)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    path = _write_with_storage_node(scene, volume, slicer.vtkMRMLNRRDStorageNode(), tmp_path / "stack.nrrd")
    back = nrrd_io.read_nrrd_cine(path)
    np.testing.assert_array_equal(back.frames, cine.frames)
    assert back.spacing_mm == (pytest.approx(spacing) if spacing else None)
    assert back.frame_time_ms == pytest.approx(33.3) and back.r_wave_frames == [1, 4]

    sequence, _browser = mrml.cine_to_sequence(scene, cine, "run")
    path = _write_with_storage_node(scene, sequence, slicer.vtkMRMLVolumeSequenceStorageNode(),
                                    tmp_path / "run.seq.nrrd")
    back = nrrd_io.read_nrrd_cine(path)
    np.testing.assert_array_equal(back.frames, cine.frames)
    assert back.spacing_mm == (pytest.approx(spacing) if spacing else None)
    assert back.frame_time_ms == pytest.approx(33.3)

    # Without this project's CAC_* keys (a sequence saved by someone else): frame time from the index.
    for key in list(nrrd_io.cine_attributes(cine)):
        sequence.RemoveAttribute(key)
    path = _write_with_storage_node(scene, sequence, slicer.vtkMRMLVolumeSequenceStorageNode(),
                                    tmp_path / "plain.seq.nrrd")
    back = nrrd_io.read_nrrd_cine(path)
    assert back.frame_time_ms == pytest.approx(33.3) and back.spacing_source == "nrrd"


def test_our_headers_match_slicers(tmp_path, scene):
    """Field by field, our files carry what slicer-core's storage nodes write (geometry, kinds, index, keys)."""
    import nrrd

    cine = synthetic_cine()
    sequence, _browser = mrml.cine_to_sequence(scene, cine, "run")
    theirs = nrrd.read_header(str(_write_with_storage_node(
        scene, sequence, slicer.vtkMRMLVolumeSequenceStorageNode(), tmp_path / "theirs.seq.nrrd")))
    ours = nrrd.read_header(str(nrrd_io.write_seq_nrrd(cine, tmp_path / "ours.seq.nrrd")))
    same_type = {"uint16": "unsigned short", "uint8": "unsigned char"}  # two NRRD spellings of one type
    assert same_type.get(ours["type"], ours["type"]) == theirs["type"]
    for key in ("dimension", "space", "sizes", "kinds", "labels", "units", "DataNodeClassName",
                "axis 3 index type", "axis 3 index values", "CAC_frame_time_ms", "CAC_spacing_source"):
        assert np.array_equal(ours[key], theirs[key]), key
    np.testing.assert_allclose(ours["space directions"], theirs["space directions"])
    np.testing.assert_allclose(ours["space origin"], theirs["space origin"])

    segments = masks_like(cine)
    node = mrml.masks_to_frame_stack_segmentation(scene, segments, cine, "seg")
    theirs = nrrd.read_header(str(_write_with_storage_node(
        scene, node, slicer.vtkMRMLSegmentationStorageNode(), tmp_path / "theirs.seg.nrrd")))
    ours = nrrd.read_header(str(nrrd_io.write_seg_nrrd(tmp_path / "ours.seg.nrrd", segments, cine.spacing_mm)))
    for key in ("sizes", "kinds", "space"):
        assert np.array_equal(ours[key], theirs[key]), key
    for key in ("space directions", "space origin"):
        np.testing.assert_allclose(ours[key], theirs[key])
    for i in range(2):
        for field in ("Layer", "LabelValue", "Name", "Extent"):
            assert ours[f"Segment{i}_{field}"] == theirs[f"Segment{i}_{field}"], (i, field)
    reference = [p for p in theirs["Segmentation_ConversionParameters"].split("&") if p.startswith("Reference")]
    assert reference and reference[0] in ours["Segmentation_ConversionParameters"]


# --------------------------------------------------------------------------- segmentations


def _read_with_storage_node(path):
    scene = slicercore.new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return scene, node



def test_seg_nrrd_matches_the_frame_stack_volume(tmp_path):
    cine = synthetic_cine()
    segments = masks_like(cine)
    volume_path = nrrd_io.write_frame_stack_nrrd(cine, tmp_path / "run.nrrd")
    seg_path = nrrd_io.write_seg_nrrd(
        tmp_path / "run.seg.nrrd", segments, cine.spacing_mm, colors={"calcium": (1.0, 0.0, 0.0)}
    )

    # Open both in a fresh scene with slicer-core's storage nodes, as Slicer would.
    scene, seg_node = _read_with_storage_node(seg_path)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    vstorage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(vstorage)
    vstorage.SetFileName(str(volume_path))
    assert vstorage.ReadData(volume)
    segmentation = seg_node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["calcium", "catheter"]
    assert segmentation.GetSegment("calcium").GetColor() == pytest.approx((1.0, 0.0, 0.0))

    # The labelmaps as loaded lie on the very grid of the frame-stack volume (no resampling):
    # same IJK-to-RAS, extent inside the volume's (the reader crops to each segment's extent),
    # and the reference image geometry is the full volume.
    import vtk

    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    volume_extent = volume.GetImageData().GetExtent()
    for i in range(segmentation.GetNumberOfSegments()):
        stored = segmentation.GetNthSegment(i).GetRepresentation(labelmap_name)
        m = vtk.vtkMatrix4x4()
        stored.GetImageToWorldMatrix(m)
        np.testing.assert_allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)], ijk_to_ras(volume),
                                   atol=1e-9)
        e = stored.GetExtent()
        assert all(e[2 * a] >= volume_extent[2 * a] and e[2 * a + 1] <= volume_extent[2 * a + 1] for a in range(3))
    reference = slicer.vtkOrientedImageData()
    assert slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()),
        reference, False)
    assert reference.GetExtent() == volume_extent
    np.testing.assert_allclose(reference.GetSpacing(), volume.GetSpacing())
    np.testing.assert_allclose(reference.GetOrigin(), volume.GetOrigin())

    # Export each segment onto the volume's geometry with Slicer's own logic: an independent path.
    for name, mask in segments.items():
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = [segmentation.GetSegmentIdBySegmentName(name)]
        import vtk

        id_list = vtk.vtkStringArray()
        for i in ids:
            id_list.InsertNextValue(i)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            seg_node, id_list, labelmap, volume
        )
        assert labelmap.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
        np.testing.assert_allclose(labelmap.GetSpacing(), volume.GetSpacing())
        np.testing.assert_allclose(labelmap.GetOrigin(), volume.GetOrigin())
        np.testing.assert_array_equal(volume_array(labelmap) > 0, mask)

    # SimpleITK: same grid as the volume; overlapping segments sit in two layers (components).
    seg_image = sitk.ReadImage(str(seg_path))
    vol_image = sitk.ReadImage(str(volume_path))
    assert seg_image.GetSize() == vol_image.GetSize()
    np.testing.assert_allclose(seg_image.GetSpacing(), vol_image.GetSpacing())
    np.testing.assert_allclose(seg_image.GetOrigin(), vol_image.GetOrigin())
    np.testing.assert_allclose(seg_image.GetDirection(), vol_image.GetDirection(), atol=1e-9)

    # And our reader gives the masks back in frame order.
    back = nrrd_io.read_seg_nrrd(seg_path, expected_shape=cine.frames.shape, expected_spacing_mm=(0.2, 0.3))
    assert list(back.segments) == ["calcium", "catheter"]
    for name, mask in segments.items():
        np.testing.assert_array_equal(back.segments[name], mask)
    assert back.spacing_mm == pytest.approx((0.2, 0.3))
    np.testing.assert_array_equal(back.union(), segments["calcium"] | segments["catheter"])



def test_empty_masks_keep_the_full_geometry(tmp_path):
    path = nrrd_io.write_seg_nrrd(tmp_path / "empty.seg.nrrd", {"calcium": np.zeros((4, 30, 20), bool)}, None)
    back = nrrd_io.read_seg_nrrd(path)
    assert back.shape == (4, 30, 20) and not back.segments["calcium"].any()
    assert back.spacing_mm == (1.0, 1.0)
    assert sitk.ReadImage(str(path)).GetSize() == (20, 30, 4)



def test_cropped_slicer_style_file_is_padded_back(tmp_path, scene):
    """Slicer saves labelmaps cropped to their content; the reader pads them to the full frame stack."""
    cine = synthetic_cine()
    segments = masks_like(cine)
    segments["catheter"][:] = False
    segments["catheter"][2, 20:22, 30:33] = True
    node = mrml.masks_to_frame_stack_segmentation(scene, segments, cine, "drawn")
    path = tmp_path / "drawn.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetCropToMinimumExtent(True)
    assert storage.WriteData(node)
    assert sitk.ReadImage(str(path)).GetSize() != (52, 40, 6)  # really cropped
    back = nrrd_io.read_seg_nrrd(path, expected_shape=cine.frames.shape)
    for name, mask in segments.items():
        np.testing.assert_array_equal(back.segments[name], mask)



def test_several_annotators_and_geometry_mismatch(tmp_path):
    cine = synthetic_cine()
    rng = np.random.default_rng(3)
    paths, truth = [], []
    for a in range(3):
        mask = rng.random(cine.frames.shape) > 0.97
        truth.append(mask)
        paths.append(nrrd_io.write_seg_nrrd(tmp_path / f"annotator{a}.seg.nrrd", {"calcium": mask}, cine.spacing_mm))
    files = nrrd_io.read_seg_nrrds(paths, expected_shape=cine.frames.shape)
    for f, mask in zip(files, truth):
        np.testing.assert_array_equal(f.segments["calcium"], mask)

    with pytest.raises(CacError, match="frames"):
        nrrd_io.read_seg_nrrd(paths[0], expected_shape=(5, 40, 52))
    with pytest.raises(CacError, match="spacing"):
        nrrd_io.read_seg_nrrd(paths[0], expected_shape=cine.frames.shape, expected_spacing_mm=(0.3, 0.3))
    other = nrrd_io.write_seg_nrrd(tmp_path / "other.seg.nrrd", {"calcium": np.zeros((6, 40, 50), bool)}, (0.2, 0.3))
    with pytest.raises(CacError, match="same cine"):
        nrrd_io.read_seg_nrrds([paths[0], other])
    with pytest.raises(CacError, match="not found"):
        nrrd_io.read_seg_nrrd(tmp_path / "missing.seg.nrrd")
    with pytest.raises(CacError, match="shape"):
        nrrd_io.write_seg_nrrd(tmp_path / "x.seg.nrrd", {"a": np.zeros((2, 3, 4)), "b": np.zeros((2, 3, 5))}, None)



def test_files_can_be_read_from_several_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cine = synthetic_cine()
    rng = np.random.default_rng(5)
    masks = [rng.random(cine.frames.shape) > 0.98 for _ in range(6)]
    paths = [nrrd_io.write_seg_nrrd(tmp_path / f"a{i}.seg.nrrd", {"calcium": m}, cine.spacing_mm)
             for i, m in enumerate(masks)]
    with ThreadPoolExecutor(4) as pool:
        files = list(pool.map(lambda p: nrrd_io.read_seg_nrrd(p, expected_shape=cine.frames.shape), paths * 3))
    for i, f in enumerate(files):
        np.testing.assert_array_equal(f.segments["calcium"], masks[i % 6])


