"""DICOM SEG export of the ROIs (highdicom): references, round trip against roi.seg.nrrd, no added patient data."""


import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
from cac.cli import main  # noqa: E402
from CACIdentifierLib.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from conftest import BIPLANE, needs_data  # noqa: E402

SOURCE = BIPLANE
pytestmark = needs_data

# Patient, study and equipment attributes that may identify someone: the SEG may hold them only as the source does.
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
               "PatientSize", "OtherPatientIDs", "OtherPatientNames", "PatientAddress", "EthnicGroup",
               "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
               "InstitutionName", "InstitutionAddress", "StudyDescription", "PatientComments")


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
