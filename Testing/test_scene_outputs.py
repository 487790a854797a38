"""What CAC Identifier's Logic puts in the scene, on the real slicer-core scene (no mocks).

- The ROIs lie on the input's own grid when the user has moved, turned or
  rescaled the cine (checked with Slicer's own labelmap export as reference).
- A spacing the user set on a cine read without one is used.
- One cine's results never refill the nodes that hold another's; outputs or
  inputs deleted during a run are handled.
- The scratch folder holding the raw cine is removed after a failed start and
  after Cancel.

The worker's outputs (``report.json``, ``roi.seg.nrrd``) are written here with the
I/O layer, as ``cac identify`` writes them; the worker itself is run in test_worker.py.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from CACIdentifierLib import logic, mrml, nrrd_io, slicercore, worker  # noqa: E402
from CACIdentifierLib.errors import CacError  # noqa: E402
from scene_helpers import drawn_over_crop, ijk_to_ras, load_segmentation, synthetic_cine  # noqa: E402

# A rotation about the viewing axis and a shift: a cine the user has placed in the scene.
TURN = np.array([[np.cos(0.3), -np.sin(0.3), 0.0], [np.sin(0.3), np.cos(0.3), 0.0], [0.0, 0.0, 1.0]])
ORIGIN = (12.5, -7.0, 3.0)


@pytest.fixture
def scene():
    return slicercore.new_scene()


def roi_of(cine, seed=0) -> np.ndarray:
    roi = np.zeros(cine.frames.shape, bool)
    rng = np.random.default_rng(seed)
    for k in range(cine.n_frames):
        r, c = rng.integers(2, cine.frames.shape[1] - 8), rng.integers(2, cine.frames.shape[2] - 8)
        roi[k, r:r + 5, c:c + 7] = True
    return roi


def worker_outputs(folder, cine, roi, static_spots=None):
    """``report.json`` and ``roi.seg.nrrd`` as ``cac identify`` writes them (``static_spots``: frame ->
    ``[(row, col)]``, the centres of ROIs removed on spots that never move)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = [{"index": k, "contrast_frame": k, "probability": 0.5, "roi_area_mm2": float(roi[k].sum())}
              for k in range(cine.n_frames)]
    report = {"frames": frames}
    if static_spots:
        report["static_spots"] = {str(f): [list(c) for c in v] for f, v in static_spots.items()}
    (folder / "report.json").write_text(json.dumps(report))
    nrrd_io.write_seg_nrrd(folder / "roi.seg.nrrd", {"CAC ROI": roi}, cine.spacing_mm, overwrite=True)
    return folder


def place(node, spacing=(0.2, 0.3)) -> None:
    """Move, turn and rescale a volume as a user would in the Volumes or Transforms module."""
    directions = TURN @ np.array(mrml.FRAME_DIRECTIONS_RAS)
    node.SetIJKToRASDirections(*directions[0], *directions[1], *directions[2])
    node.SetOrigin(*ORIGIN)
    node.SetSpacing(spacing[0], spacing[1], 1.0)


def exported(scene, segmentation, reference) -> np.ndarray:
    """The segmentation resampled by Slicer onto ``reference``'s grid ([k, j, i]), the independent reference."""
    import vtk

    out = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentation().GetSegmentIDs(ids)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, out, reference)
    from vtkmodules.util import numpy_support

    nx, ny, nz = out.GetImageData().GetDimensions()
    array = numpy_support.vtk_to_numpy(out.GetImageData().GetPointData().GetScalars()).reshape(nz, ny, nx)
    assert np.allclose(ijk_to_ras(out), ijk_to_ras(reference))
    return array > 0


# --------------------------------------------------------------------------- geometry


def test_roi_lies_on_a_moved_frame_stack_volume(scene, tmp_path):
    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "placed cine")
    place(volume)
    roi = roi_of(cine)
    out = logic.load_identify_outputs(scene, volume, worker_outputs(tmp_path / "out", cine, roi))
    segmentation = out["roi_segmentation"]
    # Slicer resamples the segmentation onto the moved volume: the ROI is where it was drawn.
    np.testing.assert_array_equal(exported(scene, segmentation, volume), roi)
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is volume
    # And the Lib reads it back on that grid.
    np.testing.assert_array_equal(mrml.segmentation_masks(segmentation, shape=roi.shape)["CAC ROI"], roi)


def test_roi_sequence_follows_moved_frames(scene, tmp_path):
    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "placed")
    for k in range(sequence.GetNumberOfDataNodes()):
        place(sequence.GetNthDataNode(k))
    roi = roi_of(cine, seed=2)
    out = logic.load_identify_outputs(scene, sequence, worker_outputs(tmp_path / "out", cine, roi))
    frame = sequence.GetNthDataNode(0)
    for k in (0, cine.n_frames - 1):
        item = out["roi_sequence"].GetNthDataNode(k)
        labelmap = mrml._first_labelmap(item)
        assert np.allclose(mrml._matrix_ijk_to_ras(labelmap), ijk_to_ras(sequence.GetNthDataNode(k)))
    # The frame-stack ROI takes the first frame's grid; slice k is frame k.
    stack = out["roi_segmentation"]
    assert np.allclose(mrml._matrix_ijk_to_ras(mrml._first_labelmap(stack))[:3, :3], ijk_to_ras(frame)[:3, :3])
    np.testing.assert_array_equal(mrml.segmentation_masks(stack, shape=roi.shape)["CAC ROI"], roi)


