"""Training data, two-stage training, checkpoints/resume, cross-validation summary, `cac train`.

The tiny runs use in-memory phantoms (helper C's generator) with few frames
and a narrow ResUNet18 (same class, ``width=16``) so that a run takes seconds
on two CPU cores; the calcium contrast of the tiny phantom is raised so that a
few dozen gradient steps suffice to learn it.
"""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from CACIdentifierLib.errors import CacError
from CACTrainerLib import crossval, phantom
from CACTrainerLib import dataset as D
from CACTrainerLib import evaluation as E
from CACTrainerLib import training as T

ARCH = {"width": 16, "decoder_channels": [32, 16, 16, 8, 8]}


@pytest.fixture(scope="module")
def tiny():
    """Four patients, one acquisition each (one without calcium), 4 paired frames each."""
    params = phantom.PhantomParams(n_frames=40, calcium_mu_per_mm=0.3)
    sets = []
    for p in range(4):
        acq = phantom.generate_acquisition(params, seed=3, patient=p, acquisition=0, calcium_free=(p == 2))
        sets.append(D.frames_from_acquisition(acq, acquisition=f"P{p}A1", patient=f"P{p}",
                                              frames_per_acquisition=4))
    return D.FrameSet.concat(sets)


def _config(**kw):
    base = dict(epochs1=8, epochs2=1, batch_size=16, lr1=1e-3, seed=0, samples_per_epoch=128,
                architecture=ARCH, num_threads=2)
    base.update(kw)
    return T.TrainConfig(**base)


def test_frameset_layout(tiny):
    from CACIdentifierLib import patches
    from CACTrainerLib import targets

    assert tiny.nc.dtype == np.float16 and tiny.nc.shape[1:] == (512, 512)
    assert len(tiny) == 16 and tiny.labels.shape == (16, 5)
    assert sorted(set(tiny.patient)) == ["P0", "P1", "P2", "P3"]
    # P2 is calcium-free: all negatives; the others have positives
    p2 = tiny.select(patients=["P2"])
    assert p2.labels.sum() == 0 and not p2.calcium.any()
    assert tiny.labels.sum() > 0
    # non-contrast frames paired with later (contrast) frames, evenly spaced
    assert (tiny.contrast_index > tiny.frame_index).all()
    # targets follow the module rules, and patches are those of inference
    f = int(np.argmax(tiny.labels.sum(1)))
    np.testing.assert_array_equal(tiny.roi[f], targets.roi_gt(tiny.calcium[f]))
    b = D.make_batch(tiny, [5 * f + p for p in range(5)])
    np.testing.assert_array_equal(b["nc"][:, 0], patches.extract_patches(tiny.nc[f].astype(np.float32)))
    np.testing.assert_array_equal(b["label"], tiny.labels[f])


def test_augmentation_keeps_pairs_and_targets_aligned(tiny):
    f = int(np.argmax(tiny.labels.sum(1)))
    p = int(np.argmax(tiny.labels[f]))
    rng = np.random.default_rng(0)
    aug = D.Augment(shift_px=0, gain=0, offset=0, gamma=0, noise=0)  # geometry only
    b = D.make_batch(tiny, [5 * f + p] * 8, rng, aug)
    ref = D.make_batch(tiny, [5 * f + p])
    for j in range(8):
        # the same rotation/flip on images and ROI: find it and check all three agree
        found = False
        for k in range(4):
            for flip in (False, True):
                t = lambda a, k=k, flip=flip: (np.rot90(a, k)[:, ::-1] if flip else np.rot90(a, k))  # noqa: E731
                if np.array_equal(t(ref["roi"][0, 0]), b["roi"][j, 0]):
                    assert np.array_equal(t(ref["nc"][0, 0]), b["nc"][j, 0])
                    assert np.array_equal(t(ref["c"][0, 0]), b["c"][j, 0])
                    found = True
        assert found
    # intensity changes stay in [0, 1] and are small
    b2 = D.make_batch(tiny, [5 * f + p] * 4, rng, D.Augment(flips=False, shift_px=0))
    assert b2["nc"].min() >= 0 and b2["nc"].max() <= 1
    assert np.abs(b2["nc"] - ref["nc"]).mean() < 0.15


def test_balanced_epoch_indices():
    labels = np.array([1] * 10 + [0] * 90, np.float32)
    ids = D.epoch_indices(labels, np.random.default_rng(0))
    assert len(ids) == 20 and labels[ids].sum() == 10 and len(set(ids.tolist())) == 20
    assert len(D.epoch_indices(labels, np.random.default_rng(0), balanced=False)) == 100
    assert len(D.epoch_indices(labels, np.random.default_rng(0), samples=64)) == 64


def test_every_step_has_the_batch_size(tiny):
    # A partial last batch changed shape every epoch and the process grew with each new shape.
    labels = np.zeros(200)
    labels[:37] = 1  # 74 balanced samples: 9 batches of 8 and 2 left over
    fs = type("F", (), {"patch_labels": labels})()
    cfg = T.TrainConfig(batch_size=8)
    for seed in range(3):
        batches = T._epoch_batches(fs, cfg, np.random.default_rng(seed), None)
        assert [len(b) for b in batches] == [8] * 9
    # a whole epoch smaller than one batch is still trained on
    labels = np.zeros(20)
    labels[:3] = 1
    fs.patch_labels = labels
    assert [len(b) for b in T._epoch_batches(fs, cfg, np.random.default_rng(0), None)] == [6]
    assert T.steps_per_epoch(tiny, cfg) >= 1


