"""How a benchmark script starts and ends, as ``cac`` does a command.

A :class:`~CACIdentifierLib.errors.CacError` (a model path that does not exist, a cache that lacks a
pool, a card without calibration) is one line on stderr and exit status 2, not a traceback: the
scripts are run by hand with paths typed by a person, like the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def run(main: Callable[[], int | None]) -> int:
    """Call ``main()`` and return its exit status; a ``CacError`` is printed as one line, status 2.

    Examples
    --------
    >>> from CACIdentifierLib.errors import CacError
    >>> def main():
    ...     raise CacError("model path m.safetensors does not exist")
    >>> run(main)  # the line goes to stderr
    2
    >>> run(lambda: None)
    0
    """
    from CACIdentifierLib.errors import MESSAGE_LIMIT, CacError, printable

    try:
        return main() or 0
    except CacError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {printable(exc, MESSAGE_LIMIT)}", file=sys.stderr)
        return 2


def check_models(paths) -> None:
    """Read each model file's header (a CacError on a wrong path): call it before minutes of pool making.

    Examples
    --------
    >>> check_models(["no/such/model.safetensors"])
    Traceback (most recent call last):
    ...
    CACIdentifierLib.errors.CacError: model file no/such/model.safetensors not found; give the path of a .safetensors model
    """
    from CACIdentifierLib.modelio import read_metadata

    for path in paths:
        read_metadata(path)


def options(doc: str, argv=None, add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The arguments of a script that takes few or none: ``--help`` prints ``doc``, anything unknown is refused.

    A benchmark that ignored its arguments ran for minutes on ``--help`` or a mistyped option.

    Examples
    --------
    >>> options("Speed of X.", [])
    Namespace()
    >>> options("Speed of X.", ["--compile"], lambda ap: ap.add_argument("--compile", action="store_true"))
    Namespace(compile=True)
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if add is not None:
        add(ap)
    return ap.parse_args(argv)
