"""`cac identify`: where its outputs may go, how it reports, and options refused before any work.

Each test is one defect an audit found (a --dicom-seg folder that left outputs behind, a SEG in the
new --out folder refused, raw floats in the summary, --json silently dropped, a missing GPU noticed
after synchronization, an internal value in an error, worker times larger than the total).
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import numpy as np
import pytest
from cac.cli import main as cac
from CACIdentifierLib.errors import CacError


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small DICOM phantom cine and its annotators' files."""
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition
    from CACTrainerLib.phantom_writer import write_acquisition

    acq = generate_acquisition(PhantomParams(rows=128, cols=128, n_frames=24, fps=15.0), seed=3, patient=0,
                               calcium_free=False)
    folder = tmp_path_factory.mktemp("phantom")
    files = write_acquisition(folder, acq)
    return acq, folder / files["cine"], [folder / name for name in files["annotators"]]


def _argv(phantom, all_roi_model, out, *extra):
    return ["identify", str(phantom[1]), "--out", str(out), "--model", str(all_roi_model), "--onset", "10",
            "--device", "cpu", *extra]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("cac: warning:")]
    assert len(lines) == 1 and lines[0].startswith("cac: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_reading(monkeypatch):
    """Fail the test if the cine is read: the refusal must come before any work."""
    from CACIdentifierLib import cine_io

    def not_now(*a, **k):
        raise AssertionError("the cine was read before the options were checked")

    monkeypatch.setattr(cine_io, "load_cine", not_now)


# --------------------------------------------------------------------------- 1: --dicom-seg location

@pytest.mark.parametrize("where,phrase", [
    ("out", "is the --out folder; give a file name"),
    ("folder", "is a folder; give a file name"),
    ("out/report.json", "is the report.json that identify writes in --out"),
    ("out/sub/seg.dcm", "lies in a subfolder of --out that does not exist"),  # once "create it first", then refused
])
def test_dicom_seg_that_is_a_folder_or_an_output_is_refused_before_any_work(phantom, all_roi_model, tmp_path, capsys,
                                                                            no_reading, where, phrase):
    # --dicom-seg DIR (the --out folder) once failed after the work with "free some space" and left DIR filled.
    pytest.importorskip("highdicom")
    (tmp_path / "folder").mkdir()
    assert cac(_argv(phantom, all_roi_model, tmp_path / "out", "--dicom-seg", str(tmp_path / where))) == 2
    assert phrase in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_free_some_space_only_when_space_is_the_cause():
    from CACIdentifierLib.fileutil import write_error

    message = str(write_error(Path("q2"), IsADirectoryError(errno.EISDIR, "Is a directory")))
    assert "Is a directory" in message and "free some space" not in message and "another output location" in message
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert "free some space" in str(write_error(Path("q2"), OSError(code, "No space")))
    for code in (errno.EACCES, errno.EPERM):  # a refused permission asks for a folder one may write to
        message = str(write_error(Path("q2"), PermissionError(code, "Permission denied")))
        assert "(Permission denied); you may not write there" in message and "free some space" not in message


# --------------------------------------------------------------------------- 2: SEG inside a new --out folder

def test_dicom_seg_inside_the_new_out_folder_just_works(phantom, all_roi_model, tmp_path, capsys):
    pytest.importorskip("highdicom")
    from CACIdentifierLib.dicom_seg import read_dicom_seg
    from CACIdentifierLib.nrrd_io import read_seg_nrrd

    out = tmp_path / "y2"
    argv = _argv(phantom, all_roi_model, out, "--dicom-seg", str(out / "seg.dcm"))
    code = cac(argv)
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "report.json", "roi.seg.nrrd", "seg.dcm"]
    assert [p.name for p in tmp_path.iterdir()] == ["y2"]  # no temporaries left
    n = phantom[0].frames.shape[0]
    assert np.array_equal(read_dicom_seg(out / "seg.dcm", n), read_seg_nrrd(out / "roi.seg.nrrd").union())
    # The folder now exists: a second run needs --overwrite, which replaces the SEG with the rest.
    capsys.readouterr()
    assert cac(argv) == 2 and "--overwrite" in _one_error(capsys)
    before = (out / "seg.dcm").stat().st_mtime_ns
    assert cac(argv + ["--overwrite"]) == 0
    assert (out / "seg.dcm").stat().st_mtime_ns != before
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "report.json", "roi.seg.nrrd", "seg.dcm"]


def test_dicom_seg_in_a_new_out_folder_leaves_nothing_when_the_seg_fails(phantom, all_roi_model, tmp_path, capsys,
                                                                        monkeypatch):
    pytest.importorskip("highdicom")
    from CACIdentifierLib import dicom_seg

    build, calls = dicom_seg.build_dicom_seg, []

    def fail_after_the_check(*args, **kw):
        calls.append(1)
        if len(calls) > 1:  # the first call is the probe, before the network
            raise CacError("cannot make a DICOM SEG of cine.dcm (test)")
        return build(*args, **kw)

    monkeypatch.setattr(dicom_seg, "build_dicom_seg", fail_after_the_check)
    out = tmp_path / "y2"
    assert cac(_argv(phantom, all_roi_model, out, "--dicom-seg", str(out / "seg.dcm"))) == 2
    assert "cannot make a DICOM SEG" in _one_error(capsys)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 3: summary line

