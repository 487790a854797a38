"""Files: safe output (never overwrite without being asked, never half-written), and name order.

Every writer in the project goes through :func:`atomic_output`: it refuses an
existing target unless ``overwrite`` is true, hands out a temporary path in the
same folder (same file system, so the final rename is atomic), renames it onto
the target when the block succeeds and deletes it when the block fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import CacError


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`CacError` if ``path`` exists and ``overwrite`` is false, or its folder is missing."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CacError(f"{path} already exists; pass --overwrite to replace it or choose another name")
    if not path.parent.exists():
        raise CacError(f"folder {path.parent} does not exist; create it first")
    return path


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name next to ``path`` that keeps its (double) suffix, e.g. ``.seg.nrrd``."""
    name = path.name
    stem, dot, rest = name.partition(".")
    return path.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{dot}{rest}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block succeeds.

    >>> with atomic_output("out.json") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    target = check_writable(path, overwrite)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        if not tmp.exists():
            raise CacError(f"internal error: nothing was written for {target}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_output` for a folder of outputs: build it aside, then move it in place.

    An existing folder is only replaced with ``overwrite``; it is then moved
    away first and deleted once the new folder is in place.
    """
    import shutil

    target = Path(path)
    if target.exists() and not overwrite:
        raise CacError(f"{target} already exists; pass --overwrite to replace it or choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def natural_sort_key(name: str) -> list:
    """Key that orders ``f2`` before ``f10`` (digit runs compared as numbers, case-insensitive)."""
    return [
        (0, int(tok), "") if tok.isdigit() else (1, 0, tok.lower()) for tok in re.split(r"(\d+)", name) if tok
    ]
