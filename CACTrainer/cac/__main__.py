"""``python -m cac``: the command line (what the Slicer modules launch)."""

import os
import sys

try:
    from .cli import entry
except KeyboardInterrupt:  # Ctrl-C while the modules load: the same line as during the work
    sys.stderr.write("cac: interrupted\n")
    sys.stderr.flush()
    os._exit(130)

entry()
