"""Training samples: paired (non-contrast, contrast) 256x256 patches with labels and ROI_GT.

What a sample is (paper, "Data" and Fig. 1): an *annotated non-contrast*
frame is paired with a contrast-enhanced frame of the same cardiac phase
(:func:`CACIdentifierLib.sync.synchronize`), both frames are brought to the
network's 512x512 grid and normalised exactly as in inference
(``patches.prepare_frame`` then ``patches.normalize_frame``) and cut into the
five overlapping 256x256 patches; each patch pair gets the CAC-presence label
and the ROI_GT patch of :mod:`CACTrainerLib.targets`, computed from the
majority-vote calcium mask of the non-contrast frame.

Memory: the frames are kept whole (patches overlap, and translation jitter
needs the surroundings) as normalised ``float16`` (2 bytes/pixel: 1 MiB per
frame pair) with the calcium mask and the ROI_GT as ``bool``; patches are cut
when a batch is made.  Which frames: the non-contrast frames of the sync pairs
(the annotators drew calcium on non-contrast frames only), subsampled to
``frames_per_acquisition`` evenly spaced frames -- adjacent frames are nearly
identical, so a few frames per cardiac cycle carry most of the information
and keep CPU training affordable.  Every frame remembers its acquisition and
patient so that cross-validation folds never split an acquisition (or, by
default, a patient).

Augmentation (training only, :class:`Augment`): a random flip and a random
multiple of 90 degrees applied identically to both patches and the targets,
translation jitter of the patch window by up to ``shift_px`` pixels (the
label is recomputed for the shifted window with the same rule), and for each
of the two patches independently a small gain, offset and gamma change and
Gaussian noise (the two frames come from different moments of the run, so
their exposure differs anyway).  Balanced sampling (:func:`epoch_indices`)
draws as many negative as positive patches per epoch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
from CACIdentifierLib.background import FRAME_ONLY, cine_background, head_inputs, reads_background
from CACIdentifierLib.errors import CacError, printable
from CACIdentifierLib.patches import FRAME_SIZE as FRAME  # the sizes' one home
from CACIdentifierLib.patches import PATCH_SIZE as PATCH
from CACIdentifierLib.progress import ProgressCallback, no_progress

from . import targets


@dataclass
class FrameSet:
    """Paired, normalised 512x512 frames with their targets (one row per non-contrast frame).

    Attributes
    ----------
    nc, c : (F, 512, 512) float16
        Normalised non-contrast and paired contrast frames (0..1).
    calcium : (F, 512, 512) bool
        Majority-vote calcium mask of the non-contrast frame.
    roi : (F, 512, 512) bool
        ROI_GT of that mask (:func:`targets.roi_gt`).
    labels : (F, 5) float32
        Patch labels (:func:`targets.patch_labels`).
    spacing_mm : (F, 2) float
        Pixel spacing of the 512 grid (NaN when unknown).
    frame_index, contrast_index : (F,) int
        0-based frame numbers in the original cine.
    metal : (F, 5) bool
        The patch holds dense metal that is not calcium (sternal wires, clips, stents), from a
        phantom's truth; False where unknown (real data).  Steers the hard-negative draw
        (``TrainConfig.metal_negative_weight``) and the failure analysis (benchmarks/difficulty.py).
    background : (F, 512, 512) float16, or (F, 0, 0) when not built
        The static background of the frame's cine (:func:`CACIdentifierLib.background.temporal_background`
        of its paired non-contrast frames): the residual channel of ``frame+residual`` models.
        Frame-only training builds sets without it (``background=False``): a third less memory
        and no median per cine.
    acquisition, patient : list of str (F,)
    """

    nc: np.ndarray
    c: np.ndarray
    calcium: np.ndarray
    roi: np.ndarray
    labels: np.ndarray
    spacing_mm: np.ndarray
    frame_index: np.ndarray
    contrast_index: np.ndarray
    metal: np.ndarray
    background: np.ndarray
    acquisition: list = field(default_factory=list)
    patient: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.nc.shape[0])

    @property
    def has_background(self) -> bool:
        """Whether the set carries its cines' backgrounds (needed by ``frame+residual`` models)."""
        return self.background.shape[1:] == self.nc.shape[1:]

    @classmethod
    def array_fields(cls) -> tuple[str, ...]:
        """The per-frame array fields, in constructor order (the list fields come after them).

        One list for subset, concat and the data-parallel exchange, so a field added to the
        dataclass travels everywhere.

        >>> FrameSet.array_fields()
        ('nc', 'c', 'calcium', 'roi', 'labels', 'spacing_mm', 'frame_index', 'contrast_index', 'metal', 'background')
        """
        return tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)

    @property
    def n_patches(self) -> int:
        return len(self) * 5

    @property
    def nbytes(self) -> int:
        """Bytes of the set's arrays (what copying it costs).

        >>> FrameSet(*(np.zeros((4, 2), np.float16) for _ in FrameSet.array_fields()), list("abcd"), list("pqrs")).nbytes
        160
        """
        return sum(getattr(self, k).nbytes for k in self.array_fields())

    @property
    def patch_labels(self) -> np.ndarray:
        """(F*5,) labels; patch id ``k`` is frame ``k // 5``, patch ``k % 5``."""
        return self.labels.reshape(-1)

    def subset(self, rows) -> FrameSet:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.nonzero(rows)[0]
        return FrameSet(
            *(getattr(self, k)[rows] for k in self.array_fields()),
            [self.acquisition[i] for i in rows], [self.patient[i] for i in rows],
        )

    def rows(self, start: int, stop: int) -> FrameSet:
        """Frames ``start:stop`` as views of this set's arrays (no copy, unlike :meth:`subset`).

        >>> fs = FrameSet(*(np.zeros((4, 2)) for _ in FrameSet.array_fields()), list("abcd"), list("pqrs"))
        >>> part = fs.rows(1, 3)
        >>> len(part), part.patient, bool(np.shares_memory(part.nc, fs.nc))
        (2, ['q', 'r'], True)
        """
        return FrameSet(*(getattr(self, k)[start:stop] for k in self.array_fields()),
                        self.acquisition[start:stop], self.patient[start:stop])

    def select(self, *, patients=None, acquisitions=None, exclude=False) -> FrameSet:
        """Frames of the given patients/acquisitions (or all others with ``exclude``)."""
        keep = np.ones(len(self), bool)
        if patients is not None:
            keep &= np.isin(np.array(self.patient, dtype=object), list(patients))
        if acquisitions is not None:
            keep &= np.isin(np.array(self.acquisition, dtype=object), list(acquisitions))
        return self.subset(~keep if exclude else keep)

    @staticmethod
    def concat(sets: Sequence[FrameSet], *, consume: bool = False) -> FrameSet:
        """One set of all frames of ``sets``, in order.

        ``consume=True`` empties each input field as soon as it is copied, so a whole dataset or pool is never
        held twice: the peak is the result plus one field of the inputs, not twice the result.  Only for inputs
        nobody else holds (a list just built); they are left with no frames.

        >>> a = FrameSet(*(np.zeros((2, 3)) for _ in FrameSet.array_fields()), list("ab"), list("pq"))
        >>> b = FrameSet(*(np.ones((1, 3)) for _ in FrameSet.array_fields()), list("c"), list("r"))
        >>> both = FrameSet.concat([a, b], consume=True)
        >>> len(both), both.patient, len(a), len(b)
        (3, ['p', 'q', 'r'], 0, 0)
        """
        sets = [s for s in sets if len(s)]
        if not sets:
            raise CacError("no training frames: the dataset has no non-contrast frames with a contrast pair")
        if len({s.has_background for s in sets}) > 1:
            raise ValueError("FrameSet.concat: some sets carry the cine background and some do not; "
                             "build them all with the same background= setting")
        acquisition = [a for s in sets for a in s.acquisition]
        patient = [p for s in sets for p in s.patient]
        arrays = []
        for k in FrameSet.array_fields():
            arrays.append(np.concatenate([getattr(s, k) for s in sets]))
            if consume:
                for s in sets:
                    setattr(s, k, getattr(s, k)[:0].copy())
        if consume:
            for s in sets:
                s.acquisition, s.patient = [], []
        return FrameSet(*arrays, acquisition, patient)

    def summary(self) -> dict:
        lab = self.patch_labels
        return {
            "frames": len(self),
            "patches": int(lab.size),
            "positive_patches": int(lab.sum()),
            "acquisitions": len(set(self.acquisition)),
            "patients": len(set(self.patient)),
        }


