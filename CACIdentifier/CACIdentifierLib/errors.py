"""User-facing errors.

A :class:`CacError` carries one line that says what is wrong and what to do.
The CLI prints it as ``cac: error: <message>`` and exits with code 2; the
Slicer widgets show it in a message box.  Anything else escaping is a bug.
"""


class CacError(Exception):
    """Bad input or an impossible request, explained in one line for the user."""


class CacWarning(UserWarning):
    """Something questionable that does not stop the work (non-XA modality, no periodicity...)."""
