"""`cac evaluate` on real .seg.nrrd files written by slicer-core (helper B's writer)."""

import json

import numpy as np
import pytest
from cac.cli import main
from CACIdentifierLib import nrrd_io
from CACIdentifierLib.metrics import hausdorff_mm, iom


def write(path, segments, spacing=(0.3, 0.3)):
    nrrd_io.write_seg_nrrd(path, segments, spacing)
    return str(path)


@pytest.fixture
def files(tmp_path):
    shape = (4, 64, 64)
    pred = np.zeros(shape, bool)
    pred[0, 10:30, 10:30] = True
    pred[2, 40:50, 40:50] = True
    annot = [np.zeros(shape, bool) for _ in range(3)]
    for a in annot:
        a[0, 15:20, 15:20] = True  # all three agree: inside the ROI
    annot[0][2, 45:55, 45:55] = True  # two of three: 45:55 partly overlapping the ROI
    annot[1][2, 45:55, 45:55] = True
    annot[2][3, 5:9, 5:9] = True  # a single annotator: not in the majority
    extra = np.zeros(shape, bool)
    extra[1, 0:3, 0:3] = True
    return {
        "pred": write(tmp_path / "pred.seg.nrrd", {"ROI": pred, "other": extra}),
        "truth": [write(tmp_path / f"a{i}.seg.nrrd", {"CAC": a}) for i, a in enumerate(annot)],
        "pred_mask": pred,
        "majority": (annot[0].astype(int) + annot[1] + annot[2]) >= 2,
        "extra": extra,
        "tmp": tmp_path,
    }


def test_json_majority_and_segment(files, capsys):
    assert main(["evaluate", files["pred"], *files["truth"], "--json", "--segment", "ROI"]) == 2  # no ROI in truth
    capsys.readouterr()
    assert main(["evaluate", files["pred"], *files["truth"], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"frames", "summary", "grid", "units"}
    assert set(out["summary"]) == {"iom", "hd_mm", "roi_precision", "presence", "roi_area_pct_field", "detection"}
    assert set(out["summary"]["iom"]) == {"median", "q1", "q3"}
    frames = {f["index"]: f for f in out["frames"]}
    assert sorted(frames) == [0, 1, 2]  # frame 3 only has the minority annotation
    assert all(set(f) == {"index", "iom", "hd_mm", "roi_area_mm2", "roi_area_pct", "roi_area_pct_field",
                          "roi_precision", "ai_calcium", "truth_calcium", "annotators_with_calcium", "agree"}
               for f in out["frames"])
    # Frame-level detection counts every frame: frame 3 has a minority annotation only (no truth),
    # and the prediction of each frame is compared with the majority's presence.
    det = out["summary"]["detection"]
    pred_any = (files["pred_mask"] | files["extra"]).reshape(4, -1).any(axis=1)
    truth_any = files["majority"].reshape(4, -1).any(axis=1)
    assert det["tp"] == int((pred_any & truth_any).sum()) and det["fp"] == int((pred_any & ~truth_any).sum())
    union = files["pred_mask"] | files["extra"]
    for k in (0, 2):
        assert frames[k]["iom"] == pytest.approx(iom(union[k], files["majority"][k]))
        assert frames[k]["hd_mm"] == pytest.approx(hausdorff_mm(union[k], files["majority"][k], (0.3, 0.3)), rel=1e-4)
    assert frames[0]["iom"] == 1.0 and frames[2]["iom"] == pytest.approx(25 / 100)
    assert frames[1]["iom"] == 0.0 and frames[1]["hd_mm"] is None  # only the extra segment: HD undefined


def test_text_output_and_single_truth(files, capsys):
    assert main(["evaluate", files["pred"], files["truth"][2]]) == 0
    text = capsys.readouterr().out
    assert "IoM" in text and "HD (mm)" in text and "median (Q1-Q3)" in text


def test_text_output_says_why_a_measure_is_undefined(files, capsys):
    """A calcium-free truth: HD is undefined on every frame (IoM is 0); the text says why, not "- (---)"."""
    empty = write(files["tmp"] / "empty.seg.nrrd", {"CAC": np.zeros((4, 64, 64), bool)})
    assert main(["evaluate", files["pred"], empty]) == 0
    text = capsys.readouterr().out
    assert "HD (mm): - (no frame where both mark calcium)" in text and "IoM: 0.00" in text
    assert "(---)" not in text and "ROI precision: 0.00" in text  # the AI's ROIs lie outside the (empty) truth


def test_mismatched_geometry_exit_2(files, capsys):
    other = write(files["tmp"] / "small.seg.nrrd", {"CAC": np.zeros((5, 64, 64), bool)})  # another frame count
    assert main(["evaluate", files["pred"], other]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cac: error:") and "same cine" in err and "Traceback" not in err
    spaced = write(files["tmp"] / "sp.seg.nrrd", {"CAC": np.zeros((4, 64, 64), bool)}, spacing=(0.5, 0.5))
    assert main(["evaluate", files["pred"], spaced]) == 2
    assert main(["evaluate", files["pred"], str(files["tmp"] / "missing.seg.nrrd")]) == 2


def test_onset_scores_only_the_non_contrast_frames(files, capsys):
    """With --onset the frames from it on (contrast frames, never annotated) are not counted as true negatives."""
    assert main(["evaluate", files["pred"], *files["truth"], "--json"]) == 0
    every = json.loads(capsys.readouterr().out)["summary"]["detection"]
    assert main(["evaluate", files["pred"], *files["truth"], "--json", "--onset", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["onset_frame"] == 2 and {f["index"] for f in out["frames"]} == {0, 1}
    det = out["summary"]["detection"]
    pred_any = (files["pred_mask"] | files["extra"])[:2].reshape(2, -1).any(axis=1)
    truth_any = files["majority"][:2].reshape(2, -1).any(axis=1)
    assert det["tp"] == int((pred_any & truth_any).sum()) and det["fp"] == int((pred_any & ~truth_any).sum())
    assert det["tn"] == int((~pred_any & ~truth_any).sum()) < every["tn"]  # frame 3 no longer counts
    assert main(["evaluate", files["pred"], *files["truth"], "--onset", "9"]) == 2
    assert "is not a possible first contrast frame of these files" in capsys.readouterr().err


def test_bad_spacing_and_onset_messages_say_what_is_valid(files, capsys):
    """--spacing is quoted as typed (not as a Python list); --onset's range is the onsets that can be given."""
    assert main(["evaluate", files["pred"], files["truth"][0], "--spacing", "0"]) == 2
    err = capsys.readouterr().err
    assert "--spacing 0 is not valid" in err and "[" not in err and "Traceback" not in err
    assert main(["evaluate", files["pred"], files["truth"][0], "--spacing", "0.3,-1"]) == 2
    assert "--spacing 0.3,-1 is not valid" in capsys.readouterr().err
    # 4 frames: the first contrast frame can be 1..3 (0 leaves no frame before it, 4 is past the last)
    for onset in ("0", "4", "-3"):
        assert main(["evaluate", files["pred"], *files["truth"], "--onset", onset]) == 2
        err = capsys.readouterr().err
        assert "(1..3)" in err and "Traceback" not in err, err
    assert main(["evaluate", files["pred"], *files["truth"], "--json", "--onset", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["onset_frame"] == 3
