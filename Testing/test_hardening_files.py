"""Regression tests for the second fuzzing pass (session 34): malformed files and paths.

Each case was found by running every ``cac`` command on malformed inputs: a traceback, a silent
misreading (an annotation read as empty, a spacing invented) or an input overwritten.  The inputs
are small synthetic files written here.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cac.cli import main
from CACIdentifierLib import fileutil, modelio, nrrd_io
from CACIdentifierLib.cine import Cine
from CACIdentifierLib.cine_io import load_cine
from CACIdentifierLib.errors import CacError, CacWarning
from CACIdentifierLib.network import ResUNet18

nrrd = pytest.importorskip("nrrd")
slicerio = pytest.importorskip("slicerio")

SMALL = {"width": 8, "decoder_channels": [16, 8, 8, 8, 8]}
# A file name that is not valid UTF-8 (as os.fsdecode gives it on Linux): a byte 0xff.
NOT_UTF8 = "m\udcff.safetensors"


def run_cac(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def small_cine(n=6, rows=40, cols=48, seed=0) -> Cine:
    frames = np.random.default_rng(seed).integers(0, 255, size=(n, rows, cols)).astype(np.uint8)
    return Cine(frames=frames, spacing_mm=(0.3, 0.3), spacing_source="given", frame_time_ms=66.7)


def cine_and_annotation(tmp_path, calcium=None):
    cine = small_cine()
    mask = np.zeros(cine.frames.shape, bool)
    mask[1, 10:16, 12:20] = True
    mask[3, 20:24, 30:36] = True
    cine_path = nrrd_io.write_frame_stack_nrrd(cine, tmp_path / "cine.nrrd")
    seg = nrrd_io.write_seg_nrrd(tmp_path / "ann.seg.nrrd", {"calcium": mask if calcium is None else calcium},
                                 cine.spacing_mm, source_fingerprint=cine.fingerprint())
    return cine, cine_path, seg, mask


def rewrite_seg(path: Path, change) -> Path:
    """Read a .seg.nrrd with slicerio, let ``change(segmentation)`` edit it, write it back."""
    segmentation = slicerio.read_segmentation(str(path))
    change(segmentation)
    slicerio.write_segmentation(str(path), segmentation)
    return path


# --------------------------------------------------------------------------- annotations read as empty


def test_annotation_outside_the_frames_is_refused(tmp_path):
    cine, _, seg, mask = cine_and_annotation(tmp_path)

    def far_away(s):
        s["ijkToLPS"] = np.array(s["ijkToLPS"], float)
        s["ijkToLPS"][:3, 3] += 1e6
        s.pop("conversionParameters", None)  # no reference geometry: the frame-stack convention applies
    rewrite_seg(seg, far_away)
    with pytest.raises(CacError, match="outside the cine's frame stack"):
        nrrd_io.read_seg_nrrd(seg, expected_shape=cine.frames.shape)


def test_annotation_with_more_frames_than_the_cine_is_refused(tmp_path):
    cine = small_cine()
    longer = np.zeros((2 * cine.n_frames, *cine.frames.shape[1:]), bool)
    longer[cine.n_frames + 1, 5:9, 5:9] = True  # calcium in a frame the cine does not have
    longer[1, 5:9, 5:9] = True
    seg = nrrd_io.write_seg_nrrd(tmp_path / "long.seg.nrrd", {"calcium": longer}, cine.spacing_mm)

    def crop_reference(s):  # its reference geometry says: the cine's frames
        for p in s["conversionParameters"]:
            if p["name"] == "Reference image geometry":
                values = p["value"].rstrip(";").split(";")
                values[-1] = str(cine.n_frames - 1)
                p["value"] = ";".join(values) + ";"
    rewrite_seg(seg, crop_reference)
    with pytest.raises(CacError, match="in frames the cine does not have"):
        nrrd_io.read_seg_nrrd(seg, expected_shape=cine.frames.shape)


def test_label_values_no_segment_uses_are_refused(tmp_path):
    cine, _, seg, _ = cine_and_annotation(tmp_path)

    def relabel(s):
        s["voxels"] = np.where(np.asarray(s["voxels"]) > 0, 7, 0).astype(np.uint8)
    rewrite_seg(seg, relabel)
    with pytest.raises(CacError, match="label value.s. 7 that no segment uses"):
        nrrd_io.read_seg_nrrd(seg, expected_shape=cine.frames.shape)


def test_a_good_annotation_still_reads(tmp_path):
    cine, _, seg, mask = cine_and_annotation(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = nrrd_io.read_seg_nrrd(seg, expected_shape=cine.frames.shape).union()
    np.testing.assert_array_equal(got, mask)


def test_dataset_add_never_stores_a_lost_annotation_as_calcium_free(tmp_path, capsys):
    cine, cine_path, seg, _ = cine_and_annotation(tmp_path)
    rewrite_seg(seg, lambda s: s.update(voxels=np.where(np.asarray(s["voxels"]) > 0, 7, 0).astype(np.uint8)))
    code, _, err = run_cac(capsys, "dataset", "add", tmp_path / "ds", cine_path, "--annotations", seg,
                           "--patient", "p1", "--onset", "3")
    assert code == 2 and "no segment uses" in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- cines


def test_nrrd_without_spacing_is_unknown_whatever_its_recorded_source(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, size=(48, 40, 6)).astype(np.uint8)  # (i, j, k)
    path = tmp_path / "no_directions.nrrd"
    nrrd.write(str(path), data, {"CAC_spacing_source": "ImagerPixelSpacing", "CAC_frame_time_ms": "66.7"},
               index_order="F")
    cine = load_cine(path)
    assert cine.spacing_mm is None and cine.spacing_source == "unknown"
    zero = tmp_path / "zero_directions.nrrd"
    nrrd.write(str(zero), data, {"space": "left-posterior-superior", "space directions": np.zeros((3, 3)),
                                 "space origin": np.zeros(3)}, index_order="F")
    assert load_cine(zero).spacing_mm is None
    assert load_cine(zero, spacing_mm=0.2).spacing_mm == pytest.approx((0.2, 0.2))  # the user's, then


def test_non_finite_pixels_are_refused(tmp_path, capsys):
    data = np.random.default_rng(0).random((48, 40, 6)).astype(np.float32)
    data[3, 4, 2] = np.nan
    path = tmp_path / "nan.nrrd"
    nrrd.write(str(path), data, index_order="F")
    with pytest.raises(CacError, match="1 NaN or infinite pixel value"):
        load_cine(path)
    code, _, err = run_cac(capsys, "info", path)
    assert code == 2 and "NaN or infinite" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "0", "-5", "inf", "1e9"])
def test_a_frame_time_out_of_range_is_ignored_with_a_warning(tmp_path, value):
    path = nrrd_io.write_frame_stack_nrrd(small_cine(), tmp_path / "c.nrrd")
    data, header = nrrd.read(str(path), index_order="F")
    header["CAC_frame_time_ms"] = value
    nrrd.write(str(path), data, header, index_order="F")
    with pytest.warns(CacWarning, match="is not a frame time"):
        cine = load_cine(path)
    assert cine.frame_time_ms is None or math.isfinite(cine.frame_time_ms) and cine.frame_time_ms >= 1


# --------------------------------------------------------------------------- outputs and folders


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "f000.png").write_bytes(b"x")
    with pytest.raises(CacError, match="inside the input folder"):
        fileutil.check_not_input(frames / "f000.png", frames, option="--plot")
    with pytest.raises(CacError, match="inside the input folder"):
        fileutil.check_not_input(frames / "new.png", frames)
    fileutil.check_not_input(frames / "results", frames, inside_ok=True)  # an output folder of fixed names
    fileutil.check_not_input(tmp_path / "plot.png", frames)


def test_sync_plot_never_replaces_a_frame_of_its_cine(tmp_path, capsys):
    from PIL import Image

    frames = tmp_path / "png"
    frames.mkdir()
    for k, frame in enumerate(small_cine(n=8).frames):
        Image.fromarray(frame).save(frames / f"f{k:03d}.png")
    before = (frames / "f000.png").read_bytes()
    code, _, err = run_cac(capsys, "sync", frames, "--frame-time", "66", "--plot", frames / "f000.png",
                           "--overwrite")
    assert code == 2 and "inside the input folder" in err
    assert (frames / "f000.png").read_bytes() == before


def test_dataset_given_as_a_file(tmp_path, capsys):
    _, cine_path, seg, _ = cine_and_annotation(tmp_path)
    target = tmp_path / "dataset_is_file"
    target.write_text("mine")
    code, _, err = run_cac(capsys, "dataset", "add", target, cine_path, "--annotations", seg, "--patient", "p1",
                           "--onset", "3")
    assert code == 2 and "is a file, not a dataset folder" in err and "Traceback" not in err
    assert target.read_text() == "mine"
    code, _, err = run_cac(capsys, "train", target, "--out", tmp_path / "m.safetensors")
    assert code == 2 and "is a file, not a dataset folder" in err


def test_a_failed_first_add_leaves_no_half_built_dataset(tmp_path, monkeypatch):
    from CACTrainerLib import dataset_builder

    _, cine_path, seg, _ = cine_and_annotation(tmp_path)

    def full_disk(*args, **kwargs):
        raise CacError("could not write ... (No space left on device); free some space")

    monkeypatch.setattr(dataset_builder, "_write_acquisition", full_disk)
    with pytest.raises(CacError, match="No space left"):
        dataset_builder.add_acquisition(tmp_path / "new", cine_path, [seg], patient="p1", onset=3)
    assert not (tmp_path / "new").exists()
    # An existing dataset keeps what it had; only the new patient's empty folder goes.
    monkeypatch.undo()
    dataset_builder.add_acquisition(tmp_path / "ds", cine_path, [seg], patient="p1", onset=3)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "ds").rglob("*"))
    other = nrrd_io.write_frame_stack_nrrd(small_cine(seed=3), tmp_path / "other.nrrd")
    seg2 = nrrd_io.write_seg_nrrd(tmp_path / "other.seg.nrrd", {"calcium": np.zeros((6, 40, 48), bool)}, (0.3, 0.3),
                                  source_fingerprint=load_cine(other).fingerprint())
    monkeypatch.setattr(dataset_builder, "_write_acquisition", full_disk)
    with pytest.raises(CacError):
        dataset_builder.add_acquisition(tmp_path / "ds", other, [seg2], patient="p2", onset=3)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "ds").rglob("*")) == before


def test_a_training_that_fails_before_its_first_checkpoint_leaves_no_run_folder(tmp_path):
    from CACTrainerLib.training import TrainConfig, train

    run_dir = tmp_path / "run"
    with pytest.raises(CacError, match="no training frames"):
        train(None, None, TrainConfig(epochs1=1, epochs2=0, device="cpu"), run_dir)
    assert not run_dir.exists()
    kept = tmp_path / "kept"
    (kept / "mine").mkdir(parents=True)  # a folder the user made is never removed
    with pytest.raises(CacError):
        train(None, None, TrainConfig(epochs1=1, epochs2=0, device="cpu"), kept)
    assert (kept / "mine").is_dir()


# --------------------------------------------------------------------------- models


def test_model_save_on_a_full_disk_is_one_error(tmp_path, monkeypatch):
    import safetensors.torch

    def no_space(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(CacError, match=r"could not write .*No space left on device.*free some space"):
        modelio.save_model(tmp_path / "m.safetensors", ResUNet18(**SMALL), dtype=None)
    assert list(tmp_path.iterdir()) == []


def test_model_save_error_advice_follows_its_cause(tmp_path, monkeypatch):
    """Every failed model write once said "free some space", after a refused permission or a missing folder too."""
    import contextlib

    import safetensors.torch

    # A real SafetensorError: the folder vanished between the checks and the write.
    @contextlib.contextmanager
    def gone(path, overwrite=False):
        yield tmp_path / "gone" / "m.safetensors"

    with monkeypatch.context() as m:
        m.setattr(modelio, "atomic_output", gone)
        with pytest.raises(CacError) as err:
            modelio.save_model(tmp_path / "m.safetensors", ResUNet18(**SMALL), dtype=None)
    message = str(err.value)
    assert "(No such file or directory); choose another output location" in message, message
    assert "free some space" not in message and ".tmp" not in message  # the writer's temporary name stays out

    def denied(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: Permission denied (os error 13)")

    monkeypatch.setattr(safetensors.torch, "save_file", denied)
    with pytest.raises(CacError) as err:
        modelio.save_model(tmp_path / "m.safetensors", ResUNet18(**SMALL), dtype=None)
    message = str(err.value)
    assert message == (f"could not write {tmp_path / 'm.safetensors'} (Permission denied); you may not write there: "
                       "choose a folder you can write to or change its permissions")
    assert list(tmp_path.iterdir()) == []


def test_model_paths_that_are_not_utf8(tmp_path, capsys):
    torch.manual_seed(0)
    good = tmp_path / "m.safetensors"
    modelio.save_model(good, ResUNet18(**SMALL), dtype=None)
    odd = tmp_path / NOT_UTF8
    good.rename(odd)
    with pytest.raises(CacError, match="not valid UTF-8.*rename the file"):
        modelio.read_metadata(odd)
    with pytest.raises(CacError, match="not valid UTF-8"):
        modelio.save_model(tmp_path / NOT_UTF8.replace("m", "n"), ResUNet18(**SMALL), dtype=None)
    code, _, err = run_cac(capsys, "train", tmp_path, "--out", tmp_path / "o\udcff.safetensors")
    assert code == 2 and "not valid UTF-8" in err  # refused before training, not after it


def test_folders_given_as_files_are_named_as_folders(tmp_path):
    (tmp_path / "x.seg.nrrd").mkdir()
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(CacError, match="is a folder, not a .seg.nrrd file"):
        nrrd_io.read_seg_nrrd(tmp_path / "x.seg.nrrd")
    with pytest.raises(CacError, match="is a folder, not a model file"):
        modelio.read_metadata(tmp_path / "x.safetensors")
