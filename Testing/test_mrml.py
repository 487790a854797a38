"""MRML round trips on the real slicer-core scene (no mocks).

The files Slicer reads are tested in test_nrrd_io.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
sitk = pytest.importorskip("SimpleITK")

from CACIdentifierLib import mrml, nrrd_io, slicercore  # noqa: E402
from CACIdentifierLib.cine import Cine  # noqa: E402
from CACIdentifierLib.errors import CacError  # noqa: E402
from conftest import BIPLANE, MISSING  # noqa: E402
from scene_helpers import ijk_to_ras, masks_like, synthetic_cine, volume_array  # noqa: E402


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
    assert sequence.GetAttribute(nrrd_io.ATTR_SPACING_SOURCE) == "unknown"
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


# --------------------------------------------------------------------------- segmentations


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


def test_table_filled_row_by_row(scene):
    table = mrml.table_from_columns(scene, "rows", {"step": [], "loss": []})
    assert table.GetNumberOfRows() == 0
    assert table.GetTable().GetColumnByName("step").IsA("vtkDoubleArray")  # empty columns are doubles
    assert mrml.append_table_row(table, {"step": 1, "loss": 0.5}) == 1
    assert mrml.append_table_row(table, {"step": 2}) == 2
    vtable = table.GetTable()
    assert vtable.GetValueByName(1, "step").ToDouble() == 2.0
    assert np.isnan(vtable.GetValueByName(1, "loss").ToDouble())
    with pytest.raises(CacError, match="no column 'los'"):
        mrml.append_table_row(table, {"step": 3, "los": 0.1})
    assert table.GetNumberOfRows() == 2  # nothing appended by the refused row
    mixed = mrml.table_from_columns(scene, "mixed", {"name": ["a"], "n": [1]})
    mrml.append_table_row(mixed, {"n": 2})
    assert mixed.GetCellText(1, 0) == "" and mixed.GetCellText(1, 1) == "2"
    with pytest.raises(CacError, match="integer column 'n'"):
        mrml.append_table_row(mixed, {"name": "b"})
    assert mixed.GetNumberOfRows() == 2 and mixed.GetTable().GetColumnByName("name").GetNumberOfValues() == 2


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

    back = nrrd_io.read_nrrd_cine(nrrd_io.write_seq_nrrd(cine, tmp_path / "biplane.seq.nrrd"))
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


def test_spacing_without_a_source_is_kept(tmp_path, scene):
    cine = Cine(frames=np.zeros((2, 8, 9), np.uint8), spacing_mm=(0.25, 0.5))  # spacing_source left "unknown"
    for back in (
        nrrd_io.read_nrrd_cine(nrrd_io.write_frame_stack_nrrd(cine, tmp_path / "a.nrrd")),
        nrrd_io.read_nrrd_cine(nrrd_io.write_seq_nrrd(cine, tmp_path / "a.seq.nrrd")),
        mrml.sequence_to_cine(mrml.cine_to_sequence(scene, cine, "a")[0]),
    ):
        assert back.spacing_mm == pytest.approx((0.25, 0.5)) and back.spacing_source == "given"


def test_new_scene_keeps_slicers_output_window(monkeypatch):
    """Inside Slicer the VTK output window feeds the Error Log: a scene made there must not replace it."""
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    monkeypatch.setattr(slicer, "app", object(), raising=False)  # what in_slicer_application() looks for
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    assert slicercore.in_slicer_application()
    before = vtkOutputWindow.GetInstance()
    slicercore.new_scene()
    assert vtkOutputWindow.GetInstance() is before