def _to_512_mask(mask: np.ndarray, any_cover: bool = False) -> np.ndarray:
    """``mask`` on the 512 grid: pixels at least half covered (``any_cover``: covered at all)."""
    from CACIdentifierLib import patches

    if mask.shape == (FRAME, FRAME):
        return mask.astype(bool)
    prob, _, _ = patches.prepare_frame(mask.astype(np.float32), None)
    return prob > 0 if any_cover else prob >= 0.5


def _patches_touching(mask: np.ndarray, origins) -> np.ndarray:
    """(5,) bool: which patches of the 512 grid hold any pixel of ``mask`` (a frame at its own size).

    Any coverage counts (a resized thin wire may fall under half a pixel).

    >>> m = np.zeros((1024, 1024), bool); m[10, 10] = True  # top-left corner only
    >>> from CACIdentifierLib.patches import patch_origins
    >>> _patches_touching(m, patch_origins()).tolist()
    [True, False, False, False, False]
    """
    m512 = _to_512_mask(mask, any_cover=True)
    return np.array([m512[r0:r0 + PATCH, c0:c0 + PATCH].any() for r0, c0 in origins])


def choose_frames(pairs: Sequence[Sequence[int]], n: int | None) -> list[tuple[int, int]]:
    """``n`` evenly spaced pairs (all of them if ``n`` is None or larger), in frame order."""
    pairs = sorted((int(a), int(b)) for a, b in pairs)
    if n is None or n >= len(pairs):
        return pairs
    if n <= 0:
        raise CacError(f"frames per acquisition must be positive, got {n}")
    idx = np.unique(np.round(np.linspace(0, len(pairs) - 1, n)).astype(int))
    return [pairs[i] for i in idx]


