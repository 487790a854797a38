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

A model whose architecture says ``inputs="frame+residual+vessels"`` reads three channels: the
non-contrast head gets its frame, its residual and the paired contrast patch's residual (the
vessels, pixel by pixel where the calcium is); the contrast head gets its frame, its residual and
zeros.  The two heads meet only after Block2 (a quarter of the resolution, network.py), so a
frame+residual model can use the contrast frame only as a coarse vessel map, and a contrast frame of
another cardiac phase costs it almost nothing (benchmarks/pairing_value.py, docs/learning.md); the
third channel puts the synchronized vessels under the non-contrast head's first convolution.  The
contrast head's third channel stays zero so that it depends on the contrast frame alone, and
inference computes it once per contrast frame.
"""

from __future__ import annotations

import numpy as np

#: The architecture's ``inputs`` values (``ResUNet18(inputs=...)``): the frame alone (the paper), or
#: the frame and its residual.
FRAME_ONLY = "frame"
FRAME_AND_RESIDUAL = "frame+residual"
FRAME_RESIDUAL_AND_VESSELS = "frame+residual+vessels"
#: Each adds channels to the one before it (a model can be widened along this order, training.py).
INPUTS = (FRAME_ONLY, FRAME_AND_RESIDUAL, FRAME_RESIDUAL_AND_VESSELS)
#: Input channels of each head, by ``inputs`` (``"frame"``: any number of frame channels, usually 1).
IN_CHANNELS = {FRAME_AND_RESIDUAL: 2, FRAME_RESIDUAL_AND_VESSELS: 3}
#: The residual is small in normalised units (calcium: a few hundredths); scaled to the frame's range.
RESIDUAL_GAIN = 4.0


def model_inputs(model) -> str:
    """What a model's input channels are (``ResUNet18.inputs``), through a data-parallel wrapper."""
    return getattr(getattr(model, "module", model), "inputs", FRAME_ONLY)


def reads_background(inputs: str) -> bool:
    """Whether a model with these ``inputs`` needs its cine's static background.

    >>> [reads_background(i) for i in INPUTS]
    [False, True, True]
    """
    return inputs in IN_CHANNELS


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


def with_vessels(nc: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The heads' inputs of a ``frame+residual+vessels`` model from their ``frame+residual`` inputs.

    Parameters
    ----------
    nc, c : (..., 2, H, W) arrays of the same shape
        :func:`with_residual` of the non-contrast patches and of their paired contrast patches.

    Returns
    -------
    nc3, c3 : (..., 3, H, W) float32 ndarrays
        ``nc`` followed by ``c``'s residual (the vessels under the non-contrast patch), and ``c``
        followed by zeros.

    Examples
    --------
    >>> nc = np.zeros((2, 2, 4, 4), np.float32); c = np.ones_like(nc); c[:, 1] = -0.5
    >>> nc3, c3 = with_vessels(nc, c)
    >>> nc3.shape, float(nc3[0, 2, 0, 0]), float(c3[0, 1, 0, 0]), float(c3[0, 2, 0, 0])
    ((2, 3, 4, 4), -0.5, -0.5, 0.0)
    """
    nc = np.asarray(nc, np.float32)
    c = np.asarray(c, np.float32)
    if nc.shape != c.shape or nc.ndim < 3 or nc.shape[-3] != 2:
        raise ValueError(f"expected two (..., 2, H, W) arrays of one shape, got {nc.shape} and {c.shape}")
    return (np.concatenate([nc, c[..., 1:2, :, :]], axis=-3),
            np.concatenate([c, np.zeros_like(c[..., :1, :, :])], axis=-3))


def head_inputs(nc: np.ndarray, c: np.ndarray, bg_nc, bg_c, inputs: str) -> tuple[np.ndarray, np.ndarray]:
    """The two heads' inputs for a model's ``inputs`` from normalised (..., 1, H, W) patches.

    ``bg_nc`` and ``bg_c`` are the same windows of the cine's background as seen by each patch (the
    same array, or each through its patch's intensity augmentation); unused for ``"frame"``.

    >>> x = np.full((1, 1, 2, 2), 0.5, np.float32); bg = np.full_like(x, 0.25)
    >>> [a.shape[1] for i in INPUTS for a in head_inputs(x, x, bg, bg, i)]
    [1, 1, 2, 2, 3, 3]
    """
    if inputs == FRAME_ONLY:
        return np.asarray(nc, np.float32), np.asarray(c, np.float32)
    if inputs not in IN_CHANNELS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    nc2, c2 = with_residual(nc, bg_nc), with_residual(c, bg_c)
    return with_vessels(nc2, c2) if inputs == FRAME_RESIDUAL_AND_VESSELS else (nc2, c2)


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
