"""Domain randomisation of the phantom: what real runs vary in, drawn per acquisition.

A model trained on one phantom setting learns that setting: its noise, its
contrast of calcium, its display curve.  Real runs and other generators differ in
all of them, and they contain dense objects that are *not* calcium (sternal
wires, surgical clips, stents) which a calcium detector must learn to ignore.
:func:`randomized_params` draws a :class:`~CACTrainerLib.phantom.PhantomParams`
from wide ranges; :mod:`.phantom_metal` renders the metal and the display curve.

Examples
--------
>>> import numpy as np
>>> from CACTrainerLib.phantom_domain import randomized_params
>>> p = randomized_params(np.random.default_rng(0), n_frames=60)
>>> p.bits in (8, 10, 12) and p.n_frames == 60
True
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

# The ranges of :func:`randomized_params` (documented in docs/phantom.md).
SIZES = (384, 512, 512, 512, 768)
FPS = (7.5, 12.5, 15.0, 15.0, 30.0)


def _log_uniform(rng, lo, hi) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# The PhantomParams fields that cac phantom options set and randomized_params draws over a base (its other
# draws have no option): cac phantom --randomize refuses --bits, --photons, --calcium-count, --calcium-contrast,
# and writes a given --annotator-min-snr over the draw.
DRAWN = ("bits", "photons", "calcium_count_range", "calcium_mu_per_mm", "annotator_min_snr")


def randomized_params(rng: np.random.Generator, *, n_frames: int = 200, size: int | None = None,
                      fps: float | None = None, calcium_free_fraction: float = 0.3, base=None):
    """A :class:`PhantomParams` drawn from wide ranges (one acquisition's domain).

    Parameters
    ----------
    rng : numpy Generator
    n_frames : int
        Frames of the cine.
    size : int or None
        Frame size (square); None draws one of :data:`SIZES`.
    fps : float or None
        Frame rate; None draws one of :data:`FPS`.
    calcium_free_fraction : float
        Fraction of calcium-free patients.
    base : PhantomParams, optional
        Where the fields this function does not draw come from (heart rate, contrast, onset, side,
        respiration, ECG ...): a user's settings; default :class:`PhantomParams`'s defaults.  The
        draws do not depend on it.

    Returns
    -------
    PhantomParams
    """
    from .phantom import PhantomParams

    size = int(size or rng.choice(SIZES))
    d_lo = rng.uniform(2.2, 3.5)
    drawn = dict(
        rows=size, cols=size, n_frames=int(n_frames), fps=float(fps or rng.choice(FPS)),
        bits=int(rng.choice([8, 10, 12])),
        photons=_log_uniform(rng, 250, 6000),
        blur_px=float(rng.uniform(0.4, 1.2)),
        vignetting=float(rng.uniform(0.0, 0.35)),
        exposure_drift=float(rng.uniform(0.0, 0.03)),
        collimator_prob=0.7,
        metal_prob=0.35,
        display="gamma" if rng.random() < 0.4 else "log",
        catheter=bool(rng.random() < 0.9),
        vessel_diameter_mm_range=(float(d_lo), float(d_lo + rng.uniform(0.4, 1.2))),
        tortuosity=float(rng.uniform(0.6, 1.6)),
        heart_mu_per_mm=float(rng.uniform(0.006, 0.012)),
        rib_mu_per_mm=float(rng.uniform(0.01, 0.04)),
        lung_texture=float(rng.uniform(0.04, 0.1)),
        lung_markings=int(rng.integers(20, 121)),
        calcium_free_fraction=float(calcium_free_fraction),
        calcium_count_range=(1, int(rng.integers(2, 7))),
        calcium_size_mm_range=(0.5, float(rng.uniform(3.0, 7.0))),
        calcium_mu_per_mm=_log_uniform(rng, 0.06, 0.35),
        calcium_shape_probs=(0.6, 0.25, 0.15),
        contrast_spread=(0.6, 1.3),
        # Annotators mark what they can see (Rose criterion about 5): invisible calcium labelled as
        # calcium would teach the classifier to guess from the vessels.  Drawn last, so every draw
        # above is as before.
        annotator_min_snr=float(rng.uniform(5.0, 8.0)),
    )
    return replace(base, **drawn) if base is not None else PhantomParams(**drawn)