def test_decoder_patches_positive_trains_the_decoder_on_calcium_patches_only(tiny, tmp_path):
    from dataclasses import replace

    cfg = T.TrainConfig(batch_size=1)  # no partial batch to drop: every drawn patch is in a batch
    pos = set(np.nonzero(tiny.patch_labels.reshape(-1) > 0.5)[0].tolist())
    assert 0 < len(pos) < tiny.n_patches
    only = replace(cfg, decoder_patches="positive")
    ids2 = [i for b in T._epoch_batches(tiny, only, np.random.default_rng(1), None, stage=2) for i in b]
    assert set(ids2) == pos and len(ids2) == len(pos)  # every positive once, no negative
    ids1 = [i for b in T._epoch_batches(tiny, only, np.random.default_rng(1), None, stage=1) for i in b]
    assert len(set(ids1) - pos) == len(pos)  # stage 1 stays balanced
    balanced = [i for b in T._epoch_batches(tiny, cfg, np.random.default_rng(1), None, stage=2) for i in b]
    assert len(set(balanced) - pos) == len(pos)
    assert T.steps_per_epoch(tiny, only, stage=2) < T.steps_per_epoch(tiny, cfg, stage=2)
    with pytest.raises(CacError, match="decoder_patches"):
        T.train(tiny, None, replace(cfg, decoder_patches="negative"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_stage2_epoch_kept_by_the_chosen_rule(tiny, tmp_path):
    """select2 "iom" keeps the stage-2 epoch of highest mean validation IoM (the paper; ties by the lower
    loss), "loss" the lowest validation decoder loss; a missing IoM (no calcified validation frame) ranks last."""
    iom, loss = T.TrainConfig(select2="iom"), T.TrainConfig(select2="loss")
    epochs = [(0.50, 0.40), (0.70, 0.60), (0.70, 0.55), (None, 0.30)]  # (mean IoM, decoder loss)

    def kept(cfg):
        return max(range(len(epochs)), key=lambda e: T.stage2_key(cfg, *epochs[e]))

    assert kept(iom) == 2 and kept(loss) == 3
    from CACTrainerLib.recipes import recipe_config

    assert recipe_config("default").select2 == "loss" and recipe_config("paper").select2 == "iom"
    with pytest.raises(CacError, match="select2"):
        T.train(tiny, None, _config(select2="hd"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(CacError, match="decoder_detection"):
            T.train(tiny, None, _config(decoder_detection=bad), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_stage1_epoch_kept_by_the_chosen_rule(tiny, tmp_path):
    """select1 "f1" keeps the stage-1 epoch of highest validation F1 (ties by the lower loss), "auc" the highest
    AUC, "last" the last epoch; a missing F1 or AUC ranks last.  A trained run records the rule's pick."""
    epochs = [(0.75, 0.88, 0.40), (0.75, 0.90, 0.35), (None, 0.91, 0.30), (0.70, None, 0.45)]  # (F1, AUC, loss)

    def kept(rule):
        cfg = T.TrainConfig(select1=rule)
        return max(range(len(epochs)), key=lambda e: T.stage1_key(cfg, e + 1, *epochs[e]))

    assert (kept("f1"), kept("auc"), kept("last")) == (1, 2, 3)
    assert T.TrainConfig().select1 == "f1"
    with pytest.raises(CacError, match="select1"):
        T.train(tiny, None, _config(select1="loss"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    result = T.train(tiny, tiny, _config(epochs1=3, epochs2=0, select1="last", samples_per_epoch=32),
                     tmp_path / "last")
    assert result.best["stage1"]["epoch"] == 3
    assert [row["best"] for row in result.history if row.get("event") == "epoch"] == [True, True, True]


def test_decoder_detection_trains_and_logs_the_decoder_sensitivity(tiny, tmp_path):
    """A run with the detection loss reports every stage-2 epoch's validation decoder sensitivity, and its
    validation loss (what select2 "loss" ranks) includes the term it trained on."""
    from dataclasses import replace

    train, val = tiny.select(patients=["P3"], exclude=True), tiny.select(patients=["P3"])
    cfg = _config(epochs1=1, epochs2=2, decoder_detection=1.0, select2="loss", samples_per_epoch=32)
    res = T.train(train, val, cfg, tmp_path / "run")
    rows = [r for r in res.history if r.get("stage") == 2]
    assert len(rows) == 2 and all(0.0 <= r["val_decoder_sensitivity"] <= 1.0 for r in rows)
    assert res.best["stage2"]["key"] == [-min(r["val_loss"] for r in rows)]
    plain = T._decoder_val_loss(res.model, val, replace(cfg, decoder_detection=0.0), torch.device("cpu"), 0.9)
    with_det = T._decoder_val_loss(res.model, val, cfg, torch.device("cpu"), 0.9)
    assert with_det > plain


@pytest.mark.slow
def test_tiny_training_learns_and_is_repeatable_and_resumable(tiny, tmp_path):
    train = tiny.select(patients=["P3"], exclude=True)
    test = tiny.select(patients=["P3"])
    cfg = _config()
    events = []
    res = T.train(train, test, cfg, tmp_path / "a", emit=events.append)
    # JSON lines: every event serialises; epoch events carry the documented keys
    for e in events:
        json.loads(json.dumps(e))
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["stage"] for e in epochs] == [1] * 8 + [2]
    for key in ("epoch", "epochs", "train_loss", "val_loss", "val_f1", "val_iom", "seconds"):
        assert key in epochs[0]
    # stage 1 reports the validation patch AUC, the same number evaluate() gives for that epoch's model
    assert all(0.0 <= e["val_auc"] <= 1.0 for e in epochs if e["stage"] == 1)
    # ... and within the patch positions (metrics.within_position_auc of the same predictions; None where
    # this one validation patient has a single class at every position)
    stage1 = [e["val_auc_within_position"] for e in epochs if e["stage"] == 1]
    assert all(a is None or 0.0 <= a <= 1.0 for a in stage1)
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    # learns: patch F1 well above chance (F1 of calling every patch positive) on the training patients,
    # and on the held-out patient F1 >= 0.7 with a balanced accuracy well above 0.5 (chance)
    ev = E.evaluate(res.model, train, cfg, "cpu", decode=False)
    pos_rate = train.patch_labels.mean()
    assert ev["f1"] >= 0.7 and ev["f1"] > 2 * pos_rate / (1 + pos_rate) + 0.1, ev
    ev = E.evaluate(res.model, test, cfg, "cpu", decode=False)
    balanced_accuracy = 0.5 * (ev["tp"] / (ev["tp"] + ev["fn"]) + ev["tn"] / (ev["tn"] + ev["fp"]))
    assert ev["f1"] >= 0.7 and balanced_accuracy >= 0.75, ev
    # stage 2 produced ROIs that overlap the calcium on the held-out frames
    assert res.best["stage2"]["metrics"]["iom_mean"] > 0.3
    # curves PNG
    T.plot_curves(res.history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000

    # same seed -> same losses (CPU)
    cfg_short = _config(epochs1=1, epochs2=2, samples_per_epoch=16, batch_size=8)
    val1 = test.subset([0])  # one validation frame keeps best-epoch selection in play, cheaply
    r1 = T.train(train, val1, cfg_short, tmp_path / "r1")
    r2 = T.train(train, val1, cfg_short, tmp_path / "r2")
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r2.history]

    # resume after an interruption (a progress callback raising mid stage 2 epoch 2) equals the full run
    class Stop(Exception):
        pass

    def interrupt(done, total, msg):
        if msg.startswith("stage 2 epoch 2"):
            raise Stop

    with pytest.raises(Stop):
        T.train(train, val1, cfg_short, tmp_path / "r3", progress=interrupt)
    info = json.loads((tmp_path / "r3" / T.CHECKPOINT_JSON).read_text())
    assert (info["stage"], info["epochs_done"]) == (2, 1)
    with pytest.raises(CacError):
        T.train(train, val1, cfg_short, tmp_path / "r3")  # existing checkpoint without resume
    r3 = T.train(train, val1, cfg_short, tmp_path / "r3", resume=True)
    assert [h["train_loss"] for h in r3.history] == [h["train_loss"] for h in r1.history]
    for (k, a), (_, b) in zip(r1.model.state_dict().items(), r3.model.state_dict().items()):
        assert torch.equal(a, b), k
    # the checkpoint holds no pickle: safetensors + JSON only
    assert not list((tmp_path / "r3").glob("*.pt")) and not list((tmp_path / "r3").glob("*.pkl"))


def test_keep_epochs_writes_every_epochs_model_and_the_best_is_what_stage_2_started_from(tiny, tmp_path):
    """``keep_epochs``: one model file with its card per epoch of both stages; the classifier of the final
    model (frozen in stage 2) is, tensor for tensor, that of the stage-1 epoch the run kept; a resume may
    switch it on (a setting of what is written, not of the run)."""
    from CACIdentifierLib.modelio import load_model

    train, val = tiny.select(patients=["P3"], exclude=True), tiny.select(patients=["P3"])
    cfg = _config(epochs1=3, epochs2=1, samples_per_epoch=16, batch_size=8, keep_epochs=True)
    res = T.train(train, val.subset([0, 1]), cfg, tmp_path / "run")
    kept = sorted(p.name for p in (tmp_path / "run" / T.EPOCHS_DIR).glob("*.safetensors"))
    assert kept == ["stage1_epoch001.safetensors", "stage1_epoch002.safetensors", "stage1_epoch003.safetensors",
                    "stage2_epoch001.safetensors"]
    assert len(list((tmp_path / "run" / T.EPOCHS_DIR).glob("*.json"))) == 4  # the cards
    best = res.best["stage1"]["epoch"]
    model, meta = load_model(T.epoch_model_path(tmp_path / "run", 1, best))
    assert meta["training"]["kept_epoch"] == {"stage": 1, "epoch": best}
    assert meta["training"]["decoder_trained"] is False  # _config has no auxiliary head
    row = next(r for r in res.history if (r["stage"], r["epoch"]) == (1, best))
    assert meta["metrics"]["validation"]["val_auc"] == row["val_auc"]
    final = res.model.state_dict()
    classifier = [k for k in final if not k.startswith("decoder.")]
    for k in classifier:
        assert torch.equal(model.state_dict()[k], final[k]), k
    # stage 2's one epoch is the one kept: the final model is its file, decoder included
    last = load_model(T.epoch_model_path(tmp_path / "run", 2, 1))[0].state_dict()
    assert any(k.startswith("decoder.") for k in final)
    for k in final:
        assert torch.equal(last[k], final[k]), k
    # a run without it writes none; its resume may ask for them
    cfg0 = _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4)
    T.train(train, None, cfg0, tmp_path / "plain")
    assert not (tmp_path / "plain" / T.EPOCHS_DIR).exists()
    from dataclasses import replace

    T.train(train, None, replace(cfg0, epochs2=2, keep_epochs=True), tmp_path / "plain", resume=True)
    assert [p.name for p in (tmp_path / "plain" / T.EPOCHS_DIR).glob("*.safetensors")] == [
        "stage2_epoch002.safetensors"]


def test_resume_refuses_other_settings(tiny, tmp_path):
    train = tiny.select(patients=["P0"])
    cfg = _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4)
    T.train(train, None, cfg, tmp_path)
    # The message names the checkpoint's value: what to pass to continue the run.
    with pytest.raises(CacError, match=rf"other settings \(lr1: {cfg.lr1!r} there, 0.0005 now\)"):
        T.train(train, None, _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4, lr1=5e-4),
                tmp_path, resume=True)
    # A nested setting by its dotted name, not the whole dict cut short.
    islands = replace(cfg, refinement={**cfg.refinement, "min_island_px": 77})
    with pytest.raises(CacError, match=r"other settings \(refinement.min_island_px: \d+ there, 77 now\)"):
        T.train(train, None, islands, tmp_path, resume=True)
    with pytest.raises(CacError, match="no checkpoint"):
        T.train(train, None, cfg, tmp_path / "empty", resume=True)
    # Other data (another fold, cross-validation mode or dataset): resuming would train on held-out patients.
    with pytest.raises(CacError, match="other training and validation data"):
        T.train(tiny.select(patients=["P1"]), None, replace(cfg, epochs1=2), tmp_path, resume=True)
    with pytest.raises(CacError, match="other training and validation data"):
        T.train(train, tiny.select(patients=["P3"]), replace(cfg, epochs1=2), tmp_path, resume=True)
    T.train(train, None, replace(cfg, epochs1=2), tmp_path, resume=True)  # the same data: resumes
    # Another network (--width ...): a changed setting, not an unusable checkpoint to delete.
    wider = replace(cfg, epochs1=2, architecture={**cfg.architecture, "width": 2 * cfg.architecture["width"]})
    with pytest.raises(CacError, match=r"--resume: .* other settings \(architecture.width\)"):
        T.train(train, None, wider, tmp_path, resume=True)
    with pytest.raises(CacError, match=r"earlier run with another network \(architecture.width\); pass --overwrite"):
        T.train(train, None, wider, tmp_path)


def test_resume_refuses_a_checkpoint_made_on_another_source(tiny, tmp_path):
    """The checkpoint records what the run trained on (data_source): a stream of phantom patients has no other
    fingerprint of its data, so another pool size, seed or dataset folder is refused by it."""
    from CACTrainerLib.checkpoint_io import data_source, unfinished_runs

    train = tiny.select(patients=["P0"])
    cfg = _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4)
    pool = data_source(phantom_pool=260, refresh_patients=40, seed=0)
    T.train(train, None, cfg, tmp_path / "m.run", source=pool)
    saved = json.loads((tmp_path / "m.run" / T.CHECKPOINT_JSON).read_text())["source"]
    assert saved == pool
    with pytest.raises(CacError, match="made on 260 phantom patients .40 new per epoch., seed 0, not on 200 phantom"):
        T.train(train, None, replace(cfg, epochs1=2), tmp_path / "m.run", resume=True,
                source=data_source(phantom_pool=200, refresh_patients=40, seed=0))
    with pytest.raises(CacError, match="not on dataset"):
        T.train(train, None, replace(cfg, epochs1=2), tmp_path / "m.run", resume=True,
                source=data_source(tmp_path / "ds"))
    # The same pool with cross-validation: the mode is named on both sides (it was left out of the second).
    with pytest.raises(CacError, match=r"seed 0, training on everything \(--cv none\), not on .* seed 0, "
                                       r"cross-validation by patient;"):
        T.train(train, None, replace(cfg, epochs1=2), tmp_path / "m.run", resume=True,
                source=data_source(phantom_pool=260, refresh_patients=40, seed=0, cv="patient"))
    T.train(train, None, replace(cfg, epochs1=2), tmp_path / "m.run", resume=True, source=dict(pool))  # the same
    assert [r["source"] for r in unfinished_runs(tmp_path / "m.safetensors")] == [pool]


def test_data_source_follows_the_acquisitions_not_the_folder(tmp_path):
    from CACTrainerLib.checkpoint_io import data_source, same_source

    manifest = {"format": 1, "acquisitions": [{"id": "P-a-A01", "n_frames": 40}, {"id": "P-b-A01", "n_frames": 30}]}
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    a = data_source(tmp_path / "ds", cv="patient")
    assert a["acquisitions"] and a["dataset"] == str((tmp_path / "ds").resolve())
    (tmp_path / "ds").rename(tmp_path / "moved")
    moved = data_source(tmp_path / "moved", cv="patient")
    assert same_source(a, moved) is True  # a moved folder holds the same data
    assert same_source(a, data_source(tmp_path / "moved", cv="acquisition")) is False  # other held-out sets
    manifest["acquisitions"].append({"id": "P-c-A01", "n_frames": 25})
    (tmp_path / "moved" / "manifest.json").write_text(json.dumps(manifest))
    assert same_source(a, data_source(tmp_path / "moved", cv="patient")) is False  # an acquisition added
    assert same_source(a, data_source(phantom_pool=10, cv="patient")) is False
    # Unreadable manifest: compared by folder.
    assert data_source(tmp_path / "missing")["acquisitions"] is None
    assert same_source(data_source(tmp_path / "missing"), data_source(tmp_path / "missing")) is True


def test_restart_starts_a_finished_run_over(tiny, tmp_path):
    # `cac train --overwrite` into a finished run's folder (the Slicer panel's "replace the model?") once failed
    # after the data had loaded: "holds a checkpoint of an earlier run".  restart deletes that run's checkpoint,
    # history and kept epochs, and nothing else in the folder.
    train = tiny.select(patients=["P0"])
    run = tmp_path / "run"
    T.train(train, None, _config(epochs1=2, epochs2=1, samples_per_epoch=8, batch_size=4, keep_epochs=True), run)
    (run / "notes.txt").write_text("mine")
    cfg = _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4, lr1=5e-4)  # other settings, too
    with pytest.raises(CacError, match="--overwrite to start it over"):
        T.train(train, None, cfg, run)
    with pytest.raises(CacError, match="choose one"):
        T.train(train, None, cfg, run, resume=True, restart=True)
    result = T.train(train, None, cfg, run, restart=True)
    assert [(h["stage"], h["epoch"]) for h in result.history if h.get("event") == "epoch"] == [(1, 1), (2, 1)]
    assert not (run / T.EPOCHS_DIR).exists() or not list((run / T.EPOCHS_DIR).glob("stage*"))
    assert (run / "notes.txt").read_text() == "mine"
    # The new run's checkpoint resumes as the new run (its settings), not the old one.
    T.train(train, None, replace(cfg, epochs2=2), run, resume=True)


def test_a_second_run_on_a_busy_run_folder_is_refused_and_a_dead_runs_lock_is_taken_over(tiny, tmp_path):
    # A resume script started twice once ran two trainings on one folder, each overwriting the other's
    # checkpoint every epoch: the folder lock turns that into one error line, and loses nothing.
    import json
    import socket
    import subprocess

    train = tiny.select(patients=["P0"])
    cfg = _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4)
    run = tmp_path / "run"
    T.train(train, None, cfg, run)
    assert not (run / "run.lock").exists()  # released when the run ends
    before = (run / "checkpoint.safetensors").read_bytes()
    other = subprocess.Popen(["sleep", "60"])  # a live process standing in for the first run
    try:
        (run / "run.lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                  "started": "2026-12-04T16:25:00"}))
        with pytest.raises(CacError, match=f"another training run is using .*process {other.pid}"):
            T.train(train, None, cfg, run, resume=True)
        assert (run / "checkpoint.safetensors").read_bytes() == before
        assert json.loads((run / "run.lock").read_text())["pid"] == other.pid  # not ours to remove
    finally:
        other.kill()
        other.wait()
    # Its process gone (killed, power loss), the lock is stale: the resume takes it over and finishes.
    result = T.train(train, None, cfg, run, resume=True)
    assert result.history and not (run / "run.lock").exists()


def test_folds_and_summary(tiny, tmp_path):
    folds = crossval.make_folds(tiny, "patient")
    assert folds == [["P0"], ["P1"], ["P2"], ["P3"]]
    assert crossval.make_folds(tiny, "acquisition") == [["P0A1"], ["P1A1"], ["P2A1"], ["P3A1"]]
    tr, val = crossval.validation_split(tiny.select(patients=["P3"], exclude=True), 0.3, seed=0)
    assert set(val.patient).isdisjoint(tr.patient) and len(set(val.patient)) == 1
    # summary of fold files laid out like Table 2, with the paper's numbers and a Wilcoxon test
    for k, (f1, iom, iom_u) in enumerate([(0.9, 0.7, 0.5), (0.8, 0.6, 0.55), (1.0, 0.9, 0.6),
                                         (0.7, 0.5, 0.45), (0.85, 0.65, 0.6), (0.95, 0.8, 0.7)]):
        rec = {"fold": k, "folds": 6, "by": "patient", "test": [f"P{k}"],
               "metrics": {"precision": f1, "recall": f1, "f1": f1, "iom": iom, "iom_ungated": iom_u,
                           "hd_mm": 40.0 + k, "tp": 9, "fp": 1, "fn": 1,
                           "roi_area_pct_field": 0.5 * k, "frame_sensitivity": 1.0 if k % 2 else None,
                           "frame_tp": k % 2, "frame_fn": 0, "frame_fp": 1 if k == 2 else 0, "frame_tn": 3}}
        (tmp_path / f"fold_{k}.json").write_text(json.dumps(rec))
    rep = crossval.summarize(tmp_path)
    assert rep["summary"]["f1"]["median"] == pytest.approx(np.median([0.9, 0.8, 1.0, 0.7, 0.85, 0.95]))
    assert rep["summary"]["iom"]["q1"] == pytest.approx(np.percentile([0.7, 0.6, 0.9, 0.5, 0.65, 0.8], 25))
    assert rep["pooled"]["f1"] == pytest.approx(0.9)
    from scipy import stats

    w = stats.wilcoxon([0.7, 0.6, 0.9, 0.5, 0.65, 0.8], [0.5, 0.55, 0.6, 0.45, 0.6, 0.7])
    assert rep["wilcoxon_gated_vs_ungated_iom"]["p"] == pytest.approx(w.pvalue)
    md = (tmp_path / "report.md").read_text()
    assert "0.87 (0.77–0.94)" in md and "47.16 (35.05–63.77)" in md and "| Identification | IoM" in md
    # The measures the paper does not report: per-fold medians and pooled frame counts.
    assert rep["summary"]["roi_area_pct_field"]["median"] == pytest.approx(1.25)
    assert rep["summary"]["frame_sensitivity"]["median"] == 1.0  # folds without calcium are left out
    assert rep["pooled_frames"]["sensitivity"] == 1.0 and rep["pooled_frames"]["specificity"] == pytest.approx(18 / 19)
    assert "| Identification | ROI area (% of exposed field) (median (Q1–Q3)) | 1.25 (0.62–1.88) | not reported |" in md
    assert "specificity 0.947 (TP 3, FP 1, FN 0, TN 18" in md
    assert "decoder_found" not in rep["pooled_frames"] and "every patch gated in" not in md  # older fold files
    # The decoder's ceiling, pooled over folds, once every fold file reports it.
    for k in range(6):
        rec = json.loads((tmp_path / f"fold_{k}.json").read_text())
        # Folds 1, 3, 5 hold one calcified frame each, fold 3 one more that the gate missed and the
        # decoder alone finds: 4 calcified frames, 3 found, 4 within the decoder's reach.
        rec["metrics"]["frame_decoder_found"] = k % 2 + (k == 3)
        rec["metrics"]["frame_fn"] = int(k == 3)
        (tmp_path / f"fold_{k}.json").write_text(json.dumps(rec))
    rep = crossval.summarize(tmp_path)
    assert rep["pooled_frames"]["decoder_found"] == 4 and rep["pooled_frames"]["decoder_sensitivity"] == 1.0
    assert rep["pooled_frames"]["sensitivity"] == pytest.approx(3 / 4)
    assert "the decoder draws an ROI on 4 of the 4 calcified frames" in (tmp_path / "report.md").read_text()
    with pytest.raises(CacError):
        crossval.summarize(tmp_path / "nothing")


def test_cli_errors_exit_2(tmp_path, capsys):
    from cac.cli import main

    def run(*argv):
        code = main(["train", *map(str, argv)])
        return code, capsys.readouterr().err

    code, err = run(tmp_path / "missing", "--out", tmp_path / "m.safetensors")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "ds").mkdir()
    code, err = run(tmp_path / "ds", "--out", tmp_path / "m.safetensors")
    assert code == 2 and "manifest.json" in err
    code, err = run("--summarize", tmp_path)
    assert code == 2 and "fold_K.json" in err
    code, err = run(tmp_path / "ds", "--out", tmp_path / "x.bin")
    assert code == 2 and ".safetensors" in err
    code, err = run(tmp_path / "ds", "--out", tmp_path / "m.safetensors", "--fold", "1")
    assert code == 2 and "--fold needs" in err


