"""Checking an NRRD file before slicer-core reads it.

slicer-core's readers (ITK's and teem's NRRD code) abort the whole process on
some corrupt files (a truncated gzip stream, an unparsable ``kinds`` field:
``terminate called after throwing an instance of 'itk::ExceptionObject'``) and
print their own diagnostics on stderr.  :func:`check_nrrd` parses the header
in Python and checks that the data holds what the header announces, so a bad
file becomes one :class:`~.errors.CacError` line instead; :func:`native_stderr_silenced`
keeps the C++ libraries' messages off the terminal while they read.
"""

from __future__ import annotations

import bz2
import contextlib
import os
import re
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .errors import CacError, printable

# NRRD type names -> bytes per value (the NRRD0005 spec's synonyms).
_TYPE_SIZES = {}
for _names, _size in (
    (("signed char", "int8", "int8_t"), 1),
    (("uchar", "unsigned char", "uint8", "uint8_t"), 1),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    (("int", "signed int", "int32", "int32_t"), 4),
    (("uint", "unsigned int", "uint32", "uint32_t"), 4),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"), 8),
    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), 8),
    (("float",), 4),
    (("double",), 8),
):
    for _name in _names:
        _TYPE_SIZES[_name] = _size

_ENCODINGS = {"raw", "gzip", "gz", "bzip2", "bz2"}
_KINDS = {
    "domain", "space", "time", "list", "point", "vector", "covariant-vector", "normal", "stub", "scalar",
    "complex", "2-vector", "3-color", "rgb-color", "hsv-color", "xyz-color", "4-color", "rgba-color",
    "3-vector", "3-gradient", "3-normal", "4-vector", "quaternion", "2d-symmetric-matrix",
    "2d-masked-symmetric-matrix", "2d-matrix", "2d-masked-matrix", "3d-symmetric-matrix",
    "3d-masked-symmetric-matrix", "3d-matrix", "3d-masked-matrix", "none", "???",
}
_SPACES = {
    "right-anterior-superior", "ras", "left-anterior-superior", "las", "left-posterior-superior", "lps",
    "right-anterior-superior-time", "rast", "left-anterior-superior-time", "last", "left-posterior-superior-time",
    "lpst", "scanner-xyz", "scanner-xyz-time", "3d-right-handed", "3d-left-handed", "3d-right-handed-time",
    "3d-left-handed-time",
}
MAX_HEADER_BYTES = 1 << 20
MAX_DIMENSION = 5
MAX_VALUES = 1 << 33  # 8 G values: far beyond a cine, below an overflow


