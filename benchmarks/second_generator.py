"""A second, independently written generator of synthetic angiography cines, and a cross-domain benchmark.

    python benchmarks/second_generator.py MODEL.safetensors [MODEL2 ...] [--cines 8] [--free 8] [--seed 0]
        [--out second_generator.json] [--png montage.png]

The models are trained on the project's own domain-randomised phantom.  A model that learnt that
phantom's particular look (its anatomy, noise, calcium texture) rather than calcium can score well
on held-out phantom patients and still fail on cines from another generator.  This script is such
another generator, written without reading the project's phantom: a background of smooth random
fields with a spine and ribs, lungs brighter; a coronary tree of random smooth walks with Gaussian
cross-sections and a guiding catheter; a periodic non-rigid heart deformation and a small
respiratory drift; iodine filling the vessels over about four frames; calcium deposits on the
vessel wall; a metal wire or clip as a distractor in about half of the cines; an X-ray image chain
(log-domain attenuation, Poisson quantum noise at a random dose, blur, random display gamma,
8-bit output, collimator blades on 0-2 sides).

For each model the script runs the full pipeline (``CACIdentifierLib.inference.identify``: sync,
gating, stitching, refinement, exposed field) on every cine, with the true contrast onset, and
reports over the calcified cines the median (Q1-Q3) of the per-cine medians of IoM, HD (mm), ROI
precision and ROI area (% of the exposed field) and the per-cine frame sensitivity; over the
calcium-free cines the share of analysed frames with an ROI and the ROI area; ROI pixels outside
the exposed field (the pipeline's and the generator's true one).  As in the project's evaluation
(``evaluation.evaluate``, ``metrics.evaluate_masks``), IoM and HD compare the ROI with the frame's
calcium mask and the ROI precision with its ROI_GT; the IoM against ROI_GT is reported as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import expit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "CACIdentifier"))
from script_entry import check_models  # noqa: E402

# All lengths below are given for a 512-pixel frame and scaled with the frame size; the field of
# view stays the same (the pixel spacing grows when the frame is smaller).
REF_SIZE = 512


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """A smooth random field of zero mean and unit standard deviation.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (int, int)
        Output shape.
    scale_px : float
        Correlation length in output pixels.

    Returns
    -------
    field : (rows, cols) float32 ndarray
    """
    # White noise on a coarse grid, spline-interpolated up: cheap, and smooth at the given scale.
    coarse = max(4, int(round(max(shape) / max(scale_px, 1.0))) + 3)
    noise = rng.standard_normal((coarse, coarse))
    up = ndimage.zoom(noise, (shape[0] / coarse, shape[1] / coarse), order=3, mode="reflect")[: shape[0], : shape[1]]
    up = up - up.mean()
    return (up / (up.std() + 1e-9)).astype(np.float32)


def cardiac_waveform(phase) -> np.ndarray:
    """Contraction of the heart over one beat: 0 at end-diastole, 1 at end-systole.

    Two von Mises bumps on the circle of the phase: ventricular contraction peaking at 30 % of the
    beat, and a small negative bump at 90 % (the atrial kick fills the ventricles a little).

    Parameters
    ----------
    phase : array_like
        Cardiac phase in beats (only its fractional part matters).

    Returns
    -------
    c : ndarray
        Between about -0.12 and 1.

    Examples
    --------
    >>> float(np.round(cardiac_waveform(0.3), 3))
    1.0
    >>> bool(np.allclose(cardiac_waveform(0.1), cardiac_waveform(1.1)))
    True
    """
    a = 2 * np.pi * np.asarray(phase, float)
    return np.exp(2.5 * (np.cos(a - 2 * np.pi * 0.30) - 1)) - 0.12 * np.exp(12.0 * (np.cos(a - 2 * np.pi * 0.90) - 1))


def random_walk(rng: np.random.Generator, start, heading: float, length: float, curvature_sd: float,
                inside=None, step: float = 0.5) -> np.ndarray:
    """A smooth random curve: the heading integrates a low-pass filtered random curvature.

    Parameters
    ----------
    rng : numpy.random.Generator
    start : (float, float)
        First point (row, col).
    heading : float
        Initial direction in radians (0 = +col, pi/2 = +row).
    length : float
        Arc length in pixels.
    curvature_sd : float
        Standard deviation of the curvature (rad / px).
    inside : callable, optional
        ``inside(point) -> bool``: the walk ends where it first leaves the region (a vessel ends
        at the heart's border instead of curling back, which drew loops).
    step : float
        Distance between the points.

    Returns
    -------
    points : (n, 2) float ndarray
        At least two points.
    """
    n = max(2, int(length / step))
    # Curvature correlated over ~40 px of arc: a vessel bends smoothly, not in kinks.
    sigma = 40.0 / step
    kappa = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=sigma, mode="reflect")
    # Scaled by the filter's theoretical gain, not the sample's spread: a short walk's curvature is
    # nearly constant, and dividing by its small spread drew tight circles.
    kappa *= curvature_sd * np.sqrt(2.0 * np.sqrt(np.pi) * sigma)
    heading = heading + np.concatenate([[0.0], np.cumsum(kappa[:-1] * step)])
    steps = step * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    pts = np.asarray(start, float) + np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], axis=0)])
    if inside is not None:
        out = np.nonzero(~np.array([inside(q) for q in pts[::4]]))[0]
        if out.size:
            pts = pts[: max(2, 4 * int(out[0]))]
    return pts


def render_tube(shape: tuple[int, int], points: np.ndarray, radius: np.ndarray, profile, pad: float) -> np.ndarray:
    """Evaluate ``profile(d, r)`` around a centreline: ``d`` the distance to the nearest point, ``r`` its radius.

    Parameters
    ----------
    shape : (int, int)
    points : (n, 2) float ndarray
        Centreline (row, col), densely sampled (<= 0.5 px apart).
    radius : (n,) float ndarray
        Radius at each point.
    profile : callable
        ``profile(d, r) -> value`` on arrays of distances and radii.
    pad : float
        How far from the centreline the profile is evaluated (pixels).

    Returns
    -------
    (rows, cols) float32 ndarray, zero beyond ``pad``.
    """
    out = np.zeros(shape, np.float32)
    ij = np.round(points).astype(int)
    keep = (ij[:, 0] >= 0) & (ij[:, 0] < shape[0]) & (ij[:, 1] >= 0) & (ij[:, 1] < shape[1])
    if not keep.any():
        return out
    ij, pts, rad = ij[keep], points[keep], radius[keep]
    # Work in the bounding box grown by the pad: a vessel covers a small part of the frame.
    r0, c0 = np.maximum(ij.min(0) - int(pad) - 1, 0)
    r1, c1 = np.minimum(ij.max(0) + int(pad) + 2, shape)
    box = (r1 - r0, c1 - c0)
    seeds = np.zeros(box, bool)
    owner = np.zeros(box, int)
    seeds[ij[:, 0] - r0, ij[:, 1] - c0] = True
    owner[ij[:, 0] - r0, ij[:, 1] - c0] = np.arange(len(ij))
    # Nearest centreline pixel by the distance transform; the exact distance to that point's
    # sub-pixel position then keeps the cross-section smooth.
    _, (ii, jj) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    k = owner[ii, jj]
    rows, cols = np.mgrid[r0:r1, c0:c1]
    d = np.hypot(rows - pts[k, 0], cols - pts[k, 1])
    val = np.where(d <= pad, profile(d, rad[k]), 0.0)
    out[r0:r1, c0:c1] = val
    return out


def _ellipse_rho(rows, cols, centre, axes, angle):
    """Normalised elliptical radius (1 on the ellipse) of the points (rows, cols)."""
    dy, dx = rows - centre[0], cols - centre[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u = ca * dx + sa * dy
    v = -sa * dx + ca * dy
    return np.sqrt((u / axes[1]) ** 2 + (v / axes[0]) ** 2)


# ----------------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------------


def thorax_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """Static attenuation (log domain, relative to soft tissue) of the thorax behind the heart.

    Smooth random fields at two scales; lungs (less attenuating, so brighter); a vertebral column
    as a tilted band of vertebral bodies with disc spaces and pedicles; ribs as curved bands with
    denser cortical edges; a liver/diaphragm dome at the bottom in some views.

    Returns
    -------
    mu : (size, size) float32 ndarray
    params : dict
    """
    k = size / REF_SIZE
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    mu = 0.10 * smooth_field(rng, (size, size), 90 * k) + 0.04 * smooth_field(rng, (size, size), 18 * k)

    # Lungs: two large soft ellipses either side of the mediastinum.
    mid = rng.uniform(0.42, 0.58) * size
    lung = np.zeros((size, size), np.float32)
    for side in (-1, 1):
        centre = (rng.uniform(0.25, 0.45) * size, mid + side * rng.uniform(0.22, 0.32) * size)
        axes = (rng.uniform(0.35, 0.5) * size, rng.uniform(0.18, 0.26) * size)
        rho = _ellipse_rho(rows, cols, centre, axes, rng.uniform(-0.2, 0.2))
        lung = np.maximum(lung, expit((1.0 - rho) / 0.06))
    lung_mu = rng.uniform(0.45, 0.8)
    mu -= lung_mu * lung

    # Spine: a tilted band; vertebral bodies repeat along it, separated by less dense discs.
    spine_x = rng.uniform(0.2, 0.8) * size
    tilt = np.deg2rad(rng.uniform(-10, 10))
    half_w = rng.uniform(0.07, 0.11) * size
    along = (rows - size / 2) * np.cos(tilt) - (cols - spine_x) * np.sin(tilt)
    across = (rows - size / 2) * np.sin(tilt) + (cols - spine_x) * np.cos(tilt)
    band = expit((half_w - np.abs(across)) / (3 * k))
    period = rng.uniform(55, 75) * k
    frac = (along / period + rng.uniform()) % 1.0
    body = expit((0.38 - np.abs(frac - 0.5)) * period / (2.0 * k))  # disc space near 0/1
    endplate = np.exp(-((np.abs(frac - 0.5) - 0.38) * period / (1.5 * k)) ** 2)
    spine_mu = rng.uniform(0.35, 0.6)
    mu += spine_mu * band * (0.55 + 0.35 * body + 0.25 * endplate)
    for side in (-1, 1):  # pedicles: small dense ovals at each vertebra's upper corners
        ped = np.exp(-(((np.abs(frac - 0.35) * period) / (7 * k)) ** 2 + ((across - side * 0.65 * half_w) / (6 * k)) ** 2))
        mu += 0.12 * spine_mu * ped

    # Ribs: parabolic arcs across the chest, with denser cortical edges.
    n_ribs = int(rng.integers(4, 8))
    y0s = np.sort(rng.uniform(-0.1, 0.9, n_ribs)) * size
    for y0 in y0s:
        curv = rng.uniform(0.6, 1.4) / size
        xc = rng.uniform(0.2, 0.8) * size
        slope = rng.uniform(-0.35, 0.35)
        centre_y = y0 + curv * (cols - xc) ** 2 + slope * (cols - xc)
        half = rng.uniform(7, 11) * k
        d = np.abs(rows - centre_y)
        inner = expit((half - d) / (1.2 * k))
        cortex = np.exp(-(((d - half * 0.85) / (1.5 * k)) ** 2))
        mu += rng.uniform(0.1, 0.2) * inner + rng.uniform(0.05, 0.12) * cortex

    # Diaphragm / liver dome at the bottom (absent when it lies below the frame).
    dome_y = rng.uniform(0.78, 1.1) * size
    dome_x = rng.uniform(0.3, 0.7) * size
    edge = dome_y + 0.9 / size * (cols - dome_x) ** 2
    mu += rng.uniform(0.5, 0.8) * expit((rows - edge) / (5 * k)) * (1 - 0.7 * lung)
    return mu.astype(np.float32), {"spine_col": float(spine_x), "ribs": n_ribs, "lung_mu": float(lung_mu)}


def coronary_tree(rng: np.random.Generator, size: int, heart: dict) -> list[dict]:
    """Centrelines and radii of a coronary tree on the heart, in the heart's reference frame.

    Two or three main vessels leave a common ostium on the upper heart border and cross the
    heart, each with two to five thinner side branches; every vessel ends at the heart border.
    Radii (pixels) taper along the vessel.

    Returns
    -------
    vessels : list of dict
        ``points`` (n, 2), ``radius`` (n,), ``main`` (bool), ``tree`` (index of the main vessel).
    """
    k = size / REF_SIZE
    centre, axes, angle = heart["centre"], heart["axes"], heart["angle"]

    def inside(p):
        return float(_ellipse_rho(p[0], p[1], centre, axes, angle)) < 1.0

    # Ostium on the upper part of the heart border (rows grow downwards).
    t = rng.uniform(1.2 * np.pi, 1.8 * np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = axes[1] * 0.9 * np.cos(t), axes[0] * 0.9 * np.sin(t)
    ostium = np.array([centre[0] + sa * u + ca * v, centre[1] + ca * u - sa * v])
    base = np.arctan2(centre[0] - ostium[0], centre[1] - ostium[1])
    vessels = []
    n_main = int(rng.integers(2, 4))
    spread = np.linspace(-1, 1, n_main) * rng.uniform(0.45, 0.8) + rng.normal(0, 0.1, n_main)
    for m in range(n_main):
        length = rng.uniform(0.45, 0.8) * size
        pts = random_walk(rng, ostium, base + spread[m], length, rng.uniform(0.002, 0.006) / k, inside)
        s = np.linspace(0, 1, len(pts)) * len(pts) * 0.5 / length  # arc length / intended length
        r0 = rng.uniform(3.5, 5.5) * k
        rad = r0 * (1 - 0.6 * s)
        vessels.append({"points": pts, "radius": rad, "main": True, "tree": m})
        if len(pts) < 40:
            continue
        for _ in range(int(rng.integers(2, 6))):
            i = int(rng.uniform(0.15, 0.8) * len(pts))
            d = pts[min(i + 1, len(pts) - 1)] - pts[max(i - 1, 0)]
            h = np.arctan2(d[0], d[1]) + rng.choice([-1, 1]) * np.deg2rad(rng.uniform(25, 65))
            bl = rng.uniform(0.08, 0.3) * size
            bpts = random_walk(rng, pts[i], h, bl, rng.uniform(0.003, 0.01) / k, inside)
            br = rng.uniform(0.45, 0.7) * rad[i] * (1 - 0.55 * np.linspace(0, 1, len(bpts)))
            vessels.append({"points": bpts, "radius": br, "main": False, "tree": m})
    return vessels


def catheter_path(rng: np.random.Generator, size: int, ostium: np.ndarray) -> np.ndarray:
    """A guiding catheter: a cubic Bezier curve from the ostium to the bottom or a side edge of the frame."""
    end = np.array([size * 1.05, rng.uniform(0.3, 0.9) * size]) if rng.uniform() < 0.7 else \
        np.array([rng.uniform(0.6, 1.0) * size, size * 1.05])
    c1 = ostium + rng.uniform(-0.15, 0.05, 2) * size + np.array([-0.1 * size, 0])
    c2 = end + np.array([-rng.uniform(0.3, 0.5) * size, rng.uniform(-0.15, 0.15) * size])
    n = int(3 * size)
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * ostium + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t ** 2 * c2 + t ** 3 * end


def deposit_mask(rng: np.random.Generator, size: int, vessels: list[dict], n: int,
                 avoid: float) -> tuple[np.ndarray, list[dict]]:
    """Masks of ``n`` calcium deposits on vessel walls, in the heart's reference frame.

    Each sits on the wall (a radius from the centreline, either side) of the proximal 60 % of a
    vessel, mostly a main one, at least 0.22 of the frame from its edges (never under a
    collimator blade): either an elongated plaque along the vessel or a spotty cluster of 2-4
    small grains.  Areas are 3-40 px at 512 px (scaled with the frame area).

    Returns
    -------
    labels : (size, size) int ndarray
        0 outside the deposits, ``i + 1`` on deposit ``i`` (a spotty one may have several parts).
    deposits : list of dict
    """
    k = size / REF_SIZE
    lo_area, hi_area = max(2.0, 3.0 * k * k), 40.0 * k * k
    labels = np.zeros((size, size), np.int32)
    deposits: list[dict] = []
    rows, cols = np.mgrid[0:size, 0:size]
    mains = [v for v in vessels if v["main"]]
    branches = [v for v in vessels if not v["main"]] or mains
    for _ in range(200):
        if len(deposits) == n:
            break
        pool = mains if rng.uniform() < 0.8 else branches
        vessel = pool[rng.integers(len(pool))]
        pts, rad = vessel["points"], vessel["radius"]
        i = int(rng.uniform(0.08, 0.6) * (len(pts) - 2)) + 1
        d = pts[i + 1] - pts[i - 1]
        d /= np.linalg.norm(d) + 1e-9
        normal = np.array([-d[1], d[0]]) * rng.choice([-1, 1])
        centre = pts[i] + normal * rad[i] * rng.uniform(0.75, 1.0)
        if not (0.22 * size < centre[0] < 0.78 * size and 0.22 * size < centre[1] < 0.78 * size):
            continue
        if any(np.hypot(*(centre - np.asarray(q["centre"]))) < avoid for q in deposits):
            continue
        dy, dx = rows - centre[0], cols - centre[1]
        along, across = dy * d[0] + dx * d[1], dy * normal[0] + dx * normal[1]
        kind = "plaque" if rng.uniform() < 0.55 else "spotty"
        if kind == "plaque":
            a, b = rng.uniform(2.0, 6.0) * k, rng.uniform(0.9, 1.8) * k
            bend = rng.uniform(-0.08, 0.08) / k  # follows the wall's curve a little
            m = (along / a) ** 2 + ((across - bend * along ** 2) / b) ** 2 <= 1.0
        else:
            m = np.zeros((size, size), bool)
            for _g in range(int(rng.integers(2, 5))):
                oa, oc = rng.uniform(-4, 4) * k, rng.uniform(-0.8, 0.8) * k
                rr = rng.uniform(0.9, 1.6) * k
                m |= (along - oa) ** 2 + (across - oc) ** 2 <= rr ** 2
        area = int(m.sum())
        if not lo_area <= area <= hi_area:
            continue
        labels[m] = len(deposits) + 1
        deposits.append({"kind": kind, "area_px": area, "centre": [float(centre[0]), float(centre[1])],
                         "main_vessel": bool(vessel["main"])})
    return labels, deposits


def metal_distractor(rng: np.random.Generator, size: int, avoid: list, heart: dict) -> dict:
    """A short dense wire or clip segment (metal, not calcium), away from the deposits.

    Returns
    -------
    dict with ``mu`` (size, size) float32 attenuation, ``kind``, ``centre``, ``length_px`` and
    ``on_heart`` (a clip on the heart moves with it; a wire off the heart stays put).
    """
    k = size / REF_SIZE
    for _ in range(100):
        centre = rng.uniform(0.2, 0.8, 2) * size
        if all(np.hypot(*(centre - np.asarray(c))) > 45 * k for c in avoid):
            break
    kind = "clip" if rng.uniform() < 0.5 else "wire"
    length = rng.uniform(10, 28) * k
    ang = rng.uniform(0, np.pi)
    d = np.array([np.sin(ang), np.cos(ang)])
    pts = centre + np.linspace(-length / 2, length / 2, int(4 * length) + 2)[:, None] * d
    if kind == "wire":  # a twisted sternal-like wire: slightly wavy, uniform thickness
        pts += np.sin(np.linspace(0, 3 * np.pi, len(pts)))[:, None] * np.array([-d[1], d[0]]) * 1.2 * k
        rad = np.full(len(pts), rng.uniform(0.8, 1.2) * k)
    else:  # a surgical clip: a little wider with thick jaws at both ends
        s = np.linspace(-1, 1, len(pts))
        rad = (rng.uniform(0.9, 1.3) + 0.6 * (np.abs(s) > 0.75)) * k
    density = rng.uniform(2.0, 3.5)
    mu = render_tube((size, size), pts, rad,
                     lambda dd, r: density * np.clip(1 - (dd / np.maximum(r, 0.5)) ** 2, 0, None) ** 0.5, 4 * k + 3)
    on_heart = float(_ellipse_rho(centre[0], centre[1], heart["centre"], heart["axes"], heart["angle"])) < 1.0
    return {"mu": mu, "kind": kind, "centre": [float(centre[0]), float(centre[1])],
            "length_px": float(length), "density": float(density), "on_heart": bool(on_heart)}


def edge_enhance(frames: np.ndarray, sigma_px: float, gain: float) -> np.ndarray:
    """Unsharp masking of stored 8-bit frames, as XA systems' display processing does.

    ``frames + gain * (frames - G_sigma * frames)``, rounded and clipped to 0-255: edges get a
    dark and a bright rim, and small dark details (calcium, noise) are deepened.  The kernel's
    size is given for a 512-pixel frame and scaled with the frame size.

    >>> f = np.zeros((1, 64, 64), np.uint8); f[:, :, 32:] = 200; f[:, :, :32] = 50
    >>> e = edge_enhance(f, 3.0, 1.0)
    >>> int(e[0, 10, 5]), int(e[0, 10, 31]) < 50, int(e[0, 10, 32]) > 200
    (50, True, True)
    """
    if gain <= 0:
        return frames
    sigma = float(sigma_px) * frames.shape[-1] / REF_SIZE
    x = frames.astype(np.float32)
    blurred = ndimage.gaussian_filter(x, (0, sigma, sigma), mode="nearest")
    return np.clip(np.round(x + gain * (x - blurred)), 0, 255).astype(np.uint8)


def collimator(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Collimator blades on 0-2 random sides: a strong attenuation with a soft (penumbra) edge.

    Returns
    -------
    mu : (size, size) float32 ndarray
    field : (size, size) bool ndarray
        True where X-rays reach the detector unattenuated by a blade.
    sides : list of str
    """
    k = size / REF_SIZE
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    n = int(rng.choice([0, 1, 2], p=[0.3, 0.4, 0.3]))
    sides = [str(s) for s in rng.choice(["top", "bottom", "left", "right"], size=n, replace=False)]
    blade = np.zeros((size, size), np.float32)
    for side in sides:
        depth = rng.uniform(0.04, 0.10) * size
        tilt = np.tan(np.deg2rad(rng.uniform(-3, 3)))
        inward = {"top": rows, "bottom": size - 1 - rows, "left": cols, "right": size - 1 - cols}[side]
        across = cols if side in ("top", "bottom") else rows
        edge = depth + tilt * (across - size / 2)
        blade = np.maximum(blade, expit((edge - inward) / (1.5 * k)))
    return (rng.uniform(4.0, 6.0) * blade).astype(np.float32), blade < 0.5, sides


# ----------------------------------------------------------------------------------------------
# The cine
# ----------------------------------------------------------------------------------------------


def warp_deposits(labels: np.ndarray, n: int, hy: np.ndarray, hx: np.ndarray) -> np.ndarray:
    """The deposits' truth mask in a frame whose pixels sample the reference at ``(hy, hx)``.

    Each deposit is warped on its own (bilinear, kept at >= 0.5): a deposit of two or three
    pixels squeezed by the contraction would otherwise drop out of some frames, and the truth
    would blink.  One that falls below half a pixel keeps its strongest pixel.

    Parameters
    ----------
    labels : (rows, cols) int ndarray
        Deposit labels in the reference frame (:func:`deposit_mask`).
    n : int
        Number of deposits.
    hy, hx : (rows, cols) float ndarrays
        Reference coordinates of every output pixel (the backward map).

    Returns
    -------
    (rows, cols) bool ndarray
    """
    out = np.zeros(labels.shape, bool)
    for i in range(1, n + 1):
        rr, cc = np.nonzero(labels == i)
        if rr.size == 0:
            continue
        r0, r1, c0, c1 = rr.min() - 2, rr.max() + 2, cc.min() - 2, cc.max() + 2
        # Only output pixels that sample near the deposit: a local warp, cheap at any frame size.
        cand = np.nonzero((hy >= r0) & (hy <= r1) & (hx >= c0) & (hx <= c1))
        if cand[0].size == 0:
            continue
        crop = np.pad((labels[max(r0, 0): r1 + 1, max(c0, 0): c1 + 1] == i).astype(np.float32), 1)
        val = ndimage.map_coordinates(crop, [hy[cand] - max(r0, 0) + 1, hx[cand] - max(c0, 0) + 1],
                                      order=1, mode="constant")
        keep = val >= 0.5
        if not keep.any() and val.max() > 0:
            keep = val >= val.max()
        out[cand[0][keep], cand[1][keep]] = True
    return out


def make_cine(seed: int, *, calcium: bool, n_frames: int = 60, size: int = 512, fps: float = 15.0,
              contrast_onset: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A synthetic coronary angiography cine with its calcium truth.

    Parameters
    ----------
    seed : int
        Anatomy, motion, calcium, distractor and noise all follow from it.  The same seed with
        ``calcium=False`` gives the same cine without the deposits (their positions are drawn
        either way, from a separate stream), so calcified and calcium-free cines can be paired.
    calcium : bool
        Draw 1-3 calcium deposits; without, the truth masks are empty.
    n_frames : int
        Frames in the cine (at least 4).
    size : int
        Frame side in pixels (square frames).  Lengths scale with it; the field of view stays
        the same, so the pixel spacing is ``spacing_mm(512) * 512 / size``.
    fps : float
        Frame rate (frames per second).
    contrast_onset : int, optional
        First contrast frame; random in 35-50 % of the frames when None.

    Returns
    -------
    frames : (n_frames, size, size) uint8 ndarray
        MONOCHROME2 (attenuation is dark).
    calcium_masks : (n_frames, size, size) bool ndarray
        The deposits of every frame (they move with the heart); empty without calcium.
    info : dict
        ``spacing_mm`` (float, isotropic), ``frame_time_ms``, ``onset`` (first contrast frame),
        ``heart_rate_bpm``, ``phase`` (cardiac phase of each frame, in beats), ``fill`` (iodine
        fill 0-1 per frame), ``field_mask`` (size, size) bool (outside the collimator blades),
        ``vessel_mask`` (n_frames, size, size) bool (where the vessels hold iodine when filled),
        ``deposits``, ``distractor`` (None or its description), ``collimated_sides``, the image
        chain's ``dose_photons``, ``gamma``, ``blur_px`` and the ``respiratory_shift_px`` per frame.

    Examples
    --------
    >>> frames, masks, info = make_cine(3, calcium=True, n_frames=6, size=128)
    >>> frames.shape, frames.dtype.name, masks.shape, bool(masks.any(axis=(1, 2)).all())
    ((6, 128, 128), 'uint8', (6, 128, 128), True)
    """
    if n_frames < 4:
        raise ValueError(f"a cine needs at least 4 frames (non-contrast and contrast), got {n_frames}")
    if size < 64:
        raise ValueError(f"frames of {size} px are too small for this generator (64 at least)")
    # Independent streams: the anatomy does not change when calcium is switched off.
    rng = np.random.default_rng([seed, 0])
    rng_ca = np.random.default_rng([seed, 1])
    rng_noise = np.random.default_rng([seed, 2])
    k = size / REF_SIZE
    shape = (size, size)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)

    spacing = float(rng.uniform(0.25, 0.35)) / k
    frame_time_ms = 1000.0 / float(fps)
    heart_rate = float(rng.uniform(55, 95))
    phase0 = float(rng.uniform())
    times = np.arange(n_frames) * frame_time_ms / 1000.0
    phase = phase0 + times * heart_rate / 60.0
    if contrast_onset is None:
        onset = int(round(rng.uniform(0.35, 0.5) * n_frames))
    else:
        onset = int(contrast_onset)
        rng.uniform()  # keep the stream aligned with the random-onset case
    onset = int(np.clip(onset, 1, n_frames - 1))
    # Iodine arrives over about four frames: a quarter at the onset frame, full three frames later.
    fill = np.clip((np.arange(n_frames) - onset + 1) / 4.0, 0.0, 1.0)

    background, bg_info = thorax_background(rng, size)

    heart = {"centre": (rng.uniform(0.45, 0.58) * size, rng.uniform(0.42, 0.6) * size),
             "axes": (rng.uniform(0.26, 0.34) * size, rng.uniform(0.3, 0.4) * size),
             "angle": rng.uniform(-0.6, 0.6)}
    rho = _ellipse_rho(rows, cols, heart["centre"], heart["axes"], heart["angle"])
    heart_mu = rng.uniform(0.35, 0.6) * expit((1.0 - rho) / 0.04)
    heart_mu = heart_mu * (1 + 0.08 * smooth_field(rng, shape, 40 * k))

    vessels = coronary_tree(rng, size, heart)
    iodine = np.zeros(shape, np.float32)
    fat = np.zeros(shape, np.float32)
    iodine_per_px = rng.uniform(0.14, 0.22)  # attenuation per pixel of radius (at 512 px) at full fill
    for m in sorted({v["tree"] for v in vessels}):
        tree_iodine = np.zeros(shape, np.float32)
        for v in (v for v in vessels if v["tree"] == m):
            # Gaussian cross-section: projected iodine thickness falls off smoothly from the axis.
            tube = render_tube(shape, v["points"], v["radius"],
                               lambda d, r: iodine_per_px * (r / k) * np.exp(-0.5 * (d / (0.7 * r)) ** 2),
                               4.0 * v["radius"].max() + 2)
            tree_iodine = np.maximum(tree_iodine, tube)  # a branch point is not twice as dark
            # Epicardial fat along the vessel: a faint, broad brighter track without contrast.
            fat = np.minimum(fat, render_tube(shape, v["points"], v["radius"],
                                              lambda d, r: -0.025 * np.exp(-0.5 * (d / (2.5 * r)) ** 2),
                                              8.0 * v["radius"].max() + 2))
        iodine += tree_iodine  # vessels of different trees crossing in projection add up

    # Guiding catheter: a hollow plastic tube (two bright-edged walls), its lumen fills with iodine.
    ostium = vessels[0]["points"][0]
    cath = catheter_path(rng, size, ostium)
    rc = rng.uniform(2.8, 3.6) * k
    cath_mu = render_tube(shape, cath, np.full(len(cath), rc),
                          lambda d, r: 0.09 / k * (np.sqrt(np.clip(r ** 2 - d ** 2, 0, None))
                                                   - np.sqrt(np.clip((0.7 * r) ** 2 - d ** 2, 0, None))),
                          rc + 2)
    cath_iodine = render_tube(shape, cath, np.full(len(cath), 0.7 * rc),
                              lambda d, r: iodine_per_px * 0.5 / k * np.sqrt(np.clip(r ** 2 - d ** 2, 0, None)),
                              rc + 2)
    iodine = iodine + cath_iodine

    # Calcium: positions always drawn (separate stream), rendered only with calcium=True.
    n_dep = int(rng_ca.integers(1, 4))
    ca_labels, deposits = deposit_mask(rng_ca, size, vessels, n_dep, avoid=15 * k)
    ca_mask = ca_labels > 0
    ca_density = float(rng_ca.uniform(0.35, 0.75))  # moderately dark, never saturating
    texture = 1.0 + 0.25 * smooth_field(rng_ca, shape, 2.0 * k)
    ca_mu = ca_density * ndimage.gaussian_filter(ca_mask.astype(np.float32), 0.4 * k + 0.2) * texture
    ca_mu = np.where(ca_mask, ca_density * texture, ca_mu).astype(np.float32)
    for d in deposits:
        d["density"] = ca_density
    drawn_centres = [d["centre"] for d in deposits]
    drawn_mask = ca_mask.copy()
    if not calcium:
        ca_mask = np.zeros(shape, bool)
        ca_labels = np.zeros(shape, np.int32)
        ca_mu = np.zeros(shape, np.float32)
        deposits = []

    # Metal distractor in about half of the cines (calcium or not); placed away from any
    # deposit position drawn, so the pair with and without calcium shares it.
    rng_dis = np.random.default_rng([seed, 3])
    distractor = None
    if rng_dis.uniform() < 0.5:
        distractor = metal_distractor(rng_dis, size, drawn_centres, heart)

    heart_layer = heart_mu + fat + cath_mu + ca_mu
    static_layer = background
    if distractor is not None:
        if distractor["on_heart"]:
            heart_layer = heart_layer + distractor["mu"]
        else:
            static_layer = static_layer + distractor["mu"]
    blade_mu, field_mask, sides = collimator(rng, size)

    # Motion: a periodic non-rigid heart deformation (contraction towards the heart's centre,
    # twist, translation) fading out beyond the heart border, plus a slow respiratory drift of
    # the whole chest.  Expressed as a backward map (where each output pixel samples the
    # reference images), so the images and the truth masks move identically.
    contraction = rng.uniform(0.06, 0.12)
    twist = np.deg2rad(rng.uniform(2, 6)) * rng.choice([-1, 1])
    shift_dir = rng.uniform(0, 2 * np.pi)
    shift_amp = rng.uniform(4, 12) * k
    lag = rng.uniform(0, 0.1)
    resp_dir = rng.uniform(0, 2 * np.pi)
    resp_drift = rng.uniform(0, 3) * k
    resp_amp = rng.uniform(0, 1.5) * k
    resp_period = rng.uniform(4, 6)
    resp_phase = rng.uniform(0, 2 * np.pi)
    w = expit((1.15 - rho) / 0.08).astype(np.float32)
    cy, cx = heart["centre"]

    # Image chain parameters.
    dose = float(np.exp(rng.uniform(np.log(120), np.log(1500))))  # photons per pixel behind soft tissue
    blur_focal = float(rng.uniform(0.4, 1.0)) * k + 0.2
    blur_det = float(rng.uniform(0.4, 0.9)) * k + 0.2
    gamma = float(rng.uniform(0.7, 1.4))
    vignette = 1.0 - rng.uniform(0.0, 0.3) * ((rows - size / 2) ** 2 + (cols - size / 2) ** 2) / (size / 2) ** 2 / 2
    electronic = rng.uniform(0.5, 2.0)

    frames = np.empty((n_frames, size, size), np.uint8)
    masks = np.zeros((n_frames, size, size), bool)
    vessel_mask = np.zeros((n_frames, size, size), bool)
    resp = np.zeros((n_frames, 2))
    window = None
    vessel_level = iodine_per_px  # about the edge (d ~ r) of a 3-px-radius vessel; the axis of thinner ones
    for t in range(n_frames):
        c = float(cardiac_waveform(phase[t]))
        c_lag = float(cardiac_waveform(phase[t] - lag))
        r_t = resp_drift * times[t] / max(times[-1], 1e-9) + resp_amp * np.sin(
            2 * np.pi * times[t] / resp_period + resp_phase)
        resp[t] = r_t * np.array([np.sin(resp_dir), np.cos(resp_dir)])
        qy, qx = rows - resp[t, 0], cols - resp[t, 1]
        scale = 1.0 - contraction * c
        th = -twist * c
        ty, tx = shift_amp * c_lag * np.sin(shift_dir), shift_amp * c_lag * np.cos(shift_dir)
        vy, vx = qy - cy - ty, qx - cx - tx
        ry = cy + (np.cos(th) * vy + np.sin(th) * vx) / scale
        rx = cx + (-np.sin(th) * vy + np.cos(th) * vx) / scale
        hy, hx = qy + w * (ry - qy), qx + w * (rx - qx)
        heart_coords = np.stack([hy, hx])
        mu = ndimage.map_coordinates(static_layer, np.stack([qy, qx]), order=1, mode="nearest")
        mu += ndimage.map_coordinates(heart_layer, heart_coords, order=1, mode="nearest")
        iod = ndimage.map_coordinates(iodine, heart_coords, order=1, mode="constant")
        mu += fill[t] * iod + blade_mu
        vessel_mask[t] = iod > vessel_level
        if calcium:
            masks[t] = warp_deposits(ca_labels, len(deposits), hy, hx)

        # X-ray formation: attenuation -> photons (focal-spot blur), quantum noise, detector blur,
        # electronic noise, log display with a per-cine window and gamma, 8 bits.
        expected = dose * vignette * np.exp(-mu)
        expected = ndimage.gaussian_filter(expected, blur_focal)
        # Quantum noise: Poisson, in its Gaussian form (same variance).  A fixed number of draws
        # per frame keeps the noise identical between the cines with and without calcium of a seed.
        counts = expected + np.sqrt(np.maximum(expected, 0.0)) * rng_noise.standard_normal(shape, np.float32)
        counts = ndimage.gaussian_filter(counts, blur_det) + rng_noise.normal(0, electronic, shape)
        v = np.log(np.maximum(counts, 0.5))
        if window is None:  # fixed on the first frame, as a system keeps its window during a run
            # Set without the deposits' surroundings (drawn with or without calcium), so that the
            # pair of cines of a seed differs only there.
            near = ndimage.map_coordinates(drawn_mask.astype(np.float32), heart_coords, order=1) > 0
            near = ndimage.binary_dilation(near, iterations=max(2, int(12 * k)))
            lo, hi = np.percentile(v[field_mask & ~near], [0.5, 99.7])
            window = (lo - 0.15 * (hi - lo), hi)  # room below for the iodine
        x = np.clip((v - window[0]) / (window[1] - window[0]), 0.0, 1.0) ** gamma
        frames[t] = np.round(255.0 * x).astype(np.uint8)

    info = {
        "seed": int(seed), "calcium": bool(calcium), "size": int(size), "n_frames": int(n_frames),
        "spacing_mm": spacing, "frame_time_ms": frame_time_ms, "fps": float(fps), "onset": onset,
        "heart_rate_bpm": heart_rate, "phase": [float(p) for p in phase], "fill": [float(f) for f in fill],
        "deposits": deposits,
        "distractor": None if distractor is None else {key: val for key, val in distractor.items() if key != "mu"},
        "collimated_sides": sides, "field_mask": field_mask, "vessel_mask": vessel_mask,
        "dose_photons": dose, "gamma": gamma, "blur_px": [blur_focal, blur_det],
        "respiratory_shift_px": resp.tolist(), "motion": {"contraction": float(contraction),
                                                         "twist_deg": float(np.rad2deg(twist)),
                                                         "shift_px": float(shift_amp)},
        "background": bg_info,
    }
    return frames, masks, info


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _circular_distance(a, b) -> float:
    d = abs((float(a) - float(b)) % 1.0)
    return min(d, 1.0 - d)


def score_cine(res, masks: np.ndarray, info: dict) -> dict:
    """Per-cine figures of one ``identify`` result against the generator's truth.

    As ``evaluation.evaluate``: on the analysed frames where the ROI or the truth is non-empty, IoM
    and HD against the calcium mask and ROI precision against its ROI_GT; plus the IoM against
    ROI_GT, the ROI area (% of the exposed field), the frame sensitivity (share of analysed
    frames with calcium that have an ROI) and the share of frames with an ROI.  Also how well
    the synchronization did: its heart rate and the true phase difference of its pairs.
    """
    from CACIdentifierLib.metrics import hausdorff_mm, iom, roi_precision
    from CACIdentifierLib.roi_gt import roi_gt

    sp = (info["spacing_mm"], info["spacing_mm"])
    frames = list(res.frames)
    ioms, ioms_gt, hds, precs, hits, truths, with_roi = [], [], [], [], [], [], []
    for f in frames:
        pred, truth = res.roi[f], masks[f]
        has_p, has_t = bool(pred.any()), bool(truth.any())
        with_roi.append(has_p)
        truths.append(has_t)
        if has_t:
            hits.append(has_p)
        if not has_p and not has_t:
            continue
        ref = roi_gt(truth, spacing_mm=sp)
        ioms.append(iom(pred, truth))
        ioms_gt.append(iom(pred, ref))
        hds.append(hausdorff_mm(pred, truth, sp))
        precs.append(roi_precision(pred, ref))

    def med(values):
        v = [float(x) for x in values if x is not None]
        return float(np.median(v)) if v else None

    field_true = info["field_mask"]
    outside_pipeline = int(sum((res.roi[f] & ~res.exposed_field).sum() for f in frames))
    outside_true = int(sum((res.roi[f] & ~field_true).sum() for f in frames))
    phase = info["phase"]
    pair_err = [_circular_distance(phase[a], phase[b]) for a, b in zip(res.frames, res.contrast_frames)]
    sync = res.sync
    return {
        "seed": info["seed"], "calcium_free": not info["calcium"], "frames": len(frames),
        "onset": info["onset"], "onset_used": int(sync.onset_frame), "frames_truth": int(sum(truths)),
        # Frames analysed as non-contrast that already hold iodine (a late onset): how many, and with an ROI.
        "iodine_frames": int(sum(info["fill"][f] > 0 for f in frames)),
        "iodine_frames_with_roi": int(sum(info["fill"][f] > 0 and bool(res.roi[f].any()) for f in frames)),
        "iom": med(ioms), "iom_roi_gt": med(ioms_gt), "hd_mm": med(hds), "roi_precision": med(precs),
        "roi_area_pct_field": float(np.median(res.roi_area_pct_field)) if len(frames) else None,
        "frame_sensitivity": float(np.mean(hits)) if hits else None,
        "frames_with_roi_pct": float(100.0 * np.mean(with_roi)) if with_roi else None,
        "pred_any": with_roi, "truth_any": truths,
        "roi_px_outside_field": outside_pipeline, "roi_px_outside_true_field": outside_true,
        "field_pct_found": float(100.0 * (res.exposed_field & field_true).sum() / max(field_true.sum(), 1)),
        "p_median": float(np.median(res.probabilities)) if len(frames) else None,
        "p_frames": [float(v) for v in res.probabilities],
        "heart_rate_bpm": info["heart_rate_bpm"],
        "sync_heart_rate_bpm": None if sync.heart_rate_bpm is None else float(sync.heart_rate_bpm),
        "sync_periodic": bool(sync.periodic), "sync_confidence": float(sync.confidence),
        "pair_phase_error_median": float(np.median(pair_err)) if pair_err else None,
        "ood_warning": res.ood_warning,
        "deposits": len(info["deposits"]), "distractor": None if info["distractor"] is None else info["distractor"]["kind"],
        "seconds": round(float(res.timings.get("total", 0.0)), 2),
    }


def summarize(cines: list[dict]) -> dict:
    """The model's figures over the calcified and the calcium-free cines (median, Q1-Q3 over cines)."""
    from CACIdentifierLib.metrics import frame_detection, median_iqr, roc_auc

    ok = [c for c in cines if "error" not in c]
    calc = [c for c in ok if not c["calcium_free"]]
    free = [c for c in ok if c["calcium_free"]]
    pred = [p for c in ok for p in c["pred_any"]]
    truth = [t for c in ok for t in c["truth_any"]]
    return {
        "calcified": {key: median_iqr([c[key] for c in calc])
                      for key in ("iom", "iom_roi_gt", "hd_mm", "roi_precision", "roi_area_pct_field",
                                  "frame_sensitivity")},
        "calcium_free": {key: median_iqr([c[key] for c in free]) for key in ("frames_with_roi_pct",
                                                                             "roi_area_pct_field")},
        "frame_detection_pooled": frame_detection(pred, truth),
        # Threshold-free: the frame probability ranking calcified above calcium-free frames, pooled.
        "frame_auc": roc_auc(np.asarray(truth, bool), np.asarray([p for c in ok for p in c["p_frames"]])),
        "roi_px_outside_field": int(sum(c["roi_px_outside_field"] for c in ok)),
        "roi_px_outside_true_field": int(sum(c["roi_px_outside_true_field"] for c in ok)),
        "pair_phase_error_median": median_iqr([c["pair_phase_error_median"] for c in ok]),
        "sync_heart_rate_abs_error_bpm": median_iqr([abs(c["sync_heart_rate_bpm"] - c["heart_rate_bpm"])
                                                     for c in ok if c["sync_heart_rate_bpm"] is not None]),
        "sync_not_periodic": int(sum(not c["sync_periodic"] for c in ok)),
        "ood_warnings": int(sum(c["ood_warning"] is not None for c in ok)),
        "iodine_frames": int(sum(c["iodine_frames"] for c in ok)),
        "iodine_frames_with_roi": int(sum(c["iodine_frames_with_roi"] for c in ok)),
        "cines": len(calc), "calcium_free_cines": len(free), "errors": len(cines) - len(ok),
    }


def _fmt(s: dict, digits: int = 2) -> str:
    if s["median"] is None:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['q1']:.{digits}f}-{s['q3']:.{digits}f})"