@pytest.mark.slow
def test_cli_end_to_end_on_written_phantom(tmp_path):
    """`cac phantom` -> `cac train --cv none` -> a model that `load_model` reads back, with JSON lines."""
    exe = [sys.executable, "-m", "cac"]
    ds = tmp_path / "ds"
    r = subprocess.run(exe + ["phantom", str(ds), "--patients", "2", "--acquisitions-per-patient", "1",
                              "--frames", "30", "--seed", "5", "--calcium-free-fraction", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m.safetensors"
    r = subprocess.run(exe + ["train", str(ds), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                              "--samples-per-epoch", "8", "--frames-per-acquisition", "2", "--width", "16",
                              "--json", "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "epoch" in kinds and kinds[-1] == "saved"
    from CACIdentifierLib.modelio import load_model

    model, meta = load_model(out)
    assert meta["training"]["command"].startswith("cac train") or meta["training"]["command"]
    assert meta["roi_gt"]["iterations"] == 4 and meta["weights_dtype"] == "float16"
    assert (tmp_path / "m_curves.png").exists() and (tmp_path / "m.run" / T.CHECKPOINT).exists()
    # refuses to overwrite
    r = subprocess.run(exe + ["train", str(ds), "--out", str(out), "--epochs", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    # --init with --epochs 0: the model is only tested on the fold (external validation), no training
    cv = tmp_path / "cv"
    r = subprocess.run(exe + ["train", str(ds), "--out", str(cv), "--cv", "patient", "--fold", "0", "--epochs", "0",
                              "--init", str(out), "--frames-per-acquisition", "2", "--width", "16", "--json",
                              "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert not [e for e in events if e["event"] == "epoch"]
    fold = json.loads((cv / "fold_0.json").read_text())
    assert fold["config"]["init"] == str(out.resolve()) and fold["config"]["epochs1"] == 0
    assert {"precision", "recall", "f1", "iom", "hd_mm"} <= set(fold["metrics"]) and fold["test"] == ["P001"]
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "m2.safetensors"), "--epochs", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "0 only with --init" in r.stderr
    # --init with --epochs 0 and no --cv would only write the model again, stripped of its calibration
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "m2.safetensors"), "--epochs", "0",
                              "--init", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "trains nothing" in r.stderr and not (tmp_path / "m2.safetensors").exists()
    # a model trained with Block1's pool fine-tuned without it (the weights fit); its fine-tune inherits that
    full = tmp_path / "full.safetensors"
    r = subprocess.run(exe + ["train", str(ds), "--out", str(full), "--epochs1", "1", "--epochs2", "0",
                              "--init", str(out), "--no-block1-pool", "--samples-per-epoch", "8",
                              "--frames-per-acquisition", "2", "--width", "16", "--threads", "2", "--keep-epochs"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_model(full)[1]["architecture"]["block1_pool"] is False
    # --keep-epochs: the epoch's model beside the checkpoint, of the run's architecture
    kept = T.epoch_model_path(tmp_path / "full.run", 1, 1)
    assert load_model(kept)[1]["architecture"]["block1_pool"] is False
    # the multiple-instance readout, likewise: set once, inherited by a fine-tune of that model
    mil = tmp_path / "mil.safetensors"
    r = subprocess.run(exe + ["train", str(ds), "--out", str(mil), "--epochs1", "1", "--epochs2", "0",
                              "--init", str(out), "--classifier-topk", "4", "--samples-per-epoch", "8",
                              "--frames-per-acquisition", "2", "--width", "16", "--threads", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_model(mil)[1]["architecture"]["classifier_topk"] == 4
    assert load_model(mil)[0].classifier_topk == 4
    # (without --width: the width is --init's too, 16 here)
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "cv4"), "--epochs", "0",
                              "--init", str(mil), "--cv", "patient", "--fold", "0", "--frames-per-acquisition", "2",
                              "--json", "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m4_arch = json.loads((tmp_path / "cv4" / "fold_0.json").read_text())["config"]["architecture"]
    assert m4_arch["classifier_topk"] == 4 and m4_arch["width"] == 16
    def widened(init, flag, name):
        """The architecture of a one-epoch fine-tune of ``init`` with the input channel ``flag``."""
        path = tmp_path / name
        r = subprocess.run(exe + ["train", str(ds), "--out", str(path), "--epochs1", "1", "--epochs2", "1",
                                  "--init", str(init), flag, "--samples-per-epoch", "8",
                                  "--frames-per-acquisition", "2", "--width", "16", "--threads", "2"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return path, load_model(path)[1]["architecture"]

    # the residual channel: a frame model widened for it, inherited by its fine-tune, never taken away
    res, arch = widened(out, "--residual-channel", "res.safetensors")
    assert arch["inputs"] == "frame+residual" and arch["in_channels"] == 2
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "cv6"), "--epochs", "0",
                              "--init", str(res), "--cv", "patient", "--fold", "0", "--frames-per-acquisition", "2",
                              "--width", "16", "--json", "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "cv6" / "fold_0.json").read_text())["config"]["architecture"][
        "inputs"] == "frame+residual"
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "m7.safetensors"), "--epochs", "1",
                              "--init", str(res), "--no-residual-channel"], capture_output=True, text=True)
    assert r.returncode == 2 and "--no-residual-channel" in r.stderr and "Traceback" not in r.stderr
    # the vessel channel: the residual model widened for it, never taken away, never without the residual
    ves, arch = widened(res, "--vessel-channel", "ves.safetensors")
    assert arch["inputs"] == "frame+residual+vessels" and arch["in_channels"] == 3
    for flags in (["--init", str(ves), "--no-vessel-channel"], ["--vessel-channel", "--no-residual-channel"]):
        r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "m8.safetensors"), "--epochs", "1",
                                  *flags], capture_output=True, text=True)
        assert r.returncode == 2 and "-channel" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "m5.safetensors"), "--epochs", "1",
                              "--classifier-topk", "-2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--classifier-topk" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "cv3"), "--epochs", "0",
                              "--init", str(full), "--cv", "patient", "--fold", "0", "--width", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "use the same --width" in r.stderr and '"block1_pool": false' in r.stderr.replace(
        "'", '"').replace("False", "false")
    assert "Traceback" not in r.stderr
    r = subprocess.run(exe + ["train", str(ds), "--out", str(tmp_path / "m2.safetensors"), "--epochs", "1",
                              "--init", str(tmp_path / "nope.safetensors")], capture_output=True, text=True)
    assert r.returncode == 2 and "--init model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_run_fold_writes_fold_file_and_summary(tiny, tmp_path):
    """One real fold (tiny settings): fold_K.json with per-fold and per-frame metrics, then the report."""
    cfg = _config(epochs1=1, epochs2=1, samples_per_epoch=16, batch_size=8)
    events = []
    rec = crossval.run_fold(tiny, 1, "patient", cfg, tmp_path, emit=events.append)
    assert rec["test"] == ["P1"] and "P1" not in rec["val"]
    data = json.loads((tmp_path / "fold_1.json").read_text())
    for key in ("precision", "recall", "f1", "iom", "iom_ungated", "hd_mm", "tp", "fp", "fn"):
        assert key in data["metrics"]
    assert data["metrics"]["tp"] + data["metrics"]["fn"] == int(tiny.select(patients=["P1"]).labels.sum())
    assert [e["event"] for e in events][0] == "fold" and events[-1]["event"] == "fold_done"
    with pytest.raises(CacError, match="already exists"):
        crossval.run_fold(tiny, 1, "patient", cfg, tmp_path)
    with pytest.raises(CacError, match="does not exist"):
        crossval.run_fold(tiny, 9, "patient", cfg, tmp_path)
    rep = crossval.summarize(tmp_path)
    assert rep["folds_run"] == 1 and rep["folds_total"] == 4
    # A user's copy beside the folds is not a fold (it once crashed the summary); a broken fold is one line.
    (tmp_path / "fold_1.bak.json").write_text((tmp_path / "fold_1.json").read_text())
    assert crossval.summarize(tmp_path)["folds_run"] == 1
    (tmp_path / "fold_2.json").write_text("{not json")
    with pytest.raises(CacError, match="fold_2.json is not a readable fold file"):
        crossval.summarize(tmp_path)
    (tmp_path / "fold_2.json").write_text("[]")
    with pytest.raises(CacError, match="not a fold file"):
        crossval.summarize(tmp_path)


def test_init_starts_from_a_model_file(tiny, tmp_path):
    """--init (fine-tuning): training starts from the file's weights; another architecture is refused."""
    from CACIdentifierLib.modelio import save_model
    from CACIdentifierLib.network import ResUNet18

    torch.manual_seed(5)
    start = ResUNet18(**ARCH)
    save_model(tmp_path / "start.safetensors", start, dtype=None)
    train = tiny.select(patients=["P0"])
    # lr 0: Adam moves nothing, so the trained weights are the initial ones (BN statistics aside)
    cfg = _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4, lr1=0.0, lr2=0.0,
                  init=str(tmp_path / "start.safetensors"))
    res = T.train(train, None, cfg, tmp_path / "run")
    for name, value in start.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(res.model.state_dict()[name], value), name
    other = ResUNet18(width=8, decoder_channels=[8, 8, 8, 8, 8])
    save_model(tmp_path / "other.safetensors", other)
    with pytest.raises(CacError, match="architecture"):
        T.train(train, None, _config(epochs1=1, epochs2=1, samples_per_epoch=8, batch_size=4,
                                     init=str(tmp_path / "other.safetensors")), tmp_path / "run2")


