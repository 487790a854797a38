"""Frames to patches and back: the five overlapping 256x256 patches of the paper.

Layout
------
The network works on 512x512 frames cut into five overlapping 256x256 patches
(paper, Fig. 1): the four corners and the centre, with origins (top-left
pixel, ``(row, col)``)::

    0: (0, 0)      1: (0, 256)      2: (256, 0)      3: (256, 256)      4: (128, 128)

The corners tile the frame exactly; the centre patch covers the middle
quarter of the frame a second time, so a deposit cut by the corner borders is
seen whole once.  For a general ``rows x cols`` frame (both >= 256) the origins
are the corners and the centre ``((rows-256)//2, (cols-256)//2)``; the
workflow itself always resamples to 512x512 first (:func:`prepare_frame`).

Other frame sizes
-----------------
Frames that are not 512x512 (1024x1024 detectors, 768x768, or non-square) are
*resampled* to 512x512 (:func:`prepare_frame`, bilinear with anti-aliasing
when shrinking), and the pixel spacing is scaled accordingly, so the network
always sees the field of view of a whole frame at the resolution it was
trained on.  (Tiling a 1024 frame into 256 patches instead would show the
network structures at twice the size it learned.)  Non-square frames are
resampled anisotropically and the spacing records it.  The 512x512 result is
mapped back to the original grid with :func:`restore_mask`.

Intensities
-----------
:func:`normalize_frame` maps the 1st-99th percentile range of each frame to
0..1 and clips (``NORMALIZATION``), which removes the dependence on bit depth
(8/10/12/16 bits stored) and on exposure; training and inference use the
same function and the model metadata records its name and parameters.
"""

from __future__ import annotations

import numpy as np

from .errors import CacError

PATCH_SIZE = 256
FRAME_SIZE = 512
N_PATCHES = 5
STITCH_MODES = ("max", "mean")

NORMALIZATION = {"name": "percentile_clip", "low_percentile": 1.0, "high_percentile": 99.0, "range": [0.0, 1.0]}
"""How :func:`normalize_frame` maps intensities; stored in the model metadata."""