def synchronized_pairs(frames: np.ndarray, frame_time_ms: float | None, *, onset: int | None = None,
                       acquisition: str = "") -> list:
    """The ``[non-contrast, contrast]`` frame pairs of a cine (:func:`CACIdentifierLib.sync.synchronize`).

    Its warnings name ``acquisition``: a dataset has many.
    """
    import warnings

    from CACIdentifierLib.errors import CacWarning
    from CACIdentifierLib.sync import synchronize

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacWarning)
        pairs = synchronize(frames, frame_time_ms, onset=onset).pairs
    for w in caught:  # say which acquisition (its id comes from a file: made printable)
        warnings.warn(f"{printable(acquisition, 80)}: {w.message}" if acquisition else str(w.message), CacWarning,
                      stacklevel=3)
    return pairs


def frames_from_arrays(frames: np.ndarray, majority: np.ndarray, *, frame_time_ms: float | None,
                       spacing_mm=None, onset: int | None = None, pairs=None,
                       frames_per_acquisition: int | None = 8, acquisition: str = "", patient: str = "",
                       metal: np.ndarray | None = None, background: bool = True,
                       roi_iterations: int = targets.DEFAULT_ITERATIONS,
                       roi_step_px: int = targets.DEFAULT_STEP_PX,
                       min_deposit_fraction: float = targets.DEFAULT_MIN_DEPOSIT_FRACTION) -> FrameSet:
    """Training frames of one acquisition held in memory.

    Parameters
    ----------
    frames : (N, rows, cols) integer or float array
        The cine as stored.
    majority : (N, rows, cols) bool
        Majority-vote calcium mask per frame.
    frame_time_ms : float or None
        Time between frames (for synchronization).
    spacing_mm : (row, col) mm or None
    onset : int or None
        First contrast frame when known (the annotation defines which frames
        are non-contrast); None lets synchronization detect it.
    pairs : list of [non_contrast, contrast] or None
        Precomputed pairs; None runs :func:`CACIdentifierLib.sync.synchronize`.
    frames_per_acquisition : int or None
        Evenly spaced subsample of the paired non-contrast frames (None: all).
    metal : (N, rows, cols) bool or None
        Footprint of dense metal per frame (a phantom's truth); a patch touching it is flagged
        in ``FrameSet.metal``.  None: no metal known.
    background : bool
        Build ``FrameSet.background`` (the cine's static background, for ``frame+residual``
        models); False leaves it empty, (F, 0, 0).
    """
    from CACIdentifierLib import patches

    frames = np.asarray(frames)
    majority = np.asarray(majority).astype(bool)
    if frames.ndim != 3 or majority.shape != frames.shape:
        raise CacError(f"{acquisition or 'acquisition'}: frames {frames.shape} and calcium masks "
                       f"{majority.shape} must both be (n_frames, rows, cols)")
    if pairs is None:
        pairs = synchronized_pairs(frames, frame_time_ms, onset=onset, acquisition=acquisition)
    chosen = choose_frames(pairs, frames_per_acquisition)
    n = len(chosen)
    nc = np.empty((n, FRAME, FRAME), np.float16)
    c = np.empty((n, FRAME, FRAME), np.float16)
    cal = np.empty((n, FRAME, FRAME), bool)
    roi = np.empty((n, FRAME, FRAME), bool)
    labels = np.empty((n, 5), np.float32)
    has_metal = np.zeros((n, 5), bool)
    spacing512 = None
    origins = patches.patch_origins(FRAME, FRAME)
    for i, (k_nc, k_c) in enumerate(chosen):
        f_nc, spacing512, _ = patches.prepare_frame(frames[k_nc], spacing_mm)
        f_c, _, _ = patches.prepare_frame(frames[k_c], spacing_mm)
        nc[i] = patches.normalize_frame(f_nc)
        c[i] = patches.normalize_frame(f_c)
        cal[i] = _to_512_mask(majority[k_nc])
        roi[i] = targets.roi_gt(cal[i], roi_iterations, roi_step_px)
        labels[i] = targets.patch_labels(cal[i], origins, PATCH, min_deposit_fraction)
        if metal is not None:
            has_metal[i] = _patches_touching(metal[k_nc], origins)
    sp = np.full((n, 2), np.nan) if spacing512 is None else np.tile(np.asarray(spacing512, float), (n, 1))
    if background:
        bg = np.broadcast_to(cine_background(frames, [p[0] for p in pairs], spacing_mm).astype(np.float16),
                             (n, FRAME, FRAME)).copy()
    else:
        bg = np.zeros((n, 0, 0), np.float16)
    return FrameSet(nc, c, cal, roi, labels, sp, np.array([p[0] for p in chosen], int),
                    np.array([p[1] for p in chosen], int), has_metal, bg, [acquisition] * n, [patient] * n)


