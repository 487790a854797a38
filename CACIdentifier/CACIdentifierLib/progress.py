"""Progress reporting shared by the CLI, the Slicer widgets and training.

Long work takes a ``progress`` callable ``progress(done, total, message)`` and
calls it now and then; it may raise :class:`Cancelled` (the GUI's Cancel
button) to stop the work cleanly.  :func:`terminal_progress` gives a
progress bar on stderr for the CLI; :func:`json_progress` one JSON object per
line on stdout for a parent process (``cac identify --progress-json``, read by
CAC Identifier's panel).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

ProgressCallback = Callable[[int, int, str], None]


class Cancelled(Exception):
    """Raised from a progress callback to stop long work (GUI Cancel)."""


def no_progress(done: int, total: int, message: str = "") -> None:
    """A progress callback that does nothing."""


def terminal_progress(stream=None, width: int = 30, min_interval_s: float = 0.1) -> ProgressCallback:
    """Return a callback drawing ``[#####.....] done/total message`` on ``stream`` (stderr).

    Only draws when the stream is a terminal, so logs and CI output stay clean.
    """
    stream = stream or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    last = [0.0]

    def callback(done: int, total: int, message: str = "") -> None:
        if not interactive:
            return
        now = time.monotonic()
        if done < total and now - last[0] < min_interval_s:
            return
        last[0] = now
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(round(frac * width))
        bar = "#" * filled + "." * (width - filled)
        stream.write(f"\r[{bar}] {done}/{total} {message[:40]:<40}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return callback


def json_event(event: str, stream=None, **fields) -> None:
    """Print ``{"event": event, **fields}`` as one line and flush (the parent reads it as it comes)."""
    stream = stream or sys.stdout
    stream.write(json.dumps({"event": event, **fields}) + "\n")
    stream.flush()


def json_progress(stream=None, min_interval_s: float = 0.2) -> ProgressCallback:
    """Return a callback printing ``{"event": "progress", "done", "total", "message"}`` lines on ``stream``.

    At most one line per ``min_interval_s`` (and always the first and the last)
    so that a fast loop does not flood the pipe.

    >>> progress = json_progress()
    >>> progress(1, 1, "identifying")
    {"event": "progress", "done": 1, "total": 1, "message": "identifying"}
    """
    last = [-1.0]

    def callback(done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if 0 < done < total and now - last[0] < min_interval_s:
            return
        last[0] = now
        json_event("progress", stream, done=int(done), total=int(total), message=str(message))

    return callback