def test_a_spacing_the_user_set_is_used(scene):
    """A cine read without spacing shows 1.0 mm ("unknown"); a spacing set on it afterwards is the user's."""
    cine = synthetic_cine(spacing=None)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    assert mrml.node_to_cine(volume).spacing_mm is None
    volume.SetSpacing(0.25, 0.4, 1.0)  # x = column, y = row
    back = mrml.node_to_cine(volume)
    assert back.spacing_mm == pytest.approx((0.4, 0.25)) and back.spacing_source == "user"
    sequence, _ = mrml.cine_to_sequence(scene, cine, "seq")
    assert mrml.node_to_cine(sequence).spacing_mm is None
    for k in range(sequence.GetNumberOfDataNodes()):
        sequence.GetNthDataNode(k).SetSpacing(0.3, 0.3, 1.0)
    back = mrml.node_to_cine(sequence)
    assert back.spacing_mm == pytest.approx((0.3, 0.3)) and back.spacing_source == "user"
    # A file's own spacing is never replaced by this rule.
    known = mrml.cine_to_frame_stack_volume(scene, synthetic_cine(), "known")
    assert mrml.node_to_cine(known).spacing_source == "imager"


# --------------------------------------------------------------------------- which nodes are filled


def test_another_cines_results_are_never_refilled(scene, tmp_path):
    first, second = synthetic_cine(seed=0), synthetic_cine(seed=1)
    a = mrml.cine_to_frame_stack_volume(scene, first, "cine A")
    b = mrml.cine_to_frame_stack_volume(scene, second, "cine B")
    roi_a, roi_b = roi_of(first, 0), roi_of(second, 1)
    out_a = logic.load_identify_outputs(scene, a, worker_outputs(tmp_path / "a", first, roi_a))
    seg_a, table_a = out_a["roi_segmentation"], out_a["table"]
    # The panel keeps A's outputs selected; the run on B must make its own.
    out_b = logic.load_identify_outputs(scene, b, worker_outputs(tmp_path / "b", second, roi_b),
                                        output_segmentation=seg_a, output_table=table_a)
    assert out_b["roi_segmentation"] is not seg_a and out_b["table"] is not table_a
    np.testing.assert_array_equal(mrml.segmentation_masks(seg_a, shape=roi_a.shape)["CAC ROI"], roi_a)
    assert table_a.GetName() == "cine A CAC results"
    # Running A again refills A's nodes.
    again = logic.load_identify_outputs(scene, a, worker_outputs(tmp_path / "a2", first, roi_b),
                                        output_segmentation=seg_a, output_table=table_a)
    assert again["roi_segmentation"] is seg_a and again["table"] is table_a
    np.testing.assert_array_equal(mrml.segmentation_masks(seg_a, shape=roi_b.shape)["CAC ROI"], roi_b)
    # A node the user chose that holds nothing yet is filled.
    mine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my ROI")
    out = logic.load_identify_outputs(scene, b, tmp_path / "b", output_segmentation=mine)
    assert out["roi_segmentation"] is mine and mrml.is_made_for(mine, b) and mrml.made_for(mine) is b


def test_nodes_deleted_during_the_run(scene, tmp_path):
    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "cine")
    folder = worker_outputs(tmp_path / "out", cine, roi_of(cine))
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chosen")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "chosen table")
    scene.RemoveNode(output)
    scene.RemoveNode(table)
    out = logic.load_identify_outputs(scene, volume, folder, output_segmentation=output, output_table=table)
    for node in (out["roi_segmentation"], out["table"]):
        assert scene.IsNodePresent(node)
    scene.RemoveNode(volume)
    with pytest.raises(CacError, match="removed from the scene"):
        logic.load_identify_outputs(scene, volume, folder)


# --------------------------------------------------------------------------- the scratch folder


def _scratch(tmp_path) -> list:
    return sorted(p.name for p in tmp_path.glob("cac-identify-*"))


def test_failed_start_leaves_no_scratch_folder(scene, tmp_path, monkeypatch):
    monkeypatch.setenv("CAC_TMPDIR", str(tmp_path))
    volume = mrml.cine_to_frame_stack_volume(scene, synthetic_cine(), "cine")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty annotation")
    job = logic.IdentifyJob(scene, volume, [empty])
    with pytest.raises(CacError, match="has no segment"):
        job.start()
    assert _scratch(tmp_path) == []


class _SleepingRunner(worker.ProcessRunner):
    """Starts a child that sleeps (SIGTERM kills it) in place of the worker."""

    def start(self, command, env=None, cwd=None) -> None:
        super().start([sys.executable, "-c", "import time; time.sleep(60)"], env=env, cwd=cwd)