def _truth_onset(truth: dict) -> int | None:
    if not isinstance(truth, dict):
        raise TypeError("a truth file holds a JSON object")  # the caller turns it into one CacError line
    for key in ("onset_frame", "contrast_onset_frame", "onset", "contrast_onset"):
        value = truth.get(key)
        if isinstance(value, dict):
            value = value.get("frame")
        if value is not None:
            return int(value)
    return None


def frames_from_acquisition(acq, *, acquisition: str = "", patient: str = "", **kw) -> FrameSet:
    """Training frames of an in-memory phantom ``Acquisition`` (``phantom.generate_acquisition``).

    Uses the majority-vote annotation, the truth's contrast onset and the
    acquisition's frame time and spacing.
    """
    majority = getattr(acq, "majority", None)
    if majority is None:
        from CACIdentifierLib.metrics import majority_vote

        majority = np.stack([majority_vote([a[k] for a in acq.annotators]) for k in range(len(acq.frames))])
    frame_time, spacing, onset = acquisition_timing(acq)
    return frames_from_arrays(acq.frames, majority, frame_time_ms=frame_time, spacing_mm=spacing,
                              onset=kw.pop("onset", onset), acquisition=acquisition,
                              patient=patient, metal=kw.pop("metal", getattr(acq, "metal", None)), **kw)


def acquisition_timing(acq) -> tuple:
    """``(frame_time_ms, spacing_mm, contrast onset)`` of a phantom ``Acquisition``, from its fields or its truth."""
    truth = dict(getattr(acq, "truth", {}) or {})
    frame_time = getattr(acq, "frame_time_ms", None) or truth.get("frame_time_ms")
    spacing = getattr(acq, "spacing_mm", None) or truth.get("spacing_mm")
    return frame_time, spacing, _truth_onset(truth)


def acquisition_pairs(acq, *, acquisition: str = "") -> list:
    """The frame pairs :func:`frames_from_acquisition` synchronizes ``acq`` to (pass them back as ``pairs=``)."""
    frame_time, _, onset = acquisition_timing(acq)
    return synchronized_pairs(acq.frames, frame_time, onset=onset, acquisition=acquisition)


