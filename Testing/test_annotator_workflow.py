"""CAC Annotator as an annotator uses it, on the real slicer-core scene: where a brush stroke in the pair view
lands, which segmentations the vote, the comparison and the export accept, and what the panel is told.

The views are slicer-core's own ``vtkMRMLSliceLogic`` (slice and composite nodes, fit); where a stroke lands is
computed by the Segment Editor's own ``vtkSlicerSegmentEditorLogic.XyToIjk`` (view position -> labelmap index)
and painted with its ``ModifySegmentByLabelmap``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer")
import slicer  # noqa: E402
import slicer_python  # noqa: E402
from CACAnnotatorLib import annotation  # noqa: E402
from CACIdentifierLib import mrml, nrrd_io, slicercore  # noqa: E402
from CACIdentifierLib.errors import CacError  # noqa: E402
from scene_helpers import drawn_over_crop, load_segmentation, synthetic_cine  # noqa: E402

VIEW = (200, 160)  # the slice views' size in pixels


@pytest.fixture
def scene():
    return slicercore.new_scene()


def slice_logic(scene, name):
    """A slice view's logic as the layout manager makes it (its slice node and composite node in the scene)."""
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddSliceNode(name)
    node.SetDimensions(VIEW[0], VIEW[1], 1)
    return logic


def loaded(scene, cine, name="run"):
    sequence, browser = mrml.cine_to_sequence(scene, cine, name)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, f"{name} frames")
    return sequence, browser, volume


def stroke(scene, segmentation, slice_node, xy=(VIEW[0] / 2, VIEW[1] / 2)):
    """Paint one voxel where the Segment Editor's logic puts a click at ``xy`` of the view; return its IJK."""
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
    editor.SetSegmentationNode(segmentation)
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("calcium")
    converter = slicer.vtkSegmentationConverter
    modifier = slicer.vtkOrientedImageData()  # the editor's modifier labelmap: the segmentation's reference grid
    converter.DeserializeImageGeometry(segmentation.GetSegmentation().GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName()), modifier, True)
    ijk = [0, 0, 0]
    slicer.vtkSlicerSegmentEditorLogic.XyToIjk(list(xy), ijk, slice_node, modifier,
                                               segmentation.GetParentTransformNode())
    scalars = modifier.GetPointData().GetScalars()
    scalars.Fill(0)
    extent = modifier.GetExtent()
    nx, ny = extent[1] - extent[0] + 1, extent[3] - extent[2] + 1
    index = (ijk[2] - extent[4]) * nx * ny + (ijk[1] - extent[2]) * nx + (ijk[0] - extent[0])
    scalars.SetTuple1(index, 1)
    editor.ModifySegmentByLabelmap(segmentation, segment_id, modifier, editor.ModificationModeAdd, False, True)
    return ijk


# --------------------------------------------------------------------------- the pair view and the brush


@pytest.mark.parametrize("moved", [False, True], ids=["volume as loaded", "volume under a transform"])
def test_a_stroke_in_the_pair_view_lands_on_the_frame_shown(scene, moved):
    """Browsing frame k and painting in the left view marks frame k of the annotation, and the right view shows
    frame k's contrast pair.  (The left view showed the cine's frame, which lies in one plane for every frame:
    a stroke landed on frame 0 of the annotation whatever frame was browsed.)"""
    cine = synthetic_cine(n=10, rows=40, cols=52)
    sequence, browser, volume = loaded(scene, cine)
    if moved:
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table shift")
        matrix = transform.GetMatrixTransformToParent()
        matrix.SetElement(2, 3, 7.5)  # 7.5 mm along the frame axis: frame k lies at z = k + 7.5
        matrix.SetElement(0, 3, -3.0)
        transform.SetMatrixTransformToParent(matrix)
        volume.SetAndObserveTransformNodeID(transform.GetID())
    pairs = {0: 7, 1: 8, 2: 9, 3: 6}
    left, right = slice_logic(scene, "Red"), slice_logic(scene, "Yellow")
    view = annotation.PairView(scene, sequence, pairs, volume=volume)
    view.show(left, right)
    view.start()
    assert left.GetSliceCompositeNode().GetBackgroundVolumeID() == volume.GetID()
    assert right.GetSliceCompositeNode().GetBackgroundVolumeID() == view.proxy.GetID()
    annotator = annotation.create_annotator_segmentations(scene, volume, 1)[0]
    painted = []
    for k in (2, 0, 3, 1):
        browser.SetSelectedItemNumber(k)  # as the user browses
        assert view.frame_in_view() == k
        ijk = stroke(scene, annotator, left.GetSliceNode())
        assert ijk[2] == k, f"browsing frame {k}, the stroke landed on frame {ijk[2]}"
        painted.append(k)
        shown = mrml._array_from_image(view.proxy.GetImageData())[0]
        assert np.array_equal(shown, cine.frames[pairs[k]])
    mask = annotation.annotator_masks([annotator], cine.frames.shape, mrml.frame_stack_geometry(volume))[0]
    assert sorted(np.flatnonzero(mask.any(axis=(1, 2)))) == sorted(painted)
    view.stop()