def test_external_validation_scores_the_model_as_inference_uses_it(tmp_path):
    """--init with no epochs: the card's threshold, refinement and calibration apply; after training they do not."""
    from CACIdentifierLib.modelio import save_model
    from CACIdentifierLib.network import ResUNet18

    path = tmp_path / "m.safetensors"
    cal = {"temperature": 2.0, "bias": -1.0}
    save_model(path, ResUNet18(width=8, decoder_channels=[16, 8, 8, 8, 8]),
               {"classifier_threshold": 0.3, "refinement": {"min_island_px": 200}, "calibration": cal,
                "roi_patches": 2}, dtype=None)
    cfg = _config(epochs1=0, epochs2=0, init=str(path))
    scored, calibration = crossval._as_shipped(cfg)
    assert scored.classifier_threshold == 0.3 and calibration["temperature"] == 2.0 and calibration["bias"] == -1.0
    assert scored.roi_patches == 2
    assert scored.refinement["min_island_px"] == 200 and scored.refinement["sigma"] == cfg.refinement["sigma"]
    trained, none = crossval._as_shipped(_config(epochs1=1, epochs2=0, init=str(path)))
    assert none is None and trained.classifier_threshold == 0.5


def test_channels_last_is_opt_in_on_cpus():
    """NHWC crashed oneDNN's backward at width 8 on a CPU (docs/learning.md, Speed): CUDA-only unless asked."""
    from cac.cli import build_parser
    from cac.cli_train import _config

    parser = build_parser()
    base = ["train", "DATA", "--out", "m.safetensors"]
    assert _config(parser.parse_args(base)).channels_last is None
    assert _config(parser.parse_args(base + ["--channels-last"])).channels_last is True
    assert _config(parser.parse_args(base + ["--no-channels-last"])).channels_last is False


