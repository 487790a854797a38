"""cac: the application above both Libs, the ``cac`` command line and the demo.

Layers (``Testing/test_layers.py`` checks them): ``CACIdentifierLib`` (the
workflow core) < ``CACTrainerLib`` (phantom, targets, losses, training) <
``cac`` (one module per subcommand, ``cli.main`` the entry point,
``demo`` the main job) < the Slicer modules' widgets.  ``python -m cac``
runs the command line.
"""

from CACIdentifierLib import __version__

__all__ = ["__version__"]
