"""Files: safe output (never overwrite without being asked, never half-written), and name order.

Every writer in the project goes through :func:`atomic_output` (one file) or
:func:`atomic_directory` (a folder of outputs): they refuse an existing target
unless ``overwrite`` is true, check before any work that the location can be
written, hand out a temporary path in the same folder (same file system, so the
final rename is atomic), rename it onto the target when the block succeeds and
delete it when the block fails.  ``overwrite`` replaces only the files the
command writes: other files in an output folder are never touched.

Temporary names carry the writing process's id (``.NAME.tmp-PID-XXXXXXXX``), so
leftovers of a killed run (SIGKILL, power loss) are recognised and deleted by
the next write to the same place, while a run still going is left alone.
Disk errors (full disk, read-only folder) become one-line
:class:`~.errors.CacError`\\ s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import CacError, printable

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`CacError` if ``path`` exists and ``overwrite`` is false, its folder is missing or
    cannot be written.  Called before the work starts, so a bad output location costs nothing."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CacError(f"{path} already exists; pass --overwrite to replace it or choose another name")
    if path.is_dir():
        raise CacError(f"{path} is a folder; give a file name")
    if not path.parent.exists():
        raise CacError(f"folder {path.parent} does not exist; create it first")
    if not path.parent.is_dir():  # os.access would call it "not writable": say what is wrong
        raise CacError(f"{path.parent} is a file, not a folder; {path.name} cannot be written inside it, "
                       "choose another output location")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CacError(f"folder {path.parent} is not writable; choose another output location")
    return path


def check_not_input(output: str | os.PathLike, *inputs, option: str = "--out", inside_ok: bool = False) -> None:
    """Refuse an output that is one of the command's inputs, even with ``--overwrite``.

    ``--overwrite`` means "replace my earlier result", never "replace the file
    I read" (a DICOM SEG written over its own cine, a fine-tuned model over the
    model it started from).  An input that is a folder (a cine given as a folder
    of frame images) covers every file in it, unless ``inside_ok`` (an output
    folder of fixed file names in a subfolder replaces no frame).  Links and
    ``..`` spellings are seen through.

    >>> check_not_input("run.seg.dcm", "run.dcm", None)
    >>> check_not_input("a/../run.dcm", "run.dcm", option="--dicom-seg")
    Traceback (most recent call last):
    ...
    CACIdentifierLib.errors.CacError: --dicom-seg a/../run.dcm is the input run.dcm; choose another output name
    """
    out = Path(output)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        try:
            same = os.path.samefile(out, source)
        except OSError:  # one of them does not exist (yet)
            same = out.resolve() == source.resolve()
        if same:
            raise CacError(f"{option} {printable(str(output), 200)} is the input {printable(str(source), 200)}; "
                           "choose another output name")
        if not inside_ok and source.is_dir() and out.resolve().is_relative_to(source.resolve()):
            raise CacError(f"{option} {printable(str(output), 200)} lies inside the input folder "
                           f"{printable(str(source), 200)} and could replace a frame of it; write it elsewhere")


def check_output_directory(path: str | os.PathLike, overwrite: bool = False, names=()) -> Path:
    """Check before the work that ``path`` can receive a command's output folder; returns it resolved.

    Refused: an existing file; an existing folder without ``overwrite`` (with
    it, only ``names`` are replaced later); a location that cannot be created
    or written.
    """
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise CacError(f"{path} is a file, not a folder; choose another output folder")
    if target.exists() and not overwrite:
        raise CacError(f"{path} already exists; pass --overwrite to replace its outputs or choose another folder")
    base = _nearest_existing(target)
    if not base.is_dir():
        raise CacError(f"{base} is a file, so folder {path} cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise CacError(f"{base} is not writable; choose another output folder")
    for name in names:
        if (target / name).is_dir():
            raise CacError(f"{target / name} is a folder; move it away or choose another output folder")
    return target


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def process_identity(pid: int) -> str | None:
    """What tells process ``pid`` from a later one given the same number: the boot and its start time.

    Linux only (``/proc``: the kernel's boot id and field 22 of ``/proc/PID/stat``, the start time in
    clock ticks since boot); None elsewhere, or when the process does not run.

    Examples
    --------
    >>> me = process_identity(os.getpid())
    >>> me is None or me == process_identity(os.getpid())
    True
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        # The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
        return f"{boot}:{stat[stat.rindex(')') + 2:].split()[19]}"
    except (OSError, ValueError, IndexError):
        return None


