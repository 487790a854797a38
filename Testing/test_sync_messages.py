"""The warnings of cardiac synchronization and of `cac sync` say what was done, where every cac warning goes.

- The image estimate's "no clear cardiac periodicity ... paired with the most
  similar contrast frame instead" is said only when that fallback gives the
  pairs, not when the ECG gives the phase (the image estimate is still kept).
- `cac sync` prints its warnings on stderr as ``cac: warning: ...`` in both
  output modes; stdout has only the result.
- `cac sync --onset N --onset-guard M` says that the guard is ignored, as
  `cac identify` does (the library's warning).
- A contrast arrival within the first frames (no baseline to detect it from) is refused with one
  line that says where the rise was found and what to pass (`--onset N`).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from cac.cli import main
from CACIdentifierLib import sync
from CACIdentifierLib.cine import Cine, EcgTrace
from conftest import BIPLANE, LCA_FRAMES, needs_data
from scipy import ndimage

FRAME_TIME = 66.7
FALLBACK = "no clear cardiac periodicity in the images"
GUARD = "the onset guard (4 frames) applies only to a detected onset; it is ignored with the given onset 5"


def _static_cine(n=40, size=64, onset=20, seed=0):
    """A cine where nothing beats: a still textured background whose diagonal vessel fills from ``onset``."""
    rng = np.random.default_rng(seed)
    bg = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3) * 0.3 + 0.5
    yy, xx = np.mgrid[0:size, 0:size]
    vessel = (np.abs(yy - xx) < 3).astype(float)
    fill = np.clip((np.arange(n) - onset + 1) / 3, 0, 1)[:, None, None]
    frames = bg * (1 - 0.4 * fill * vessel) + 0.01 * rng.standard_normal((n, size, size))
    return (np.clip(frames, 0, 1) * 4000).astype(np.uint16)


def _ecg(n, period_ms=800.0):
    """An ECG curve over ``n`` frames with an R peak every ``period_ms`` (from 100 ms)."""
    t = np.arange(0, n * FRAME_TIME, 2.0)
    x = np.zeros_like(t)
    for r in np.arange(100.0, t[-1], period_ms):
        x += np.exp(-0.5 * ((t - r) / 8.0) ** 2)
    return EcgTrace(x, t)


def _sync(frames, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sync.synchronize(frames, FRAME_TIME, onset_guard=0, **kw)  # no guard: all pairs compare
    return res, [str(w.message) for w in caught]


@pytest.mark.parametrize("method", ["default", "paper"])
def test_image_periodicity_warning_only_when_the_images_give_the_phase(method):
    frames = _static_cine()
    image_warning = FALLBACK if method == "default" else "no clear periodicity in the ECG-like signal"
    # The ECG gives the period and the pairs: no word of a fallback that did not happen.
    res, said = _sync(frames, ecg=_ecg(len(frames)), method=method)
    assert res.ecg_used and res.periodic and res.period_frames == pytest.approx(800 / FRAME_TIME, rel=0.01)
    assert not res.image.periodic  # the image estimate found none, and is kept beside the ECG's
    assert res.pairs == res.ecg.pairs and res.pairs != res.image.pairs
    assert not any("periodicity" in w for w in said + res.warnings), said
    # The same with the R Wave Pointer instead of a curve.
    res, said = _sync(frames, r_wave_frames=[3, 15, 27, 39], method=method)
    assert res.ecg_used and not any("periodicity" in w for w in said + res.warnings), said
    # The images give the phase (no ECG, the ECG set aside, an ECG with one R wave): the warning stays.
    for kw in ({}, {"ecg": _ecg(len(frames)), "use_ecg": False}, {"r_wave_frames": [3]}):
        res, said = _sync(frames, method=method, **kw)
        assert not res.ecg_used and not res.periodic
        assert sum(image_warning in w for w in said) == 1, (kw, said)
        assert sum(image_warning in w for w in res.warnings) == 1, (kw, res.warnings)
        if method == "default":
            assert res.pairs == res.image.pairs  # the most similar contrast frames, as it says
    assert any("fewer than two R waves" in w for w in said)


@pytest.fixture()
def cine_files(tmp_path):
    """The still cine as .seq.nrrd, without and with R waves (the R Wave Pointer)."""
    from CACIdentifierLib.nrrd_io import write_seq_nrrd

    frames = _static_cine()
    plain = write_seq_nrrd(Cine(frames=frames, frame_time_ms=FRAME_TIME), tmp_path / "still.seq.nrrd")
    with_ecg = write_seq_nrrd(Cine(frames=frames, frame_time_ms=FRAME_TIME, r_wave_frames=[3, 15, 27, 39]),
                              tmp_path / "still-ecg.seq.nrrd")
    return plain, with_ecg


def _run(capsys, *argv):
    assert main(["sync", *map(str, argv)]) == 0
    cap = capsys.readouterr()
    return cap.out, cap.err.splitlines()


def test_cli_sync_warnings_on_stderr_in_both_modes(cine_files, capsys):
    plain, _ = cine_files
    out, err = _run(capsys, plain)
    assert "warning" not in out.lower() and "periodicity" not in out.replace("(no clear periodicity)", "")
    assert "phase from images" in out
    assert err and all(line.startswith("cac: warning: ") for line in err), err
    assert sum(FALLBACK in line for line in err) == 1
    out_json, err_json = _run(capsys, plain, "--json")
    json.loads(out_json)
    assert err_json == err  # the same lines, the same way, as with --json


def test_cli_sync_no_fallback_warning_when_the_ecg_is_used(cine_files, capsys):
    plain, with_ecg = cine_files
    out, err = _run(capsys, with_ecg)
    assert "phase from ECG" in out and "image-based estimate: no periodicity found" in out
    assert not any("periodicity" in line for line in err), err
    out, err = _run(capsys, with_ecg, "--no-ecg")
    assert "phase from images" in out and sum(FALLBACK in line for line in err) == 1


def test_cli_sync_says_the_guard_is_ignored_with_an_onset(cine_files, capsys):
    _, with_ecg = cine_files
    for mode in ((), ("--json",)):
        out, err = _run(capsys, with_ecg, "--onset", 5, "--onset-guard", 4, *mode)
        assert err.count(f"cac: warning: {GUARD}") == 1, err
        assert "guard" not in out
        _, err = _run(capsys, with_ecg, "--onset", 5, *mode)  # no guard asked: nothing to say
        assert not any("guard" in line for line in err), err
        _, err = _run(capsys, with_ecg, "--onset-guard", 4, *mode)  # a detected onset: the guard applies
        assert not any("guard" in line for line in err), err


@needs_data
def test_cli_sync_on_the_real_biplane_cine(capsys):
    """The audit's case: an ECG cine whose images show no periodicity (about 1.5 beats)."""
    out, err = _run(capsys, BIPLANE)
    assert "phase from ECG" in out and "period: 11.00 frames" in out and "warning" not in out
    assert err == ["cac: warning: frame 0 is blank; the ECG-like signal uses frame 1 as reference"]
    out, err = _run(capsys, BIPLANE, "--no-ecg")
    assert "period: none found" in out and "warning" not in out
    assert all(line.startswith("cac: warning: ") for line in err) and sum(FALLBACK in line for line in err) == 1
    _, err = _run(capsys, BIPLANE, "--onset", 5, "--onset-guard", 4)
    assert f"cac: warning: {GUARD}" in err