def test_scrolling_the_left_view_selects_that_frame_and_its_pair(scene):
    cine = synthetic_cine(n=10, rows=40, cols=52)
    sequence, browser, volume = loaded(scene, cine)
    pairs = {0: 7, 1: 8, 2: 9}
    left, right = slice_logic(scene, "Red"), slice_logic(scene, "Yellow")
    view = annotation.PairView(scene, sequence, pairs, volume=volume)
    view.show(left, right)
    view.start()
    assert browser.GetSelectedItemNumber() == 0 and view.frame_in_view() == 0  # fitting did not move the browser
    red = left.GetSliceNode()
    ras = mrml.frame_stack_geometry(volume) @ np.array([10.0, 10.0, 2.0, 1.0])
    red.JumpSliceByOffsetting(*ras[:3])  # the user scrolls the left view to frame 2
    assert browser.GetSelectedItemNumber() == 2 and view.current_pair == 9
    assert view.paired.GetSelectedItemNumber() == 9
    ras = mrml.frame_stack_geometry(volume) @ np.array([10.0, 10.0, 5.0, 1.0])
    red.JumpSliceByOffsetting(*ras[:3])  # a contrast frame: browsed, no pair, the right view stays
    assert browser.GetSelectedItemNumber() == 5 and view.current_pair is None
    assert view.paired.GetSelectedItemNumber() == 9
    view.stop()
    red.JumpSliceByOffsetting(*(mrml.frame_stack_geometry(volume) @ np.array([10.0, 10.0, 1.0, 1.0]))[:3])
    assert browser.GetSelectedItemNumber() == 5  # no longer following
    # The user deletes the volume while the pair view is shown: browsing and scrolling go on without errors.
    view.start()
    scene.RemoveNode(volume)
    browser.SetSelectedItemNumber(1)
    assert view.update() == 8 and view.frame_in_view() is None
    view._view_moved()
    assert browser.GetSelectedItemNumber() == 1
    view.stop()


def test_annotations_stay_out_of_the_contrast_view(scene):
    """Segmentations over the volume are not shown over the contrast frame (they would lie there at the plane of
    another frame), so the Segment Editor, which puts its source volume into every view that shows the
    segmentation being edited, leaves the paired contrast frame in the right view."""
    cine = synthetic_cine(n=10, rows=40, cols=52)
    sequence, browser, volume = loaded(scene, cine)
    left, right = slice_logic(scene, "Red"), slice_logic(scene, "Yellow")
    three_d = scene.AddNewNodeByClass("vtkMRMLViewNode", "View1")
    view = annotation.PairView(scene, sequence, {0: 7}, volume=volume)
    view.show(left, right)
    nodes = annotation.create_annotator_segmentations(scene, volume, 2)
    view.keep_out_of_right_view(nodes)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
    for node in nodes:
        editor.SetSegmentationNode(node)
        assert not editor.IsSegmentationDisplayableInView(right.GetSliceNode())
        assert editor.IsSegmentationDisplayableInView(left.GetSliceNode())
        assert editor.IsSegmentationDisplayableInView(three_d)


def test_a_frame_without_a_pair_empties_the_right_view_and_says_why(scene):
    """Browsing to a contrast frame left the right view on the last pair, as if it were this frame's, without a
    word.  Now the right view is left empty there, the note says why (a contrast frame, a blank frame, the guard
    band before the onset), and the pair comes back on a paired frame."""
    cine = synthetic_cine(n=10, rows=40, cols=52)
    sequence, browser, volume = loaded(scene, cine)
    left, right = slice_logic(scene, "Red"), slice_logic(scene, "Yellow")
    seen = []
    view = annotation.PairView(scene, sequence, {0: 7, 1: 8, 2: 9}, volume=volume, onset=5, blank_frames=[3],
                               guard_frames=1, on_frame=seen.append)
    view.show(left, right)
    view.start()
    composite = right.GetSliceCompositeNode()
    browser.SetSelectedItemNumber(2)
    assert composite.GetBackgroundVolumeID() == view.proxy.GetID()
    assert view.note == "Frame 2 (non-contrast): the right view shows its paired contrast frame 9."
    browser.SetSelectedItemNumber(6)  # a contrast frame
    assert view.current_pair is None and composite.GetBackgroundVolumeID() is None
    assert view.note == ("Frame 6 is a contrast frame (contrast from frame 5 on): annotations are made on the "
                         "non-contrast frames, so it has no pair, and the right view is left empty; browse to one of "
                         "the paired frames 0-2.")
    assert seen and seen[-1] is view  # the panel is told at each frame
    browser.SetSelectedItemNumber(3)
    assert view.note.startswith("Frame 3 is blank: it has no pair, and the right view is left empty")
    browser.SetSelectedItemNumber(4)
    assert view.note.startswith("Frame 4 lies just before the contrast onset at frame 5")
    browser.SetSelectedItemNumber(1)  # a paired frame again: its pair is shown
    assert composite.GetBackgroundVolumeID() == view.proxy.GetID()
    np.testing.assert_array_equal(mrml._array_from_image(view.proxy.GetImageData())[0], cine.frames[8])
    # A volume the user puts into the right view while it is empty stays there.
    browser.SetSelectedItemNumber(8)
    composite.SetBackgroundVolumeID(volume.GetID())
    browser.SetSelectedItemNumber(0)
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    view.stop()


def test_logic_pair_view_tells_the_panel_about_a_contrast_frame(annotator_module):
    app, module = annotator_module
    scene = app.mrmlScene
    cine = synthetic_cine(n=10, rows=40, cols=52)
    sequence, browser, volume = loaded(scene, cine)
    left, right = slice_logic(scene, "Red"), slice_logic(scene, "Yellow")
    lines = []
    view = module.CACAnnotatorLogic().showPairView(sequence, 4, volume, sliceLogics=(left, right),
                                                   onFrame=lambda v: lines.append(v.note))
    assert view.onset == 4 and view.pairs and max(view.pairs) < 4
    browser.SetSelectedItemNumber(7)
    assert lines[-1].startswith("Frame 7 is a contrast frame (contrast from frame 4 on): annotations are made on "
                                "the non-contrast frames"), lines
    assert right.GetSliceCompositeNode().GetBackgroundVolumeID() is None
    browser.SetSelectedItemNumber(min(view.pairs))
    assert lines[-1].startswith(f"Frame {min(view.pairs)} (non-contrast): the right view shows its paired contrast")
    assert right.GetSliceCompositeNode().GetBackgroundVolumeID() == view.proxy.GetID()
    view.stop()


