"""``cac info`` and ``cac convert`` on the real files and on bad input (exit code 2, one line on stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cac.cli import main
from conftest import BIPLANE, GE, LCA_FRAMES, RCA, needs_data

INFO_KEYS = {
    "frames",
    "rows",
    "columns",
    "bits_stored",
    "transfer_syntax",
    "frame_time_ms",
    "spacing_mm",
    "spacing_source",
    "r_wave_frames",
    "ecg_present",
    "modality",
    "blank_frames",
    "identifiers",
}


def run_cac(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The single ``cac: error:`` line on stderr (warnings before it are allowed)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cac: error: ")]
    assert len(errors) == 1, err
    assert all(line.startswith(("cac: error: ", "cac: warning: ")) for line in lines), err
    assert "Traceback" not in err
    return errors[0]


@needs_data
def test_info_json_rca(capsys):
    code, out, err = run_cac(capsys, "info", RCA, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert INFO_KEYS <= info.keys()
    assert (info["frames"], info["rows"], info["columns"]) == (96, 512, 512)
    assert info["bits_stored"] == 8
    assert info["transfer_syntax"].startswith("JPEG Baseline")
    assert info["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.50"
    assert info["frame_time_ms"] == pytest.approx(33.0)
    assert info["spacing_mm"] is None and info["spacing_source"] == "unknown"
    assert info["r_wave_frames"] == [19, 52, 76]
    assert info["ecg_present"] is True and info["ecg"]["samples"] == 3840
    assert info["modality"] == "XA" and info["blank_frames"] == []
    # Patient identifiers are hidden unless asked for (--identifiers): the output ends up in logs.
    assert "PatientID" not in info["identifiers"] and "PatientID" in info["identifiers_hidden"]
    code, out, err = run_cac(capsys, "info", RCA, "--json", "--identifiers")
    assert code == 0, err
    assert json.loads(out)["identifiers"]["PatientID"] == "556342B"


@needs_data
def test_info_json_ge_and_biplane(capsys):
    code, out, _ = run_cac(capsys, "info", "--json", GE)
    info = json.loads(out)
    assert code == 0
    assert info["spacing_mm"] == pytest.approx(0.390625 / 1.29306)  # isotropic: a number
    assert info["spacing_source"] == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    assert info["frame_time_ms"] == pytest.approx(66.6667)
    assert info["r_wave_frames"] is None and info["ecg_present"] is False
    assert info["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.70"

    code, out, _ = run_cac(capsys, "info", "--json", BIPLANE)
    info = json.loads(out)
    assert (info["frames"], info["frame_time_ms"], info["r_wave_frames"]) == (17, 66.0, [0, 11])
    assert info["blank_frames"] == [0] and info["ecg_present"] is True


@needs_data
def test_info_image_folder_with_user_values(capsys):
    code, out, err = run_cac(
        capsys, "info", "--json", LCA_FRAMES, "--spacing", "0.2198", "--frame-time", "66.7"
    )
    assert code == 0
    info = json.loads(out)
    assert info["frames"] == 37 and info["spacing_mm"] == 0.2198 and info["spacing_source"] == "user"
    assert info["frame_time_ms"] == 66.7 and info["transfer_syntax"] is None
    assert "cac: warning:" in err  # the montage beside the frames was ignored, and said so


@needs_data
def test_info_text(capsys):
    code, out, _ = run_cac(capsys, "info", RCA)
    assert code == 0
    assert "96 of 512 x 512" in out and "33 ms" in out and "19, 52, 76 (0-based)" in out
    assert "pixel spacing:" in out and "unknown" in out


def test_spacing_json_anisotropic():
    from cac.cli_io import _spacing_json

    assert _spacing_json(None) is None
    assert _spacing_json((0.3, 0.3)) == 0.3
    assert _spacing_json((0.2, 0.25)) == [0.2, 0.25]


@needs_data
def test_convert_sequence_and_frame_stack(tmp_path, capsys):
    pytest.importorskip("slicer")
    sitk = pytest.importorskip("SimpleITK")
    from CACIdentifierLib.cine_io import load_cine

    cine = load_cine(GE)
    seq = tmp_path / "ge.seq.nrrd"
    code, out, err = run_cac(capsys, "convert", GE, seq)
    assert code == 0, err
    assert seq.exists() and "wrote" in out
    back = load_cine(seq)  # through slicer-core's sequence storage node
    assert np.array_equal(back.frames, cine.frames)
    assert back.frame_time_ms == pytest.approx(cine.frame_time_ms)
    assert back.spacing_mm == pytest.approx(cine.spacing_mm)

    stack = tmp_path / "ge.nrrd"
    code, _, err = run_cac(capsys, "convert", GE, stack)
    assert code == 0, err
    image = sitk.ReadImage(str(stack))  # an independent NRRD reader
    assert image.GetSize() == (512, 512, 16)
    assert image.GetSpacing()[:2] == pytest.approx((cine.spacing_mm[1], cine.spacing_mm[0]), rel=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(image), cine.frames)

    # never overwrite without --overwrite; the existing file is left untouched
    before = stack.read_bytes()
    code, _, err = run_cac(capsys, "convert", BIPLANE, stack)
    assert code == 2 and "already exists" in error_line(err) and stack.read_bytes() == before
    code, _, err = run_cac(capsys, "convert", BIPLANE, stack, "--overwrite")
    assert code == 0, err
    assert sitk.ReadImage(str(stack)).GetSize() == (512, 512, 17)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ge.nrrd", "ge.seq.nrrd"]  # no temporary left over


@needs_data
def test_convert_writes_the_source_path_only_when_asked(tmp_path, capsys):
    """A converted cine goes to annotators: the input's path (an archive path can name the patient) is not in the
    header unless --record-source (it was always written as CAC_source)."""
    import shutil

    named = tmp_path / "Doe_John_MRN778899"
    named.mkdir()
    shutil.copy(GE, named / "run.dcm")
    for out, extra in ((tmp_path / "plain.nrrd", []), (tmp_path / "plain.seq.nrrd", []),
                       (tmp_path / "kept.nrrd", ["--record-source"])):
        code, _, err = run_cac(capsys, "convert", named / "run.dcm", out, *extra)
        assert code == 0, err
        header = out.read_bytes()[:4096]
        assert (b"Doe_John" in header) == bool(extra), header[:400]


def test_convert_refuses_other_suffixes(tmp_path, capsys):
    code, _, err = run_cac(capsys, "convert", tmp_path / "whatever.dcm", tmp_path / "out.mha")
    assert code == 2 and ".seq.nrrd" in error_line(err)


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, phrase expected in the error line)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_cine_io import make_presentation_state, make_xa, ramp_frames, save

    notdicom = tmp_path / "notes.bin"
    notdicom.write_bytes(b"plain text, not DICOM\n" * 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    nopix = make_presentation_state()
    cases = {
        "missing": (tmp_path / "missing.dcm", "does not exist"),
        "empty folder": (empty, "is empty"),
        "not dicom": (notdicom, "is not a DICOM file"),
        "no pixel data": (save(nopix, tmp_path / "pr.dcm"), "without pixel data"),
        "single frame": (save(make_xa(ramp_frames(n=1)[0]), tmp_path / "one.dcm"), "at least 2 frames"),
    }
    full = save(make_xa(ramp_frames(n=3), FrameTime=33), tmp_path / "full.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full.read_bytes()[:-2000])
    cases["truncated"] = (cut, "is truncated")
    if BIPLANE.exists():
        half = tmp_path / "half.dcm"
        data = BIPLANE.read_bytes()
        half.write_bytes(data[: len(data) // 2])
        cases["truncated jpeg"] = (half, "is truncated")
    return cases


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    for name, (path, phrase) in _bad_inputs(tmp_path).items():
        code, out, err = run_cac(capsys, "info", path)
        assert code == 2, name
        line = error_line(err)
        assert phrase in line.replace(str(tmp_path), ""), (name, line)
        assert out == ""


def test_bad_input_convert_writes_nothing(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (path, _) in cases.items():
        code, _, err = run_cac(capsys, "convert", path, out_dir / "x.seq.nrrd")
        assert code == 2, (name, err)
    assert list(out_dir.iterdir()) == []


def test_non_xa_warns_and_goes_on(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_cine_io import make_xa, ramp_frames, save

    path = save(
        make_xa(ramp_frames(n=3), sop_class="1.2.840.10008.5.1.4.1.1.7", modality="OT"), tmp_path / "ot.dcm"
    )
    code, out, err = run_cac(capsys, "info", "--json", path)
    assert code == 0 and json.loads(out)["modality"] == "OT"
    assert "cac: warning:" in err and "not XA" in err


def test_console_script_exit_code_and_stderr(tmp_path):
    """The installed ``cac`` entry point: exit code 2 and exactly one line on stderr, no traceback."""
    cac = Path(sys.executable).with_name("cac")
    if not cac.exists():
        pytest.skip("the cac console script is not installed in this environment")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nope" * 100)
    result = subprocess.run(
        [str(cac), "info", str(bad)], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": ""}
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cac: error: ") and "not a DICOM file" in lines[0]


def test_convert_output_inside_a_file_says_it_is_a_file(tmp_path, capsys):
    (tmp_path / "out1.nrrd").write_bytes(b"someone's file")
    code, _, err = run_cac(capsys, "convert", tmp_path / "whatever.dcm", tmp_path / "out1.nrrd" / "x.nrrd")
    line = error_line(err)
    assert code == 2 and "out1.nrrd is a file, not a folder" in line and "not writable" not in line


def test_convert_onto_its_input_names_no_out_option(tmp_path, capsys):
    """convert's output is positional: the refusal must not name an --out option the command does not have."""
    (tmp_path / "out1.nrrd").write_bytes(b"a cine")
    path = tmp_path / "out1.nrrd"
    code, _, err = run_cac(capsys, "convert", path, path, "--overwrite")
    line = error_line(err)
    assert code == 2 and "is the input" in line and "--out" not in line


