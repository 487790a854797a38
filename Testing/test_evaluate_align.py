"""`cac evaluate` on segmentations saved by slicer-core with other extents, crops and origins.

References: IoM from numpy on the full-frame arrays, HD from SimpleITK's
HausdorffDistanceImageFilter, the files written by slicer-core's own storage
node (``slicer_seg_files``), not by the project's writer.
"""

import csv
import io
import json

import numpy as np
import pytest
from cac.cli import main

pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")
import slicer_seg_files as ssf  # noqa: E402

SPACING = (0.3, 0.25)  # (row, col): unequal, so a swapped axis would show
SHAPE = (6, 96, 112)


def sitk_hd(a, b, spacing):
    ia = sitk.GetImageFromArray(a.astype(np.uint8))
    ib = sitk.GetImageFromArray(b.astype(np.uint8))
    ia.SetSpacing((spacing[1], spacing[0]))
    ib.SetSpacing((spacing[1], spacing[0]))
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(ia, ib)
    return f.GetHausdorffDistance()


def np_iom(a, b):
    return np.sum(a & b) / min(a.sum(), b.sum())


@pytest.fixture(scope="module")
def masks():
    rng = np.random.default_rng(3)
    pred = np.zeros(SHAPE, bool)
    annot = [np.zeros(SHAPE, bool) for _ in range(3)]
    pred[1, 20:60, 30:80] = True
    pred[3, 50:70, 10:40] = True
    pred[4, 5:15, 90:105] = True  # AI only
    for a in annot:
        r, c = rng.integers(25, 35), rng.integers(40, 50)
        a[1, r : r + 12, c : c + 20] = True
        a[3, 55:75, 30:50] = True
    annot[0][5, 60:70, 60:70] = True  # annotators only (two of three)
    annot[1][5, 62:72, 60:70] = True
    annot[2][2, 10:20, 10:20] = True  # one annotator: not in the majority
    majority = (annot[0].astype(int) + annot[1] + annot[2]) >= 2
    return pred, annot, majority


