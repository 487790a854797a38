"""Phantom pools kept on disk, shared by the benchmark scripts that score models on them.

Generating a pool costs minutes (compare_models.py, session 55, a 2-core Intel Xeon: 95 s for the 72
validation patients, 46 s for a 36-patient test fold); ``frame_score.py`` and ``compare_models.py`` draw the
same ones (the same ``phantom_pool`` arguments), so with ``--cache DIR`` a pool made by one is read by the
other, memory-mapped.  The names
say what a pool is: ``val{N}-{seed}``, ``test{N}-{seed}_{seed}...`` and ``-dp{P}`` for display processing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def val_pool_name(n: int, seed: int) -> str:
    """The cache name of a validation pool of ``n`` patients of phantom_pool seed ``seed``.

    >>> val_pool_name(72, 2000)
    'val72-2000'
    """
    return f"val{n}-{seed}"


def test_pool_name(n: int, seeds, display_processing: float = 0.0) -> str:
    """The cache name of pooled test folds of ``n`` patients per seed, with their display-processing share.

    >>> test_pool_name(36, [43000, 44000])
    'test36-43000_44000'
    >>> test_pool_name(36, "43000,44000", display_processing=1)
    'test36-43000_44000-dp1'
    """
    seeds = seeds.split(",") if isinstance(seeds, str) else seeds
    name = f"test{n}-{'_'.join(str(int(s)) for s in seeds)}"
    return name + (f"-dp{display_processing:g}" if display_processing > 0 else "")


def cached_pool(cache: Path | None, name: str, make):
    """``make()``'s FrameSet, kept in ``cache/name/`` as one .npy per field (read back memory-mapped).

    Without a cache it is ``make()``; with one, a pool already there is read (``make`` is not called).
    """
    import dataclasses

    from CACTrainerLib.dataset import FrameSet

    if cache is None:
        return make()
    folder = Path(cache) / name
    names = [f.name for f in dataclasses.fields(FrameSet)]
    if (folder / "done").exists():
        return FrameSet(**{n: (np.load(folder / f"{n}.npy", mmap_mode="r") if n not in ("acquisition", "patient")
                               else np.load(folder / f"{n}.npy").tolist()) for n in names})
    fs = make()
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        np.save(folder / f"{n}.npy", np.asarray(getattr(fs, n)))
    (folder / "done").write_text("")
    return fs