def test_cancel_removes_the_scratch_folder_once_the_worker_ends(scene, tmp_path, monkeypatch):
    monkeypatch.setenv("CAC_TMPDIR", str(tmp_path))
    volume = mrml.cine_to_frame_stack_volume(scene, synthetic_cine(), "cine")
    job = logic.IdentifyJob(scene, volume, runner=_SleepingRunner())
    job.start()
    assert (job.work_dir / "cine.seq.nrrd").is_file() and job.runner.running()
    job.cancel()
    job.cleanup()  # returns at once; the folder goes when the child has died
    deadline = time.monotonic() + 20
    while _scratch(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _scratch(tmp_path) == [] and not job.runner.running()


# --------------------------------------------------------------------------- CAC Annotator's nodes


def _count(scene, class_name) -> int:
    return scene.GetNumberOfNodesByClass(class_name)


def test_links_kept_the_old_way_are_read_and_upgraded(scene):
    """Scenes saved by development builds before the node references kept the input's ID in the CAC_made_for
    attribute and marked the pair browser by attribute only: their painted annotators are reused (no second,
    empty "annotator 1"), their pair browser too, and the links become references."""
    from CACAnnotatorLib import annotation

    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "frames")
    sequence, browser = mrml.cine_to_sequence(scene, cine, "cine")
    old = []
    for i in (1, 2, 3):
        node = mrml.masks_to_frame_stack_segmentation(scene, {"calcium": roi_of(cine, i)}, cine, f"annotator {i}",
                                                      reference_volume=volume)
        node.SetAttribute(nrrd_io.ATTR_ROLE, annotation.ROLE_ANNOTATOR)
        node.SetAttribute(mrml.ATTR_MADE_FOR, volume.GetID())  # the old way: the ID in the attribute
        old.append(node)
    gone = mrml.masks_to_frame_stack_segmentation(scene, {"calcium": roi_of(cine, 4)}, cine, "of a deleted cine")
    gone.SetAttribute(mrml.ATTR_MADE_FOR, "vtkMRMLScalarVolumeNode99")
    pair = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", annotation.PAIR_BROWSER_NAME)
    pair.SetAttribute(mrml.REF_PAIR_OF_BROWSER, browser.GetID())
    pair.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    segmentations = _count(scene, "vtkMRMLSegmentationNode")

    again = annotation.create_annotator_segmentations(scene, volume, 3)
    assert [n.GetID() for n in again] == [n.GetID() for n in old]
    assert _count(scene, "vtkMRMLSegmentationNode") == segmentations
    assert all(mrml.made_for(n) is volume and n.GetAttribute(mrml.ATTR_MADE_FOR) == "yes" for n in old)
    assert mrml.made_for(gone) is None and mrml.is_output(gone)  # its input is gone: still an output
    browsers = _count(scene, "vtkMRMLSequenceBrowserNode")
    view = annotation.PairView(scene, sequence, {0: 3})
    assert view.paired is pair and _count(scene, "vtkMRMLSequenceBrowserNode") == browsers
    assert pair.GetNodeReferenceID(mrml.REF_PAIR_OF_BROWSER) == browser.GetID() and mrml.is_pair_browser(pair)
    assert mrml.browser_of(scene, sequence) is browser


def test_annotator_clicks_do_not_pile_up_nodes(scene):
    from CACAnnotatorLib import annotation

    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "frames")
    place(volume)  # a moved volume: the annotators' grid is the volume's
    nodes = annotation.create_annotator_segmentations(scene, volume, 3)
    assert np.allclose(mrml._matrix_ijk_to_ras(mrml._first_labelmap(nodes[0])), ijk_to_ras(volume))
    masks = [roi_of(cine, seed) for seed in range(3)]
    for node, mask in zip(nodes, masks):  # paint
        node.GetSegmentation().RemoveAllSegments()
        mrml._fill_segmentation(node, {"calcium": mask}, None, {}, ijk_to_ras(volume))
    segmentations = _count(scene, "vtkMRMLSegmentationNode")
    again = annotation.create_annotator_segmentations(scene, volume, 3)
    assert [n.GetID() for n in again] == [n.GetID() for n in nodes]
    assert _count(scene, "vtkMRMLSegmentationNode") == segmentations
    np.testing.assert_array_equal(mrml.segmentation_masks(again[0], cine.frames.shape)["calcium"], masks[0])
    assert len(annotation.create_annotator_segmentations(scene, volume, 4)) == 4
    assert _count(scene, "vtkMRMLSegmentationNode") == segmentations + 1

    vote = annotation.majority_vote_node(scene, nodes, volume)
    np.testing.assert_array_equal(mrml.segmentation_masks(vote, cine.frames.shape)["calcium"],
                                  np.sum(masks, axis=0) >= 2)
    masks[2] = masks[0]  # annotator 3 now agrees with annotator 1
    nodes[2].GetSegmentation().RemoveAllSegments()
    mrml._fill_segmentation(nodes[2], {"calcium": masks[2]}, None, {}, ijk_to_ras(volume))
    count = _count(scene, "vtkMRMLSegmentationNode")
    revote = annotation.majority_vote_node(scene, nodes, volume)
    assert revote is vote and _count(scene, "vtkMRMLSegmentationNode") == count
    np.testing.assert_array_equal(mrml.segmentation_masks(vote, cine.frames.shape)["calcium"],
                                  np.sum(masks, axis=0) >= 2)
    # A vote chosen as an input is never overwritten: a new node is made.
    assert annotation.majority_vote_node(scene, [*nodes, vote], volume) is not vote

    table, chart, _ = annotation.compare_with_annotators(scene, vote, nodes, volume)
    tables, charts = _count(scene, "vtkMRMLTableNode"), _count(scene, "vtkMRMLPlotChartNode")
    series = _count(scene, "vtkMRMLPlotSeriesNode")
    table2, chart2, _ = annotation.compare_with_annotators(scene, nodes[0], nodes, volume, worst_first=True)
    assert table2 is table and chart2 is chart
    assert (_count(scene, "vtkMRMLTableNode"), _count(scene, "vtkMRMLPlotChartNode"),
            _count(scene, "vtkMRMLPlotSeriesNode")) == (tables, charts, series)
    ioms = [float(table.GetCellText(r, 1)) for r in range(table.GetNumberOfRows())]
    assert ioms == sorted(ioms)