def _hand_made_frames():
    """Three frames and their decoder output: 0 calcified and marked, 1 calcified and silent, 2 calcium-free."""
    from CACTrainerLib import dataset as D

    rng = np.random.default_rng(0)
    n = 3  # frame 0: calcium, decoder marks it; frame 1: calcium, decoder silent; frame 2: calcium-free
    nc = (0.4 + 0.2 * rng.random((n, 512, 512))).astype(np.float16)  # no dark border: the whole field exposed
    calcium = np.zeros((n, 512, 512), bool)
    calcium[0, 60:70, 60:70] = calcium[1, 60:70, 60:70] = True
    roi = np.zeros_like(calcium)
    roi[:2, 40:90, 40:90] = True
    labels = np.zeros((n, 5), np.float32)
    labels[:2, 0] = 1.0
    fs = D.FrameSet(nc, nc.copy(), calcium, roi, labels, np.full((n, 2), 0.3), np.arange(n), np.arange(n) + 10,
                    np.zeros((n, 5), bool), nc.copy(), ["a", "b", "c"], ["p", "q", "r"])
    rois = np.zeros((5 * n, 256, 256), np.float16)
    rois[0, 40:90, 40:90] = 0.9  # frame 0, patch 0 (origin 0, 0): 2,500 px over the calcium
    return fs, rois


