"""ROIs on structures that do not move with the heart (not in the paper).

Coronary calcium lies on the vessel wall and moves with the heart: over a heartbeat it leaves the
place it had in any one frame.  In a run where the heart is seen to beat, a dark spot that stays on
the same pixels in every frame -- a detector or image-intensifier defect, a marker on the collimator
-- cannot be coronary calcium, whatever the classifier says.  On the real right coronary
run of ``../shared/data`` the shipped model puts an ROI on two such spots in every non-contrast
frame (docs/identify.md, "ROIs on structures that do not move").

The test works on a blob response, a difference of Gaussians in which dark spots are positive
(:func:`blob_response`).  For each spot of an ROI component of an analysed frame (a local maximum
of at least :data:`MIN_DEPTH` times the run's noise and :data:`SPOT_FRACTION` of the
component's strongest) it asks how much of the spot's response
remains at the same pixels in the run's weaker frames: the :data:`PERCENTILE`-th percentile over
its non-blank frames (:func:`static_scores`).  Calcium that moves is away from its pixels for much
of the beat, so that percentile is at the background's level (share near 0 or below); a spot that
never moves keeps most of its response (share near 1).  A component is removed when none of its
spots moves (loses more than half its response, and more than the noise allows) and its strongest
spot keeps at least :data:`STATIC_SCORE` of it (:func:`remove_static`), so an ROI that holds a
static spot and a moving one stays.  Components without a clear spot are kept: nothing to judge;
so are components larger than an ROI about one spot (:data:`MAX_COMPONENT_PX`).
A run in which synchronization found no heartbeat of several frames (a static phantom, a generator
without motion, an ECG-triggered run of one frame a beat: nothing shows that calcium would have
moved), or shorter than its heartbeat, is not judged either (:func:`filter_cine`).

Examples
--------
A spot that stays and a deposit that moves, over 20 frames:

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> frames = 0.5 + 0.01 * rng.standard_normal((20, 64, 64))
>>> frames[:, 10:13, 10:13] -= 0.2                     # static: same pixels in every frame
>>> for k in range(20):
...     c = 20 + int(12 * np.sin(2 * np.pi * k / 10))   # moves 24 px over a 10-frame beat
...     frames[k, 40:43, c:c + 3] -= 0.2
>>> roi = np.zeros((20, 64, 64), bool)
>>> roi[0, 6:17, 6:17] = True                          # an ROI on the static spot
>>> roi[0, 36:47, 16:27] = True                        # an ROI on the deposit (frame 0: columns 20-22)
>>> kept, removed = remove_static(roi, [0], frames)
>>> bool(kept[0, 10, 10]), bool(kept[0, 41, 21]), removed
(False, True, {0: 1})
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Difference-of-Gaussians scales (pixels of the network's 512-pixel grid): a spot of a few pixels
#: against the background within about 4 pixels; scaled with the frame size.
BLOB_SIGMAS_PX = (1.0, 4.0)
#: The frame percentile whose response a static spot keeps (a moving deposit is away from its
#: pixels in far more than this share of a beat's frames; a static spot hidden by a passing vessel
#: in a few frames still counts as static).  5 rather than 10: a deposit of the second generator that
#: moves only 2-3 px kept 0.52-0.55 of its response at the 10th percentile with 1 px of jitter
#: allowed, 0.16-0.19 at the 5th with none, while the real run's detector marks keep 0.57-1.0.
PERCENTILE = 5.0
#: Share of its strongest spot's response that a component must keep at that percentile to be static.
STATIC_SCORE = 0.5
#: A response under this many times the run's noise is no spot: a component without one is not judged.
MIN_DEPTH = 3.0
#: A component's spots are its local maxima of at least this share of its strongest one (and
#: MIN_DEPTH): what the ROI is about.  Beside the real run's detector marks (18-22 times the noise)
#: lie maxima of 3-7 times the noise, some of which lose their response through the run (lung
#: markings, noise); at a quarter of the strongest they kept half of those ROIs on the marks.
SPOT_FRACTION = 0.5
#: Components larger than this (pixels of the 512-pixel grid, about 3 % of a frame) are not an ROI about
#: one spot, and are kept whatever spots they hold: an ROI across the heart that holds a detector mark
#: is not the mark's.  The shipped model's ROIs on the real run's marks cover 1,800-2,200 px.
MAX_COMPONENT_PX = 8000
#: Maxima this close to the unexposed border (in outer widths) are the collimator edge's response, not
#: spots of the image.
EDGE_WIDTHS = 2.0
#: The fewest frames a heartbeat must span for a run to be judged: several frames a beat.  A run of one
#: frame a beat (ECG-triggered) shows calcium on the same pixels in every frame, as a static spot.
MIN_FRAMES_PER_BEAT = 3.0
#: Without a synchronization (a caller of :func:`filter_cine` that has none): the seconds of frames a run
#: needs (a beat at 60 bpm), taken at most MAX_FRAME_TIME_MS apart.
MIN_SECONDS = 1.0
MAX_FRAME_TIME_MS = 200.0
#: Pixels a static spot may shift between frames: none (detector marks and defects are fixed to the
#: detector's pixels; allowing 1 px let slowly moving calcium count as static).
JITTER_PX = 0
#: At most this many frames, evenly spaced over the run, make the percentile (the time it takes grows
#: with the frames; a moving deposit is away from its pixels in as large a share of any even sample).
MAX_FRAMES = 48


def blob_response(frames: np.ndarray, sigmas=BLOB_SIGMAS_PX) -> np.ndarray:
    """Difference of Gaussians of each frame: dark spots positive, flat background near 0.

    Parameters
    ----------
    frames : (rows, cols) or (n, rows, cols) array
        Frames in the cine's display polarity (MONOCHROME2: dense is dark).
    sigmas : (float, float)
        Inner and outer Gaussian widths in pixels.

    Returns
    -------
    float32 ndarray of the same shape

    Examples
    --------
    >>> f = np.ones((41, 41), np.float32)
    >>> f[20, 20] = 0.0
    >>> r = blob_response(f)
    >>> bool(r[20, 20] > 0.1), bool(abs(r[0, 0]) < 1e-6)
    (True, True)
    """
    arr = np.asarray(frames, np.float32)
    inner, outer = (float(s) for s in sigmas)
    spatial = (0,) * (arr.ndim - 2)
    return ndi.gaussian_filter(arr, spatial + (outer, outer)) - ndi.gaussian_filter(arr, spatial + (inner, inner))


def noise_level(response: np.ndarray) -> float:
    """Robust spread of a frame's blob response (median absolute deviation, as a standard deviation).

    >>> rng = np.random.default_rng(1)
    >>> round(noise_level(rng.standard_normal((200, 200))), 1)
    1.0
    """
    r = np.asarray(response, float).ravel()
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def covers_a_beat(n_frames: int, period_frames: float | None = None, frame_time_ms: float | None = None) -> bool:
    """Whether calcium has moved during a run of ``n_frames``: it lasts a heartbeat, seen at several frames a beat.

    The heartbeat's ``period_frames`` (at least :data:`MIN_FRAMES_PER_BEAT`) if given; else, for callers
    without a synchronization, :data:`MIN_SECONDS` of frames taken at most :data:`MAX_FRAME_TIME_MS` apart.

    >>> covers_a_beat(17, period_frames=14.2), covers_a_beat(12, period_frames=14.2), covers_a_beat(9, 1.0)
    (True, False, False)
    >>> covers_a_beat(16, frame_time_ms=66.7), covers_a_beat(16, frame_time_ms=800.0), covers_a_beat(16)
    (True, False, False)
    """
    if period_frames is not None:
        return bool(np.isfinite(period_frames) and period_frames >= MIN_FRAMES_PER_BEAT and n_frames >= period_frames)
    if frame_time_ms is not None and np.isfinite(frame_time_ms) and 0 < frame_time_ms <= MAX_FRAME_TIME_MS:
        return n_frames * float(frame_time_ms) >= 1000.0 * MIN_SECONDS
    return False


class PercentileMap:
    """The :data:`PERCENTILE`-th frame percentile of the run's blob response, computed where asked.

    ROIs cover a small part of the frame and recur at about the same place from frame to frame, so
    the map is filled in tiles of ``tile`` pixels on first use and kept for the whole run.

    Parameters
    ----------
    frames : (n, rows, cols) array
        The whole run.
    usable : sequence of int, optional
        Frames the percentile is taken over (default all; leave out blank frames).
    sigmas : (float, float)
        :func:`blob_response` scales in pixels.
    tile : int
        Tile size in pixels.

    Examples
    --------
    >>> frames = np.ones((12, 100, 100), np.float32)
    >>> frames[:, 50, 50] = 0.0                 # a spot in every frame
    >>> pm = PercentileMap(frames)
    >>> bool(pm.region(49, 52, 49, 52)[1, 1] > 0.1), int(pm.filled.sum())
    (True, 1)
    """

    def __init__(self, frames: np.ndarray, usable=None, sigmas=BLOB_SIGMAS_PX, tile: int = 64):
        self.frames = np.asarray(frames)
        self.usable = np.arange(len(self.frames)) if usable is None else np.asarray(list(usable), int)
        self.sigmas, self.tile = tuple(sigmas), int(tile)
        self.margin = int(np.ceil(3 * max(self.sigmas))) + JITTER_PX  # room for the Gaussians and the jitter
        rows, cols = self.frames.shape[1:]
        self.low = np.zeros((rows, cols), np.float32)
        self.filled = np.zeros((-(-rows // self.tile), -(-cols // self.tile)), bool)

    def region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """The map on rows ``r0:r1`` and columns ``c0:c1`` (clipped to the frame)."""
        rows, cols = self.low.shape
        r0, r1, c0, c1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
        t = self.tile
        for i in range(r0 // t, (r1 - 1) // t + 1):
            for j in range(c0 // t, (c1 - 1) // t + 1):
                if not self.filled[i, j]:
                    self._fill(i, j)
        return self.low[r0:r1, c0:c1]

    def _fill(self, i: int, j: int) -> None:
        t, m = self.tile, self.margin
        rows, cols = self.low.shape
        a0, a1, b0, b1 = i * t, min((i + 1) * t, rows), j * t, min((j + 1) * t, cols)
        r0, r1, c0, c1 = max(a0 - m, 0), min(a1 + m, rows), max(b0 - m, 0), min(b1 + m, cols)
        stack = blob_response(self.frames[self.usable, r0:r1, c0:c1], self.sigmas)
        if JITTER_PX:
            stack = ndi.maximum_filter(stack, size=(1, 2 * JITTER_PX + 1, 2 * JITTER_PX + 1))
        low = np.percentile(stack, PERCENTILE, axis=0)
        self.low[a0:a1, b0:b1] = low[a0 - r0:a1 - r0, b0 - c0:b1 - c0]
        self.filled[i, j] = True


def field_interior(field, sigmas=BLOB_SIGMAS_PX) -> np.ndarray:
    """Where spots may lie: the exposed field less :data:`EDGE_WIDTHS` outer widths along its border.

    >>> field = np.zeros((40, 40), bool); field[5:35, 5:35] = True
    >>> interior = field_interior(field)
    >>> int(interior.sum()), bool(interior[20, 20]), bool(interior[8, 20])
    (196, True, False)
    """
    return ndi.binary_erosion(np.asarray(field, bool), iterations=int(np.ceil(EDGE_WIDTHS * max(sigmas))),
                              border_value=1)


def static_scores(mask: np.ndarray, frame: int, frames: np.ndarray, usable=None, *, sigmas=BLOB_SIGMAS_PX,
                  noise: float | None = None, percentile_map: PercentileMap | None = None, interior=None):
    """Each ROI component of one frame, with what its spots keep through the run.

    Parameters
    ----------
    mask : (rows, cols) bool
        The frame's ROI.
    frame : int
        Index of that frame in ``frames``.
    frames, usable, sigmas
        The whole run, the frames the percentile is taken over, the scales: as :class:`PercentileMap`.
    noise : float, optional
        The run's response noise (default: :func:`noise_level` of this frame's whole response).
    percentile_map : PercentileMap, optional
        The run's map, to share between frames (default: a new one from ``frames``, ``usable``, ``sigmas``).
    interior : (rows, cols) bool, optional
        Where spots may lie (:func:`field_interior` of the exposed field; default everywhere).

    Returns
    -------
    labels : (rows, cols) int ndarray
        The components (``scipy.ndimage.label``).
    scores : dict
        Component label -> None for a component without a clear spot or larger than
        :data:`MAX_COMPONENT_PX` (scaled to the frame size), else a dict: ``spots``, its local
        maxima of the response of at least :data:`MIN_DEPTH` times the noise and :data:`SPOT_FRACTION`
        of the strongest; ``share``, the share of
        its strongest spot's response kept at the :data:`PERCENTILE`-th frame percentile; ``moving``,
        the spots that lose more than half their response there, and at least :data:`MIN_DEPTH` times
        the noise.
    """
    labels, n = ndi.label(np.asarray(mask, bool))
    if n == 0:
        return labels, {}
    frames = np.asarray(frames)
    rows, cols = frames.shape[1:]
    pm = percentile_map if percentile_map is not None else PercentileMap(frames, usable, sigmas)
    if noise is None:
        noise = noise_level(blob_response(frames[frame], sigmas))
    # Spots: local maxima of the response at least MIN_DEPTH times the noise, at most one per outer width.
    spacing = 2 * int(round(max(sigmas))) + 1
    # The response is computed on the component's box only, with room for the Gaussians (scipy's radius,
    # 4 widths) and the maximum filter, so that it equals the whole frame's there.
    margin = int(4 * max(sigmas) + 0.5) + spacing
    scores = {}
    max_px = MAX_COMPONENT_PX * max(rows, cols, 512) ** 2 / 512.0 ** 2
    sizes = ndi.sum_labels(np.ones(labels.shape), labels, index=np.arange(1, n + 1))
    for c, box in enumerate(ndi.find_objects(labels), start=1):
        if sizes[c - 1] > max_px:
            scores[c] = None
            continue
        r0, r1 = max(box[0].start - margin, 0), min(box[0].stop + margin, rows)
        c0, c1 = max(box[1].start - margin, 0), min(box[1].stop + margin, cols)
        own = blob_response(frames[frame, r0:r1, c0:c1], sigmas)
        candidates = (labels[r0:r1, c0:c1] == c) & (own >= MIN_DEPTH * noise) & (own > 0)
        candidates &= own == ndi.maximum_filter(own, size=spacing)
        if interior is not None:
            candidates &= np.asarray(interior, bool)[r0:r1, c0:c1]
        spots = np.argwhere(candidates)
        if len(spots) == 0:
            scores[c] = None
            continue
        values = own[spots[:, 0], spots[:, 1]]
        spots = spots[values >= SPOT_FRACTION * values.max()]
        # Each spot's response and what it keeps at the percentile (3x3 means).
        kept, moving = [], 0
        for r, q in spots:
            own3 = float(own[max(r - 1, 0):r + 2, max(q - 1, 0):q + 2].mean())
            if own3 <= 0:  # a one-pixel maximum among darker neighbours: no spot
                continue
            low3 = float(pm.region(r + r0 - 1, r + r0 + 2, q + c0 - 1, q + c0 + 2).mean())
            kept.append((own3, low3 / own3))
            # A spot moves if it loses more than half its response, and clearly more than the noise.
            moving += low3 < 0.5 * own3 and own3 - low3 >= MIN_DEPTH * noise
        if not kept:
            scores[c] = None
            continue
        strongest = max(kept)
        scores[c] = {"share": strongest[1], "spots": len(kept), "moving": int(moving)}
    return labels, scores


def remove_static(roi: np.ndarray, frames_analysed, frames: np.ndarray, usable=None, *,
                  sigmas=BLOB_SIGMAS_PX, threshold: float = STATIC_SCORE, field=None):
    """ROIs with their components on static structures removed.

    Parameters
    ----------
    roi : (n, rows, cols) bool
        The run's ROIs (frames not in ``frames_analysed`` are returned unchanged).
    frames_analysed : sequence of int
        The frames whose ROIs are judged.
    frames : (n, rows, cols) array
        The run's frames (MONOCHROME2).
    usable : sequence of int, optional
        Frames the percentile is taken over (default all; leave out blank frames).
    sigmas : (float, float)
        :func:`blob_response` scales in pixels (:func:`scaled_sigmas` for the frame size).
    threshold : float
        Share of its strongest spot's response that a component without a moving spot must keep to be
        removed (:data:`STATIC_SCORE`).
    field : (rows, cols) bool, optional
        The exposed field: spots are sought in its :func:`field_interior` only.

    Returns
    -------
    roi : (n, rows, cols) bool ndarray
        A copy without the static components.
    removed : dict
        Frame -> number of components removed (frames with none left out).
    """
    out = np.array(roi, bool, copy=True)
    removed = {}
    with_roi = [f for f in dict.fromkeys(int(f) for f in frames_analysed) if out[f].any()]
    if not with_roi:
        return out, removed
    frames = np.asarray(frames)
    pm = PercentileMap(frames, usable, sigmas)  # shared: the ROIs of a run recur at about the same places
    # Computed once for the run: the noise (median over up to three of its frames with an ROI) and where spots
    # may lie.
    sample = [with_roi[i] for i in np.linspace(0, len(with_roi) - 1, min(3, len(with_roi))).round().astype(int)]
    noise = float(np.median([noise_level(blob_response(frames[f], sigmas)) for f in sample]))
    interior = field_interior(field, sigmas) if field is not None else None
    for f in with_roi:
        labels, scores = static_scores(out[f], f, frames, sigmas=sigmas, noise=noise, percentile_map=pm,
                                       interior=interior)
        static = [c for c, s in scores.items() if s is not None and not s["moving"] and s["share"] >= threshold]
        if static:
            out[f] &= ~np.isin(labels, static)
            removed[f] = len(static)
    return out, removed


def scaled_sigmas(rows: int, cols: int, sigmas=BLOB_SIGMAS_PX) -> tuple[float, float]:
    """:data:`BLOB_SIGMAS_PX` for a frame of this size: given for the network's 512-pixel grid, they
    grow with larger frames (a 1024-pixel frame's spot spans twice the pixels) and stay for smaller ones.

    >>> scaled_sigmas(1024, 1024), scaled_sigmas(256, 256)
    ((2.0, 8.0), (1.0, 4.0))
    """
    scale = max(int(rows), int(cols), 512) / 512.0
    return tuple(float(s) * scale for s in sigmas)


def filter_cine(roi: np.ndarray, frames_analysed, cine, sync=None, field=None):
    """:func:`remove_static` on a whole run, as ``identify`` does it.

    The percentile is taken over the run's non-blank frames (``sync.blank_frames``; at most
    :data:`MAX_FRAMES` of them, evenly spaced).  With ``sync``, only a run in which it found a heartbeat
    (``periodic``) of at least :data:`MIN_FRAMES_PER_BEAT` frames, and that lasts it, is judged; without,
    :func:`covers_a_beat` on the frame time.

    Parameters
    ----------
    roi : (n, rows, cols) bool
    frames_analysed : sequence of int
    cine : Cine
    sync : SyncResult, optional
    field : (rows, cols) bool, optional
        The exposed field (default: ``field.exposed_field`` of the run).

    Returns
    -------
    roi : (n, rows, cols) bool ndarray
    removed : dict
        Frame -> number of components removed.
    note : str or None
        Why the run was not judged, if it was not.
    """
    blank = {int(b) for b in (getattr(sync, "blank_frames", None) or [])}
    usable = [k for k in range(cine.n_frames) if k not in blank]
    if sync is not None:
        # Only a run in which synchronization found a heartbeat shows that calcium would have moved.
        period = sync.period_frames if getattr(sync, "periodic", False) else None
        if period is None or not covers_a_beat(len(usable), float(period)):
            return np.asarray(roi, bool), {}, (
                "not judged: no heartbeat of several frames that the run lasts was found in it (a static or "
                "ECG-triggered run, or one shorter than a beat), so nothing shows that calcium would have moved")
    elif not covers_a_beat(len(usable), frame_time_ms=cine.frame_time_ms):
        return np.asarray(roi, bool), {}, ("not judged: the run is shorter than a heartbeat, or its frames are too far "
                                           "apart (or their time unknown) to see the heart move")
    if len(usable) > MAX_FRAMES:
        usable = [usable[i] for i in np.linspace(0, len(usable) - 1, MAX_FRAMES).round().astype(int)]
    if field is None:
        from .field import exposed_field

        field = exposed_field(cine.frames)
    out, removed = remove_static(roi, frames_analysed, cine.frames, usable,
                                 sigmas=scaled_sigmas(cine.rows, cine.columns), field=field)
    return out, removed, None

