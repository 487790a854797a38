"""MRML round trips on the real slicer-core scene (no mocks).

Every file written here is also read back by slicer-core's own storage nodes
in a fresh scene and, where ITK can read it, by SimpleITK as an independent
check of size, spacing, origin, directions and pixels.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
sitk = pytest.importorskip("SimpleITK")

from CACIdentifierLib import mrml, slicercore  # noqa: E402
from CACIdentifierLib.cine import Cine  # noqa: E402
from CACIdentifierLib.errors import CacError  # noqa: E402
from conftest import BIPLANE, MISSING  # noqa: E402


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
    from vtkmodules.util import numpy_support

    nx, ny, nz = node.GetImageData().GetDimensions()
    return numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(nz, ny, nx)


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


@pytest.fixture
def scene():
    return slicercore.new_scene()


# --------------------------------------------------------------------------- scene


def test_new_scene_has_the_logics(scene):
    assert scene.IsA("vtkMRMLScene")
    assert slicercore.logic(scene, "sequences").IsA("vtkSlicerSequencesLogic")
    assert slicercore.logic(scene, "segmentations").IsA("vtkSlicerSegmentationsModuleLogic")
    assert slicercore.logic(scene, "application").GetModuleLogic("Sequences") is not None
    for cls in ("vtkMRMLSequenceBrowserNode", "vtkMRMLSegmentationNode", "vtkMRMLPlotChartNode"):
        assert scene.IsNodeClassRegistered(cls)
    assert slicercore.get_scene() is slicercore.get_scene()
    assert slicercore.get_scene() is not scene
    assert not slicercore.in_slicer_application()
    with pytest.raises(KeyError, match="new_scene"):
        slicercore.logic(slicer.vtkMRMLScene(), "sequences")  # a bare scene has no logics


# --------------------------------------------------------------------------- sequences


def test_cine_sequence_round_trip_and_browser(scene):
    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "run1")
    assert sequence.GetNumberOfDataNodes() == cine.n_frames
    assert sequence.GetIndexName() == "time" and sequence.GetIndexUnit() == "ms"
    assert [float(sequence.GetNthIndexValue(k)) for k in range(cine.n_frames)] == pytest.approx(
        cine.frame_times_ms()
    )
    back = mrml.sequence_to_cine(sequence)
    np.testing.assert_array_equal(back.frames, cine.frames)
    assert back.frames.dtype == np.uint16
    assert back.spacing_mm == pytest.approx(cine.spacing_mm)
    assert back.frame_time_ms == pytest.approx(33.3)
    assert back.r_wave_frames == [1, 4]

    proxy = browser.GetProxyNode(sequence)
    assert proxy is not None and proxy.GetName() == "run1"
    assert proxy.GetDisplayNode() is not None
    for k in (0, 3, 5):
        browser.SetSelectedItemNumber(k)
        np.testing.assert_array_equal(volume_array(proxy)[0], cine.frames[k])
    # Frame geometry: column spacing along x, row spacing along y, LPS identity.
    np.testing.assert_allclose(ijk_to_ras(proxy)[:3, :3], np.diag([-0.3, -0.2, 1.0]))


def test_sequence_behind_a_proxy_volume(scene):
    """One rule for the node a user picks: a Sequence, its browser's proxy volume, or a plain volume."""
    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "picked")
    proxy = browser.GetProxyNode(sequence)
    stack = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    assert mrml.sequence_behind(sequence) is sequence
    assert mrml.sequence_behind(proxy) is sequence
    assert mrml.sequence_behind(stack) is None and mrml.sequence_behind(None) is None
    browser.SetSelectedItemNumber(4)  # the proxy shows frame 4 but stands for the whole cine
    np.testing.assert_array_equal(mrml.node_to_cine(proxy).frames, cine.frames)
    np.testing.assert_array_equal(mrml.node_to_cine(stack).frames, cine.frames)