def run_json(capsys, *args):
    capsys.readouterr()
    assert main(["evaluate", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def check_against_references(out, pred, majority, annot):
    rows = {r["index"]: r for r in out["frames"]}
    either = [k for k in range(SHAPE[0]) if pred[k].any() or majority[k].any()]
    assert sorted(rows) == either == [1, 3, 4, 5]
    for k in either:
        r = rows[k]
        p, t = pred[k], majority[k]
        if p.any() and t.any():
            assert r["iom"] == pytest.approx(np_iom(p, t))
            assert r["hd_mm"] == pytest.approx(sitk_hd(p, t, SPACING), rel=1e-6)
            # ROI precision: the share of the ROI inside the truth's ROI_GT (four dilations by a disk
            # of radius 5 px, the paper's ROI_GT), built here with scipy and scikit-image directly.
            from scipy import ndimage
            from skimage.morphology import disk

            roi_gt = ndimage.binary_dilation(t, structure=disk(5), iterations=4)
            assert r["roi_precision"] == pytest.approx(np.sum(p & roi_gt) / p.sum())
        else:
            assert r["iom"] == 0.0 and r["hd_mm"] is None
        assert r["roi_area_mm2"] == pytest.approx(p.sum() * SPACING[0] * SPACING[1])
        assert r["roi_area_pct"] == pytest.approx(100 * p.sum() / (SHAPE[1] * SHAPE[2]))
        assert (r["ai_calcium"], r["truth_calcium"], r["agree"]) == (p.any(), t.any(), p.any() == t.any())
        assert r["annotators_with_calcium"] == sum(a[k].any() for a in annot)
    pr = out["summary"]["presence"]
    assert (pr["both"], pr["ai_only"], pr["truth_only"], pr["neither"], pr["frames"]) == (2, 1, 1, 2, 6)
    assert pr["agreement"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("variant", ["slicer-crop", "no-reference+crop"])
def test_cropped_annotations_agree_with_references(tmp_path, capsys, masks, variant):
    pred, annot, majority = masks
    pred_full = ssf.write(tmp_path / "pred.seg.nrrd", {"ROI": pred}, SPACING)
    truth = []
    for i, a in enumerate(annot):
        path = tmp_path / f"annotator{i}.seg.nrrd"
        if variant == "slicer-crop":
            truth.append(ssf.write(path, {"calcium": a}, SPACING, crop=True))
        else:
            truth.append(ssf.write(path, {"calcium": a}, SPACING, reference=False, crop=True))
    out = run_json(capsys, pred_full, *truth)
    check_against_references(out, pred, majority, annot)
    assert out["grid"]["shape"] == list(SHAPE)


def test_cropped_prediction_and_full_truth(tmp_path, capsys, masks):
    pred, annot, majority = masks
    pred_crop = ssf.write(tmp_path / "pred.seg.nrrd", {"ROI": pred}, SPACING, crop=True)
    truth = [ssf.write(tmp_path / f"a{i}.seg.nrrd", {"calcium": a}, SPACING) for i, a in enumerate(annot)]
    out = run_json(capsys, pred_crop, *truth)
    assert out["grid"]["shape"] == list(SHAPE)
    check_against_references(out, pred, majority, annot)


def cropped_line(path, rows, cols) -> str:
    """`cac dataset add`'s line for a file drawn over a cropped copy of the 96 x 112 px frame-stack volume."""
    volume = "the cine's frame-stack volume"
    return (f"cac: error: {path} was drawn over a cropped copy of {volume} ({rows} x {cols} of its 96 x 112 px), so "
            f"where it lies on the frames cannot be checked; in Slicer's Segment Editor give it the geometry of "
            f"{volume} ('Specify geometry') and save it again, or draw it over {volume}\n")


@pytest.mark.parametrize("crop", [False, True], ids=["whole-extent", "minimum-extent"])
def test_a_file_drawn_over_a_cropped_volume_is_refused(tmp_path, capsys, masks, crop):
    """`evaluate` took a file drawn over a cropped copy of the frame-stack volume (its reference geometry: fewer
    rows and columns, the origin moved to the crop's corner) and placed it by the crop's origin, which nothing
    checks; `cac dataset add` and CAC Annotator refuse it.  Now `evaluate` refuses it too, whether it is a truth or
    the prediction, with the same line (exit code 2, no traceback, nothing on stdout, no --csv written); the
    largest reference geometry among the files stands for the volume.  Saved cropped to its minimum extent on the
    whole volume, the same calcium is accepted (above)."""
    pred, annot, _ = masks
    pred_full = ssf.write(tmp_path / "pred.seg.nrrd", {"ROI": pred}, SPACING)
    whole = [ssf.write(tmp_path / f"a{i}.seg.nrrd", {"calcium": a}, SPACING, crop=True) for i, a in enumerate(annot)]
    # The box holds every annotation, so nothing of the calcium is lost: only where it lies is unknown.
    boxed = ssf.write(tmp_path / "boxed.seg.nrrd", {"calcium": annot[1]}, SPACING, box=(10, 90, 5, 100), crop=crop)
    boxed_pred = ssf.write(tmp_path / "boxed_pred.seg.nrrd", {"ROI": pred}, SPACING, box=(0, 80, 0, 112), crop=crop)
    table = tmp_path / "table.csv"
    for files, refused, (rows, cols) in (((pred_full, whole[0], boxed, whole[2]), boxed, (80, 95)),
                                         ((boxed_pred, *whole), boxed_pred, (80, 112))):
        for extra in ((), ("--json",), ("--csv", str(table))):
            capsys.readouterr()
            assert main(["evaluate", *files, *extra]) == 2
            out, err = capsys.readouterr()
            assert (out, err) == ("", cropped_line(refused, rows, cols))
            assert not table.exists()


def test_csv_matches_json(tmp_path, capsys, masks):
    pred, annot, majority = masks
    pred_f = ssf.write(tmp_path / "pred.seg.nrrd", {"ROI": pred}, SPACING)
    truth = [ssf.write(tmp_path / f"a{i}.seg.nrrd", {"calcium": a}, SPACING, crop=True) for i, a in enumerate(annot)]
    out = run_json(capsys, pred_f, *truth)
    csv_path = tmp_path / "table.csv"
    assert main(["evaluate", pred_f, *truth, "--csv", str(csv_path)]) == 0
    text = capsys.readouterr().out
    assert "calcium presence: AI and annotators agree on 4 of 6 frames" in text
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [int(r["index"]) for r in rows] == [f["index"] for f in out["frames"]]
    for r, f in zip(rows, out["frames"]):
        assert float(r["roi_area_mm2"]) == pytest.approx(f["roi_area_mm2"])
        assert r["agree"] == str(f["agree"])
        assert (r["hd_mm"] == "") == (f["hd_mm"] is None)
    assert main(["evaluate", pred_f, *truth, "--csv", str(csv_path)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_truly_different_geometry_refused(tmp_path, capsys, masks):
    pred, annot, _ = masks
    pred_f = ssf.write(tmp_path / "pred.seg.nrrd", {"ROI": pred}, SPACING)
    spacing = ssf.write(tmp_path / "sp.seg.nrrd", {"c": annot[0]}, (0.4, 0.25))
    frames = ssf.write(tmp_path / "fr.seg.nrrd", {"c": annot[0][:5]}, SPACING)
    for bad in (spacing, frames):
        capsys.readouterr()
        assert main(["evaluate", pred_f, bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cac: error:") and "same cine" in err and err.count("\n") == 1, err
    assert "frames" in err