def test_annotation_without_reference_geometry_on_a_moved_volume(scene):
    """A segmentation that lost its reference geometry (made by a script, or an older Slicer) is read on the
    cine's own grid, not at origin 0."""
    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "frames")
    place(volume)
    truth = roi_of(cine, seed=5)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "scripted")
    mrml._fill_segmentation(node, {"calcium": truth}, None, {}, ijk_to_ras(volume))
    converter = slicer.vtkSegmentationConverter
    node.GetSegmentation().SetConversionParameter(converter.GetReferenceImageGeometryParameterName(), "")
    assert mrml._reference_geometry(node) is None
    got = mrml.segmentation_masks(node, cine.frames.shape, mrml.frame_stack_geometry(volume))["calcium"]
    np.testing.assert_array_equal(got, truth)


# --------------------------------------------------------------------------- a scene imported into another


def _save(scene, path):
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    assert scene.Commit(), "the scene could not be saved"


def test_outputs_keep_their_cine_when_a_saved_scene_is_imported(scene, tmp_path):
    """Slicer gives imported nodes new IDs where they clash; the link output -> cine must follow.

    (It was an ID in an attribute, which kept the old ID and then named the other scene's cine.)
    """
    from CACAnnotatorLib import annotation

    first = synthetic_cine(seed=0)
    a = mrml.cine_to_frame_stack_volume(scene, first, "cine A")
    sequence_a, browser_a = mrml.cine_to_sequence(scene, first, "cine A sequence")
    out = logic.load_identify_outputs(scene, a, worker_outputs(tmp_path / "a", first, roi_of(first)))
    annotation.create_annotator_segmentations(scene, a, 2)
    annotation.PairView(scene, sequence_a, {0: 3})
    _save(scene, tmp_path / "a.mrml")
    ids_in_a = {out["roi_segmentation"].GetID(), out["table"].GetID(), a.GetID()}

    other = slicercore.new_scene()
    b = mrml.cine_to_frame_stack_volume(other, synthetic_cine(seed=1), "cine B")
    sequence_b, browser_b = mrml.cine_to_sequence(other, synthetic_cine(seed=1), "cine B sequence")
    assert b.GetID() in ids_in_a  # the IDs clash: the import must rename A's nodes
    other.SetURL(str(tmp_path / "a.mrml"))
    other.Import()  # reports failure: only the .mrml was saved, not the pixels (the links are what is checked)
    imported_a = other.GetFirstNodeByName("cine A")
    assert imported_a is not None and imported_a.GetID() != b.GetID()
    segmentation = other.GetFirstNodeByName("cine A CAC ROI (frame stack)")
    table = other.GetFirstNodeByName("cine A CAC results")
    for node in (segmentation, table):
        assert mrml.made_for(node).GetID() == imported_a.GetID()
        assert not mrml.is_made_for(node, b)
    # B's run does not refill A's outputs, and B has no annotators yet.
    assert logic.reusable_output(other, segmentation, b, logic.ROLE_ROI) is None
    assert logic.reusable_output(other, table, b, logic.ROLE_RESULTS) is None
    assert annotation.made_for(other, "vtkMRMLSegmentationNode", b, annotation.ROLE_ANNOTATOR) == []
    assert len(annotation.made_for(other, "vtkMRMLSegmentationNode", imported_a, annotation.ROLE_ANNOTATOR)) == 2
    # B's browser is B's, and A's pair browser still names A's browser.
    assert mrml.browser_of(other, sequence_b).GetID() == browser_b.GetID()
    pair = other.GetFirstNodeByName(annotation.PAIR_BROWSER_NAME)
    imported_browser_a = other.GetFirstNodeByName("cine A sequence browser")
    assert browser_a.GetID() == browser_b.GetID() != imported_browser_a.GetID()  # clashed, renamed
    assert pair.GetNodeReferenceID(mrml.REF_PAIR_OF_BROWSER) == imported_browser_a.GetID()


def test_browser_of_never_answers_the_pair_browser(scene):
    from CACAnnotatorLib import annotation

    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "cine")
    pair = annotation.PairView(scene, sequence, {0: 3}).paired
    scene.RemoveNode(browser)  # the user makes a new browser for the cine: it comes after the pair browser
    assert mrml.browser_of(scene, sequence) is None
    again = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "new browser")
    again.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    assert mrml.browser_of(scene, sequence).GetID() == again.GetID() != pair.GetID()


# --------------------------------------------------------------------------- another cine's segmentations


