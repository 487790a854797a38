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


def clock_text(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``.

    >>> clock_text(75), clock_text(3725.2)
    ('1:15', '1:02:05')
    """
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def terminal_progress(stream=None, width: int = 30, min_interval_s: float = 0.1,
                      clock: Callable[[], float] = time.monotonic) -> ProgressCallback:
    """Return a callback drawing ``[#####.....] done/total message  1:15 left`` on ``stream`` (stderr).

    Only draws when the stream is a terminal, so logs and CI output stay clean.  The time left is the
    elapsed time per step so far times the steps left, counted from the first step of the current
    count (a new total, ``done`` going back or a count that was finished starts a new one: a training
    epoch, a new stage).

    Examples
    --------
    >>> import io
    >>> class Tty(io.StringIO):
    ...     def isatty(self):
    ...         return True
    >>> out, now = Tty(), [0.0]
    >>> bar = terminal_progress(out, width=4, clock=lambda: now[0])
    >>> bar(0, 4, "epoch 1"); now[0] = 30.0; bar(1, 4, "epoch 1")
    >>> out.getvalue().split("\\r")[-1].rstrip()
    '[#...] 1/4 epoch 1                                   1:30 left'
    >>> now[0] = 90.0; bar(4, 4, "epoch 1")
    >>> now[0] = 100.0; bar(1, 4, "epoch 2"); now[0] = 110.0; bar(2, 4, "epoch 2")  # a new count
    >>> out.getvalue().split("\\r")[-1].rstrip()
    '[##..] 2/4 epoch 2                                   0:20 left'
    """
    stream = stream or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    last = [-float("inf")]
    count = {"start": None, "first": 0, "done": 0, "total": None}

    def callback(done: int, total: int, message: str = "") -> None:
        if not interactive:
            return
        now = clock()
        if (count["start"] is None or total != count["total"] or done < count["done"]
                or count["done"] >= count["total"]):
            count.update(start=now, first=done, total=total)  # a new count: its rate starts here
        count["done"] = done
        if done < total and now - last[0] < min_interval_s:
            return
        last[0] = now
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(round(frac * width))
        bar = "#" * filled + "." * (width - filled)
        steps = done - count["first"]
        left = ""
        if 0 < done < total and steps > 0:
            left = f"  {clock_text((now - count['start']) / steps * (total - done))} left"
        stream.write(f"\r[{bar}] {done}/{total} {message[:40]:<40}{left}")
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