def test_annotations_stay_out_of_the_contrast_view_in_views_and_display_nodes_made_later(scene):
    """The segmentations were kept out of the right view by listing the views that existed then: a view created
    later (another layout) never showed them, and a display node made later (the segmentation shown again) showed
    them in the right view, where the Segment Editor then puts the volume it paints over."""
    cine = synthetic_cine(n=10, rows=40, cols=52)
    sequence, browser, volume = loaded(scene, cine)
    left, right = slice_logic(scene, "Red"), slice_logic(scene, "Yellow")
    view = annotation.PairView(scene, sequence, {0: 7}, volume=volume)
    view.show(left, right)
    view.start()
    nodes = annotation.create_annotator_segmentations(scene, volume, 2)
    view.keep_out_of_right_view(nodes)
    green = slice_logic(scene, "Green").GetSliceNode()  # views created after the setting
    three_d = scene.AddNewNodeByClass("vtkMRMLViewNode", "View2")
    for node in nodes:
        display = node.GetDisplayNode()
        assert display.IsDisplayableInView(green.GetID()) and display.IsDisplayableInView(three_d.GetID())
        assert not display.IsDisplayableInView(right.GetSliceNode().GetID())
    scene.RemoveNode(nodes[0].GetDisplayNode())  # shown again: a new display node
    nodes[0].CreateDefaultDisplayNodes()
    display = nodes[0].GetDisplayNode()
    assert not display.IsDisplayableInView(right.GetSliceNode().GetID())
    assert display.IsDisplayableInView(left.GetSliceNode().GetID()) and display.IsDisplayableInView(green.GetID())
    # Not following: showing the pair view again lists the views made meanwhile.
    view.stop()
    other = scene.AddNewNodeByClass("vtkMRMLViewNode", "View3")
    assert not nodes[1].GetDisplayNode().IsDisplayableInView(other.GetID())
    view.show(left, right)
    assert nodes[1].GetDisplayNode().IsDisplayableInView(other.GetID())
    assert not nodes[1].GetDisplayNode().IsDisplayableInView(right.GetSliceNode().GetID())


def test_logic_keeps_annotators_out_of_the_right_view_in_a_view_made_later(annotator_module):
    scene, cine, sequence, browser, volume, logic, left, right = panel_logic(annotator_module)
    logic.showPairView(sequence, 4, volume, sliceLogics=(left, right))
    nodes = logic.createAnnotators(volume, 2) + [logic.majorityVote(logic.createAnnotators(volume, 2), volume)]
    green = slice_logic(scene, "Green").GetSliceNode()
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
    for node in nodes:
        editor.SetSegmentationNode(node)
        assert editor.IsSegmentationDisplayableInView(green), node.GetName()
        assert not editor.IsSegmentationDisplayableInView(right.GetSliceNode()), node.GetName()
    logic.stopPairView()


def test_the_pair_view_refuses_a_volume_of_another_cine(scene):
    sequence, _, _ = loaded(scene, synthetic_cine(seed=0), "a")
    other = mrml.cine_to_frame_stack_volume(scene, synthetic_cine(seed=1), "b frames")
    with pytest.raises(CacError, match="'b frames' holds another cine than the sequence 'a sequence'"):
        annotation.PairView(scene, sequence, {0: 3}, volume=other)


# --------------------------------------------------------------------------- the panel's Logic


@pytest.fixture
def annotator_module(monkeypatch):
    if not slicer_python.available():
        pytest.skip("Slicer 5.10.0's Python files not found")
    with slicer_python.slicer_5_10(slicercore.new_scene()) as app:
        module = slicer_python.load_module_script(slicer_python.ROOT / "CACAnnotator" / "CACAnnotator.py")
        monkeypatch.setattr(module, "_", lambda text: text)  # translation needs slicer.app (the application)
        yield app, module


def panel_logic(annotator_module):
    """A 10-frame cine loaded in the module's scene, the panel's Logic and the side-by-side views' slice logics."""
    app, module = annotator_module
    scene = app.mrmlScene
    cine = synthetic_cine(n=10, rows=40, cols=52)
    sequence, browser, volume = loaded(scene, cine)
    return (scene, cine, sequence, browser, volume, module.CACAnnotatorLogic(),
            slice_logic(scene, "Red"), slice_logic(scene, "Yellow"))


def test_logic_pair_view_paints_on_the_browsed_frame_and_keeps_annotators_out_of_the_right(annotator_module):
    scene, cine, sequence, browser, volume, logic, left, right = panel_logic(annotator_module)
    before = logic.createAnnotators(volume, 1)  # made before the pair view is shown
    view = logic.showPairView(sequence, 4, volume, sliceLogics=(left, right))
    after = logic.createAnnotators(volume, 2)[1:]  # and after
    vote = logic.majorityVote(before + after, volume)
    for node in before + after + [vote]:
        assert not node.GetDisplayNode().IsDisplayableInView(right.GetSliceNode().GetID()), node.GetName()
    frame = sorted(view.pairs)[-1]
    browser.SetSelectedItemNumber(frame)
    assert stroke(scene, after[0], left.GetSliceNode())[2] == frame
    logic.stopPairView()


