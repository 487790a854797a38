"""Issue 12: exposed field, measures that cannot be gamed, calibration, temporal filter, recipes,
domain randomisation, and a tiny default-recipe training that beats chance on a held-out patient."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from CACIdentifierLib import calibration, metrics
from CACIdentifierLib.field import exposed_field
from CACIdentifierLib.temporal import beats_from_phase, temporal_filter
from CACTrainerLib.phantom import PhantomParams, generate_acquisition
from CACTrainerLib.phantom_domain import randomized_params

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


# -- exposed field ---------------------------------------------------------------------------------


@pytest.mark.parametrize("patient", [0, 1])
def test_field_matches_the_phantom_collimator(patient):
    p = PhantomParams(rows=128, cols=128, n_frames=12, collimator_prob=1.0)
    acq = generate_acquisition(p, seed=5, patient=patient)
    top, bottom, left, right, corner = acq.truth["collimator"]
    field = exposed_field(acq.frames)
    rows, cols = field.shape
    # Deep inside the blades: never field.  Well inside the opening (away from the rounded corners): field.
    assert not field[: max(0, int(top) - 2)].any()
    assert not field[rows - max(0, int(bottom) - 2):].any() if bottom > 3 else True
    assert not field[:, : max(0, int(left) - 2)].any()
    r0, r1 = int(top + corner) + 4, int(rows - bottom - corner) - 4
    c0, c1 = int(left + corner) + 4, int(cols - right - corner) - 4
    assert field[r0:r1, c0:c1].all()


def test_field_is_everything_without_collimator():
    p = PhantomParams(rows=128, cols=128, n_frames=12, collimator_prob=0.0)
    acq = generate_acquisition(p, seed=5, patient=0)
    assert exposed_field(acq.frames).mean() > 0.97


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
def test_field_on_real_cines():
    from CACIdentifierLib.cine_io import load_cine

    # The Rubo RCA run has a round shutter: corners dark, centre exposed; the LCA frames are nearly
    # uncollimated; the biplane run has a circular field of about 60 % of the frame.
    rca = exposed_field(load_cine(DATA / "xa" / "rubo-rca-ecg-96f.dcm").frames)
    assert not rca[:10, :10].any() and not rca[-10:, -10:].any() and rca[200:300, 200:300].all()
    assert 0.6 < rca.mean() < 0.9
    lca = exposed_field(load_cine(DATA / "frames" / "lca-clinical-37f", spacing_mm=0.308, frame_time_ms=66.7).frames)
    assert lca.mean() > 0.9
    bi = exposed_field(load_cine(DATA / "xa" / "rubo-biplane-b-ecg-17f.dcm").frames)
    assert 0.45 < bi.mean() < 0.7 and bi[256, 256]


def test_field_rejects_bad_shapes():
    with pytest.raises(ValueError):
        exposed_field(np.zeros((3, 4)))


# -- measures ------------------------------------------------------------------------------------


def test_roi_precision_area_and_detection_by_hand():
    pred = np.zeros((10, 10), bool)
    pred[0:4, 0:5] = True  # 20 px
    ref = np.zeros((10, 10), bool)
    ref[0:2, :] = True
    assert metrics.roi_precision(pred, ref) == pytest.approx(10 / 20)
    assert metrics.roi_precision(np.zeros((3, 3), bool), ref[:3, :3]) is None
    field = np.ones((10, 10), bool)
    field[:, 8:] = False  # 80 px
    a = metrics.roi_area(pred, (0.2, 0.5), field)
    assert a == {"area_px": 20, "area_mm2": pytest.approx(2.0), "area_pct_field": pytest.approx(25.0)}
    d = metrics.frame_detection([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert (d["tp"], d["fp"], d["fn"], d["tn"]) == (2, 1, 1, 1)
    assert d["sensitivity"] == pytest.approx(2 / 3) and d["specificity"] == pytest.approx(1 / 2)


def test_within_position_auc_does_not_credit_knowing_where_calcium_usually_is():
    """A scorer that knows only the patch's position beats chance on the pooled AUC, not within the positions;
    each position's AUC is the pooled formula on that position's patches."""
    rng = np.random.default_rng(11)
    rate = np.array([0.5, 0.05, 0.05, 0.05, 0.6])
    y = rng.random((400, 5)) < rate
    position_only = np.broadcast_to(rate, y.shape) + rng.normal(0, 1e-3, y.shape)  # blind to the image
    assert metrics.roc_auc(y.ravel(), position_only.ravel()) > 0.75
    r = metrics.within_position_auc(y.ravel(), position_only.ravel())
    assert r["mean"] == pytest.approx(0.5, abs=0.06)
    seeing = y + rng.normal(0, 0.8, y.shape)  # sees the calcium, not the place
    r = metrics.within_position_auc(y.ravel(), seeing.ravel())
    assert r["per_position"][4] == metrics.roc_auc(y[:, 4], seeing[:, 4]) and r["mean"] > 0.7
    assert metrics.within_position_auc([0] * 10, list(range(10)))["mean"] is None


def test_a_frame_covering_roi_scores_iom_one_but_not_precision():
    truth = np.zeros((64, 64), bool)
    truth[30:33, 30:33] = True
    everything = np.ones_like(truth)
    assert metrics.iom(everything, truth) == 1.0  # the measure that can be gamed
    ev = metrics.evaluate_masks(everything[None], truth[None], (0.3, 0.3))
    assert ev["summary"]["roi_area_pct_field"]["median"] == pytest.approx(100.0)
    assert ev["summary"]["roi_precision"]["median"] < 0.4


def test_auc_against_sklearn_formula():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = rng.normal(size=300) + y
    # Direct pair count.
    pos, neg = s[y], s[~y]
    direct = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert metrics.roc_auc(y, s) == pytest.approx(direct)
    assert metrics.roc_auc(np.ones(4), np.arange(4)) is None


# -- calibration ---------------------------------------------------------------------------------


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-true_logit))
    overconfident = 2.5 * true_logit
    t = calibration.fit_temperature(overconfident, y)
    assert t == pytest.approx(2.5, rel=0.1)
    before = calibration.expected_calibration_error(1 / (1 + np.exp(-overconfident)), y)
    after = calibration.expected_calibration_error(1 / (1 + np.exp(-overconfident / t)), y)
    assert after < before / 3
    rel = calibration.reliability(1 / (1 + np.exp(-true_logit)), y)
    assert sum(b["n"] for b in rel["bins"]) == 20000 and rel["ece"] < 0.02


def test_platt_scaling_moves_the_balanced_prior_to_the_prevalence():
    """A classifier trained on balanced batches says 50 % where the prevalence is 20 %: the bias of
    Platt scaling moves it, and p >= 0.5 becomes the Bayes decision (fewer errors than before)."""
    rng = np.random.default_rng(3)
    y = rng.random(20000) < 0.2
    score = np.where(y, 1.0, -1.0) * 1.5 + rng.normal(0, 1.5, y.size)  # balanced-prior logit
    t, b = calibration.fit_platt(score, y)
    assert b == pytest.approx(np.log(0.2 / 0.8), abs=0.15) and t == pytest.approx(1.0 / 1.333, rel=0.15)
    p_raw = 1 / (1 + np.exp(-score))
    p_cal = calibration.apply(p_raw, {"temperature": t, "bias": b})
    assert ((p_cal >= 0.5) != y).mean() < ((p_raw >= 0.5) != y).mean() - 0.03
    assert calibration.expected_calibration_error(p_cal, y) < calibration.expected_calibration_error(p_raw, y) / 3
    assert np.array_equal(calibration.apply(p_raw, None), p_raw)


# -- temporal filter -----------------------------------------------------------------------------


def test_temporal_filter_keeps_recurring_and_drops_flickering_blobs():
    n, size = 24, 64
    phase = (np.arange(n) % 8) / 8.0  # three beats of eight frames
    masks = np.zeros((n, size, size), bool)
    for f in range(n):
        if phase[f] == 0.25:  # calcium seen at phase 0.25 in every beat, moving a little
            masks[f, 20 + f % 3: 26 + f % 3, 20:26] = True
    masks[9, 45:50, 45:50] = True  # one flickering blob (beat 1, phase 0.125)
    out = temporal_filter(masks, list(range(n)), phase)
    assert all(out[f, 20:29, 20:26].any() for f in range(n) if phase[f] == 0.25)
    assert not out[9].any()
    assert list(beats_from_phase(phase)[[0, 8, 16]]) == [0, 1, 2]


def test_temporal_filter_leaves_frames_without_partner():
    masks = np.zeros((3, 16, 16), bool)
    masks[1, 4:8, 4:8] = True
    out = temporal_filter(masks, [0, 1, 2], np.array([0.1, 0.5, 0.9]))
    assert out[1].any()


# -- domain randomisation -------------------------------------------------------------------------


def test_randomised_phantom_is_deterministic_and_has_metal_and_gamma():
    p = randomized_params(np.random.default_rng(4), n_frames=10, size=128)
    p.metal_prob, p.display = 1.0, "gamma"
    a = generate_acquisition(p, seed=2, patient=3, calcium_free=False)
    b = generate_acquisition(p, seed=2, patient=3, calcium_free=False)
    assert np.array_equal(a.frames, b.frames)
    assert a.truth["metal"]["heart_metal_objects"] + int(a.truth["metal"]["sternal_wires"]) >= 0
    # Metal is dense and not calcium: frames differ from the same acquisition without metal, calcium does not.
    q = PhantomParams(**{**p.__dict__, "metal_prob": 0.0, "display": "log"})
    c = generate_acquisition(q, seed=2, patient=3, calcium_free=False)
    assert np.array_equal(a.calcium, c.calcium)
    assert not np.array_equal(a.frames, c.frames)


def test_default_phantom_unchanged_by_the_new_parameters():
    p = PhantomParams(rows=64, cols=64, n_frames=8)
    assert p.metal_prob == 0.0 and p.display == "log" and tuple(p.calcium_shape_probs) == (1.0, 0.0, 0.0)
    a = generate_acquisition(p, seed=1, patient=0)
    assert a.truth["metal"] is None


@pytest.mark.parametrize("shape_probs", [(0, 1, 0), (0, 0, 1)])
def test_tram_and_arc_calcium_shapes(shape_probs):
    p = PhantomParams(rows=128, cols=128, n_frames=8, calcium_shape_probs=shape_probs, calcium_count_range=(2, 2))
    a = generate_acquisition(p, seed=3, patient=0, calcium_free=False)
    assert a.calcium.any()


# -- recipes and training ------------------------------------------------------------------------


def test_recipes():
    from CACTrainerLib.recipes import RECIPES, recipe_config
    from CACTrainerLib.training import lr_factor

    paper = recipe_config("paper")
    assert (paper.epochs1, paper.epochs2, paper.lr1, paper.lr2, paper.batch_size, paper.aux_weight) == (
        100, 100, 1e-4, 1e-3, 32, 0.0)
    d = recipe_config("default", epochs1=5)
    assert d.aux_weight > 0 and d.epochs1 == 5 and d.lr_schedule == "cosine"
    assert set(RECIPES) == {"paper", "default"}
    f = [lr_factor(s, 200, d) for s in range(200)]
    assert f[0] < f[9] and max(f) == pytest.approx(1.0) and f[-1] == pytest.approx(0.01)
    assert all(lr_factor(s, 50, paper) == 1.0 for s in range(50))


def test_hard_negative_mining_prefers_high_loss_negatives():
    from CACTrainerLib.dataset import epoch_indices

    labels = np.zeros(1000)
    labels[:50] = 1
    scores = np.full(1000, 0.01)
    scores[900:] = 5.0  # the hard ones
    ids = epoch_indices(labels, np.random.default_rng(0), hard_scores=scores, hard_fraction=1.0)
    negs = ids[labels[ids] == 0]
    assert len(negs) == 50 and (negs >= 900).mean() > 0.8
    ids = epoch_indices(labels, np.random.default_rng(0))
    assert (ids[labels[ids] == 0] >= 900).mean() < 0.4


def test_unseen_negatives_weigh_the_scored_negatives_mean():
    from CACIdentifierLib.errors import CacError
    from CACTrainerLib.dataset import epoch_indices
    from CACTrainerLib.training import TrainConfig, train

    labels = np.zeros(200)
    labels[:10] = 1
    scores = np.full(200, 0.05)
    scores[190:] = 5.0  # the hard ones
    scores[100:190] = np.nan  # not drawn yet
    filled = scores.copy()
    neg = labels == 0
    filled[np.isnan(filled)] = np.nanmean(scores[neg])
    for seed in range(5):  # the same draw as with the NaNs replaced by the scored negatives' mean
        a = epoch_indices(labels, np.random.default_rng(seed), hard_scores=scores, hard_fraction=1.0)
        b = epoch_indices(labels, np.random.default_rng(seed), hard_scores=filled, hard_fraction=1.0)
        np.testing.assert_array_equal(a, b)
    # with every negative unscored, the draw is uniform (weights 1), as with all scores equal
    none = np.where(neg, np.nan, 0.3)
    a = epoch_indices(labels, np.random.default_rng(0), hard_scores=none, hard_fraction=1.0)
    b = epoch_indices(labels, np.random.default_rng(0), hard_scores=np.ones(200), hard_fraction=1.0)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CacError, match="hard_negative_init"):
        train(None, None, TrainConfig(hard_negative_init="zero"), "unused")


def test_batch_source_same_batches_with_and_without_workers():
    import torch
    from CACTrainerLib import dataset as D
    from CACTrainerLib.training import BatchSource, TrainConfig

    rng = np.random.default_rng(0)
    fs = D.FrameSet(rng.random((2, 512, 512)).astype(np.float16), rng.random((2, 512, 512)).astype(np.float16),
                    np.zeros((2, 512, 512), bool), np.zeros((2, 512, 512), bool), np.zeros((2, 5), np.float32),
                    np.full((2, 2), 0.3), np.array([0, 1]), np.array([5, 6]), np.zeros((2, 5), bool),
                    np.zeros((2, 512, 512), np.float16), ["a", "a"], ["p", "p"])
    batches = [np.array([0, 3]), np.array([5, 9])]
    a = list(BatchSource(fs, batches, TrainConfig(workers=0), 1, 0).iterate(torch.device("cpu")))
    b = list(BatchSource(fs, batches, TrainConfig(workers=2), 1, 0).iterate(torch.device("cpu")))
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x["nc"]), y["nc"].numpy())


@pytest.mark.slow
def test_tiny_default_recipe_beats_chance_on_a_held_out_patient(tmp_path):
    """Default recipe, tiny width, a few epochs on strong calcium: patch AUC on an unseen patient > 0.5."""
    import torch
    from CACTrainerLib import dataset as D
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.recipes import recipe_config

    torch.set_num_threads(2)
    # The data of test_training's tiny run (which the paper-like configuration learns), patient 3 held out.
    p = PhantomParams(n_frames=40, calcium_mu_per_mm=0.3)
    sets = [D.frames_from_acquisition(generate_acquisition(p, seed=3, patient=k, calcium_free=k == 2),
                                      acquisition=f"P{k}A1", patient=f"P{k}", frames_per_acquisition=4)
            for k in range(4)]
    train, test = D.FrameSet.concat(sets[:3]), sets[3]
    cfg = recipe_config("default", epochs1=8, epochs2=1, batch_size=16, architecture={"width": 16},
                        samples_per_epoch=128, seed=0, num_threads=2)
    res = training.train(train, None, cfg, tmp_path / "run")
    ev = evaluation.evaluate(res.model, test, cfg, torch.device("cpu"))
    assert ev["auc"] is not None and ev["auc"] > 0.5, ev["auc"]
    assert "roi_area_pct_field_median" in ev and ev["detection"]["tp"] + ev["detection"]["fn"] > 0


def test_per_cine_measures_by_hand():
    """The benchmarks' per-cine medians and frame sensitivity on a hand-made evaluation of two cines."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_protocol import per_cine

    class Frames:  # the one field of a FrameSet that per_cine reads
        acquisition = ["a", "a", "a", "a", "b", "b"]

    rows = [{"acquisition": "a", "iom": 1.0, "hd_mm": 2.0, "roi_precision": 0.5},
            {"acquisition": "a", "iom": 0.0, "hd_mm": 10.0, "roi_precision": 1.0},
            {"acquisition": "a", "iom": None, "hd_mm": None, "roi_precision": None}]
    ev = {"frames": rows,
          "frame_truth_any": [1, 1, 1, 0, 0, 0],
          "frame_pred_any": [1, 0, 1, 1, 0, 1],
          "frame_area_pct_field": [1.0, 0.0, 3.0, 2.0, 0.0, 5.0]}
    out = per_cine(ev, Frames())
    a, b = out["a"], out["b"]
    assert not a["calcium_free"] and b["calcium_free"]
    assert a["frame_sensitivity"] == pytest.approx(2 / 3)  # 2 of the 3 frames with calcium get an ROI
    assert b["frame_sensitivity"] is None
    assert a["iom"] == pytest.approx(0.5) and a["hd_mm"] == pytest.approx(6.0)
    assert a["roi_area_pct_field"] == pytest.approx(1.5) and b["roi_area_pct_field"] == pytest.approx(2.5)
    assert a["frames_with_roi_pct"] == pytest.approx(75.0) and b["frames_with_roi_pct"] == pytest.approx(50.0)


