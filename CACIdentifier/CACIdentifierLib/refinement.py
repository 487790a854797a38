"""Step 3 of the paper: ROI refinement (small islands, Gaussian smoothing, threshold).

In the order of the paper (Fig. 3, "Experimental details"):

1. the identified ROI - the stitched, gated ROI probability map thresholded
   at ``prob_threshold`` (0.5), or a boolean mask as is;
2. islands (connected components, 4-connectivity as scikit-image's default)
   of fewer than ``min_island_px`` pixels are removed - scikit-image
   ``remove_small_objects`` with the paper's ``min_size=1000``;
3. a Gaussian filter of standard deviation ``sigma`` pixels (paper: 1, 3 or
   5; 3 is the published setting) smooths the binary map (values 0..1);
4. the smoothed map is thresholded at ``threshold`` (0.5).  At 0.5 the outline
   moves to where the smoothed edge crosses half height, which keeps the
   area of large, convex regions nearly unchanged, rounds corners and fills
   narrow gaps and notches (a few px); thin slivers narrower than about
   ``sigma`` vanish.

Everything works on the 512x512 grid of the network (pixels of that grid).
"""

from __future__ import annotations

import inspect

import numpy as np
from scipy import ndimage

from .errors import CacError

# The paper's published setting; the one home of these numbers (model metadata, CLI, panel, training).
DEFAULTS = {"min_island_px": 1000, "sigma": 3.0, "threshold": 0.5}


def remove_small_islands(mask: np.ndarray, min_island_px: int, connectivity: int = 1) -> np.ndarray:
    """Remove connected components with fewer than ``min_island_px`` pixels (keep those with >= that many).

    Calls scikit-image's ``remove_small_objects`` with the paper's meaning
    whatever the scikit-image version: releases up to 0.25 take
    ``min_size`` (remove objects *smaller than* min_size); 0.26 deprecates it
    for ``max_size`` (remove objects *of at most* max_size pixels), so
    ``max_size = min_island_px - 1`` there.
    """
    from skimage.morphology import remove_small_objects

    mask = np.asarray(mask, dtype=bool)
    if min_island_px <= 1 or not mask.any():
        return mask.copy()
    params = inspect.signature(remove_small_objects).parameters
    if "max_size" in params:
        return remove_small_objects(mask, max_size=int(min_island_px) - 1, connectivity=connectivity)
    return remove_small_objects(mask, min_size=int(min_island_px), connectivity=connectivity)


# Upper bounds, the model card's own (modelio.validate_metadata), so that no card's setting is refused here.
# sigma: at 100 px (a fifth of the 512-px grid) the kernel (4 sigma radius) already spans most of the frame
# and blurs any calcium-sized ROI away; larger values only cost memory (sigma 1e9 ran out of it).
SIGMA_MAX_PX = 100.0
# min_island_px: 10**7 is far beyond a 512 x 512 frame (262,144 px), where every island is removed already.
MIN_ISLAND_MAX_PX = 10**7


