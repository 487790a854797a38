"""End to end identification with the shipped model: engine, `cac identify`, and the MRML Logic.

A small phantom study (calcium truth and three annotators) is generated once per session;
the shipped default model must put its ROIs on the calcium (IoM floor) and every output
must be readable by slicer-core's own storage nodes.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cac.cli import main as cac
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.modelio import load_model
from CACIdentifierLib.resources import default_model_path

N_FRAMES = 48
# The shipped model was trained on phantoms with clearly visible calcium (docs/identify.md).
CALCIUM_CONTRAST = 0.25


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition
    from CACTrainerLib.phantom_writer import write_acquisition

    acq = generate_acquisition(PhantomParams(n_frames=N_FRAMES, calcium_mu_per_mm=CALCIUM_CONTRAST), seed=11, patient=2, calcium_free=False)
    folder = tmp_path_factory.mktemp("study")
    files = write_acquisition(folder, acq)
    return acq, folder, files


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_path())


def test_shipped_model_card_matches_weights():
    path = default_model_path()
    card = json.loads(path.with_suffix(".json").read_text())
    from CACIdentifierLib.modelio import sha256_file

    assert card["sha256"] == sha256_file(path)
    assert path.stat().st_size < 40 * 1024**2  # fp16, at most 40 MB


# Four calcified phantom patients seen once each (seed, patient): the shipped model must put its ROIs
# on the majority-vote calcium (IoM, pooled over all annotated non-contrast frames).
ENGINE_CASES = [(2024, 0), (5, 1), (11, 2), (31, 0)]
IOM_FLOOR = 0.3


def test_engine_finds_calcium_on_phantom(model):
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.metrics import iom
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    net, meta = model
    values = []
    for seed, patient in ENGINE_CASES:
        acq = generate_acquisition(PhantomParams(n_frames=N_FRAMES, calcium_mu_per_mm=CALCIUM_CONTRAST), seed=seed,
                                   patient=patient, calcium_free=False)
        result = identify(acq.to_cine(), net, meta)
        onset = result.sync.onset_frame
        # Only non-contrast frames are analysed, each paired with a contrast frame.
        assert all(f < onset <= c for f, c in zip(result.frames, result.contrast_frames))
        assert result.roi.shape == acq.frames.shape
        assert not result.roi[onset:].any()
        assert np.all((result.probabilities >= 0) & (result.probabilities <= 1))
        values += [iom(result.roi[f], acq.majority[f]) for f in result.frames if acq.majority[f].any()]
    values = [v for v in values if v is not None]
    assert len(values) > 40, "the phantoms have annotated non-contrast frames"
    assert np.median(values) >= IOM_FLOOR


def test_cli_identify_outputs(study, tmp_path):
    import slicer
    from CACIdentifierLib import slicercore

    acq, folder, files = study
    out = tmp_path / "out"
    annotators = [str(folder / name) for name in files["annotators"]]
    rc = cac(["identify", str(folder / files["cine"]), "--out", str(out), "--annotations", *annotators])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert {"frames", "onset_frame", "period_frames", "timings", "summary"} <= set(report)
    assert report["frames"] and {"index", "contrast_frame", "probability", "roi_area_mm2", "iom", "hd_mm"} <= set(
        report["frames"][0])
    assert report["onset_frame"] == pytest.approx(acq.onset_frame, abs=3)
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The ROI file opens with slicer-core's own storage node on the cine's frame-stack geometry.
    scene = slicercore.new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out / "roi.seg.nrrd"))
    assert storage.ReadData(node)
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 1
    labelmap = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation(seg.GetNthSegmentID(0), labelmap)
    spacing = labelmap.GetSpacing()
    assert spacing[0] == pytest.approx(acq.spacing_mm[1]) and spacing[1] == pytest.approx(acq.spacing_mm[0])

    # The evaluation in the report is the one `cac evaluate` gives on the same files.
    from CACIdentifierLib.nrrd_io import read_seg_nrrd

    roi_file = read_seg_nrrd(out / "roi.seg.nrrd", expected_shape=acq.frames.shape)
    roi = roi_file.union()
    # It records its source cine (issue 16: `cac evaluate` refuses files of different cines).
    from CACIdentifierLib.cine_io import load_cine

    assert roi_file.source_fingerprint == load_cine(folder / files["cine"]).fingerprint()
    assert roi_file.spacing_known is True
    # The report names the cine as the ROI file does; its path (it can name the patient) is not written.
    assert report["source_fingerprint"] == roi_file.source_fingerprint
    assert "source" not in report and str(folder) not in (out / "report.json").read_text()
    assert cac(["identify", str(folder / files["cine"]), "--out", str(tmp_path / "named"), "--record-source"]) == 0
    assert json.loads((tmp_path / "named" / "report.json").read_text())["source"] == str(folder / files["cine"])
    analysed = {row["index"] for row in report["frames"]}
    assert not roi[[f for f in range(N_FRAMES) if f not in analysed]].any()


def test_cli_identify_refuses_existing_output_and_bad_model(study, tmp_path, capsys):
    _, folder, files = study
    out = tmp_path / "out"
    out.mkdir()
    assert cac(["identify", str(folder / files["cine"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    assert cac(["identify", str(folder / files["cine"]), "--out", str(tmp_path / "o2"), "--model", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cac: error:")
    assert not (tmp_path / "o2").exists()


def test_cli_identify_onset_zero_means_no_noncontrast_frames(study, tmp_path, capsys):
    _, folder, files = study
    rc = cac(["identify", str(folder / files["cine"]), "--out", str(tmp_path / "o"), "--onset", "0"])
    assert rc == 2
    assert "non-contrast" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_identify_refuses_annotations_drawn_over_a_cropped_volume(study, tmp_path, capsys):
    """`identify --annotations` refused a file drawn over a cropped copy of the cine's frame-stack volume (its
    reference geometry: fewer rows and columns, the origin at the crop's corner) with another line than `cac dataset
    add` ("covers 48 frames of ... px but the cine has ..."); now with the very line of `dataset add`, `evaluate` and
    CAC Annotator (one check, `seg_align.check_not_cropped`): exit code 2, no traceback, nothing written.  The same
    calcium saved by slicer-core cropped to its minimum extent (the whole volume its geometry) is accepted."""
    pytest.importorskip("slicer")
    import slicer_seg_files as ssf
    from CACIdentifierLib.nrrd_io import read_seg_nrrd

    acq, folder, files = study
    cine = str(folder / files["cine"])
    calcium = read_seg_nrrd(folder / files["annotators"][0]).union()
    _, rows, cols = acq.frames.shape
    whole = ssf.write(tmp_path / "whole.seg.nrrd", {"calcium": calcium}, acq.spacing_mm, crop=True)
    volume = "the cine's frame-stack volume"
    for crop in (False, True):
        boxed = ssf.write(tmp_path / f"boxed{crop:d}.seg.nrrd", {"calcium": calcium}, acq.spacing_mm,
                          box=(8, rows - 8, 4, cols), crop=crop)
        for given in ([boxed], [whole, boxed]):
            capsys.readouterr()
            assert cac(["identify", cine, "--out", str(tmp_path / "out"), "--device", "cpu",
                        "--dicom-seg", str(tmp_path / "roi.dcm"), "--annotations", *given]) == 2
            out, err = capsys.readouterr()
            assert (out, err) == ("", f"cac: error: {boxed} was drawn over a cropped copy of {volume} ({rows - 16} x "
                                      f"{cols - 4} of its {rows} x {cols} px), so where it lies on the frames cannot be "
                                      f"checked; in Slicer's Segment Editor give it the geometry of {volume} ('Specify "
                                      f"geometry') and save it again, or draw it over {volume}\n")
            assert not (tmp_path / "out").exists() and not (tmp_path / "roi.dcm").exists()
    # Saved cropped to its minimum extent: the same frames' calcium, compared with the AI.
    assert read_seg_nrrd(whole).shape == acq.frames.shape
    assert cac(["identify", cine, "--out", str(tmp_path / "out"), "--device", "cpu", "--annotations", whole]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["iom"]["median"] is not None


def test_identify_in_scene(study, model):
    """The Logic: the cine handed to the worker process as a file, its outputs loaded as nodes."""
    from CACIdentifierLib import logic, mrml, slicercore

    acq, folder, files = study
    scene = slicercore.new_scene()
    cine = acq.to_cine()
    sequence, browser = mrml.cine_to_sequence(scene, cine, "phantom")
    annotations = []
    for name in files["annotators"]:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(str(folder / name))
        assert storage.ReadData(node)
        annotations.append(node)
    before = [mrml.segmentation_masks(n, shape=acq.frames.shape) for n in annotations]

    events = []
    out = logic.identify_in_scene(scene, sequence, annotation_nodes=annotations, device="cpu",
                                  progress=lambda done, total, message: events.append((done, total, message)))
    assert events and events[-1][0] == events[-1][1]  # progress came from the worker, up to the end

    # Annotations are untouched.
    after = [mrml.segmentation_masks(n, shape=acq.frames.shape) for n in annotations]
    for b, a in zip(before, after):
        assert b.keys() == a.keys() and all(np.array_equal(b[k], a[k]) for k in b)
    table = out["table"]
    assert table.GetNumberOfRows() == len(out["report"]["frames"])
    assert table.GetTable().GetColumnByName("IoM") is not None
    # Issue 12's item-4 measures are in the table, as the report has them, row by row.
    for column, key in (("ROI area (% of field)", "roi_area_pct_field"), ("ROI precision", "roi_precision")):
        values = table.GetTable().GetColumnByName(column)
        assert values is not None, column
        expected = [r[key] for r in out["report"]["frames"]]
        got = [values.GetValue(i) for i in range(values.GetNumberOfValues())]
        np.testing.assert_allclose(got, [np.nan if v is None else v for v in expected], err_msg=column)
    # The ROI sequence is synchronized in the cine's browser: each item is that frame's ROI.
    roi_sequence = out["roi_sequence"]
    assert roi_sequence is not None and browser.IsSynchronizedSequenceNode(roi_sequence.GetID(), True)
    assert roi_sequence.GetNumberOfDataNodes() == cine.n_frames
    stack = mrml.segmentation_masks(out["roi_segmentation"], shape=acq.frames.shape)
    assert np.array_equal(next(iter(stack.values())), out["roi"])
    assert out["summary"]["iom"]["median"] is not None



def test_fold_batchnorm_keeps_outputs(model):
    import torch
    from CACIdentifierLib.inference import fold_batchnorm

    net, _ = model
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # original untouched
    gen = torch.Generator().manual_seed(0)
    nc, c = torch.rand(3, 1, 256, 256, generator=gen), torch.rand(3, 1, 256, 256, generator=gen)
    with torch.inference_mode():
        (cls_a, roi_a), (cls_b, roi_b) = net(nc, c), folded(nc, c)
    assert torch.allclose(cls_a, cls_b, atol=1e-4)
    assert torch.allclose(torch.sigmoid(roi_a), torch.sigmoid(roi_b), atol=1e-4)


def test_engine_batching_and_contrast_head_sharing_change_nothing(study, model):
    """Frames sharing a contrast frame reuse its contrast head; results must not depend on it (fp32)."""
    from CACIdentifierLib.inference import identify

    acq, _, _ = study
    net, meta = model
    cine = acq.to_cine()
    one = identify(cine, net, meta, use_autocast=False, batch_frames=1, workers=1)
    assert len(set(one.contrast_frames)) < len(one.contrast_frames), "some frames share a contrast frame"
    three = identify(cine, net, meta, sync=one.sync, use_autocast=False, batch_frames=3)
    assert one.frames == three.frames and one.contrast_frames == three.contrast_frames
    np.testing.assert_allclose(one.patch_probabilities, three.patch_probabilities, atol=1e-5)
    assert np.array_equal(one.roi, three.roi)
    two = identify(cine, net, meta, sync=one.sync, use_autocast=False, workers=2)  # two frames at a time
    np.testing.assert_allclose(one.patch_probabilities, two.patch_probabilities, atol=1e-5)
    assert np.array_equal(one.roi, two.roi)
    # Against the plain model run on each frame's own patch pair (no folding, no sharing), through the
    # card's calibration as inference applies it.
    import torch
    from CACIdentifierLib.calibration import apply
    from CACIdentifierLib.patches import extract_patches, normalize_frame, prepare_frame

    net.eval()
    for k in range(0, len(one.frames), 5):
        nc, c = (
            torch.from_numpy(extract_patches(normalize_frame(prepare_frame(cine.frames[f], cine.spacing_mm)[0]))[:, None])
            for f in (one.frames[k], one.contrast_frames[k])
        )
        with torch.inference_mode():
            expected = apply(torch.sigmoid(net.classify(nc, c)).numpy(), meta.get("calibration"))
        np.testing.assert_allclose(one.patch_probabilities[k], expected, atol=1e-4)


def test_engine_cancel_stops_and_restores_threads(study, model):
    import torch
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.progress import Cancelled

    acq, _, _ = study
    net, meta = model
    seen = []

    def progress(done, total, message):
        seen.append(done)
        if done > 0:
            raise Cancelled()

    threads = torch.get_num_threads()
    with pytest.raises(Cancelled):
        identify(acq.to_cine(), net, meta, workers=2, progress=progress)
    assert torch.get_num_threads() == threads
    assert seen[0] == 0 and len([d for d in seen if d > 0]) == 1


def test_split_network_equals_the_plain_model(model):
    """splitnet computes concatenated convolutions by parts; outputs must equal the plain model's (fp32)."""
    import torch
    from CACIdentifierLib.inference import inference_model
    from CACIdentifierLib.splitnet import SplitResUNet18

    net, _ = model
    net.eval()
    split = SplitResUNet18(inference_model(net, "cpu", torch.float32))
    gen = torch.Generator().manual_seed(3)
    nc, c = torch.rand(10, 1, 256, 256, generator=gen), torch.rand(5, 1, 256, 256, generator=gen)
    c2 = torch.cat([c, c.flip(-1)])  # two frames, two contrast frames
    keep = torch.tensor([True, False, True, True, False, False, True, True, False, True])
    with torch.inference_mode():
        cls_ref, roi_ref = net(nc, c2)
        caches = [split.contrast_cache(c), split.contrast_cache(c.flip(-1))]
        logit, features = split.classify(nc, caches)
        roi = split.decode(features, caches, keep)
    assert torch.allclose(logit, cls_ref, atol=1e-4)
    assert torch.allclose(roi, roi_ref[keep], atol=1e-3)
    with pytest.raises(ValueError, match="folded"):
        SplitResUNet18(net)


@pytest.mark.parametrize(
    "arch",
    [
        {"width": 8, "blocks_per_stage": 2, "decoder_channels": (16, 8, 8, 8, 4)},  # deeper
        {"width": 12, "blocks_per_stage": 1, "decoder_channels": (40, 24, 16, 8, 8)},  # other widths
        {"width": 8, "blocks_per_stage": 3, "decoder_channels": (8, 8, 8, 8, 8), "in_channels": 2},
        {"width": 8, "blocks_per_stage": 1, "decoder_channels": (16, 8, 8, 8, 4), "block1_pool": False},
        {"width": 8, "blocks_per_stage": 1, "decoder_channels": (16, 8, 8, 8, 4), "classifier_topk": 3},
    ],
)
def test_split_network_follows_the_architecture(arch):
    """The fast path is derived from the model: another width or depth needs no change to splitnet."""
    import torch
    from CACIdentifierLib.inference import conv_bn_pairs, fold_batchnorm, inference_model
    from CACIdentifierLib.network import ResUNet18
    from CACIdentifierLib.splitnet import SplitResUNet18

    torch.manual_seed(5)
    net = ResUNet18(**arch)
    for m in net.modules():  # BatchNorms that do something, so that folding them is checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert len(conv_bn_pairs(net)) == n_bn  # every BatchNorm follows a convolution
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batchnorm(net).modules())
    split = SplitResUNet18(inference_model(net, "cpu", torch.float32))
    gen = torch.Generator().manual_seed(6)
    nc = torch.rand(4, arch.get("in_channels", 1), 64, 64, generator=gen)
    c = torch.rand(2, arch.get("in_channels", 1), 64, 64, generator=gen)
    keep = torch.tensor([True, False, True, True])
    with torch.inference_mode():
        cls_ref, roi_ref = net(nc, torch.cat([c, c]))
        cache = split.contrast_cache(c)
        logit, features = split.classify(nc, [cache, cache])
        roi = split.decode(features, [cache, cache], keep)
    # Folded BatchNorms round differently in float32 through the deep decoder: on a 2-core AMD EPYC
    # (AVX-512) 2 of 12,288 ROI values differed by 1.9e-4; a wiring error differs by orders more.
    torch.testing.assert_close(logit, cls_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(roi, roi_ref[keep], atol=1e-3, rtol=1e-3)


def test_split_network_max_pool_equals_torch_max_pool_to_the_bit():
    import torch
    import torch.nn.functional as F
    from CACIdentifierLib.splitnet import max_pool_3x3_s2

    gen = torch.Generator().manual_seed(4)
    for shape in [(2, 3, 8, 10), (5, 64, 128, 128), (1, 2, 7, 9), (1, 1, 2, 2)]:
        x = torch.randn(*shape, generator=gen)  # negative values too: border handling is not padding by 0
        for dtype in (torch.float32, torch.bfloat16):
            y = x.to(dtype, memory_format=torch.channels_last)
            assert torch.equal(max_pool_3x3_s2(y), F.max_pool2d(y, 3, 2, 1)), (shape, dtype)


@pytest.mark.parametrize("kw,phrase", [({"batch_frames": -1}, "--batch-frames"), ({"batch_frames": 0}, "--batch-frames"),
                                       ({"workers": 0}, "workers"), ({"sigma": float("nan")}, "sigma=nan"),
                                       ({"threshold": 1.5}, "threshold=1.5"), ({"min_island_px": -1}, "min_island_px=-1")])
def test_engine_refuses_bad_settings_before_any_work(study, model, kw, phrase):
    # --batch-frames -1 once analysed nothing and reported "ROI found on 0 frames"; a bad refinement
    # setting failed only after synchronization and the network.
    from CACIdentifierLib.inference import identify

    acq, _, _ = study
    net, meta = model
    events = []
    with pytest.raises(CacError, match=re.escape(phrase)):
        identify(acq.to_cine(), net, meta, progress=lambda *a: events.append(a), **kw)
    assert events == []


@pytest.mark.parametrize("option,phrase", [
    (["--spacing", "0"], "spacing 0.0 is not valid; give a number of mm between"),  # once taken for "not given"
    (["--spacing", "-0.3"], "spacing -0.3 is not valid"),
    (["--spacing", "nan"], "spacing nan is not valid"),
    (["--sigma", "1e9"], "sigma=1000000000.0 (--sigma)"),  # once a MemoryError after the network
    (["--threshold", "inf"], "threshold=inf (--threshold)"),
    (["--min-island", "-5"], "min_island_px=-5 (--min-island)"),
])
def test_cli_identify_refuses_bad_options_before_reading_anything(study, tmp_path, capsys, monkeypatch, option,
                                                                   phrase):
    from CACIdentifierLib import cine_io

    def not_now(*a, **k):
        raise AssertionError("the cine was read before the options were checked")

    monkeypatch.setattr(cine_io, "load_cine", not_now)
    _, folder, files = study
    rc = cac(["identify", str(folder / files["cine"]), "--out", str(tmp_path / "o"), *option])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("cac: error:") and err.count("\n") == 1, err
    assert phrase in err
    assert not (tmp_path / "o").exists()


def test_cli_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    """A MemoryError no check foresaw: one line and exit code 2, no traceback (genuine bugs keep theirs)."""
    import cac.cli_identify as cli_identify

    def out_of_memory(args):
        raise MemoryError("Unable to allocate 7.28 TiB for an array")

    monkeypatch.setattr(cli_identify, "_run", out_of_memory)
    assert cac(["identify", "whatever.dcm", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cac: error: not enough memory for `cac identify`") and err.count("\n") == 1, err

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_identify, "_run", bug)
    with pytest.raises(ZeroDivisionError):
        cac(["identify", "whatever.dcm", "--out", str(tmp_path / "o")])


def test_given_onset_before_the_first_non_blank_frame_says_to_give_a_later_one(study):
    from CACIdentifierLib.sync import synchronize

    acq, _, _ = study
    frames = np.array(acq.frames, copy=True)
    frames[:2] = 0  # frames 0 and 1 blank, as the first frame of some runs is
    with pytest.raises(CacError) as info:
        synchronize(frames, acq.frame_time_ms, onset=2, blank_frames=[0, 1])
    message = str(info.value)
    assert message.startswith("onset 2 leaves no non-blank non-contrast frame (frames 0-1 are blank)"), message
    assert "--onset 3 or more" in message and "detection" not in message
    with pytest.raises(CacError, match=re.escape("onset 1 leaves no non-blank non-contrast frame (frame 0 is")):
        synchronize(frames, acq.frame_time_ms, onset=1, blank_frames=[0, 1])


def test_cine_gate_withholds_every_roi_of_a_cine_below_the_card_threshold(study, model):
    """A card's cine threshold above the cine's mean frame probability leaves no ROI (and says so); below it, or
    with cine_gate=False, the frames keep exactly their own ROIs."""
    from CACIdentifierLib.inference import identify

    acq, _, _ = study
    net, meta = model
    cine = acq.to_cine()
    plain = identify(cine, net, meta, use_autocast=False)
    assert plain.roi.any(), "the test needs a cine with ROIs"
    evidence = plain.parameters["cine_evidence"]
    assert evidence == pytest.approx(float(np.mean(plain.probabilities)), abs=1e-4)
    assert plain.parameters["cine_threshold"] is None and not plain.parameters["cine_gate_withheld"]
    above = dict(meta, cine_threshold=evidence + 0.01)
    gated = identify(cine, net, above, sync=plain.sync, use_autocast=False)
    assert not gated.roi.any() and gated.parameters["cine_gate_withheld"]
    assert np.all(gated.roi_area_pct_field == 0)
    np.testing.assert_allclose(gated.probabilities, plain.probabilities, atol=1e-6)  # the frames' scores stay
    off = identify(cine, net, above, sync=plain.sync, use_autocast=False, cine_gate=False)
    assert np.array_equal(off.roi, plain.roi) and not off.parameters["cine_gate_withheld"]
    below = identify(cine, net, dict(meta, cine_threshold=evidence - 0.01), sync=plain.sync, use_autocast=False)
    assert np.array_equal(below.roi, plain.roi) and not below.parameters["cine_gate_withheld"]


def test_roi_patches_draw_the_roi_from_the_most_probable_patches_only(study, model):
    """A card's roi_patches keeps each frame's ROI to its most probable positive patches: the frames' probabilities
    stay, every ROI lies within the all-patch ROI, and a frame's ROI is exactly the all-patch ROI where only that
    many patches are positive."""
    from CACIdentifierLib.inference import identify

    acq, _, _ = study
    net, meta = model
    cine = acq.to_cine()
    first = identify(cine, net, meta, use_autocast=False)
    # A threshold that lets several patches in on some frames and one on others.
    thr = float(np.quantile(first.patch_probabilities, 0.7))
    meta = dict(meta, classifier_threshold=thr)
    plain = identify(cine, net, meta, sync=first.sync, use_autocast=False)
    one = identify(cine, net, dict(meta, roi_patches=1), sync=plain.sync, use_autocast=False)
    assert one.parameters["roi_patches"] == 1 and plain.parameters["roi_patches"] == 5
    np.testing.assert_allclose(one.probabilities, plain.probabilities, atol=1e-6)
    assert not (one.roi & ~plain.roi).any()
    positive = (plain.patch_probabilities >= thr).sum(axis=1)
    assert (positive > 1).any() and one.roi.sum() < plain.roi.sum()
    single = np.asarray(plain.frames)[positive <= 1]
    assert single.size and np.array_equal(one.roi[single], plain.roi[single])
    # The argument overrides the card (cac identify --roi-patches).
    again = identify(cine, net, dict(meta, roi_patches=1), sync=plain.sync, use_autocast=False, roi_patches=5)
    assert np.array_equal(again.roi, plain.roi)
    with pytest.raises(CacError, match="roi_patches"):
        identify(cine, net, meta, sync=plain.sync, use_autocast=False, roi_patches=0)


def test_cli_identify_says_when_the_cine_gate_withheld_the_rois(study, model, tmp_path, capsys):
    """A card whose cine threshold no cine reaches: one line says why there is no ROI; --no-cine-gate shows them."""
    from CACIdentifierLib.modelio import save_model

    _, folder, files = study
    net, meta = model
    gated = tmp_path / "gated.safetensors"
    save_model(gated, net, {k: v for k, v in meta.items() if k != "sha256"} | {"cine_threshold": 1.0})
    assert cac(["identify", str(folder / files["cine"]), "--out", str(tmp_path / "g"), "--model", str(gated)]) == 0
    err = capsys.readouterr().err
    assert "cac: no ROI drawn: the cine's evidence" in err and "cine threshold 1.000" in err
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["parameters"]["cine_gate_withheld"] and not any(r["roi_area_mm2"] for r in report["frames"])
    assert cac(["identify", str(folder / files["cine"]), "--out", str(tmp_path / "n"), "--model", str(gated),
                "--no-cine-gate"]) == 0
    assert "no ROI drawn" not in capsys.readouterr().err
    report = json.loads((tmp_path / "n" / "report.json").read_text())
    assert not report["parameters"]["cine_gate_withheld"] and any(r["roi_area_mm2"] for r in report["frames"])


def test_cli_identify_roi_patches_reaches_the_report(study, tmp_path, capsys):
    """`cac identify --roi-patches K` is passed on and reported; outside 1-5 it is one usage error (exit 2)."""
    _, folder, files = study
    cine = str(folder / files["cine"])
    assert cac(["identify", cine, "--out", str(tmp_path / "k"), "--roi-patches", "2"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "k" / "report.json").read_text())["parameters"]["roi_patches"] == 2
    with pytest.raises(SystemExit) as stop:
        cac(["identify", cine, "--out", str(tmp_path / "bad"), "--roi-patches", "9"])
    assert stop.value.code == 2 and "--roi-patches" in capsys.readouterr().err
