"""DICOM SEG export of the ROIs (highdicom): references, round trip against roi.seg.nrrd, no added patient data."""


import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
from cac.cli import main  # noqa: E402
from CACIdentifierLib.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from conftest import BIPLANE, needs_data  # noqa: E402

SOURCE = BIPLANE

# Patient, study and equipment attributes that may identify someone: the SEG may hold them only as the source does.
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
               "PatientSize", "OtherPatientIDs", "OtherPatientNames", "PatientAddress", "EthnicGroup",
               "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
               "InstitutionName", "InstitutionAddress", "StudyDescription", "PatientComments")


@needs_data
def test_round_trip_equals_seg_nrrd_frame_by_frame(tmp_path):
    from CACIdentifierLib import nrrd_io
    src = pydicom.dcmread(SOURCE, stop_before_pixels=True)
    n = int(src.NumberOfFrames)
    roi = np.zeros((n, src.Rows, src.Columns), bool)
    roi[1, 100:180, 200:260] = True
    roi[4, 300:310, 10:50] = True
    roi[4, 0:5, 500:512] = True  # touches the border
    roi[16, 250:400, 250:400] = True  # last frame
    nrrd_io.write_seg_nrrd(tmp_path / "roi.seg.nrrd", {"CAC ROI": roi}, None)
    out = write_dicom_seg(tmp_path / "roi.dcm", SOURCE, roi)
    nrrd = nrrd_io.read_seg_nrrd(tmp_path / "roi.seg.nrrd").union()
    back = read_dicom_seg(out, n)
    for k in range(n):
        assert np.array_equal(back[k], nrrd[k]), k
    seg = pydicom.dcmread(out)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.NumberOfFrames == 3  # empty frames left out
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(int(r.ReferencedFrameNumber) for r in refs) == [2, 5, 17]  # highdicom orders by position
    assert {r.ReferencedSOPInstanceUID for r in refs} == {src.SOPInstanceUID}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "CAC ROI"
    # Read back with highdicom too.
    import highdicom as hd

    assert hd.seg.segread(out).number_of_segments == 1


@needs_data
def test_no_patient_data_beyond_the_source(tmp_path):
    src = pydicom.dcmread(SOURCE, stop_before_pixels=True)
    roi = np.zeros((int(src.NumberOfFrames), src.Rows, src.Columns), bool)
    roi[2, 10:20, 10:20] = True
    seg = pydicom.dcmread(write_dicom_seg(tmp_path / "roi.dcm", SOURCE, roi))
    for kw in IDENTIFYING:
        value = str(seg.get(kw, "") or "")
        if value:
            assert kw in src and value == str(src.get(kw)), kw
    empty = write_dicom_seg(tmp_path / "empty.dcm", SOURCE, roi & False)  # nothing found: still a valid SEG
    assert not read_dicom_seg(empty, roi.shape[0]).any()
    with pytest.raises(Exception, match="already exists"):
        write_dicom_seg(tmp_path / "roi.dcm", SOURCE, roi)


