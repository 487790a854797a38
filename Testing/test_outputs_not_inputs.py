"""No command writes its result over a file it reads, even with --overwrite (fileutil.check_not_input).

--overwrite means "replace my earlier result": a DICOM SEG written over its own cine, a fine-tuned model over
the model it started from or a CSV over the segmentation it scored would lose the user's data.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from cac.cli import main
from CACIdentifierLib.cine import Cine
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.fileutil import check_not_input
from CACIdentifierLib.modelio import save_model
from CACIdentifierLib.network import ResUNet18
from CACIdentifierLib.nrrd_io import write_frame_stack_nrrd, write_seg_nrrd
from conftest import BIPLANE, needs_data

SMALL = {"width": 8, "decoder_channels": [16, 8, 8, 8, 8]}


def _refused(capsys, argv, *phrases):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cac: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def test_check_not_input_sees_through_links_and_dots(tmp_path):
    src = tmp_path / "run.dcm"
    src.write_bytes(b"x")
    (tmp_path / "link.dcm").symlink_to(src)
    for same in (src, tmp_path / "link.dcm", tmp_path / "sub" / ".." / "run.dcm"):
        with pytest.raises(CacError, match="is the input"):
            check_not_input(same, None, src)
    check_not_input(tmp_path / "run.seg.dcm", src)  # another name: fine
    os.link(src, tmp_path / "hard.dcm")
    with pytest.raises(CacError, match="--dicom-seg"):
        check_not_input(tmp_path / "hard.dcm", src, option="--dicom-seg")


@needs_data
def test_identify_refuses_its_cine_as_the_dicom_seg(tmp_path, capsys):
    cine = tmp_path / "run.dcm"
    shutil.copyfile(BIPLANE, cine)
    before = cine.read_bytes()
    _refused(capsys, ["identify", str(cine), "--out", str(tmp_path / "out"), "--dicom-seg", str(cine),
                      "--overwrite"], "--dicom-seg", "is the input")
    assert cine.read_bytes() == before and not (tmp_path / "out").exists()


def test_identify_refuses_a_frames_folder_as_its_output_folder(tmp_path, capsys):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(4):
        Image.fromarray(np.full((64, 64), 40 * k, np.uint8)).save(frames / f"f{k + 1}.png")
    _refused(capsys, ["identify", str(frames), "--out", str(frames), "--overwrite", "--spacing", "0.3",
                      "--frame-time", "66"], "is the input")
    assert sorted(p.name for p in frames.iterdir()) == ["f1.png", "f2.png", "f3.png", "f4.png"]


def test_convert_refuses_to_write_over_its_input(tmp_path, capsys):
    path = tmp_path / "cine.nrrd"
    write_frame_stack_nrrd(Cine(frames=np.zeros((4, 32, 32), np.uint8), frame_time_ms=66.0), path)
    before = path.read_bytes()
    _refused(capsys, ["convert", str(path), str(path), "--overwrite"], "is the input")
    assert path.read_bytes() == before


def test_train_refuses_to_write_the_fine_tune_over_its_init_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "m.safetensors"
    save_model(model, ResUNet18(**SMALL), dtype=None)
    before = model.read_bytes()
    _refused(capsys, ["train", "--phantom-pool", "4", "--init", str(model), "--epochs", "1", "--out", str(model),
                      "--overwrite"], "is the input")
    assert model.read_bytes() == before


def test_gradcam_writes_only_a_png_and_checks_its_layer_first(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "m.safetensors"
    save_model(model, ResUNet18(**SMALL), dtype=None)
    cine = tmp_path / "cine.nrrd"
    write_frame_stack_nrrd(Cine(frames=np.zeros((4, 32, 32), np.uint8), frame_time_ms=66.0), cine)
    before = cine.read_bytes()
    _refused(capsys, ["gradcam", str(model), str(cine), "--frame", "0", "--contrast-frame", "3", "--out", str(cine),
                      "--overwrite"], "ending in .png")
    assert cine.read_bytes() == before
    _refused(capsys, ["gradcam", str(model), str(cine), "--frame", "0", "--contrast-frame", "3", "--layer",
                      "block7", "--out", str(tmp_path / "g.png")], "--layer block7", "block6")
    assert not (tmp_path / "g.png").exists()


def test_evaluate_refuses_its_segmentation_as_the_csv_and_two_outputs_on_stdout(tmp_path, capsys):
    roi = np.zeros((3, 32, 32), bool)
    roi[1, 4:9, 4:9] = True
    pred, truth = tmp_path / "pred.seg.nrrd", tmp_path / "truth.seg.nrrd"
    write_seg_nrrd(pred, {"CAC ROI": roi}, (0.3, 0.3))
    write_seg_nrrd(truth, {"CAC": roi}, (0.3, 0.3))
    before = truth.read_bytes()
    _refused(capsys, ["evaluate", str(pred), str(truth), "--csv", str(truth), "--overwrite"], "--csv", "is the input")
    assert truth.read_bytes() == before
    _refused(capsys, ["evaluate", str(pred), str(truth), "--csv", "-", "--json"], "standard output")
    assert main(["evaluate", str(pred), str(truth), "--csv", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text().splitlines()[1].startswith("1,1.0,0.0,")  # frame 1 scored
