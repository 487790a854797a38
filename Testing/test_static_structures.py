"""ROIs on structures that do not move with the heart (static_structures.py), and identify's use of them.

Synthetic runs with known static and moving spots; calcium truth of the project's phantom and of the
independently written second generator as ROIs (true calcium moves, so none may be removed); the real
right coronary run, whose two detector marks the shipped model flags in every frame; the GE static
phantom; ``cac identify --keep-static``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from CACIdentifierLib.cine import Cine
from CACIdentifierLib.static_structures import (
    MAX_FRAMES,
    blob_response,
    covers_a_beat,
    filter_cine,
    remove_static,
    static_scores,
)
from conftest import GE, RCA, needs_data
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "Resources" / "Models" / "cac_default.safetensors"


def run_with_spots(n=30, period=10, seed=0, size=96):
    """Noise, a static spot at (20, 20) and a deposit moving 24 px along row 70 over each beat."""
    rng = np.random.default_rng(seed)
    frames = 0.5 + 0.01 * rng.standard_normal((n, size, size))
    frames[:, 19:22, 19:22] -= 0.2
    cols = [30 + int(round(12 * np.sin(2 * np.pi * k / period))) for k in range(n)]
    for k, c in enumerate(cols):
        frames[k, 69:72, c - 1:c + 2] -= 0.2
    return frames.astype(np.float32), cols


def test_static_spot_removed_moving_deposit_and_spotless_roi_kept():
    frames, cols = run_with_spots()
    roi = np.zeros(frames.shape, bool)
    for f in (0, 3):
        roi[f, 14:27, 14:27] = True                          # on the static spot
        roi[f, 64:77, cols[f] - 6:cols[f] + 7] = True        # on the deposit where it is in that frame
        roi[f, 80:92, 70:90] = True                          # on nothing but noise
    kept, removed = remove_static(roi, [0, 3], frames)
    assert removed == {0: 1, 3: 1}
    for f in (0, 3):
        assert not kept[f, 14:27, 14:27].any()
        assert kept[f, 70, cols[f]] and kept[f, 85, 80]
    _, scores = static_scores(roi[0], 0, frames)
    by_place = {tuple(int(v) for v in ndi.center_of_mass(roi[0] & (ndi.label(roi[0])[0] == c))): s
                for c, s in scores.items()}
    static, deposit, noise = by_place[(20, 20)], by_place[(70, cols[0])], by_place[(85, 79)]
    assert static["share"] > 0.8 and static["moving"] == 0
    assert deposit["share"] < 0.2 and deposit["moving"] == deposit["spots"] == 1
    assert noise is None


def test_roi_holding_a_static_and_a_moving_spot_stays():
    frames, cols = run_with_spots()
    roi = np.zeros(frames.shape, bool)
    roi[0, 14:80, 14:60] = True  # one component over both
    kept, removed = remove_static(roi, [0], frames)
    assert removed == {} and np.array_equal(kept, roi)


def test_static_spot_hidden_by_a_passing_vessel_in_a_few_frames_is_still_static():
    frames, _ = run_with_spots(n=40)
    frames[5:7, 15:26, :] -= 0.3  # a contrast-filled vessel over the spot in 2 of 40 frames
    roi = np.zeros(frames.shape, bool)
    roi[0, 14:27, 14:27] = True
    _, removed = remove_static(roi, [0], frames)
    assert removed == {0: 1}
    # A spot gone from over a third of the frames is not static.
    frames[5:20, 19:22, 19:22] += 0.2
    _, removed = remove_static(roi, [0], frames)
    assert removed == {}


def test_short_runs_are_not_judged_and_blank_frames_are_left_out():
    frames, _ = run_with_spots(n=30)
    roi = np.zeros(frames.shape, bool)
    roi[0, 14:27, 14:27] = True
    cine = Cine(frames=frames[:8], frame_time_ms=66.7)
    out, removed, note = filter_cine(roi[:8], [0], cine)
    assert removed == {} and "shorter than a heartbeat" in note and np.array_equal(out, roi[:8])
    # One frame a beat (ECG-triggered): calcium would sit on the same pixels in every frame; not judged.
    assert filter_cine(roi, [0], Cine(frames=frames, frame_time_ms=800.0))[1:] == ({}, note)
    # Nor is a run whose frame time is unknown and in which no cardiac period was found.
    assert filter_cine(roi, [0], Cine(frames=frames))[1:] == ({}, note)
    # Blank (white) frames hide the static spot; the sync's blank frames are left out of the percentile.
    blank = frames.copy()
    blank[10:16] = 1.0
    cine = Cine(frames=blank, frame_time_ms=66.7)
    assert filter_cine(roi, [0], cine)[1] == {}
    sync = SimpleNamespace(blank_frames=list(range(10, 16)), periodic=True, period_frames=10.0)
    assert filter_cine(roi, [0], cine, sync)[1] == {0: 1}
    # A periodic run shorter than its period is not judged.
    sync = SimpleNamespace(blank_frames=[], periodic=True, period_frames=40.0)
    assert filter_cine(roi, [0], Cine(frames=frames, frame_time_ms=66.7), sync)[2] is not None
    # A period found in the images needs no frame time.
    sync = SimpleNamespace(blank_frames=[], periodic=True, period_frames=10.0)
    assert filter_cine(roi, [0], Cine(frames=frames), sync)[1] == {0: 1}
    assert not covers_a_beat(MAX_FRAMES)
    # With a synchronization, a run in which it found no heartbeat is not judged, whatever its frame time
    # (a static phantom, a generator without motion): nothing shows that calcium would have moved.
    timed = Cine(frames=frames, frame_time_ms=66.7)
    assert filter_cine(roi, [0], timed)[1] == {0: 1}
    sync = SimpleNamespace(blank_frames=[], periodic=False, period_frames=None)
    out, removed, note = filter_cine(roi, [0], timed, sync)
    assert removed == {} and "no heartbeat" in note
    # Nor one whose heartbeat spans a single frame (ECG-triggered, an R wave on every frame).
    sync = SimpleNamespace(blank_frames=[], periodic=True, period_frames=1.0)
    assert filter_cine(roi, [0], timed, sync)[1:] == ({}, note)


def test_blob_response_is_a_difference_of_gaussians_as_scipy_gives_it():
    rng = np.random.default_rng(3)
    frame = rng.random((40, 50)).astype(np.float32)
    expected = ndi.gaussian_filter(frame, 4.0) - ndi.gaussian_filter(frame, 1.0)
    np.testing.assert_allclose(blob_response(frame), expected, atol=1e-6)
    stack = blob_response(np.stack([frame, frame[::-1]]))
    np.testing.assert_allclose(stack[1], blob_response(frame[::-1]), atol=1e-6)


def truth_rois(calcium: np.ndarray, frames_analysed) -> np.ndarray:
    """The calcium truth of the analysed frames, dilated as an ROI would be."""
    roi = np.zeros(calcium.shape, bool)
    for f in frames_analysed:
        roi[f] = ndi.binary_dilation(calcium[f], iterations=6)
    return roi


def test_true_calcium_of_the_project_phantom_is_never_static():
    from CACTrainerLib.phantom import generate_acquisition
    from CACTrainerLib.phantom_domain import randomized_params

    judged = 0
    for patient in range(3):
        rng = np.random.default_rng([3000, patient, 0xD0])
        params = randomized_params(rng, n_frames=48, calcium_free_fraction=0.0)
        acq = generate_acquisition(params, seed=3000, patient=patient, acquisition=0)
        analysed = [f for f in range(acq.onset_frame) if acq.calcium[f].any()]
        roi = truth_rois(acq.calcium, analysed)
        out, removed, note = filter_cine(roi, analysed, acq.to_cine())
        assert note is None and removed == {}, (patient, removed)
        judged += len(analysed)
    assert judged >= 10


def test_true_calcium_of_the_second_generator_is_never_static():
    from benchmark_scripts import load

    make_cine = load("second_generator").make_cine

    judged = 0
    for seed in range(4):
        frames, masks, info = make_cine(seed, calcium=True, n_frames=40)
        analysed = [f for f in range(info["onset"]) if masks[f].any()]
        cine = Cine(frames=frames, frame_time_ms=info["frame_time_ms"])
        out, removed, note = filter_cine(truth_rois(masks, analysed), analysed, cine)
        assert note is None and removed == {}, (seed, removed)
        judged += len(analysed)
    assert judged >= 10


def plain_and_filtered(path):
    """A real run, and the shipped model's identification of it without and with the static filter."""
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import load_model

    cine = load_cine(path)
    model, meta = load_model(MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = identify(cine, model, meta, device="cpu", static_filter=False)
        filtered = identify(cine, model, meta, device="cpu", sync=plain.sync)
    return cine, plain, filtered


@pytest.fixture(scope="module")
def rca_runs():
    return plain_and_filtered(RCA)


@needs_data
def test_detector_marks_of_the_real_rca_run_lose_their_rois(rca_runs):
    cine, plain, filtered = rca_runs
    # The two marks, found independently of the filter: dark spots in the run's *brightest* frame
    # values (a moving deposit is bright there), each darker than its ring by far more than the noise.
    brightest = cine.frames.astype(np.float32).max(axis=0)
    marks = []
    for y, x in ((32, 324), (181, 470)):
        win = brightest[y - 12:y + 13, x - 12:x + 13]
        centre = float(win[10:15, 10:15].mean())
        ring = float(np.median(np.concatenate([win[:4].ravel(), win[-4:].ravel()])))
        assert ring - centre > 20, (y, x, ring, centre)  # 8-bit values
        marks.append((y, x))
    for f in plain.frames:
        for y, x in marks:
            assert plain.roi[f, y, x], f            # flagged without the filter
            assert not filtered.roi[f, y, x], f     # not with it
        # Whole components are removed or kept, nothing is added.
        labels, n = ndi.label(plain.roi[f])
        assert not (filtered.roi[f] & ~plain.roi[f]).any()
        for c in range(1, n + 1):
            kept = filtered.roi[f][labels == c]
            assert kept.all() or not kept.any()
    # Each removed ROI's centre is given for the overlay; the marks' ROIs are centred near the marks.
    assert sum(map(len, filtered.static_spots.values())) == filtered.parameters["static_rois_removed"]
    for f in plain.frames:
        spots = filtered.static_spots[f]
        for y, x in marks:
            assert min(np.hypot(sy - y, sx - x) for sy, sx in spots) < 15, (f, spots)
    p = filtered.parameters
    assert p["static_filter"] and p["static_note"] is None
    assert p["static_rois_removed"] >= 2 * len(plain.frames)
    assert p["static_frames"] == sorted(plain.frames)
    assert plain.parameters["static_rois_removed"] == 0
    assert np.median(filtered.roi_area_pct_field) < np.median(plain.roi_area_pct_field)
    assert plain.static_spots == {}


@needs_data
def test_overlay_marks_the_removed_rois(rca_runs, tmp_path):
    import matplotlib.image as mpimg
    from CACIdentifierLib.report import save_overlay_png

    cine, plain, filtered = rca_runs
    frames = filtered.frames[:1]
    save_overlay_png(tmp_path / "with.png", cine, filtered, frames=frames)
    save_overlay_png(tmp_path / "without.png", cine, plain, frames=frames)
    with_marks, without = mpimg.imread(tmp_path / "with.png"), mpimg.imread(tmp_path / "without.png")
    # The marker colour (#40c0ff) appears only where removed ROIs are drawn.
    def blue(img):
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        return int(((r < 0.4) & (g > 0.6) & (b > 0.9)).sum())
    assert blue(with_marks) > 20 and blue(without) == 0
    # report.json lists them by frame (JSON keys are strings); a run without any has no such entry.
    from CACIdentifierLib.report import build_report

    listed = json.loads(json.dumps(build_report(filtered, cine)))["static_spots"]
    assert sorted(map(int, listed)) == sorted(filtered.static_spots)
    assert listed[str(frames[0])] == [list(c) for c in filtered.static_spots[frames[0]]]
    assert "static_spots" not in build_report(plain, cine)


@needs_data
def test_the_slicer_scene_marks_the_removed_rois_on_the_marks(rca_runs, tmp_path):
    """CAC Identifier's outputs in the real slicer-core scene: a cross per removed ROI, on the detector marks."""
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    import vtk
    from CACIdentifierLib import logic, mrml, nrrd_io, slicercore
    from CACIdentifierLib.report import build_report, write_json

    cine, _, filtered = rca_runs
    write_json(tmp_path / "report.json", build_report(filtered, cine))
    nrrd_io.write_seg_nrrd(tmp_path / "roi.seg.nrrd", {"CAC ROI": filtered.roi}, cine.spacing_mm)
    scene = slicercore.new_scene()
    sequence, _ = mrml.cine_to_sequence(scene, cine, "rca")
    out = logic.load_identify_outputs(scene, sequence, tmp_path)
    points = out["static_spots_sequence"]
    total = 0
    for f in range(cine.n_frames):
        m = vtk.vtkMatrix4x4()
        sequence.GetNthDataNode(f).GetRASToIJKMatrix(m)
        ijk = [m.MultiplyPoint([*p, 1.0])[:2] for p in mrml.markups_points(points.GetNthDataNode(f))]
        total += len(ijk)
        if f not in filtered.static_spots:
            assert ijk == [], f
            continue
        for y, x in ((32, 324), (181, 470)):  # the marks of the test above, (row, column)
            assert min(np.hypot(r - y, c - x) for c, r in ijk) < 15, (f, ijk)
    assert total == filtered.parameters["static_rois_removed"] == len(mrml.markups_points(out["static_spots"]))


@needs_data
def test_static_phantom_is_not_judged():
    """The GE phantom does not move: synchronization finds no heartbeat, so no ROI of it is removed."""
    cine, plain, filtered = plain_and_filtered(GE)
    assert not plain.sync.periodic
    assert filtered.parameters["static_rois_removed"] == 0 and "no heartbeat" in filtered.parameters["static_note"]
    assert np.array_equal(filtered.roi, plain.roi)
    # Judged without a synchronization, by its frame time alone, its clear spots would go (what the sync rule spares).
    assert filter_cine(plain.roi, plain.frames, cine)[1]


@needs_data
def test_cli_keep_static_keeps_them_and_says_nothing(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "cac", "identify", str(RCA), "--out", str(out), "--keep-static"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "--keep-static keeps them" not in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["parameters"]["static_filter"] is False
    assert report["parameters"]["static_rois_removed"] == 0


def test_an_roi_larger_than_one_spot_s_is_not_judged():
    frames, _ = run_with_spots(size=160)
    roi = np.zeros(frames.shape, bool)
    roi[0, 5:60, 5:160] = True   # 8,525 px around the static spot and nothing that moves
    assert remove_static(roi, [0], frames)[1] == {}
    roi[0, :, 140:] = False      # 7,425 px: judged
    assert remove_static(roi, [0], frames)[1] == {0: 1}


def test_benchmark_counts_removed_components_and_those_on_truth():
    from benchmark_scripts import load

    removed_components = load("static_gain").removed_components
    before = np.zeros((2, 20, 20), bool)
    before[0, 1:4, 1:4] = before[0, 10:13, 10:13] = before[0, 15:18, 1:4] = True
    before[1, 5:8, 5:8] = True
    after = before.copy()
    after[0, 10:13, 10:13] = after[0, 15:18, 1:4] = False   # two of frame 0's three removed
    truth = np.zeros_like(before)
    truth[0, 12, 12] = True                                   # under one of them
    truth[1, 6, 6] = True                                     # under a kept one
    assert removed_components(before, after, [0, 1], truth) == (4, 2, 1)
    assert removed_components(before, after, [1], truth) == (1, 0, 0)
    assert removed_components(before, after, [0]) == (3, 2, 0)


@needs_data
def test_the_marks_are_found_on_a_run_of_twice_the_size(rca_runs):
    """The scales grow with the frame (scaled_sigmas): the RCA run upsampled to 1024 px loses the same ROIs."""
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import load_model

    cine, _, filtered = rca_runs
    big = Cine(frames=np.stack([ndi.zoom(f, 2, order=1) for f in cine.frames]), frame_time_ms=cine.frame_time_ms)
    model, meta = load_model(MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = identify(big, model, meta, device="cpu")
    assert result.parameters["static_frames"] == filtered.parameters["static_frames"]
    for f in result.frames:
        for y, x in ((32, 324), (181, 470)):
            assert min(np.hypot(sy - 2 * y, sx - 2 * x) for sy, sx in result.static_spots[f]) < 30, f


def test_degenerate_runs_judge_nothing_and_do_not_fail():
    """Flat, black, tiny and one-pixel-spike runs (the noise is then 0): nothing removed, no error."""
    rng = np.random.default_rng(0)
    runs = {"flat": np.full((20, 64, 64), 0.5), "black": np.zeros((20, 64, 64)), "tiny": rng.random((20, 8, 8)),
            "spikes": np.where(rng.random((20, 64, 64)) > 0.999, 0.0, 1.0),
            "uint16": rng.integers(0, 4096, (20, 64, 64)).astype(np.uint16)}
    for name, frames in runs.items():
        for roi in (np.ones(frames.shape, bool), np.pad(np.ones((20, 4, 4), bool), ((0, 0), (2, frames.shape[1] - 6),
                                                                                       (2, frames.shape[2] - 6)))):
            out, removed, note = filter_cine(roi, list(range(10)), Cine(frames=frames, frame_time_ms=66.7))
            assert removed == {} and note is None and np.array_equal(out, roi), name
