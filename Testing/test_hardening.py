"""Regression tests for the defects found by fuzzing (issue 16): every bad input is one printable line.

The DICOM cases mutate an uncompressed copy of a real cine from ../shared/data (written to a temporary
folder, never into the repository); the model cases mutate a small model written here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from cac.cli import main
from CACIdentifierLib import modelio
from CACIdentifierLib.cine_io import load_cine
from CACIdentifierLib.errors import CacError, CacWarning, printable
from CACIdentifierLib.modelio import load_model, save_model
from CACIdentifierLib.network import ResUNet18
from CACIdentifierLib.sync import synchronize_cine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BIPLANE = DATA / "xa" / "rubo-biplane-b-ecg-17f.dcm"
RCA = DATA / "xa" / "rubo-rca-ecg-96f.dcm"

needs_data = pytest.mark.skipif(not BIPLANE.exists(), reason=f"real test data not found at {DATA}")


def run_cac(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single ``cac: error:`` line on stderr, printable, without a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cac: error: ")]
    assert len(errors) == 1, err
    assert all(line.startswith(("cac: error: ", "cac: warning: ")) for line in lines), err
    assert all(line.isprintable() for line in lines), err
    assert "Traceback" not in err
    return errors[0]


# --------------------------------------------------------------------------- DICOM


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """The 17-frame biplane cine, uncompressed (explicit VR little endian), in a temporary folder."""
    if not BIPLANE.exists():
        pytest.skip(f"real test data not found at {DATA}")
    ds = pydicom.dcmread(BIPLANE)
    ds.decompress()
    path = tmp_path_factory.mktemp("plain") / "biplane.dcm"
    ds.save_as(path)
    return path


def mutate(plain: Path, tmp_path: Path, name: str, change) -> Path:
    ds = pydicom.dcmread(plain)
    change(ds)
    out = tmp_path / name
    ds.save_as(out)
    return out


def patch_bytes(plain: Path, tmp_path: Path, name: str, find: bytes, replace_at: int, new: bytes) -> Path:
    raw = plain.read_bytes()
    i = raw.find(find)
    assert i >= 0
    out = tmp_path / name
    out.write_bytes(raw[: i + replace_at] + new + raw[i + replace_at + len(new) :])
    return out


@needs_data
def test_empty_ecg_curve_is_ignored_with_a_warning(plain, tmp_path):
    path = mutate(plain, tmp_path, "c.dcm", lambda d: setattr(d[(0x5000, 0x3000)], "value", b""))
    with pytest.warns(CacWarning, match="ECG curve .* is empty"):
        cine = load_cine(path)
    assert cine.ecg is None and cine.n_frames == 17 and cine.r_wave_frames == [0, 11]


@needs_data
def test_curve_header_disagreeing_with_its_data(plain, tmp_path):
    # Two stored dimensions claimed for a curve of single values: it once gave
    # "cannot reshape array of size 1360 into shape (1360,2)".
    def change(d):
        d[(0x5000, 0x0005)].value = 2
        if (0x5000, 0x0110) in d:
            del d[(0x5000, 0x0110)]

    path = mutate(plain, tmp_path, "c2.dcm", change)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacWarning)
        cine = load_cine(path)
    assert cine.ecg is None or len(cine.ecg.samples) == len(cine.ecg.times_ms) >= 2


@needs_data
def test_empty_pixel_data_is_one_line(plain, tmp_path, capsys):
    path = mutate(plain, tmp_path, "p.dcm", lambda d: setattr(d, "PixelData", b""))
    code, _, err = run_cac(capsys, "info", path)
    assert code == 2
    assert "empty pixel data" in one_error_line(err)


@needs_data
def test_unknown_vr_drops_the_tag(plain, tmp_path):
    # Manufacturer's VR bytes "LO" turned into "QQ": pydicom raises NotImplementedError when the tag is read.
    path = patch_bytes(plain, tmp_path, "vr.dcm", b"\x08\x00\x70\x00LO", 4, b"QQ")
    with pytest.warns(CacWarning, match=r"tag \(0008, ?0070\) could not be read"):
        cine = load_cine(path)
    assert "Manufacturer" not in cine.identifiers and cine.n_frames == 17


@needs_data
def test_unphysical_frame_time_and_nan_spacing_are_ignored_and_sync_runs(plain, tmp_path):
    def change(d):
        d.FrameTime = "1e308"
        d.PixelSpacing = ["nan", "nan"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warning about 'nan' as DS
        path = mutate(plain, tmp_path, "ft.dcm", change)
    with pytest.warns(CacWarning, match="frame time .* outside the physical range"):
        cine = load_cine(path)
    assert cine.frame_time_ms is None and cine.spacing_mm is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacWarning)
        result = synchronize_cine(cine, onset=8)
    assert result.onset_frame == 8 and len(result.phase) == 17


@needs_data
@pytest.mark.parametrize("tag,value", [("Rows", 1), ("Rows", 2), ("Columns", 1), ("Columns", 2)])
def test_degenerate_sizes_are_refused_before_decoding(plain, tmp_path, capsys, tag, value):
    # Rows=1 once read as 49,152 frames of 1 x 512 (sync then asked for 9 GiB); Columns=1 hung.
    path = mutate(plain, tmp_path, "s.dcm", lambda d: setattr(d, tag, value))
    code, _, err = run_cac(capsys, "info", path)
    assert code == 2
    assert "pixels a side" in one_error_line(err)


@needs_data
def test_sizes_inconsistent_with_the_pixel_data(plain, tmp_path):
    path = mutate(plain, tmp_path, "r.dcm", lambda d: setattr(d, "Rows", 32))
    with pytest.raises(CacError, match="header is corrupt"):
        load_cine(path)
    path = mutate(plain, tmp_path, "n.dcm", lambda d: setattr(d, "NumberOfFrames", 40))
    with pytest.raises(CacError, match="truncated"):
        load_cine(path)


@needs_data
def test_cine_larger_than_memory_is_refused(plain, tmp_path, monkeypatch):
    from CACIdentifierLib import cine as cine_module

    monkeypatch.setattr(cine_module, "memory_available_bytes", lambda: 1_000_000)
    with pytest.raises(CacError, match="more than this machine can spare"):
        load_cine(plain)


@needs_data
def test_r_wave_pointer_outside_the_frames(plain, tmp_path):
    path = mutate(plain, tmp_path, "rw.dcm", lambda d: setattr(d, "RWavePointer", [0, 5, 9999]))
    with pytest.warns(CacWarning, match="outside 1..17"):
        cine = load_cine(path)
    assert cine.r_wave_frames == [4]


@needs_data
def test_info_escapes_control_characters_from_the_file(plain, tmp_path, capsys):
    path = mutate(plain, tmp_path, "m.dcm", lambda d: setattr(d, "Manufacturer", "ACME\x1b[31m\nframes: 3"))
    code, out, _ = run_cac(capsys, "info", path)
    assert code == 0
    assert "\x1b" not in out
    assert not any(line.startswith("frames: 3") for line in out.splitlines())
    assert "Manufacturer:       ACME\\x1b[31m\\nframes: 3" in out
    code, out, _ = run_cac(capsys, "info", path, "--json")
    assert json.loads(out)["identifiers"]["Manufacturer"] == "ACME\x1b[31m\nframes: 3"


def test_error_lines_are_one_printable_line(tmp_path, capsys):
    bad = tmp_path / "bad\nname\x1b[2J.dcm"
    bad.write_bytes(b"\x08\x00" + b"\xff" * 300)
    code, _, err = run_cac(capsys, "info", bad)
    assert code == 2
    line = one_error_line(err)
    assert "\\n" in line and "\\x1b" in line


def test_printable():
    assert printable("a\nb\tc\x00") == "a\\nb\\tc\\x00"
    assert printable("é ü 中") == "é ü 中"
    assert printable("x" * 500) == "x" * 197 + "..."
    assert printable(b"\xff\x01") == "\\xff\\x01"


def test_special_files_are_refused(capsys):
    code, _, err = run_cac(capsys, "info", "/dev/zero")
    assert code == 2
    assert "not a regular file" in one_error_line(err)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (with a valid CRC) and holds no image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_image_size_bomb_is_refused(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(2):
        (folder / f"f{k}.png").write_bytes(_png_header_claiming(30000, 30000))
    code, _, err = run_cac(capsys, "info", folder, "--spacing", "0.3")
    assert code == 2
    assert "decompression bomb" in one_error_line(err)  # Pillow's own limit, caught
    for k in range(2):  # below Pillow's limit, above a frame's
        (folder / f"f{k}.png").write_bytes(_png_header_claiming(10000, 100))
    code, _, err = run_cac(capsys, "info", folder, "--spacing", "0.3")
    assert code == 2
    assert "claims 10000 x 100 pixels" in one_error_line(err)


@needs_data
def test_closed_stdout_ends_quietly():
    # The reader goes away before cac writes (`cac info ... | head -0`): no traceback, no "Exception ignored".
    proc = subprocess.Popen(
        [sys.executable, "-m", "cac.cli", "info", str(RCA)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert err.decode().strip() == ""


# --------------------------------------------------------------------------- model files

SMALL = {"width": 8, "decoder_channels": [16, 8, 8, 8, 8]}


@pytest.fixture
def model_file(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_model(path, ResUNet18(**SMALL), dtype=None)
    return path


def _edit_card(path: Path, change) -> None:
    card = modelio.card_path(path)
    data = json.loads(card.read_text())
    card.write_text(json.dumps(change(data)))


def test_card_not_utf8(model_file):
    modelio.card_path(model_file).write_bytes(b'{"sha256": "\xff\xfe"}')
    with pytest.raises(CacError, match="unreadable"):
        load_model(model_file)


def test_card_that_is_a_list(model_file):
    modelio.card_path(model_file).write_text("[1, 2]")
    with pytest.raises(CacError, match="expected an object"):
        load_model(model_file)


def test_card_with_integer_sha256(model_file):
    _edit_card(model_file, lambda d: {**d, "sha256": 12345})
    with pytest.raises(CacError, match="64 hexadecimal"):
        load_model(model_file)


def test_negative_decoder_channels(model_file, tmp_path):
    from safetensors.torch import save_file

    meta = modelio.read_metadata(model_file)
    meta["architecture"]["decoder_channels"] = [16, 8, -8, 8, 8]
    bad = tmp_path / "neg.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"cac": json.dumps(meta)})
    with pytest.raises(CacError, match="decoder_channels"):
        load_model(bad)


def test_tiny_file_claiming_a_huge_network_is_refused_before_building_it(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    meta = modelio.default_metadata()
    meta["architecture"]["width"] = 4096
    bad = tmp_path / "huge.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"cac": json.dumps(meta)})
    assert bad.stat().st_size < 2000

    def no_network(*a, **k):
        raise AssertionError("the network was built before the metadata was checked")

    monkeypatch.setattr(modelio, "ResUNet18", no_network)
    with pytest.raises(CacError, match="width"):
        load_model(bad)
    # Within the limits but not matching the file: refused from the header's shapes, still unbuilt.
    meta["architecture"]["width"] = 256
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"cac": json.dumps(meta)})
    monkeypatch.undo()
    built = []
    real = modelio.ResUNet18

    def spy(*a, **k):
        model = real(*a, **k)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(modelio, "ResUNet18", spy)
    with pytest.raises(CacError, match="missing"):
        load_model(bad)
    assert built == ["meta"]  # only the shape-only skeleton


def test_nan_weights_are_refused(tmp_path):
    torch.manual_seed(0)
    model = ResUNet18(**SMALL)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    save_model(path, model, dtype=None)
    with pytest.raises(CacError, match="NaN or infinite"):
        load_model(path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("classifier_threshold", float("inf")),
        ("classifier_threshold", "0.5"),
        ("refinement", {"sigma": -1}),
        ("refinement", {"bogus": 1}),
        ("roi_gt", []),
        ("version", True),
        ("training", "x"),
        ("calibration", {"temperature": 0.0}),
        ("calibration", {"temperature": "1.3"}),
        ("calibration", {"bias": float("nan")}),
        ("calibration", [1.3]),
        ("cine_threshold", "0.2"),
        ("cine_threshold", 1.5),
        ("cine_threshold", float("nan")),
        ("roi_patches", 0),
        ("roi_patches", 6),
        ("roi_patches", 2.0),
        ("roi_patches", True),
    ],
)
def test_metadata_schema(field, value):
    meta = modelio.default_metadata()
    meta[field] = value
    with pytest.raises(CacError):
        modelio.validate_metadata(meta, "m")


def test_valid_metadata_passes():
    meta = modelio.default_metadata()
    assert modelio.validate_metadata(meta, "m") is meta
    assert modelio.validate_metadata(dict(meta, cine_threshold=0.2, roi_patches=2), "m")["roi_patches"] == 2
    assert np.isfinite(meta["classifier_threshold"])


@pytest.mark.parametrize("value,ok", [(0, True), (16, True), (-1, False), (1.5, False), (True, False), ("16", False),
                                      (5000, False)])
def test_metadata_classifier_topk(value, ok):
    meta = modelio.default_metadata()
    meta["architecture"]["classifier_topk"] = value
    if ok:
        assert modelio.validate_metadata(meta, "m")["architecture"]["classifier_topk"] == value
    else:
        with pytest.raises(CacError, match="classifier_topk"):
            modelio.validate_metadata(meta, "m")


# --------------------------------------------------------------------------- synchronization and options


def test_sync_refuses_degenerate_frames_and_unphysical_frame_times():
    from CACIdentifierLib.sync import synchronize

    rng = np.random.default_rng(0)
    with pytest.raises(CacError, match="too small"):
        synchronize(rng.integers(0, 255, (500, 2, 512), dtype=np.uint8))
    with pytest.raises(CacError, match="frame time"):
        synchronize(rng.integers(0, 255, (20, 32, 32), dtype=np.uint8), 1e308)


@needs_data
@pytest.mark.parametrize("option,value", [("--frame-time", "1e308"), ("--spacing", "nan"), ("--spacing", "-1")])
def test_unphysical_options_are_one_line(plain, capsys, option, value):
    code, _, err = run_cac(capsys, "info", plain, option, value)
    assert code == 2
    assert "is not valid" in one_error_line(err)


# --------------------------------------------------------------------------- outputs that never destroy


def test_overwrite_replaces_only_the_commands_own_files(tmp_path):
    from CACIdentifierLib.fileutil import atomic_directory

    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text("old")
    (out / "mine.txt").write_text("a user's file")
    (out / "notes").mkdir()
    with pytest.raises(CacError, match="already exists"):
        with atomic_directory(out) as tmp:
            pass
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "report.json").write_text("new")
        (tmp / "overlay.png").write_bytes(b"png")
    assert (out / "report.json").read_text() == "new" and (out / "overlay.png").exists()
    assert (out / "mine.txt").read_text() == "a user's file" and (out / "notes").is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing staged left behind
    # A failing block changes nothing.
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "report.json").write_text("half")
            raise RuntimeError
    assert (out / "report.json").read_text() == "new"


def test_output_folder_dot_with_overwrite(tmp_path, monkeypatch):
    from CACIdentifierLib.fileutil import atomic_directory

    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    with atomic_directory(".", overwrite=True) as tmp:
        (tmp / "report.json").write_text("{}")
    assert (tmp_path / "report.json").exists() and (tmp_path / "keep.txt").exists()


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    from CACIdentifierLib.fileutil import atomic_directory, atomic_output

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    stale_dir = tmp_path / f".out.tmp-{dead}-0123abcd"
    stale_dir.mkdir()
    (stale_dir / "roi.seg.nrrd").write_bytes(b"half")
    stale_file = tmp_path / f".model.tmp-{dead}-0123abcd.safetensors"
    stale_file.write_bytes(b"half")
    alive = tmp_path / ".out.tmp-1-0123abcd"  # pid 1 always runs
    alive.mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "report.json").write_text("{}")
    with atomic_output(tmp_path / "model.safetensors") as tmp:
        tmp.write_bytes(b"ok")
    assert not stale_dir.exists() and not stale_file.exists()
    assert alive.exists()


def test_output_location_checked_before_the_work(tmp_path, capsys, monkeypatch):
    from CACIdentifierLib import cine_io

    def no_work(*a, **k):
        raise AssertionError("the cine was read before the output location was checked")

    monkeypatch.setattr(cine_io, "load_cine", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cac(capsys, "identify", "whatever.dcm", "--out", blocker / "sub")
    assert code == 2
    assert "cannot be created" in one_error_line(err)
    code, _, err = run_cac(capsys, "identify", "whatever.dcm", "--out", blocker)
    assert code == 2
    assert "is a file" in one_error_line(err)


def test_disk_errors_are_one_line(tmp_path):
    from CACIdentifierLib.fileutil import atomic_output

    with pytest.raises(CacError, match="could not write .*No space left"):
        with atomic_output(tmp_path / "x.json"):
            raise OSError(28, "No space left on device")


def test_train_refuses_stale_outputs_before_training(tmp_path, capsys, monkeypatch):
    from cac import cli_train

    monkeypatch.setattr(cli_train, "_load", lambda *a: (_ for _ in ()).throw(AssertionError("trained")))
    (tmp_path / "ds").mkdir()
    for stale in ("m.json", "m_curves.png"):
        (tmp_path / stale).write_text("someone's")
        code, _, err = run_cac(capsys, "train", tmp_path / "ds", "--out", tmp_path / "m.safetensors")
        assert code == 2
        assert f"{stale} already exists" in one_error_line(err)
        (tmp_path / stale).unlink()


def _checkpoint(run_dir: Path, epochs_done: int = 1):
    from CACTrainerLib import training

    torch.manual_seed(0)
    model = ResUNet18(**SMALL)
    opt = torch.optim.Adam(model.classifier_parameters(), lr=1e-4)
    nc = torch.rand(2, 1, 256, 256)
    model(nc, nc)[0].sum().backward()
    opt.step()
    run_dir.mkdir(exist_ok=True)
    cfg = training.asdict(training.TrainConfig(architecture=SMALL))
    training.save_checkpoint(run_dir, model, None, opt, {"stage": 1, "epochs_done": epochs_done, "history": [],
                                                          "best": {}, "config": cfg})
    return model


def test_checkpoint_pair_cannot_disagree(tmp_path, no_unpickling):
    from CACTrainerLib import training

    run = tmp_path / "run"
    model = _checkpoint(run, epochs_done=2)
    # A kill between the two files once left epoch-2 weights labelled as epoch 1: the state now lives
    # in the weights file, so a stale checkpoint.json cannot mislabel them.
    info = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps(dict(info, epochs_done=1)))
    tensors, state = training.load_checkpoint(run, model)
    assert state["epochs_done"] == 2 and "model.fc.weight" in tensors


@pytest.mark.parametrize("damage", ["truncate", "json", "shape", "nan", "hnm_frames"])
def test_bad_checkpoints_are_one_line(tmp_path, damage):
    from CACTrainerLib import checkpoint_io, training

    run = tmp_path / "run"
    model = _checkpoint(run)
    weights = run / "checkpoint.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "json":
        tensors, info = checkpoint_io.read_checkpoint(run)
        checkpoint_io.write_checkpoint(run, tensors, dict(info, stage="2", history=5))
    elif damage == "shape":
        model = ResUNet18(width=16, decoder_channels=[16, 8, 8, 8, 8])
    elif damage == "hnm_frames":  # a stream's window keys (docs/learning.md), damaged
        tensors, info = checkpoint_io.read_checkpoint(run)
        checkpoint_io.write_checkpoint(run, tensors, dict(info, hnm_frames=[["S1_P00001", -3], "x"]))
    else:
        tensors, info = checkpoint_io.read_checkpoint(run)
        tensors["model.fc.weight"] = torch.full_like(tensors["model.fc.weight"], float("nan"))
        checkpoint_io.write_checkpoint(run, tensors, info)
    with pytest.raises(CacError, match="checkpoint in .* is unusable"):
        training.load_checkpoint(run, model)


def test_manifest_is_checked(tmp_path):
    from CACTrainerLib.phantom_writer import load_manifest

    ds = tmp_path / "ds"
    ds.mkdir()
    for manifest, message in (
        ({"acquisitions": 5}, "no list of acquisitions"),
        ([1, 2], "no list of acquisitions"),
        ({"acquisitions": [{"cine": "../../etc/passwd"}]}, "outside the dataset"),
        ({"acquisitions": [{"cine": "/etc/passwd"}]}, "outside the dataset"),
        ({"acquisitions": [{"cine": "a.dcm", "annotators": [3]}]}, "not a file name"),
        ({"acquisitions": ["x"]}, "not an object"),
        ({"acquisitions": [{"cine": None}]}, "has no cine"),  # full fuzz run, seed 3, case 432
    ):
        (ds / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(CacError, match=message):
            load_manifest(ds)
    (ds / "manifest.json").write_bytes(b'{"acquisitions": [\xff]}')
    with pytest.raises(CacError, match="not a valid dataset manifest"):
        load_manifest(ds)


def test_val_fraction_zero_holds_out_nobody():
    from CACTrainerLib import crossval
    from CACTrainerLib.crossval import validation_split

    class FakeSet:
        patient = ["P0", "P1", "P2"]
        acquisition = ["A0", "A1", "A2"]

    train, val = validation_split(FakeSet(), 0.0)
    assert val is None and isinstance(train, FakeSet)
    with pytest.raises(CacError, match="val-fraction"):
        crossval.validation_split(FakeSet(), 1.0)


@needs_data
def test_every_loader_runs_without_pickle(plain, tmp_path, no_unpickling):
    """Model, checkpoint, DICOM cine, .seg.nrrd and manifest loaders, with every route into pickle refused."""
    from CACIdentifierLib import nrrd_io
    from CACTrainerLib import training
    from CACTrainerLib.dataset import build_frameset

    torch.manual_seed(0)
    save_model(tmp_path / "m.safetensors", ResUNet18(**SMALL), dtype=None)
    load_model(tmp_path / "m.safetensors")
    model = _checkpoint(tmp_path / "run")
    assert training.load_checkpoint(tmp_path / "run", model) is not None
    cine = load_cine(plain)
    mask = np.zeros(cine.frames.shape, bool)
    mask[:, 200:240, 200:240] = True
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "cine.dcm").symlink_to(plain)
    nrrd_io.write_seg_nrrd(ds / "majority.seg.nrrd", {"CAC": mask}, (0.3, 0.3))
    (ds / "manifest.json").write_text(json.dumps(
        {"acquisitions": [{"id": "A", "patient": "P", "cine": "cine.dcm", "majority": "majority.seg.nrrd"}]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacWarning)
        fs = build_frameset(ds, frames_per_acquisition=1)
    assert fs.n_patches >= 1


def test_sync_memory_is_estimated_before_computing(monkeypatch):
    from CACIdentifierLib.sync import pipeline, synchronize

    monkeypatch.setattr(pipeline, "memory_available_bytes", lambda: 10_000_000)
    frames = np.random.default_rng(0).integers(0, 255, (400, 32, 32), dtype=np.uint8)
    with pytest.raises(CacError, match="synchronizing 400 frames needs about"):
        synchronize(frames, 66.7)


def test_onset_fit_memory_is_linear():
    """The exhaustive ramp fit works a block of rows at a time: a long statistic costs no N x N tables."""
    import tracemalloc

    from CACIdentifierLib.sync.onset import fit_ramp

    n = 6000
    k = np.arange(n)
    stat = 1 + 0.5 * np.clip((k - 2000) / 300, 0, 1) + 0.01 * np.random.default_rng(0).standard_normal(n)
    tracemalloc.start()
    t0, t1, *_ = fit_ramp(stat, np.ones(n, bool))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert abs(t0 - 2000) <= 5 and abs(t1 - 2300) <= 10
    assert peak < 200e6  # a whole table per sum would be 6000^2 x 8 B = 288 MB each


@needs_data
def test_element_length_of_gigabytes_reads_no_more_than_the_file(plain, tmp_path):
    # Found by the fuzzing harness: a length field corrupted to ~4 GB made Python allocate the whole
    # request (MemoryError under a memory limit, gigabytes of address space without one).
    raw = plain.read_bytes()
    i = raw.find(b"\xe0\x7f\x10\x00OB\x00\x00")
    if i < 0:
        i = raw.find(b"\xe0\x7f\x10\x00OW\x00\x00")
    assert i >= 0
    bad = tmp_path / "len.dcm"
    bad.write_bytes(raw[: i + 8] + (0xFFFFFFF0).to_bytes(4, "little") + raw[i + 12 :])
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
        "from cac.cli import main; sys.exit(main(['info', sys.argv[1]]))"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(bad)], capture_output=True, text=True, timeout=120)
    # The pixel data is the last element: read to the end of the file it is whole, so the cine loads.
    assert proc.returncode == 0, proc.stderr
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("line", [b"space: bzip2", b"space: nan", b"kinds: gzip domain domain", b"sizes: 1 1"])
def test_nrrd_headers_that_made_slicer_core_abort(tmp_path, line):
    """Found by the fuzzing harness: slicer-core aborts the process on these; now one line."""
    from CACIdentifierLib import nrrd_io

    good = tmp_path / "good.seg.nrrd"
    nrrd_io.write_seg_nrrd(good, {"CAC": np.ones((2, 32, 32), bool)}, (0.3, 0.3))
    raw = good.read_bytes()
    end = raw.find(b"\n\n")
    lines = raw[:end].split(b"\n")
    key = line.split(b":")[0]
    lines = [line if entry.split(b":")[0] == key else entry for entry in lines]
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_bytes(b"\n".join(lines) + raw[end:])
    truncated = tmp_path / "cut.seg.nrrd"
    truncated.write_bytes(raw[: len(raw) - 40])
    for path in (bad, truncated):
        # In a child process: before the fix, slicer-core killed the process (it would take pytest along).
        proc = subprocess.run([sys.executable, "-m", "cac.cli", "evaluate", str(path), str(good)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        one_error_line(proc.stderr)


def test_nrrd_attributes_found_by_the_full_fuzz_run(tmp_path, capsys):
    """Seed 2 of the full run: an R-wave list repeating one frame (case 3832: ZeroDivisionError in
    sync) and control bytes in the spacing source (case 3340: `cac info` printed them raw)."""
    from dataclasses import replace

    from CACIdentifierLib.nrrd_io import write_seq_nrrd
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    p = PhantomParams(rows=96, cols=96, n_frames=30, fps=15.0)
    cine = generate_acquisition(p, seed=2, patient=0).to_cine()
    cine = replace(cine, r_wave_frames=[2, 2, 2, 2], spacing_source="SOURCEMARK")
    path = write_seq_nrrd(cine, tmp_path / "cine.seq.nrrd", encoding="raw")
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"SOURCEMARK", b"Imager\x1b[31m\x0cSpacing", 1))
    code, out, err = run_cac(capsys, "sync", path, "--json")
    assert code == 0, err
    assert "Traceback" not in err
    code, out, err = run_cac(capsys, "info", path)
    assert code == 0, err
    assert all(line.isprintable() for line in out.splitlines())
    assert "(source: Imager\\x1b[31m\\x0cSpacing)" in out


def test_segment_extent_of_the_wrong_length_is_one_line(tmp_path, capsys):
    """Seed 2 of the full fuzz run, case 8657: `Segment0_Extent:=-1` gave an IndexError in evaluate."""
    from CACIdentifierLib import nrrd_io

    good = tmp_path / "good.seg.nrrd"
    nrrd_io.write_seg_nrrd(good, {"CAC": np.ones((2, 32, 32), bool)}, (0.3, 0.3))
    raw = good.read_bytes()
    start = raw.index(b"Segment0_Extent:=")
    end = raw.index(b"\n", start)
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_bytes(raw[:start] + b"Segment0_Extent:=-1" + raw[end:])
    code, _, err = run_cac(capsys, "evaluate", bad, good)
    assert code == 2
    assert "extent" in one_error_line(err)


def test_folder_lock_reports_a_lock_it_cannot_check_and_releases_its_own(tmp_path):
    import json

    from CACIdentifierLib.fileutil import LOCK_NAME, folder_lock

    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "node-17.cluster", "started": "2026-12-04T10:00:00"}))
    with pytest.raises(CacError, match=r"another training run is using .*process 1 on node-17.cluster.*delete .*run.lock"):
        with folder_lock(tmp_path, "training run"):
            pass
    assert lock.exists()  # another machine's lock is never removed
    lock.write_text("{half a lock")
    with pytest.raises(CacError, match="run.lock is unreadable"):
        with folder_lock(tmp_path):
            pass
    lock.unlink()
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path) as held:
            assert held == lock and json.loads(lock.read_text())["pid"] == os.getpid()
            raise RuntimeError("the run fails")
    assert not lock.exists()  # released on failure too



@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process identities need /proc (Linux)")
def test_folder_lock_takes_over_a_lock_whose_process_number_now_belongs_to_another_process(tmp_path):
    """A stale lock naming a live number held by a *different* process (a reboot or PID wrap-around) is
    taken over; the same live process is still respected."""
    import json
    import socket
    import subprocess

    from CACIdentifierLib.fileutil import LOCK_NAME, folder_lock, process_identity

    lock = tmp_path / LOCK_NAME
    other = subprocess.Popen(["sleep", "60"])
    try:
        ident = process_identity(other.pid)
        assert ident is not None and ident != process_identity(os.getpid())
        holder = {"pid": other.pid, "host": socket.gethostname(), "started": "2026-12-04T10:00:00"}
        lock.write_text(json.dumps(dict(holder, process=ident)))
        with pytest.raises(CacError, match=f"process {other.pid}"):
            with folder_lock(tmp_path):
                pass
        boot, ticks = ident.rsplit(":", 1)
        lock.write_text(json.dumps(dict(holder, process=f"{boot}:{int(ticks) - 1}")))  # its number, another start
        with folder_lock(tmp_path):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()
    finally:
        other.kill()
        other.wait()


@needs_data
@pytest.mark.parametrize("photometric", ["YBR_FULL", "RGB"])
def test_colour_photometric_on_grey_samples_is_one_line(plain, tmp_path, capsys, photometric):
    """A header claiming colour over one sample per pixel once failed in numpy ("operands could not be broadcast")."""
    path = mutate(plain, tmp_path, "ybr.dcm", lambda d: setattr(d, "PhotometricInterpretation", photometric))
    code, _, err = run_cac(capsys, "info", path)
    assert code == 2
    assert "PhotometricInterpretation" in one_error_line(err) and "SamplesPerPixel 1 (it needs 3)" in err


def test_an_acquisition_id_from_a_manifest_cannot_drive_the_terminal_in_warnings():
    """Fuzzing (seed 8, case 322): a manifest id '\\x1b[2J' reached a synchronization warning raw."""
    import warnings

    from CACIdentifierLib.errors import CacWarning
    from CACTrainerLib.dataset import frames_from_arrays

    frames = np.random.default_rng(0).integers(0, 255, (24, 64, 64)).astype(np.uint8)  # no periodicity: a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacWarning)
        frames_from_arrays(frames, np.zeros(frames.shape, bool), frame_time_ms=66.7, onset=12,
                           acquisition="\x1b[2J", background=False)
    messages = [str(w.message) for w in caught]
    assert messages and all(m.startswith("\\x1b[2J: ") for m in messages), messages
    assert not any("\x1b" in m for m in messages)
