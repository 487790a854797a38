"""ROI_GT: the decoder's target, the majority-vote calcium mask dilated iteratively (paper Fig. 4, Table 1).

It lives in the core, not in the trainer, because identification reports the
ROI precision (the fraction of an ROI inside ROI_GT) against annotations as
well; :mod:`CACTrainerLib.targets` re-exports it with the patch labels.
See that module's docstring for the dilation's geometry.

Examples
--------
>>> import numpy as np
>>> from CACIdentifierLib.roi_gt import roi_gt
>>> m = np.zeros((64, 64), bool); m[32, 32] = True
>>> r = roi_gt(m)
>>> bool(r[32, 50]), bool(r[32, 53])
(True, False)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import morphology

from .errors import CacError

DEFAULT_ITERATIONS = 4
DEFAULT_STEP_PX = 5


def dilation_footprint(step_px: int = DEFAULT_STEP_PX, spacing_mm=None) -> np.ndarray:
    """The elliptical structuring element of one dilation step.

    Parameters
    ----------
    step_px : int
        Radius of one step in pixels along the finer pixel axis (5 in the paper).
    spacing_mm : (float, float) or None
        ``(row_spacing, column_spacing)`` in mm.  ``None`` or isotropic
        spacing gives ``skimage.morphology.disk(step_px)``; anisotropic
        spacing gives ``skimage.morphology.ellipse`` with semi-axes
        ``step_px * min(spacing) / spacing`` (rounded, at least 1 px), i.e. the
        same physical radius ``step_px * min(spacing)`` mm along both axes.

    Returns
    -------
    footprint : (2*ry+1, 2*rx+1) bool ndarray
    """
    step_px = int(step_px)
    if step_px < 1:
        raise CacError(f"dilation step must be at least 1 pixel, got {step_px}")
    if spacing_mm is None or np.isclose(float(spacing_mm[0]), float(spacing_mm[1])):
        return morphology.disk(step_px).astype(bool)
    row_sp, col_sp = (float(s) for s in spacing_mm)
    if row_sp <= 0 or col_sp <= 0:
        raise CacError(f"pixel spacing must be positive, got {spacing_mm}")
    finest = min(row_sp, col_sp)
    ry = max(1, int(round(step_px * finest / row_sp)))
    rx = max(1, int(round(step_px * finest / col_sp)))
    # skimage's ellipse(width, height): width = semi-axis along columns, height along rows.
    return morphology.ellipse(rx, ry).astype(bool)


def roi_gt(mask, iterations: int = DEFAULT_ITERATIONS, step_px: int = DEFAULT_STEP_PX,
           spacing_mm=None) -> np.ndarray:
    """ROI_GT: the majority-vote calcium mask dilated ``iterations`` times by ``step_px`` pixels.

    Parameters
    ----------
    mask : (rows, cols) or (n_frames, rows, cols) array-like of bool
        Calcium mask (the majority vote of the annotators).  A stack is
        dilated frame by frame (never across frames).
    iterations : int
        Number of dilation steps (4 in the paper; 0 returns the mask itself).
    step_px : int
        Radius in pixels of each step (5 in the paper).
    spacing_mm : (float, float) or None
        Optional ``(row, column)`` spacing in mm for an elliptical, physically
        isotropic step (see :func:`dilation_footprint`).

    Returns
    -------
    roi : bool ndarray of the shape of ``mask``.  Empty where the mask is empty.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim not in (2, 3):
        raise CacError(f"calcium mask must be 2D or a 3D frame stack, got shape {mask.shape}")
    iterations = int(iterations)
    if iterations < 0:
        raise CacError(f"dilation iterations must be >= 0, got {iterations}")
    if iterations == 0:
        return mask.copy()
    footprint = dilation_footprint(step_px, spacing_mm)
    if mask.ndim == 3:
        return np.stack([roi_gt(m, iterations, step_px, spacing_mm) for m in mask])
    if not mask.any():
        return mask.copy()
    # Crop to the bounding box grown by the total radius: dilating a few small
    # deposits then costs almost nothing on a 512x512 frame.
    grow = iterations * (max(footprint.shape) // 2) + 1
    rows, cols = np.nonzero(mask)
    r0, r1 = max(rows.min() - grow, 0), min(rows.max() + grow + 1, mask.shape[0])
    c0, c1 = max(cols.min() - grow, 0), min(cols.max() + grow + 1, mask.shape[1])
    out = np.zeros_like(mask)
    region = mask[r0:r1, c0:c1]
    for _ in range(iterations):
        # border_value=0: nothing grows in from outside the frame.
        region = ndimage.binary_dilation(region, structure=footprint)
    out[r0:r1, c0:c1] = region
    return out
