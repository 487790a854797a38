"""CACTrainerLib: phantom data, ROI targets, losses, training and cross-validation.

Builds on :mod:`CACIdentifierLib` (cine I/O, synchronization, network, metrics).
Imports neither ``slicer`` nor ``qt``.
"""