def test_logic_pair_view_tells_about_a_guessed_onset_in_the_panels_words(annotator_module):
    """Synchronization's warnings (a guessed onset: the pairs are a fallback) reach the panel; they named
    `--onset`, a flag the panel does not have, and were only in the Python log."""
    app, module = annotator_module
    cine = synthetic_cine(n=12, rows=40, cols=52)
    sequence, _, _ = loaded(app.mrmlScene, cine)
    logic = module.CACAnnotatorLogic()
    view = logic.showPairView(sequence, None, None)
    assert view.pairs
    assert any("set 'Onset frame' in the panel" in m for m in logic.messages), logic.messages
    assert not any("--onset" in m for m in logic.messages)
    logic.stopPairView()


def test_logic_pair_view_error_names_the_onset_field(annotator_module):
    """The real LCA run has contrast from its first frame: the error's remedy is the panel's field."""
    from CACIdentifierLib.cine_io import load_cine
    from conftest import LCA_FRAMES, require

    app, module = annotator_module
    sequence, _, _ = loaded(app.mrmlScene, load_cine(require(LCA_FRAMES)))
    with pytest.raises(CacError) as info:
        module.CACAnnotatorLogic().showPairView(sequence, None, None)
    message = str(info.value)
    assert "--onset" not in message and "'Onset frame'" in message, message


# --------------------------------------------------------------------------- files of another cine


def test_vote_compare_and_export_refuse_files_of_another_cine(scene, tmp_path):
    """Annotation files of another cine of the same size were read as this cine's calcium when their spacing
    differed (each node read on its own grid) or when only their file recorded the cine."""
    import slicer_seg_files

    this, other = synthetic_cine(seed=0, spacing=(0.2, 0.3)), synthetic_cine(seed=1, spacing=(0.25, 0.35))
    volume = mrml.cine_to_frame_stack_volume(scene, this, "this frames")
    calcium = np.zeros(this.frames.shape, bool)
    calcium[1, 5:9, 10:20] = True
    mine = nrrd_io.write_seg_nrrd(tmp_path / "mine.seg.nrrd", {"calcium": calcium}, this.spacing_mm,
                                  source_fingerprint=this.fingerprint())
    theirs = nrrd_io.write_seg_nrrd(tmp_path / "theirs.seg.nrrd", {"calcium": calcium}, other.spacing_mm,
                                    source_fingerprint=other.fingerprint())
    same_grid = nrrd_io.write_seg_nrrd(tmp_path / "same_grid.seg.nrrd", {"calcium": calcium}, this.spacing_mm,
                                       source_fingerprint=other.fingerprint())
    unrecorded = slicer_seg_files.write(tmp_path / "unrecorded.seg.nrrd", {"calcium": calcium}, other.spacing_mm)
    good = [load_segmentation(scene, mine, f"mine {i}") for i in range(2)]
    assert annotation.majority_vote_node(scene, good, volume) is not None  # this cine's files are accepted

    for path, message in ((theirs, "was loaded from theirs.seg.nrrd, which records another cine"),
                          (same_grid, "was loaded from same_grid.seg.nrrd, which records another cine"),
                          (unrecorded, r"has pixel spacing 0.25 x 0.35 mm, but 'this frames' has 0.2 x 0.3 mm")):
        foreign = load_segmentation(scene, path, "foreign")
        with pytest.raises(CacError, match=message):
            annotation.majority_vote_node(scene, [*good, foreign], volume)
        with pytest.raises(CacError, match=message):
            annotation.compare_with_annotators(scene, foreign, good, volume)
        with pytest.raises(CacError, match=message):
            annotation.export_to_dataset(tmp_path / "dataset", tmp_path / "cine.seq.nrrd", [*good, foreign], volume)
        assert not (tmp_path / "dataset").exists()
        scene.RemoveNode(foreign)


def test_another_size_is_named_with_both_sizes(scene, tmp_path):
    import slicer_seg_files

    this = synthetic_cine(n=6, rows=40, cols=52)
    volume = mrml.cine_to_frame_stack_volume(scene, this, "this frames")
    path = slicer_seg_files.write(tmp_path / "big.seg.nrrd", {"calcium": np.ones((8, 48, 52), bool)}, (0.2, 0.3))
    node = load_segmentation(scene, path, "big")
    with pytest.raises(CacError, match=r"'big' covers 8 frames of 48 x 52 px, but 'this frames' has 6 frames of "
                                       r"40 x 52 px: it was drawn over another cine"):
        annotation.majority_vote_node(scene, [node], volume)