def frames_from_record(record: dict, **kw) -> FrameSet:
    """Training frames of one manifest record (``phantom_writer.load_manifest`` layout, absolute paths).

    Reads the cine (``cine_io.load_cine``), the majority-vote ``.seg.nrrd``
    (union of its segments) -- or, if the record has no majority file, the
    per-pixel majority of the annotators' files -- and the contrast onset from
    ``truth.json`` when present.
    """
    from CACIdentifierLib import nrrd_io
    from CACIdentifierLib.cine_io import load_cine

    acq_id = str(record.get("id", ""))
    cine = load_cine(record["cine"])
    shape = cine.frames.shape
    if record.get("majority"):
        majority = nrrd_io.read_seg_nrrd(record["majority"], expected_shape=shape).union()
    elif record.get("annotators"):
        from CACIdentifierLib.metrics import majority_vote

        stacks = [nrrd_io.read_seg_nrrd(p, expected_shape=shape).union() for p in record["annotators"]]
        majority = np.stack([majority_vote([s[k] for s in stacks]) for k in range(shape[0])])
    else:
        raise CacError(f"acquisition {acq_id}: the manifest lists no majority or annotator segmentation")
    onset = None
    if record.get("truth") and Path(record["truth"]).exists():
        try:
            onset = _truth_onset(json.loads(Path(record["truth"]).read_bytes().decode("utf-8")))
        except (ValueError, KeyError, TypeError, IndexError, OSError, RecursionError):
            raise CacError(
                f"acquisition {acq_id}: {record['truth']} is not a readable truth file; regenerate the dataset"
            ) from None
    return frames_from_arrays(cine.frames, majority, frame_time_ms=cine.frame_time_ms,
                              spacing_mm=cine.spacing_mm, onset=kw.pop("onset", onset), acquisition=acq_id,
                              patient=str(record.get("patient", acq_id)), **kw)


def load_records(dataset) -> list[dict]:
    """Manifest records of a dataset folder (``manifest.json``), or the list itself."""
    if isinstance(dataset, (list, tuple)):
        return list(dataset)
    path = Path(dataset)
    if not (path / "manifest.json").exists():
        raise CacError(f"{path} has no manifest.json; create a dataset with `cac phantom` or point to one")
    from .phantom_writer import load_manifest

    return load_manifest(path)


def build_frameset(dataset, *, frames_per_acquisition: int | None = 8, progress: ProgressCallback = no_progress,
                   **kw) -> FrameSet:
    """All training frames of a dataset (folder with ``manifest.json`` or list of records)."""
    records = load_records(dataset)
    if not records:
        raise CacError("the dataset manifest lists no acquisitions")
    sets, smallest = [], None
    for i, rec in enumerate(records):
        progress(i, len(records), f"loading {rec.get('id', i)}")
        sets.append(frames_from_record(rec, frames_per_acquisition=frames_per_acquisition, **kw))
        if len(sets[-1]):
            smallest = min(sets[-1].nbytes, smallest or sets[-1].nbytes)
            _check_dataset_memory(smallest, i + 1, len(records))
    progress(len(records), len(records), "dataset loaded")
    return FrameSet.concat(sets, consume=True)


def _check_dataset_memory(smallest: int, loaded: int, n_records: int) -> None:
    """Refuse, in one line, a dataset whose remaining acquisitions will not fit, as soon as that shows.

    The acquisitions still to load are taken to be no smaller than the ``smallest`` loaded so far (bytes; a
    capped ``frames_per_acquisition`` keeps them alike), so the refusal comes after the first acquisition rather
    than after hours of loading and a silent stop by the kernel's OOM killer; the final copy into one set adds
    at most one field (:meth:`FrameSet.concat` ``consume``).
    """
    from CACIdentifierLib.cine import memory_short, memory_text

    rest = n_records - loaded
    need = rest * smallest
    if rest and (available := memory_short(need)) is not None:
        raise CacError(f"the dataset's other {rest} acquisitions need about {memory_text(need)} for their "
                       f"training frames, more than this machine can spare ({memory_text(available)} available "
                       f"after {loaded} of {n_records}); train on fewer frames per acquisition "
                       "(--frames-per-acquisition) or close other programs")


# -- sampling and augmentation ------------------------------------------------------------------


