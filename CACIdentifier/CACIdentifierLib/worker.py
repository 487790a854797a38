"""Heavy work in a child process: the process runner the Slicer modules inject, and the commands they run.

Inside Slicer, model loading, synchronization, inference and training run in
a separate Python process (``PythonSlicer``), as the peers do (SlicerNNUnet's
injected process runner, TotalSegmentator): the GUI stays responsive, Cancel
stops the work at once, and an out-of-memory error or a torch crash ends the
child, not Slicer.  The child prints JSON lines on stdout
(``cac identify --progress-json``, ``cac train --json``); the panel polls them
with a QTimer through :class:`ProcessRunner`.

Nothing here imports ``slicer`` or ``qt``: tests run the same runner with
``sys.executable``.

>>> runner = ProcessRunner()
>>> runner.start([sys.executable, "-c", "print('{\\"event\\": \\"progress\\", \\"done\\": 1, \\"total\\": 2}')"])
>>> runner.wait(30)
0
>>> [event["done"] for event in parse_events(runner.read_lines())]
[1]
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

# Seconds between the polite stop (SIGTERM: `cac` removes what it was writing and exits 143) and SIGKILL.
KILL_GRACE_S = 3.0


def library_paths() -> list[str]:
    """The folders that hold CACIdentifierLib and CACTrainerLib (module folders in Slicer, the source tree here)."""
    here = Path(__file__).resolve().parent  # .../CACIdentifier/CACIdentifierLib
    paths = [here.parent, here.parent.parent / "CACTrainer"]
    return [os.fspath(p) for p in paths if p.is_dir()]


def child_environment(base: dict | None = None) -> dict:
    """The environment of a child: the Libs on PYTHONPATH, unbuffered output (progress as it comes)."""
    env = dict(os.environ if base is None else base)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(library_paths() + ([existing] if existing else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_event(line: str) -> dict | None:
    """The JSON object on one line of a child's stdout, or None for any other line (log text, a partial line)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_events(lines) -> list[dict]:
    return [event for event in map(parse_event, lines) if event is not None]


class ProcessRunner:
    """Run one command in a child process; read its stdout lines without blocking; kill its process tree.

    The Slicer modules inject a runner into their Logic (a test can inject one
    that records the command).  ``read_lines()`` returns the complete stdout
    lines received since the last call; stderr is kept for the error message.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        self._threads: list[threading.Thread] = []
        self.command: list[str] = []

    def start(self, command, env: dict | None = None, cwd=None) -> None:
        if self.running():
            raise RuntimeError("a process is already running; cancel it first")
        self.command = [os.fspath(c) for c in command]
        self._lines = queue.Queue()
        self._stderr = []
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group: Cancel reaches the launcher's children
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
        )
        self._threads = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self._stderr.append), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in iter(stream.readline, ""):
            sink(line.rstrip("\r\n"))
        stream.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def finished(self) -> bool:
        """True once the child has exited and all its output has been read in."""
        return self.process is not None and self.process.poll() is not None and not any(
            t.is_alive() for t in self._threads)

    def read_lines(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def stderr_text(self) -> str:
        return "\n".join(self._stderr)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child exits (the console and tests; the panel polls instead)."""
        code = self.process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    def kill(self) -> None:
        """Stop the child and every process it started; returns at once (no GUI freeze).

        SIGTERM to the whole process group first (``cac`` unwinds as on
        Ctrl-C: files being written are removed; a training keeps the
        checkpoint of its last finished epoch, written after every epoch, for
        ``--resume``), SIGKILL to the group after :data:`KILL_GRACE_S` from a
        timer thread if anything is left.  On Windows, ``taskkill /T /F``.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        if os.name == "nt":
            subprocess.Popen(["taskkill", "/T", "/F", "/PID", str(process.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
        _signal_group(process.pid, signal.SIGTERM)
        timer = threading.Timer(KILL_GRACE_S, _signal_group, args=(process.pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def python_executable() -> str:
    """The Python to run children with: Slicer's ``PythonSlicer`` launcher inside Slicer, else this one."""
    import shutil

    if "slicer" in sys.modules and getattr(sys.modules["slicer"], "app", None) is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def identify_command(python, cine_path, out_dir, *, model_path=None, annotation_paths=(), device="auto",
                     sigma=None, min_island_px=None, threshold=None, onset_frame=None, temporal=False,
                     cine_gate=True, roi_patches=None, static_filter=True) -> list[str]:
    """The ``cac identify ... --progress-json`` command line that CAC Identifier's Logic runs.

    ``temporal`` adds ``--temporal``; ``cine_gate=False`` adds ``--no-cine-gate`` (the card's cine threshold,
    if any, is then not applied); ``roi_patches`` (1-5) adds ``--roi-patches`` (None: the card's);
    ``static_filter=False`` adds ``--keep-static`` (ROIs on spots that never move are then kept).
    """
    command = [os.fspath(python), "-m", "cac", "identify", os.fspath(cine_path),
               "--out", os.fspath(out_dir), "--progress-json", "--overwrite", "--device", str(device)]
    if model_path:
        command += ["--model", os.fspath(model_path)]
    if annotation_paths:
        command += ["--annotations", *[os.fspath(p) for p in annotation_paths]]
    for flag, value in (("--sigma", sigma), ("--min-island", min_island_px), ("--threshold", threshold)):
        if value is not None:
            command += [flag, repr(value) if isinstance(value, float) else str(int(value))]
    if onset_frame is not None and int(onset_frame) >= 0:
        command += ["--onset", str(int(onset_frame))]
    if temporal:
        command.append("--temporal")
    if not cine_gate:
        command.append("--no-cine-gate")
    if roi_patches is not None:
        command += ["--roi-patches", str(int(roi_patches))]
    if not static_filter:
        command.append("--keep-static")
    return command


def error_message(runner: ProcessRunner, events: list[dict]) -> str:
    """What went wrong in a child that ended badly: its error event, else the ``cac: error`` line, else stderr's tail."""
    for event in reversed(events):
        if event.get("event") == "error" and event.get("message"):
            return str(event["message"])
    lines = [line for line in runner.stderr_text().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("cac: error:"):
            return line[len("cac: error:"):].strip()
    tail = "\n".join(lines[-15:])
    return f"the worker process stopped with exit code {runner.returncode}" + (f":\n{tail}" if tail else "")