def _header(path: Path) -> tuple[dict[str, str], int]:
    """(fields and key-value pairs, byte offset of the data) of an attached-header NRRD."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        magic = f.readline(64)
        if not re.match(rb"NRRD000[1-5]\r?\n", magic):
            raise CacError(f"{path} is not a NRRD file (no NRRD magic); give a .nrrd or .seq.nrrd file")
        offset = len(magic)
        while True:
            raw = f.readline(MAX_HEADER_BYTES)
            if not raw:
                raise CacError(f"{path} ends inside its NRRD header; the file is truncated")
            offset += len(raw)
            if offset > MAX_HEADER_BYTES:
                raise CacError(f"{path} has a NRRD header longer than {MAX_HEADER_BYTES} bytes; the file is corrupt")
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line:
                break
            if line.startswith("#"):
                continue
            if ":=" in line:
                key, value = line.split(":=", 1)
            elif ": " in line:
                key, value = line.split(": ", 1)
            else:
                raise CacError(f"{path}: NRRD header line {printable(line, 60)!r} is not 'field: value'")
            key = key.strip()
            if ":=" not in line and key in fields:
                raise CacError(f"{path}: NRRD field {printable(key, 40)!r} is given twice; the file is corrupt")
            fields[key] = value.strip()
    return fields, offset


def _vectors(text: str, what: str, path: Path) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for token in re.findall(r"\([^)]*\)|none", text):
        if token == "none":
            out.append(None)
            continue
        try:
            vector = [float(v) for v in token[1:-1].split(",")]
        except ValueError:
            raise CacError(f"{path}: NRRD {what} {printable(text, 80)!r} is not a list of vectors") from None
        if not all(np.isfinite(vector)):
            raise CacError(f"{path}: NRRD {what} {printable(text, 80)!r} holds values that are not finite")
        out.append(vector)
    return out


def check_nrrd(path) -> dict[str, str]:
    """Check an NRRD file's header and data length; returns the header fields or raises CacError.

    Checked: the magic, one ``field: value`` per line (no field twice),
    ``dimension`` (1-5), ``sizes`` (that many positive integers), ``type``,
    ``encoding`` (raw, gzip, bzip2), ``kinds`` and ``space directions`` (one
    per axis, finite), ``space origin`` (finite), and that the data (after
    decompression) holds at least ``prod(sizes)`` values of the type.
    Detached data (``data file``) is refused.

    >>> check_nrrd("missing.nrrd")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise CacError(f"{path} not found")
    fields, offset = _header(path)
    for key in ("dimension", "type", "sizes", "encoding"):
        if key not in fields:
            raise CacError(f"{path}: the NRRD header has no {key!r} field; the file is corrupt")
    try:
        dimension = int(fields["dimension"])
    except ValueError:
        dimension = -1
    if not 1 <= dimension <= MAX_DIMENSION:
        raise CacError(f"{path}: NRRD dimension {printable(fields['dimension'], 40)!r} is not 1 to {MAX_DIMENSION}")
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
    except ValueError:
        sizes = []
    if len(sizes) != dimension or any(s < 1 for s in sizes):
        raise CacError(
            f"{path}: NRRD sizes {printable(fields['sizes'], 60)!r} are not {dimension} positive integers"
        )
    type_size = _TYPE_SIZES.get(fields["type"].lower())
    if type_size is None:
        raise CacError(f"{path}: NRRD type {printable(fields['type'], 40)!r} is not a number type")
    encoding = fields["encoding"].lower()
    if encoding not in _ENCODINGS:
        raise CacError(
            f"{path}: NRRD encoding {printable(fields['encoding'], 40)!r} is not supported; save as raw or gzip"
        )
    if "space" in fields and fields["space"].lower() not in _SPACES:
        raise CacError(f"{path}: NRRD space {printable(fields['space'], 40)!r} is not a known space")
    if "space dimension" in fields and fields["space dimension"] not in ("2", "3", "4"):
        raise CacError(f"{path}: NRRD space dimension {printable(fields['space dimension'], 40)!r} is not 2 to 4")
    if "space" in fields and "space dimension" in fields:
        raise CacError(f"{path}: the NRRD header gives both space and space dimension")
    if "kinds" in fields:
        kinds = fields["kinds"].split()
        if len(kinds) != dimension or any(k.lower() not in _KINDS for k in kinds):
            raise CacError(f"{path}: NRRD kinds {printable(fields['kinds'], 60)!r} do not describe {dimension} axes")
    if "space directions" in fields:
        directions = _vectors(fields["space directions"], "space directions", path)
        if len(directions) != dimension:
            raise CacError(f"{path}: NRRD space directions do not describe {dimension} axes")
        lengths = {len(v) for v in directions if v is not None}
        if len(lengths) > 1 or not any(directions):
            raise CacError(f"{path}: NRRD space directions are inconsistent")
    if "space origin" in fields and len(_vectors(fields["space origin"], "space origin", path)) != 1:
        raise CacError(f"{path}: NRRD space origin is not one vector")
    if "data file" in fields or "datafile" in fields:
        raise CacError(f"{path} keeps its data in another file (detached header); save it as one .nrrd file")
    values = int(np.prod(sizes, dtype=object))
    if values > MAX_VALUES:
        raise CacError(f"{path}: NRRD sizes {fields['sizes']} describe {values} values; the header is corrupt")
    need = values * type_size
    have = _data_bytes(path, offset, encoding, need)
    if have < need:
        raise CacError(
            f"{path} is truncated or corrupt: its data holds {have} of the {need} bytes the header announces; "
            "copy the complete file"
        )
    return fields


def _data_bytes(path: Path, offset: int, encoding: str, need: int) -> int:
    """Bytes of data after decompression, counted up to ``need`` (a stream is not kept in memory)."""
    if encoding == "raw":
        return max(0, path.stat().st_size - offset)
    gzip = encoding in ("gzip", "gz")
    decompressor = zlib.decompressobj(47) if gzip else bz2.BZ2Decompressor()
    total = 0
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while total < need:
                block = f.read(1 << 20)
                if not block:
                    break
                # Output limited to what is still needed: a small file cannot expand into gigabytes here.
                total += len(decompressor.decompress(block, need - total + 1))
                while total < need:
                    if gzip and decompressor.unconsumed_tail:
                        total += len(decompressor.decompress(decompressor.unconsumed_tail, need - total + 1))
                    elif not gzip and not decompressor.needs_input and not decompressor.eof:
                        total += len(decompressor.decompress(b"", need - total + 1))
                    else:
                        break
                if getattr(decompressor, "eof", False):
                    break
    except (zlib.error, OSError, EOFError) as exc:
        raise CacError(
            f"{path}: its {encoding} data is corrupt ({printable(str(exc), 80)}); copy the complete file"
        ) from None
    return total


@contextlib.contextmanager
def native_stderr_silenced():
    """Send what C/C++ code writes to file descriptor 2 to a scratch file while the block runs.

    ITK, teem and VTK print their diagnostics straight to the process's stderr;
    the user gets one CacError line instead.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