@needs_data
def test_info_shows_patient_identifiers_only_when_asked(capsys):
    """`cac info` output goes into terminals, logs and bug reports: no PatientID, study date or UIDs unless asked."""
    from cac.cli_io import PATIENT_IDENTIFIERS
    from CACIdentifierLib.cine_io import load_cine

    secrets = [v for k, v in load_cine(RCA).identifiers.items() if k in PATIENT_IDENTIFIERS and v]
    assert len(secrets) >= 3
    for argv in (("info", RCA), ("info", RCA, "--json")):
        code, out, _ = run_cac(capsys, *argv)
        assert code == 0 and not [s for s in secrets if s in out]
        assert "PatientID" in out  # named as hidden, so the user knows there is something to ask for
    code, out, _ = run_cac(capsys, "info", RCA, "--identifiers")
    assert code == 0 and all(s in out for s in secrets)


@pytest.mark.parametrize("argv, where", [
    (["identify", "x.dcm", "--roi-patches", "0"], "cac identify --help"),
    (["identify", "x.dcm", "--threshold", "abc"], "cac identify --help"),
    (["identify"], "cac identify --help"),
    (["dataset", "add"], "cac dataset add --help"),
    (["no-such-command"], "cac --help"),
    (["--no-such-option"], "cac --help"),
])
def test_usage_errors_are_one_cac_error_line(argv, where, capsys):
    """argparse's own errors as every other error: one `cac: error:` line naming the help to read, exit 2,
    no usage block (it printed the usage and `cac identify: error: ...`)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cac: error: ") and err[0].endswith(f"see '{where}'"), err


def test_no_command_prints_the_commands_and_one_error_line(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "identify" in "\n".join(err) and err[-1].startswith("cac: error: no command given")
    assert sum(line.startswith("cac: error:") for line in err) == 1