def _create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, or raise FileExistsError: never an empty or half-written file.

    The text goes to a temporary file first and is hard-linked onto ``path`` (atomic, and it fails if
    ``path`` exists), so a second process never reads a lock before its content is there.  Where the
    file system has no hard links, ``O_EXCL`` creation with the text written at once is used instead.
    """
    tmp = temporary_sibling(path)
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    finally:
        tmp.unlink(missing_ok=True)


LOCK_NAME = "run.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold ``folder/run.lock`` while a process writes into ``folder``; a second writer gets a CacError.

    Two training runs on one run folder overwrite each other's checkpoints every epoch, silently (a
    resume script started twice did this).  The lock file is created whole and atomically
    (:func:`_create_exclusive`) and names the process and machine.  A lock left by a process that no
    longer runs on this machine (killed, power loss; where ``/proc`` tells, also when its number now
    belongs to another process: :func:`process_identity`) is taken over; one from another machine (a
    shared cluster file system) cannot be checked, so it is reported with what to delete.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with folder_lock(d):
    ...     try:
    ...         with folder_lock(d):
    ...             pass
    ...     except CacError as e:
    ...         print(str(e).startswith(f"another run is using {d} (process {os.getpid()} on"))
    True
    >>> (d / LOCK_NAME).exists()
    False
    """
    import json
    import socket
    import time

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "process": process_identity(os.getpid())}
    for _ in range(3):
        try:
            _create_exclusive(lock, json.dumps(me) + "\n")
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                pid, host = int(holder["pid"]), str(holder["host"])
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError, KeyError, TypeError):
                raise CacError(f"{lock} is unreadable; if no {what} is using {folder}, delete it and start again") \
                    from None
            recorded, now = holder.get("process"), process_identity(pid)
            # A number reused by another process (after a reboot, or the counter wrapping) is not the holder.
            reused = recorded is not None and now is not None and now != recorded
            if host == me["host"] and (reused or not process_running(pid)):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # stale: its process is gone
                continue
            raise CacError(f"another {what} is using {folder} (process {pid} on {printable(host, 60)}, since "
                           f"{printable(str(holder.get('started', '?')), 30)}); wait for it to finish or choose "
                           f"another folder; if no {what} is going on, delete {lock}") from None
        except OSError as exc:
            raise write_error(lock, exc) from None
        break
    else:
        raise CacError(f"could not take {lock}: other processes keep creating it; delete it and start again")
    try:
        yield lock
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == me["pid"]:
                lock.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def clean_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Delete ``.NAME.tmp-PID-*`` leftovers in ``folder`` whose writing process no longer runs."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if not match or (name is not None and not match.group("name").startswith(name.split(".")[0])):
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or process_running(pid):
            continue  # still running: its temporary is in use
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _temporary_name(name: str, kind: str = "tmp") -> str:
    stem, dot, rest = name.partition(".")
    return f".{stem}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{dot}{rest}"


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name next to ``path`` that keeps its (double) suffix, e.g. ``.seg.nrrd``."""
    return path.with_name(_temporary_name(path.name))


_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


def write_error(target: str | os.PathLike, exc: BaseException) -> CacError:
    """One line for a failed write of ``target``, with the advice its cause calls for.

    ``exc`` is an :class:`OSError`, or another exception whose message carries
    the OS error number as Rust writes it (``... (os error 28)``: the
    safetensors writer's ``SafetensorError``).  A full disk or quota asks for
    space, a refused permission for a folder one may write to; any other cause
    is named by the OS's own message.

    >>> print(write_error("m.safetensors", RuntimeError("I/O error: Permission denied (os error 13)")))
    could not write m.safetensors (Permission denied); you may not write there: choose a folder you can write to or change its permissions
    """
    target = printable(str(target), 200)
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        match = _OS_ERROR_RE.search(str(exc))
        code = int(match.group(1)) if match else None
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif code is not None:
        reason = os.strerror(code)
    else:
        reason = printable(str(exc), 120) or type(exc).__name__
    # "Free some space" only where space is the cause: after "Is a directory" it sent users hunting for disk.
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return CacError(f"could not write {target} ({reason}); free some space or choose another output location")
    if code in (errno.EACCES, errno.EPERM):
        return CacError(f"could not write {target} ({reason}); you may not write there: choose a folder you can "
                        "write to or change its permissions")
    return CacError(f"could not write {target} ({reason}); choose another output location")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block succeeds.

    >>> with atomic_output("out.json") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    target = check_writable(path, overwrite)
    clean_stale_temporaries(target.parent, target.name)
    tmp = temporary_sibling(target)
    try:
        try:
            yield tmp
            if not tmp.exists():
                raise CacError(f"internal error: nothing was written for {target}")
            os.replace(tmp, target)
        except OSError as exc:
            raise write_error(target, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_output` for a folder of outputs: build it aside, then move it in place.

    A new folder appears whole (one rename).  An existing folder is only
    written with ``overwrite``, and then only the files the block wrote are
    replaced (each by one rename); anything else in the folder stays, also
    inside a subfolder the block wrote (a dataset's patient folder is swapped
    in whole, then what the new one lacks is moved back into it).
    """
    target = check_output_directory(path, overwrite)
    existed = target.exists()
    if existed:
        # Staged inside the folder itself: its parent need not be writable (e.g. --out .).
        clean_stale_temporaries(target)
        tmp = target / _temporary_name(target.name)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(target.parent, target.name)
        tmp = target.with_name(_temporary_name(target.name))
    try:
        try:
            tmp.mkdir()
            yield tmp
            if not existed:
                os.replace(tmp, target)
            else:
                entries = sorted(tmp.iterdir())
                for entry in entries:
                    if (target / entry.name).is_dir() != entry.is_dir() and (target / entry.name).exists():
                        raise CacError(
                            f"{target / entry.name} is in the way (a {'folder' if entry.is_file() else 'file'}); "
                            "move it away or choose another folder"
                        )
                for entry in entries:
                    final = target / entry.name
                    if entry.is_dir() and final.is_dir():
                        # A folder output (a dataset's patient) is swapped whole; what the old one held and the
                        # new one lacks (the user's own files) moves back, then the rest of the old one goes.
                        old = target / _temporary_name(entry.name, "old")
                        os.replace(final, old)
                        os.replace(entry, final)
                        _move_missing(old, final)
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        os.replace(entry, final)  # tmp is inside target: one rename each
        except OSError as exc:
            raise write_error(target, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_missing(source: Path, dest: Path) -> None:
    """Move each entry of ``source`` that ``dest`` lacks into ``dest`` (recursing into folders both have)."""
    for entry in sorted(source.iterdir()):
        final = dest / entry.name
        if not final.exists() and not final.is_symlink():
            os.replace(entry, final)
        elif entry.is_dir() and not entry.is_symlink() and final.is_dir() and not final.is_symlink():
            _move_missing(entry, final)


def natural_sort_key(name: str) -> list:
    """Key that orders ``f2`` before ``f10`` (digit runs compared as numbers, case-insensitive)."""
    return [
        (0, int(tok), "") if tok.isdigit() else (1, 0, tok.lower()) for tok in re.split(r"(\d+)", name) if tok
    ]
