"""Domain randomisation of the phantom: what real runs vary in, drawn per acquisition.

A model trained on one phantom setting learns that setting: its noise, its
contrast of calcium, its display curve.  Real runs and other generators differ in
all of them, and they contain dense objects that are *not* calcium (sternal
wires, surgical clips, stents) which a calcium detector must learn to ignore.
:func:`randomized_params` draws a :class:`~CACTrainerLib.phantom.PhantomParams`
from wide ranges; :func:`add_metal_and_display` adds the metal and the display
curve to a renderer (called by :func:`~CACTrainerLib.phantom.generate_acquisition`
when ``metal_prob > 0`` or ``display == "gamma"``).

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

import numpy as np

from . import phantom_anatomy as anat

# The ranges of :func:`randomized_params` (documented in docs/phantom.md).
SIZES = (384, 512, 512, 512, 768)
FPS = (7.5, 12.5, 15.0, 15.0, 30.0)


def _log_uniform(rng, lo, hi) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def randomized_params(rng: np.random.Generator, *, n_frames: int = 200, size: int | None = None,
                      fps: float | None = None, calcium_free_fraction: float = 0.3):
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

    Returns
    -------
    PhantomParams
    """
    from .phantom import PhantomParams

    size = int(size or rng.choice(SIZES))
    d_lo = rng.uniform(2.2, 3.5)
    return PhantomParams(
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
    )


def _sternal_wires(rng, shape, spacing_mm: float) -> np.ndarray:
    """Line integrals of 2-6 stacked wire loops over the sternum (a thorax-canvas layer)."""
    H, W = shape
    out = np.zeros(shape, np.float32)
    n = int(rng.integers(2, 7))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    c0 = rng.uniform(0.3, 0.7) * W
    r0 = rng.uniform(0.05, 0.4) * H
    gap = rng.uniform(18, 30) / spacing_mm
    tilt = rng.uniform(-0.15, 0.15)
    for k in range(n):
        cr, cc = r0 + k * gap, c0 + k * gap * tilt + rng.normal(0, 2 / spacing_mm)
        a, b = rng.uniform(7, 14) / spacing_mm, rng.uniform(2, 5) / spacing_mm
        d = np.sqrt(((xx - cc) / a) ** 2 + ((yy - cr) / b) ** 2)
        thick = rng.uniform(0.8, 1.3) / spacing_mm
        out += (rng.uniform(1.0, 2.0) * np.exp(-(((d - 1.0) * b / thick) ** 2))).astype(np.float32)
    return out


def _clip(rng, vessels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A surgical clip: a short dense bar a few mm beside a vessel (3D sphere chain)."""
    v = vessels[int(rng.integers(len(vessels)))]
    p = v.points[int(rng.integers(len(v.points)))]
    side = anat._unit(rng.normal(size=3))
    direction = anat._unit(rng.normal(size=3))
    length, h = rng.uniform(3.0, 6.0), 0.12
    s = np.arange(-length / 2, length / 2 + h, h)
    pts = p + side * rng.uniform(2.0, 6.0) + s[:, None] * direction
    mu = rng.uniform(1.0, 2.5)
    return pts, np.full(len(s), 0.35), np.full(len(s), 1.5 * h * mu)


def _stent(rng, vessels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stent: six zig-zag struts on the wall of a main-vessel segment (3D sphere chains)."""
    mains = [v for v in vessels if v.main] or list(vessels)
    v = mains[int(rng.integers(len(mains)))]
    arc = v.arclength
    length = rng.uniform(8.0, 20.0)
    a0 = rng.uniform(arc[0], max(arc[0], arc[-1] - length))
    h = 0.1
    s = np.arange(a0, min(a0 + length, arc[-1]), h)
    line = np.stack([np.interp(s, arc, v.points[:, k]) for k in range(3)], axis=1)
    rad = np.interp(s, arc, v.radius)
    i = int(np.searchsorted(arc, s[len(s) // 2]))
    i0, i1 = max(0, i - 3), min(len(v.points) - 1, i + 3)
    tangent = anat._unit(v.points[i1] - v.points[i0])
    normal = anat._unit(np.cross(tangent, [0.3, 0.5, 0.8]))
    binormal = np.cross(tangent, normal)
    pts = []
    for k in range(6):
        ang = 2 * np.pi * k / 6 + 0.3 * np.sin(2 * np.pi * (s - a0) / 1.5)
        pts.append(line + rad[:, None] * (np.cos(ang)[:, None] * normal + np.sin(ang)[:, None] * binormal))
    pts = np.concatenate(pts)
    mu = rng.uniform(3.0, 5.0)
    return pts, np.full(len(pts), 0.06), np.full(len(pts), 1.5 * h * mu)


def add_metal_and_display(renderer, rng: np.random.Generator) -> None:
    """Add metal objects (with probability ``metal_prob``) and the display curve to a renderer."""
    p = renderer.p
    metal = []
    wires = False
    if rng.random() < p.metal_prob:
        if rng.random() < 0.6:
            renderer.thorax = renderer.thorax + _sternal_wires(rng, renderer.thorax.shape,
                                                               renderer.view.spacing_mm)
            wires = True
        for _ in range(int(rng.integers(0, 4))):
            metal.append(_clip(rng, renderer.pat.vessels))
        if rng.random() < 0.5:
            metal.append(_stent(rng, renderer.pat.vessels))
    renderer.metal_heart = metal
    renderer.metal_info = {"sternal_wires": wires, "heart_metal_objects": len(metal)}
    if p.display == "gamma":
        renderer.display_gamma = float(rng.uniform(*p.display_gamma_range))