def test_summary_against_annotators_is_rounded(phantom, all_roi_model, tmp_path, capsys):
    code = cac(_argv(phantom, all_roi_model, tmp_path / "o", "--annotations", *map(str, phantom[2])))
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("against annotators:"))
    s = json.loads((tmp_path / "o" / "report.json").read_text())["summary"]
    assert line.startswith(f"against annotators: IoM median {s['iom']['median']:.2f}, "
                           f"HD median {s['hd_mm']['median']:.1f} mm; "
                           f"ROI precision median {s['roi_precision']['median']:.2f}, "
                           f"ROI area median {s['roi_area_pct_field']['median']:.2f} % of the field; "
                           f"frames with calcium found {s['detection']['sensitivity']:.2f}"), line


def test_summary_line_says_when_undefined():
    from CACIdentifierLib.report import summary_line

    line = summary_line({"iom": {"median": None}, "hd_mm": {"median": None}})
    assert "None" not in line and line.startswith("IoM median -, HD median -")


# --------------------------------------------------------------------------- 4, 5, 6: refused before any work

@pytest.mark.parametrize("extra,phrase", [
    (["--json", "--progress-json"], "--json and --progress-json both print on stdout"),
    (["--batch-frames", "0"], "--batch-frames 0 is not valid; give at least 1"),
])
def test_bad_option_combinations_are_refused_before_any_work(phantom, all_roi_model, tmp_path, capsys, no_reading,
                                                             extra, phrase):
    assert cac(_argv(phantom, all_roi_model, tmp_path / "o", *extra)) == 2
    line = _one_error(capsys)
    assert phrase in line and "None" not in line and "workers" not in line, line
    assert not (tmp_path / "o").exists()


def test_missing_cuda_is_refused_before_any_work(phantom, all_roi_model, tmp_path, capsys, no_reading, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = _argv(phantom, all_roi_model, tmp_path / "o")
    argv[argv.index("cpu")] = "cuda"
    assert cac(argv) == 2
    assert "CUDA is not available" in _one_error(capsys)


def test_engine_checks_the_device_before_synchronizing(phantom, all_roi_model, monkeypatch):
    import torch
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    net, meta = load_model(all_roi_model)
    events = []
    with pytest.raises(CacError, match="CUDA is not available"):
        identify(phantom[0].to_cine(), net, meta, device="cuda", progress=lambda *a: events.append(a))
    assert events == []  # "synchronizing" was never announced


# --------------------------------------------------------------------------- 7: timings

def test_stage_timings_fit_in_the_total_with_parallel_workers(phantom, all_roi_model, monkeypatch):
    from CACIdentifierLib import refinement
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import load_model

    refine = refinement.refine

    def slow_refine(*a, **k):
        time.sleep(0.1)  # releases the GIL: two workers' refinements overlap in time
        return refine(*a, **k)

    monkeypatch.setattr(refinement, "refine", slow_refine)
    net, meta = load_model(all_roi_model)
    # Two frames per task: several tasks, whatever contrast frames the pairs share.
    t = identify(phantom[0].to_cine(), net, meta, onset=10, workers=2, batch_frames=2).timings
    assert t["workers"] == 2
    assert t["sync"] + t["network"] + t["refinement"] <= t["total"] + 1e-3, t
    summed = t["worker_seconds"]
    assert summed["network"] >= t["network"] - 1e-4 and summed["refinement"] >= t["refinement"] - 1e-4


def _overlay(tmp_path, name, **result):
    """The overlay PNG of a hand-made 2-frame result, read back as an RGB array."""
    from types import SimpleNamespace

    import matplotlib.image as mpimg
    from CACIdentifierLib.report import save_overlay_png

    frames = np.full((4, 64, 64), 120, np.uint8)
    roi = np.zeros((4, 64, 64), bool)
    roi[0, 20:30, 20:30] = True
    base = dict(frames=[0, 1], contrast_frames=[2, 3], probabilities=np.array([0.6, 0.1]), roi=roi,
                exposed_field=None, static_spots={}, parameters={}, ood_warning=None)
    path = tmp_path / name
    save_overlay_png(path, SimpleNamespace(frames=frames), SimpleNamespace(**{**base, **result}), frames=[0, 1])
    return mpimg.imread(path)[..., :3]


def test_overlay_carries_the_out_of_distribution_banner_and_the_operating_point(tmp_path):
    """A shared picture says what the terminal said: a cine unlike the training data gets a red banner on top."""
    def red(img):  # the banner's colour (#c00000), anywhere in the top tenth
        top = img[: img.shape[0] // 10]
        return np.any((top[..., 0] > 0.6) & (top[..., 1] < 0.2) & (top[..., 2] < 0.2))

    plain = _overlay(tmp_path, "plain.png")
    warned = _overlay(tmp_path, "warned.png", ood_warning="outside", parameters={"classifier_threshold": 0.24})
    assert red(warned) and not red(plain)
    assert red(_overlay(tmp_path, "large.png", roi_area_pct_field=np.array([8.0, 9.0])))  # ROIs far larger than calcium
    assert warned.shape == plain.shape  # the same figure, the banner and note fitted inside it