def test_a_segmentation_drawn_over_a_cropped_volume_is_refused_with_cac_dataset_adds_line(scene, tmp_path):
    """Refused by the vote, the comparison, Save and the export, as `cac dataset add` refuses its file (which it
    took, placed by the crop's origin): one check, one line, whether the node was loaded from a file Slicer saved
    or drawn in the scene over a cropped copy of the volume.  Given the volume's geometry, it is accepted."""
    from functools import partial

    import slicer_seg_files
    from CACIdentifierLib.seg_align import check_not_cropped

    cine = synthetic_cine(n=8, rows=48, cols=48)
    path = nrrd_io.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "run frames")
    good = annotation.create_annotator_segmentations(scene, volume, 1)
    calcium = np.zeros(cine.frames.shape, bool)
    calcium[2, 20:26, 20:26] = True
    saved = slicer_seg_files.write(tmp_path / "cropped.seg.nrrd", {"calcium": calcium}, cine.spacing_mm,
                                   box=(10, 40, 12, 44))
    from_file = load_segmentation(scene, saved, "from file")
    drawn = drawn_over_crop(scene, cine, calcium, (10, 40, 12, 44))
    grid = mrml.frame_stack_geometry(volume)
    for node in (from_file, drawn):
        with pytest.raises(CacError) as expected:
            check_not_cropped(f"segmentation {node.GetName()!r}", grid, (8, 30, 32), grid, cine.frames.shape,
                              "'run frames'", saved=False)
        line = str(expected.value)
        assert line.startswith(f"segmentation {node.GetName()!r} was drawn over a cropped copy of 'run frames' (30 x "
                               "32 of its 48 x 48 px), so where it lies on the frames cannot be checked; in Slicer's "
                               "Segment Editor give it the geometry of 'run frames' ('Specify geometry'), or draw it")
        for function, *args in ((annotation.majority_vote_node, scene, [*good, node], volume),
                                (annotation.compare_with_annotators, scene, good[0], [node], volume),
                                (annotation.save_annotations, [node], volume, tmp_path / "saved"),
                                (partial(annotation.export_to_dataset, patient="7", onset=6), tmp_path / "dataset",
                                 path, [*good, node], volume)):
            with pytest.raises(CacError) as refused:
                function(*args)
            assert str(refused.value) == line, function
    assert not (tmp_path / "saved").exists() and not (tmp_path / "dataset").exists()
    drawn.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # 'Specify geometry': the whole volume
    vote = annotation.majority_vote_node(scene, [drawn], volume)
    np.testing.assert_array_equal(mrml.segmentation_masks(vote, cine.frames.shape, grid)["calcium"], calcium)


# --------------------------------------------------------------------------- export


def exported_cine(scene, tmp_path, seed=0):
    cine = synthetic_cine(n=12, rows=48, cols=48, seed=seed)
    path = nrrd_io.write_seq_nrrd(cine, tmp_path / f"run{seed}.seq.nrrd")
    volume = mrml.cine_to_frame_stack_volume(scene, cine, f"run{seed} frames")
    return cine, path, volume


def caught(function, *args, **kwargs):
    """``(function(...), [its warnings' lines])``, independent of the module's own collector."""
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [str(w.message) for w in record]


def paint(node, volume, mask):
    node.GetSegmentation().RemoveAllSegments()
    mrml._fill_segmentation(node, {"calcium": mask}, None, {}, mrml.frame_stack_geometry(volume))


def unused_marks_line(which: str) -> str:
    """`cac dataset add`'s warning on calcium marked at or after the onset (6), as the panel words it."""
    return (f"calcium marked at or after frame 6 is not used for training (training takes only the non-contrast "
            f"frames before it): {which}; mark calcium on the non-contrast frames, or, if those frames hold no "
            "contrast, export it again with 'Onset frame' set to the first frame with contrast (and replace it)")


def test_export_of_another_cine_file_names_the_file_not_a_temporary(scene, tmp_path):
    """The cine file chosen in the panel is not the volume's cine: the error named a temporary annotation file
    (deleted by then) and blamed the annotation."""
    _, _, volume = exported_cine(scene, tmp_path, seed=0)
    _, other_path, _ = exported_cine(scene, tmp_path, seed=1)
    nodes = annotation.create_annotator_segmentations(scene, volume, 2)
    with pytest.raises(CacError) as info:
        annotation.export_to_dataset(tmp_path / "dataset", other_path, nodes, volume, patient="7", onset=6)
    message = str(info.value)
    assert "the cine file run1.seq.nrrd holds another cine than 'run0 frames'" in message
    assert "cac-annotations-" not in message
    assert not (tmp_path / "dataset").exists()


def test_export_warnings_name_the_annotators_and_the_unused_contrast_marks(scene, tmp_path):
    cine, path, volume = exported_cine(scene, tmp_path)
    nodes = annotation.create_annotator_segmentations(scene, volume, 3)
    copied = np.zeros(cine.frames.shape, bool)
    copied[2, 10:16, 20:26] = True
    late = copied.copy()
    late[8:10, 30:34, 30:34] = True  # frames 8-9: at or after the onset (6), contrast frames
    for node, mask in zip(nodes, (copied, copied, late)):
        paint(node, volume, mask)
    added, messages = caught(annotation.export_to_dataset, tmp_path / "dataset", path, nodes, volume, patient="7",
                             onset=6)
    assert added.calcium_frames == 1
    text = "\n".join(messages)
    assert "cac-annotations-" not in text and "/tmp" not in text, text
    assert "annotations 'annotator 1' and 'annotator 2' are identical files" in text
    assert ("calcium marked at or after frame 6 is not used for training (training takes only the non-contrast "
            "frames before it): 'annotator 3' on frames 8-9") in text
    assert sum("is not used for training" in m for m in messages) == 1, messages  # cac dataset add's line only


def test_export_warns_once_about_unused_contrast_marks_in_the_panels_words(scene, tmp_path):
    """`cac dataset add` warns about calcium marked at or after the onset, and the export added its own line on
    the same marks: the panel showed both (one with the remedy "export again with 'Onset frame' set to ...", one
    with "export it again ... (and replace it)")."""
    cine, path, volume = exported_cine(scene, tmp_path)
    nodes = annotation.create_annotator_segmentations(scene, volume, 2)
    late = np.zeros(cine.frames.shape, bool)
    late[[2, 7, 8, 9], 30:34, 30:34] = True
    paint(nodes[1], volume, late)
    added, messages = annotation.with_messages(annotation.export_to_dataset, tmp_path / "dataset", path, nodes,
                                               volume, patient="7", onset=6)
    assert (added.annotated_frames, added.calcium_frames, added.contrast_annotated_frames) == (1, 0, 3)
    unused = [m for m in messages if "not used for training" in m]
    assert unused == [unused_marks_line("'annotator 2' on frames 7-9")], messages
    assert not any("--onset" in m or "--overwrite" in m or "cac-annotations-" in m for m in messages), messages


