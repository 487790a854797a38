"""`cac calibrate` and the out-of-distribution warning (issue 12, item 5): CACTrainerLib.calibrate,
CACIdentifierLib.ood, their use by identify."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from cac.cli import main
from CACIdentifierLib import ood
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.inference import identify
from CACIdentifierLib.modelio import load_model, save_model
from CACIdentifierLib.network import ResUNet18
from CACTrainerLib.phantom import PhantomParams, generate_acquisition
from CACTrainerLib.phantom_writer import write_dataset

SMALL = {"width": 8, "decoder_channels": [16, 8, 8, 8, 8]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    torch.manual_seed(0)
    model = ResUNet18(**SMALL)
    save_model(root / "m.safetensors", model, {"classifier_threshold": 0.5}, dtype=None)
    p = PhantomParams(rows=128, cols=128, n_frames=32, onset_fraction_range=(0.45, 0.55), early_onset_prob=0.0,
                      calcium_mu_per_mm=0.3, calcium_free_fraction=0.5)
    write_dataset(root / "ds", p, patients=4, acquisitions_per_patient=1, seed=5)
    return root


def test_statistics_score_their_own_domain_low_and_a_shifted_one_high():
    rng = np.random.default_rng(0)
    stats = ood.feature_statistics(rng.gamma(2.0, 1.0, (300 * 5, 32)), data="t")
    assert len(stats["mean"]) == 32 and stats["frames"] == 300
    same = ood.frame_scores(rng.gamma(2.0, 1.0, (40 * 5, 32)), stats)
    assert 0.7 < np.median(same) < 1.3 and ood.ood_warning(same, stats) is None
    shifted = ood.frame_scores(rng.gamma(2.0, 1.0, (40 * 5, 32)) * 3.0, stats)
    line = ood.ood_warning(shifted, stats)
    assert line is not None and "\n" not in line and "training data" in line
    with pytest.raises(ValueError):
        ood.frame_scores(np.zeros((5, 31)), stats)


def test_cac_calibrate_writes_a_calibrated_model_and_identify_uses_it(setup, capsys):
    src, out = setup / "m.safetensors", setup / "cal.safetensors"
    code = main(["calibrate", str(src), "--dataset", str(setup / "ds"), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    cal = summary["calibration"]
    assert cal["method"] == "platt" and 0.05 <= cal["temperature"] <= 20 and -20 <= cal["bias"] <= 20
    assert (setup / "cal.json").exists() and (setup / "cal.reliability.png").stat().st_size > 1000
    model, meta = load_model(out)
    base, _ = load_model(src)
    for (k, a), b in zip(model.state_dict().items(), base.state_dict().values()):
        assert torch.equal(a, b), k  # the weights are not touched
    stats = meta["feature_statistics"]
    assert len(stats["mean"]) == model.fc.in_features
    # Existing outputs are refused before any work; the input is never the output.
    assert main(["calibrate", str(src), "--dataset", str(setup / "ds"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["calibrate", str(out), "--dataset", str(setup / "ds"), "--out", str(out), "--overwrite"]) == 2
    capsys.readouterr()

    cine = generate_acquisition(PhantomParams(rows=128, cols=128, n_frames=32), seed=9, patient=0).to_cine()
    res = identify(cine, model, meta)
    assert res.ood_scores is not None and np.isfinite(res.ood_scores).all()
    # The calibration is applied: a strongly negative bias removes every ROI.
    silent = identify(cine, model, dict(meta, calibration={"temperature": 1.0, "bias": -20.0}))
    assert not silent.roi.any() and silent.probabilities.max() < 1e-6
    # Statistics far from this cine's features: the warning speaks; without statistics: no score.
    far = dict(stats, mean=[m + 100.0 for m in stats["mean"]])
    assert identify(cine, model, dict(meta, feature_statistics=far)).ood_warning is not None
    assert identify(cine, model, {k: v for k, v in meta.items() if k != "feature_statistics"}).ood_scores is None


def test_cac_calibrate_builds_the_background_a_residual_model_reads(setup, capsys):
    # Frame-only models are calibrated on sets without the cine background (memory); a residual
    # model's set must carry it, or make_batch refuses.
    torch.manual_seed(1)
    src, out = setup / "res.safetensors", setup / "res_cal.safetensors"
    save_model(src, ResUNet18(in_channels=2, inputs="frame+residual", **SMALL), {"classifier_threshold": 0.5},
               dtype=None)
    code = main(["calibrate", str(src), "--dataset", str(setup / "ds"), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["calibration"]["method"] == "platt"
    _, meta = load_model(out)
    assert meta["architecture"]["inputs"] == "frame+residual"


class _Frames:
    """The two FrameSet fields frame_detection_curve reads."""

    def __init__(self, nc, calcium):
        self.nc, self.calcium = nc, calcium

    def __len__(self):
        return len(self.nc)


def test_frame_detection_curve_equals_gating_at_each_threshold():
    from CACIdentifierLib.field import exposed_field
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.calibrate import frame_detection_curve, operating_point

    rng = np.random.default_rng(3)
    n = 8
    nc = rng.uniform(0.3, 0.7, (n, 512, 512)).astype(np.float32)
    calcium = np.zeros((n, 512, 512), bool)
    calcium[: n // 2, 200:210, 200:210] = True  # half the frames have calcium
    rois = np.zeros((5 * n, 256, 256), np.float32)
    for i in range(5 * n):  # a blob in some patches, none in others: different frames need different patches
        if rng.random() < 0.5:
            r, c = rng.integers(40, 200, 2)
            rois[i, r:r + 50, c:c + 50] = 0.9
    probs = rng.random(5 * n).astype(np.float32)
    refinement = training.TrainConfig().refinement
    curve = frame_detection_curve(probs, rois, _Frames(nc, calcium), refinement)
    assert curve["positive_frames"] == 4 and curve["negative_frames"] == 4
    assert np.all(np.diff(curve["thresholds"]) > 0)
    truth = calcium.reshape(n, -1).any(1)
    for i in range(0, len(curve["thresholds"]), 3):  # brute force: gate at the threshold, make each ROI
        t = curve["thresholds"][i]
        det = np.array([evaluation.frame_roi(rois[5 * f:5 * f + 5], probs[5 * f:5 * f + 5] >= t,
                                           exposed_field(nc[f], margin_px=3), refinement).any() for f in range(n)])
        assert curve["sensitivity"][i] == pytest.approx((det & truth).sum() / 4)
        assert curve["specificity"][i] == pytest.approx((~det & ~truth).sum() / 4)
    assert curve["sensitivity"][0] >= curve["sensitivity"][-1]
    op = operating_point(curve, curve["sensitivity"][0])
    assert op["sensitivity"] >= curve["sensitivity"][0] and 0 <= op["threshold"] <= 1
    with pytest.raises(CacError, match="no classifier threshold"):
        operating_point(dict(curve, sensitivity=np.zeros_like(curve["sensitivity"])), 0.5)
    with pytest.raises(CacError, match="calcium"):
        operating_point(dict(curve, positive_frames=0), 0.5)


@pytest.mark.parametrize("roi_patches", [1, 2])
def test_frame_detection_curve_with_fewer_roi_patches_equals_the_evaluation(roi_patches):
    """A card's roi_patches: the curve's detections and gate scores are those of evaluation.evaluate at each
    threshold (the inference path: the most probable gated patches draw the ROI), not those of all patches."""
    from CACIdentifierLib import metrics
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.calibrate import frame_detection_curve

    rng = np.random.default_rng(7)
    n = 10
    nc = rng.uniform(0.3, 0.7, (n, 512, 512)).astype(np.float32)
    calcium = np.zeros((n, 512, 512), bool)
    calcium[: n // 2, 300:310, 300:310] = True
    rois = np.zeros((5 * n, 256, 256), np.float32)
    for i in range(5 * n):
        if rng.random() < 0.4:
            r, c = rng.integers(40, 200, 2)
            rois[i, r:r + 50, c:c + 50] = 0.9
    probs = rng.random(5 * n).astype(np.float32)
    fs = _Frames(nc, calcium)
    # What evaluate reads besides: patch labels, spacing, ROI_GT, the frames' cines.
    fs.patch_labels = (rng.random(5 * n) < 0.5).astype(np.float32)
    fs.n_patches, fs.spacing_mm, fs.roi = 5 * n, np.full((n, 2), 0.3), calcium
    fs.acquisition, fs.frame_index = [f"a{f}" for f in range(n)], np.arange(n)
    refinement = training.TrainConfig().refinement
    curve = frame_detection_curve(probs, rois, fs, refinement, roi_patches=roi_patches)
    every = frame_detection_curve(probs, rois, fs, refinement)
    assert not np.array_equal(curve["gate_scores"], every["gate_scores"])  # the case tells them apart
    pred = evaluation.PatchPredictions(probs, rois, None)
    for i in range(0, len(curve["thresholds"]), 4):
        t = float(curve["thresholds"][i])
        cfg = training.TrainConfig(classifier_threshold=t, refinement=refinement, roi_patches=roi_patches)
        ev = evaluation.evaluate(None, fs, cfg, "cpu", predictions=pred)
        found = np.array(ev["frame_pred_any"])
        assert np.array_equal(found, curve["gate_scores"] >= t)
        assert curve["sensitivity"][i] == pytest.approx(ev["detection"]["sensitivity"])
        assert curve["specificity"][i] == pytest.approx(ev["detection"]["specificity"])
        assert ev["auc_within_position"] == pytest.approx(np.mean(
            [metrics.roc_auc(fs.patch_labels[k::5] > 0.5, probs[k::5]) for k in range(5)]))


def test_frame_detection_curve_refuses_no_roi_patches_and_reads_more_than_five_as_all():
    """roi_patches 0 is refused as in refinement.most_probable_patches (it was clamped to 1); 7 means all five."""
    from CACTrainerLib import training
    from CACTrainerLib.calibrate import frame_detection_curve

    rng = np.random.default_rng(3)
    n = 4
    fs = _Frames(rng.uniform(0.3, 0.7, (n, 512, 512)).astype(np.float32), np.zeros((n, 512, 512), bool))
    fs.calcium[:2, 300:310, 300:310] = True
    rois = np.zeros((5 * n, 256, 256), np.float32)
    rois[::2, 60:120, 60:120] = 0.9
    probs = rng.random(5 * n).astype(np.float32)
    refinement = training.TrainConfig().refinement
    with pytest.raises(ValueError, match="roi_patches must be 1-5"):
        frame_detection_curve(probs, rois, fs, refinement, roi_patches=0)
    every = frame_detection_curve(probs, rois, fs, refinement)
    seven = frame_detection_curve(probs, rois, fs, refinement, roi_patches=7)
    assert np.array_equal(every["gate_scores"], seven["gate_scores"])


def test_choose_operating_point_lowers_the_island_size_only_as_far_as_needed():
    from CACIdentifierLib.field import exposed_field
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.calibrate import choose_operating_point

    rng = np.random.default_rng(5)
    n = 6
    nc = rng.uniform(0.3, 0.7, (n, 512, 512)).astype(np.float32)
    calcium = np.zeros((n, 512, 512), bool)
    calcium[:4, 100:104, 100:104] = True  # frames 0-3 have calcium
    rois = np.zeros((5 * n, 256, 256), np.float32)
    # The decoder's islands in patch 0 (top left): 40x40 (1600 px) on frames 0-1, 24x24 (576 px) on
    # frame 2, 18x18 (324 px) on frame 3; frame 4 (calcium-free) a 24x24 false island, frame 5 nothing.
    for f, side in ((0, 40), (1, 40), (2, 24), (3, 18), (4, 24)):
        rois[5 * f, 80:80 + side, 80:80 + side] = 0.9
    probs = np.full(5 * n, 0.2, np.float32)
    probs[::5] = 0.8
    fr = _Frames(nc, calcium)
    refinement = training.TrainConfig().refinement  # min_island_px 1000
    # Reachable with the model's own 1000 px: no change.
    op, ref, curve = choose_operating_point(probs, rois, fr, refinement, 0.5)
    assert op["min_island_px"] == 1000 and ref == refinement and op["sensitivity"] == 0.5
    # No patient ids: each frame its own; 2 of 4 found: sqrt(4 / 3 * 4 * 0.5 ** 2) / 4
    assert op["calcified_patients"] == 4 and op["sensitivity_se"] == pytest.approx(np.sqrt(4 / 3) / 4)
    assert op["ceiling"] == 0.5  # at 1000 px only the two 1600-px islands survive, at any threshold
    # 0.75 needs the 576 px island: 500 px, not 250 (which would also let the 324 px one through).
    op, ref, curve = choose_operating_point(probs, rois, fr, refinement, 0.75)
    assert op["min_island_px"] == 500 and ref["min_island_px"] == 500 and op["sensitivity"] == 0.75
    assert op["ceiling"] == 0.75  # the 324-px island is still cut at 500 px
    assert op["specificity"] == 0.5  # the false 576 px island on frame 4 comes in with it
    op, ref, _ = choose_operating_point(probs, rois, fr, refinement, 1.0)
    assert op["min_island_px"] == 250 and op["sensitivity"] == 1.0
    # Brute force, as inference gates and refines at the chosen point:
    det = [evaluation.frame_roi(rois[5 * f:5 * f + 5], probs[5 * f:5 * f + 5] >= op["threshold"],
                              exposed_field(nc[f], margin_px=3), ref).any() for f in range(n)]
    assert det == [True, True, True, True, True, False]
    with pytest.raises(CacError, match=r"at most 0\.500, island sizes 1000 px.*\(--island-sizes 250,100,0\)$"):
        choose_operating_point(probs, rois, fr, refinement, 0.75, island_sizes=())
    no_island = rois.copy()
    no_island[5 * 3] = 0  # frame 3's calcium gets no island at all: no island size can find it
    with pytest.raises(CacError, match=r"of 1\.000 .*at most 0\.750, island sizes 1000, 500, 250, 0 px\); "
                                       r"choose a lower --sensitivity$"):
        choose_operating_point(probs, no_island, fr, refinement, 1.0, island_sizes=(500, 250, 0))
    with pytest.raises(CacError, match="calcium"):
        choose_operating_point(probs, rois, _Frames(nc, np.zeros_like(calcium)), refinement, 0.5)


def test_cine_gate_point_keeps_the_sensitivity_and_sets_calcium_free_cines_apart():
    """Two cines of three frames: calcified (gate scores 0.9, 0.3, 0.25) and calcium-free with one strong false
    positive (0.8, 0.1, 0.1).  Finding every calcified frame by the frame alone flags a calcium-free frame; the
    cine evidence (mean most-probable patch) takes the whole calcium-free cine out at the same sensitivity."""
    from CACIdentifierLib.field import exposed_field
    from CACIdentifierLib.temporal import cine_evidence
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.calibrate import choose_operating_point, frame_detection_curve

    n = 6
    nc = np.full((n, 512, 512), 0.5, np.float32)
    calcium = np.zeros((n, 512, 512), bool)
    calcium[:3, 100:104, 100:104] = True
    rois = np.zeros((5 * n, 256, 256), np.float32)
    rois[::5, 80:120, 80:120] = 0.9  # every frame's patch 0 gets a 1600 px island once gated
    probs = np.full(5 * n, 0.05, np.float32)
    probs[::5] = [0.9, 0.3, 0.25, 0.8, 0.1, 0.1]

    class Cines(_Frames):
        acquisition = ["calc"] * 3 + ["free"] * 3

    fr = Cines(nc, calcium)
    refinement = training.TrainConfig().refinement
    curve = frame_detection_curve(probs, rois, fr, refinement)
    np.testing.assert_allclose(curve["gate_scores"], probs[::5])
    op, ref, _ = choose_operating_point(probs, rois, fr, refinement, 1.0)
    assert op["specificity"] == pytest.approx(2 / 3) and "cine_threshold" not in op
    op, ref, _ = choose_operating_point(probs, rois, fr, refinement, 1.0, cine_gate=True)
    assert op["sensitivity"] == 1.0 and op["specificity"] == 1.0
    # halfway down to the next lower candidates: gate score 0.1 below 0.25, cine evidence 0.333 below 0.483
    assert op["threshold"] == pytest.approx(0.175) and op["cine_threshold"] == pytest.approx(0.4083, abs=1e-3)
    # Brute force, as evaluate (and inference) apply the two thresholds:
    gate = cine_evidence(probs.reshape(n, 5).max(1), fr.acquisition) >= op["cine_threshold"]
    det = [bool(gate[f]) and evaluation.frame_roi(rois[5 * f:5 * f + 5], probs[5 * f:5 * f + 5] >= op["threshold"],
                                                  exposed_field(nc[f], margin_px=3), ref).any() for f in range(n)]
    assert det == [True, True, True, False, False, False]
    rois[5 * 2] = 0  # the third calcified frame's decoder is silent: no pair reaches every frame
    with pytest.raises(CacError, match="at most 0.667"):
        choose_operating_point(probs, rois, fr, refinement, 1.0, island_sizes=(), cine_gate=True)


def test_sensitivity_standard_error_is_the_spread_over_sets_of_patients():
    """Simulated patients whose frames share a detectability: the standard error of one set of 40 patients against
    the sensitivity's spread over 300 such sets, and against the binomial formula for independent frames.  A
    frame-level standard error (the patients ignored) would be far too small."""
    from CACTrainerLib.calibrate import sensitivity_standard_error

    rng = np.random.default_rng(2)
    n, per, t = 40, 6, 0.5
    sens, se, naive = [], [], []
    for _ in range(300):
        g = (rng.normal(1.0, 1.0, (n, 1)) + 0.5 * rng.normal(size=(n, per))).ravel()
        found, groups = g >= t, np.repeat(np.arange(n), per)
        s_i, k = sensitivity_standard_error(found, np.ones(found.size, bool), groups)
        assert k == n
        p = found.mean()
        sens.append(p)
        se.append(s_i)
        naive.append(np.sqrt(p * (1 - p) / found.size))
    assert 0.85 < np.median(se) / np.std(sens) < 1.15
    assert np.median(naive) < 0.7 * np.std(sens)
    # Every frame its own patient: the binomial standard error (with the small-sample factor k / (k - 1)).
    found = rng.random(500) < 0.9
    s_i, k = sensitivity_standard_error(found, np.ones(500, bool), np.arange(500))
    p = found.mean()
    assert k == 500 and s_i == pytest.approx(np.sqrt(p * (1 - p) / 499))
    # Calcium-free frames do not count; one calcified patient has no spread to measure.
    assert sensitivity_standard_error([1, 0, 1], [1, 1, 0], ["a", "a", "b"]) == (None, 1)


def _marking_model():
    """A decoder that marks every gated patch, so the classifier's threshold alone decides which frames get an ROI."""
    torch.manual_seed(1)
    marking = ResUNet18(**SMALL)
    with torch.no_grad():
        marking.decoder.out.bias.fill_(8.0)
    return marking


