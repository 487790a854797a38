"""Frame features and their inner products, computed on demand: memory linear in the frame count.

The default method compares frames through inner products of their features
(block means, z-scored).  Normalisation, temporal high-pass, frame
differences and short clips are linear in the frames, so they are applied to
the (frames x pixels) features themselves; the inner products are then taken
only where they are needed: between frames up to a longest lag apart
(:func:`lag_sums`), or in the rows of a few reference frames
(:class:`LazyGram`).  No frames x frames matrix is ever formed, so a long
cine costs memory in proportion to its length.
"""

from __future__ import annotations

import numpy as np

# Frames per block of rows in the blocked products: large enough for BLAS, small enough that a
# block (BLOCK x (BLOCK + longest lag)) stays far below the features themselves.
BLOCK = 64


def normalise(flat: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-frame z-score of (N, P) pixels over ``mask`` (all when None): removes exposure offset and gain."""
    x = flat if mask is None else flat[:, mask.ravel()]
    x = x.astype(np.float32, copy=False)
    # float32 reductions along rows use pairwise summation: within 1e-7 of float64, 5x faster
    mu = x.mean(1, keepdims=True)
    out = x - mu
    # The variance from the centred values (no float32 cancellation), then one in-place scale.
    sd = np.sqrt(np.einsum("ij,ij->i", out, out)[:, None] / np.float32(x.shape[1]))
    sd[sd == 0] = 1
    out *= 1 / sd
    return out


def row_norms(y: np.ndarray) -> np.ndarray:
    """Squared norm of every row (frame), float64."""
    return np.einsum("ij,ij->i", y, y).astype(np.float64)


def pair_products(y: np.ndarray, a, b) -> np.ndarray:
    """``<y[a[k]], y[b[k]]>`` for every k (float64), a block of pairs at a time."""
    a, b = np.asarray(a, int), np.asarray(b, int)
    out = np.empty(a.size)
    for s in range(0, a.size, BLOCK):
        out[s:s + BLOCK] = np.einsum("ij,ij->i", y[a[s:s + BLOCK]], y[b[s:s + BLOCK]])
    return out


def lag_sums(y: np.ndarray, times, max_lag: int) -> np.ndarray:
    """Sum of the inner products of all frame pairs ``L`` frames apart, for every lag L <= ``max_lag``.

    ``times`` are the frames' integer times (increasing, gaps allowed); a pair
    counts when its time difference is exactly L.  Works a block of frames at a
    time against the frames up to ``max_lag`` later, so memory is
    BLOCK x (BLOCK + max_lag) however long the cine.  Returns s[0..max_lag].

    Examples
    --------
    >>> y = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> lag_sums(y, [0, 1, 2], 2).tolist()
    [7.0, 3.0, 0.0]
    """
    t = np.asarray(times).astype(int)
    out = np.zeros(max_lag + 1)
    for s in range(0, t.size, BLOCK):
        e = min(s + BLOCK, t.size)
        hi = int(np.searchsorted(t, t[e - 1] + max_lag, side="right"))
        g = (y[s:e] @ y[s:hi].T).astype(np.float64)
        lag = t[None, s:hi] - t[s:e, None]
        keep = (lag >= 0) & (lag <= max_lag)
        out += np.bincount(lag[keep], weights=g[keep], minlength=max_lag + 1)
    return out


def _one_cycle_rows(t: np.ndarray, period: float, rows: np.ndarray):
    """Rows ``rows`` of the one-cycle mean operator, restricted to the columns they touch.

    Returns (weights (len(rows), hi - lo), lo): the operator's values in
    columns lo..hi-1, every other column being 0.  See :func:`one_cycle_mean`.
    """
    half = period / 2
    first, last = t[0] - 0.5 + half, t[-1] + 0.5 - half
    tr = t[rows]
    # Every window these rows use: centred on the frame (clipped to the ends) or, for the
    # extrapolated rows, at first/first+half and last-half/last.
    centres = np.concatenate([np.clip(tr, first, last), [first, first + half] if tr[0] < first else [],
                              [last - half, last] if tr[-1] > last else []])
    lo = int(np.searchsorted(t, centres.min() - half - 0.5, side="left"))
    hi = int(np.searchsorted(t, centres.max() + half + 0.5, side="right"))
    tc = t[lo:hi]

    def window(centre):
        w = np.clip(np.minimum(centre + half, tc + 0.5) - np.maximum(centre - half, tc - 0.5), 0, None)
        return w / w.sum()

    centre = np.clip(tr, first, last)[:, None]
    out = np.clip(np.minimum(centre + half, tc[None, :] + 0.5) - np.maximum(centre - half, tc[None, :] - 0.5), 0,
                  None)
    out /= out.sum(1, keepdims=True)
    before, after = np.nonzero(tr < first)[0], np.nonzero(tr > last)[0]
    if before.size:
        a0, a1 = window(first), window(first + half)
        for k in before:
            out[k] = a0 + (tr[k] - first) / half * (a1 - a0)
    if after.size:
        b0, b1 = window(last), window(last - half)
        for k in after:
            out[k] = b0 + (last - tr[k]) / half * (b1 - b0)
    return out, lo


def one_cycle_mean(times, period: float, values: np.ndarray) -> np.ndarray:
    """The slow trend of ``values`` (one row per frame) at every frame, free of the heart beat.

    In the interior, the mean of the values over exactly one period centred on
    the frame (fractional end weights), so the cardiac component cancels and
    the slow trend (respiration, contrast, exposure) is left.  Within half a
    period of the part's ends no centred window fits; there the trend is
    extrapolated linearly from the first (last) two one-period means half a
    period apart, which are also free of the beat.  Parts shorter than 1.5
    periods get their mean.  The operator is applied a block of frames at a
    time (each row touches about one period of frames), never formed whole.

    Examples
    --------
    A linear trend is kept, a beat of exactly the period cancels:

    >>> k = np.arange(40.0)
    >>> y = 0.1 * k + np.sin(2 * np.pi * k / 8)
    >>> bool(np.allclose(one_cycle_mean(k, 8.0, y), 0.1 * k))
    True
    """
    t = np.asarray(times, float)
    v = np.asarray(values)
    if t[-1] - t[0] + 1 <= 1.5 * period:
        return np.broadcast_to(v.mean(0, dtype=np.float64), v.shape).astype(v.dtype if v.dtype == np.float32
                                                                             else np.float64)
    # float32 features stay float32 (a float64 product took 4x longer; the trend is a mean of a
    # few dozen frames, exact to about 1e-7); anything else is averaged in float64.
    dt = np.float32 if v.dtype == np.float32 else np.float64
    v = v.astype(dt, copy=False)
    out = np.empty(v.shape, dt)
    # Blocks of about a period: each row touches one period of frames, so a block's columns
    # are mostly its own rows' (the dense block product wastes little).
    block = max(16, int(period))
    for s in range(0, t.size, block):
        rows = np.arange(s, min(s + block, t.size))
        w, lo = _one_cycle_rows(t, period, rows)
        out[rows] = w.astype(dt) @ v[lo:lo + w.shape[1]]
    return out


def highpass(y: np.ndarray, times, period: float) -> np.ndarray:
    """Frames minus their one-period moving average (slow trends removed), float32."""
    y = y.astype(np.float32, copy=False)
    trend = one_cycle_mean(times, period, y)
    return np.subtract(y, trend, out=trend)


def velocity(y: np.ndarray, times):
    """Times and features of frame-to-frame differences (consecutive frames only)."""
    t = np.asarray(times)
    step = np.diff(t) == 1
    if step.all():  # no gaps: slices, no gathered copies
        return t[:-1], y[1:] - y[:-1]
    a = np.nonzero(step)[0]
    return t[a], y[a + 1] - y[a]


def step_energy(y: np.ndarray) -> np.ndarray:
    """``|y[k + 1] - y[k]|^2`` for every k (float64), a block of frames at a time."""
    out = np.empty(max(y.shape[0] - 1, 0))
    for s in range(0, out.size, BLOCK):
        e = min(s + BLOCK, out.size)
        d = y[s + 1:e + 1] - y[s:e]
        out[s:e] = np.einsum("ij,ij->i", d, d)
    return out


def clip_maps(times, half: int) -> list[np.ndarray]:
    """Index maps of short clips (frames t-half, t, t+half): one array of row indices per clip member.

    A clip holds the direction of motion as well as the state, so contraction
    and relaxation through the same shape are told apart.  Missing neighbours
    (part ends, blank frames) are replaced by the frame itself.
    """
    pos = {int(t): i for i, t in enumerate(times)}
    return [np.array([pos.get(int(t) + o, i) for i, t in enumerate(times)]) for o in (-half, 0, half)]


class LazyGram:
    """Inner products of frame features (optionally of clips of frames), computed when asked.

    Frame ``i``'s feature vector is the concatenation of ``y[m[i]]`` over the
    index maps ``maps`` (one identity map by default: the frames themselves;
    :func:`clip_maps` for clips).  Rows, single entries and distances are
    computed from ``y`` (N x P), so memory stays linear in N.  Indexing
    ``lazy[i, js]`` gives squared distances, as ``pair_by_phase`` expects of
    its ``frame_distance``; ``frames`` (optional) are the frame numbers of
    the rows of ``y``, so indices may be frame numbers.
    """

    def __init__(self, y: np.ndarray, maps=None, frames=None):
        self.y = y
        self.maps = np.array([np.arange(y.shape[0])] if maps is None else [np.asarray(m) for m in maps])
        norms = row_norms(y)
        self.diag = norms[self.maps].sum(0)
        self.index = None
        if frames is not None:  # frame number -> row of y
            frames = np.asarray(frames, int)
            self.index = np.full(int(frames.max()) + 1, -1)
            self.index[frames] = np.arange(frames.size)

    def _rows_of(self, frames_):
        idx = np.atleast_1d(np.asarray(frames_, int))
        return idx if self.index is None else self.index[idx]

    def rows(self, ii) -> np.ndarray:
        """Inner products of rows ``ii`` of ``y`` with every row: (len(ii), N), float64."""
        ii = np.atleast_1d(np.asarray(ii, int))
        out = np.zeros((ii.size, self.y.shape[0]))
        for m in self.maps:
            out += (self.y[m[ii]] @ self.y.T).astype(np.float64)[:, m]
        return out

    def products(self, ii, jj) -> np.ndarray:
        """Inner products of the row pairs ``(ii[k], jj[k])``, float64."""
        ii, jj = np.asarray(ii, int), np.asarray(jj, int)
        return sum(pair_products(self.y, m[ii], m[jj]) for m in self.maps)

    def __getitem__(self, key) -> np.ndarray:
        """Squared distances of frame ``i`` to frames ``js`` (frame numbers; ``i`` may be an array
        of the same length as ``js``: pairwise).

        From the differences themselves, not from norms and products: the
        float32 products of two nearly equal frames cancel to a few digits,
        and these distances break ties between frames of equal phase.
        """
        i, js = key
        jj = self._rows_of(js)
        ii = np.broadcast_to(self._rows_of(i), jj.shape)
        out = np.empty(jj.size)
        for s in range(0, jj.size, BLOCK):
            diff = self.y[self.maps[:, ii[s:s + BLOCK]]] - self.y[self.maps[:, jj[s:s + BLOCK]]]
            out[s:s + BLOCK] = np.square(diff).sum(axis=(0, 2), dtype=np.float64)
        return out

    def nearest(self, queries, candidates) -> np.ndarray:
        """For every query row, the candidate row of smallest distance (the first on ties).

        In float64 (norms too): in float32 two nearly equal frames cancel to a few digits.
        A block of queries at a time against all candidates: memory linear in the frames.
        """
        q, c = np.asarray(queries, int), np.asarray(candidates, int)
        yc = [self.y[m[c]].astype(np.float64) for m in self.maps]
        nc = sum(np.einsum("ij,ij->i", v, v) for v in yc)
        out = np.empty(q.size, int)
        for s in range(0, q.size, BLOCK):
            d = np.broadcast_to(nc, (min(BLOCK, q.size - s), c.size)).copy()
            for m, v in zip(self.maps, yc):
                yq = self.y[m[q[s:s + BLOCK]]].astype(np.float64)
                d += np.einsum("ij,ij->i", yq, yq)[:, None] - 2 * (yq @ v.T)
            out[s:s + BLOCK] = c[np.argmin(d, axis=1)]
        return out
