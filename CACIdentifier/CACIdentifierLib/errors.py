"""User-facing errors.

A :class:`CacError` carries one line that says what is wrong and what to do.
The CLI prints it as ``cac: error: <message>`` and exits with code 2; the
Slicer widgets show it in a message box.  Anything else escaping is a bug.

What is the user's to fix (a file, a setting, a cine too short or too small)
raises :class:`CacError`.  What only a caller's code can get wrong (an array of
the wrong shape handed between the stages, an unknown mode name) raises
``ValueError``, as numpy and scikit-image do: that is a bug to report, not a
message for the user.
"""


class CacError(Exception):
    """Bad input or an impossible request, explained in one line for the user."""


class CacWarning(UserWarning):
    """Something questionable that does not stop the work (non-XA modality, no periodicity...)."""