def montage(panels: list[dict], path: str) -> None:
    """Non-contrast frames with the ROI outlined in red and the truth in green, each with a 4x zoom on the truth."""
    from skimage.segmentation import find_boundaries

    tiles = []
    for p in panels:
        img = np.repeat(p["frame"][..., None].astype(np.uint8), 3, axis=2)
        for mask, colour in ((p["roi"], (255, 0, 0)), (p["truth"], (0, 255, 0))):
            if mask.any():
                img[find_boundaries(mask, mode="outer")] = colour
        size = img.shape[0]
        anchor = p["truth"] if p["truth"].any() else p["roi"]
        if anchor.any():
            cy, cx = (int(v) for v in np.mean(np.nonzero(anchor), axis=1))
        else:
            cy = cx = size // 2
        h = size // 8
        cy, cx = int(np.clip(cy, h, size - h)), int(np.clip(cx, h, size - h))
        zoom = np.kron(img[cy - h: cy + h, cx - h: cx + h], np.ones((4, 4, 1), np.uint8))
        tiles.append((p["title"], img, zoom))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from skimage import io

        rows = [np.concatenate([img, zoom], axis=1) for _, img, zoom in tiles]
        io.imsave(path, np.concatenate(rows, axis=0), check_contrast=False)
        return
    fig, axes = plt.subplots(len(tiles), 2, figsize=(8, 4 * len(tiles)), squeeze=False)
    for (title, img, zoom), (a, b) in zip(tiles, axes):
        a.imshow(img)
        a.set_title(title, fontsize=8)
        b.imshow(zoom)
        b.set_title("4x zoom (red: ROI, green: truth)", fontsize=8)
        a.axis("off")
        b.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model files (.safetensors)")
    ap.add_argument("--cines", type=int, default=8, help="calcified cines")
    ap.add_argument("--free", type=int, default=8, help="calcium-free cines")
    ap.add_argument("--seed", type=int, default=0, help="first seed (calcium-free cines use seed + 10000 + i)")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", default="second_generator.json")
    ap.add_argument("--png", help="montage of a few non-contrast frames with ROI and truth")
    ap.add_argument("--edge-enhance", metavar="SIGMA,GAIN",
                    help="unsharp masking of the stored frames (kernel SIGMA pixels at 512, GAIN), as XA display "
                         "processing does: a domain shift the project's training pool does not draw")
    ap.add_argument("--detect-onset", action="store_true",
                    help="let the pipeline detect the contrast onset, as a user's run does (default: the true onset)")
    args = ap.parse_args(argv)
    enhance = None
    if args.edge_enhance:
        try:
            enhance = tuple(float(v) for v in args.edge_enhance.split(","))
        except ValueError:
            enhance = ()
        if len(enhance) != 2 or not enhance[0] > 0 or not enhance[1] >= 0:  # not an assert: -O would drop it
            ap.error(f"--edge-enhance {args.edge_enhance!r}: give SIGMA,GAIN, e.g. 4,1")

    import torch
    from CACIdentifierLib.allocator import keep_freed_memory
    from CACIdentifierLib.cine import Cine
    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import load_model
    from CACIdentifierLib.sync import synchronize_cine

    check_models(args.models)
    keep_freed_memory()  # as `cac` does
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    plan = [(args.seed + i, True) for i in range(args.cines)] + [(args.seed + 10_000 + i, False) for i in range(args.free)]
    cines = []
    for seed, calcium in plan:
        frames, masks, info = make_cine(seed, calcium=calcium, n_frames=args.frames, size=args.size)
        info.pop("vessel_mask")  # not needed here: keep the memory down
        if enhance:
            frames = edge_enhance(frames, *enhance)
        # The pipeline is given the true onset (unless --detect-onset); its own detection is recorded aside.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                auto = synchronize_cine(Cine(frames=frames, frame_time_ms=info["frame_time_ms"]))
                info["auto_sync"] = {"onset": auto.onset_frame, "detected": auto.onset_detected,
                                     "heart_rate_bpm": auto.heart_rate_bpm, "periodic": auto.periodic}
            except CacError as exc:
                info["auto_sync"] = {"error": str(exc)}
        info["auto_sync"]["warnings"] = [str(w.message) for w in caught]
        cines.append((frames, masks, info))
    log(f"{len(cines)} cines generated in {time.perf_counter() - t0:.0f} s")
    results = {"generator": {"n_frames": args.frames, "size": args.size, "seed": args.seed, "edge_enhance": enhance,
                             "cines": [{key: info[key] for key in ("seed", "calcium", "onset", "heart_rate_bpm",
                                                                   "spacing_mm", "deposits", "distractor",
                                                                   "collimated_sides", "dose_photons", "gamma",
                                                                   "auto_sync")}
                                       for _, _, info in cines]},
               "models": {}}
    panels = []
    for mi, path in enumerate(args.models):
        model, meta = load_model(path)
        rows = []
        for ci, (frames, masks, info) in enumerate(cines):
            cine = Cine(frames=frames, frame_time_ms=info["frame_time_ms"],
                        spacing_mm=(info["spacing_mm"], info["spacing_mm"]), spacing_source="synthetic",
                        bits_stored=8, source="second_generator")
            t1 = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    res = identify(cine, model, meta, device="cpu",
                                   onset=None if args.detect_onset else info["onset"])
            except CacError as exc:
                rows.append({"seed": info["seed"], "calcium_free": not info["calcium"], "error": str(exc)})
                log(f"{Path(path).name} cine {ci + 1}/{len(cines)} seed {info['seed']}: error {exc}")
                continue
            row = score_cine(res, masks, info)
            row["warnings"] = [str(w.message) for w in caught]
            rows.append(row)
            found = (f"IoM {row['iom']:.2f}, ROI precision {row['roi_precision'] or 0:.2f}, "
                     f"sensitivity {row['frame_sensitivity']:.2f}, ") if info["calcium"] else ""
            log(f"{Path(path).name} cine {ci + 1}/{len(cines)} seed {info['seed']} "
                f"{'calcium' if info['calcium'] else 'free'}: {row['frames']} frames, {found}"
                f"ROI on {row['frames_with_roi_pct']:.0f} % of frames, area {row['roi_area_pct_field']:.2f} %, "
                f"HR {info['heart_rate_bpm']:.0f} (sync {row['sync_heart_rate_bpm'] or 0:.0f}) bpm, "
                f"onset {info['onset']} (detected {info['auto_sync'].get('onset')}), {time.perf_counter() - t1:.1f} s")
            if mi == 0 and args.png and len(panels) < 6 and res.frames:
                # Calcified cines: the analysed frame with most calcium; a calcium-free one too.
                f = max(res.frames, key=lambda j: (int(res.roi[j].any()), int(masks[j].sum())))
                if info["calcium"] or not any(p["free"] for p in panels):
                    panels.append({"frame": frames[f], "roi": res.roi[f], "truth": masks[f], "free": not info["calcium"],
                                   "title": f"seed {info['seed']} frame {f} ({'calcium' if info['calcium'] else 'free'})"})
        summary = summarize(rows)
        results["models"][path] = {"summary": summary, "cines": rows}
        c, fr = summary["calcified"], summary["calcium_free"]
        print(f"{path}:\n"
              f"  calcified ({summary['cines']}): IoM {_fmt(c['iom'])}, HD {_fmt(c['hd_mm'], 1)} mm, "
              f"ROI precision {_fmt(c['roi_precision'])}, ROI area {_fmt(c['roi_area_pct_field'])} % of field, "
              f"frame AUC {summary['frame_auc'] or float('nan'):.3f}, "
              f"frame sensitivity {_fmt(c['frame_sensitivity'])} (IoM vs ROI_GT {_fmt(c['iom_roi_gt'])})\n"
              f"  calcium-free ({summary['calcium_free_cines']}): frames with ROI {_fmt(fr['frames_with_roi_pct'], 1)} %, "
              f"ROI area {_fmt(fr['roi_area_pct_field'])} %\n"
              f"  ROI px outside the field: {summary['roi_px_outside_field']} (pipeline's), "
              f"{summary['roi_px_outside_true_field']} (true); pooled frames {summary['frame_detection_pooled']}; "
              f"frames with iodine analysed as non-contrast {summary['iodine_frames']} "
              f"({summary['iodine_frames_with_roi']} with an ROI); "
              f"errors {summary['errors']}", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    if args.png and panels:
        montage(panels, args.png)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    log(f"done in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