def test_export_of_annotators_who_found_no_calcium_is_no_copied_drawing(scene, tmp_path):
    _, path, volume = exported_cine(scene, tmp_path)
    nodes = annotation.create_annotator_segmentations(scene, volume, 3)
    added, messages = caught(annotation.export_to_dataset, tmp_path / "dataset", path, nodes, volume, patient="7",
                             onset=6)
    assert added.calcium_frames == 0 and not any("identical" in m for m in messages), messages
    manifest = json.loads((tmp_path / "dataset" / "manifest.json").read_text())
    assert manifest["acquisitions"][0]["n_annotators"] == 3


def panel_export(annotator_module, tmp_path, annotators):
    """The panel's Logic, a cine to export and its annotator segmentations: ``(cine, path, volume, logic, nodes)``."""
    app, module = annotator_module
    cine, path, volume = exported_cine(app.mrmlScene, tmp_path)
    logic = module.CACAnnotatorLogic()
    return cine, path, volume, logic, logic.createAnnotators(volume, annotators)


def test_logic_export_messages_reach_the_panel(annotator_module, tmp_path):
    cine, path, volume, logic, nodes = panel_export(annotator_module, tmp_path, 3)
    late = np.zeros(cine.frames.shape, bool)
    late[9, 30:34, 30:34] = True
    paint(nodes[0], volume, late)
    added = logic.exportToDataset(tmp_path / "dataset", path, nodes, volume, 6, "7")
    assert added.calcium_frames == 0
    assert [m for m in logic.messages if "not used for training" in m] == [
        unused_marks_line("'annotator 1' on frame 9")], logic.messages
    assert not any("--onset" in m or "--overwrite" in m for m in logic.messages), logic.messages


def test_logic_export_status_counts_the_frames_training_uses(annotator_module, tmp_path):
    """The status line said "Added ...: N annotated frames, K with calcium." though the counts are of the frames
    before the contrast onset only (those training uses); the frames marked at or after it went unsaid.  It said
    "Added" too when the export had replaced the acquisition already in the dataset."""
    cine, path, volume, logic, nodes = panel_export(annotator_module, tmp_path, 2)
    marks = np.zeros(cine.frames.shape, bool)
    marks[[2, 3, 8, 9, 10], 30:34, 30:34] = True
    for node in nodes:
        paint(node, volume, marks)
    added = logic.exportToDataset(tmp_path / "dataset", path, nodes, volume, 6, "7")
    assert not added.replaced
    assert logic.exportSummary(added) == (
        f"Added {added.id}. Frames training uses (before the onset at frame 6): 2 annotated, 2 with calcium in the "
        "majority vote. Annotators' agreement on those frames (pairwise Dice median): 1.00. Frames marked at or "
        "after the onset, not used for training: 3.")
    before = np.zeros(cine.frames.shape, bool)
    before[1, 30:34, 30:34] = True
    for node in nodes:
        paint(node, volume, before)
    added = logic.exportToDataset(tmp_path / "dataset", path, nodes, volume, 6, "7", overwrite=True)
    assert added.replaced
    assert logic.exportSummary(added) == (
        f"Replaced {added.id}. Frames training uses (before the onset at frame 6): 1 annotated, 1 with calcium in "
        "the majority vote. Annotators' agreement on those frames (pairwise Dice median): 1.00.")


def test_logic_export_agreement_is_of_the_non_contrast_frames(annotator_module, tmp_path):
    """The annotators' agreement (dice_median) counted the frames at or after the contrast onset, which nobody
    annotates: two annotators who agree on every non-contrast frame got a median of 0.5 for one stray mark each on
    a contrast frame.  It is now of the frames before the onset, and the status line says so."""
    cine, path, volume, logic, nodes = panel_export(annotator_module, tmp_path, 2)
    first, second = np.zeros(cine.frames.shape, bool), np.zeros(cine.frames.shape, bool)
    first[2, 30:34, 30:34] = second[2, 30:34, 30:34] = True  # the same deposit on non-contrast frame 2
    first[9, 10:14, 10:14] = True  # strays on contrast frame 9, in different places
    second[9, 40:44, 40:44] = True
    for node, mask in zip(nodes, (first, second)):
        paint(node, volume, mask)
    added = logic.exportToDataset(tmp_path / "dataset", path, nodes, volume, 6, "7")
    assert added.dice_median == pytest.approx(1.0)  # over frames 2 and 9 it was the median of 1 and 0: 0.5
    assert "Annotators' agreement on those frames (pairwise Dice median): 1.00." in logic.exportSummary(added)
    record = json.loads((tmp_path / "dataset" / "manifest.json").read_text())["acquisitions"][0]
    truth = json.loads((tmp_path / "dataset" / record["truth"]).read_text())
    assert record["dice_median"] == pytest.approx(1.0) and truth["agreement"]["frames"] == [2]
    assert truth["agreement"]["before_frame"] == 6
    assert truth["agreement_frames"].startswith("the non-contrast frames before the onset (frames 0-5)")


# --------------------------------------------------------------------------- comparison


