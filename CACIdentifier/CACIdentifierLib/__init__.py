"""CACIdentifierLib: the workflow core of the CACIdentifier module.

Coronary artery calcification (CAC) identification in 2D X-ray coronary
angiography cines, after De Rose et al., Int J CARS 2025.  Every module here
works on numpy arrays and torch tensors; only ``mrml`` and ``slicercore``
touch Slicer's MRML classes, and nothing imports ``qt``.
"""

__version__ = "0.1.0"
