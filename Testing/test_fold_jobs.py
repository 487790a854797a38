"""Cross-validation folds as independent jobs (`cac train --fold K`), as on a cluster.

Two folds run as two concurrent processes on the CPU into one run folder, then
`--summarize` merges them.  A job is idempotent: rerunning a finished fold does
nothing (exit 0, a message), and with `--resume` a killed fold continues from
its checkpoint (and a fold without one starts), so a job script can always pass
`--resume` and be requeued.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

EXE = [sys.executable, "-m", "cac.cli"]
TINY = ["--cv", "patient", "--batch-size", "4", "--samples-per-epoch", "8", "--frames-per-acquisition", "2",
        "--width", "8", "--threads", "1", "--json", "--resume"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _events(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_two_fold_jobs_at_once_then_summary_rerun_and_resume(tmp_path):
    ds, run = tmp_path / "ds", tmp_path / "cv"
    r = subprocess.run(EXE + ["phantom", str(ds), "--patients", "3", "--acquisitions-per-patient", "1",
                              "--frames", "30", "--seed", "5", "--calcium-free-fraction", "0"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    jobs = [subprocess.Popen(EXE + ["train", str(ds), "--out", str(run), "--fold", str(k), "--epochs", "1", *TINY],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            for k in (0, 1)]
    outs = [j.communicate(timeout=600) for j in jobs]
    for j, (out, err) in zip(jobs, outs):
        assert j.returncode == 0, err[-3000:]
        assert [e["event"] for e in _events(out)][-1] == "fold_done"
    assert sorted(p.name for p in run.iterdir()) == ["fold_0", "fold_0.json", "fold_1", "fold_1.json"]
    r = subprocess.run(EXE + ["train", "--summarize", str(run), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["folds_run"] == 2 and report["folds_total"] == 3

    # rerunning a finished fold does nothing
    stamp = (run / "fold_0.json").stat().st_mtime_ns
    r = subprocess.run(EXE + ["train", str(ds), "--out", str(run), "--fold", "0", "--epochs", "1", *TINY],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and "fold 0 is already done" in r.stderr and "nothing to do" in r.stderr
    assert [e["event"] for e in _events(r.stdout)] == ["fold_skipped"]
    assert (run / "fold_0.json").stat().st_mtime_ns == stamp
    # --overwrite runs it again from the start (its finished checkpoint once refused that, after the data
    # had loaded); with --run-dir its checkpoints go there, not into the run folder.
    fresh = [a for a in TINY if a != "--resume"]
    r = subprocess.run(EXE + ["train", str(ds), "--out", str(run), "--fold", "0", "--epochs", "1", "--overwrite",
                              *fresh], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resume" not in [e["event"] for e in _events(r.stdout)]
    assert (run / "fold_0.json").stat().st_mtime_ns != stamp
    scratch = tmp_path / "scratch"
    r = subprocess.run(EXE + ["train", str(ds), "--out", str(run), "--fold", "1", "--epochs", "1", "--overwrite",
                              "--run-dir", str(scratch), *fresh], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert (scratch / "fold_1" / "checkpoint.safetensors").exists() and (run / "fold_1.json").exists()

    # a killed fold resumes: kill fold 2 once its first checkpoint is written, run the same command again
    cmd = EXE + ["train", str(ds), "--out", str(run), "--fold", "2", "--epochs1", "3", "--epochs2", "1", *TINY]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    ckpt = run / "fold_2" / "checkpoint.json"
    deadline = time.time() + 600
    while not ckpt.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL and ckpt.exists() and not (run / "fold_2.json").exists()
    info = json.loads(ckpt.read_text())
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    events = _events(r.stdout)
    resumed = [e for e in events if e["event"] == "resume"]
    assert resumed and (resumed[0]["stage"], resumed[0]["epoch"]) == (info["stage"], info["epochs_done"])
    epochs = [(e["stage"], e["epoch"]) for e in events if e["event"] == "epoch"]
    assert (1, 1) not in epochs and epochs[-1] == (2, 1)
    assert (run / "fold_2.json").exists()
