"""Paper eq. 1 (the ECG-like signal) and the block means, in one pass over the cine.

De Rose et al., "Image frame synchronization": every frame's normalised
Euclidean distance to the first frame, ``S_k = ||f_0 - f_k|| / (||f_0|| + ||f_k||)``.
The block means (frames averaged over ``f x f`` pixel blocks) are what the
default method and the contrast onset work on; they are computed in the same
pass so that the cine is read from memory once.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import CacError

# Side of the block-averaged frames the default method works on.
SMALL_SIDE = 128


def check_frames(frames, min_side: int = 1) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise CacError(f"expected a cine of shape (frames, rows, columns), got shape {frames.shape}")
    if frames.shape[0] < 2:
        raise CacError("a cine needs at least 2 frames to be synchronized")
    if frames.shape[1] < min_side or frames.shape[2] < min_side:
        # A frame of 1 or 2 pixels is a corrupt header, not an image: nothing to compute.
        raise CacError(
            f"frames of {frames.shape[1]} x {frames.shape[2]} pixels are too small to synchronize "
            f"(at least {min_side} x {min_side})"
        )
    return frames


def ecg_like_signal(frames, reference: int = 0, *, chunk: int = 4) -> np.ndarray:
    """Paper eq. 1: normalised Euclidean distance of every frame to a reference frame.

    ``S_k = ||f_ref - f_k|| / (||f_ref|| + ||f_k||)`` with Frobenius norms over all
    pixels, for every frame ``k`` (``S_ref = 0``).  Dimensionless, in [0, 1].

    Parameters
    ----------
    frames : array (N, rows, cols)
        The cine, any numeric dtype.  Processed ``chunk`` frames at a time, so
        no float64 copy of the whole cine is made: 8-bit frames are squared and
        summed per image row in float32 (exact: integers below 2**24 for rows
        up to 258 pixels, within 1 ulp beyond) and the row sums accumulated in
        float64; other dtypes are processed in float64.
    reference : int
        Index of the reference frame (the paper uses the first frame).

    Returns
    -------
    ndarray (N,) float64.  A frame pair with both norms zero gives 0.

    Examples
    --------
    >>> frames = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 10, 30)])
    >>> ecg_like_signal(frames).tolist()  # |10 - 30| / (10 + 30) for the last frame
    [0.0, 0.0, 0.5]
    """
    frames = check_frames(frames)
    n, rows, cols = frames.shape
    if not -n <= reference < n:
        raise CacError(f"reference frame {reference} is outside the cine's {n} frames")
    return signal_and_small(frames, reference, chunk=chunk, small=False)[0]


def _pass_workers(n_values: int) -> int:
    """Threads for the pass over the cine: all cores for a large cine, one for a small one."""
    if n_values < 4_000_000:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def signal_and_small(frames: np.ndarray, reference: int, *, chunk: int = 4, small: bool = True):
    """Eq. 1 and (optionally) the block means in one pass over the cine, chunk by chunk.

    Each chunk is read from memory once and used for both while it is in
    cache.  Returns (signal, block means or None).
    """
    n, rows, cols = frames.shape
    # 8-bit: float32 squares and 512-term row sums are exact integers; else float64.
    work = np.float32 if frames.dtype.kind in "ui" and frames.dtype.itemsize == 1 else np.float64
    ref = frames[reference].astype(work)
    diff2 = np.empty(n)
    norm2 = np.empty(n)
    f = max(1, min(rows, cols) // SMALL_SIDE)
    means = np.empty((n, rows // f, cols // f), np.float32) if small else None

    def one_chunk(start: int) -> None:
        raw = frames[start : start + chunk]
        if small:
            means[start : start + raw.shape[0]] = _block_mean_core(raw, f)
        block = raw.astype(work)
        m = block.shape[0]
        rows_view = block.reshape(-1, cols)
        norm2[start : start + m] = np.einsum("ij,ij->i", rows_view, rows_view).reshape(m, rows).sum(1, dtype=np.float64)
        block -= ref
        diff2[start : start + m] = np.einsum("ij,ij->i", rows_view, rows_view).reshape(m, rows).sum(1, dtype=np.float64)

    starts = range(0, n, chunk)
    workers = _pass_workers(n * rows * cols)
    if workers > 1:
        # numpy releases the GIL in these loops: the chunks of one pass run on all cores.
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one_chunk, starts))
    else:
        for start in starts:
            one_chunk(start)
    denom = np.sqrt(norm2[reference]) + np.sqrt(norm2)
    out = np.zeros(n)
    ok = denom > 0
    out[ok] = np.sqrt(diff2[ok]) / denom[ok]
    return out, means


def block_mean(frames, side: int | None = None) -> np.ndarray:
    """Downsample frames by averaging ``f x f`` pixel blocks, ``f = min(rows, cols) // side``
    (``side`` defaults to :data:`SMALL_SIDE`).

    Rows/columns beyond a multiple of ``f`` are dropped.  Returns float32
    (N, rows // f, cols // f).  Integer frames are summed in integers (exact).
    """
    frames = check_frames(frames)
    return _block_mean_core(frames, max(1, min(frames.shape[1:]) // (side or SMALL_SIDE)))


def _block_mean_core(frames: np.ndarray, f: int) -> np.ndarray:
    n, rows, cols = frames.shape
    if f == 1:
        return frames.astype(np.float32)
    r, c = rows // f, cols // f
    view = frames[:, : r * f, : c * f]
    if frames.dtype.kind in "ui" and frames.dtype.itemsize == 1 and f * f * 255 < 2**16:
        acc = np.uint16 if frames.dtype.kind == "u" else np.int32
    elif frames.dtype.kind in "ui" and frames.dtype.itemsize <= 2:
        acc = np.int64 if frames.dtype.kind == "i" else np.uint32
    else:
        acc = np.float64
    # Strided adds: one light pass per block offset, no float copy of the cine.
    v = view.reshape(n, r, f, c * f)
    rsum = v[:, :, 0].astype(acc)
    for i in range(1, f):
        rsum += v[:, :, i]
    w = rsum.reshape(n, r, c, f)
    out = w[..., 0].copy()
    for i in range(1, f):
        out += w[..., i]
    return out.astype(np.float32) / np.float32(f * f)


def bin_mean(x: np.ndarray, b: int) -> np.ndarray:
    """Means of ``b x b`` blocks of float32 frames (N, H, W); rows/columns beyond a multiple of b dropped.

    Rows, then columns, by strided adds: several times faster than a reduction over reshaped axes.
    """
    h, w = x.shape[1] // b * b, x.shape[2] // b * b
    rows = x[:, 0:h:b, :w].copy()
    for i in range(1, b):
        rows += x[:, i:h:b, :w]
    out = rows[:, :, 0::b].copy()
    for j in range(1, b):
        out += rows[:, :, j::b]
    out /= np.float32(b * b)
    return out