EARLY = ("a run filmed after the injection has none, and an arrival within the first few frames leaves too short a "
         "baseline to detect it: look at the frames and pass --onset N (N: the first frame with contrast in the vessels)")


def test_contrast_from_the_first_frames_names_onset():
    """One frame before the vessel fills: the detected rise starts at frame 0, and the error says what to do."""
    from CACIdentifierLib.errors import CacError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CacError) as caught:
            sync.synchronize(_static_cine(onset=1), FRAME_TIME)
        assert sync.synchronize(_static_cine(onset=1), FRAME_TIME, onset=1).onset_frame == 1  # --onset: the way out
    message = str(caught.value)
    assert message.startswith("contrast is present from the first frame (the detected rise starts at frame 0, "
                              "fully arrived from frame "), message
    assert message.endswith(EARLY) and "\n" not in message, message


@needs_data
def test_cli_sync_on_the_real_lca_frames(capsys):
    """The LCA JPEG folder: contrast in the proximal vessels from frame 0, the bolus in the left main from frame 3.
    Without --onset one error line that names it; with --onset the pairs."""
    code = main(["sync", str(LCA_FRAMES), "--json"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("cac: error: ")]
    assert code == 2 and captured.out == "" and len(errors) == 1, captured.err
    assert "contrast is present from the first frame (the detected rise starts at frame 0" in errors[0]
    assert errors[0].endswith(EARLY), errors[0]
    assert main(["sync", str(LCA_FRAMES), "--json", "--onset", "3"]) == 0
    assert {a for a, _ in json.loads(capsys.readouterr().out)["pairs"]} == {0, 1, 2}


def test_too_few_contrast_frames_for_a_beat_warns_with_the_phase_mismatch():
    """A run whose contrast plateau is shorter than a beat pairs some frames with another phase: say so."""
    import warnings

    from CACIdentifierLib.errors import CacWarning
    from CACIdentifierLib.sync import synchronize
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    cine = generate_acquisition(PhantomParams(n_frames=96, rows=128, cols=128), seed=4, patient=0,
                                calcium_free=False).to_cine()

    def run(onset):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CacWarning)
            result = synchronize(cine.frames, cine.frame_time_ms, onset=onset)
        return result, [str(w.message) for w in caught if "can be paired with" in str(w.message)]

    result, found = run(92)  # 4 contrast frames at most: less than a beat (about 11 frames)
    assert result.periodic and result.period_frames > 4
    worst = max(abs((result.phase[i] - result.phase[j] + 0.5) % 1.0 - 0.5) for i, j in result.pairs)
    assert worst > 0.1 and len(found) == 1, found
    assert f"up to {worst:.2f} cycle in phase" in found[0] and "--onset" not in found[0]  # the onset was given
    result, found = run(None)  # detected onset 31, plateau from 46: every phase has its contrast frame
    assert not found and result.periodic and result.contrast_start < 60


def test_memory_guard_names_sizes_that_say_something(monkeypatch):
    """A transient memory squeeze stopped a training run with "needs about 0.0 GiB, more than this machine can
    spare (0.1 GiB available)": both sizes now readable, and what to do when memory is only short for now."""
    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.sync import pipeline

    monkeypatch.setattr(pipeline, "memory_available_bytes", lambda: 50 * 2**20)
    frames = np.zeros((64, 512, 512), np.uint8)
    with pytest.raises(CacError) as err:
        pipeline._check_memory(frames)
    message = str(err.value)
    assert "0.0 GiB" not in message and "needs about 32 MiB" in message and "50 MiB available" in message
    assert "close other programs" in message
    monkeypatch.setattr(pipeline, "memory_available_bytes", lambda: 2**30)
    pipeline._check_memory(frames)  # a gigabyte is plenty for 64 frames
