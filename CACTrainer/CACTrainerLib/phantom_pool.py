"""A pool of fresh, domain-randomised phantom patients for training, generated in memory.

A fixed set of 40 phantom patients can be memorised; a pool drawn from
:func:`~CACTrainerLib.phantom_domain.randomized_params` with one acquisition per
patient cannot, and it spans the noise, display, metal, calcium and anatomy that
real runs vary in.  Each acquisition is a short cine (``n_frames``, enough for
two beats before and after the contrast) whose non-contrast frames are paired
by :func:`CACIdentifierLib.sync.synchronize`, exactly as for a dataset on disk;
``frames_per_acquisition`` frames are kept (:func:`CACTrainerLib.dataset.frames_from_acquisition`).
Patients are numbered from ``first_patient``, so disjoint ranges give
disjoint training, validation and test pools.

Examples
--------
>>> from CACTrainerLib.phantom_pool import phantom_pool
>>> fs = phantom_pool(1, seed=3, n_frames=24, frames_per_acquisition=2, size=128, workers=1)
>>> fs.nc.shape[1:], len(fs) <= 2
((512, 512), True)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass

import numpy as np
from CACIdentifierLib.allocator import release_freed_memory
from CACIdentifierLib.errors import CacError, CacWarning
from CACIdentifierLib.progress import ProgressCallback, no_progress


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent reports it and ends the workers, which must
    # not print tracebacks of their own.  SIGTERM (to the group, from a panel's Cancel) ends a worker
    # silently, whatever handler it inherited from `cac` (which turns SIGTERM into an interrupt).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _background_worker() -> None:
    # A prefetching worker runs beside training: at a lower priority it takes only the cores that
    # training leaves idle, instead of slowing the steps it overlaps.
    _ignore_sigint()
    try:
        os.nice(10)
    except OSError:
        pass


def pool_params(seed: int, patient: int, *, n_frames: int = 64, size: int | None = None,
                calcium_free_fraction: float = 0.3, display_processing_prob: float = 0.0):
    """The phantom parameters drawn for pool patient ``patient`` of ``seed`` (what :func:`pool_acquisition` renders).

    Analyses that change one parameter and keep every other draw start from these
    (``benchmarks/dose_bound.py``: the photons).  ``display_processing_prob``: XA display processing
    (``PhantomParams.display_processing_prob``), drawn from its own stream, so every other draw stays;
    0 for training, whose augmentation draws it per patch pair (``--display-augment``).
    """
    from .phantom_domain import randomized_params

    rng = np.random.default_rng([int(seed), int(patient), 0xD0])
    params = randomized_params(rng, n_frames=n_frames, size=size, calcium_free_fraction=calcium_free_fraction)
    # Onset in the middle third, so both parts hold about two beats.
    params.onset_fraction_range = (0.4, 0.55)
    params.early_onset_prob = 0.0
    params.display_processing_prob = float(display_processing_prob)
    return params


def pool_acquisition(seed: int, patient: int, *, n_frames: int = 64, size: int | None = None,
                     calcium_free_fraction: float = 0.3, calcium_visible: bool = True,
                     display_processing_prob: float = 0.0):
    """The cine of pool patient ``patient`` of ``seed``, with its truth (``phantom.Acquisition``).

    What :func:`phantom_pool` trains on, before frames are chosen and paired; for analyses that
    need the truth a :class:`~CACTrainerLib.dataset.FrameSet` does not keep (``benchmarks/difficulty.py``).
    ``calcium_visible=False`` renders the same cine with its calcium attenuating nothing: every
    other draw (anatomy, motion, metal, noise) is the same, so only the deposits' pixels change (the
    counterfactual twin of :func:`phantom_pool`, whose majority vote it empties: the simulated annotators
    can still mark an invisible deposit that lies on something darker).
    """
    from .phantom import generate_acquisition

    params = pool_params(seed, patient, n_frames=n_frames, size=size, calcium_free_fraction=calcium_free_fraction,
                         display_processing_prob=display_processing_prob)
    if not calcium_visible:
        params.calcium_mu_per_mm = 0.0
    return generate_acquisition(params, seed=seed, patient=patient, acquisition=0)


@dataclass(frozen=True)
class PatientRecipe:
    """How every patient of a pool is made: all but its seed and number (one value, not seven arguments).

    A job of :func:`_one` is ``(seed, patient, recipe)``: the foreground, the worker processes and
    :meth:`PatientStream.prefetch` read the same fields, where each call listed them by position
    and the prefetch's had left the newest (display processing) to its default.
    """

    n_frames: int = 64
    frames_per_acquisition: int | None = 6
    size: int | None = None
    calcium_free_fraction: float = 0.3
    background: bool = True
    twins: bool = False
    display_processing_prob: float = 0.0

    def acquisition(self, seed: int, patient: int, calcium_visible: bool = True):
        """The cine of pool patient ``patient`` of ``seed`` (:func:`pool_acquisition`)."""
        return pool_acquisition(seed, patient, n_frames=self.n_frames, size=self.size,
                                calcium_free_fraction=self.calcium_free_fraction, calcium_visible=calcium_visible,
                                display_processing_prob=self.display_processing_prob)


def _one(job) -> object:
    seed, patient, recipe = job
    from . import dataset

    acq = recipe.acquisition(seed, patient)
    # Short phantom cines often lack a clear periodicity; one summary line beats a warning per patient.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacWarning)
        name = patient_name(seed, patient)
        # The twin's background needs the cine's pairs: synchronized once, here, and passed to both.
        pairs = dataset.acquisition_pairs(acq, acquisition=name) if recipe.twins else None
        fs = dataset.frames_from_acquisition(acq, acquisition=name, patient=name,
                                             frames_per_acquisition=recipe.frames_per_acquisition,
                                             background=recipe.background, pairs=pairs)
        if recipe.twins:
            fs = _with_twin(fs, pairs, seed, patient, recipe)
    # Counted for the summary line only when it is what the line says (other warnings: none in 16 pool cines).
    return fs, any("periodicity" in str(w.message) for w in caught)


TWIN_SUFFIX = "~twin"


def _with_twin(fs, pairs, seed: int, patient: int, recipe: PatientRecipe):
    """``fs`` and, for its frames with labelled calcium, the same frames of the calcium-free twin (labels 0).

    The twin's patches show the same anatomy, metal, motion and noise as the calcified ones: only
    the calcium tells them apart, so context (position, heart border, catheter) cannot.  Same
    patient (never split from it), acquisition ``name~twin``; the frame pairs are the cine's own
    (``pairs``: all of them, as synchronization found them), and so are the frames its static
    background is taken from -- but from the twin, without the calcium.
    """
    from CACIdentifierLib.background import cine_background

    from . import dataset

    rows = np.flatnonzero(fs.labels.any(axis=1))
    if rows.size == 0:
        return fs
    twin = recipe.acquisition(seed, patient, calcium_visible=False)
    # No calcium is rendered, so nothing is calcium: the simulated annotators, who judge a deposit by how dark it
    # looks against its ring, can still mark an invisible one that happens to lie on something darker.
    twin.majority = np.zeros_like(twin.majority)
    name = fs.acquisition[0]
    chosen = [[int(a), int(b)] for a, b in zip(fs.frame_index[rows], fs.contrast_index[rows])]
    tfs = dataset.frames_from_acquisition(twin, acquisition=name + TWIN_SUFFIX, patient=fs.patient[0], pairs=chosen,
                                          frames_per_acquisition=None, background=False)
    if recipe.background:
        # The twin's own: the calcified cine's background (a median over its frames) keeps part of a deposit that
        # moves little -- a median 13 % of its contrast where it lies, over 47 % in a tenth of the frames (pool seed
        # 12) -- which the twin's residual would show as a bright spot no calcium-free cine has.
        _, spacing, _ = dataset.acquisition_timing(twin)
        bg = cine_background(twin.frames, [p[0] for p in pairs], spacing).astype(np.float16)
        tfs.background = np.broadcast_to(bg, tfs.nc.shape).copy()
    return dataset.FrameSet.concat([fs, tfs])


def patient_name(seed: int, patient: int) -> str:
    """The patient (and acquisition) id of pool patient ``patient`` of ``seed``, e.g. ``S1000_P00007``."""
    return f"S{int(seed)}_P{int(patient):05d}"


def _generate(patients, *, seed: int, recipe: PatientRecipe, workers: int | None,
              progress: ProgressCallback = no_progress) -> list:
    """FrameSets of the numbered ``patients`` (in their order), on ``workers`` processes.

    In a data-parallel run every rank needs every patient: each rank generates its share
    (patient ``i`` on rank ``i % world``) and the ranks exchange them, instead of each
    generating all of them on all the cores.
    """
    from . import distributed

    ctx = distributed.current()
    if ctx is not None and ctx.world > 1 and len(patients) > 0:
        owners = {int(p): i % ctx.world for i, p in enumerate(patients)}
        mine = [p for p in owners if owners[p] == ctx.rank]
        if workers is None:  # the ranks on this machine share its cores
            workers = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world)))
        made = _generate_here(mine, seed=seed, recipe=recipe, workers=workers, progress=progress)
        shared = ctx.exchange({p: _pack(fs, w) for p, (fs, w) in zip(mine, made)}, owners)
        sets = [_unpack(*shared[int(p)]) for p in patients]  # the caller's order (and repeats)
        _warn_periodicity(sum(info["warned"] for _, info in shared.values()), len(sets))
        return [fs for fs, _ in sets]
    made = _generate_here(patients, seed=seed, recipe=recipe, workers=workers, progress=progress)
    _warn_periodicity(sum(w for _, w in made), len(made))
    return [fs for fs, _ in made]


def _pack(fs, warned: bool) -> tuple[dict, dict]:
    """A FrameSet as arrays and a JSON-able dict (for :meth:`distributed.Context.exchange`)."""
    return ({k: getattr(fs, k) for k in fs.array_fields()},
            {"acquisition": list(fs.acquisition), "patient": list(fs.patient), "warned": bool(warned)})


def _unpack(arrays: dict, info: dict) -> tuple:
    from .dataset import FrameSet

    fs = FrameSet(*(arrays[k] for k in FrameSet.array_fields()), list(info["acquisition"]), list(info["patient"]))
    return fs, info["warned"]


def _warn_periodicity(warned: int, n: int) -> None:
    if warned:
        warnings.warn(f"phantom pool: {warned} of {n} cines showed no clear cardiac periodicity (short "
                      f"phantom cines); their non-contrast frames were paired with the most similar contrast "
                      f"frames", CacWarning, stacklevel=4)


def _jobs(patients, seed: int, recipe: PatientRecipe) -> list:
    """The jobs of :func:`_one` for each of the numbered ``patients``."""
    return [(int(seed), int(p), recipe) for p in patients]


def _generate_here(patients, *, seed: int, recipe: PatientRecipe, workers: int | None,
                   progress: ProgressCallback) -> list:
    """``(FrameSet, warned)`` of each of the numbered ``patients``, generated in this process's workers."""
    jobs = _jobs(patients, seed, recipe)
    if not jobs:
        return []
    workers = max(1, min(len(jobs), int(workers or os.cpu_count() or 1)))
    sets = []
    if workers == 1:
        for i, job in enumerate(jobs):
            sets.append(_one(job))
            progress(i + 1, len(jobs), "phantom pool")
    else:
        # A Pool, not a ProcessPoolExecutor: leaving the block (Ctrl-C included) terminates the workers at
        # once, where the executor would wait for the cines they are generating (seconds each).
        with multiprocessing.Pool(workers, initializer=_ignore_sigint) as pool:
            for i, made in enumerate(pool.imap(_one, jobs, chunksize=1)):
                sets.append(made)
                progress(i + 1, len(jobs), "phantom pool")
    return sets