def test_comparison_summary_counts_each_kind_of_frame(scene):
    """The panel said "agree on calcium in N of M frames", N counting every frame neither side marks (the
    contrast frames among them): an AI that missed every annotated frame still "agreed" on most frames."""
    cine = synthetic_cine(n=10, rows=40, cols=52)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "frames")
    truth = np.zeros(cine.frames.shape, bool)
    truth[1:4, 5:10, 5:10] = True
    roi = np.zeros(cine.frames.shape, bool)
    roi[3:5, 20:25, 20:25] = True
    nodes = [mrml.masks_to_frame_stack_segmentation(scene, {"calcium": truth}, cine, f"a{i}", reference_volume=volume)
             for i in range(3)]
    ai = mrml.masks_to_frame_stack_segmentation(scene, {"CAC ROI": roi}, cine, "ai", reference_volume=volume)
    _, _, result = annotation.compare_with_annotators(scene, ai, nodes, volume)
    line = annotation.comparison_summary(result)
    assert ("by both the AI and the annotators' majority in 1 frames, by the AI only in 1, by the annotators only "
            "in 2, by neither in 6 (of all 10 frames") in line
    assert "spacing" not in line
    unknown = synthetic_cine(n=10, rows=40, cols=52, spacing=None)
    volume = mrml.cine_to_frame_stack_volume(scene, unknown, "no spacing")
    nodes = [mrml.masks_to_frame_stack_segmentation(scene, {"calcium": truth}, unknown, "b", reference_volume=volume)]
    ai = mrml.masks_to_frame_stack_segmentation(scene, {"CAC ROI": roi}, unknown, "ai2", reference_volume=volume)
    table, _, result = annotation.compare_with_annotators(scene, ai, nodes, volume)
    assert "the pixel spacing of this cine is unknown" in annotation.comparison_summary(result)


# --------------------------------------------------------------------------- saving the annotations