def test_evaluate_decoder_sensitivity_is_the_ceiling_of_the_gate(monkeypatch):
    """Hand-made decoder output: the calcified frame whose decoder is silent stays missed at any threshold;
    the one it marks is found once its patch is gated in."""
    fs, rois = _hand_made_frames()
    n = len(fs)
    for probs, found in ((np.zeros(5 * n, np.float32), 0), (np.ones(5 * n, np.float32), 1)):
        monkeypatch.setattr(E, "predict_patches", lambda *a, p=probs, **k: E.PatchPredictions(p, rois, None))
        ev = E.evaluate(None, fs, T.TrainConfig(), torch.device("cpu"))
        assert ev["detection"]["tp"] == found and ev["detection"]["fn"] == 2 - found
        assert ev["decoder_sensitivity"] == 0.5 and ev["decoder_frames_found"] == 1


def test_evaluate_reuses_predictions_and_withholds_gated_frames(monkeypatch):
    """Given predictions, evaluate does not run the network and scores the same; a frame gate of False takes
    that frame's ROI away (a found frame becomes missed), and a gate of the wrong length is refused."""
    fs, rois = _hand_made_frames()
    given = E.PatchPredictions(np.ones(5 * len(fs), np.float32), rois, None)

    def no_network(*a, **k):
        raise AssertionError("the network ran although predictions were given")

    monkeypatch.setattr(E, "predict_patches", no_network)
    cfg, cpu = T.TrainConfig(), torch.device("cpu")
    ev = E.evaluate(None, fs, cfg, cpu, predictions=given)
    assert ev["detection"]["tp"] == 1 and ev["frame_pred_any"] == [True, False, False]
    ev = E.evaluate(None, fs, cfg, cpu, predictions=given, frame_gate=[False, True, True])
    assert ev["detection"]["tp"] == 0 and ev["frame_pred_any"] == [False, False, False]
    assert ev["decoder_frames_found"] == 1  # the ceiling ignores the gate
    with pytest.raises(ValueError, match="2 values for 3 frames"):
        E.evaluate(None, fs, cfg, cpu, predictions=given, frame_gate=[True, True])
    # A card's cine threshold gates each acquisition by its mean most-probable patch (here one frame a cine).
    ev = E.evaluate(None, fs, T.TrainConfig(cine_threshold=1.5), cpu, predictions=given)
    assert ev["frame_pred_any"] == [False, False, False]
    ev = E.evaluate(None, fs, T.TrainConfig(cine_threshold=0.9), cpu, predictions=given)
    assert ev["frame_pred_any"] == [True, False, False]
    # ... on the calibrated probabilities, as inference gates (0.9 raw, 0.057 after a bias of -5).
    raw = E.PatchPredictions(np.full(5 * len(fs), 0.9, np.float32), rois, None)
    low = {"temperature": 1.0, "bias": -5.0}
    ev = E.evaluate(None, fs, T.TrainConfig(classifier_threshold=0.01), cpu, predictions=raw, calibration=low)
    assert ev["frame_pred_any"] == [True, False, False]
    ev = E.evaluate(None, fs, T.TrainConfig(classifier_threshold=0.01, cine_threshold=0.5), cpu, predictions=raw,
                    calibration=low)
    assert ev["frame_pred_any"] == [False, False, False]
    with pytest.raises(ValueError, match="do not match"):
        E.evaluate(None, fs, cfg, cpu, predictions=E.PatchPredictions(given.probs[:5], rois[:5], None))


