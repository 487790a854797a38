"""``python -m cac``: the command line (what the Slicer modules launch)."""

import sys

from .cli import main

sys.exit(main())