def phantom_pool(n_patients: int, *, seed: int = 0, first_patient: int = 0, n_frames: int = 64,
                 frames_per_acquisition: int = 6, size: int | None = None, calcium_free_fraction: float = 0.3,
                 workers: int | None = None, progress: ProgressCallback = no_progress, patients=None,
                 background: bool = True, twins: bool = False, display_processing_prob: float = 0.0):
    """Training frames of ``n_patients`` new randomised phantom patients (one acquisition each).

    Parameters
    ----------
    n_patients : int
    seed, first_patient : int
        Patients ``first_patient .. first_patient + n_patients - 1`` of ``seed``.
    n_frames : int
        Frames per cine (64 at 7.5-30 fps: 2-8 s).
    frames_per_acquisition : int
        Paired non-contrast frames kept per cine.
    size : int or None
        Frame size; None draws it (384-768) per patient.
    workers : int or None
        Processes (None: all cores).
    patients : sequence of int, optional
        These patient numbers instead of the range (``n_patients`` and ``first_patient`` are then ignored).
    background : bool
        Keep each cine's static background (``FrameSet.background``), which only ``frame+residual``
        models read; False saves its memory and time.
    twins : bool
        Add each calcified cine's counterfactual twin: its frames with labelled calcium rendered
        again without the calcium (:func:`pool_acquisition` ``calcium_visible=False``), labelled
        calcium-free, as acquisition ``<name>~twin`` of the same patient.
    display_processing_prob : float
        Probability per patient of XA display processing of the cine (:func:`pool_params`): 1 makes
        a processed copy of the same patients and frames (test pools; ``benchmarks/frame_score.py
        --display-processing``), whose labels may differ where the simulated annotators, who judge
        visibility on the processed frames, see a deposit differently; 0 (default) for training,
        which augments instead.

    Returns
    -------
    FrameSet
    """
    from .dataset import FrameSet

    ids = list(patients) if patients is not None else [first_patient + i for i in range(int(n_patients))]
    recipe = PatientRecipe(n_frames=n_frames, frames_per_acquisition=frames_per_acquisition, size=size,
                           calcium_free_fraction=calcium_free_fraction, background=bool(background), twins=bool(twins),
                           display_processing_prob=float(display_processing_prob))
    return FrameSet.concat(_generate(ids, seed=seed, recipe=recipe, workers=workers, progress=progress), consume=True)


