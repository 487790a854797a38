"""Training on a stream of new patients: the window, the hard-negative scores it carries, resume, `cac train`.

``cac train --phantom-pool N --refresh-patients K`` replaces the K oldest training
patients with K never-seen ones every epoch (``phantom_pool.PatientStream``), so a
long run cannot memorise its patients (docs/learning.md, Recipes).
"""

import json
import weakref

import numpy as np
import pytest
import torch
from CACIdentifierLib.errors import CacError
from CACTrainerLib import dataset as D
from CACTrainerLib import phantom
from CACTrainerLib import phantom_pool as PP
from CACTrainerLib import training as T

ARCH = {"width": 8, "decoder_channels": [16, 8, 8, 8, 8]}


@pytest.fixture(scope="module")
def patients():
    """Five small phantom patients (one calcium-free), 3 paired frames each, as the stream's source."""
    params = phantom.PhantomParams(n_frames=40, calcium_mu_per_mm=0.3)
    out = {}
    for p in range(5):
        acq = phantom.generate_acquisition(params, seed=4, patient=p, acquisition=0, calcium_free=(p == 2))
        out[p] = D.frames_from_acquisition(acq, acquisition=f"P{p}", patient=f"P{p}", frames_per_acquisition=3)
    return out


def test_window_slides_over_new_patients_and_keeps_only_itself(monkeypatch, patients):
    made = []

    def fake_generate(ids, **kw):
        made.append(list(ids))
        return [patients[i % 5] for i in ids]

    monkeypatch.setattr(PP, "_generate", fake_generate)
    s = PP.PatientStream([0, 1, 2], refresh=1, next_patient=3, seed=9)
    assert s.patients(0) == [0, 1, 2] and s.patients(1) == [1, 2, 3] and s.patients(4) == [4, 5, 6]
    fs0 = s(0)
    assert made == [[0, 1, 2]] and sorted(set(fs0.patient)) == ["P0", "P1", "P2"]
    fs1 = s(1)
    assert made[-1] == [3]  # only the new patient is generated
    assert [p for p in dict.fromkeys(fs1.patient)] == ["P1", "P2", "P3"]
    assert sorted(s._cache) == [1, 2, 3]  # the patient that left is dropped
    s(3)
    assert made[-1] == [4, 5]
    with pytest.raises(ValueError):
        PP.PatientStream([0, 5], refresh=1, next_patient=5, seed=9)  # a "new" patient would be a starting one


def test_the_window_is_held_once_not_twice(monkeypatch, patients):
    """The patients a stream keeps are views of the window it returns: one window in memory during an epoch,
    not the window and a copy of it (the old code held both: about twice the window's bytes)."""
    import tracemalloc

    def fresh_copies(ids, **kw):  # made anew, as generation does, so tracemalloc sees every byte
        return [patients[i % 5].subset(np.arange(len(patients[i % 5]))) for i in ids]

    monkeypatch.setattr(PP, "_generate", fresh_copies)
    trims = []
    monkeypatch.setattr(PP, "release_freed_memory", lambda: trims.append(1))  # the freed copies' pages go back
    s = PP.PatientStream([0, 1, 3], refresh=1, next_patient=4, seed=9)
    tracemalloc.start()
    try:
        fs0 = s(0)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    window = sum(getattr(fs0, k).nbytes for k in D.FrameSet.array_fields())
    assert held < 1.3 * window, (held, window)
    assert all(np.shares_memory(s._cache[p].nc, fs0.nc) for p in (0, 1, 3)) and trims == [1]
    fs0 = None  # training releases the old window before it asks for the next
    fs1 = s(1)  # built from views of the released window: each patient's frames are still its own
    names = np.array(fs1.patient)
    for p in (1, 3, 4):
        for k in D.FrameSet.array_fields():
            np.testing.assert_array_equal(getattr(fs1, k)[names == f"P{p}"], getattr(patients[p], k))


