"""`cac phantom --overwrite` replaces only a phantom dataset, and that one completely."""

from __future__ import annotations

import json

import pytest

ARGS = ["--frames", "8", "--size", "32", "--seed", "2"]


def _phantom(out, *extra):
    import CACIdentifierLib.mrml  # noqa: F401
    from cac.cli import main

    return main(["phantom", str(out), *ARGS, *extra])


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cac: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _real_dataset(folder):
    """The layout `cac dataset add` writes (manifest format cac-dataset/1, pseudonym.key, P-<hash>/A01)."""
    acq = folder / "P-1a2b3c4d5e6f" / "A01"
    acq.mkdir(parents=True)
    (acq / "cine.nrrd").write_bytes(b"NRRD0004\nfake cine\n")
    (acq / "majority.seg.nrrd").write_bytes(b"NRRD0004\nfake seg\n")
    (folder / "pseudonym.key").write_text("k" * 64 + "\n")
    (folder / "manifest.json").write_text(json.dumps({
        "format": "cac-dataset/1",
        "acquisitions": [{"id": "P-1a2b3c4d5e6f_A01", "patient": "P-1a2b3c4d5e6f",
                          "cine": "P-1a2b3c4d5e6f/A01/cine.nrrd", "annotators": [],
                          "majority": "P-1a2b3c4d5e6f/A01/majority.seg.nrrd"}]}))


@pytest.mark.parametrize("overwrite", [True, False])
def test_overwrite_refuses_cac_dataset(tmp_path, capsys, overwrite):
    out = tmp_path / "real"
    _real_dataset(out)
    before = _snapshot(out)
    assert _phantom(out, "--patients", "1", *(["--overwrite"] if overwrite else [])) == 2
    line = _one_error_line(capsys)
    assert "cac dataset" in line and "cac-dataset/1" in line and "choose another OUT_DIR" in line
    assert _snapshot(out) == before, "the user's dataset is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"], "nothing written beside it"


@pytest.mark.parametrize("content", ["notes", "other-manifest", "broken-manifest"])
def test_overwrite_refuses_non_phantom_folder(tmp_path, capsys, content):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    if content == "other-manifest":
        (out / "manifest.json").write_text(json.dumps({"format": "something/2", "acquisitions": []}))
    elif content == "broken-manifest":
        (out / "manifest.json").write_text("{not json")
    before = _snapshot(out)
    assert _phantom(out, "--overwrite") == 2
    line = _one_error_line(capsys)
    assert "not a phantom dataset" in line or "without a phantom manifest" in line
    assert "choose another OUT_DIR" in line
    assert _snapshot(out) == before


def test_overwrite_empty_folder(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert _phantom(out, "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["format"] == "cac-phantom-dataset/1"


def test_overwrite_replaces_phantom_completely(tmp_path, capsys):
    from CACTrainerLib.phantom_writer import load_manifest

    out = tmp_path / "ph"
    assert _phantom(out, "--patients", "2", "--acquisitions-per-patient", "2") == 0
    assert (out / "P002" / "A02" / "cine.dcm").is_file()
    (out / "README.txt").write_text("mine")  # the user's file beside the dataset stays
    assert _phantom(out, "--patients", "1", "--overwrite") == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["P001", "README.txt", "manifest.json"], \
        "no stale P002 from the earlier run"
    assert sorted(p.name for p in (out / "P001").iterdir()) == ["A01"], "no stale P001/A02"
    assert (out / "README.txt").read_text() == "mine"
    entries = load_manifest(out)
    assert [e["id"] for e in entries] == ["P001_A01"]
    # The user's file in a stale patient folder is not the phantom's: it (and its folder) stays.
    assert _phantom(out, "--patients", "2", "--overwrite") == 0
    (out / "P002" / "mine.txt").write_text("mine")
    assert _phantom(out, "--patients", "1", "--overwrite") == 0
    assert sorted(p.name for p in (out / "P002").iterdir()) == ["mine.txt"]
    assert not list(tmp_path.glob(".*")) and not list(out.glob(".*")), "no temporaries left"


def test_overwrite_keeps_the_users_files_inside_patient_folders(tmp_path, capsys):
    """The patient folders a new run writes were swapped in whole: a user's file inside P001/ was lost."""
    out = tmp_path / "ph"
    assert _phantom(out, "--patients", "2", "--acquisitions-per-patient", "2") == 0
    (out / "P001" / "notes.txt").write_text("mine")
    (out / "P001" / "A01" / "reading.txt").write_text("also mine")
    old_cine = (out / "P001" / "A01" / "cine.dcm").read_bytes()
    assert _phantom(out, "--patients", "1", "--overwrite", "--seed", "5") == 0
    capsys.readouterr()
    assert (out / "P001" / "notes.txt").read_text() == "mine"
    assert (out / "P001" / "A01" / "reading.txt").read_text() == "also mine"
    assert (out / "P001" / "A01" / "cine.dcm").read_bytes() != old_cine, "the phantom's own files are new"
    assert sorted(p.name for p in (out / "P001").iterdir()) == ["A01", "notes.txt"], "no stale P001/A02"
    assert sorted(p.name for p in (out / "P001" / "A01").iterdir()) == sorted(
        ["annotator1.seg.nrrd", "annotator2.seg.nrrd", "annotator3.seg.nrrd", "cine.dcm", "majority.seg.nrrd",
         "reading.txt", "truth.json", "truth.seg.nrrd"])
    assert not (out / "P002").exists()
    assert not list(tmp_path.glob(".*")) and not list(out.glob(".*")) and not list(out.glob("P001/.*"))
