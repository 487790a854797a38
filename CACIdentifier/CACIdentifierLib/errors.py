"""User-facing errors, and strings made safe to print.

A :class:`CacError` carries one line that says what is wrong and what to do.
The CLI prints it as ``cac: error: <message>`` and exits with code 2; the
Slicer widgets show it in a message box.  Anything else escaping is a bug.

What is the user's to fix (a file, a setting, a cine too short or too small)
raises :class:`CacError`.  What only a caller's code can get wrong (an array of
the wrong shape handed between the stages, an unknown mode name) raises
``ValueError``, as numpy and scikit-image do: that is a bug to report, not a
message for the user.

Text that comes from a file (tag values, exception messages of the parsers,
file names) can hold newlines, terminal escape sequences or megabytes of
bytes: :func:`printable` makes it one short printable line before it goes
into a message or onto the terminal.
"""

from __future__ import annotations

# Longest piece of file-supplied text shown in a message or by `cac info`.
PRINTABLE_LIMIT = 200
# Longest whole error or warning line a command prints (`cac`, the benchmark scripts): a message may
# quote a long path.
MESSAGE_LIMIT = 2000


class CacError(Exception):
    """Bad input or an impossible request, explained in one line for the user."""


class CacWarning(UserWarning):
    """Something questionable that does not stop the work (non-XA modality, no periodicity...)."""


def printable(text, limit: int | None = PRINTABLE_LIMIT) -> str:
    r"""``text`` as one printable line: control characters escaped, cut to ``limit`` characters.

    Newlines, tabs, escape sequences and other non-printable characters become
    Python-style escapes (``\n``, ``\x1b``), so a value read from a file can
    neither forge extra output lines nor drive the terminal.  Longer text is
    cut and ends with ``...``; ``limit=None`` keeps everything.

    >>> printable("ACME\x1b[31m\nframes: 3")
    'ACME\\x1b[31m\\nframes: 3'
    >>> printable("x" * 10, limit=6)
    'xxx...'
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    text = str(text)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text
