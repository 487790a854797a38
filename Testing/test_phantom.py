"""Tests of the synthetic angiography phantom (CACTrainerLib.phantom*, `cac phantom`)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from CACTrainerLib.phantom import PhantomParams, generate_acquisition
from CACTrainerLib.phantom_writer import load_manifest, write_acquisition, write_dataset, write_dicom

# Small, fast cines with the same field of view as 512x512 (spacing scaled).
SMALL = PhantomParams(rows=160, cols=160, n_frames=48, fps=15.0)
STILL = replace(SMALL, respiration_mm_range=(0.0, 0.0), table_pan_prob=0.0, exposure_drift=0.0)


@pytest.fixture(scope="module")
def still():
    """No respiration, pan or exposure drift: positions depend on the cardiac phase only."""
    return generate_acquisition(replace(STILL, n_frames=90, onset_fraction_range=(0.8, 0.85),
                                        early_onset_prob=0.0, heart_rate_bpm_range=(70, 80)),
                                seed=11, patient=0, acquisition=0, calcium_free=False)


@pytest.fixture(scope="module")
def small():
    return generate_acquisition(SMALL, seed=3, patient=1, acquisition=0, calcium_free=False)


def _centroids(mask_stack):
    out = []
    for m in mask_stack:
        ys, xs = np.nonzero(m)
        out.append((ys.mean(), xs.mean()) if len(ys) else (np.nan, np.nan))
    return np.array(out)


def test_shapes_types_and_truth_keys(small):
    a = small
    n = SMALL.n_frames
    assert a.frames.shape == (n, 160, 160) and a.frames.dtype == np.uint8
    assert a.calcium.shape == a.frames.shape and a.calcium.dtype == bool
    assert len(a.annotators) == 3 and all(m.shape == a.frames.shape for m in a.annotators)
    t = a.truth
    assert len(t["phase"]) == n and all(0.0 <= p < 1.0 for p in t["phase"])
    assert 0 < t["onset_frame"] < n
    assert t["spacing_mm"][0] == pytest.approx(a.spacing_mm[0])
    assert t["calcifications"], "calcium_free=False must give deposits"
    for d in t["calcifications"]:
        assert 0.5 <= d["length_mm"] <= 5.0 + 1e-9 and 0.5 - 1e-9 <= d["width_mm"] <= d["length_mm"] + 1e-9
        assert len(d["frames"]) == n
    json.dumps(t)  # serialisable


def test_calcium_moves_with_cardiac_phase(still):
    a, t = still, still.truth
    phase = np.asarray(t["phase"])
    contraction = np.asarray(t["contraction"])
    dep = max(t["calcifications"], key=lambda d: sum(f["visible"] for f in d["frames"]))
    # Footprint of this deposit only: the truth mask near its projected centre.
    cents = []
    for k, f in enumerate(dep["frames"]):
        r, c = int(round(f["center_row"])), int(round(f["center_col"]))
        sub = np.zeros_like(a.calcium[k])
        sub[max(0, r - 6):r + 7, max(0, c - 6):c + 7] = a.calcium[k, max(0, r - 6):r + 7, max(0, c - 6):c + 7]
        cents.append(_centroids(sub[None])[0])
    cents = np.array(cents)
    ok = ~np.isnan(cents[:, 0])
    assert ok.sum() > 60
    ed = np.argmin(np.where(ok, contraction, np.inf))  # most relaxed frame
    disp = np.hypot(*(cents - cents[ed]).T)
    assert np.nanmax(disp) > 1.0, "the deposit must move with the heart"
    r = np.corrcoef(disp[ok], contraction[ok])[0, 1]
    assert r > 0.9, f"displacement should follow the contraction curve (r={r:.2f})"
    # Frames at (nearly) the same phase one beat apart are at the same place.
    same = []
    for i in np.nonzero(ok)[0]:
        for j in np.nonzero(ok)[0]:
            dphi = abs((phase[i] - phase[j] + 0.5) % 1 - 0.5)
            if j > i + 5 and dphi < 0.015:
                same.append(np.hypot(*(cents[i] - cents[j])))
    assert same, "no pair of frames one period apart"
    assert np.median(same) < 0.35 * np.nanmax(disp)


def test_contrast_onset_matches_truth(small):
    a, t = small, small.truth
    onset = t["onset_frame"]
    conc = np.asarray(t["contrast_at_ostium"])
    assert np.all(conc[:onset] == 0) and conc[onset] > 0
    # Local vessel contrast on the main vessels' centrelines, frame by frame: pixel value minus the
    # local mean around it (independent of the renderer's line integrals).
    from scipy import ndimage as ndi

    big = a.centerline_radius_mm >= 1.2
    vals = []
    for k in range(a.frames.shape[0]):
        f = a.frames[k].astype(float)
        local = ndi.uniform_filter(f, 11)
        rc = np.rint(a.centerlines[k][big]).astype(int)
        inside = (rc[:, 0] >= 0) & (rc[:, 0] < 160) & (rc[:, 1] >= 0) & (rc[:, 1] < 160)
        vals.append((f - local)[rc[inside, 0], rc[inside, 1]].mean())
    vals = np.array(vals)
    before = vals[:onset]
    full = onset + int(np.ceil(t["wash_in_s"] * t["fps"])) + 1
    assert full < len(vals)
    after = vals[full:]
    assert np.abs(before).max() < 3.0, "vessels nearly invisible before the onset"
    assert after.mean() < -10.0, "vessels must darken with contrast (MONOCHROME2)"
    assert vals[onset:full].mean() > after.mean(), "wash-in: contrast builds up"


@pytest.mark.parametrize("fps", [7.5, 15.0, 30.0])
def test_image_period_matches_heart_rate(fps):
    p = replace(SMALL, n_frames=120, fps=fps, onset_fraction_range=(0.9, 0.95), early_onset_prob=0.0,
                heart_rate_bpm_range=(60, 100))
    a = generate_acquisition(p, seed=7, patient=2, acquisition=1)
    t = a.truth
    n_nc = t["onset_frame"]
    f = a.frames[:n_nc].astype(np.float32)
    sig = np.sqrt(((f - f[0]) ** 2).mean(axis=(1, 2)))  # distance to the first frame (paper eq. 1 shape)
    # Remove the slow respiratory/exposure trend (moving average over ~2.5 s).
    w = int(2.5 * t["fps"]) | 1
    trend = np.convolve(np.pad(sig, w // 2, mode="edge"), np.ones(w) / w, mode="valid")
    x = sig - trend
    x -= x.mean()
    ac = np.correlate(x, x, mode="full")[len(x) - 1:]
    ac /= ac[0]
    expected = 60.0 / t["heart_rate_bpm"] * t["fps"]
    lo, hi = int(0.6 * expected), int(1.5 * expected) + 1
    lag = lo + int(np.argmax(ac[lo:hi]))
    # Parabolic refinement of the peak.
    y0, y1, y2 = ac[lag - 1], ac[lag], ac[lag + 1]
    lag_f = lag + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    rr_frames = np.mean(60.0 / np.asarray(t["heart_rate_per_beat_bpm"])) * t["fps"]
    assert abs(lag_f - rr_frames) / rr_frames < 0.1, (lag_f, rr_frames)


def test_annotators_and_majority(small):
    a = small
    onset = a.truth["onset_frame"]
    stack = np.stack(a.annotators).astype(int)
    independent = stack.sum(axis=0) >= 2
    assert np.array_equal(independent, a.majority)
    for m in a.annotators:
        assert not m[onset:].any(), "annotators draw on non-contrast frames only"
    assert a.majority[:onset].any()
    # Realistic disagreement: the annotators differ from each other and from the truth.
    assert not np.array_equal(a.annotators[0], a.annotators[1])
    truth = a.calcium[:onset]
    maj = a.majority[:onset]
    iou = (truth & maj).sum() / (truth | maj).sum()
    assert 0.3 < iou < 0.98


def test_deposit_is_subtle_but_visible():
    """Calcium is a few % of attenuation above the local background in non-contrast frames, and
    that darkening comes from the calcium (the same case rendered without it shows none)."""
    from scipy import ndimage as ndi

    p = replace(SMALL, rows=512, cols=512, n_frames=10, onset_fraction_range=(0.8, 0.8), early_onset_prob=0.0,
                calcium_size_mm_range=(2.0, 3.0), calcium_small_prob=0.0)
    a = generate_acquisition(p, seed=21, patient=0, acquisition=0, calcium_free=False)
    b = generate_acquisition(replace(p, calcium_mu_per_mm=0.0), seed=21, patient=0, acquisition=0,
                             calcium_free=False)
    assert a.frames.shape == (10, 512, 512)
    assert np.array_equal(a.calcium, b.calcium)

    def drops(frames):
        out = []
        for k in range(a.truth["onset_frame"]):
            labels, n = ndi.label(a.calcium[k])
            f = frames[k].astype(float)
            for i in range(1, n + 1):
                blob = labels == i
                ring = ndi.binary_dilation(blob, iterations=6) & ~ndi.binary_dilation(blob, iterations=3)
                ring &= ~a.calcium[k]
                out.append(f[ring].mean() - f[blob].mean())
        return np.array(out)

    with_ca, without = drops(a.frames), drops(b.frames)
    assert len(with_ca) >= 5
    assert 2.0 < np.median(with_ca) < 25.0, f"deposit contrast {np.median(with_ca):.1f} grey levels"
    assert abs(np.median(without)) < 2.5
    assert np.median(with_ca - without) > 2.0


def test_annotators_draw_only_what_can_be_seen():
    """With annotator_min_snr, deposits hidden by noise are not labelled, visible ones are; the
    rendered frames and the calcium truth are the same as without it."""
    from CACTrainerLib.phantom_annotators import detectability

    p = replace(SMALL, rows=256, cols=256, n_frames=16, onset_fraction_range=(0.8, 0.8), early_onset_prob=0.0,
                calcium_count_range=(4, 6))
    # Faint (0.01 /mm at a low dose) and heavy (0.5 /mm at a high dose) calcium on the same anatomy.
    faint = replace(p, calcium_mu_per_mm=0.01, photons=300.0, faint_attenuation=0.0)
    heavy = replace(p, calcium_mu_per_mm=0.5, photons=5000.0, faint_attenuation=0.0)
    for q, expect_labelled in ((faint, False), (heavy, True)):
        off = generate_acquisition(q, seed=8, patient=2, calcium_free=False)
        on = generate_acquisition(replace(q, annotator_min_snr=5.0), seed=8, patient=2, calcium_free=False)
        assert np.array_equal(off.frames, on.frames) and np.array_equal(off.calcium, on.calcium)
        onset = on.truth["onset_frame"]
        assert off.majority[:onset].any(), "without the rule every deposit is drawn"
        d = [c["detectability"] for c in on.truth["calcifications"]]
        assert len(d) >= 4
        if expect_labelled:
            assert np.median(d) > 8.0, d
            assert on.majority[:onset].any()
        else:
            assert max(d) < 4.0, d
            assert not on.majority.any()
        ids = [c["id"] for c in on.truth["calcifications"]]
        for note in on.truth["annotators"]:
            assert 4.0 <= note["min_snr"] <= 6.25
            for i, di in zip(ids, d):  # drawn exactly when seen: below 4 never, above 6.25 always
                if di < 4.0:
                    assert i in note["missed"]
                elif di > 6.25:
                    assert i not in note["missed"]
    # The measure itself against a hand-made case: a 3x3 blob 2 sigma darker -> 2 * sqrt(9) = 6.
    rng = np.random.default_rng(1)
    img = 500.0 + rng.normal(0, 1.0, (60, 60)) + np.linspace(0, 30, 60)[None, :]  # a gradient is no signal
    m = np.zeros((60, 60), bool)
    m[29:32, 29:32] = True
    assert detectability(img - 2.0 * m, m) == pytest.approx(6.0, rel=0.25)
    assert detectability(img, m) < 2.5


def test_same_patient_shares_anatomy_between_views():
    a = generate_acquisition(SMALL, seed=5, patient=3, acquisition=0, calcium_free=False)
    b = generate_acquisition(SMALL, seed=5, patient=3, acquisition=1, calcium_free=False)
    da = [(d["id"], d["vessel"], d["length_mm"], d["width_mm"]) for d in a.truth["calcifications"]]
    db = [(d["id"], d["vessel"], d["length_mm"], d["width_mm"]) for d in b.truth["calcifications"]]
    assert da == db and a.truth["side"] == b.truth["side"]
    assert not np.array_equal(a.frames, b.frames)


def test_determinism_per_seed():
    p = replace(SMALL, rows=96, cols=96, n_frames=16)
    a = generate_acquisition(p, seed=42, patient=0, acquisition=0)
    b = generate_acquisition(p, seed=42, patient=0, acquisition=0)
    c = generate_acquisition(p, seed=43, patient=0, acquisition=0)
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.calcium, b.calcium) and np.array_equal(a.majority, b.majority)
    assert all(np.array_equal(x, y) for x, y in zip(a.annotators, b.annotators))
    assert a.truth == b.truth
    assert not np.array_equal(a.frames, c.frames)


def test_bits_12():
    p = replace(SMALL, rows=64, cols=64, n_frames=10, bits=12)
    a = generate_acquisition(p, seed=1)
    assert a.frames.dtype == np.uint16 and a.frames.max() <= 4095 and a.frames.max() > 1000


@pytest.mark.parametrize("compression", ["none", "rle"])
def test_dicom_reads_back(tmp_path, small, compression):
    pydicom = pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "cine.dcm", small, compression=compression)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1" and ds.Modality == "XA"
    assert np.array_equal(ds.pixel_array, small.frames)
    assert float(ds.FrameTime) == pytest.approx(1000.0 / SMALL.fps, rel=1e-5)
    assert int(ds.CineRate) == 15 and int(ds.NumberOfFrames) == SMALL.n_frames
    iso = float(ds.ImagerPixelSpacing[0]) / float(ds.EstimatedRadiographicMagnificationFactor)
    assert iso == pytest.approx(small.spacing_mm[0], rel=1e-9)
    assert float(ds.DistanceSourceToDetector) / float(ds.DistanceSourceToPatient) == pytest.approx(
        float(ds.EstimatedRadiographicMagnificationFactor), rel=1e-4)
    assert float(ds.PositionerPrimaryAngle) == pytest.approx(small.truth["view"]["primary_deg"])
    assert int(ds.BitsStored) == 8
    assert "RWavePointer" not in ds
    from CACIdentifierLib import cine_io
    cine = cine_io.load_cine(path)
    assert np.array_equal(cine.frames, small.frames)
    assert cine.spacing_mm[0] == pytest.approx(small.spacing_mm[0], rel=1e-6)
    assert cine.frame_time_ms == pytest.approx(1000.0 / 15, rel=1e-5)
    mem = small.to_cine()
    assert mem.spacing_mm[0] == pytest.approx(cine.spacing_mm[0], rel=1e-6) and mem.bits_stored == cine.bits_stored


def test_dicom_uids_deterministic(tmp_path, small):
    pydicom = pytest.importorskip("pydicom")
    a = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", small))
    b = pydicom.dcmread(write_dicom(tmp_path / "b.dcm", small))
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        assert a[tag].value == b[tag].value
    assert a.SOPInstanceUID != a.SeriesInstanceUID


def test_seg_nrrd_read_back(tmp_path, small):
    from CACIdentifierLib import nrrd_io
    files = write_acquisition(tmp_path, small)
    seg = nrrd_io.read_seg_nrrd(tmp_path / files["majority"], expected_shape=small.frames.shape)
    assert np.array_equal(seg.segments["calcium"], small.majority)
    assert seg.spacing_mm[0] == pytest.approx(small.spacing_mm[0], rel=1e-6)
    for name, mask in zip(files["annotators"], small.annotators):
        assert np.array_equal(nrrd_io.read_seg_nrrd(tmp_path / name).segments["calcium"], mask)
    assert np.array_equal(nrrd_io.read_seg_nrrd(tmp_path / files["truth_seg"]).segments["calcium"], small.calcium)
    truth = json.loads((tmp_path / files["truth"]).read_text())
    assert truth["onset_frame"] == small.truth["onset_frame"]


def test_dataset_manifest_and_calcium_free(tmp_path):
    import CACIdentifierLib.mrml  # noqa: F401
    p = replace(SMALL, rows=64, cols=64, n_frames=12, calcium_free_fraction=0.34)
    out = write_dataset(tmp_path / "ds", p, patients=3, acquisitions_per_patient=2, seed=9)
    entries = load_manifest(out)
    assert len(entries) == 6
    assert {e["patient"] for e in entries} == {"P001", "P002", "P003"}
    free = [e for e in entries if e["calcium_free"]]
    assert len(free) == 2 and all(e["n_calcifications"] == 0 for e in free)
    assert any(e["n_calcifications"] > 0 for e in entries)
    for e in entries:
        for key in ("cine", "majority", "truth", "truth_seg", *e["annotators"]):
            path = e[key] if key in e else key
            assert path.startswith(str(tmp_path)) and (tmp_path / path).exists()
        assert len(e["annotators"]) == 3
    # Two acquisitions of a patient: different projections.
    p1 = [e for e in entries if e["patient"] == "P001"]
    assert p1[0]["projection"] != p1[1]["projection"] or p1[0]["cine"] != p1[1]["cine"]
    assert not list(tmp_path.glob(".ds.tmp-*")), "no temporary folder left behind"


def test_cli_refuses_overwrite(tmp_path, capsys):
    import CACIdentifierLib.mrml  # noqa: F401
    from cac.cli import main

    out = tmp_path / "ds"
    args = ["phantom", str(out), "--patients", "1", "--frames", "10", "--size", "64", "--seed", "2"]
    assert main(args) == 0
    manifest = (out / "manifest.json").read_text()
    capsys.readouterr()
    assert main(args + ["--seed", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == manifest
    assert main(args + ["--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3


def test_cli_bad_input(tmp_path, capsys):
    from cac.cli import main

    assert main(["phantom", str(tmp_path / "x"), "--heart-rate", "120", "50"]) == 2
    assert "reversed" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path / "x"), "--frames", "3"]) == 2
    assert not (tmp_path / "x").exists()


def test_imaging_primitives_against_references():
    from CACTrainerLib import phantom_imaging as img
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    coarse = rng.random((32, 40)).astype(np.float32)
    up = img.upsample(coarse, img.linear_upsampler(32, 128), img.linear_upsampler(40, 160))
    ref = ndi.zoom(coarse, 4, order=1, grid_mode=True, mode="nearest")
    assert np.allclose(up, ref, atol=1e-5)
    # Sphere splats keep their mass (2/3 pi r^2 per unit weight), also below one pixel.
    rows = np.array([10.3, 30.7, 50.5])
    cols = np.array([12.2, 40.9, 20.5])
    rad = np.array([0.4, 2.5, 6.0])
    out = img.splat_spheres((64, 64), rows, cols, rad, np.ones(3))
    assert out.sum() == pytest.approx((2 / 3 * np.pi * np.maximum(rad, 0.35) ** 2).sum(), rel=1e-4)
    # Quadric chord along the central ray of a sphere = its diameter; 0 beside it.
    R = 20.0
    A = np.eye(3) / R**2
    rays = np.zeros((3, 1, 2), np.float32)
    rays[:, 0, 0] = [0, 0, 1]
    rays[:, 0, 1] = np.array([1, 0, 1]) / np.sqrt(2)
    chords = img.quadric_chords(rays, np.array([0.0, 0.0, -500.0]), [(A, np.zeros(3), 1.0)])
    assert chords[0, 0] == pytest.approx(2 * R, rel=1e-4) and chords[0, 1] == 0.0


def test_calcium_free_allocation():
    from CACTrainerLib.phantom_writer import calcium_free_patients

    assert calcium_free_patients(1, 0.25, 0) == set()
    assert calcium_free_patients(1, 1.0, 0) == {0}
    assert len(calcium_free_patients(2, 0.1, 0)) == 1
    assert len(calcium_free_patients(14, 0.25, 5)) == 4
    assert len(calcium_free_patients(3, 0.99, 5)) == 2
    assert calcium_free_patients(5, 0.0, 5) == set()
    assert calcium_free_patients(14, 0.25, 5) == calcium_free_patients(14, 0.25, 5)


def test_ecg_option_writes_r_wave_pointer(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    p = replace(SMALL, rows=64, cols=64, n_frames=40, ecg=True)
    a = generate_acquisition(p, seed=4)
    ds = pydicom.dcmread(write_dicom(tmp_path / "ecg.dcm", a))
    expected = [int(round(f)) + 1 for f in a.truth["r_wave_frames"]]
    assert list(ds.RWavePointer) == expected and len(expected) >= 2
    # The phase is 0 at each R wave: frames just after an R wave have a small phase.
    phase = np.asarray(a.truth["phase"])
    for f in a.truth["r_wave_frames"]:
        k = int(np.ceil(f))
        if k < len(phase):
            assert phase[k] < 0.25


def test_cli_json_output(tmp_path, capsys):
    import CACIdentifierLib.mrml  # noqa: F401
    from cac.cli import main

    out = tmp_path / "ds"
    assert main(["phantom", str(out), "--patients", "2", "--acquisitions-per-patient", "1", "--frames", "10",
                 "--size", "64", "--fps", "7.5", "--bits", "10", "--side", "right", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert all(e["side"] == "right" for e in entries)
    assert [e["id"] for e in entries] == ["P001_A01", "P002_A01"]
    assert entries[0]["frame_time_ms"] == pytest.approx(1000 / 7.5)
    assert sum(e["calcium_free"] for e in entries) == 1
    from CACIdentifierLib import cine_io
    cine = cine_io.load_cine(entries[0]["cine"])
    assert cine.bits_stored == 10 and cine.frames.dtype == np.uint16 and 300 < cine.frames.max() <= 1023


def test_cancel_leaves_nothing(tmp_path):
    from CACIdentifierLib.progress import Cancelled

    seen = []

    def progress(done, total, message):
        seen.append((done, total))
        if done >= 15:
            raise Cancelled()

    p = replace(SMALL, rows=64, cols=64, n_frames=10)
    with pytest.raises(Cancelled):
        write_dataset(tmp_path / "ds", p, patients=2, seed=1, progress=progress)
    assert seen[-1] == (15, 20)
    assert list(tmp_path.iterdir()) == []


def test_cli_annotator_min_snr(tmp_path, capsys):
    from cac.cli import main

    out = tmp_path / "ds"
    assert main(["phantom", str(out), "--frames", "12", "--size", "96", "--seed", "3", "--calcium-count", "3", "3",
                 "--calcium-free-fraction", "0", "--annotator-min-snr", "6"]) == 0
    truth = json.loads(next(out.glob("P001/A01/truth.json")).read_text())
    assert all(4.8 <= n["min_snr"] <= 7.5 for n in truth["annotators"])
    assert all("detectability" in c for c in truth["calcifications"])
    assert main(["phantom", str(tmp_path / "x"), "--annotator-min-snr", "-1"]) == 2
    assert "--annotator-min-snr" in capsys.readouterr().err


def test_phantom_pool_says_once_how_many_cines_were_paired_by_similarity():
    import warnings

    from CACIdentifierLib.errors import CacWarning
    from CACTrainerLib.phantom_pool import phantom_pool

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fs = phantom_pool(4, seed=3, n_frames=16, frames_per_acquisition=2, size=128, workers=1)
    ours = [w for w in caught if issubclass(w.category, CacWarning)]
    assert len(fs) > 0 and len(ours) <= 1
    # 16 frames hold about one beat on each side of the onset: some cines have no clear periodicity.
    assert ours and str(ours[0].message).startswith("phantom pool: ") and " of 4 cines " in str(ours[0].message)


@pytest.mark.parametrize("argv, option", [
    (["--size", "100000"], "--size"),
    (["--frames", "100000000", "--size", "64"], "--frames"),
    (["--frames", "5000", "--size", "1024"], "--frames 5000 at --size"),  # each fine, together 40 GiB
    (["--respiration-mm", "0", "1e9", "--frames", "20", "--size", "64"], "--respiration-mm"),
    (["--contrast", "nan", "--frames", "20", "--size", "64"], "--contrast"),
    (["--calcium-contrast", "nan", "--frames", "20", "--size", "64"], "--calcium-contrast"),
    (["--photons", "inf", "--frames", "20", "--size", "64"], "--photons"),
    (["--fps", "nan"], "--fps"),
    (["--heart-rate", "nan", "80"], "--heart-rate"),
    (["--onset-range", "0.2", "inf"], "--onset-range"),
    (["--calcium-free-fraction", "nan"], "--calcium-free-fraction"),
    (["--early-onset-prob", "nan"], "--early-onset-prob"),
    (["--table-pan-prob", "inf"], "--table-pan-prob"),
    (["--annotator-min-snr", "nan"], "--annotator-min-snr"),
    (["--display-processing", "1.5"], "--display-processing"),
    (["--display-processing", "nan", "--randomize"], "--display-processing"),
    (["--patients", "100000000", "--frames", "20", "--size", "64"], "--patients"),
    (["--acquisitions-per-patient", "100"], "--acquisitions-per-patient"),
    (["--seed", "-1", "--randomize"], "--seed"),
])
def test_cli_refuses_numbers_out_of_range(tmp_path, capsys, argv, option):
    """Huge, NaN and infinite values were accepted: crashes (275 GiB arrays) or NaN cast into the frames."""
    from cac.cli import main

    out = tmp_path / "p2"
    capsys.readouterr()
    assert main(["phantom", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cac: error: {option}") and err.count("\n") == 1, err
    assert "Traceback" not in err and not out.exists()


def test_every_parameter_is_checked_finite_and_in_range():
    from CACIdentifierLib.errors import CacError
    from CACTrainerLib.phantom import PARAM_LIMITS
    from CACTrainerLib.phantom_domain import randomized_params

    PhantomParams().validate()
    for i in range(50):  # the domain randomisation draws within the limits
        randomized_params(np.random.default_rng(i)).validate()
    ranges = {f for f, v in PhantomParams().to_dict().items() if isinstance(v, list)}
    numeric = {f for f, v in PhantomParams().to_dict().items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)} - {"bits"}
    assert set(PARAM_LIMITS) == (ranges | numeric) - {"calcium_shape_probs"}  # no number left unchecked
    for name, (label, lo, hi, _unit) in PARAM_LIMITS.items():
        for bad in (math.nan, math.inf, hi * 2 + 1, lo - 1):
            value = (lo, bad) if name in ranges else bad
            with pytest.raises(CacError, match=f"^{label} must be"):
                replace(PhantomParams(), **{name: value}).validate()
    for kw in ({"calcium_shape_probs": (math.nan, 1, 0)}, {"catheter": "yes"}, {"rr_jitter": 0.5},
               {"sod_mm_range": (900.0, 1000.0)}, {"bits": 9}):
        with pytest.raises(CacError):
            replace(PhantomParams(), **kw).validate()


def test_cli_montage_must_be_a_png_outside_the_dataset(tmp_path, capsys):
    from cac.cli import main

    args = ["phantom", str(tmp_path / "pm"), "--patients", "1", "--frames", "10", "--size", "64"]
    capsys.readouterr()
    assert main(args + ["--montage", str(tmp_path / "m.txt")]) == 2
    err = capsys.readouterr().err
    assert "--montage writes a PNG; give a name ending in .png" in err and err.count("\n") == 1
    assert not (tmp_path / "m.txt").exists() and not (tmp_path / "pm").exists()
    assert main(args) == 0
    manifest = (tmp_path / "pm" / "manifest.json").read_bytes()
    for inside in (tmp_path / "pm" / "m.png", tmp_path / "pm" / "P001" / ".." / "m.png"):
        capsys.readouterr()
        assert main(args + ["--montage", str(inside), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "lies inside OUT_DIR" in err and err.count("\n") == 1
    assert (tmp_path / "pm" / "manifest.json").read_bytes() == manifest  # the dataset is untouched
    assert main(args + ["--montage", str(tmp_path / "m.png"), "--overwrite"]) == 0
    assert (tmp_path / "m.png").read_bytes().startswith(b"\x89PNG")


def test_display_processing_changes_the_pixels_only():
    """XA display processing (harmonization, edge enhancement) is applied to the stored frames after the
    display curve; anatomy, motion, noise, calcium and metal stay those of the unprocessed run, and so do the
    annotators here (annotator_min_snr 0: they do not judge visibility on the pixels)."""
    from CACTrainerLib.phantom_imaging import xa_unsharp

    kw = dict(rows=128, cols=128, n_frames=10, calcium_free_fraction=0.0, metal_prob=1.0)
    plain = generate_acquisition(PhantomParams(**kw), seed=5, patient=2)
    done = generate_acquisition(PhantomParams(**kw, display_processing_prob=1.0), seed=5, patient=2)
    dp = done.truth["display_processing"]
    assert plain.truth["display_processing"] is None
    assert plain.truth["metal"] == done.truth["metal"]  # drawn after the metal, which stays
    # kernels scale with the frame: 128 px is a quarter of the 512-px ranges
    assert 2.0 <= dp["harmonization_px"] <= 12.0 and 0.175 <= dp["edge_px"] <= 0.75
    for a, b in ((plain.calcium, done.calcium), (plain.majority, done.majority), (plain.metal, done.metal)):
        assert np.array_equal(a, b)
    params = (dp["harmonization_px"], dp["harmonization_gain"], dp["edge_px"], dp["edge_gain"])
    for k in (0, 9):  # the processed frame is the plain one through the filter, rounded and clipped
        want = np.clip(np.rint(xa_unsharp(plain.frames[k].astype(np.float32), params)), 0, 255)
        assert np.array_equal(done.frames[k], want.astype(np.uint8))
    assert not np.array_equal(plain.frames, done.frames)
    # never drawn by default, and per acquisition with its probability
    seen = [generate_acquisition(PhantomParams(rows=64, cols=64, n_frames=8, display_processing_prob=0.5),
                                 seed=1, patient=i).truth["display_processing"] is not None for i in range(12)]
    assert 0 < sum(seen) < 12


def test_cli_randomize_processes_half_the_runs_unless_told(tmp_path):
    """--randomize spans processed runs (0.5), --display-processing P sets it, 0 turns it off."""
    from cac.cli import build_parser
    from cac.cli_phantom import params_from_args

    def prob(*argv):
        return params_from_args(build_parser().parse_args(["phantom", str(tmp_path), *argv])).display_processing_prob

    assert prob() == 0.0 and prob("--randomize") == 0.5
    assert prob("--randomize", "--display-processing", "0") == 0.0 and prob("--display-processing", "1") == 1.0


def test_phantom_pool_with_display_processing_keeps_its_patients():
    """A processed test pool holds the same patients and non-contrast frames as the plain one (pool_params draws the
    processing from its own stream); the pixels differ, and training pools stay unprocessed.  (Its labels may
    differ: the simulated annotators judge a deposit's visibility on the frames they see, processed here.)"""
    from CACTrainerLib.phantom_pool import phantom_pool, pool_params

    kw = dict(seed=5, n_frames=32, frames_per_acquisition=2, size=128, workers=1, background=False)
    plain = phantom_pool(2, **kw)
    done = phantom_pool(2, display_processing_prob=1.0, **kw)
    assert plain.patient == done.patient and plain.acquisition == done.acquisition
    # the same non-contrast frames (the contrast frame paired with each may differ: synchronization reads the
    # processed pixels)
    assert np.array_equal(plain.frame_index, done.frame_index)
    assert not np.array_equal(np.asarray(plain.nc), np.asarray(done.nc))
    assert pool_params(5, 0).display_processing_prob == 0.0