def test_gpu_protocol_overrides_take_the_field_types():
    """``--set`` values become the TrainConfig field's type; an architecture is a JSON object merged in."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from CACTrainerLib.recipes import recipe_config
    from gpu_protocol import overrides

    cfg = recipe_config("default", architecture={"width": 8})
    out = overrides(cfg, {"refresh_patients": "40", "architecture": '{"block1_pool": false}', "amp": "no"})
    assert out == {"refresh_patients": 40, "architecture": {"width": 8, "block1_pool": False}, "amp": False}
    with pytest.raises(SystemExit, match="JSON object"):
        overrides(cfg, {"architecture": "block1_pool=false"})
    with pytest.raises(SystemExit, match="no field"):
        overrides(cfg, {"nonsense": "1"})


@pytest.mark.slow
def test_gpu_protocol_script_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gp"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_protocol.py"), "--out", str(out), "--tiny",
                        "--minutes", "2", "--device", "cpu", "--recipes", "default,paper,default:stream",
                        "--set", "default:stream.refresh_patients=2"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((out / "gpu_protocol.json").read_text())
    assert {"default", "paper", "default:stream", "identify", "pools"} <= set(data)
    for name in ("default", "paper", "default:stream"):
        assert "patch_auc" in data[name]["test"] and "calcium_free_frames_with_roi_pct" in data[name]["test"]
    # the stream variant generated new patients between its epochs, and its budget counted them
    stream = data["default:stream"]
    assert stream["config"]["refresh_patients"] == 2 and stream["speed"]["probe"]["generate"] > 0
    assert all("data_seconds" in h for h in stream["history"][1:])
    assert "default:stream vs default" in data["wilcoxon"]
    assert (out / "default.safetensors").exists() and (out / "gpu_protocol.md").exists()


def test_cac_phantom_randomize_writes_varied_domains(tmp_path):
    from cac.cli import main

    out = tmp_path / "ds"
    assert main(["phantom", str(out), "--patients", "3", "--frames", "10", "--size", "96", "--randomize"]) == 0
    truths = [json.loads(p.read_text()) for p in sorted(out.glob("P*/A01/truth.json"))]
    assert len(truths) == 3
    # Each patient's domain is drawn: dose and calcium contrast differ between patients.
    photons = {t["params"]["photons"] for t in truths}
    assert len(photons) == 3 and all(250 <= x <= 6000 for x in photons)


def test_cac_phantom_randomize_keeps_the_settings_it_does_not_draw(tmp_path, capsys):
    # --randomize once rebuilt every acquisition's settings from the defaults: --side, --heart-rate,
    # --contrast ... were dropped without a word, and options it draws (--bits) were ignored.
    from cac.cli import main

    out = tmp_path / "ds"
    assert main(["phantom", str(out), "--patients", "2", "--frames", "10", "--size", "96", "--randomize",
                 "--side", "right", "--heart-rate", "61", "62", "--contrast", "0.2", "--seed", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["randomize"] is True
    truths = [json.loads(p.read_text()) for p in sorted(out.glob("P*/A01/truth.json"))]
    for t in truths:
        assert t["side"] == "right" and 61 <= t["heart_rate_bpm"] <= 62 and t["params"]["contrast_mu_per_mm"] == 0.2
    assert len({t["params"]["photons"] for t in truths}) == 2  # still drawn per patient
    # The fields behind the refused options are the ones drawn over a base; the others come from it.
    from CACTrainerLib.phantom import PhantomParams
    from CACTrainerLib.phantom_domain import DRAWN, randomized_params

    base = PhantomParams(bits=10, photons=99.0, calcium_count_range=(7, 9), calcium_mu_per_mm=0.9,
                         annotator_min_snr=20.0, heart_rate_bpm_range=(61.0, 62.0), left_prob=0.0)
    plain = randomized_params(np.random.default_rng(7), n_frames=10, size=96)
    over = randomized_params(np.random.default_rng(7), n_frames=10, size=96, base=base)
    assert all(getattr(over, f) == getattr(plain, f) != getattr(base, f) for f in DRAWN)
    assert (over.heart_rate_bpm_range, over.left_prob) == ((61.0, 62.0), 0.0)
    capsys.readouterr()
    for drawn in (["--bits", "12"], ["--photons", "900", "--calcium-count", "1", "2"]):
        assert main(["phantom", str(tmp_path / "x"), "--frames", "10", "--size", "96", "--randomize", *drawn]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cac: error: --randomize draws " + drawn[0]) and err.count("\n") == 1
        assert not (tmp_path / "x").exists()


def _difficulty():
    from benchmark_scripts import load

    return load("difficulty")


def test_difficulty_strata_by_hand():
    """benchmarks/difficulty.py: deposit centroids of a 1024-px cine land in the right 512-grid patches."""
    from types import SimpleNamespace

    difficulty = _difficulty()

    class Frames(SimpleNamespace):
        def __len__(self):
            return len(self.frame_index)

    deposits = [
        # (100, 100) -> (49.75, 49.75) on the 512 grid: top-left patch only.
        {"detectability": 12.0, "frames": [{"frame": 1, "visible": True, "row": 100.0, "col": 100.0},
                                           {"frame": 2, "visible": False}]},
        # (1000, 512) -> (499.75, 255.75): bottom-left only (bottom-right starts at column 256).
        {"detectability": 40.0, "frames": [{"frame": 2, "visible": True, "row": 1000.0, "col": 512.0}]},
        # Same patch as the first, weaker: the patch keeps the larger detectability.
        {"detectability": 6.0, "frames": [{"frame": 1, "visible": True, "row": 300.0, "col": 300.0}]},
    ]
    acq = SimpleNamespace(frames=np.zeros((3, 1024, 1024), np.uint8), truth={"calcifications": deposits})
    snr, rendered = difficulty.patch_strata(acq, Frames(frame_index=np.array([1, 2])))
    expected = np.full(10, np.nan)
    expected[0] = 12.0  # frame 1, patch (0, 0); (300, 300) -> (149.75, 149.75) is also in the centre patch
    expected[4] = 6.0
    expected[5 + 2] = 40.0  # frame 2, patch (256, 0)
    np.testing.assert_array_equal(snr, expected)
    np.testing.assert_array_equal(rendered, ~np.isnan(expected))

    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0], float)
    snr8 = np.array([10.0, 40.0, np.nan, np.nan, np.nan, np.nan, 3.0, np.nan])
    probs = np.array([0.5, 0.9, 0.1, 0.6, 0.2, 0.3, 0.35, 0.4])
    out = difficulty.analyse(probs, labels, snr8, ~np.isnan(snr8), np.zeros(8, bool))
    # clean negatives: 0.1, 0.6, 0.2, 0.3, 0.4; 0.5 beats four of them, the unlabelled 0.35 three
    assert out["bins"]["SNR 8-15"]["auc_vs_clean"] == pytest.approx(4 / 5)
    assert out["bins"]["SNR >= 30"]["auc_vs_clean"] == 1.0
    assert out["unlabelled_vs_clean_auc"] == pytest.approx(3 / 5) and out["unlabelled_calcium_negatives"] == 1
    # Per-patch metal: the clean negatives 0.6 and 0.4 hold metal; the positives 0.5 and 0.9 beat 0.4 twice
    # and 0.6 once (3 of 4); the other clean negatives of that (metal) cine, 0.1-0.3, lose to both.
    patch_metal = np.array([0, 0, 0, 1, 0, 0, 0, 1], bool)
    out = difficulty.analyse(probs, labels, snr8, ~np.isnan(snr8), np.ones(8, bool), patch_metal)
    assert out["clean_negatives_holding_metal"]["n"] == 2
    assert out["clean_negatives_holding_metal"]["auc_all_positives"] == pytest.approx(3 / 4)
    assert out["clean_negatives_metal_cines_patch_free"]["auc_all_positives"] == pytest.approx(1.0)
    # The same strata as masks (ab_patch_auc.py pairs models on them): the 3.0-SNR negative is unlabelled.
    strata = difficulty.negative_strata(labels, ~np.isnan(snr8), np.ones(8, bool), patch_metal)
    assert strata["unlabelled"].tolist() == [False] * 6 + [True, False]
    assert strata["holding_metal"].tolist() == patch_metal.tolist() and not strata["no_metal"].any()
    assert strata["metal_cines_patch_free"].tolist() == [False, False, True, False, True, True, False, False]


def test_separability_cine_evidence_adds_up_only_for_flickering_false_alarms():
    """benchmarks/separability.evidence: a cine's mean frame score separates cines better than single
    frames when false alarms come and go, and not at all when they recur in every frame."""
    from benchmark_scripts import load

    evidence = load("separability").evidence
    rng = np.random.default_rng(0)
    n_cines, n_frames = 20, 6
    acq = [f"c{i}" for i in range(n_cines) for _ in range(n_frames)]
    calcified = np.arange(n_cines) < 10
    labels = np.zeros((n_cines * n_frames, 5))
    labels[:, 0] = np.repeat(calcified, n_frames)  # calcium in patch 0 of every frame of a calcified cine
    # Calcium scored 0.6 +- 0.2; a false alarm 0.6 +- 0.2 in a random 30 % of the calcium-free frames.
    probs = np.full((n_cines * n_frames, 5), 0.1)
    probs[:, 0] = np.where(labels[:, 0] > 0, rng.normal(0.6, 0.2, len(acq)), 0.1)
    flicker = (labels[:, 0] == 0) & (rng.random(len(acq)) < 0.3)
    probs[flicker, 1] = rng.normal(0.6, 0.2, flicker.sum())
    r = evidence(probs.ravel(), labels.ravel(), acq)
    assert r["calcified_cines"] == 10 and r["cines"] == 20
    assert r["cine_auc"] > r["frame_auc"] + 0.1
    # The same false alarms in every frame of the cines that have one: the cine adds nothing.
    recurring = np.repeat(rng.random(n_cines) < 0.3, n_frames) & (labels[:, 0] == 0)
    probs[:, 1] = 0.1
    probs[recurring, 1] = 0.9
    probs[labels[:, 0] > 0, 0] = 0.6
    r = evidence(probs.ravel(), labels.ravel(), acq)
    assert r["cine_auc"] == pytest.approx(r["frame_auc"], abs=0.05)


def test_epoch_average_takes_the_mean_of_floating_tensors_only():
    """benchmarks/epoch_average.average_weights: weights and BatchNorm statistics averaged, counters kept."""
    import torch
    from benchmark_scripts import load

    average_weights = load("epoch_average").average_weights
    models = []
    for k in range(3):
        m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        with torch.no_grad():
            m[0].weight.fill_(float(k))
            m[1].running_mean.fill_(2.0 * k)
        m[1].num_batches_tracked.fill_(10 + k)
        models.append(m)
    avg = average_weights(models)
    assert torch.equal(avg[0].weight, torch.full((2, 3), 1.0))
    assert torch.equal(avg[1].running_mean, torch.full((2,), 2.0))
    assert int(avg[1].num_batches_tracked) == 10
    assert float(models[0][0].weight.detach()[0, 0]) == 0.0  # the inputs are left as they were


def test_separability_deposit_contrast_on_a_hand_made_frame():
    """benchmarks/separability.deposit_contrast: a disc 0.05 darker on a flat frame, a calcium-free frame skipped."""
    from benchmark_scripts import load

    deposit_contrast = load("separability").deposit_contrast

    class Frames:
        def __init__(self, nc, calcium):
            self.nc, self.calcium = nc, calcium

        def __len__(self):
            return len(self.nc)

    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 <= 9
    nc = np.full((2, 64, 64), 0.6, np.float32)
    nc[0][disc] -= 0.05
    nc[0][:, 50:] = 0.9  # far from the ring: does not count
    calcium = np.zeros((2, 64, 64), bool)
    calcium[0] = disc
    r = deposit_contrast(Frames(nc, calcium))
    assert r["frames"] == 1
    assert r["median_contrast"] == pytest.approx(0.05, abs=1e-6)
    assert r["median_ring_std"] == pytest.approx(0.0, abs=1e-6)


def test_score_variants_patch_scores_on_a_frameset():
    """benchmarks/score_variants.patch_scores: one score per patch; the identity logit is the classifier's,
    the decoder maximum a probability, and variants() turns logits into probabilities."""
    import torch
    from benchmark_scripts import load
    from CACIdentifierLib.network import ResUNet18
    from CACTrainerLib import dataset as D

    sv = load("score_variants")
    rng = np.random.default_rng(1)
    fs = D.FrameSet(rng.random((2, 512, 512)).astype(np.float16), rng.random((2, 512, 512)).astype(np.float16),
                    np.zeros((2, 512, 512), bool), np.zeros((2, 512, 512), bool), np.zeros((2, 5), np.float32),
                    np.full((2, 2), 0.3), np.array([0, 1]), np.array([5, 6]), np.zeros((2, 5), bool),
                    np.zeros((2, 512, 512), np.float16), ["a", "a"], ["p", "p"])
    torch.manual_seed(0)
    model = ResUNet18(width=8, decoder_channels=[8, 8, 8, 8, 8]).eval()
    s = sv.patch_scores(model, fs, batch_size=4)
    assert s["classifier_logit"].shape == s["decoder_max"].shape == (10,)
    b = D.make_batch(fs, [7])
    with torch.no_grad():
        direct = float(model.classify(torch.from_numpy(b["nc"]), torch.from_numpy(b["c"]))[0])
    assert s["classifier_logit"][7] == pytest.approx(direct, abs=1e-5)
    assert ((s["decoder_max"] > 0) & (s["decoder_max"] < 1)).all()
    v = sv.variants(s)
    assert v["classifier"] == pytest.approx(1 / (1 + np.exp(-s["classifier_logit"])))
    assert v["geometric_mean"] == pytest.approx(np.sqrt(v["classifier"] * v["decoder_max"]))
    # global average pooling: the classifier logit is the mean of the fc applied at each Block6 location
    assert s["location_logits"].shape == (10, 64)
    assert s["location_logits"].mean(axis=1) == pytest.approx(s["classifier_logit"], abs=1e-5)
    assert (v["location_max"] >= v["location_top16"] - 1e-7).all() and (v["location_top16"] >= v["classifier"] - 1e-7).all()
    assert not np.allclose(v["location_max"], v["classifier"])


def test_score_epochs_scores_a_checkpoint_as_its_model_file(tmp_path):
    """benchmarks/score_epochs: a training checkpoint's ``model.`` tensors scored on a fold give the figures
    of the model file they came from (separability.evidence on evaluation.predict_patches), in both modes; so
    does an epoch model of ``cac train --keep-epochs``, found by --watch under its own name."""
    import json

    import torch
    from benchmark_scripts import load
    from CACIdentifierLib.modelio import load_model, save_model
    from CACTrainerLib import evaluation, training
    from safetensors.torch import save_file

    score_epochs = load("score_epochs")
    ref = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "cac_default.safetensors"
    model, _ = load_model(ref)
    (tmp_path / "ep").mkdir()
    save_file({"model." + k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "ep" / "s1e3.safetensors"))
    out = tmp_path / "s.jsonl"
    argv = [str(ref), "--folds", "3000:2", "--threads", "1", "--out", str(out)]
    assert score_epochs.main(argv + [str(tmp_path / "ep" / "s1e3.safetensors")]) == 0
    assert score_epochs.main(argv + ["--watch", str(tmp_path / "ep"), "--epochs", "3", "--poll", "0.1"]) == 0
    (tmp_path / training.EPOCHS_DIR).mkdir()
    save_model(training.epoch_model_path(tmp_path, 1, 4), model, dtype=None)
    assert score_epochs.main(argv + ["--watch", str(tmp_path / "epochs"), "--epochs", "4", "--poll", "0.1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["seed3000"] == rows[1]["seed3000"] == rows[2]["seed3000"]
    assert rows[2]["checkpoint"].endswith("stage1_epoch004.safetensors")
    fs = load("difficulty").test_fold(2, 3000, 1)[0]
    probs = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
    expect = load("separability").evidence(probs, fs.patch_labels > 0.5, fs.acquisition)
    assert rows[0]["seed3000"] == pytest.approx(expect)
    with pytest.raises(SystemExit):
        score_epochs.main([str(ref)])  # neither checkpoints nor --watch


def test_epoch_average_saves_a_model_the_loader_reads_with_the_averaged_files_named(tmp_path):
    """benchmarks/epoch_average.save_average: the real card schema and loader accept it; REF's figures are dropped."""
    import torch
    from benchmark_scripts import load
    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.modelio import load_model, read_card, save_model
    from CACIdentifierLib.network import ResUNet18

    save_average = load("epoch_average").save_average
    ref = ResUNet18(width=8, decoder_channels=[8, 8, 8, 8, 8])
    ref_card = save_model(tmp_path / "ref.safetensors", ref,
                          {"classifier_threshold": 0.3, "metrics": {"patch_auc": 0.9}, "training": {"epochs1": 4}})
    average = ResUNet18(width=8, decoder_channels=[8, 8, 8, 8, 8])
    with torch.no_grad():
        for p in average.parameters():
            p.fill_(0.25)
    out = tmp_path / "avg.safetensors"
    save_average(out, average, ref_card, ["a/stage1_epoch003.safetensors", "a/stage1_epoch004.safetensors"], 16)
    loaded, meta = load_model(out)
    assert torch.allclose(next(loaded.parameters()), torch.tensor(0.25))
    assert meta["classifier_threshold"] == 0.3 and not meta.get("metrics")
    card = read_card(out)
    assert card["training"] == {"epochs1": 4, "weight_average": {
        "checkpoints": ["stage1_epoch003.safetensors", "stage1_epoch004.safetensors"],
        "batchnorm_recomputed_on_patients": 16}}
    with pytest.raises(CacError, match="already exists"):
        save_average(out, average, ref_card, ["x.safetensors"], 16)


