"""Dense metal that is not calcium, the display curve and display processing, added to a phantom renderer.

Sternal wires, surgical clips and stents are dense like calcium, and a calcium
detector must learn to ignore them.  :func:`add_metal_and_display` is called by
:func:`CACTrainerLib.phantom.generate_acquisition` when ``metal_prob > 0``,
``display == "gamma"`` or ``display_processing_prob > 0``; the ranges are documented
in docs/phantom.md.
"""

from __future__ import annotations

import numpy as np

from . import phantom_anatomy as anat


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
    """Add metal objects (with probability ``metal_prob``), the display curve and display processing
    (with probability ``display_processing_prob``) to a renderer."""
    p = renderer.p
    metal = []
    wires = None
    if rng.random() < p.metal_prob:
        if rng.random() < 0.6:
            wires = _sternal_wires(rng, renderer.thorax.shape, renderer.view.spacing_mm)
            renderer.thorax = renderer.thorax + wires
        for _ in range(int(rng.integers(0, 4))):
            metal.append(_clip(rng, renderer.pat.vessels))
        if rng.random() < 0.5:
            metal.append(_stent(rng, renderer.pat.vessels))
    renderer.metal_heart = metal
    renderer.metal_wires = wires  # kept apart too, for the per-frame metal footprint (truth)
    renderer.metal_info = {"sternal_wires": wires is not None, "heart_metal_objects": len(metal)}
    if p.display == "gamma":
        renderer.display_gamma = float(rng.uniform(*p.display_gamma_range))
    # Drawn after the metal and the curve, so those stay as they were.  The ranges are the training
    # augmentation's (dataset.Augment.display_params), given for 512 px and scaled with the frame.
    if p.display_processing_prob > 0 and rng.random() < p.display_processing_prob:
        scale = p.rows / 512.0
        renderer.display_processing = (float(rng.uniform(8.0, 48.0)) * scale, float(rng.uniform(0.0, 2.0)),
                                       float(rng.uniform(0.7, 3.0)) * scale, float(rng.uniform(0.0, 1.5)))
