"""Identity, not only shape: segmentations record their source cine; evaluate and the dataset builder check it.

Issue 16, item 6: `cac evaluate` on the segmentations of two different cines with
equal shapes reported IoM 0.50 and HD "516.85 mm" (the spacing defaulted to 1.0).
Now the project writes ``CAC_source_fingerprint`` (a hash of the cine's pixels)
into every ``.seg.nrrd`` it makes, refuses files of different cines (one line,
exit 2) unless ``--ignore-source``, and refuses an HD in mm when the spacing is
unknown unless ``--spacing`` or ``--allow-pixel-units``.  Files without the
field (Slicer's own, written by slicer-core's storage node) are accepted with a
warning.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import slicer_seg_files as ssf
from cac.cli import main
from CACIdentifierLib.cine import Cine, pixel_fingerprint
from CACIdentifierLib.cine_io import load_cine
from CACIdentifierLib.nrrd_io import (
    read_nrrd_cine,
    read_seg_nrrd,
    write_frame_stack_nrrd,
    write_seg_nrrd,
    write_seq_nrrd,
)
from CACTrainerLib.phantom import PhantomParams, generate_acquisition
from CACTrainerLib.phantom_writer import write_acquisition

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
XA17 = DATA / "xa" / "rubo-biplane-b-ecg-17f.dcm"
SMALL = PhantomParams(rows=128, cols=128, n_frames=24, fps=15.0)


def run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> bool:
    return err.startswith("cac: error:") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def two_cines(tmp_path_factory):
    """Two phantom acquisitions of equal shape and spacing (different patients), written as the phantom does."""
    root = tmp_path_factory.mktemp("two")
    out = []
    for seed in (3, 4):
        acq = generate_acquisition(SMALL, seed=seed, patient=seed, acquisition=0, calcium_free=False)
        if out:  # the same pixel lattice as the first: only the source tells them apart
            acq = replace(acq, spacing_mm=out[0][0].spacing_mm)
        files = write_acquisition(root / f"s{seed}", acq)
        out.append((acq, root / f"s{seed}", files))
    assert out[0][0].frames.shape == out[1][0].frames.shape
    return out


def test_fingerprint_is_the_cines_not_the_files(tmp_path):
    cine = load_cine(XA17)
    fp = cine.fingerprint()
    assert fp.startswith("pixels-sha256:") and len(fp) == len("pixels-sha256:") + 64
    # The same pixels through the project's NRRD writers, and in another integer type: the same fingerprint.
    stack = read_nrrd_cine(write_frame_stack_nrrd(cine, tmp_path / "c.nrrd"))
    seq = read_nrrd_cine(write_seq_nrrd(cine, tmp_path / "c.seq.nrrd"))
    assert stack.fingerprint() == seq.fingerprint() == fp
    assert pixel_fingerprint(cine.frames.astype(np.int32)) == pixel_fingerprint(cine.frames.astype(np.float32)) == fp
    # One pixel changed, or the same pixels in another shape: another fingerprint.
    changed = cine.frames.copy()
    changed[3, 10, 10] ^= 1
    assert pixel_fingerprint(changed) != fp
    assert pixel_fingerprint(cine.frames.reshape(cine.n_frames, -1, cine.columns // 2)) != fp


def test_phantom_segmentations_record_the_cine_read_back(two_cines):
    acq, folder, files = two_cines[0]
    fp = load_cine(folder / files["cine"]).fingerprint()  # the DICOM as any reader sees it
    for name in (*files["annotators"], files["majority"], files["truth_seg"]):
        seg = read_seg_nrrd(folder / name)
        assert seg.source_fingerprint == fp and seg.spacing_known is True


def test_evaluate_refuses_segmentations_of_different_cines(two_cines, capsys):
    (a, fa, files_a), (b, fb, files_b) = two_cines
    pred, truth = fa / files_a["majority"], fb / files_b["majority"]
    # The case: equal shapes and spacing, different cines.
    code, out, err = run(capsys, "evaluate", pred, truth)
    assert code == 2 and one_error_line(err) and out == ""
    assert "different cines" in err and "--ignore-source" in err
    fp_a = read_seg_nrrd(pred).source_fingerprint
    assert fp_a.split(":")[1][:8] in err and fp_a.split(":")[1] not in err  # a short hash only
    # Asked for: compared, with a warning saying so.
    code, out, err = run(capsys, "evaluate", pred, truth, "--ignore-source", "--json")
    assert code == 0 and "different cines" in err and "compared anyway" in err
    assert json.loads(out)["units"] == "mm"
    # The same cine: no word about sources.
    code, out, err = run(capsys, "evaluate", pred, fa / files_a["annotators"][0], fa / files_a["annotators"][1],
                         fa / files_a["annotators"][2], "--json")
    assert code == 0 and err == ""


def test_dataset_builder_refuses_annotations_of_another_cine(tmp_path, capsys):
    cine = load_cine(XA17)
    mask = np.zeros(cine.frames.shape, bool)
    mask[2, 100:120, 100:130] = True
    other = cine.frames.copy()
    other[0, 0, 0] ^= 1  # another cine with the same grid
    wrong = write_seg_nrrd(tmp_path / "wrong.seg.nrrd", {"calcium": mask}, cine.spacing_mm,
                           source_fingerprint=pixel_fingerprint(other))
    right = write_seg_nrrd(tmp_path / "right.seg.nrrd", {"calcium": mask}, cine.spacing_mm,
                           source_fingerprint=cine.fingerprint())
    ds = tmp_path / "ds"
    code, _, err = run(capsys, "dataset", "add", ds, XA17, "--annotations", right, wrong, "--onset", 5)
    assert code == 2 and one_error_line(err) and "right.seg.nrrd" not in err
    fp_wrong, fp_cine = pixel_fingerprint(other).split(":")[1][:8], cine.fingerprint().split(":")[1][:8]
    # It names the file drawn on another cine, not "the cine and X are segmentations of different cines".
    assert (f"{wrong} was drawn on another cine (it records source fingerprint {fp_wrong}, the cine's is {fp_cine}); "
            "give the annotations made on this cine, or pass --ignore-source to use it anyway") in err
    assert not (ds / "manifest.json").exists()
    code, out, err = run(capsys, "dataset", "add", ds, XA17, "--annotations", right, wrong, "--onset", 5,
                         "--ignore-source", "--json")
    assert code == 0 and f"{wrong} was drawn on another cine" in err and "used anyway (--ignore-source)" in err
    entry = json.loads((ds / "manifest.json").read_text())["acquisitions"][0]
    # The dataset's own segmentations record the cine (and no UID).
    seg = read_seg_nrrd(ds / entry["majority"])
    assert seg.source_fingerprint == cine.fingerprint()
    assert read_nrrd_cine(ds / entry["cine"]).fingerprint() == cine.fingerprint()


def test_identify_refuses_annotations_of_another_cine(tmp_path, capsys):
    cine = load_cine(XA17)
    mask = np.zeros(cine.frames.shape, bool)
    mask[2, 100:120, 100:130] = True
    other = write_seg_nrrd(tmp_path / "other.seg.nrrd", {"calcium": mask}, cine.spacing_mm,
                           source_fingerprint=pixel_fingerprint(cine.frames[::-1]))
    code, _, err = run(capsys, "identify", XA17, "--out", tmp_path / "out", "--annotations", other)
    assert code == 2 and one_error_line(err) and "segmentations of different cines" not in err
    assert f"{other} was drawn on another cine (it records source fingerprint " in err
    assert err.rstrip().endswith("use the annotations made on this cine, or pass --ignore-source to use it anyway")
    assert not (tmp_path / "out").exists()
    # Refused before the model is read: with a model file that is not there, the annotation's line still comes.
    code, _, err = run(capsys, "identify", XA17, "--out", tmp_path / "out", "--model", tmp_path / "none.safetensors",
                       "--annotations", other)
    assert code == 2 and f"{other} was drawn on another cine" in err and "none.safetensors" not in err


@pytest.fixture(scope="module")
def unknown_spacing(tmp_path_factory):
    """Prediction and truth of one cine whose spacing is unknown (1.0 written), with known HD in pixels."""
    root = tmp_path_factory.mktemp("unknown")
    rng = np.random.default_rng(0)
    cine = Cine(frames=rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    pred = np.zeros(cine.frames.shape, bool)
    truth = np.zeros_like(pred)
    pred[1, 10:20, 10:20] = True
    truth[1, 10:20, 30:40] = True  # HD: 20 px
    fp = cine.fingerprint()
    return (write_seg_nrrd(root / "p.seg.nrrd", {"ROI": pred}, None, source_fingerprint=fp),
            write_seg_nrrd(root / "t.seg.nrrd", {"c": truth}, None, source_fingerprint=fp))


def test_evaluate_refuses_mm_for_an_unknown_spacing(unknown_spacing, capsys):
    p, t = unknown_spacing
    assert read_seg_nrrd(p).spacing_known is False
    code, out, err = run(capsys, "evaluate", p, t)
    assert code == 2 and one_error_line(err) and out == ""
    assert "unknown" in err and "--spacing" in err and "--allow-pixel-units" in err
    # In pixels when asked: no key says mm.
    code, out, err = run(capsys, "evaluate", p, t, "--allow-pixel-units", "--json")
    assert code == 0, err
    result = json.loads(out)
    row = result["frames"][0]
    assert result["units"] == "px" and row["hd_px"] == pytest.approx(20.0) and row["roi_area_px"] == 100
    assert "hd_mm" not in row and "hd_mm" not in result["summary"] and result["grid"]["spacing_mm"] is None
    code, out, _ = run(capsys, "evaluate", p, t, "--allow-pixel-units")
    assert code == 0 and "HD (px)" in out and "HD (mm)" not in out
    # With the spacing given: mm, scaled by it.
    code, out, err = run(capsys, "evaluate", p, t, "--spacing", "0.3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["units"] == "mm" and result["frames"][0]["hd_mm"] == pytest.approx(6.0)
    assert result["frames"][0]["roi_area_mm2"] == pytest.approx(9.0)
    code, _, err = run(capsys, "evaluate", p, t, "--spacing", "nan")
    assert code == 2 and one_error_line(err)


def test_evaluate_slicer_files_without_fields(tmp_path, capsys):
    """Slicer's own files record neither source nor spacing source: a warning; 1 x 1 mm is taken as unknown."""
    pred = np.zeros((4, 48, 48), bool)
    truth = np.zeros_like(pred)
    pred[1, 5:15, 5:15] = True
    truth[1, 5:15, 20:30] = True
    p = ssf.write(tmp_path / "p.seg.nrrd", {"ROI": pred}, (0.3, 0.25))
    t = ssf.write(tmp_path / "t.seg.nrrd", {"c": truth}, (0.3, 0.25))
    assert read_seg_nrrd(p).source_fingerprint is None and read_seg_nrrd(p).spacing_known is None
    code, out, err = run(capsys, "evaluate", p, t, "--json")
    assert code == 0 and err.startswith("cac: warning:") and "2 files" in err and err.count("\n") == 1
    assert json.loads(out)["frames"][0]["hd_mm"] == pytest.approx(15 * 0.25)
    code, _, err = run(capsys, "evaluate", p, t, "--spacing", "0.5")  # contradicts the files' spacing
    assert code == 2 and "differs" in err
    p1 = ssf.write(tmp_path / "p1.seg.nrrd", {"ROI": pred}, (1.0, 1.0))
    t1 = ssf.write(tmp_path / "t1.seg.nrrd", {"c": truth}, (1.0, 1.0))
    code, _, err = run(capsys, "evaluate", p1, t1)
    assert code == 2 and "1 x 1 mm" in err.splitlines()[-1] and "--allow-pixel-units" in err