def test_unfinished_runs_are_what_resume_continues(tmp_path):
    """A checkpoint newer than the model (or without one) is unfinished; a fold with its result is finished."""
    import os

    from CACTrainerLib.checkpoint_io import CHECKPOINT, CHECKPOINT_JSON, default_run_dir, unfinished_runs

    model = tmp_path / "m.safetensors"
    run_dir = default_run_dir(model)
    assert run_dir == tmp_path / "m.run" and unfinished_runs(model) == []
    run_dir.mkdir()
    (run_dir / CHECKPOINT).write_bytes(b"x")
    (run_dir / CHECKPOINT_JSON).write_text(json.dumps({"stage": 2, "epochs_done": 3}))
    assert unfinished_runs(model) == [{"run_dir": run_dir, "stage": 2, "epochs_done": 3, "source": None}]
    model.write_bytes(b"m")  # the run finished: its model is newer than the checkpoint
    os.utime(run_dir / CHECKPOINT, (1e9, 1e9))
    assert unfinished_runs(model) == []
    os.utime(model, (1e9 - 10, 1e9 - 10))  # an older model retrained and cancelled: the checkpoint is newer
    assert [r["stage"] for r in unfinished_runs(model)] == [2]
    (run_dir / CHECKPOINT_JSON).write_text("{broken")
    assert unfinished_runs(model)[0]["stage"] is None

    cv = tmp_path / "cv"
    for k in (0, 1, 2):
        (cv / f"fold_{k}").mkdir(parents=True)
        (cv / f"fold_{k}" / CHECKPOINT).write_bytes(b"x")
        (cv / f"fold_{k}" / CHECKPOINT_JSON).write_text(json.dumps({"stage": 1, "epochs_done": k}))
    (cv / "fold_1.json").write_text("{}")  # fold 1 is done
    assert [(r["run_dir"].name, r["epochs_done"]) for r in unfinished_runs(cv, "patient")] == [
        ("fold_0", 0), ("fold_2", 2)]


def test_cac_main_leaves_sigterm_alone():
    """Only the `cac` program turns SIGTERM into an interrupt; main() called from Slicer's console or a test
    must not leave its handler behind."""
    import signal

    from cac import cli

    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["info", "/nonexistent.dcm"]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("field, value", [
    ("lr1", float("nan")), ("lr2", -1.0), ("lr1", float("inf")), ("architecture", {"width": 0}),
    ("architecture", {"width": -8}), ("num_threads", 0), ("batch_size", 0), ("samples_per_epoch", 0),
    ("weight_decay", float("nan")), ("warmup_frac", 1.5), ("hard_negative_frac", -0.1),
    ("rebalance_step", float("inf")), ("epochs1", -1), ("workers", -1), ("seed", -1)])
def test_check_config_refuses_nan_infinite_and_negative_settings(field, value):
    """Each would fail later with a traceback (torch.optim, the network) or silently (threads 0: every core)."""
    with pytest.raises(CacError, match=field if field != "architecture" else "width"):
        T.check_config(_config(**{field: value}))


def test_check_config_accepts_the_recipes_and_a_learning_rate_of_0():
    from CACTrainerLib.recipes import RECIPES, recipe_config

    for name in RECIPES:
        T.check_config(recipe_config(name))
    T.check_config(_config(lr1=0.0, lr2=0.0, num_threads=None, architecture={"width": 1}))  # the weights stay


