"""Training targets: ROI_GT (the decoder's target) and per-patch labels.

The paper (De Rose et al. 2025, Fig. 4 and Table 1) trains the U-Net-like
decoder not on the calcium masks themselves, which are a few pixels across,
but on a region of interest ROI_GT obtained by *iterative dilation* of the
majority-vote calcium mask, "each iteration extending the ROI by five pixels
following an elliptical shape"; four iterations gave the best IoM/HD balance
(Table 1, Experiment 3), so ``iterations=4, step_px=5`` are the defaults.

Each iteration here is one binary dilation with an elliptical structuring
element of radius ``step_px`` pixels (a disk for isotropic pixels), so one
isolated calcium pixel grows into a disk of radius ``iterations * step_px``
(20 px by default) -- up to the discretisation of the digital disks: the
Minkowski sum of four digital disks of radius 5 is a slightly polygonal disk
that lacks 48 rim pixels (4 %) of the digital disk of radius 20 and contains
every pixel within 18.5 px (see Testing/test_targets.py).

With ``spacing_mm`` given and anisotropic pixels, the structuring element is an
ellipse that is ``step_px`` pixels long along the finer axis and
correspondingly shorter (in pixels) along the coarser one, i.e. the dilation
is a disk in millimetres.  The default (``spacing_mm=None``) is the paper's
pixel-based dilation.

Per-patch labels (:func:`patch_targets`): a patch is *positive* when it holds
at least ``min_deposit_fraction`` (default one half) of the pixels of at least
one calcium deposit (an 8-connected component of the full-frame majority
mask).  A deposit cut by the border of a patch with only a sliver inside is
therefore not counted for that patch (its few pixels at the very edge carry
no visible evidence), while every deposit makes at least one of the five
overlapping patches positive (it has at least half of its pixels in one of
them).  ``min_deposit_fraction=0`` gives the plain rule "any calcium pixel".
"""

from __future__ import annotations

import numpy as np
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.roi_gt import DEFAULT_ITERATIONS, DEFAULT_STEP_PX, dilation_footprint, roi_gt
from scipy import ndimage

__all__ = ["DEFAULT_ITERATIONS", "DEFAULT_STEP_PX", "DEFAULT_MIN_DEPOSIT_FRACTION", "dilation_footprint",
           "roi_gt", "patch_labels", "patch_targets"]
DEFAULT_MIN_DEPOSIT_FRACTION = 0.5


def patch_labels(mask, origins, patch_size: int = 256,
                 min_deposit_fraction: float = DEFAULT_MIN_DEPOSIT_FRACTION) -> np.ndarray:
    """CAC-presence label of each patch of a frame (see the module docstring for the rule).

    Parameters
    ----------
    mask : (rows, cols) bool
        Full-frame majority-vote calcium mask.
    origins : sequence of (row, col)
        Top-left corner of each patch (``patches.patch_origins``).
    patch_size : int
        Patch side in pixels.
    min_deposit_fraction : float in [0, 1]
        Fraction of a deposit's pixels that must lie inside a patch for it to
        count; 0 means any calcium pixel makes the patch positive.

    Returns
    -------
    labels : (n_patches,) float32 of 0.0 / 1.0
    """
    mask = np.asarray(mask).astype(bool)
    labels = np.zeros(len(origins), dtype=np.float32)
    if not mask.any():
        return labels
    components, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    for i, (r, c) in enumerate(origins):
        window = components[r:r + patch_size, c:c + patch_size]
        inside = np.bincount(window.ravel(), minlength=n + 1)
        if min_deposit_fraction <= 0:
            labels[i] = float(inside[1:].sum() > 0)
        else:
            frac = inside[1:] / np.maximum(sizes[1:], 1)
            labels[i] = float(np.any((inside[1:] > 0) & (frac >= min_deposit_fraction - 1e-9)))
    return labels


def patch_targets(mask512, *, iterations: int = DEFAULT_ITERATIONS, step_px: int = DEFAULT_STEP_PX,
                  spacing_mm=None, min_deposit_fraction: float = DEFAULT_MIN_DEPOSIT_FRACTION):
    """Labels and ROI_GT patches of one 512x512 frame.

    The ROI_GT is computed on the whole frame first and then cut into the five
    patches (so the dilation is not truncated at patch borders).

    Parameters
    ----------
    mask512 : (512, 512) bool
        Majority-vote calcium mask of a (non-contrast) frame.
    iterations, step_px, spacing_mm
        Passed to :func:`roi_gt`.
    min_deposit_fraction
        Passed to :func:`patch_labels`.

    Returns
    -------
    labels : (5,) float32
        1.0 where the patch is positive.
    roi : (5, 256, 256) bool
        ROI_GT cut into the patches of ``patches.patch_origins``.
    """
    from CACIdentifierLib import patches

    mask = np.asarray(mask512).astype(bool)
    if mask.ndim != 2:
        raise CacError(f"patch_targets takes one frame mask, got shape {mask.shape}")
    rows, cols = mask.shape
    origins = patches.patch_origins(rows, cols)
    size = patches.PATCH_SIZE
    labels = patch_labels(mask, origins, size, min_deposit_fraction)
    roi = roi_gt(mask, iterations, step_px, spacing_mm)
    roi_patches = np.stack([roi[r:r + size, c:c + size] for r, c in origins])
    return labels, roi_patches