def test_cli_refuses_non_dicom_source(tmp_path, capsys):
    from CACIdentifierLib import nrrd_io
    from CACIdentifierLib.cine import Cine

    cine = Cine(frames=np.zeros((4, 64, 64), np.uint8), frame_time_ms=66.0)
    nrrd_io.write_frame_stack_nrrd(cine, tmp_path / "cine.nrrd")
    code = main(["identify", str(tmp_path / "cine.nrrd"), "--out", str(tmp_path / "o"),
                 "--dicom-seg", str(tmp_path / "roi.dcm")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cac: error: --dicom-seg needs a DICOM cine file") and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "roi.dcm").exists()


# --------------------------------------------------------------------------- phantom cines (no data needed)
# A `cac phantom` cine has a Frame of Reference UID but no plane position per frame, as some vendors' XA
# files do; highdicom refused it ("Only a single frame is supported ...") and `cac identify --dicom-seg`
# crashed after writing its output folder.


@pytest.fixture(scope="module")
def phantom_cine(tmp_path_factory):
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition
    from CACTrainerLib.phantom_writer import write_acquisition

    acq = generate_acquisition(PhantomParams(rows=128, cols=128, n_frames=24, fps=15.0), seed=3, patient=0,
                               calcium_free=False)
    folder = tmp_path_factory.mktemp("phantom")
    files = write_acquisition(folder, acq)
    return folder / files["cine"]


def test_seg_of_a_cine_with_frame_of_reference_but_no_positions(phantom_cine, tmp_path):
    import highdicom as hd

    src = pydicom.dcmread(phantom_cine, stop_before_pixels=True)
    assert "FrameOfReferenceUID" in src and "PerFrameFunctionalGroupsSequence" not in src  # the case
    n = int(src.NumberOfFrames)
    roi = np.zeros((n, src.Rows, src.Columns), bool)
    roi[0, 5:20, 90:120] = True  # not symmetric: a transposed or flipped frame would not match
    roi[7, 60:64, 0:3] = True
    roi[n - 1, 100:128, 100:128] = True
    out = write_dicom_seg(tmp_path / "roi.dcm", phantom_cine, roi, (0.4, 0.4))
    assert np.array_equal(read_dicom_seg(out, n), roi)
    seg = pydicom.dcmread(out)
    refs = sorted(int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for f in seg.PerFrameFunctionalGroupsSequence)
    assert refs == [1, 8, n]
    # Made-up positions get their own frame of reference: they are no places in the source's patient frame.
    assert seg.FrameOfReferenceUID != src.FrameOfReferenceUID
    read = hd.seg.segread(out)
    pixels = read.get_pixels_by_source_frame(src.SOPInstanceUID, source_frame_numbers=[1, 8, n],
                                             combine_segments=True)
    assert np.array_equal(pixels.astype(bool), roi[[0, 7, n - 1]])


def test_seg_keeps_the_source_positions_when_every_frame_has_its_own(phantom_cine, tmp_path):
    from CACIdentifierLib.dicom_seg import _has_frame_positions
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(phantom_cine)
    n = int(ds.NumberOfFrames)
    shared, orientation, measures = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [0.4, 0.4]
    measures.SliceThickness = 1.0
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items = []
    for k in range(n):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        item.PlanePositionSequence = Sequence([position])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    placed = tmp_path / "placed.dcm"
    ds.save_as(placed)
    assert _has_frame_positions(pydicom.dcmread(placed, stop_before_pixels=True))
    roi = np.zeros((n, ds.Rows, ds.Columns), bool)
    roi[2, 10:30, 40:50] = True
    seg = pydicom.dcmread(write_dicom_seg(tmp_path / "roi.dcm", placed, roi))
    assert seg.FrameOfReferenceUID == ds.FrameOfReferenceUID  # the source's own geometry is used
    assert np.array_equal(read_dicom_seg(tmp_path / "roi.dcm", n), roi)
    # All frames at one position (a static X-ray run): highdicom refuses duplicates, so positions are made up.
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.save_as(placed)
    assert not _has_frame_positions(pydicom.dcmread(placed, stop_before_pixels=True))
    assert np.array_equal(read_dicom_seg(write_dicom_seg(tmp_path / "same.dcm", placed, roi), n), roi)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_cli_identify_writes_the_seg_of_a_phantom_cine(phantom_cine, all_roi_model, tmp_path, capsys):
    import json

    import highdicom as hd
    from CACIdentifierLib.nrrd_io import read_seg_nrrd

    out, seg_path = tmp_path / "out", tmp_path / "roi.dcm"
    argv = ["identify", str(phantom_cine), "--out", str(out), "--dicom-seg", str(seg_path), "--model",
            str(all_roi_model), "--onset", "10", "--device", "cpu"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    n = int(pydicom.dcmread(phantom_cine, stop_before_pixels=True).NumberOfFrames)
    roi = read_seg_nrrd(out / "roi.seg.nrrd").union()
    analysed = sorted(row["index"] for row in json.loads((out / "report.json").read_text())["frames"])
    assert analysed and [f for f in range(n) if roi[f].any()] == analysed  # the model's ROI: analysed frames
    assert np.array_equal(read_dicom_seg(seg_path, n), roi)  # the SEG's frames are roi.seg.nrrd's, frame by frame
    seg = hd.seg.segread(seg_path)
    assert seg.number_of_segments == 1 and seg.NumberOfFrames == len(analysed)
    assert _leftovers(tmp_path) == []
    # --overwrite replaces both, as before.
    assert main(argv + ["--overwrite"]) == 0
    assert np.array_equal(read_dicom_seg(seg_path, n), roi) and _leftovers(tmp_path) == []


def test_cli_identify_leaves_nothing_when_the_seg_fails(phantom_cine, all_roi_model, tmp_path, capsys, monkeypatch):
    """A SEG that cannot be made after the network ran: no output folder, no SEG, and a retry is not refused."""
    from CACIdentifierLib import dicom_seg
    from CACIdentifierLib.errors import CacError

    build, calls = dicom_seg.build_dicom_seg, []

    def fail_after_the_check(*args, **kw):
        calls.append(1)
        if len(calls) > 1:  # the first call is check_source's probe, before the network
            raise CacError("cannot make a DICOM SEG of cine.dcm (test)")
        return build(*args, **kw)

    monkeypatch.setattr(dicom_seg, "build_dicom_seg", fail_after_the_check)
    out, seg_path = tmp_path / "out", tmp_path / "roi.dcm"
    argv = ["identify", str(phantom_cine), "--out", str(out), "--dicom-seg", str(seg_path), "--model",
            str(all_roi_model), "--onset", "10", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("cac: warning:")]
    assert len(errors) == 1 and errors[0].startswith("cac: error: cannot make a DICOM SEG"), err
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(dicom_seg, "build_dicom_seg", build)
    assert main(argv) == 0 and out.is_dir() and seg_path.is_file()


def test_highdicom_refusal_is_one_line(phantom_cine, tmp_path, monkeypatch):
    import highdicom as hd
    from CACIdentifierLib.errors import CacError

    def refuse(*a, **k):
        raise ValueError("Something highdicom\ndoes not like.")

    monkeypatch.setattr(hd.seg, "Segmentation", refuse)
    roi = np.zeros((24, 128, 128), bool)
    with pytest.raises(CacError, match="cannot make a DICOM SEG of cine.dcm") as info:
        write_dicom_seg(tmp_path / "roi.dcm", phantom_cine, roi)
    assert "leave out --dicom-seg" in str(info.value)
    assert not (tmp_path / "roi.dcm").exists()