def test_sequence_without_frame_time_or_spacing(scene):
    cine = synthetic_cine(spacing=None, frame_time=None)
    sequence, _ = mrml.cine_to_sequence(scene, cine, "unknowns")
    assert sequence.GetIndexName() == "frame"
    assert [sequence.GetNthIndexValue(k) for k in range(3)] == ["0", "1", "2"]
    assert sequence.GetAttribute(mrml.ATTR_SPACING_SOURCE) == "unknown"
    assert sequence.GetNthDataNode(0).GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    back = mrml.sequence_to_cine(sequence)
    assert back.spacing_mm is None and back.spacing_source == "unknown"
    assert back.frame_time_ms is None


def test_frame_stack_volume_round_trip(scene):
    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    np.testing.assert_array_equal(volume_array(volume), cine.frames)
    assert volume.GetSpacing() == pytest.approx((0.3, 0.2, 1.0))
    assert volume.GetOrigin() == pytest.approx((0, 0, 0))
    back = mrml.frame_stack_volume_to_cine(volume)
    np.testing.assert_array_equal(back.frames, cine.frames)
    assert back.spacing_mm == pytest.approx((0.2, 0.3))
    assert back.frame_time_ms == pytest.approx(33.3)


# --------------------------------------------------------------------------- NRRD files


def test_frame_stack_nrrd_round_trip(tmp_path):
    cine = synthetic_cine()
    path = mrml.write_frame_stack_nrrd(cine, tmp_path / "run.nrrd")
    back = mrml.read_nrrd_cine(path)
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
    path = mrml.write_frame_stack_nrrd(cine, tmp_path / "run.nrrd")
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("CAC_spacing_source") == "unknown"
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.0, 1.0))
    back = mrml.read_nrrd_cine(path)
    assert back.spacing_mm is None and back.spacing_source == "unknown"

    cine.frame_time_ms = None
    seq_path = mrml.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    back = mrml.read_nrrd_cine(seq_path)
    assert back.spacing_mm is None and back.frame_time_ms is None
    np.testing.assert_array_equal(back.frames, cine.frames)
    header = seq_path.read_bytes().split(b"\n\n")[0].decode()
    assert "CAC_spacing_source:=unknown" in header and "axis 3 index values:=0 1 2 3 4 5" in header


def test_seq_nrrd_round_trip(tmp_path):
    cine = synthetic_cine()
    path = mrml.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    back = mrml.read_nrrd_cine(path)
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
    path = mrml.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    with pytest.raises(CacError, match="already exists"):
        mrml.write_seq_nrrd(cine, path)
    with pytest.raises(CacError, match="already exists"):
        mrml.write_seg_nrrd(path, {"a": np.zeros((2, 40, 52), bool)}, (1, 1))
    cine.frames = cine.frames[:1]
    mrml.write_seq_nrrd(cine, path, overwrite=True)
    assert mrml.read_nrrd_cine(path).n_frames == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.seq.nrrd"]  # no temporary left