def test_dose_bound_twins_differ_only_in_quantum_noise():
    """benchmarks/dose_bound.py: the photon twins keep frames and labels; the noise falls as 1/sqrt(factor)."""
    from benchmark_scripts import load

    dose_bound = load("dose_bound")
    with pytest.raises(ValueError, match="must include 1"):
        dose_bound.photon_twins(3000, 0, [2, 4])
    patient = next(p for p in range(6) if dose_bound.photon_twins(3000, p, [1], n_frames=24, size=128,
                                                                    frames_per_acquisition=2)[0][1.0].labels.any())
    twins, photons = dose_bound.photon_twins(3000, patient, [4, 1, 1e6], n_frames=24, size=128,
                                             frames_per_acquisition=2)
    assert sorted(twins) == [1.0, 4.0, 1e6] and 250 <= photons <= 6000
    ref = twins[1e6]
    for fs in twins.values():
        np.testing.assert_array_equal(fs.frame_index, ref.frame_index)
        np.testing.assert_array_equal(fs.contrast_index, ref.contrast_index)
        np.testing.assert_array_equal(fs.labels, ref.labels)
        np.testing.assert_array_equal(fs.calcium, ref.calcium)
    # The noise against the (nearly) noise-free twin: halved at 4x the photons, within the
    # per-frame normalisation and 8-bit rounding.
    noise = {k: float(np.std(twins[k].nc.astype(np.float32) - ref.nc.astype(np.float32))) for k in (1.0, 4.0)}
    assert noise[1.0] > 0.002
    assert 0.4 < noise[4.0] / noise[1.0] < 0.62


@pytest.mark.parametrize("argv", [["a", "b", "--roi-patches", "2"], ["a", "b", "--cine-gate"],
                                  ["a", "b", "--sensitivity", "0.9"]])
def test_compare_models_refuses_operating_point_options_without_calibrating(argv, capsys):
    """compare_models.py: an option of the calibrated copy's operating point, given without one, is an error."""
    from benchmark_scripts import load

    with pytest.raises(SystemExit) as stop:
        load("compare_models").main(argv)
    assert stop.value.code == 2 and "give --calibrate OUT" in capsys.readouterr().err
