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

import numpy as np
from CACIdentifierLib.errors import CacWarning
from CACIdentifierLib.progress import ProgressCallback, no_progress


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent reports it and ends the workers, which must
    # not print tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _one(args) -> object:
    seed, patient, n_frames, fpa, size, calcium_free_fraction = args
    from . import dataset
    from .phantom import generate_acquisition
    from .phantom_domain import randomized_params

    rng = np.random.default_rng([int(seed), int(patient), 0xD0])
    params = randomized_params(rng, n_frames=n_frames, size=size, calcium_free_fraction=calcium_free_fraction)
    # Onset in the middle third, so both parts hold about two beats.
    params.onset_fraction_range = (0.4, 0.55)
    params.early_onset_prob = 0.0
    acq = generate_acquisition(params, seed=seed, patient=patient, acquisition=0)
    # Short phantom cines often lack a clear periodicity; one summary line beats a warning per patient.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacWarning)
        fs = dataset.frames_from_acquisition(acq, acquisition=f"S{seed}_P{patient:05d}",
                                             patient=f"S{seed}_P{patient:05d}", frames_per_acquisition=fpa)
    return fs, len(caught) > 0


def phantom_pool(n_patients: int, *, seed: int = 0, first_patient: int = 0, n_frames: int = 64,
                 frames_per_acquisition: int = 6, size: int | None = None, calcium_free_fraction: float = 0.3,
                 workers: int | None = None, progress: ProgressCallback = no_progress):
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

    Returns
    -------
    FrameSet
    """
    from .dataset import FrameSet

    jobs = [(seed, first_patient + i, n_frames, frames_per_acquisition, size, calcium_free_fraction)
            for i in range(int(n_patients))]
    workers = max(1, int(workers or os.cpu_count() or 1))
    sets, warned = [], 0
    if workers == 1:
        for i, job in enumerate(jobs):
            fs, w = _one(job)
            sets.append(fs)
            warned += w
            progress(i + 1, len(jobs), "phantom pool")
    else:
        # A Pool, not a ProcessPoolExecutor: leaving the block (Ctrl-C included) terminates the workers at
        # once, where the executor would wait for the cines they are generating (seconds each).
        with multiprocessing.Pool(workers, initializer=_ignore_sigint) as pool:
            for i, (fs, w) in enumerate(pool.imap(_one, jobs, chunksize=1)):
                sets.append(fs)
                warned += w
                progress(i + 1, len(jobs), "phantom pool")
    if warned:
        warnings.warn(f"phantom pool: {warned} of {len(jobs)} cines showed no clear cardiac periodicity (short "
                      f"phantom cines); their non-contrast frames were paired with the most similar contrast "
                      f"frames", CacWarning, stacklevel=2)
    return FrameSet.concat(sets)