@pytest.fixture(scope="module")
def frames(setup):
    """The dataset's frames, built once for the tests that score a model on them."""
    from CACTrainerLib.dataset import build_frameset

    return build_frameset(setup / "ds", frames_per_acquisition=6)


def _detection(fs, path, threshold=None, calibration=None):
    """Frame detection of a model file on ``fs`` through evaluation.evaluate (the inference path), at its
    card's threshold and calibration unless given."""
    from CACTrainerLib import evaluation, training

    model, meta = load_model(path)
    # fp32, as calibrate scores: bf16 autocast moves probabilities by a few thousandths and can flip a frame there.
    cfg = training.TrainConfig(classifier_threshold=meta["classifier_threshold"] if threshold is None else threshold,
                               amp=False)
    cal = meta.get("calibration") if calibration is None else calibration
    return evaluation.evaluate(model, fs, cfg, torch.device("cpu"), calibration=cal)["detection"]


def test_cac_calibrate_sensitivity_sets_the_threshold_that_reaches_it(setup, frames, capsys):
    save_model(setup / "marking.safetensors", _marking_model(), {"classifier_threshold": 0.5}, dtype=None)
    out = setup / "op.safetensors"
    code = main(["calibrate", str(setup / "marking.safetensors"), "--dataset", str(setup / "ds"), "--out", str(out),
                 "--sensitivity", "0.9"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "operating point: classifier threshold" in captured.out
    assert (setup / "op.operating_point.png").stat().st_size > 1000
    model, meta = load_model(out)
    op = meta["operating_point"]
    # Four patients, two with calcium: the spread over them is printed and kept in the card.
    assert op["calcified_patients"] == 2 and op["sensitivity_se"] is not None
    assert f"standard error {op['sensitivity_se']:.3f} over 2 patients with calcium" in captured.out
    assert 0.9 <= op["sensitivity"] <= op["ceiling"] <= 1.0 and f"at most {op['ceiling']:.3f} at any" in captured.out
    assert meta["classifier_threshold"] == op["threshold"] and op["sensitivity"] >= 0.9
    assert op["threshold"] > 0.0 and op["positive_frames"] > 0
    # Independently, through evaluation.evaluate (the inference path) at the card's threshold and calibration:
    assert _detection(frames, out)["sensitivity"] == pytest.approx(op["sensitivity"])
    assert main(["calibrate", str(setup / "m.safetensors"), "--dataset", str(setup / "ds"), "--out",
                 str(setup / "x.safetensors"), "--sensitivity", "1.5"]) == 2
    assert "--sensitivity" in capsys.readouterr().err
    assert main(["calibrate", str(setup / "m.safetensors"), "--dataset", str(setup / "ds"), "--out",
                 str(setup / "x.safetensors"), "--sensitivity", "0.9", "--island-sizes", "500,big"]) == 2
    err = capsys.readouterr().err
    assert "--island-sizes" in err and "Traceback" not in err
    # Options that would change nothing here are refused, not ignored.
    for extra, word in ((["--seed", "3"], "--phantom-pool"), (["--island-sizes", "250"], "--sensitivity"),
                        (["--cine-gate"], "--sensitivity"), (["--roi-patches", "2"], "--sensitivity")):
        assert main(["calibrate", str(setup / "m.safetensors"), "--dataset", str(setup / "ds"), "--out",
                     str(setup / "y.safetensors"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"cac: error: {extra[0]}") and word in err and err.count("\n") == 1
    assert not (setup / "y.safetensors").exists()
    # With --cine-gate the card gets a cine threshold, and evaluate (the inference path) reaches the sensitivity.
    gated = setup / "gated.safetensors"
    code = main(["calibrate", str(setup / "marking.safetensors"), "--dataset", str(setup / "ds"), "--out", str(gated),
                 "--sensitivity", "0.9", "--cine-gate"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cine threshold" in captured.out
    model, meta = load_model(gated)
    assert meta["cine_threshold"] == meta["operating_point"]["cine_threshold"]
    from CACTrainerLib import evaluation, training

    cfg = training.TrainConfig(classifier_threshold=meta["classifier_threshold"], cine_threshold=meta["cine_threshold"],
                               refinement=meta["refinement"], amp=False)
    ev = evaluation.evaluate(model, frames, cfg, torch.device("cpu"), calibration=meta["calibration"])
    assert ev["detection"]["sensitivity"] == pytest.approx(meta["operating_point"]["sensitivity"])
    assert ev["detection"]["specificity"] == pytest.approx(meta["operating_point"]["specificity"])
    # With --roi-patches the card keeps the ROI to the most probable patches, and the point is chosen with it.
    few = setup / "few.safetensors"
    code = main(["calibrate", str(setup / "marking.safetensors"), "--dataset", str(setup / "ds"), "--out", str(few),
                 "--sensitivity", "0.9", "--roi-patches", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["roi_patches"] == 1
    model, meta = load_model(few)
    assert meta["roi_patches"] == 1
    ev = evaluation.evaluate(model, frames, dataclasses.replace(training.card_config(meta), amp=False),
                             torch.device("cpu"), calibration=meta["calibration"])
    assert ev["detection"]["sensitivity"] == pytest.approx(meta["operating_point"]["sensitivity"])
    assert ev["detection"]["specificity"] == pytest.approx(meta["operating_point"]["specificity"])
    # Calibrating the gated model again without a new point drops the cine threshold (chosen on old probabilities).
    ungated = setup / "gated_again.safetensors"
    assert main(["calibrate", str(gated), "--dataset", str(setup / "ds"), "--out", str(ungated)]) == 0
    dropped = load_model(ungated)[1]
    assert "cine_threshold" not in dropped and "cine_threshold" not in dropped["operating_point"]


def test_cac_calibrate_method_none_keeps_the_models_calibration(setup, frames, capsys):
    # "Statistics only": refreshing the statistics (or the operating point) of a calibrated model on new
    # data must not drop its calibration, which would change every decision identify makes.
    platt = {"temperature": 2.5, "bias": -1.5, "method": "platt", "data": "earlier held-out data"}
    src, out = setup / "platt.safetensors", setup / "none.safetensors"
    save_model(src, _marking_model(), {"classifier_threshold": 0.5, "calibration": platt}, dtype=None)
    code = main(["calibrate", str(src), "--dataset", str(setup / "ds"), "--out", str(out), "--method", "none",
                 "--sensitivity", "0.9"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "calibration: platt (the model's own, kept), temperature 2.500, bias -1.500" in captured.out
    model, meta = load_model(out)
    assert meta["calibration"] == platt and len(meta["feature_statistics"]["mean"]) == model.fc.in_features
    # The operating point was chosen on the kept calibration: the inference path with it reaches the same sensitivity.
    op = meta["operating_point"]
    assert _detection(frames, out)["sensitivity"] == pytest.approx(op["sensitivity"]) and op["sensitivity"] >= 0.9


def test_calibrating_again_keeps_the_operating_points_decisions(setup, frames, capsys):
    # A model with an operating point calibrated again without --sensitivity kept its threshold on the new
    # scale, so other frames got an ROI than the card's operating point claims; the threshold is carried.
    save_model(setup / "mark2.safetensors", _marking_model(), {"classifier_threshold": 0.5}, dtype=None)
    first, again = setup / "first.safetensors", setup / "again.safetensors"
    assert main(["calibrate", str(setup / "mark2.safetensors"), "--dataset", str(setup / "ds"), "--out", str(first),
                 "--sensitivity", "0.9"]) == 0
    capsys.readouterr()
    assert main(["calibrate", str(first), "--dataset", str(setup / "ds"), "--out", str(again), "--method",
                 "temperature"]) == 0
    # The carried point's figures are the first calibration's, and the summary says so.
    assert "carried over, not measured here" in capsys.readouterr().out
    m1, m2 = load_model(first)[1], load_model(again)[1]
    d1, d2 = _detection(frames, first), _detection(frames, again)
    assert m2["calibration"]["method"] == "temperature" and m2["calibration"]["bias"] == 0.0
    assert m2["classifier_threshold"] != m1["classifier_threshold"]  # another scale ...
    assert m2["operating_point"]["threshold"] == m2["classifier_threshold"]
    assert (d2["tp"], d2["fp"]) == (d1["tp"], d1["fp"])  # ... the same decisions
    stale = _detection(frames, again, threshold=m1["classifier_threshold"])
    assert (stale["tp"], stale["fp"]) != (d1["tp"], d1["fp"])  # what keeping the old threshold did


def test_cac_calibrate_warns_when_the_data_trained_the_model(setup, capsys):
    """The card's training record (cac train) shows a calibration on the model's own data: one warning, no refusal."""
    import hashlib

    from cac.cli_calibrate import training_overlap

    fingerprint = hashlib.sha256((setup / "ds" / "manifest.json").read_bytes()).hexdigest()[:16]
    torch.manual_seed(2)
    own = setup / "own.safetensors"
    record = {"dataset": "ds", "manifest_sha256_16": fingerprint, "val_patients": ["P004"]}
    save_model(own, ResUNet18(**SMALL), {"classifier_threshold": 0.5, "training": {"data": record}}, dtype=None)
    code = main(["calibrate", str(own), "--dataset", str(setup / "ds"), "--out", str(setup / "own_cal.safetensors")])
    err = capsys.readouterr().err
    assert code == 0, err
    # (the phantom's own warnings, e.g. about cardiac periodicity, may come too)
    warnings = [line for line in err.splitlines() if "calibration patients" in line]
    assert len(warnings) == 1 and warnings[0].startswith("cac: warning: ") and "Traceback" not in err, err
    assert ("4 of the 4 calibration patients are in the data the model was trained on (3 trained it, 1 chose its "
            "checkpoints, the same dataset") in warnings[0]
    assert (setup / "own_cal.safetensors").exists()
    # The operating point's figures then do not call those frames held out.
    code = main(["calibrate", str(own), "--dataset", str(setup / "ds"), "--out", str(setup / "own_op.safetensors"),
                 "--sensitivity", "0.5"])
    out = capsys.readouterr().out
    assert code == 0 and "operating point:" in out
    assert "held-out" not in out and "some of them the model's training data" in out, out
    # Another dataset (another manifest) whose ids match the validation patients: said, with the doubt.
    other = {**record, "manifest_sha256_16": "0" * 16, "val_patients": ["P002", "P009"]}
    line = training_overlap({"training": {"data": other}}, ["P001", "P002", "P002", "P003"], setup / "ds")
    assert line.startswith("1 of the 3 calibration patients have the ids of the patients that chose") and "P002" in line
    # No overlap, or no training record (a model not made by cac train): nothing to say.
    assert training_overlap({"training": {"data": {**other, "val_patients": ["P007"]}}}, ["P001"], setup / "ds") is None
    assert training_overlap({"classifier_threshold": 0.5}, ["P001"], setup / "ds") is None
    code = main(["calibrate", str(setup / "m.safetensors"), "--dataset", str(setup / "ds"), "--out",
                 str(setup / "plain_cal.safetensors")])
    err = capsys.readouterr().err
    assert code == 0 and "calibration patients" not in err, err


def test_calibrate_on_a_processed_phantom_pool(setup, capsys):
    """--display-processing: the statistics of a pool whose cines are all processed differ from the same pool plain."""
    m = str(setup / "m.safetensors")
    assert main(["calibrate", m, "--dataset", str(setup / "ds"), "--display-processing", "1",
                 "--out", str(setup / "dp.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cac: error: --display-processing") and "--phantom-pool" in err and err.count("\n") == 1
    assert main(["calibrate", m, "--phantom-pool", "1", "--display-processing", "1.5",
                 "--out", str(setup / "dp.safetensors")]) == 2
    assert "[0, 1]" in capsys.readouterr().err and not (setup / "dp.safetensors").exists()
    stats = {}
    for p in ("0", "1"):
        out = setup / f"dp{p}.safetensors"
        assert main(["calibrate", m, "--phantom-pool", "1", "--seed", "7", "--method", "none",
                     "--display-processing", p, "--out", str(out), "--json"]) == 0
        capsys.readouterr()
        stats[p] = load_model(out)[1]["feature_statistics"]
    assert stats["1"]["data"].endswith(", display processing 1") and "display" not in stats["0"]["data"]
    assert stats["0"]["frames"] == stats["1"]["frames"]  # the same patient and frames ...
    assert not np.allclose(stats["0"]["mean"], stats["1"]["mean"])  # ... seen through the processing
