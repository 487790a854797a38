"""CAC Annotator Logic on the real slicer-core scene: pair view, annotator segmentations, majority vote, export."""

import json

import numpy as np
import pytest

pytest.importorskip("slicer")
from CACAnnotatorLib import annotation  # noqa: E402
from CACIdentifierLib import mrml, nrrd_io, slicercore  # noqa: E402
from CACIdentifierLib.cine_io import load_cine  # noqa: E402
from CACIdentifierLib.metrics import majority_vote  # noqa: E402
from CACIdentifierLib.sync import synchronize  # noqa: E402
from conftest import RCA, needs_data  # noqa: E402

pytestmark = needs_data


@pytest.fixture(scope="module")
def loaded():
    cine = load_cine(RCA)
    scene = slicercore.new_scene()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "rca")
    volume = mrml.cine_to_frame_stack_volume(scene, cine, "rca frames")
    return scene, cine, sequence, browser, volume


def test_pair_view_follows_the_browser_with_the_sync_pairs(loaded):
    scene, cine, sequence, browser, _ = loaded
    pairs = annotation.pairs_for_sequence(sequence)
    expected = annotation.pair_table(synchronize(cine.frames, cine.frame_time_ms,
                                                 r_wave_frames=cine.r_wave_frames).pairs)
    assert pairs == expected and len(pairs) >= 10
    view = annotation.PairView(scene, sequence, pairs)
    view.start()
    left = browser.GetProxyNode(sequence)
    assert view.proxy is not None and view.proxy.GetID() != left.GetID()
    for nc in sorted(pairs)[:4] + [sorted(pairs)[-1]]:
        browser.SetSelectedItemNumber(nc)  # as the user browses: the observer moves the right view
        c = pairs[nc]
        assert view.current_pair == c and view.paired.GetSelectedItemNumber() == c
        right = mrml._array_from_image(view.proxy.GetImageData())[0]
        shown = mrml._array_from_image(left.GetImageData())[0]
        assert np.array_equal(right, cine.frames[c]) and np.array_equal(shown, cine.frames[nc])
    contrast = max(pairs.values())
    browser.SetSelectedItemNumber(contrast)  # a contrast frame has no pair: the right view stays
    assert view.current_pair is None
    view.stop()
    browser.SetSelectedItemNumber(sorted(pairs)[0])
    assert view.current_pair is None  # no longer following
    again = annotation.PairView(scene, sequence, pairs)
    assert again.paired.GetID() == view.paired.GetID()  # one pair browser per cine browser


def test_annotators_majority_vote_and_export(loaded, tmp_path):
    scene, cine, sequence, browser, volume = loaded
    nodes = annotation.create_annotator_segmentations(scene, volume, 3)
    assert [n.GetName() for n in nodes] == ["annotator 1", "annotator 2", "annotator 3"]
    shape = cine.frames.shape
    assert all(not m.any() for m in annotation.annotator_masks(nodes, shape))
    rng = np.random.default_rng(0)
    drawn = []
    for node in nodes:  # "paint": replace each node's calcium with random blobs (as the Segment Editor would)
        m = np.zeros(shape, bool)
        for k in (0, 4, 8):
            r, c = rng.integers(200, 240, size=2)
            m[k, r : r + 30, c : c + 20] = True
        assert node.GetSegmentation().GetSegmentIdBySegmentName("calcium")
        scene.RemoveNode(node)
        replacement = mrml.masks_to_frame_stack_segmentation(scene, {"calcium": m}, cine, node.GetName(),
                                                             reference_volume=volume)
        drawn.append((replacement, m))
    nodes = [n for n, _ in drawn]
    before = [mrml.segmentation_masks(n, shape)["calcium"].copy() for n in nodes]
    vote = annotation.majority_vote_node(scene, nodes, volume)
    expected = (np.sum([m for _, m in drawn], axis=0) >= 2)
    assert np.array_equal(mrml.segmentation_masks(vote, shape)["calcium"], expected)
    assert np.array_equal(expected, majority_vote([m for _, m in drawn]))
    assert vote.GetID() not in {n.GetID() for n in nodes}
    for n, b in zip(nodes, before):  # inputs unmodified
        assert np.array_equal(mrml.segmentation_masks(n, shape)["calcium"], b)
    # Export: the same code as `cac dataset add`.
    ds = tmp_path / "ds"
    added = annotation.export_to_dataset(ds, RCA, nodes, volume, onset=16)
    manifest = json.loads((ds / "manifest.json").read_text())
    assert [e["id"] for e in manifest["acquisitions"]] == [added.id] and added.calcium_frames == 3
    majority = nrrd_io.read_seg_nrrd(ds / manifest["acquisitions"][0]["majority"]).segments["calcium"]
    assert np.array_equal(majority, expected)


def test_comparison_table_jump_and_worst_first(loaded):
    from CACIdentifierLib.metrics import evaluate_masks

    scene, cine, sequence, browser, volume = loaded
    shape = cine.frames.shape
    annot = [np.zeros(shape, bool) for _ in range(3)]
    for a in annot:
        a[2, 100:140, 100:140] = True
        a[5, 300:320, 300:320] = True
    roi = np.zeros(shape, bool)
    roi[2, 90:150, 90:150] = True  # encloses: IoM 1
    roi[5, 310:340, 310:340] = True  # partial
    roi[7, 10:20, 10:20] = True  # AI only: IoM 0
    nodes = [mrml.masks_to_frame_stack_segmentation(scene, {"calcium": a}, cine, f"ann{i}", reference_volume=volume)
             for i, a in enumerate(annot)]
    roi_node = mrml.masks_to_frame_stack_segmentation(scene, {"CAC ROI": roi}, cine, "ai", reference_volume=volume)
    table, chart, result = annotation.compare_with_annotators(scene, roi_node, nodes, volume)
    expected = evaluate_masks(roi, annot[0], cine.spacing_mm)["frames"]
    assert table.GetNumberOfRows() == len(expected) == 3 and chart.GetNumberOfPlotSeriesNodes() == 2
    for r, e in enumerate(expected):
        assert int(float(table.GetCellText(r, 0))) == e["index"]
        assert float(table.GetCellText(r, 1)) == pytest.approx(e["iom"])
        assert table.GetCellText(r, 9) == ("yes" if e["agree"] else "no")
    worst, _, _ = annotation.compare_with_annotators(scene, roi_node, nodes, volume, worst_first=True)
    ioms = [float(worst.GetCellText(r, 1)) for r in range(worst.GetNumberOfRows())]
    assert ioms == sorted(ioms) and int(float(worst.GetCellText(0, 0))) == 7
    assert annotation.jump_to_frame(scene, worst, 0, browser) == 7 and browser.GetSelectedItemNumber() == 7
    with pytest.raises(Exception, match="not in the table"):
        annotation.jump_to_frame(scene, worst, 5, browser)