SURE_FRAMES = 16  # paired non-contrast frames every 64-frame pool cine has at least (its onset: 40-55 % in)


def frame_bytes(background: bool = True) -> int:
    """Bytes one training frame holds in a :class:`~CACTrainerLib.dataset.FrameSet` (512 grid): the non-contrast
    and contrast frames (float16), the calcium and ROI_GT masks (bool), and the cine background (float16) when
    the model reads it.

    >>> frame_bytes(False) / 2**20, frame_bytes(True) / 2**20
    (1.5, 2.0)
    """
    from .dataset import FRAME

    return FRAME * FRAME * (2 + 2 + 1 + 1 + (2 if background else 0))


def check_pool_memory(n_patients: int, frames_per_acquisition: int | None, *, background: bool = True) -> None:
    """Refuse, before any patient is generated, a pool whose frames alone cannot fit in the memory available now.

    Each pool patient gives ``frames_per_acquisition`` frames, up to the paired non-contrast frames of its
    64-frame cine (the contrast arrives after 40-55 % of it: more than ``SURE_FRAMES``), so ``n_patients`` of
    them hold at least ``n_patients x min(frames_per_acquisition, SURE_FRAMES)`` frames: a lower bound, so a
    pool refused here could never have been trained on (counterfactual twins and the copies made while a window
    is built only add to it).  Hours of generation are not spent first, and the kernel's OOM killer does not
    stop the run (or another program) without a word.
    """
    from CACIdentifierLib.cine import memory_short, memory_text

    # None keeps every paired frame (dataset.choose_frames): at least SURE_FRAMES of them.
    frames_per_acquisition = min(int(frames_per_acquisition or SURE_FRAMES), SURE_FRAMES)
    need = int(n_patients) * frames_per_acquisition * frame_bytes(background)
    if (available := memory_short(need)) is not None:
        raise CacError(f"--phantom-pool {n_patients}: {n_patients} patients x {frames_per_acquisition} frames hold "
                       f"at least {memory_text(need)}, more than this machine can spare ({memory_text(available)} "
                       "available); give fewer patients (with --refresh-patients a smaller window still sees new "
                       "ones every epoch) or fewer --frames-per-acquisition, or close other programs")


