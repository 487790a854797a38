"""Data-parallel training (CACTrainerLib.distributed): 2 CPU ranks (gloo) through torch's real launcher.

The observed runs (Testing/ddp_probe.py) train a width-8 network for 2 + 1 epochs of
2 steps (global batch 8, 4 per rank) with hard negatives and the cosine schedule,
fp32, no augmentation.  The one-process reference runs the same probe without the
launcher.

Tolerance of "equals the one-process run": every BatchNorm is kept in eval mode in
both runs (``--frozen-bn``), so that an output does not depend on which samples
share its batch, and stage 1 trains on BCE, a per-sample mean.  The two stage-1 runs
then differ only in the order of floating-point sums (per-rank gradients averaged
by all-reduce): after 4 Adam steps the classifier's weights agree to ``atol=2e-5``
(measured: see docs/learning.md).  Not compared, because they are different
computations rather than rounding: BatchNorm in training mode (each rank normalises
with its own share's statistics unless --sync-bn), the decoder of stage 2 (its
generalized Dice is a ratio of batch sums, computed on each rank's share, as
DDP does with any batch-level loss) and augmentation (each rank draws its own).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cac.cli import main as cac_main
from CACIdentifierLib.errors import CacError
from CACTrainerLib import distributed

phantom = pytest.importorskip("CACTrainerLib.phantom", reason="phantom generator missing")

PROBE = Path(__file__).with_name("ddp_probe.py")
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def frameset(tmp_path_factory):
    from CACTrainerLib import dataset as D

    params = phantom.PhantomParams(n_frames=40, calcium_mu_per_mm=0.3)
    sets = []
    for p in range(2):
        acq = phantom.generate_acquisition(params, seed=3, patient=p, acquisition=0)
        sets.append(D.frames_from_acquisition(acq, acquisition=f"P{p}A1", patient=f"P{p}",
                                              frames_per_acquisition=3))
    fs = D.FrameSet.concat(sets)
    path = tmp_path_factory.mktemp("fs") / "fs.npz"
    np.savez(path, **{k: getattr(fs, k) for k in D.FrameSet.array_fields()}, acquisition=np.array(fs.acquisition),
             patient=np.array(fs.patient))
    return path


def _probe(frameset, out: Path, logs: Path, *extra, ranks: int = 2):
    cmd = (LAUNCH if ranks == 2 else [sys.executable]) + [
        str(PROBE), str(frameset), str(out / "run"), str(logs), "--watch", str(out), *extra]
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _log(logs: Path, rank: int) -> dict:
    return json.loads((logs / f"rank{rank}.json").read_text())


def _weights(logs: Path, rank: int) -> dict:
    z = np.load(logs / f"final_rank{rank}.npz")
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def runs(frameset, tmp_path_factory):
    """One 2-rank run and the one-process reference, both with frozen BatchNorm."""
    root = tmp_path_factory.mktemp("ddp")
    t0 = time.perf_counter()
    r = _probe(frameset, root / "ddp", root / "ddp_logs", "--frozen-bn")
    assert r.returncode == 0, r.stderr[-3000:]
    t1 = time.perf_counter()
    r = _probe(frameset, root / "one", root / "one_logs", "--frozen-bn", ranks=1)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"2-rank run {t1 - t0:.1f} s, one process {time.perf_counter() - t1:.1f} s")
    return root


def test_ranks_train_on_disjoint_shares_of_the_global_batches(runs):
    r0, r1, one = _log(runs / "ddp_logs", 0), _log(runs / "ddp_logs", 1), _log(runs / "one_logs", 0)
    assert len(one["steps"]) == 6 and len(r0["steps"]) == len(r1["steps"]) == 6
    for a, b, ref in zip(r0["steps"], r1["steps"], one["steps"]):
        assert (a["stage"], a["epoch"], a["i"]) == (b["stage"], b["epoch"], b["i"]) == (
            ref["stage"], ref["epoch"], ref["i"])
        assert len(a["ids"]) == len(b["ids"]) == 4 and len(ref["ids"]) == 8
        # disjoint as positions of the global batch (a balanced epoch may repeat a patch)
        assert a["ids"] + b["ids"] == ref["ids"]
    # across the run the two ranks saw different patches, not one stream twice
    assert [s["ids"] for s in r0["steps"]] != [s["ids"] for s in r1["steps"]]


def test_weights_identical_on_both_ranks_after_every_step(runs):
    h0, h1 = _log(runs / "ddp_logs", 0)["hashes"], _log(runs / "ddp_logs", 1)["hashes"]
    assert len(h0) == 6 and h0 == h1
    assert len(set(h0)) == 6  # every step changed the weights
    w0, w1 = _weights(runs / "ddp_logs", 0), _weights(runs / "ddp_logs", 1)
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)  # buffers too (BN recalibration)


def test_two_ranks_equal_one_process_on_the_global_batch(runs):
    ddp, one = _weights(runs / "ddp_logs", 0), _weights(runs / "one_logs", 0)
    assert ddp.keys() == one.keys()
    # the classifier (trained in stage 1, frozen in stage 2): parameters and BatchNorm buffers
    keys = [k for k in ddp if not k.startswith("decoder.") and ddp[k].dtype.kind == "f"]
    assert len(keys) > 50
    worst = max(float(np.abs(ddp[k].astype(np.float64) - one[k]).max()) for k in keys)
    print(f"largest classifier weight difference, 2 ranks vs one process: {worst:.2e}")
    assert worst <= 2e-5, worst
    h_ddp, h_one = _log(runs / "ddp_logs", 0)["history"], _log(runs / "one_logs", 0)["history"]
    assert [h["stage"] for h in h_ddp] == [1, 1, 2]
    for a, b in zip(h_ddp[:2], h_one[:2]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)


def test_only_rank_0_writes(runs):
    w0, w1 = _log(runs / "ddp_logs", 0)["writes"], _log(runs / "ddp_logs", 1)["writes"]
    assert w1 == []
    names = {Path(p).name for _, p in w0}
    assert {"checkpoint.json", "checkpoint.safetensors", "history.json"} <= names
    files = {p.name for p in (runs / "ddp" / "run").iterdir()}
    assert files == {"checkpoint.json", "checkpoint.safetensors", "history.json"}


def test_killed_ddp_run_resumes_where_it_stopped(runs, frameset):
    out, logs = runs / "killed", runs / "killed_logs"
    r = _probe(frameset, out, logs, "--frozen-bn", "--kill-after-epoch", "1")
    assert r.returncode != 0 and not (logs / "rank0.json").exists()
    info = json.loads((out / "run" / "checkpoint.json").read_text())
    assert (info["stage"], info["epochs_done"]) == (1, 1)
    r = _probe(frameset, out, logs, "--frozen-bn", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = _log(logs, 0), _log(logs, 1)
    assert [(s["stage"], s["epoch"]) for s in r0["steps"]] == [(1, 1), (1, 1), (2, 0), (2, 0)]
    assert r0["hashes"] == r1["hashes"] and r1["writes"] == []
    assert [h["epoch"] for h in r0["history"]] == [1, 2, 1]
    # the resumed run ends where the uninterrupted one did
    ref, got = _weights(runs / "ddp_logs", 0), _weights(logs, 0)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, err_msg=k)


# -- the environment ------------------------------------------------------------------------------

ENV = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "0", "WORLD_SIZE": "2"}


def test_environment_checks():
    assert not distributed.requested({}) and not distributed.requested(dict(ENV, WORLD_SIZE="1"))
    assert distributed.requested(ENV)
    ctx = distributed.check_environment(ENV, "auto", 0, batch_size=32)
    assert (ctx.device, ctx.backend, ctx.world) == ("cpu", "gloo", 2)
    ctx = distributed.check_environment(dict(ENV, RANK="1", LOCAL_RANK="1"), "auto", 2)
    assert (ctx.device, ctx.backend) == ("cuda:1", "nccl")
    cases = [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "auto", 0, {}, "MASTER_ADDR, MASTER_PORT not set"),
        (dict(ENV, RANK="1", LOCAL_RANK="1"), "cuda", 1, {}, "only 1 CUDA device"),
        (dict(ENV, LOCAL_WORLD_SIZE="4"), "auto", 2, {}, "4 ranks on this machine but only 2"),
        (ENV, "auto", 0, {"batch_size": 9}, "cannot be split over 2 ranks"),
        (ENV, "auto", 0, {"batch_size": 2}, "fewer than 2 samples per rank"),
        (ENV, "cpu", 0, {"sync_bn": True}, "--sync-bn needs CUDA"),
        (ENV, "cuda:1", 2, {}, "use --device cuda"),
        (ENV, "mps", 0, {}, "CUDA or the CPU"),
        (dict(ENV, RANK="2"), "auto", 0, {}, "not in 0..WORLD_SIZE-1"),
        (dict(ENV, MASTER_PORT="x"), "auto", 0, {}, "must be integers"),
    ]
    for env, device, gpus, kw, message in cases:
        with pytest.raises(CacError, match=message.replace(".", r"\.").replace("-", r"\-")):
            distributed.check_environment(env, device, gpus, **kw)


def test_shares_of_a_batch_and_their_loss_weights():
    ctx = distributed.Context(rank=1, world=2, local_rank=1, device="cpu", backend="gloo")
    assert ctx.slice_of(list(range(8))) == (4, 8)
    assert ctx.slice_of(list(range(7))) == (4, 7)  # a last, smaller batch: shares as even as possible
    assert ctx.usable([[0] * 8, [0] * 3]) == [[0] * 8]  # 3 samples cannot give both ranks two
    assert ctx.loss_weight(4, 8) == 1.0 and ctx.loss_weight(3, 7) == pytest.approx(6 / 7)


def test_misset_environment_is_one_error_line_exit_2(tmp_path, monkeypatch, capsys):
    for k in DIST_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = cac_main(["train", str(tmp_path), "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "MASTER_ADDR, MASTER_PORT not set" in err
    assert "torchrun --nproc_per_node" in err
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    code = cac_main(["train", str(tmp_path), "--out", str(tmp_path / "m.safetensors"), "--nproc", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch-size 32 cannot be split into 3" in err
    code = cac_main(["train", str(tmp_path), "--out", str(tmp_path / "m.safetensors"), "--sync-bn"])
    err = capsys.readouterr().err
    assert code == 2 and "--sync-bn is for distributed runs" in err


def test_launch_command_strips_nproc():
    assert distributed.strip_nproc(["train", "d", "--nproc", "2", "--out", "m", "--nproc=3"]) == [
        "train", "d", "--out", "m"]
    cmd = distributed.launch_command(2, ["train", "d"], "cac.cli")
    assert cmd[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "-m"] and cmd[-3:] == ["cac.cli", "train", "d"]


@pytest.mark.slow
def test_cac_train_nproc_2_writes_one_model(tmp_path):
    """`cac train --nproc 2` (the CLI through the launcher): one set of progress lines, one model."""
    exe = [sys.executable, "-m", "cac.cli"]
    ds = tmp_path / "ds"
    r = subprocess.run(exe + ["phantom", str(ds), "--patients", "2", "--acquisitions-per-patient", "1",
                              "--frames", "30", "--seed", "5", "--calcium-free-fraction", "0"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m.safetensors"
    r = subprocess.run(exe + ["train", str(ds), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                              "--samples-per-epoch", "8", "--frames-per-acquisition", "2", "--width", "8",
                              "--threads", "1", "--json", "--nproc", "2"],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("saved") == 1 and kinds.count("epoch") == 2
    assert events[0] == {"event": "distributed", "ranks": 2, "backend": "gloo", "sync_bn": False,
                         "batch_per_rank": 2}
    from CACIdentifierLib.modelio import load_model

    _, meta = load_model(out)
    assert meta["training"]["config"]["batch_size"] == 4
    names = {p.name for p in tmp_path.iterdir()}
    assert {"ds", "m.run", "m.safetensors", "m_curves.png"} <= names and not [n for n in names if n.startswith(".")]


def test_ranks_generate_a_phantom_pool_once_between_them(tmp_path):
    """`--phantom-pool` (and the stream's new patients) in a data-parallel run: each rank generates its
    share and receives the others', and every rank ends with exactly the one-process pool."""
    probe = Path(__file__).with_name("ddp_pool_probe.py")
    one, two = tmp_path / "one", tmp_path / "two"
    for out, launch in ((one, [sys.executable]), (two, LAUNCH)):
        out.mkdir()
        r = subprocess.run(launch + [str(probe), str(out)], capture_output=True, text=True, env=_env(), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    reference = json.loads((one / "pool_rank0.json").read_text())
    ranks = [json.loads((two / f"pool_rank{k}.json").read_text()) for k in (0, 1)]
    assert sorted(reference["made"]) == [0, 1, 2] and reference["frames"] > 0
    assert ranks[0]["made"] == [0, 2] and ranks[1]["made"] == [1]  # patient i on rank i % 2, each once
    assert ranks[0]["digest"] == ranks[1]["digest"] == reference["digest"]