def test_read_nrrd_cine_errors(tmp_path):
    with pytest.raises(CacError, match="not found"):
        mrml.read_nrrd_cine(tmp_path / "missing.nrrd")
    bad = tmp_path / "bad.nrrd"
    bad.write_text("hello")
    with pytest.raises(CacError, match="not a NRRD"):
        mrml.read_nrrd_cine(bad)


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
    volume_path = mrml.write_frame_stack_nrrd(cine, tmp_path / "run.nrrd")
    seg_path = mrml.write_seg_nrrd(
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
    back = mrml.read_seg_nrrd(seg_path, expected_shape=cine.frames.shape, expected_spacing_mm=(0.2, 0.3))
    assert list(back.segments) == ["calcium", "catheter"]
    for name, mask in segments.items():
        np.testing.assert_array_equal(back.segments[name], mask)
    assert back.spacing_mm == pytest.approx((0.2, 0.3))
    np.testing.assert_array_equal(back.union(), segments["calcium"] | segments["catheter"])


def test_empty_masks_keep_the_full_geometry(tmp_path):
    path = mrml.write_seg_nrrd(tmp_path / "empty.seg.nrrd", {"calcium": np.zeros((4, 30, 20), bool)}, None)
    back = mrml.read_seg_nrrd(path)
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
    back = mrml.read_seg_nrrd(path, expected_shape=cine.frames.shape)
    for name, mask in segments.items():
        np.testing.assert_array_equal(back.segments[name], mask)


def test_several_annotators_and_geometry_mismatch(tmp_path):
    cine = synthetic_cine()
    rng = np.random.default_rng(3)
    paths, truth = [], []
    for a in range(3):
        mask = rng.random(cine.frames.shape) > 0.97
        truth.append(mask)
        paths.append(mrml.write_seg_nrrd(tmp_path / f"annotator{a}.seg.nrrd", {"calcium": mask}, cine.spacing_mm))
    files = mrml.read_seg_nrrds(paths, expected_shape=cine.frames.shape)
    for f, mask in zip(files, truth):
        np.testing.assert_array_equal(f.segments["calcium"], mask)

    with pytest.raises(CacError, match="frames"):
        mrml.read_seg_nrrd(paths[0], expected_shape=(5, 40, 52))
    with pytest.raises(CacError, match="spacing"):
        mrml.read_seg_nrrd(paths[0], expected_shape=cine.frames.shape, expected_spacing_mm=(0.3, 0.3))
    other = mrml.write_seg_nrrd(tmp_path / "other.seg.nrrd", {"calcium": np.zeros((6, 40, 50), bool)}, (0.2, 0.3))
    with pytest.raises(CacError, match="same cine"):
        mrml.read_seg_nrrds([paths[0], other])
    with pytest.raises(CacError, match="not found"):
        mrml.read_seg_nrrd(tmp_path / "missing.seg.nrrd")
    with pytest.raises(CacError, match="shape"):
        mrml.write_seg_nrrd(tmp_path / "x.seg.nrrd", {"a": np.zeros((2, 3, 4)), "b": np.zeros((2, 3, 5))}, None)


def test_segmentation_sequence_follows_the_browser(scene):
    cine = synthetic_cine()
    masks = np.zeros(cine.frames.shape, bool)
    for k in range(cine.n_frames):
        masks[k, 2 : 4 + k, 3 : 5 + 2 * k] = True  # a different ROI size per frame
    sequence, browser = mrml.cine_to_sequence(scene, cine, "run")
    seg_sequence = mrml.masks_to_segmentation_sequence(scene, masks, sequence, browser, name="ROI")
    assert seg_sequence.GetNumberOfDataNodes() == cine.n_frames
    assert browser.IsSynchronizedSequenceNode(seg_sequence)
    proxy = browser.GetProxyNode(seg_sequence)
    assert proxy is not None and proxy.IsA("vtkMRMLSegmentationNode") and proxy.GetName() == "ROI"
    for k in (4, 0, 2):
        browser.SetSelectedItemNumber(k)
        proxy = browser.GetProxyNode(seg_sequence)
        got = mrml.segmentation_masks(proxy)["CAC ROI"]
        np.testing.assert_array_equal(got[0], masks[k])
        np.testing.assert_array_equal(volume_array(browser.GetProxyNode(sequence))[0], cine.frames[k])


def test_frame_stack_segmentation_node(scene):
    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    segments = masks_like(cine)
    node = mrml.masks_to_frame_stack_segmentation(scene, segments, cine, "ROIs", reference_volume=volume)
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    got = mrml.segmentation_masks(node)
    for name, mask in segments.items():
        np.testing.assert_array_equal(got[name], mask)
    single = mrml.masks_to_frame_stack_segmentation(scene, segments["calcium"], cine, "one", segments="CAC ROI")
    assert single.GetSegmentation().GetNthSegment(0).GetName() == "CAC ROI"
    with pytest.raises(CacError, match="shape"):
        mrml.masks_to_frame_stack_segmentation(scene, segments["calcium"][:2], cine, "bad")


# --------------------------------------------------------------------------- tables and plots


def test_table_and_plot(scene):
    table = mrml.table_from_columns(
        scene, "t", {"frame": [0, 1, 2], "value": [0.5, None, 2.0], "label": ["a", "b", "c"]}
    )
    assert table.GetNumberOfRows() == 3 and table.GetNumberOfColumns() == 3
    assert table.GetTable().GetColumnByName("frame").IsA("vtkIntArray")
    assert np.isnan(table.GetTable().GetColumnByName("value").GetValue(1))
    assert table.GetCellText(2, 2) == "c"
    chart = mrml.plot_from_table(scene, table, "frame", ["value"], title="T", x_label="frame", y_label="v",
                                 markers={"value": "circle"})
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNode() is table and series.GetYColumnName() == "value"
    assert series.GetMarkerStyle() == slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle
    with pytest.raises(CacError, match="no column"):
        mrml.plot_from_table(scene, table, "frame", ["nope"])
    with pytest.raises(CacError, match="length"):
        mrml.table_from_columns(scene, "bad", {"a": [1, 2], "b": [1]})


def test_sync_to_scene(scene):
    n = 40
    period = 12.5
    phase = (np.arange(n) - 3) / period % 1.0
    result = SimpleNamespace(
        signal=np.cos(2 * np.pi * phase) + 0.1,
        phase=phase,
        pairs=[[0, 13], [1, 14], [2, 15]],
        period_frames=period,
        onset_frame=10,
    )
    nodes = mrml.sync_to_scene(scene, result, "run", frame_time_ms=33.0)
    assert nodes.signal_table.GetNumberOfRows() == n
    assert nodes.pairs_table.GetNumberOfRows() == 3
    assert nodes.pairs_table.GetCellText(1, 2) == "14"
    beats = [int(nodes.beats_table.GetCellText(i, 0)) for i in range(nodes.beats_table.GetNumberOfRows())]
    assert beats == [3, 16, 28]  # where the phase wraps to 0
    assert nodes.chart.GetNumberOfPlotSeriesNodes() == 2
    assert nodes.chart.GetNthPlotSeriesNode(1).GetTableNode() is nodes.beats_table
    assert nodes.signal_table.GetAttribute("CAC_onset_frame") == "10"
    # Explicit beat frames win over the phase.
    result.beat_frames = [5, 17]
    nodes = mrml.sync_to_scene(scene, result, "run2")
    assert nodes.beats_table.GetNumberOfRows() == 2


# --------------------------------------------------------------------------- real data


def _load_biplane() -> Cine:
    try:
        from CACIdentifierLib.cine_io import load_cine
    except ImportError:
        load_cine = None
    if load_cine is not None:
        return load_cine(BIPLANE)
    import pydicom

    ds = pydicom.dcmread(BIPLANE)
    return Cine(frames=ds.pixel_array, frame_time_ms=float(ds.FrameTime))


@pytest.mark.skipif(not BIPLANE.is_file(), reason=MISSING)
def test_real_cine_through_slicer_files(tmp_path, scene):
    import pydicom

    cine = _load_biplane()
    reference = pydicom.dcmread(BIPLANE).pixel_array  # independent decode
    np.testing.assert_array_equal(cine.frames, reference)
    assert cine.frames.shape == (17, 512, 512)

    sequence, browser = mrml.cine_to_sequence(scene, cine, "biplane")
    assert float(sequence.GetNthIndexValue(16)) == pytest.approx(16 * 66.0)
    browser.SetSelectedItemNumber(12)
    np.testing.assert_array_equal(volume_array(browser.GetProxyNode(sequence))[0], reference[12])

    back = mrml.read_nrrd_cine(mrml.write_seq_nrrd(cine, tmp_path / "biplane.seq.nrrd"))
    np.testing.assert_array_equal(back.frames, reference)
    assert back.frame_time_ms == pytest.approx(66.0)
    assert back.spacing_mm == cine.spacing_mm


@pytest.mark.skipif(not BIPLANE.is_file(), reason=MISSING)
@pytest.mark.filterwarnings("ignore::CACIdentifierLib.errors.CacWarning")  # blank frame 0, short cine: expected
def test_real_sync_result_in_the_scene(scene):
    """The real synchronizer's result (fractional beat landmarks) shown as tables and a chart."""
    from CACIdentifierLib import sync
    cine = _load_biplane()
    result = sync.synchronize(cine.frames, cine.frame_time_ms, r_wave_frames=cine.r_wave_frames, ecg=cine.ecg)
    nodes = mrml.sync_to_scene(scene, result, "biplane", frame_time_ms=cine.frame_time_ms)
    assert nodes.signal_table.GetNumberOfRows() == cine.n_frames
    assert nodes.pairs_table.GetNumberOfRows() == len(result.pairs)
    beats = [b for b in result.beat_frames if 0 <= b <= cine.n_frames - 1]
    assert nodes.beats_table.GetNumberOfRows() == len(beats)
    for i, b in enumerate(beats):
        assert float(nodes.beats_table.GetCellText(i, 0)) == pytest.approx(b, abs=1e-4)
        expected = np.interp(b, np.arange(cine.n_frames), np.asarray(result.signal, float))
        assert float(nodes.beats_table.GetCellText(i, 1)) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    column = nodes.signal_table.GetTable().GetColumnByName("signal")
    np.testing.assert_allclose([column.GetValue(k) for k in range(cine.n_frames)], result.signal)


def test_node_to_cine_accepts_sequence_proxy_and_frame_stack(scene):
    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "run")
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    browser.SetSelectedItemNumber(2)
    for node in (sequence, browser.GetProxyNode(sequence), volume):
        back = mrml.node_to_cine(node)
        np.testing.assert_array_equal(back.frames, cine.frames)  # the proxy gives all frames, not one
        assert back.frame_time_ms == pytest.approx(33.3)
    table = mrml.table_from_columns(scene, "t", {"a": [1]})
    with pytest.raises(CacError, match="choose a cine"):
        mrml.node_to_cine(table)


