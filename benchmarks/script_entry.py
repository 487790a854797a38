"""How a benchmark script ends, as ``cac`` ends a command.

A :class:`~CACIdentifierLib.errors.CacError` (a model path that does not exist, a cache that lacks a
pool, a card without calibration) is one line on stderr and exit status 2, not a traceback: the
scripts are run by hand with paths typed by a person, like the command line.
"""

from __future__ import annotations

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

    >>> check_models([])
    """
    from CACIdentifierLib.modelio import read_metadata

    for path in paths:
        read_metadata(path)