def _number(value) -> float:
    """``value`` as a float; NaN (refused by every range) when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def check_settings(*, min_island_px, sigma, threshold, **_) -> None:
    """Raise :class:`CacError` unless every refinement setting is a finite number in its range.

    ``0 <= sigma <= SIGMA_MAX_PX``, ``0 <= min_island_px <= MIN_ISLAND_MAX_PX`` and
    ``0 < threshold < 1``; NaN and infinity fail.  The message names each bad
    setting with its ``cac identify`` option.  Called by :func:`refine`, and by
    ``identify`` before the network runs, so a bad setting costs nothing.

    Parameters
    ----------
    min_island_px, sigma, threshold : float
        The settings of :func:`refine`.

    Raises
    ------
    CacError
        One line naming every setting out of its range and what to give instead.

    Examples
    --------
    >>> check_settings(min_island_px=1000, sigma=float("nan"), threshold=0.5)
    Traceback (most recent call last):
    ...
    CACIdentifierLib.errors.CacError: invalid refinement setting sigma=nan (--sigma): give a Gaussian sigma from 0 to 100 pixels (paper: 3)
    """
    sigma_v, island_v, threshold_v = _number(sigma), _number(min_island_px), _number(threshold)
    problems = []
    # Written as "not in range" so that NaN fails too; infinity fails the upper bounds.
    if not 0.0 <= sigma_v <= SIGMA_MAX_PX:
        problems.append(f"sigma={sigma} (--sigma): give a Gaussian sigma from 0 to {SIGMA_MAX_PX:g} pixels "
                        f"(paper: 3)")
    if not 0.0 <= island_v <= MIN_ISLAND_MAX_PX:
        problems.append(f"min_island_px={min_island_px} (--min-island): give a number of pixels from 0 to "
                        f"{MIN_ISLAND_MAX_PX} (paper: 1000)")
    if not 0.0 < threshold_v < 1.0:
        problems.append(f"threshold={threshold} (--threshold): give a number between 0 and 1, both excluded "
                        f"(paper: 0.5)")
    if problems:
        raise CacError(f"invalid refinement setting{'s' if len(problems) > 1 else ''} " + "; ".join(problems))


def refine(
    roi_prob: np.ndarray,
    *,
    min_island_px: int = DEFAULTS["min_island_px"],
    sigma: float = DEFAULTS["sigma"],
    threshold: float = DEFAULTS["threshold"],
    spacing_mm: tuple[float, float] | None = None,
    prob_threshold: float = 0.5,
    connectivity: int = 1,
) -> np.ndarray:
    """Refine a ROI map into the final ROI mask (paper, Step 3).

    Parameters
    ----------
    roi_prob : (H, W) float probabilities in [0, 1] (binarised at
        ``prob_threshold``: ``>=``) or a bool mask.
    min_island_px : islands with fewer pixels are removed (paper: 1000); 0 or
        1 disables.
    sigma : Gaussian standard deviation in pixels (paper: 3); 0 disables the
        smoothing (and the second threshold).
    threshold : level at which the smoothed map is thresholded (``>=``).
    spacing_mm : optional (row, col) spacing; when anisotropic, ``sigma``
        applies along the finer axis and is scaled down along the coarser
        one so the kernel is round in millimetres.
    connectivity : 1 (4-neighbours, scikit-image's default) or 2 (8).

    Returns
    -------
    ndarray of bool, the shape of ``roi_prob``

    Examples
    --------
    An island under 1000 pixels goes; a large ROI stays, its corners rounded:

    >>> prob = np.zeros((128, 128), np.float32)
    >>> prob[10:20, 10:20] = 0.9  # 100 px
    >>> prob[40:100, 40:100] = 0.9  # 3600 px
    >>> mask = refine(prob)
    >>> bool(mask[15, 15]), bool(mask[70, 70]), bool(mask[40, 40])
    (False, True, False)
    """
    arr = np.asarray(roi_prob)
    if arr.ndim != 2:
        raise ValueError(f"refine expects one 2D ROI map, got shape {arr.shape}")
    check_settings(min_island_px=min_island_px, sigma=sigma, threshold=threshold)
    mask = arr if arr.dtype == bool else arr >= prob_threshold
    mask = remove_small_islands(mask, int(min_island_px), connectivity)
    if sigma == 0 or not mask.any():
        return mask
    sig = (float(sigma), float(sigma))
    if spacing_mm is not None:
        fine = min(spacing_mm)
        sig = (sigma * fine / spacing_mm[0], sigma * fine / spacing_mm[1])
    # Smooth only the mask's bounding box plus the kernel radius: the same result (the map is 0
    # beyond it, and "nearest" at a crop edge repeats that 0), a few times faster for small ROIs.
    truncate = 4.0
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = []
    for lo, hi, s, size in ((rows[0], rows[-1], sig[0], mask.shape[0]), (cols[0], cols[-1], sig[1], mask.shape[1])):
        margin = int(truncate * s + 0.5) + 1
        box.append(slice(max(0, lo - margin), min(size, hi + 1 + margin)))
    smooth = ndimage.gaussian_filter(mask[tuple(box)].astype(np.float32), sigma=sig, mode="nearest", truncate=truncate)
    out = np.zeros_like(mask)
    out[tuple(box)] = smooth >= threshold
    return out


# All five patches of a frame may feed its ROI (the paper); a model card's ``roi_patches`` may keep fewer.
ROI_PATCHES = 5


def most_probable_patches(probs, gate, roi_patches: int | None = ROI_PATCHES) -> np.ndarray:
    """The classifier gate kept to each frame's ``roi_patches`` most probable gated patches.

    Whether a frame gets an ROI stays the classifier's decision (some patch
    reaches the threshold); which patches draw it can be fewer.  A lower
    threshold finds more frames but lets more patches in, and each brings
    its decoder islands, so the ROI grows and loses precision
    (docs/learning.md, session 39).  Keeping the most probable ones decouples
    the frame decision from the ROI's extent.

    Parameters
    ----------
    probs : array_like, shape (..., 5)
        Classifier probabilities of each frame's five patches.
    gate : array_like of bool, shape (..., 5)
        The classifier's decisions (probability >= threshold).
    roi_patches : int, optional
        How many gated patches per frame may draw the ROI, 1-5; 5 or None keeps
        the gate as it is.  Ties go to the lower patch index.

    Returns
    -------
    ndarray of bool, the shape of ``gate``

    Examples
    --------
    >>> most_probable_patches([[0.9, 0.2, 0.7, 0.6, 0.1]], [[True, False, True, True, False]], 2).tolist()
    [[True, False, True, False, False]]
    >>> most_probable_patches([0.1, 0.8, 0.3, 0.2, 0.4], [False, True, False, False, False], 2).tolist()
    [False, True, False, False, False]
    """
    gate = np.asarray(gate, bool)
    if roi_patches is None or int(roi_patches) >= gate.shape[-1]:
        return gate.copy()
    if int(roi_patches) < 1:
        raise ValueError(f"roi_patches must be 1-{ROI_PATCHES}, got {roi_patches}")
    p = np.where(gate, np.asarray(probs, np.float64), -np.inf)
    order = np.argsort(-p, axis=-1, kind="stable")
    keep = np.zeros(gate.shape, bool)
    np.put_along_axis(keep, order[..., : int(roi_patches)], True, axis=-1)
    return keep & gate