@pytest.mark.parametrize("argv, phrase", [
    (["--width", "0"], "--width 0 must be 1 or more"),
    (["--width", "-8"], "--width -8 must be 1 or more"),
    (["--lr1", "nan"], "--lr1 nan must be a finite number > 0"),
    (["--lr2", "-1"], "--lr2 -1.0 must be a finite number > 0"),
    (["--lr1", "0"], "--lr1 0.0 must be a finite number > 0"),
    (["--threads", "0"], "(--threads) must be a whole number >= 1"),
    (["--samples-per-epoch", "0"], "(--samples-per-epoch) must be a whole number >= 1"),
    (["--workers", "-1"], "(--workers) must be a whole number >= 0"),
    (["--seed", "-1"], "(--seed) must be a whole number >= 0"),
    (["--rebalance-step", "nan"], "(--rebalance-step) must be a finite number"),
    (["--val-fraction", "nan"], "--val-fraction nan must be at least 0"),
    (["--frames-per-acquisition", "-2"], "--frames-per-acquisition -2 must be 0 (all) or more"),
    # an invalid --epochs is refused even where --epochs1 and --epochs2 override it ...
    (["--epochs", "-1", "--epochs1", "1", "--epochs2", "1"], "--epochs -1 must be 0 or more"),
    # ... and a valid one that both override would be ignored: the combination is refused
    (["--epochs", "3", "--epochs1", "1", "--epochs2", "1"], "give --epochs, or --epochs1 and --epochs2"),
    (["--epochs1", "-2"], "--epochs1 -2 must be 0 or more"),
])
def test_cli_train_refuses_bad_numbers_in_one_line_before_any_data(argv, phrase, tmp_path, capsys, monkeypatch):
    from cac import cli_train
    from cac.cli import main

    monkeypatch.setattr(cli_train, "_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data made")))
    code = main(["train", "--phantom-pool", "4", "--out", str(tmp_path / "m.safetensors"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and phrase in err, err
    assert err.startswith("cac: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_cli_train_refuses_a_dataset_with_a_phantom_pool_and_a_model_file_as_cv_run_folder(tmp_path, capsys,
                                                                                          monkeypatch):
    from cac import cli_train
    from cac.cli import main

    monkeypatch.setattr(cli_train, "_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data made")))
    (tmp_path / "ds").mkdir()

    def run(*argv):
        code = main(["train", *map(str, argv)])
        return code, capsys.readouterr().err

    # The pool would be trained on and DS silently ignored.
    code, err = run(tmp_path / "ds", "--phantom-pool", "3", "--out", tmp_path / "m.safetensors")
    assert code == 2 and "give a DATASET folder or --phantom-pool N, not both" in err
    # 0 is refused as -1 and 1 are, not taken for "no pool"
    for n in ("0", "-1", "1"):
        code, err = run("--phantom-pool", n, "--out", tmp_path / "m.safetensors")
        assert code == 2 and "--phantom-pool needs at least 2 patients" in err, (n, err)
    # With --cv, --out is created as a folder: a model-file name is refused, nothing is created.
    code, err = run(tmp_path / "ds", "--out", tmp_path / "x.safetensors", "--cv", "acquisition", "--fold", "0")
    assert code == 2 and "is a run folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_cli_train_human_lines_say_what_trains_and_where_the_model_went(capsys):
    """In a terminal the start, done and saved events are sentences; with --json every event is its JSON line."""
    from cac.cli_train import _emitter
    from cac.train_events import format_line

    events = [
        {"event": "start", "device": "cpu", "autocast": "bfloat16", "resumed": False,
         "train": {"frames": 12, "patches": 60, "positive_patches": 9, "acquisitions": 3, "patients": 3},
         "val": {"frames": 4, "patches": 20, "positive_patches": 2, "acquisitions": 1, "patients": 1},
         "config": {"epochs1": 12, "epochs2": 2, "lr1": 1e-3}},
        {"event": "done", "seconds": 61.4, "best": {"stage1": {"epoch": 9}, "stage2": {"epoch": 2}}, "val": {}},
        {"event": "saved", "model": "runs/m.safetensors", "sha256": "ab", "curves": "runs/m_curves.png"},
        {"event": "fold", "fold": 1, "folds": 4, "by": "patient", "test": ["P002"], "val": ["P003"]},
        {"event": "fold_done", "fold": 1, "metrics": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "iom": None}},
    ]
    emit = _emitter(False, "runs/data")
    for event in events:
        emit(event)
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if line.startswith("{")]  # no raw JSON for a person
    start, done, saved, fold, fold_done = lines
    assert start.startswith("training on runs/data: 12 frames of 3 patients to train, 4 frames of 1 patient")
    assert "device cpu (bfloat16)" in start and "12 + 2 epochs" in start
    assert done == "training done in 61 s (kept stage 1 epoch 9, stage 2 epoch 2)"
    assert saved == "model written to runs/m.safetensors (card runs/m.json, curves runs/m_curves.png)"
    assert fold == "fold 1 (2 of 4, by patient): testing P002"
    assert fold_done == "fold 1 done: precision 0.500, recall 1.000, f1 0.667"
    # An epoch line ends with the stage's time left, from the mean epoch time so far.
    for epoch, seconds in ((1, 100.0), (2, 80.0)):
        emit({"event": "epoch", "stage": 1, "epoch": epoch, "epochs": 4, "train_loss": 0.4, "seconds": seconds})
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith("100 s  ~5:00 left in stage 1") and second.endswith("80 s  ~3:00 left in stage 1")
    emit = _emitter(True, "runs/data")
    for event in events:
        emit(event)
    assert capsys.readouterr().out.splitlines() == [format_line(e) for e in events]
    # An epoch line names the AUC within the patch positions beside the pooled one.
    from cac.cli_train import _human_line

    line = _human_line({"event": "epoch", "stage": 1, "epoch": 3, "epochs": 12, "train_loss": 0.41, "val_loss": 0.5,
                        "val_f1": 0.6, "val_auc": 0.85, "val_auc_within_position": 0.8, "seconds": 30.2})
    assert "val_auc 0.850  (within positions) 0.800  30 s" in line, line


@pytest.mark.slow
def test_cli_train_in_a_terminal_ends_with_where_the_model_was_written(tmp_path, capsys, monkeypatch):
    import sys as _sys

    from cac.cli import main

    out = tmp_path / "m.safetensors"
    monkeypatch.setattr(_sys.stdout, "isatty", lambda: True)  # capsys's stdout stands for a terminal
    code = main(["train", "--phantom-pool", "2", "--out", str(out), "--width", "8", "--samples-per-epoch", "16",
                 "--epochs1", "1", "--epochs2", "1", "--threads", "1", "--batch-size", "4",
                 "--frames-per-acquisition", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("training on 2 phantom patients (--seed 0): ") and "1 + 1 epochs" in lines[0]
    assert lines[-1] == f"model written to {out} (card {tmp_path / 'm.json'}, curves {tmp_path / 'm_curves.png'})"
    assert not [line for line in lines if line.startswith("{")] and out.exists()