def patch_origins(rows: int = FRAME_SIZE, cols: int = FRAME_SIZE) -> list[tuple[int, int]]:
    """Top-left ``(row, col)`` of the five patches of a ``rows x cols`` frame.

    Order: top-left, top-right, bottom-left, bottom-right corner, centre.  For
    512x512: (0,0), (0,256), (256,0), (256,256), (128,128).

    Parameters
    ----------
    rows, cols : int
        Frame size, at least 256 each (the network's grid is 512x512).

    Returns
    -------
    list of (int, int)
        Five top-left corners of 256x256 patches that together cover the frame.

    Examples
    --------
    >>> patch_origins(512, 512)
    [(0, 0), (0, 256), (256, 0), (256, 256), (128, 128)]
    """
    rows, cols = int(rows), int(cols)
    if rows < PATCH_SIZE or cols < PATCH_SIZE:
        raise ValueError(
            f"frame of {rows}x{cols} pixels is smaller than the {PATCH_SIZE}x{PATCH_SIZE} patches; "
            "resample it to 512x512 first (patches.prepare_frame)"
        )
    r1, c1 = rows - PATCH_SIZE, cols - PATCH_SIZE
    return [(0, 0), (0, c1), (r1, 0), (r1, c1), (r1 // 2, c1 // 2)]


def extract_patches(frames: np.ndarray) -> np.ndarray:
    """Cut a frame ``(H, W)`` or a stack ``(N, H, W)`` into its five patches.

    Returns an array of shape ``(5, 256, 256)`` or ``(N, 5, 256, 256)`` (a
    copy, same dtype), patch ``p`` taken at ``patch_origins(H, W)[p]``.

    Examples
    --------
    >>> frame = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    >>> patches = extract_patches(frame)
    >>> patches.shape
    (5, 256, 256)
    >>> bool((patches[4] == frame[128:384, 128:384]).all())  # the centre patch
    True
    """
    frames = np.asarray(frames)
    if frames.ndim not in (2, 3):
        raise ValueError(f"expected a frame (rows, cols) or frames (n, rows, cols), got shape {frames.shape}")
    rows, cols = frames.shape[-2:]
    out = np.empty(frames.shape[:-2] + (N_PATCHES, PATCH_SIZE, PATCH_SIZE), dtype=frames.dtype)
    for p, (r, c) in enumerate(patch_origins(rows, cols)):
        out[..., p, :, :] = frames[..., r : r + PATCH_SIZE, c : c + PATCH_SIZE]
    return out


def stitch(patch_maps: np.ndarray, rows: int = FRAME_SIZE, cols: int = FRAME_SIZE, mode: str = "max") -> np.ndarray:
    """Put five 256x256 patch maps back on the ``rows x cols`` frame grid.

    Where patches overlap (the centre patch over the corners) ``mode="max"``
    (default) keeps the largest value, so a ROI found in any one patch
    survives - the classifier gating zeroes whole patches, and averaging
    would halve a detection that only the centre patch saw; ``mode="mean"``
    averages the overlapping values.  Pixels covered by no patch (only for
    frames larger than 512) are 0.  Accepts ``(5, 256, 256)`` or
    ``(5, 1, 256, 256)``; returns ``(rows, cols)`` float32 (bool input stays
    bool in max mode).

    Examples
    --------
    >>> maps = np.zeros((5, 256, 256), np.float32)
    >>> maps[4] = 0.8  # the centre patch alone sees something
    >>> frame = stitch(maps)
    >>> frame.shape, float(frame[256, 256]), float(frame[0, 0])
    ((512, 512), 0.800000011920929, 0.0)
    """
    maps = np.asarray(patch_maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.shape != (N_PATCHES, PATCH_SIZE, PATCH_SIZE):
        raise ValueError(f"expected 5 patch maps of 256x256, got shape {maps.shape}")
    if mode not in STITCH_MODES:
        raise ValueError(f"unknown stitch mode {mode!r}; choose 'max' or 'mean'")
    origins = patch_origins(rows, cols)
    if maps.dtype == bool and mode == "max":
        out = np.zeros((rows, cols), dtype=bool)
        for m, (r, c) in zip(maps, origins):
            out[r : r + PATCH_SIZE, c : c + PATCH_SIZE] |= m
        return out
    maps = maps.astype(np.float32, copy=False)
    if mode == "max":
        out = np.full((rows, cols), -np.inf, dtype=np.float32)
        for m, (r, c) in zip(maps, origins):
            view = out[r : r + PATCH_SIZE, c : c + PATCH_SIZE]
            np.maximum(view, m, out=view)
        out[np.isneginf(out)] = 0.0
        return out
    total = np.zeros((rows, cols), dtype=np.float32)
    count = np.zeros((rows, cols), dtype=np.float32)
    for m, (r, c) in zip(maps, origins):
        total[r : r + PATCH_SIZE, c : c + PATCH_SIZE] += m
        count[r : r + PATCH_SIZE, c : c + PATCH_SIZE] += 1.0
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def _uint_percentiles(arr: np.ndarray, percentiles) -> list[float]:
    """``np.percentile(arr, percentiles)`` (linear method) of an unsigned 8/16-bit array, from its histogram.

    The order statistics come from the cumulative histogram instead of a partial sort (about ten
    times faster on a 512x512 frame: it runs for every frame analysed); the interpolation is
    numpy's own (``_lerp``), so the result is the same to the last bit (tested).
    """
    cum = np.cumsum(np.bincount(arr.ravel()))
    n = arr.size
    out = []
    for q in percentiles:
        index = q / 100 * (n - 1)
        below = int(np.floor(index))
        t = index - below
        a = float(np.searchsorted(cum, below, side="right"))
        b = float(np.searchsorted(cum, min(below + 1, n - 1), side="right"))
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def normalize_frame(frame: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0) -> np.ndarray:
    """Robust intensity normalisation of one frame (or the last two axes of a stack) to float32 0..1.

    The ``low_percentile``-th and ``high_percentile``-th percentiles of the
    frame's pixel values map to 0 and 1; values beyond are clipped.  It does
    not depend on the bit depth or the exposure (window) of the acquisition.
    A frame with no contrast (p_high == p_low, e.g. a blank frame) gives
    zeros.  Stacks ``(N, H, W)`` are normalised frame by frame.
    """
    arr = np.asarray(frame)
    if arr.ndim == 3:
        return np.stack([normalize_frame(f, low_percentile, high_percentile) for f in arr])
    if arr.ndim != 2:
        raise ValueError(f"expected a frame (rows, cols), got shape {arr.shape}")
    if arr.dtype in (np.uint8, np.uint16) and arr.size:
        lo, hi = _uint_percentiles(arr, (low_percentile, high_percentile))
        arr = arr.astype(np.float32)
    else:
        arr = arr.astype(np.float32, copy=False)
        lo, hi = np.percentile(arr, [low_percentile, high_percentile])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (arr - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def prepare_frame(
    frame: np.ndarray, spacing_mm: tuple[float, float] | None = None
) -> tuple[np.ndarray, tuple[float, float] | None, tuple[float, float]]:
    """Bring a frame of any size to the network's 512x512 grid.

    Returns ``(frame512, spacing512, scale)``: ``frame512`` is the frame
    itself when already 512x512 (same dtype), otherwise a float32 bilinear
    resampling (anti-aliased when shrinking) onto 512x512;
    ``scale = (rows / 512, cols / 512)`` is the number of original pixels per
    512-grid pixel along (row, col); ``spacing512 = spacing_mm * scale`` in
    mm (None when the spacing is unknown).  Pixel centres are aligned as in
    :func:`skimage.transform.resize`.
    """
    arr = np.asarray(frame)
    if arr.ndim != 2:
        raise ValueError(f"expected a frame (rows, cols), got shape {arr.shape}")
    rows, cols = arr.shape
    if rows < 16 or cols < 16:
        raise CacError(f"frame of {rows}x{cols} pixels is too small for CAC identification")
    scale = (rows / FRAME_SIZE, cols / FRAME_SIZE)
    spacing512 = None if spacing_mm is None else (float(spacing_mm[0]) * scale[0], float(spacing_mm[1]) * scale[1])
    if (rows, cols) == (FRAME_SIZE, FRAME_SIZE):
        return arr, spacing512, scale
    from skimage.transform import resize

    shrinking = rows > FRAME_SIZE or cols > FRAME_SIZE
    out = resize(
        arr.astype(np.float32, copy=False),
        (FRAME_SIZE, FRAME_SIZE),
        order=1,
        mode="edge",
        anti_aliasing=shrinking,
        preserve_range=True,
    ).astype(np.float32)
    return out, spacing512, scale


def restore_map(map512: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resample a 512x512 float map back to ``rows x cols`` (bilinear; identity at 512x512)."""
    arr = np.asarray(map512, dtype=np.float32)
    if arr.shape != (FRAME_SIZE, FRAME_SIZE):
        raise ValueError(f"expected a 512x512 map, got shape {arr.shape}")
    if (rows, cols) == (FRAME_SIZE, FRAME_SIZE):
        return arr
    from skimage.transform import resize

    return resize(arr, (rows, cols), order=1, mode="edge", anti_aliasing=False, preserve_range=True).astype(
        np.float32
    )


def restore_mask(mask512: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Map a 512x512 boolean mask back to the original ``rows x cols`` grid (inverse of :func:`prepare_frame`).

    The mask is resampled as a 0/1 float map (bilinear) and thresholded at
    0.5, which keeps areas (in mm^2) and gives smooth outlines when
    enlarging (nearest neighbour would give 2x2 staircases on 1024 frames).
    """
    mask = np.asarray(mask512).astype(bool)
    if (rows, cols) == mask.shape:
        return mask.copy()
    return restore_map(mask.astype(np.float32), rows, cols) >= 0.5