def test_saved_annotations_record_their_cine_and_are_never_replaced_unasked(scene, tmp_path):
    """Slicer's own Save of an annotator's segmentation records no source cine (checked here on slicer-core's
    storage node); the module's Save writes each checked segmentation with the cine's fingerprint, under a
    temporary name then renamed, and replaces nothing unless asked."""
    import subprocess
    import sys

    cine = synthetic_cine(n=8, rows=40, cols=52)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "run frames")
    nodes = annotation.create_annotator_segmentations(scene, volume, 2)
    drawn = [np.zeros(cine.frames.shape, bool) for _ in nodes]
    drawn[0][2, 5:12, 8:20] = True
    drawn[1][2, 6:12, 9:22] = True
    for node, mask in zip(nodes, drawn):
        paint(node, volume, mask)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "slicer_saved.seg.nrrd"))
    assert storage.WriteData(nodes[0])
    assert nrrd_io.read_seg_nrrd(tmp_path / "slicer_saved.seg.nrrd").source_fingerprint is None

    folder = tmp_path / "annotations"
    paths = annotation.save_annotations(nodes, volume, folder)
    assert [p.name for p in paths] == ["annotator_1.seg.nrrd", "annotator_2.seg.nrrd"]
    assert sorted(p.name for p in folder.iterdir()) == ["annotator_1.seg.nrrd", "annotator_2.seg.nrrd"]
    for path, mask in zip(paths, drawn):
        seg = nrrd_io.read_seg_nrrd(path, expected_shape=cine.frames.shape)
        assert seg.source_fingerprint == cine.fingerprint() and list(seg.segments) == ["calcium"]
        np.testing.assert_array_equal(seg.segments["calcium"], mask)

    before = [p.read_bytes() for p in paths]
    (folder / "annotator_2.seg.nrrd").unlink()
    paint(nodes[0], volume, np.zeros(cine.frames.shape, bool))
    with pytest.raises(annotation.AlreadySaved, match="annotator_1.seg.nrrd already exists in") as info:
        annotation.save_annotations(nodes, volume, folder)
    assert info.value.paths == [paths[0]] and isinstance(info.value, CacError)
    assert paths[0].read_bytes() == before[0] and not paths[1].exists()  # nothing written when refused
    annotation.save_annotations(nodes, volume, folder, overwrite=True)
    assert not nrrd_io.read_seg_nrrd(paths[0]).segments["calcium"].any()
    assert sorted(p.name for p in folder.iterdir()) == ["annotator_1.seg.nrrd", "annotator_2.seg.nrrd"]

    # The files of another cine are now refused by the command line (they record their cine).
    other = synthetic_cine(n=8, rows=40, cols=52, seed=4)
    other_volume = mrml.cine_to_frame_stack_volume(scene, other, "other frames")
    other_nodes = annotation.create_annotator_segmentations(scene, other_volume, 1)
    paint(other_nodes[0], other_volume, drawn[0])
    other_path = annotation.save_annotations(other_nodes, other_volume, tmp_path / "other")[0]
    run = subprocess.run([sys.executable, "-m", "cac", "evaluate", str(paths[1]), str(other_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "segmentations of different cines" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_save_refuses_two_nodes_of_one_file_name_and_a_file_as_folder(scene, tmp_path):
    cine = synthetic_cine(n=8, rows=40, cols=52)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "run frames")
    a, b = annotation.create_annotator_segmentations(scene, volume, 2)
    b.SetName("annotator/1")
    with pytest.raises(CacError, match="'annotator 1' and 'annotator/1' would both be saved as annotator_1.seg.nrrd"):
        annotation.save_annotations([a, b], volume, tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(CacError, match="is a file, not a folder"):
        annotation.save_annotations([a], volume, tmp_path / "file")
    with pytest.raises(CacError, match="choose the folder"):
        annotation.save_annotations([a], volume, "")
    assert not (tmp_path / "x").exists()


def test_docstring_examples_of_the_annotation_logic():
    import doctest

    result = doctest.testmod(annotation, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 1 and result.failed == 0


def test_export_keeps_the_spacing_the_user_set_on_the_volume(scene, tmp_path):
    """A run without pixel spacing: the user sets it on the frame-stack volume (Volumes module), as the docs say,
    and paints.  The export was refused, blaming the annotation ("has pixel spacing 0.25 x 0.3 mm but the cine
    has 1 x 1 mm ... use the annotation made on this cine")."""
    cine = synthetic_cine(n=12, rows=48, cols=48, spacing=None)
    path = nrrd_io.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "run frames")
    volume.SetSpacing(0.3, 0.25, 1.0)  # columns 0.3 mm, rows 0.25 mm
    nodes = annotation.create_annotator_segmentations(scene, volume, 2)
    calcium = np.zeros(cine.frames.shape, bool)
    calcium[2, 10:16, 20:26] = True
    wider = calcium.copy()
    wider[2, 16, 20:26] = True
    for node, mask in zip(nodes, (calcium, wider)):
        paint(node, volume, mask)
    added = annotation.export_to_dataset(tmp_path / "dataset", path, nodes, volume, patient="7", onset=6)
    assert added.calcium_frames == 1
    record = json.loads((tmp_path / "dataset" / "manifest.json").read_text())["acquisitions"][0]
    assert record["spacing_mm"] == [0.25, 0.3] and record["frame_time_ms"] == pytest.approx(33.3)
    majority = nrrd_io.read_seg_nrrd(tmp_path / "dataset" / record["majority"]).segments["calcium"]
    np.testing.assert_array_equal(majority, calcium)


# --------------------------------------------------------------------------- the vote


def test_a_hand_edited_vote_is_never_recomputed_over(scene):
    """Each click recomputed the volume's 'majority vote' in place, also after a reader had corrected it by
    hand in the Segment Editor: the correction was lost without a word."""
    cine = synthetic_cine(n=8, rows=40, cols=52)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "run frames")
    nodes = annotation.create_annotator_segmentations(scene, volume, 3)
    drawn = [np.zeros(cine.frames.shape, bool) for _ in nodes]
    for i, mask in enumerate(drawn):
        mask[2, 5:12, 8 + i:20 + i] = True
    for node, mask in zip(nodes, drawn):
        paint(node, volume, mask)
    expected = np.sum(drawn, axis=0) >= 2
    vote = annotation.majority_vote_node(scene, nodes, volume)
    again = annotation.majority_vote_node(scene, nodes, volume)  # unedited: recomputed in place, no new node
    assert again is vote
    corrected = expected.copy()
    corrected[5, 30:35, 30:35] = True  # the reader adds a deposit the majority missed
    paint(vote, volume, corrected)
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    new, messages = caught(annotation.majority_vote_node, scene, nodes, volume)
    assert new is not vote and new.GetName() == "majority vote" and vote.GetName() == "majority vote (edited)"
    np.testing.assert_array_equal(mrml.segmentation_masks(vote, cine.frames.shape)["calcium"], corrected)
    np.testing.assert_array_equal(mrml.segmentation_masks(new, cine.frames.shape)["calcium"], expected)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count + 1
    assert messages == ["the vote 'majority vote' was changed after it was computed; it is kept as "
                        "'majority vote (edited)', and the new vote is in a new 'majority vote'"]
    assert annotation.majority_vote_node(scene, nodes, volume) is new  # the new one is recomputed in place
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count + 1


def test_vote_of_one_two_and_four_annotators_against_numpy(scene):
    cine = synthetic_cine(n=6, rows=40, cols=52)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "run frames")
    rng = np.random.default_rng(5)
    drawn = [rng.random(cine.frames.shape) < 0.3 for _ in range(4)]
    nodes = annotation.create_annotator_segmentations(scene, volume, 4)
    for node, mask in zip(nodes, drawn):
        paint(node, volume, mask)
    for n, needed in ((1, 1), (2, 2), (3, 2), (4, 3)):  # strict majority: more than half
        vote = annotation.majority_vote_node(scene, nodes[:n], volume, name=f"vote of {n}")
        hand = np.zeros(cine.frames.shape, int)
        for mask in drawn[:n]:
            hand += mask
        np.testing.assert_array_equal(mrml.segmentation_masks(vote, cine.frames.shape)["calcium"], hand >= needed)


def test_a_vote_of_an_earlier_version_is_reused_only_when_it_holds_this_vote(scene):
    """A scene saved before votes recorded their digest: a vote equal to the new one is recomputed in place; one
    that differs is kept (it may hold a hand edit), with a warning that says why."""
    cine = synthetic_cine(n=8, rows=40, cols=52)
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "run frames")
    nodes = annotation.create_annotator_segmentations(scene, volume, 1)
    drawn = np.zeros(cine.frames.shape, bool)
    drawn[3, 5:12, 8:20] = True
    paint(nodes[0], volume, drawn)
    vote = annotation.majority_vote_node(scene, nodes, volume)
    vote.RemoveAttribute(annotation.ATTR_VOTE_DIGEST)
    assert annotation.majority_vote_node(scene, nodes, volume) is vote
    vote.RemoveAttribute(annotation.ATTR_VOTE_DIGEST)
    paint(nodes[0], volume, np.zeros(cine.frames.shape, bool))  # the annotator's calcium changed since
    new, messages = caught(annotation.majority_vote_node, scene, nodes, volume)
    assert new is not vote and vote.GetName() == "majority vote (edited)"
    assert "records no digest (a scene of an earlier version), so a hand edit cannot be ruled out" in messages[0]