def _check_window_memory(sets) -> None:
    """Refuse, in one line, a window that this machine cannot hold now, instead of the kernel's OOM killer
    stopping the run (or another program) without a word; the last epoch's checkpoint stays for ``--resume``.

    The window's frames are about to be copied into one set; its patients' own arrays (or the previous
    window they are views of) still hold memory, so only the copy has to fit in what is available.
    """
    from CACIdentifierLib.cine import memory_short, memory_text

    need = sum(fs.nbytes for fs in sets)
    if (available := memory_short(need)) is not None:
        raise CacError(f"the next training window ({len(sets)} patients) needs about "
                       f"{memory_text(need)}, more than this machine can spare ({memory_text(available)} "
                       "available); close other programs and continue with --resume, or train on fewer patients "
                       "(--phantom-pool) or frames (--frames-per-acquisition)")


class PatientStream:
    """Training patients that change every epoch: a window sliding along an endless numbered sequence.

    Epoch ``e`` trains on ``len(patients)`` consecutive patients of the sequence
    ``patients[0], patients[1], ..., then next_patient, next_patient + 1, ...``, starting
    at ``e * refresh``: each epoch the ``refresh`` oldest patients leave and as many
    never-seen ones arrive, so a long run cannot memorise its patients, while
    every patient still serves ``len(patients) / refresh`` epochs (a generated cine
    costs about as much as training on its patches ~1-2 times).  A window depends
    only on the epoch, so ``--resume`` regenerates exactly the window it stopped in.
    Only the current window is kept in memory, once: the patients kept for the next
    windows are views of the set it returns (and, after :meth:`prefetch`, the next
    window's new patients).

    :meth:`prefetch` starts generating the next window's new patients in worker
    processes of lower priority while the current epoch trains, so the epoch after
    it waits only for what is not done yet; the frames are the same as without it.
    Call :meth:`close` when done (it ends unfinished workers).

    Examples
    --------
    >>> s = PatientStream([3, 5, 8], refresh=2, next_patient=20, seed=1)
    >>> s.patients(0), s.patients(1), s.patients(2), s.seen(2)
    ([3, 5, 8], [8, 20, 21], [21, 22, 23], 7)
    """

    def __init__(self, patients, refresh: int, *, next_patient: int, seed: int, n_frames: int = 64,
                 frames_per_acquisition: int = 6, size: int | None = None, calcium_free_fraction: float = 0.3,
                 workers: int | None = None, progress: ProgressCallback = no_progress, background: bool = True,
                 ahead: bool = True, twins: bool = False):
        self.start = [int(p) for p in patients]
        if not self.start:
            raise ValueError("PatientStream needs at least one patient")
        if any(p >= next_patient for p in self.start):
            raise ValueError("next_patient must follow every starting patient (new patients are never reused ones)")
        self.refresh, self.next_patient, self.seed = int(refresh), int(next_patient), int(seed)
        self.recipe = PatientRecipe(n_frames=n_frames, frames_per_acquisition=frames_per_acquisition, size=size,
                                    calcium_free_fraction=calcium_free_fraction, background=bool(background),
                                    twins=bool(twins))
        self.workers = workers
        self.progress = progress
        self._cache: dict = {}
        self.ahead = bool(ahead)  # False: prefetch() does nothing (every window is generated when asked for)
        self._pending = None  # (patient numbers, multiprocessing.Pool, AsyncResult) of a prefetch

    def patients(self, epoch: int) -> list:
        """Patient numbers of epoch ``epoch``'s window."""
        n, first = len(self.start), int(epoch) * self.refresh
        return [self.start[i] if i < n else self.next_patient + i - n for i in range(first, first + n)]

    def seen(self, epoch: int) -> int:
        """Distinct patients in the windows of epochs 0..``epoch``."""
        return len(self.start) + int(epoch) * self.refresh

    def __call__(self, epoch: int):
        """The FrameSet of epoch ``epoch`` (generates the patients it has not generated yet)."""
        from .dataset import FrameSet

        ids = self.patients(epoch)
        self._collect(ids)
        missing = [p for p in ids if p not in self._cache]
        if missing:
            for p, fs in zip(missing, _generate(missing, seed=self.seed, recipe=self.recipe, workers=self.workers,
                                                    progress=self.progress)):
                self._cache[p] = fs
        self._cache = {p: self._cache[p] for p in ids}  # only the window stays in memory
        _check_window_memory([self._cache[p] for p in ids])
        window = FrameSet.concat([self._cache[p] for p in ids])
        # The window's patients are kept as views of the set training gets, not as a second copy of it:
        # one window in memory during an epoch instead of two (the set is never written to).
        start = 0
        for p in ids:
            n = len(self._cache[p])
            self._cache[p] = window.rows(start, start + n)
            start += n
        # The patients' own arrays were just freed; without a trim glibc keeps their pages (a twins arm stayed at
        # 10.3 GB resident with its window held once).
        release_freed_memory()
        return window

    def prefetch(self, epoch: int) -> bool:
        """Start generating the patients of epoch ``epoch``'s window not generated yet, in the background.

        Returns whether anything was started.  Nothing is started with ``ahead=False``, in a
        data-parallel run (the ranks exchange patients collectively, in step) or when every
        patient is already generated.
        """
        from . import distributed

        ctx = distributed.current()
        if not self.ahead or self._pending is not None or (ctx is not None and ctx.world > 1):
            return False
        missing = [p for p in self.patients(epoch) if p not in self._cache]
        if not missing:
            return False
        jobs = _jobs(missing, self.seed, self.recipe)
        workers = max(1, min(len(jobs), int(self.workers or os.cpu_count() or 1)))
        pool = multiprocessing.Pool(workers, initializer=_background_worker)
        self._pending = (missing, pool, pool.map_async(_one, jobs, chunksize=1))
        return True

    def _collect(self, ids) -> None:
        """Take a prefetch's patients into the cache (waiting for them) if this window needs them."""
        if self._pending is None:
            return
        patients, pool, result = self._pending
        if not set(patients) & set(ids):
            self.close()  # a prefetch for another window (not what training asks for): drop it
            return
        try:
            made = result.get()
        except (CacError, MemoryError) as exc:
            # Made ahead while training ran, a patient can fail for a moment's cause (memory short while
            # something else ran: a training of hours stopped so).  The window's patients are then made
            # again in the foreground (__call__); a second failure stops the run, which --resume continues.
            warnings.warn(f"phantom pool: generating the next patients ahead failed ({exc}); generating them "
                          "again now", CacWarning, stacklevel=3)
            return
        finally:
            self._pending = None
            pool.terminate()
            pool.join()
        for p, (fs, _) in zip(patients, made):
            self._cache[p] = fs
        _warn_periodicity(sum(w for _, w in made), len(made))
        self.progress(len(made), len(made), "phantom pool")

    def close(self) -> None:
        """End a prefetch still running (its patients are dropped)."""
        if self._pending is not None:
            _, pool, _ = self._pending
            self._pending = None
            pool.terminate()
            pool.join()

    def preload(self, fs) -> None:
        """Reuse frames already generated for starting patients (``fs``: whole patients of this stream's seed)."""
        names = np.array(fs.patient, dtype=object)
        for p in self.start:
            rows = np.nonzero(names == patient_name(self.seed, p))[0]
            if rows.size:
                self._cache[p] = fs.subset(rows)