def test_segmentations_of_another_cine_of_the_same_size_are_refused(scene, tmp_path, monkeypatch):
    from CACAnnotatorLib import annotation

    first, second = synthetic_cine(seed=0), synthetic_cine(seed=1)
    assert first.frames.shape == second.frames.shape
    a = mrml.cine_to_frame_stack_volume(scene, first, "cine A")
    b = mrml.cine_to_frame_stack_volume(scene, second, "cine B")
    nodes_a = annotation.create_annotator_segmentations(scene, a, 3)
    roi_a = logic.load_identify_outputs(scene, a, worker_outputs(tmp_path / "a", first, roi_of(first)))
    with pytest.raises(CacError, match="belongs to 'cine A', another cine than 'cine B'"):
        annotation.majority_vote_node(scene, nodes_a, b)
    with pytest.raises(CacError, match="another cine"):
        annotation.compare_with_annotators(scene, roi_a["roi_segmentation"], nodes_a, b)
    with pytest.raises(CacError, match="another cine"):
        annotation.export_to_dataset(tmp_path / "dataset", tmp_path / "cine.seq.nrrd", nodes_a, b)
    assert not (tmp_path / "dataset").exists()
    monkeypatch.setenv("CAC_TMPDIR", str(tmp_path))
    with pytest.raises(CacError, match="another cine"):
        logic.IdentifyJob(scene, b, nodes_a).start()
    # A user's segmentation drawn over A (the Segment Editor's source volume) is A's too.
    drawn = mrml.masks_to_frame_stack_segmentation(scene, {"calcium": roi_of(first)}, first, "drawn",
                                                   reference_volume=a)
    with pytest.raises(CacError, match="'drawn' belongs to 'cine A'"):
        annotation.majority_vote_node(scene, [drawn], b)
    # The same cine as a Sequence and as a frame-stack volume is one cine.
    sequence, _ = mrml.cine_to_sequence(scene, first, "cine A sequence")
    mrml.check_same_cine([*nodes_a, drawn, roi_a["roi_segmentation"]], sequence)
    assert annotation.majority_vote_node(scene, nodes_a, a) is not None


class _RecordingRunner(worker.ProcessRunner):
    """Records the worker's command and runs nothing of it."""

    def start(self, command, env=None, cwd=None) -> None:
        self.started = list(command)
        super().start([sys.executable, "-c", "pass"], env=env, cwd=cwd)


def _inputs_and_calcium(scene, cine, where, tmp_path):
    """The cine as a frame-stack volume and as a Sequence, a calcium mask marked at ``where`` and an empty
    ``files`` folder: what the Identifier's annotation checks start from."""
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "this frames")
    sequence, _ = mrml.cine_to_sequence(scene, cine, "this run")
    calcium = np.zeros(cine.frames.shape, bool)
    calcium[where] = True
    files = tmp_path / "files"
    files.mkdir()
    return volume, sequence, calcium, files


def test_identifier_refuses_annotation_files_of_another_cine(scene, tmp_path, monkeypatch):
    """Annotation files loaded into the scene (no volume recorded) were written for the worker with *this* cine's
    fingerprint, whatever cine they were drawn on: a file recording another cine, or one of another pixel spacing,
    was compared with the AI as this cine's calcium.  They are refused as CAC Annotator refuses them, with the
    same lines, for a frame-stack volume and for a Sequence as input, before anything is written."""
    import slicer_seg_files
    from CACAnnotatorLib import annotation

    monkeypatch.setenv("CAC_TMPDIR", str(tmp_path))
    this, other = synthetic_cine(seed=0, spacing=(0.2, 0.3)), synthetic_cine(seed=1, spacing=(0.25, 0.35))
    volume, sequence, calcium, files = _inputs_and_calcium(scene, this, (1, slice(5, 9), slice(10, 20)), tmp_path)
    mine = nrrd_io.write_seg_nrrd(files / "mine.seg.nrrd", {"calcium": calcium}, this.spacing_mm,
                                  source_fingerprint=this.fingerprint())
    slicer_saved = slicer_seg_files.write(files / "slicer_saved.seg.nrrd", {"calcium": calcium}, this.spacing_mm)
    theirs = nrrd_io.write_seg_nrrd(files / "theirs.seg.nrrd", {"calcium": calcium}, other.spacing_mm,
                                    source_fingerprint=other.fingerprint())
    same_grid = nrrd_io.write_seg_nrrd(files / "same_grid.seg.nrrd", {"calcium": calcium}, this.spacing_mm,
                                       source_fingerprint=other.fingerprint())
    unrecorded = slicer_seg_files.write(files / "unrecorded.seg.nrrd", {"calcium": calcium}, other.spacing_mm)
    bigger = np.zeros((8, 40, 52), bool)
    bigger[1, 5:9, 10:20] = True
    longer = slicer_seg_files.write(files / "longer.seg.nrrd", {"calcium": bigger}, this.spacing_mm)
    good = [load_segmentation(scene, path, f"good {i}") for i, path in enumerate((mine, slicer_saved))]

    for source, where in ((volume, "'this frames'"), (sequence, "the frame-stack volume of 'this run sequence'")):
        for path, message in (
                (theirs, "segmentation 'foreign' was loaded from theirs.seg.nrrd, which records another cine (source "
                         f"fingerprint {other.fingerprint()[14:22]}, this cine's is {this.fingerprint()[14:22]}); "
                         f"choose the annotations made on {where}"),
                (same_grid, "segmentation 'foreign' was loaded from same_grid.seg.nrrd, which records another cine"),
                (unrecorded, f"segmentation 'foreign' has pixel spacing 0.25 x 0.35 mm, but {where} has 0.2 x 0.3 mm "
                             f"(or other axes): it was drawn over another cine; choose the segmentations drawn over "
                             f"{where}"),
                (longer, f"segmentation 'foreign' covers 8 frames of 40 x 52 px, but {where} has 6 frames of 40 x 52 "
                         f"px: it was drawn over another cine")):
            foreign = load_segmentation(scene, path, "foreign")
            job = logic.IdentifyJob(scene, source, [*good, foreign], runner=_RecordingRunner())
            with pytest.raises(CacError) as info:
                job.start()
            assert str(info.value).startswith(message), str(info.value)
            assert "\n" not in str(info.value) and not hasattr(job.runner, "started")
            assert _scratch(tmp_path) == []  # nothing written: no copy of the cine left behind
            if source is volume:  # the very line CAC Annotator gives for it
                with pytest.raises(CacError) as annotator:
                    annotation.majority_vote_node(scene, [*good, foreign], volume)
                assert str(annotator.value) == str(info.value)
            scene.RemoveNode(foreign)

        # This cine's files (recorded, or Slicer's own Save on its grid) go to the worker, as this cine's calcium.
        job = logic.IdentifyJob(scene, source, good, runner=_RecordingRunner(), work_dir=tmp_path / "files")
        job.start()
        job.runner.wait()
        written = [nrrd_io.read_seg_nrrd(files / f"annotation{i}.seg.nrrd", expected_shape=this.frames.shape)
                   for i in range(2)]
        assert [str(files / f"annotation{i}.seg.nrrd") in job.runner.started for i in range(2)] == [True, True]
        for seg in written:
            assert seg.source_fingerprint == this.fingerprint()
            np.testing.assert_array_equal(seg.union(), calcium)


