"""Ctrl-C during long work: `cac: interrupted`, exit code 130, within about a second, nothing left behind.

Issue 16 (item 5): the response to SIGINT lagged by up to 14 s.  Each case
starts ``python -m cac.cli ...`` in a fresh folder, waits until the process
(and its children) has spent some CPU time in the work itself (past the
imports, whatever the load of the machine), sends SIGINT to that process
only (its worker processes do not get it, as when a parent program
interrupts it), and checks the exit code, the one line on stderr, the time
to exit and that the folder is empty again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
XA96 = DATA / "xa" / "rubo-rca-ecg-96f.dcm"
# Wall seconds from SIGINT to exit.  The fix measured 0.1-0.7 s on the shared 2-core machine under a
# load of 7; the slack is for that load (before the fix: 2.4 s for identify, 22-27 s for a phantom pool).
LIMIT_S = 4.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and of its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def _default_sigint() -> None:
    """In the child: SIGINT's default action, even where this test runs with it ignored (a job started
    in the background by a non-interactive shell inherits SIG_IGN, and so would ``cac``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(tmp_path, argv, cpu_s: float):
    """Run ``cac`` in ``tmp_path``; SIGINT once it used ``cpu_s`` CPU seconds; (code, stderr, seconds to exit)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "cac.cli", *map(str, argv)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 300
        while _cpu_seconds(proc.pid) < cpu_s:
            assert proc.poll() is None, f"ended before the interrupt: {proc.stderr.read().decode()[-500:]}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
        took = time.monotonic() - sent
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err, took


def check(tmp_path, code, err, took):
    assert code == 130, err
    assert err.endswith("cac: interrupted\n") and "Traceback" not in err, err
    assert took < LIMIT_S, f"{took:.2f} s from SIGINT to exit"
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


def test_identify(tmp_path):
    # Loading torch and the model takes about 3 CPU seconds, the whole run 6-11 (an idle CI machine
    # finished before 6 CPU seconds had been counted, so the interrupt comes at 3.5).
    code, err, took = interrupt(tmp_path, ["identify", XA96, "--out", "out", "--device", "cpu"], cpu_s=3.5)
    check(tmp_path, code, err, took)


def test_phantom(tmp_path):
    code, err, took = interrupt(tmp_path, ["phantom", "ds", "--patients", "8", "--frames", "96", "--size", "256"],
                                cpu_s=4)
    check(tmp_path, code, err, took)


def test_train_phantom_pool(tmp_path):
    # The pool of phantom patients is generated in worker processes (one per core), which the SIGINT
    # sent to the parent does not reach.
    argv = ["train", "--phantom-pool", "6", "--epochs", "3", "--width", "8", "--out", "m.safetensors"]
    code, err, took = interrupt(tmp_path, argv, cpu_s=8)
    check(tmp_path, code, err, took)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_train_nproc_stops_the_workers_too(tmp_path):
    """`cac train --nproc 2`: a SIGINT to the command alone also ends torch's launcher and its workers
    (before the fix the workers went on training for minutes)."""
    from CACTrainerLib.phantom import PhantomParams
    from CACTrainerLib.phantom_writer import write_dataset

    data = tmp_path.parent / f"{tmp_path.name}-ds"
    write_dataset(data, PhantomParams(rows=128, cols=128, n_frames=24, calcium_free_fraction=0.5),
                  patients=2, acquisitions_per_patient=1, seed=4)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = ["train", str(data), "--nproc", "2", "--device", "cpu", "--epochs", "400", "--width", "8",
            "--cv", "none", "--out", "m.safetensors"]
    # stderr to a file: a pipe would stay open (and a read block) while a leftover worker holds it.
    err_path = tmp_path.parent / f"{tmp_path.name}-stderr.txt"
    err_file = err_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cac.cli", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True,
                            preexec_fn=_default_sigint)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        # Wait until the launcher's two workers run and have worked a little.
        while True:
            assert proc.poll() is None, err_path.read_text()[-800:]
            assert time.monotonic() < deadline
            workers = _descendants(proc.pid)
            if len(workers) >= 3 and _cpu_seconds(proc.pid) > 25:
                break
            time.sleep(0.2)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        took = time.monotonic() - sent
        err = err_path.read_text()
        assert proc.returncode == 130, err
        assert err.rstrip().endswith("cac: interrupted") and "Traceback" not in err.splitlines()[-1], err[-800:]
        assert took < 10.0, f"{took:.2f} s"
        time.sleep(0.5)
        assert not [p for p in workers if _alive(p)], "the launcher or its workers are still running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        err_file.close()


def test_panel_cancel_keeps_the_checkpoint_and_train_resumes_it(tmp_path):
    """CAC Trainer's Cancel (SIGTERM to the process group, ProcessRunner.kill) during a training, then Train again.

    `cac` takes SIGTERM as an interrupt (exit 143, one line, no temporary file), the checkpoint of the
    last finished epoch stays, the panel's Logic finds it, and the command the panel builds with
    resume continues it to a model (before: SIGTERM's default action ended the process on the spot
    and the panel had no way to resume).
    """
    import pytest

    pytest.importorskip("slicer", reason="slicer-core is not installed")
    import slicer_python
    from CACIdentifierLib import slicercore
    from CACIdentifierLib.worker import ProcessRunner, child_environment, parse_events

    if not slicer_python.available():
        pytest.skip("Slicer 5.10.0's Python files are not here")
    tiny = ["--width", "8", "--samples-per-epoch", "16", "--frames-per-acquisition", "4"]
    model = tmp_path / "m.safetensors"
    with slicer_python.slicer_5_10(slicercore.new_scene()):
        module = slicer_python.load_module_script(slicer_python.ROOT / "CACTrainer" / "CACTrainer.py")
        logic = module.CACTrainerLogic
        command = module.buildTrainCommand(sys.executable, "", model, "none", -1, 40, 1, "cpu", 0, phantomPool=4)
        runner = ProcessRunner()
        runner.start(command + tiny, env=child_environment(), cwd=tmp_path)
        try:
            deadline, events = time.monotonic() + 300, []
            while not any(e.get("event") == "epoch" for e in events):
                assert runner.running(), runner.stderr_text()[-800:]
                assert time.monotonic() < deadline
                events += parse_events(runner.read_lines())
                time.sleep(0.05)
            runner.kill()  # the panel's Cancel
            assert runner.wait(timeout=60) == 143, runner.stderr_text()[-800:]
        finally:
            if runner.running():
                os.killpg(runner.process.pid, signal.SIGKILL)
        assert runner.stderr_text().rstrip().endswith("cac: terminated"), runner.stderr_text()[-800:]
        assert "Traceback" not in runner.stderr_text()
        run_dir = tmp_path / "m.run"
        assert {p.name for p in run_dir.iterdir()} <= {"checkpoint.json", "checkpoint.safetensors", "history.json"}
        assert not model.exists()
        [unfinished] = logic.unfinishedTraining(model, "none")
        assert unfinished["run_dir"] == run_dir and unfinished["stage"] == 1 and unfinished["epochs_done"] >= 1
        # The checkpoint says what it was made on; the panel offers Resume only for the same phantom pool.
        assert unfinished["source"] == {"phantom_pool": 4, "refresh_patients": 0, "seed": 0, "cv": "none"}
        for pool, same in ((4, True), (5, False)):
            source = logic.trainingSource("", pool, 0, 0, "none")
            assert [r["same_data"] for r in logic.unfinishedTraining(model, "none", -1, source)] == [same]

        resume = module.buildTrainCommand(sys.executable, "", model, "none", -1, unfinished["epochs_done"] + 1, 1,
                                          "cpu", 0, phantomPool=4, resume=True)
        done = subprocess.run(resume + tiny, env=child_environment(), cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-800:]
        events = parse_events(done.stdout.splitlines())
        assert {"event": "resume", "stage": 1, "epoch": unfinished["epochs_done"]} in events
        assert model.is_file() and logic.unfinishedTraining(model, "none") == []


def test_an_interrupt_during_the_slicer_import_keeps_its_kind(monkeypatch):
    """SIGTERM during the (long) import of slicer-core surfaces inside an ImportError; it is re-raised as the
    Terminated it was, so `cac` exits 143 ("terminated"), not 130 as for Ctrl-C."""
    import builtins

    import pytest
    from cac.cli import Terminated
    from CACIdentifierLib import slicercore

    real = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "slicer":
            try:
                raise Terminated()
            except Terminated as exc:
                raise ImportError("import of slicer interrupted") from exc
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "slicer", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(Terminated):
        slicercore.import_slicer()