@dataclass
class Augment:
    """Training-time augmentation parameters (all ranges symmetric around "no change").

    flips : random horizontal flip and random k*90 degree rotation (same for
        both patches and the targets).
    shift_px : translation jitter of the patch window, uniform in
        [-shift_px, shift_px] per axis (clipped to the frame).
    gain : multiplicative factor range ``[1-gain, 1+gain]``.
    offset : additive offset range ``[-offset, offset]`` (normalised units).
    gamma : exponent ``exp(U[-log(1+gamma), log(1+gamma)])``.
    noise : Gaussian noise standard deviation drawn in ``[0, noise]``.
    display : probability that a patch pair goes through XA display processing
        (:func:`display_processing`, parameters from :meth:`display_params`), the
        same for both frames of the pair, as one X-ray system processes a whole run.
    """

    flips: bool = True
    shift_px: int = 8
    gain: float = 0.1
    offset: float = 0.05
    gamma: float = 0.2
    noise: float = 0.02
    display: float = 0.0

    def display_params(self, rng: np.random.Generator) -> tuple[float, float, float, float] | None:
        """Harmonization and edge-enhancement strengths for one patch pair, or None (no processing).

        Kernel sizes in pixels of the 512-pixel training frame: harmonization 8-48 px with gain 0-2
        (the flat look of modern systems' large-kernel processing), edge enhancement 0.7-3 px with
        gain 0-1.5.  Drawn only with probability ``display``, so unprocessed runs stay in the mix.
        """
        if self.display <= 0 or rng.random() >= self.display:
            return None
        return (float(rng.uniform(8.0, 48.0)), float(rng.uniform(0.0, 2.0)),
                float(rng.uniform(0.7, 3.0)), float(rng.uniform(0.0, 1.5)))

    def intensity(self, x: np.ndarray, rng: np.random.Generator,
                  background: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``x`` with a random gain, offset, gamma and noise.

        With ``background`` (the same window of the cine's background), returns both, the
        background through the same gain, offset and gamma but without the noise: the residual
        ``x - background`` then sees the same display change as the frame.
        """
        g = 1.0 + rng.uniform(-self.gain, self.gain)
        o = rng.uniform(-self.offset, self.offset)
        lg = np.log1p(self.gamma)
        gamma = float(np.exp(rng.uniform(-lg, lg)))
        sd = rng.uniform(0.0, self.noise)
        y = np.clip(x, 0.0, 1.0) ** gamma * g + o
        if sd > 0:
            y = y + rng.normal(0.0, sd, size=x.shape).astype(np.float32)
        y = np.clip(y, 0.0, 1.0).astype(np.float32)
        if background is None:
            return y
        return y, np.clip(np.clip(background, 0.0, 1.0) ** gamma * g + o, 0.0, 1.0).astype(np.float32)


def display_processing(x: np.ndarray, params, background: np.ndarray | None = None):
    """XA display processing of a normalised image: harmonization and edge enhancement.

    Real systems store runs after unsharp masking at two scales: a large kernel flattens
    the background (harmonization) and a small one sharpens edges, which gives dark and
    bright rims along edges and deepens small dark details -- calcium among them.  The
    training pool draws neither (``cac phantom --display-processing`` does); an independent
    generator's cines with it drew more false positives from the shipped model (docs/learning.md).

    ``y = x + g_L (x - B_L x) + g_S (x - G_S x)`` with ``B_L`` two box filters of the
    variance of a Gaussian of ``sigma_L`` and ``G_S`` a Gaussian of ``sigma_S``; then
    mapped linearly so that its 1st-99th percentile range falls where ``x``'s was, as the
    pipeline's frame normalisation does, and clipped to [0, 1].

    Parameters
    ----------
    x : (H, W) float array in [0, 1]
    params : (sigma_L, gain_L, sigma_S, gain_S)
        Kernel sizes in pixels, gains >= 0 (:meth:`Augment.display_params`).
    background : (H, W) float array, optional
        The same window of the cine's static background: processed by the same filter and
        linear map (the filter is linear, so the residual ``x - background`` is the processed
        residual), and returned as well.

    Returns
    -------
    y : (H, W) float32 array in [0, 1]; ``(y, background)`` when a background is given.

    Examples
    --------
    A step gets a dark rim on its dark side and a bright one on its bright side; a flat
    image stays flat.

    >>> x = np.full((64, 64), 0.3, np.float32); x[:, 32:] = 0.7
    >>> y = display_processing(x, (16.0, 1.0, 2.0, 1.0))
    >>> bool(y[10, 30] < y[10, 5]), bool(y[10, 33] > y[10, 60])
    (True, True)
    >>> float(np.ptp(display_processing(np.full((32, 32), 0.5, np.float32), (16.0, 1.0, 2.0, 1.0))))
    0.0
    """
    from .phantom_imaging import xa_unsharp

    x = np.asarray(x, np.float32)
    y = xa_unsharp(x, params)
    lo_x, hi_x = np.percentile(x, [1.0, 99.0])
    lo_y, hi_y = np.percentile(y, [1.0, 99.0])
    scale = (hi_x - lo_x) / (hi_y - lo_y) if hi_y > lo_y else 1.0

    def mapped(v):
        return np.clip(lo_x + (v - lo_y) * scale, 0.0, 1.0).astype(np.float32)

    if background is None:
        return mapped(y)
    return mapped(y), mapped(xa_unsharp(np.asarray(background, np.float32), params))


def epoch_indices(labels: np.ndarray, rng: np.random.Generator, *, balanced: bool = True,
                  samples: int | None = None, hard_scores: np.ndarray | None = None,
                  hard_fraction: float = 0.0, negatives: bool = True,
                  hard_weights: np.ndarray | None = None) -> np.ndarray:
    """Patch ids of one training epoch, shuffled.

    ``balanced``: every positive patch once and as many negatives drawn
    without replacement (all of them if fewer); otherwise every patch once.
    ``samples`` caps (or, drawing with replacement, extends) the epoch length.
    ``hard_scores`` (one per patch, e.g. the last classification loss) with
    ``hard_fraction`` > 0: that share of the negatives is drawn with probability
    proportional to the score (hard-negative mining: the field edges, wires and
    crossings that fooled the classifier come back more often), the rest uniformly.
    A NaN score means "not drawn yet": such a negative weighs the mean score of the
    scored negatives (1 if none is scored), as likely hard as a typical one.
    ``hard_weights`` (one per patch) multiply the scores after that, e.g. to favour the
    negatives that hold metal (``TrainConfig.metal_negative_weight``).
    ``negatives=False``: the positive patches only (all of them if there are none).

    Examples
    --------
    >>> labels = np.array([1, 0, 0, 0, 1, 0])
    >>> sorted(epoch_indices(labels, np.random.default_rng(0), negatives=False).tolist())
    [0, 4]
    >>> len(epoch_indices(labels, np.random.default_rng(0)))  # balanced: 2 positives, 2 negatives
    4
    >>> scores = np.array([0.0, np.nan, 0.2, 0.0, 0.0, 0.2])  # negative 1 unseen: weighs 0.2 like the others
    >>> len(epoch_indices(labels, np.random.default_rng(0), hard_scores=scores, hard_fraction=1.0))
    4
    """
    labels = np.asarray(labels).reshape(-1)
    pos = np.nonzero(labels > 0.5)[0]
    neg = np.nonzero(labels <= 0.5)[0]
    if not negatives and len(pos):
        ids = pos
    elif balanced and len(pos) and len(neg):
        n_neg = min(len(neg), max(len(pos), 1))
        n_hard = int(round(hard_fraction * n_neg)) if hard_scores is not None else 0
        if n_hard > 0:
            w = np.asarray(hard_scores, np.float64)[neg]
            unseen = np.isnan(w)
            if unseen.any():
                w = np.where(unseen, w[~unseen].mean() if (~unseen).any() else 1.0, w)
            if hard_weights is not None:
                w = w * np.asarray(hard_weights, np.float64).reshape(-1)[neg]
            w = w + 1e-6
            hard = rng.choice(neg, size=n_hard, replace=False, p=w / w.sum())
            rest = np.setdiff1d(neg, hard)
            easy = rng.choice(rest, size=min(len(rest), n_neg - n_hard), replace=False)
            negs = np.concatenate([hard, easy])
        else:
            negs = rng.choice(neg, size=n_neg, replace=False)
        ids = np.concatenate([pos, negs])
    else:
        ids = np.arange(labels.size)
    ids = rng.permutation(ids)
    if samples is not None and samples != len(ids):
        ids = ids[:samples] if samples < len(ids) else rng.choice(ids, size=samples, replace=True)
    return ids


def make_batch(fs: FrameSet, ids: Sequence[int], rng: np.random.Generator | None = None,
               augment: Augment | None = None, *, with_dist: bool = False,
               min_deposit_fraction: float = targets.DEFAULT_MIN_DEPOSIT_FRACTION,
               inputs: str = FRAME_ONLY) -> dict:
    """Cut the patches ``ids`` (frame ``id // 5``, patch ``id % 5``) into arrays ready for torch.

    Returns a dict of float32 arrays: ``nc``, ``c`` (B, 1, 256, 256; with ``inputs``
    ``"frame+residual"`` (B, 2, 256, 256), :func:`CACIdentifierLib.background.with_residual`
    of the patch and the same window of ``fs.background``; with ``"frame+residual+vessels"``
    (B, 3, 256, 256), :func:`CACIdentifierLib.background.with_vessels`), ``label`` (B,), ``roi``
    (B, 1, 256, 256) and, with ``with_dist``, the boundary-loss ``dist`` maps
    (B, 1, 256, 256, pixels).  Without ``augment`` the patches are exactly those of inference.
    """
    from CACIdentifierLib import patches

    from .losses import signed_distance_map

    residual = reads_background(inputs)
    if residual and not fs.has_background:
        raise ValueError(f"this training set was built without the cine backgrounds that a {inputs} model "
                         "reads; build it with background=True")
    origins = patches.patch_origins(FRAME, FRAME)
    b = len(ids)
    nc = np.empty((b, 1, PATCH, PATCH), np.float32)
    c = np.empty_like(nc)
    roi = np.empty_like(nc)
    bg_nc = np.empty_like(nc) if residual else None
    bg_c = np.empty_like(nc) if residual else None
    label = np.empty(b, np.float32)
    for j, pid in enumerate(ids):
        f, p = divmod(int(pid), 5)
        r, q = origins[p]
        shifted = False
        if augment is not None and augment.shift_px > 0:
            dr, dq = rng.integers(-augment.shift_px, augment.shift_px + 1, size=2)
            r2 = int(np.clip(r + dr, 0, FRAME - PATCH))
            q2 = int(np.clip(q + dq, 0, FRAME - PATCH))
            shifted = (r2, q2) != (r, q)
            r, q = r2, q2
        win = (slice(r, r + PATCH), slice(q, q + PATCH))
        x_nc = fs.nc[f][win].astype(np.float32)
        x_c = fs.c[f][win].astype(np.float32)
        y_roi = fs.roi[f][win]
        x_bg = fs.background[f][win].astype(np.float32) if residual else None
        if shifted:
            label[j] = targets.patch_labels(fs.calcium[f], [(r, q)], PATCH, min_deposit_fraction)[0]
        else:
            label[j] = fs.labels[f, p]
        if augment is not None:
            x_bg_nc = x_bg_c = x_bg
            display = augment.display_params(rng)  # no draw when display is 0: the other draws stay as they were
            if display is not None:  # one system processes the whole run: both frames, and the background alike
                if residual:
                    x_nc, x_bg_nc = display_processing(x_nc, display, x_bg)
                    x_c, x_bg_c = display_processing(x_c, display, x_bg)
                else:
                    x_nc = display_processing(x_nc, display)
                    x_c = display_processing(x_c, display)
            if augment.flips:
                k = int(rng.integers(4))
                flip = bool(rng.integers(2))
                x_nc, x_c, y_roi = (np.rot90(a, k) for a in (x_nc, x_c, y_roi))
                if residual:
                    x_bg_nc, x_bg_c = np.rot90(x_bg_nc, k), np.rot90(x_bg_c, k)
                if flip:
                    x_nc, x_c, y_roi = (a[:, ::-1] for a in (x_nc, x_c, y_roi))
                    if residual:
                        x_bg_nc, x_bg_c = x_bg_nc[:, ::-1], x_bg_c[:, ::-1]
            if residual:
                x_nc, bg_nc[j, 0] = augment.intensity(x_nc, rng, x_bg_nc)
                x_c, bg_c[j, 0] = augment.intensity(x_c, rng, x_bg_c)
            else:
                x_nc = augment.intensity(x_nc, rng)
                x_c = augment.intensity(x_c, rng)
        elif residual:
            bg_nc[j, 0] = bg_c[j, 0] = x_bg
        nc[j, 0] = x_nc
        c[j, 0] = x_c
        roi[j, 0] = y_roi
    nc, c = head_inputs(nc, c, bg_nc, bg_c, inputs)
    out = {"nc": nc, "c": c, "label": label, "roi": roi}
    if with_dist:
        out["dist"] = signed_distance_map(roi[:, 0] > 0.5)[:, None]
    return out