def test_identifier_refuses_a_segmentation_drawn_over_a_cropped_volume(scene, tmp_path, monkeypatch):
    """Apply refused a segmentation drawn over a cropped copy of the frame-stack volume with "belongs to ..., another
    cine" (drawn in the scene) or "covers ... px: it was drawn over another cine" (loaded from the file Slicer saved);
    CAC Annotator, `cac dataset add`, `evaluate` and `identify` refuse it as a crop.  Now Apply does too, with their
    line (one check, `mrml.check_nodes_not_cropped` -> `seg_align.check_not_cropped`), for a frame-stack volume and
    for a Sequence as input, before anything is written or started.  A file saved cropped to its minimum extent, and
    the drawn one once given the volume's geometry, are handed to the worker as this cine's calcium."""
    import slicer_seg_files
    from CACAnnotatorLib import annotation
    from CACIdentifierLib.seg_align import check_not_cropped

    monkeypatch.setenv("CAC_TMPDIR", str(tmp_path))
    cine = synthetic_cine(n=6, rows=40, cols=52)
    volume, sequence, calcium, files = _inputs_and_calcium(scene, cine, (1, slice(12, 18), slice(20, 30)), tmp_path)
    minimum = slicer_seg_files.write(files / "minimum.seg.nrrd", {"calcium": calcium}, cine.spacing_mm, crop=True)
    boxed = slicer_seg_files.write(files / "boxed.seg.nrrd", {"calcium": calcium}, cine.spacing_mm, box=(6, 36, 8, 48))
    good = load_segmentation(scene, minimum, "good")
    from_file = load_segmentation(scene, boxed, "from file")
    drawn = drawn_over_crop(scene, cine, calcium, (6, 36, 8, 48))
    row, col = cine.spacing_mm

    for source, where in ((volume, "'this frames'"), (sequence, "the frame-stack volume of 'this run sequence'")):
        for node in (from_file, drawn):
            line = (f"segmentation {node.GetName()!r} was drawn over a cropped copy of {where} (30 x 40 of its 40 x 52 "
                    f"px), so where it lies on the frames cannot be checked; in Slicer's Segment Editor give it the "
                    f"geometry of {where} ('Specify geometry'), or draw it over {where}")
            with pytest.raises(CacError) as shared:  # the check itself, as `cac dataset add` calls it on the file
                check_not_cropped(f"segmentation {node.GetName()!r}", np.diag([-col, -row, 1.0, 1.0]), (6, 30, 40),
                                  None, cine.frames.shape, where, saved=False)
            assert str(shared.value) == line
            job = logic.IdentifyJob(scene, source, [good, node], runner=_RecordingRunner())
            with pytest.raises(CacError) as info:
                job.start()
            assert str(info.value) == line
            assert not hasattr(job.runner, "started") and _scratch(tmp_path) == []  # nothing started or left
            if source is volume:  # the very line CAC Annotator gives for it
                with pytest.raises(CacError) as annotator:
                    annotation.majority_vote_node(scene, [good, node], volume)
                assert str(annotator.value) == line

    # 'Specify geometry': the whole volume.  The drawn calcium, and the file saved cropped to its minimum extent,
    # go to the worker on the cine's frames.
    drawn.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    (tmp_path / "ok").mkdir()
    for source in (volume, sequence):
        job = logic.IdentifyJob(scene, source, [good, drawn], runner=_RecordingRunner(), work_dir=tmp_path / "ok")
        job.start()
        job.runner.wait()
        for i in range(2):
            written = nrrd_io.read_seg_nrrd(tmp_path / "ok" / f"annotation{i}.seg.nrrd", expected_shape=cine.frames.shape)
            np.testing.assert_array_equal(written.union(), calcium)


