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


def interrupt(tmp_path, argv, cpu_s: float):
    """Run ``cac`` in ``tmp_path``; SIGINT once it used ``cpu_s`` CPU seconds; (code, stderr, seconds to exit)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "cac.cli", *map(str, argv)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
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
    # Loading torch and the model takes about 3 CPU seconds, the whole run about 11.
    code, err, took = interrupt(tmp_path, ["identify", XA96, "--out", "out", "--device", "cpu"], cpu_s=6)
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
