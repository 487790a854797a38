"""The cine's static background, and the residual channel that removes it (not in the paper).

A cardiologist tells calcium on fluoroscopy by its motion: radiopacities that move with the
heart.  The spine, ribs, lung markings, sternal wires and the collimator edges stay put (or move
only with breathing and table pan).  The median of a cine's normalised non-contrast frames keeps
what does not move; a frame minus that median keeps what moves: the heart border, the catheter,
the vessels' faint blood, and calcium.  On held-out phantom patients (docs/learning.md) the
labelled calcium stands out of its surroundings about twice as well in the residual (contrast over
the spread of a 2-6 px ring around it, median 2.07 against 0.98 in the frame on 90 calcified frames,
benchmarks/residual_contrast.py); the median beat the 75th and 90th percentiles and the maximum
(1.60, 1.54, 1.42) as the background.

A model whose architecture says ``inputs="frame+residual"`` reads two channels per patch: the
normalised frame and :data:`RESIDUAL_GAIN` times (frame - background).  Both the non-contrast and
the contrast patch get the same background, that of the non-contrast frames, so the contrast
patch's residual is a digital subtraction angiogram: the vessels where calcium can lie.
"""

from __future__ import annotations

import numpy as np

#: The architecture's ``inputs`` values (``ResUNet18(inputs=...)``): the frame alone (the paper), or
#: the frame and its residual.
FRAME_ONLY = "frame"
FRAME_AND_RESIDUAL = "frame+residual"
INPUTS = (FRAME_ONLY, FRAME_AND_RESIDUAL)
#: The residual is small in normalised units (calcium: a few hundredths); scaled to the frame's range.
RESIDUAL_GAIN = 4.0


def model_inputs(model) -> str:
    """What a model's input channels are (``ResUNet18.inputs``), through a data-parallel wrapper."""
    return getattr(getattr(model, "module", model), "inputs", FRAME_ONLY)


def temporal_background(frames: np.ndarray) -> np.ndarray:
    """Pixel-wise median of a cine's normalised non-contrast frames.

    Parameters
    ----------
    frames : (N, rows, cols) array
        The normalised non-contrast frames (``patches.normalize_frame``), N >= 1.

    Returns
    -------
    (rows, cols) float32 ndarray

    Examples
    --------
    A deposit that moves is not in the background; a wire that stays is:

    >>> frames = np.ones((5, 8, 8), np.float32)
    >>> frames[:, 0, :] = 0.25                   # a static wire along row 0
    >>> for k in range(5):
    ...     frames[k, 4, k] = 0.5                # a moving deposit
    >>> bg = temporal_background(frames)
    >>> float(bg[0, 3]), float(bg[4, 2])
    (0.25, 1.0)
    """
    arr = np.asarray(frames, np.float32)
    if arr.ndim != 3 or len(arr) == 0:
        raise ValueError(f"expected (N, rows, cols) frames with N >= 1, got shape {arr.shape}")
    return np.median(arr, axis=0).astype(np.float32)


def with_residual(x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The two input channels of a ``frame+residual`` model: ``x`` and the gain times ``x - background``.

    Parameters
    ----------
    x, background : (..., 1, H, W) arrays of the same shape
        Normalised patches (or frames) with a channel axis of 1, and the same windows of the
        background.

    Returns
    -------
    (..., 2, H, W) float32 ndarray

    Examples
    --------
    >>> x = np.full((3, 1, 4, 4), 0.5, np.float32); bg = np.full_like(x, 0.6)
    >>> y = with_residual(x, bg)
    >>> y.shape, float(y[0, 0, 0, 0]), round(float(y[0, 1, 0, 0]), 3)
    ((3, 2, 4, 4), 0.5, -0.4)
    """
    x = np.asarray(x, np.float32)
    background = np.asarray(background, np.float32)
    if x.shape != background.shape or x.ndim < 3 or x.shape[-3] != 1:
        raise ValueError(f"expected two (..., 1, H, W) arrays of one shape, got {x.shape} and {background.shape}")
    return np.concatenate([x, RESIDUAL_GAIN * (x - background)], axis=-3)


def cine_background(frames, non_contrast, spacing_mm=None) -> np.ndarray:
    """(512, 512) static background of a cine: :func:`temporal_background` of its frames ``non_contrast``.

    The frames are brought to the network's grid and normalised as for the patches
    (``patches.prepare_frame``, ``patches.normalize_frame``); training and ``inference.identify``
    both call this, so a model sees the same background in both.

    Parameters
    ----------
    frames : (N, rows, cols) array or sequence of frames
        The cine as stored.
    non_contrast : sequence of int
        Indices of its non-contrast frames (those paired by synchronization).
    spacing_mm : (row, col) or None
    """
    from .errors import CacError
    from .patches import normalize_frame, prepare_frame

    ks = sorted({int(k) for k in non_contrast})
    if not ks:
        raise CacError("no non-contrast frame to estimate the cine's background from")
    return temporal_background(np.stack([normalize_frame(prepare_frame(frames[k], spacing_mm)[0]) for k in ks]))