# --------------------------------------------------------------------------- transforms and roles


def test_outputs_go_under_the_transform_the_cine_is_shown_under(scene, tmp_path):
    from CACAnnotatorLib import annotation

    cine = synthetic_cine()
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table shift")
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    out = logic.load_identify_outputs(scene, volume, worker_outputs(tmp_path / "v", cine, roi_of(cine)))
    assert out["roi_segmentation"].GetTransformNodeID() == transform.GetID()
    annotators = annotation.create_annotator_segmentations(scene, volume, 2)
    assert {n.GetTransformNodeID() for n in annotators} == {transform.GetID()}
    assert annotation.majority_vote_node(scene, annotators, volume).GetTransformNodeID() == transform.GetID()

    sequence, browser = mrml.cine_to_sequence(scene, cine, "seq")
    browser.GetProxyNode(sequence).SetAndObserveTransformNodeID(transform.GetID())
    out = logic.load_identify_outputs(scene, sequence, worker_outputs(tmp_path / "s", cine, roi_of(cine)))
    assert browser.GetProxyNode(out["roi_sequence"]).GetTransformNodeID() == transform.GetID()
    assert out["roi_segmentation"].GetTransformNodeID() == transform.GetID()
    # Without a transform, none.
    plain = mrml.cine_to_frame_stack_volume(scene, cine, "plain")
    out = logic.load_identify_outputs(scene, plain, worker_outputs(tmp_path / "p", cine, roi_of(cine)))
    assert out["roi_segmentation"].GetTransformNodeID() is None


def test_an_annotators_segmentation_chosen_as_output_keeps_its_painting(scene, tmp_path):
    from CACAnnotatorLib import annotation

    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "stack")
    painted = roi_of(cine, seed=7)
    annotator = annotation.create_annotator_segmentations(scene, volume, 1)[0]
    annotator.GetSegmentation().RemoveAllSegments()
    mrml._fill_segmentation(annotator, {"calcium": painted}, None, {}, ijk_to_ras(volume))
    vote = annotation.majority_vote_node(scene, [annotator], volume)
    for chosen in (annotator, vote):
        out = logic.load_identify_outputs(scene, volume, worker_outputs(tmp_path / "o", cine, roi_of(cine)),
                                          output_segmentation=chosen)
        assert out["roi_segmentation"] is not chosen
        np.testing.assert_array_equal(mrml.segmentation_masks(chosen, cine.frames.shape)["calcium"], painted)
    # The Identifier's own output is refilled on the next run.
    again = logic.load_identify_outputs(scene, volume, tmp_path / "o", output_segmentation=out["roi_segmentation"])
    assert again["roi_segmentation"] is out["roi_segmentation"]


# --------------------------------------------------------------------------- re-runs


def test_reruns_leave_no_orphan_nodes_and_keep_the_tables_storage(scene, tmp_path):
    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "cine")
    folder = worker_outputs(tmp_path / "out", cine, roi_of(cine), static_spots={1: [(10.0, 20.5)]})
    first = logic.load_identify_outputs(scene, sequence, folder)
    table = first["table"]
    table.AddDefaultStorageNode()  # the user saved the table once: its storage node holds the file name
    storage = table.GetStorageNodeID()
    counts = None
    for _ in range(3):  # Apply again and again on the same cine, with the panel's outputs selected
        out = logic.load_identify_outputs(scene, sequence, folder, output_segmentation=first["roi_segmentation"],
                                          output_table=table)
        assert out["table"] is table and table.GetStorageNodeID() == storage
        assert table.GetName() == "cine sequence CAC results" and table.GetNumberOfRows() == cine.n_frames
        now = {}
        for i in range(scene.GetNumberOfNodes()):
            class_name = scene.GetNthNode(i).GetClassName()
            now[class_name] = now.get(class_name, 0) + 1
        assert counts is None or now == counts, "a re-run left nodes behind"
        counts = now


def test_the_roi_sequences_proxy_chosen_as_output_is_not_refilled_and_removed(scene, tmp_path):
    """The proxy "<cine> CAC ROI" shows one item of the ROI sequence; refilling it as the frame-stack output
    and then removing it with the old ROI sequence left the panel pointing at a deleted node."""
    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "cine")
    folder = worker_outputs(tmp_path / "out", cine, roi_of(cine))
    first = logic.load_identify_outputs(scene, sequence, folder)
    proxy = browser.GetProxyNode(first["roi_sequence"])
    assert proxy is not None and logic.reusable_output(scene, proxy, sequence, logic.ROLE_ROI) is None
    out = logic.load_identify_outputs(scene, sequence, folder, output_segmentation=proxy)
    assert out["roi_segmentation"] is not proxy and scene.IsNodePresent(out["roi_segmentation"])


