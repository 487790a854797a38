"""Training checkpoints on disk: one atomic file, checked before anything is loaded into the model.

The tensors (model, best model, Adam state) and the run's state (stage,
epochs done, history, configuration, optimizer groups) are written into one
``checkpoint.safetensors`` (the state as JSON in the safetensors metadata), by
one rename: a run killed while saving leaves the previous checkpoint or the
new one, never the weights of one epoch labelled as another.
``checkpoint.json`` is still written beside it for people to read; the loader
takes the state from the safetensors file and only falls back to the JSON for
checkpoints written before this format.

Everything read back is checked (types, ranges, tensor names and shapes
against the model being resumed, finite values) and a bad checkpoint is one
:class:`~CACIdentifierLib.errors.CacError` line, never a traceback.
Nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from CACIdentifierLib.errors import CacError, printable
from CACIdentifierLib.fileutil import atomic_output

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
STATE_KEY = "cac_checkpoint"
MAX_JSON_BYTES = 64 << 20


def write_checkpoint(run_dir: Path, tensors: dict, info: dict) -> None:
    """Write the checkpoint: tensors and ``info`` in one safetensors file (atomic), then the JSON copy."""
    from safetensors.torch import save_file

    text = json.dumps(info)
    with atomic_output(run_dir / CHECKPOINT, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: text})
    with atomic_output(run_dir / CHECKPOINT_JSON, overwrite=True) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")


def default_run_dir(out) -> Path:
    """The run folder of ``cac train --out MODEL.safetensors`` without ``--run-dir``: ``MODEL.run/`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".run")


def data_source(dataset=None, *, phantom_pool: int = 0, refresh_patients: int = 0, seed: int = 0,
                cv: str = "none", twins: bool = False) -> dict:
    """What a training run trains on, as its checkpoint records it (see :func:`same_source`).

    A dataset folder is recorded by its path and by a fingerprint of its
    acquisitions (their ids and frame counts, from ``manifest.json``), so a
    moved folder is the same data and an added acquisition is not;
    phantom patients by their number, the patients replaced per epoch and
    the seed (and ``counterfactual_twins`` when the stream adds them).  ``cv`` is the cross-validation mode (a fold's held-out patients
    depend on it).  Reading a manifest needs no torch: the Trainer panel
    calls this before it offers to resume.

    >>> data_source(phantom_pool=260, refresh_patients=40, seed=2)
    {'phantom_pool': 260, 'refresh_patients': 40, 'seed': 2, 'cv': 'none'}
    """
    if phantom_pool and int(phantom_pool) > 0:
        source = {"phantom_pool": int(phantom_pool), "refresh_patients": int(refresh_patients or 0),
                  "seed": int(seed), "cv": cv}
        if twins:  # only when used: the sources recorded before the option stay equal to today's
            source["counterfactual_twins"] = True
        return source
    import hashlib

    dataset = Path(dataset)
    try:
        manifest = json.loads((dataset / "manifest.json").read_text())
        rows = sorted((str(a.get("id")), int(a.get("n_frames") or 0)) for a in manifest["acquisitions"])
        fingerprint = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        fingerprint = None  # unreadable here: the training itself reports the dataset's problem
    return {"dataset": str(dataset.resolve()), "acquisitions": fingerprint, "cv": cv}


def same_source(saved: dict | None, current: dict | None) -> bool | None:
    """Whether a checkpoint's :func:`data_source` is the one a run would train on now; None when unknown.

    >>> a = data_source(phantom_pool=260, seed=0)
    >>> same_source(a, dict(a)), same_source(a, data_source(phantom_pool=200, seed=0)), same_source(None, a)
    (True, False, None)
    """
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return None  # a checkpoint written before sources were recorded
    if ("phantom_pool" in saved) != ("phantom_pool" in current) or saved.get("cv") != current.get("cv"):
        return False
    if "phantom_pool" in current:
        keys = ("phantom_pool", "refresh_patients", "seed")
        return (all(saved.get(k) == current.get(k) for k in keys)
                and bool(saved.get("counterfactual_twins")) == bool(current.get("counterfactual_twins")))
    if saved.get("acquisitions") and current.get("acquisitions"):
        return saved["acquisitions"] == current["acquisitions"]
    return saved.get("dataset") == current.get("dataset")


def describe_source(source: dict | None, say_cv: bool = False) -> str:
    """``source`` (:func:`data_source`) in a few words for a message.

    ``say_cv`` names the cross-validation mode even when there is none (see :func:`describe_sources`).

    >>> describe_source(data_source(phantom_pool=260, refresh_patients=40, seed=2, cv="none"))
    '260 phantom patients (40 new per epoch), seed 2'
    """
    if not isinstance(source, dict):
        return "unrecorded data"
    cv = source.get("cv")
    by = f", cross-validation by {cv}" if cv and cv != "none" else (
        ", training on everything (--cv none)" if say_cv else "")
    if "phantom_pool" in source:
        new = f" ({source.get('refresh_patients')} new per epoch)" if source.get("refresh_patients") else ""
        twins = " with counterfactual twins" if source.get("counterfactual_twins") else ""
        return f"{source.get('phantom_pool')} phantom patients{new}{twins}, seed {source.get('seed')}{by}"
    return f"dataset {printable(source.get('dataset'), 120)}{by}"


def describe_sources(saved: dict | None, current: dict | None) -> tuple[str, str]:
    """Two sources in words for "made on A, not on B": the cross-validation mode is named on both sides when it
    is what differs (otherwise "dataset X, cross-validation by patient, not on dataset X" hides it).

    >>> describe_sources(data_source("/data/ds", cv="patient"), data_source("/data/ds", cv="none"))
    ('dataset /data/ds, cross-validation by patient', 'dataset /data/ds, training on everything (--cv none)')
    """
    def mode(source):
        return (source.get("cv") or "none") if isinstance(source, dict) else None

    say = mode(saved) != mode(current)
    return describe_source(saved, say), describe_source(current, say)


def unfinished_runs(out, cv: str = "none") -> list[dict]:
    """The checkpoints that an interrupted ``cac train --out OUT --cv CV`` left, which ``--resume`` continues.

    With ``cv`` "none", the run folder :func:`default_run_dir` when its
    checkpoint is newer than the model ``out`` (or there is no model yet);
    with cross-validation, each ``OUT/fold_K/`` whose fold has no
    ``OUT/fold_K.json`` (the fold's result) yet.  Returns
    ``[{"run_dir", "stage", "epochs_done", "source"}]`` (as the checkpoint's
    JSON copy says, ``source`` being its :func:`data_source`; None where it
    cannot be read or was not recorded).

    >>> unfinished_runs("/nonexistent/model.safetensors")
    []
    """
    out = Path(out)
    if cv == "none":
        run_dir = default_run_dir(out)
        checkpoint = run_dir / CHECKPOINT
        if not checkpoint.is_file() or (out.is_file() and out.stat().st_mtime >= checkpoint.stat().st_mtime):
            return []
        folders = [run_dir]
    else:
        folders = [d for d in sorted(out.glob("fold_*")) if d.is_dir() and (d / CHECKPOINT).is_file()
                   and not (out / f"{d.name}.json").exists()]
    found = []
    for run_dir in folders:
        try:
            info = json.loads((run_dir / CHECKPOINT_JSON).read_text()) if (
                run_dir / CHECKPOINT_JSON).stat().st_size <= MAX_JSON_BYTES else {}
        except (OSError, ValueError):
            info = {}
        info = info if isinstance(info, dict) else {}
        found.append({"run_dir": run_dir, "stage": info.get("stage"), "epochs_done": info.get("epochs_done"),
                      "source": info.get("source") if isinstance(info.get("source"), dict) else None})
    return found


def _bad(run_dir: Path, what: str) -> CacError:
    return CacError(
        f"the checkpoint in {run_dir} is unusable ({what}); delete {run_dir} or start without --resume"
    )


def _is_int(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def validate_state(info, run_dir: Path) -> dict:
    """Check the run state of a checkpoint (types and ranges); returns it or raises CacError."""
    if not isinstance(info, dict):
        raise _bad(run_dir, f"its state is a {type(info).__name__}, not an object")
    if not _is_int(info.get("stage"), 1, 2):
        raise _bad(run_dir, f"stage {printable(repr(info.get('stage')), 40)} is not 1 or 2")
    if not _is_int(info.get("epochs_done"), 0, 100_000):
        raise _bad(run_dir, f"epochs_done {printable(repr(info.get('epochs_done')), 40)} is not a count")
    for key, kind in (("history", list), ("best", dict), ("config", dict), ("optimizer", dict)):
        if not isinstance(info.get(key), kind):
            raise _bad(run_dir, f"{key} is missing or not a{'n object' if kind is dict else ' list'}")
    if not all(isinstance(row, dict) for row in info["history"]):
        raise _bad(run_dir, "history holds entries that are not objects")
    keys = info.get("hnm_frames")
    if keys is not None and not (isinstance(keys, list) and all(
            isinstance(k, list) and len(k) == 2 and isinstance(k[0], str) and _is_int(k[1], 0, 10**7) for k in keys)):
        raise _bad(run_dir, "hnm_frames is not a list of [acquisition, frame] pairs")
    groups = info["optimizer"].get("param_groups")
    if (
        not isinstance(groups, list)
        or not groups
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
        or not all(_is_int(p, 0, 10**6) for g in groups for p in g["params"])
    ):
        raise _bad(run_dir, "the optimizer's parameter groups are malformed")
    for g in groups:
        for key in ("lr", "eps", "weight_decay"):
            value = g.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise _bad(run_dir, f"the optimizer's {key} is not a finite number")
    return info


def _check_tensors(tensors: dict, model, info: dict, run_dir: Path) -> None:
    import torch

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for prefix, required in (("model", True), ("best", False)):
        part = {k[len(prefix) + 1 :]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix + ".")}
        if not part and not required:
            continue
        missing = sorted(set(expected) - set(part))
        unexpected = sorted(set(part) - set(expected))
        wrong = sorted(k for k in set(expected) & set(part) if expected[k] != part[k])
        if missing or unexpected or wrong:
            first = (missing or unexpected or wrong)[0]
            raise _bad(
                run_dir,
                f"its {prefix} weights do not fit this network: {len(missing)} missing, {len(unexpected)} "
                f"unexpected, {len(wrong)} of another shape (e.g. {printable(first, 60)})",
            )
    params = model.classifier_parameters() if info["stage"] == 1 else model.decoder_parameters()
    if info["stage"] == 1 and float((info.get("config") or {}).get("aux_weight") or 0) > 0:
        params = params + model.decoder_parameters()  # the default recipe trains the decoder jointly
    for name, t in tensors.items():
        if name == "hnm.scores":  # hard-negative mining: one finite score per patch, or NaN (not drawn yet)
            if t.ndim != 1 or not t.is_floating_point() or bool(torch.isinf(t).any()):
                raise _bad(run_dir, "its hard-negative scores are not one finite number (or NaN) per patch")
            continue
        if name.startswith(("model.", "best.")):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise _bad(run_dir, f"{printable(name, 60)} holds NaN or infinite values")
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "opt" or not parts[1].isdigit():
            raise _bad(run_dir, f"it holds an unknown tensor {printable(name, 60)}")
        index, key = int(parts[1]), parts[2]
        # At a stage's start (epochs_done 0) the saved Adam state is the previous stage's and is not loaded.
        if key in ("exp_avg", "exp_avg_sq") and info["epochs_done"] > 0:
            if index >= len(params) or tuple(t.shape) != tuple(params[index].shape):
                raise _bad(run_dir, f"optimizer state {printable(name, 60)} does not fit stage {info['stage']}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _bad(run_dir, f"{printable(name, 60)} holds NaN or infinite values")
    if info["epochs_done"] > 0:
        for g in info["optimizer"]["param_groups"]:
            if any(p >= len(params) for p in g["params"]):
                raise _bad(run_dir, f"the optimizer's parameters do not fit stage {info['stage']}")


def read_checkpoint(run_dir: Path, model=None) -> tuple[dict, dict] | None:
    """``(tensors, state)`` of the run folder's checkpoint, checked; None when there is none.

    With ``model``, the tensors' names and shapes are checked against it
    (model, best model, the Adam state of the checkpoint's stage) and must be
    finite.  Any problem raises :class:`CacError` naming the run folder.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    weights, side = run_dir / CHECKPOINT, run_dir / CHECKPOINT_JSON
    if not weights.exists():
        return None
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise _bad(run_dir, f"{CHECKPOINT} is not readable: {printable(' '.join(str(exc).split()), 120)}") from None
    text = meta.get(STATE_KEY)
    source = CHECKPOINT
    if text is None:  # written before the state moved into the safetensors file
        if not side.exists():
            return None
        if side.stat().st_size > MAX_JSON_BYTES:
            raise _bad(run_dir, f"{CHECKPOINT_JSON} is larger than {MAX_JSON_BYTES} bytes")
        try:
            text = side.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _bad(run_dir, f"{CHECKPOINT_JSON} is unreadable: {printable(str(exc), 100)}") from None
        source = CHECKPOINT_JSON
    try:
        info = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(run_dir, f"the state in {source} is not valid JSON: {printable(str(exc), 100)}") from None
    validate_state(info, run_dir)
    if model is not None:
        _check_tensors(tensors, model, info, run_dir)
    return tensors, info
