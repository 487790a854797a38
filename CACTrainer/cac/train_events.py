"""The progress lines of ``cac train --json``: written here and read here.

The trainer prints one JSON object per line on stdout, e.g. ``{"event":
"epoch", "stage": 1, "epoch": 3, "epochs": 100, "train_loss": 0.41,
"val_f1": 0.8}``; the CACTrainer panel, which runs the trainer as a separate
process, reads them back with :func:`parse_line` to move its progress bar and
fill its curves table.  Both sides use this module, so the format has one
definition.
"""

from __future__ import annotations

import json
import math

# Columns of the panel's training-curves table (one row per epoch event).
CURVE_COLUMNS = ["step", "stage", "epoch", "train_loss", "val_loss", "val_f1", "val_auc", "val_auc_within_position",
                 "val_iom"]


def format_line(event: dict) -> str:
    """One event as the trainer prints it: a JSON object on one line (values JSON cannot hold as text)."""
    return json.dumps(event, default=str)


def parse_line(line: str) -> dict | None:
    """The JSON object on one line of the trainer's stdout, or None for any other line.

    Anything that is not a JSON object (log text, a partial line) is ignored;
    the same reader as every child process's (``worker.parse_event``).

    Examples
    --------
    >>> parse_line('{"event": "epoch", "stage": 1, "epoch": 3, "epochs": 4}\\n')["epoch"]
    3
    >>> parse_line("Epoch 3 done") is None
    True
    """
    from CACIdentifierLib.worker import parse_event

    return parse_event(line)


def progress_fraction(event: dict) -> float | None:
    """Overall training progress in [0, 1] from an epoch event (stage 1 = first half, stage 2 = second)."""
    try:
        stage = int(event.get("stage", 1))
        epoch = float(event.get("epoch", 0))
        epochs = float(event.get("epochs", 0))
    except (TypeError, ValueError):
        return None
    if epochs <= 0:
        return None
    within = min(max(epoch / epochs, 0.0), 1.0)
    return min(1.0, (min(max(stage, 1), 2) - 1 + within) / 2.0)


def curve_row(event: dict) -> dict:
    """The training-curve values of an epoch event, NaN where the trainer did not report one."""
    row = {}
    for key in CURVE_COLUMNS[1:]:
        value = event.get(key)
        if value is None and key == "train_loss":
            value = event.get("loss")  # older trainers said "loss"
        try:
            row[key] = float(value)
        except (TypeError, ValueError):
            row[key] = math.nan
    return row


def time_left(seconds: dict, event: dict) -> str:
    """``"  ~1:02:05 left in stage 1"`` from the mean epoch time of the stage so far (``seconds`` keeps it).

    For the terminal lines of ``cac train`` and the CACTrainer panel's status line.

    Examples
    --------
    >>> seen = {}
    >>> time_left(seen, {"stage": 1, "epoch": 1, "epochs": 20, "seconds": 346.3})
    '  ~1:49:40 left in stage 1'
    >>> time_left(seen, {"stage": 1, "epoch": 2, "epochs": 20, "seconds": 300.0}), seen
    ('  ~1:36:57 left in stage 1', {1: [346.3, 300.0]})
    >>> time_left(seen, {"stage": 1, "epoch": 20, "epochs": 20, "seconds": 300.0})  # the stage is done
    ''
    """
    from CACIdentifierLib.progress import clock_text

    try:
        stage, epoch, epochs, spent = int(event["stage"]), int(event["epoch"]), int(event["epochs"]), \
            float(event["seconds"])
    except (KeyError, TypeError, ValueError):
        return ""
    times = seconds.setdefault(stage, [])
    times.append(spent)
    if epoch >= epochs:
        return ""
    return f"  ~{clock_text(sum(times) / len(times) * (epochs - epoch))} left in stage {stage}"