def test_two_cines_in_one_browser_keep_their_own_roi_sequences(scene, tmp_path):
    first, second = synthetic_cine(seed=0), synthetic_cine(seed=1)
    seq_a, browser = mrml.cine_to_sequence(scene, first, "A")
    seq_b = mrml._build_sequence(scene, second, "B sequence")
    browser.AddSynchronizedSequenceNodeID(seq_b.GetID())
    out_a = logic.load_identify_outputs(scene, seq_a, worker_outputs(tmp_path / "a", first, roi_of(first)))
    out_b = logic.load_identify_outputs(scene, seq_b, worker_outputs(tmp_path / "b", second, roi_of(second)))
    assert scene.IsNodePresent(out_a["roi_sequence"]) and scene.IsNodePresent(out_b["roi_sequence"])
    again = logic.load_identify_outputs(scene, seq_a, tmp_path / "a")
    assert not scene.IsNodePresent(out_a["roi_sequence"]) and scene.IsNodePresent(again["roi_sequence"])
    assert scene.IsNodePresent(out_b["roi_sequence"])


# --------------------------------------------------------------------------- removed static ROIs

SPOTS = {1: [(10.0, 20.5)], 3: [(4.0, 5.0), (30.5, 31.0)]}


def _ijk_of(point_ras, volume) -> np.ndarray:
    """``point_ras`` in ``volume``'s IJK, by Slicer's own RAS-to-IJK matrix (the independent reference)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(m)
    return np.array(m.MultiplyPoint([*point_ras, 1.0])[:3])


def _static_nodes(scene) -> list:
    return [n for n in scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
            if n.GetAttribute(nrrd_io.ATTR_ROLE) == logic.ROLE_STATIC]


def test_removed_static_rois_are_marked_on_a_moved_frame_stack_volume(scene, tmp_path):
    cine = synthetic_cine()
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "placed cine")
    place(volume)
    out = logic.load_identify_outputs(scene, volume, worker_outputs(tmp_path / "a", cine, roi_of(cine), SPOTS))
    node = out["static_spots"]
    assert out["static_spots_sequence"] is None  # a frame-stack volume without a browser
    assert node.GetLocked() and mrml.is_made_for(node, volume)
    expected = [(c, r, f) for f in sorted(SPOTS) for r, c in SPOTS[f]]   # IJK: column, row, frame
    got = [_ijk_of(p, volume) for p in mrml.markups_points(node)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # A re-run that removed nothing leaves no crosses; one that did replaces them.
    again = logic.load_identify_outputs(scene, volume, worker_outputs(tmp_path / "b", cine, roi_of(cine)))
    assert again["static_spots"] is None and not scene.IsNodePresent(node) and _static_nodes(scene) == []
    for _ in range(2):
        logic.load_identify_outputs(scene, volume, tmp_path / "a")
    assert len(_static_nodes(scene)) == 1


def test_removed_static_rois_follow_moved_frames_in_the_browser(scene, tmp_path):
    cine = synthetic_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "placed")
    for k in range(sequence.GetNumberOfDataNodes()):
        place(sequence.GetNthDataNode(k), spacing=(0.2 + 0.01 * k, 0.3))  # every frame its own grid
    other, _ = mrml.cine_to_sequence(scene, synthetic_cine(seed=1), "other")
    kept = logic.load_identify_outputs(scene, other, worker_outputs(tmp_path / "o", cine, roi_of(cine), SPOTS))
    folder = worker_outputs(tmp_path / "a", cine, roi_of(cine), SPOTS)
    for _ in range(2):  # a re-run replaces its own crosses, never another cine's
        out = logic.load_identify_outputs(scene, sequence, folder)
    assert scene.IsNodePresent(kept["static_spots"]) and scene.IsNodePresent(kept["static_spots_sequence"])
    assert len(_static_nodes(scene)) == 2  # one frame-stack point list per cine (sequence items are not in the scene)
    points = out["static_spots_sequence"]
    assert points.GetNumberOfDataNodes() == cine.n_frames and mrml.is_made_for(points, sequence)
    for k in range(cine.n_frames):
        item, frame = points.GetNthDataNode(k), sequence.GetNthDataNode(k)
        got = [_ijk_of(p, frame) for p in mrml.markups_points(item)]
        np.testing.assert_allclose(np.reshape(got, (-1, 3)), np.reshape([(c, r, 0) for r, c in SPOTS.get(k, [])], (-1, 3)),
                                   atol=1e-6)
    # The browser's proxy shows the selected frame's crosses.
    browser.SetSelectedItemNumber(3)
    proxy = browser.GetProxyNode(points)
    assert proxy.GetName() == "placed sequence CAC removed static spots"
    assert len(mrml.markups_points(proxy)) == 2
    # The frame-stack point list lies on the first frame's grid, slice k being frame k.
    stack = out["static_spots"]
    first = sequence.GetNthDataNode(0)
    got = [_ijk_of(p, first) for p in mrml.markups_points(stack)]
    np.testing.assert_allclose(got, [(c, r, f) for f in sorted(SPOTS) for r, c in SPOTS[f]], atol=1e-6)