def test_files_can_be_read_from_several_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cine = synthetic_cine()
    rng = np.random.default_rng(5)
    masks = [rng.random(cine.frames.shape) > 0.98 for _ in range(6)]
    paths = [mrml.write_seg_nrrd(tmp_path / f"a{i}.seg.nrrd", {"calcium": m}, cine.spacing_mm)
             for i, m in enumerate(masks)]
    with ThreadPoolExecutor(4) as pool:
        files = list(pool.map(lambda p: mrml.read_seg_nrrd(p, expected_shape=cine.frames.shape), paths * 3))
    for i, f in enumerate(files):
        np.testing.assert_array_equal(f.segments["calcium"], masks[i % 6])
    scratch = mrml._scratch_scene()
    assert scratch.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0  # nothing left behind


def test_spacing_without_a_source_is_kept(tmp_path, scene):
    cine = Cine(frames=np.zeros((2, 8, 9), np.uint8), spacing_mm=(0.25, 0.5))  # spacing_source left "unknown"
    for back in (
        mrml.read_nrrd_cine(mrml.write_frame_stack_nrrd(cine, tmp_path / "a.nrrd")),
        mrml.read_nrrd_cine(mrml.write_seq_nrrd(cine, tmp_path / "a.seq.nrrd")),
        mrml.sequence_to_cine(mrml.cine_to_sequence(scene, cine, "a")[0]),
    ):
        assert back.spacing_mm == pytest.approx((0.25, 0.5)) and back.spacing_source == "given"