def test_a_window_that_does_not_fit_is_refused_in_one_line(monkeypatch, patients):
    """Without room for the window's copy the stream says so (close programs, --resume), instead of the kernel's
    OOM killer stopping the run without a word (it stopped a 10.5 GB twins arm so in session 46)."""
    import CACIdentifierLib.cine as cine

    monkeypatch.setattr(PP, "_generate", lambda ids, **kw: [patients[i % 5] for i in ids])
    monkeypatch.setattr(cine, "memory_available_bytes", lambda: 3 * 2**20)
    s = PP.PatientStream([0, 1, 3], refresh=1, next_patient=4, seed=9)
    with pytest.raises(CacError, match=r"window \(3 patients\) needs about \d+ MiB, more than this machine can "
                                       r"spare \(3 MiB available\); close other programs and continue with --resume"):
        s(0)
    monkeypatch.setattr(cine, "memory_available_bytes", lambda: None)  # unknown (not Linux): no refusal
    assert len(s(0)) == sum(len(patients[p]) for p in (0, 1, 3))


def test_cli_training_does_not_hold_the_whole_set_beside_its_split(monkeypatch, tmp_path, patients, capsys):
    """`cac train DATASET --cv none` splits the frames into training and validation copies; the whole set is
    released before training starts (it was held for the whole run: every frame twice)."""
    from cac import cli_train
    from cac.cli import main

    holder = [D.FrameSet.concat([patients[p] for p in range(5)])]
    whole = weakref.ref(holder[0])
    seen = []

    def train(*a, **kw):
        seen.append(whole() is None)
        raise CacError("stopped by the test")

    monkeypatch.setattr(cli_train, "_load", lambda *a, **kw: holder.pop())
    monkeypatch.setattr(T, "train", train)
    (tmp_path / "ds").mkdir()
    assert main(["train", str(tmp_path / "ds"), "--cv", "none", "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "stopped by the test" in capsys.readouterr().err
    assert seen == [True]


def test_a_pool_that_cannot_fit_is_refused_before_any_patient_is_made(monkeypatch, tmp_path, capsys):
    """40 patients x 8 frames x 1.5 MiB = 480 MiB at least: with 100 MiB available `cac train` says so at once,
    for a stream and for a fixed pool, instead of generating for hours and being killed for memory."""
    import CACIdentifierLib.cine as cine
    from cac.cli import main

    def never(*a, **kw):
        raise AssertionError("a patient was generated")

    monkeypatch.setattr(PP, "_generate", never)
    monkeypatch.setattr(cine, "memory_available_bytes", lambda: 100 * 2**20)
    for stream in ([], ["--refresh-patients", "5"]):
        out = tmp_path / f"m{len(stream)}.safetensors"
        assert main(["train", "--phantom-pool", "40", *stream, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert ("--phantom-pool 40: 40 patients x 8 frames hold at least 480 MiB, more than this machine can spare "
                "(100 MiB available)") in err, err
        assert "Traceback" not in err and not out.exists()
    monkeypatch.setattr(cine, "memory_available_bytes", lambda: 481 * 2**20)
    PP.check_pool_memory(40, 8, background=False)  # fits: no refusal
    with pytest.raises(CacError, match="at least 640 MiB"):
        PP.check_pool_memory(40, 8, background=True)  # the residual channel's background: 2 MiB a frame
    with pytest.raises(CacError, match="40 patients x 16 frames hold at least 960 MiB"):
        PP.check_pool_memory(40, None, background=False)  # None: every paired frame, at least SURE_FRAMES of them


def _copies(patients, ids):
    return [patients[p].subset(range(len(patients[p]))) for p in ids]


def test_a_consumed_concat_never_holds_the_frames_twice(patients):
    """A dataset or a fixed pool is copied into one set once loaded; `consume` empties each input field as soon
    as it is copied, so the peak is the set plus one field (was: the set twice)."""
    import tracemalloc

    peaks = {}
    for consume in (False, True):
        tracemalloc.start()
        sets = _copies(patients, [0, 1, 3, 4] * 3)
        held = sum(fs.nbytes for fs in sets)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        both = D.FrameSet.concat(sets, consume=consume)
        peaks[consume] = (tracemalloc.get_traced_memory()[1] - base + held) / held
        tracemalloc.stop()
        for k in D.FrameSet.array_fields():
            np.testing.assert_array_equal(getattr(both, k),
                                          np.concatenate([getattr(patients[p], k) for p in [0, 1, 3, 4] * 3]))
        assert both.patient == [f"P{p}" for p in [0, 1, 3, 4] * 3 for _ in range(len(patients[p]))]
        assert all(len(fs) == (0 if consume else len(patients[0])) for fs in sets)
    assert peaks[False] > 1.9, peaks
    assert peaks[True] < 1.4, peaks  # the largest field (nc, c or background) is 2 of the 8 bytes a pixel


def test_a_dataset_that_cannot_fit_is_refused_after_its_first_acquisition(monkeypatch, tmp_path, patients, capsys):
    """`cac train DATASET`: once the first acquisition shows what one costs, the others are checked against the
    memory available, in one line (exit 2), instead of loading for hours and a silent OOM stop."""
    import CACIdentifierLib.cine as cine
    from cac.cli import main

    records = [{"id": f"A{i}", "patient": f"P{i}"} for i in range(4)]
    loaded = []

    def from_record(rec, **kw):
        loaded.append(rec["id"])
        return _copies(patients, [int(rec["id"][1:]) % 2])[0]

    monkeypatch.setattr(D, "load_records", lambda dataset: records)
    monkeypatch.setattr(D, "frames_from_record", from_record)
    one = patients[0].nbytes
    monkeypatch.setattr(cine, "memory_available_bytes", lambda: 2 * one)
    (tmp_path / "ds").mkdir()
    out = tmp_path / "m.safetensors"
    assert main(["train", str(tmp_path / "ds"), "--cv", "none", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert loaded == ["A0"] and not out.exists() and "Traceback" not in err
    assert (f"the dataset's other 3 acquisitions need about {round(3 * one / 2**20)} MiB for their training frames, "
            f"more than this machine can spare ({round(2 * one / 2**20)} MiB available after 1 of 4)") in err, err
    monkeypatch.setattr(cine, "memory_available_bytes", lambda: 3 * one)  # the rest fits: all four loaded
    loaded.clear()
    fs = D.build_frameset(tmp_path / "ds")
    assert loaded == ["A0", "A1", "A2", "A3"] and len(fs) == 2 * (len(patients[0]) + len(patients[1]))


def test_carry_scores_keeps_shared_frames_by_acquisition_and_frame(patients):
    old = D.FrameSet.concat([patients[0], patients[1]])
    new = D.FrameSet.concat([patients[1], patients[3]])
    scores = np.arange(old.n_patches, dtype=np.float32)
    got = T._carry_scores(T._frame_keys(old), scores, new)
    n1 = patients[1].n_patches
    # P1's patches come after P0's in the old window and first in the new one; P3 is new (1)
    np.testing.assert_array_equal(got[:n1], scores[patients[0].n_patches:patients[0].n_patches + n1])
    np.testing.assert_array_equal(got[n1:], np.ones(patients[3].n_patches, np.float32))
    # hard_negative_init "mean": the new patient's patches are "not drawn yet" (NaN), the shared ones kept
    got = T._carry_scores(T._frame_keys(old), scores, new, T._unseen_score(T.TrainConfig(hard_negative_init="mean")))
    np.testing.assert_array_equal(got[:n1], scores[patients[0].n_patches:patients[0].n_patches + n1])
    assert np.isnan(got[n1:]).all()


@pytest.mark.parametrize("init", ["one", "mean"])
def test_training_on_a_stream_changes_data_each_epoch_and_resumes_exactly(patients, tmp_path, init):
    order = [0, 1, 3, 4]
    calls = []

    def stream(g):
        calls.append(g)
        return D.FrameSet.concat([patients[order[g % 4]], patients[order[(g + 1) % 4]]])

    val = patients[2].subset([0])
    cfg = T.TrainConfig(epochs1=2, epochs2=1, batch_size=8, lr1=1e-3, samples_per_epoch=16, architecture=ARCH,
                        num_threads=2, hard_negative_frac=0.5, refresh_patients=1, recipe="default",
                        hard_negative_init=init)
    events = []
    r1 = T.train(None, val, cfg, tmp_path / "a", stream=stream, emit=events.append)
    assert calls == [0, 1, 2]  # stage 2's epochs continue the count
    assert [("data_seconds" in h) for h in r1.history] == [False, True, True]
    start = next(e for e in events if e["event"] == "start")
    assert start["train"]["patients"] == 2 and start["config"]["refresh_patients"] == 1
    with pytest.raises(CacError, match="no training frames"):
        T.train(None, val, cfg, tmp_path / "b")  # neither a training set nor a stream

    class Stop(Exception):
        pass

    def interrupt(done, total, msg):
        if msg.startswith("stage 1 epoch 2"):
            raise Stop

    calls.clear()
    with pytest.raises(Stop):
        T.train(None, val, cfg, tmp_path / "c", stream=stream, progress=interrupt)
    info = json.loads((tmp_path / "c" / T.CHECKPOINT_JSON).read_text())
    assert (info["stage"], info["epochs_done"]) == (1, 1)
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "c" / "checkpoint.safetensors"))["hnm.scores"]
    # 16 samples of an epoch leave patches undrawn: NaN ("not drawn yet") with "mean", 1 with "one"
    assert np.isnan(saved).any() == (init == "mean") and (saved == 1).any() == (init == "one")
    calls.clear()
    r3 = T.train(None, val, cfg, tmp_path / "c", stream=stream, resume=True)
    assert calls == [1, 2]  # the window it stopped in, not epoch 0's
    assert [h["train_loss"] for h in r3.history] == [h["train_loss"] for h in r1.history]
    for (k, a), (_, b) in zip(r1.model.state_dict().items(), r3.model.state_dict().items()):
        assert torch.equal(a, b), k
    # a checkpoint of a fixed training set is not resumed as a stream (or the other way round)
    with pytest.raises(CacError, match="refresh_patients"):
        T.train(patients[0], val, T.TrainConfig(**{**cfg.__dict__, "refresh_patients": 0}), tmp_path / "c",
                resume=True)


def test_the_old_window_is_released_before_the_next_is_built(patients, tmp_path):
    # A 221-patient window holds ~2.6 GB of arrays: holding the old one while the next is generated made the peak 3 windows.
    refs, alive = [], []

    def stream(g):
        alive.append(sum(r() is not None for r in refs))
        fs = D.FrameSet.concat([patients[[0, 1, 3, 4][g % 4]], patients[[0, 1, 3, 4][(g + 1) % 4]]])
        refs.append(weakref.ref(fs))
        return fs

    cfg = T.TrainConfig(epochs1=2, epochs2=1, batch_size=8, lr1=1e-3, samples_per_epoch=16, architecture=ARCH,
                        num_threads=2, hard_negative_frac=0.5, refresh_patients=1, recipe="default")
    T.train(None, patients[2].subset([0]), cfg, tmp_path / "a", stream=stream)
    assert alive == [0, 0, 0]


def test_cli_refresh_patients(tmp_path, capsys):
    from cac.cli import main

    code = main(["train", "--refresh-patients", "2", "--out", str(tmp_path / "m.safetensors"), str(tmp_path)])
    assert code == 2 and "--refresh-patients needs --phantom-pool" in capsys.readouterr().err
    code = main(["train", "--phantom-pool", "4", "--refresh-patients", "-1", "--out", str(tmp_path / "m.safetensors")])
    assert code == 2 and "0 or more" in capsys.readouterr().err
    code = main(["train", "--phantom-pool", "4", "--refresh-patients", "1", "--val-fraction", "1.5",
                 "--out", str(tmp_path / "m.safetensors")])
    assert code == 2 and "--val-fraction 1.5 must be" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_on_a_phantom_stream(tmp_path, capsys):
    from cac.cli import main
    from CACIdentifierLib.modelio import load_model

    out = tmp_path / "m.safetensors"
    code = main(["train", "--phantom-pool", "4", "--refresh-patients", "1", "--epochs1", "2", "--epochs2", "1",
                 "--width", "8", "--frames-per-acquisition", "2", "--samples-per-epoch", "8", "--batch-size", "4",
                 "--val-fraction", "0.25", "--threads", "2", "--json", "--out", str(out)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert code == 0
    epochs = [e for e in lines if e["event"] == "epoch"]
    assert len(epochs) == 3 and all("data_seconds" in e for e in epochs[1:])
    _, card = load_model(out)
    data = card["training"]["data"]
    # 3 training patients in the first window, one new one for each of the two later epochs; 1 validation
    assert data["train"] == {"patients": 5, "window_patients": 3, "refresh_patients": 1}
    assert data["val"]["patients"] == 1 and card["training"]["config"]["refresh_patients"] == 1


@pytest.mark.filterwarnings("ignore:phantom pool")  # short 24-frame cines: the periodicity warning is expected
def test_prefetch_gives_the_same_window_and_ends_its_workers():
    kw = dict(refresh=1, next_patient=2, seed=3, n_frames=24, frames_per_acquisition=2, size=128, workers=1)
    plain = PP.PatientStream([0, 1], **kw)
    s = PP.PatientStream([0, 1], **kw)
    s(0)
    assert s.prefetch(1) and not s.prefetch(1)  # one prefetch at a time
    pool = s._pending[1]
    got, want = s(1), plain(1)
    assert s._pending is None and pool._state != "RUN"  # collected and its workers ended
    assert got.patient == want.patient
    for k in D.FrameSet.array_fields():
        np.testing.assert_array_equal(getattr(got, k), getattr(want, k), err_msg=k)
    assert not s.prefetch(1)  # nothing left to generate for a window already here
    # A prefetch for another window is dropped, not mixed in; close() ends one still running.
    assert s.prefetch(5)
    fs2 = s(2)
    assert s._pending is None and sorted(s._cache) == [2, 3] and len(fs2) == len(plain(2))
    assert s.prefetch(3)
    pool = s._pending[1]
    s.close()
    assert s._pending is None and pool._state != "RUN"


_REAL_ONE = PP._one


def _fails_once(job):
    """``phantom_pool._one`` that fails the first time in any process (a flag file), as a memory squeeze did."""
    import os
    from pathlib import Path

    from CACIdentifierLib.errors import CacError

    flag = Path(os.environ["CAC_TEST_FAIL_ONCE"])
    if not flag.exists():
        flag.write_text("failed")
        raise CacError("synchronizing 64 frames needs about 32 MiB, more than this machine can spare")
    return _REAL_ONE(job)


@pytest.mark.filterwarnings("ignore:phantom pool")
def test_a_prefetch_that_fails_is_made_again_in_the_foreground(tmp_path, monkeypatch):
    """A background patient that fails once (memory short for a moment) no longer stops a training run."""
    from CACIdentifierLib.errors import CacWarning

    kw = dict(refresh=1, next_patient=2, seed=3, n_frames=24, frames_per_acquisition=2, size=128, workers=1)
    plain, s = PP.PatientStream([0, 1], **kw), PP.PatientStream([0, 1], **kw)
    s(0)
    monkeypatch.setenv("CAC_TEST_FAIL_ONCE", str(tmp_path / "failed"))
    monkeypatch.setattr(PP, "_one", _fails_once)
    assert s.prefetch(1)
    with pytest.warns(CacWarning, match="generating the next patients ahead failed .* generating them again now"):
        got = s(1)
    assert (tmp_path / "failed").exists() and s._pending is None
    want = plain(1)
    for k in D.FrameSet.array_fields():
        np.testing.assert_array_equal(getattr(got, k), getattr(want, k), err_msg=k)


@pytest.mark.filterwarnings("ignore:phantom pool")
def test_counterfactual_twins_differ_from_their_cine_only_at_the_calcium():
    """--counterfactual-twins: each calcified cine's calcium frames again, without the calcium, labelled 0."""
    from scipy import ndimage as ndi

    kw = dict(seed=3, n_frames=24, frames_per_acquisition=3, size=128, workers=1, calcium_free_fraction=0.0)
    patients = [p for p in range(6) if PP.phantom_pool(0, patients=[p], **kw).labels.any()][:2]
    assert patients, "no calcified pool patient among the first six"
    plain = PP.phantom_pool(0, patients=patients, **kw)
    both = PP.phantom_pool(0, patients=patients, twins=True, **kw)
    twin = np.array([a.endswith(PP.TWIN_SUFFIX) for a in both.acquisition])
    calcified = plain.labels.any(axis=1)
    # The cines' own frames are unchanged; one twin frame per frame with labelled calcium.
    for k in D.FrameSet.array_fields():
        np.testing.assert_array_equal(getattr(both.subset(np.flatnonzero(~twin)), k), getattr(plain, k), err_msg=k)
    assert twin.sum() == calcified.sum() > 0
    tw, src = both.subset(np.flatnonzero(twin)), plain.subset(np.flatnonzero(calcified))
    assert not tw.labels.any() and not tw.calcium.any() and not tw.roi.any()
    assert tw.patient == src.patient and all(a == b + PP.TWIN_SUFFIX for a, b in zip(tw.acquisition, src.acquisition))
    np.testing.assert_array_equal(tw.frame_index, src.frame_index)
    np.testing.assert_array_equal(tw.contrast_index, src.contrast_index)
    # The paired contrast frames lose their calcium too (a calcium-free patient's hold none), nothing else.
    assert 0 < np.mean(tw.c != src.c) < 0.01
    # The non-contrast frames differ only at the calcium (the labelled deposits and those too faint to be
    # labelled, which the twin loses too): there they are brighter; everywhere else they are the same.
    diff = tw.nc.astype(np.float32) - src.nc.astype(np.float32)
    near = np.stack([ndi.binary_dilation(m, iterations=8) for m in src.calcium])
    assert diff[src.calcium].mean() > 0.01
    assert np.mean(np.abs(diff[~near]) > 2 / 255) < 0.002
    # The residual channel's background is the twin's own -- what this patient's calcium-free cine, synchronized
    # by itself, gets -- not the calcified cine's, which keeps part of a deposit that moves little.
    for p in patients:
        rows = np.array([pat == PP.patient_name(3, p) for pat in tw.patient])
        alone = D.frames_from_acquisition(
            PP.pool_acquisition(3, p, n_frames=24, size=128, calcium_free_fraction=0.0, calcium_visible=False),
            frames_per_acquisition=None)
        np.testing.assert_array_equal(tw.background[rows], np.broadcast_to(alone.background[0], tw.background[rows].shape))
    moved = tw.background.astype(np.float32) - src.background.astype(np.float32)
    assert moved.max() > 0.01 and np.mean(np.abs(moved) > 2 / 255) < 0.01  # brighter where calcium stayed, only there


@pytest.mark.filterwarnings("ignore:phantom pool")
def test_a_twin_carries_no_label_where_the_annotators_marked_an_invisible_deposit():
    """Pool patient 63 of seed 1011: the simulated annotators mark its twin's invisible deposit (it lies on
    something darker than its ring); the twin is calcium-free all the same."""
    both = PP.phantom_pool(0, patients=[63], seed=1011, workers=1, twins=True)
    twin = np.array([a.endswith(PP.TWIN_SUFFIX) for a in both.acquisition])
    assert twin.any() and both.labels[~twin].any()
    assert not both.labels[twin].any() and not both.calcium[twin].any()


def test_cli_counterfactual_twins_need_a_stream(tmp_path, capsys):
    from cac.cli import main
    from CACTrainerLib.checkpoint_io import data_source, describe_source, same_source

    code = main(["train", "--phantom-pool", "4", "--counterfactual-twins", "--out", str(tmp_path / "m.safetensors")])
    assert code == 2 and "--counterfactual-twins needs --phantom-pool N with --refresh-patients" in capsys.readouterr().err
    plain = data_source(phantom_pool=8, refresh_patients=2, seed=1)
    twins = data_source(phantom_pool=8, refresh_patients=2, seed=1, twins=True)
    assert "counterfactual_twins" not in plain and same_source(plain, dict(plain))
    assert same_source(plain, twins) is False and same_source(twins, dict(twins))  # --resume on other data refused
    assert "with counterfactual twins" in describe_source(twins)
