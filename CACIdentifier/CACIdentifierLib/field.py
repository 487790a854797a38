"""The exposed field of a cine: where the X-rays reach the detector.

Collimator blades and shutters cover the border of most angiography runs.  There
the image is dark and flat (only noise), every frame, and nothing there can be
calcium; but its straight edges are exactly what a patch classifier mistakes
for a dense object.  :func:`exposed_field` finds the covered border so that no
ROI is ever reported in it.

Method: the per-pixel 90th percentile over (up to 24 evenly spaced) frames --
a collimated pixel stays dark in every frame, while contrast passes -- is
smoothed; pixels darker than ``dark_fraction`` of the way from its 0.5th to its
99.5th percentile are *dark*; the dark regions connected to the image border are
the collimated border (a dark spine or contrast-filled vessel inside the field
does not touch it, or is not that dark); the field is the largest remaining
connected region with its holes filled, shrunk by ``margin_px`` for the blades'
penumbra.  When no border is dark the whole frame is the field.

Examples
--------
>>> import numpy as np
>>> from CACIdentifierLib.field import exposed_field
>>> img = np.full((64, 64), 200.0); img[:, :8] = 5.0   # a blade on the left
>>> f = exposed_field(img + np.random.default_rng(0).normal(0, 2, img.shape))
>>> bool(f[:, :8].any()), bool(f[:, 12:].all())
(False, True)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def exposed_field(frames: np.ndarray, *, dark_fraction: float = 0.12, margin_px: int = 3,
                  max_frames: int = 24) -> np.ndarray:
    """Boolean mask (rows, cols) of the exposed field of a frame or a cine.

    Parameters
    ----------
    frames : (rows, cols) or (n_frames, rows, cols) array
        Stored pixel values, MONOCHROME2 (attenuation is dark).
    dark_fraction : float
        Threshold between the darkest and brightest levels (0-1) below which a
        border region counts as collimated.
    margin_px : int
        Pixels taken off the field's edge (the blades' penumbra).
    max_frames : int
        Frames used (evenly spaced) for the per-pixel percentile.

    Returns
    -------
    (rows, cols) bool ndarray
        True inside the exposed field.
    """
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] < 8 or arr.shape[2] < 8:
        raise ValueError(f"expected a (rows, cols) frame or (n, rows, cols) cine, got shape {np.shape(frames)}")
    idx = np.unique(np.linspace(0, arr.shape[0] - 1, min(max_frames, arr.shape[0])).round().astype(int))
    img = np.percentile(arr[idx].astype(np.float32), 90, axis=0) if len(idx) > 1 else arr[idx[0]].astype(np.float32)
    img = ndi.gaussian_filter(img, 1.5)
    lo, hi = np.percentile(img, [0.5, 99.5])
    rows, cols = img.shape
    full = np.ones((rows, cols), bool)
    if not np.isfinite(lo) or hi - lo <= 0:
        return full
    dark = img < lo + dark_fraction * (hi - lo)
    labels, n = ndi.label(dark)
    if n == 0:
        return full
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    collimated = np.isin(labels, border)
    field = ~collimated
    lab2, n2 = ndi.label(field)
    if n2 == 0:
        return full
    sizes = np.bincount(lab2.ravel())
    sizes[0] = 0
    field = ndi.binary_fill_holes(lab2 == int(np.argmax(sizes)))
    if field.mean() < 0.2:
        # Implausible (a nearly black run): do not hide the whole frame on a guess.
        return full
    if margin_px > 0 and collimated.any():
        field = ndi.binary_erosion(field, iterations=int(margin_px), border_value=1)
    return field
