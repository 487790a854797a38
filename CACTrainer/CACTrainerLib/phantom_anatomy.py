"""3D anatomy of a phantom patient: heart, coronary tree, calcium, catheter, C-arm views, motion.

Coordinates are patient LPS in millimetres (x towards the patient's left,
y posterior, z superior), origin at the isocentre of the C-arm.  A patient is
drawn once (:func:`make_patient`) and seen by several acquisitions from
different C-arm angles (:class:`View`), so every projection shows the same
tree and the same calcium.

Motion is a 3D deformation applied to points (:func:`deform`): cardiac
contraction (radial and longitudinal shortening about a point near the apex,
plus a twist about the long axis that grows from apex to base), respiration
and table pan (rigid translations).  The heart silhouette uses only the affine
part, which maps the heart's quadrics onto quadrics; the twist is a rotation
about the axis of a body of revolution, so it leaves the left-ventricle
silhouette unchanged and vessels stay on the surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Standard angiographic views (primary: LAO > 0 / RAO < 0; secondary: CRA > 0 / CAU < 0), degrees.
LEFT_VIEWS = [(-30, -25), (-30, 30), (45, 25), (45, -30), (0, 35), (-10, -35), (90, 0)]
RIGHT_VIEWS = [(30, 0), (-30, 0), (30, 20), (0, 30), (45, 0)]


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class Vessel:
    """A coronary segment: centreline samples in the reference (end-diastolic) configuration."""

    name: str
    points: np.ndarray  # (M, 3) mm, spaced `step` apart along the curve
    radius: np.ndarray  # (M,) mm
    arclength: np.ndarray  # (M,) mm from the coronary ostium (through the parents)
    step: np.ndarray  # (M,) mm, 3D spacing of the samples (sphere-sweep weight)
    main: bool = True


@dataclass
class Deposit:
    """A calcification: a capsule (chain of spheres) on a vessel wall."""

    id: int
    vessel: str
    centres: np.ndarray  # (K, 3) mm, sphere centres along the vessel tangent
    radius_mm: float  # sphere radius = half the width
    length_mm: float  # extent along the vessel
    width_mm: float
    mu_per_mm: float  # extra attenuation per mm of calcium (relative to blood/tissue)
    arclength_mm: float


@dataclass
class Heart:
    centre: np.ndarray  # LV centre, mm
    e1: np.ndarray  # long axis, base -> apex
    e2: np.ndarray
    e3: np.ndarray
    a: float  # LV semi-axis along e1, mm
    b: float  # LV semi-axis across, mm
    quadrics: list = field(default_factory=list)  # (A (3,3), m (3,), mu_per_mm)
    scale_centre: np.ndarray | None = None


@dataclass
class Patient:
    index: int
    side: str  # "left" or "right" coronary system (the injected one)
    heart: Heart
    vessels: list[Vessel]
    deposits: list[Deposit]
    catheter: np.ndarray  # (M, 3) mm, from the ostium upwards
    ostium: np.ndarray
    spine_y_mm: float
    tree_length_mm: float


@dataclass
class View:
    """A C-arm geometry: angles, distances and the detector grid (at the isocentre)."""

    primary_deg: float
    secondary_deg: float
    sod_mm: float
    sid_mm: float
    spacing_mm: float  # pixel spacing at the isocentre
    rows: int
    cols: int
    centre_mm: np.ndarray  # 3D point imaged at the centre of the detector

    def __post_init__(self):
        a = np.deg2rad(self.primary_deg)
        b = np.deg2rad(self.secondary_deg)
        # d: isocentre -> detector; u: image columns (patient left in AP); v = u x d: image rows.
        self.d = np.array([np.sin(a) * np.cos(b), -np.cos(a) * np.cos(b), np.sin(b)])
        self.u = np.array([np.cos(a), np.sin(a), 0.0])
        self.v = np.cross(self.u, self.d)
        c = self.project_iso(self.centre_mm[None])
        self.offset_mm = np.array([c[0][0], c[1][0]])

    def project_iso(self, p):
        """(x_iso, y_iso, scale) of points p (..., 3): coordinates in the isocentre plane, mm."""
        p = np.asarray(p, dtype=float)
        scale = self.sod_mm / (self.sod_mm + p @ self.d)
        return (p @ self.u) * scale, (p @ self.v) * scale, scale

    def project(self, p):
        """(row, col, scale) of points p (..., 3); scale converts mm at the point to mm at the isocentre."""
        x, y, s = self.project_iso(p)
        col = (x - self.offset_mm[0]) / self.spacing_mm + (self.cols - 1) / 2.0
        row = (y - self.offset_mm[1]) / self.spacing_mm + (self.rows - 1) / 2.0
        return row, col, s

    def pixel_rays(self, rows, cols, step):
        """Unit ray directions (3, rows, cols) from the source through pixel centres of a grid
        sampled every `step` detector pixels (for the analytic heart silhouette)."""
        r = (np.arange(rows) * step + (step - 1) / 2.0 - (self.rows - 1) / 2.0) * self.spacing_mm
        c = (np.arange(cols) * step + (step - 1) / 2.0 - (self.cols - 1) / 2.0) * self.spacing_mm
        yy = (r + self.offset_mm[1])[:, None]
        xx = (c + self.offset_mm[0])[None, :]
        # A point of the isocentre plane minus the source position (-SOD d).
        ray = (
            xx[None] * self.u[:, None, None] + yy[None] * self.v[:, None, None]
            + self.sod_mm * self.d[:, None, None]
        )
        return (ray / np.linalg.norm(ray, axis=0, keepdims=True)).astype(np.float32)

    @property
    def source(self):
        return -self.sod_mm * self.d


# ----------------------------------------------------------------------------------------------
# Cardiac cycle


def volume_curve(phase, systole_fraction=0.35):
    """Contraction state in [0, 1] (0 = end-diastole, 1 = end-systole) at cardiac phase in [0, 1).

    Phase 0 is the R wave.  Isovolumic delay, fast ejection reaching end-systole
    at ``systole_fraction`` of the cycle, rapid early filling, slow diastasis and
    an atrial kick before the next R wave: a periodic cubic spline through those
    landmarks (not a sinusoid).
    """
    from scipy.interpolate import CubicSpline

    ts = float(systole_fraction)
    knots = np.array([0.0, 0.05, 0.55 * ts, ts, ts + 0.07, ts + 0.2, 0.78, 0.87, 0.94, 1.0])
    vals = np.array([0.0, 0.03, 0.6, 1.0, 0.9, 0.38, 0.2, 0.17, 0.05, 0.0])
    order = np.argsort(knots)
    spline = CubicSpline(knots[order], vals[order], bc_type="periodic")
    return np.clip(spline(np.mod(phase, 1.0)), 0.0, 1.05)


@dataclass
class MotionState:
    """The deformation at one instant: contraction ``v`` in [0, 1], translations in mm."""

    v: float
    translation: np.ndarray  # respiration + table pan, applied to heart and vessels (mm)
    contraction: float = 0.12
    longitudinal: float = 0.10
    twist_deg: float = 6.0


def affine(heart: Heart, m: MotionState):
    """(M, t): the affine part of the cardiac deformation, p -> M p + t."""
    e1 = heart.e1[:, None]
    p_axis = e1 @ e1.T
    scale = np.eye(3) - m.v * (m.contraction * (np.eye(3) - p_axis) + m.longitudinal * p_axis)
    cs = heart.scale_centre
    t = cs - scale @ cs + m.translation
    return scale, t


def deform(points, heart: Heart, m: MotionState, weight=None):
    """Deform reference points (..., 3) by the cardiac motion, respiration and pan.

    ``weight`` (...,) in [0, 1] scales the cardiac part per point (1 = moves with
    the heart; used for the catheter, whose far end does not follow the heart).
    """
    p = np.asarray(points, dtype=float)
    rel = p - heart.centre
    s_ax = rel @ heart.e1 / heart.a  # -1 base .. +1 apex
    # Twist: the base rotates, the apex much less (torsion).
    ang = np.deg2rad(m.twist_deg) * m.v * np.clip(0.5 * (1 - s_ax), 0, 1.5)
    if weight is not None:
        ang = ang * weight
    ca, sa = np.cos(ang)[..., None], np.sin(ang)[..., None]
    k = heart.e1
    along = (rel @ k)[..., None] * k
    perp = rel - along
    rot = heart.centre + along + perp * ca + np.cross(k, perp) * sa
    scale, t = affine(heart, MotionState(m.v, np.zeros(3), m.contraction, m.longitudinal))
    moved = rot @ scale.T + t
    if weight is not None:
        moved = p + (moved - p) * weight[..., None]
    return moved + m.translation


# ----------------------------------------------------------------------------------------------
# Patient anatomy


def _surface(heart: Heart, s, phi, off):
    """Point on (or `off` mm outside) the LV ellipsoid at axial coordinate s in (-1, 1) and angle phi."""
    s = np.clip(s, -0.995, 0.995)
    rad = np.sqrt(1 - s**2) * heart.b + off
    return (
        heart.centre
        + (heart.a * s)[:, None] * heart.e1
        + (rad * np.cos(phi))[:, None] * heart.e2
        + (rad * np.sin(phi))[:, None] * heart.e3
    )


def _phi(heart: Heart, direction):
    d = _unit(direction)
    return float(np.arctan2(d @ heart.e3, d @ heart.e2))


def _resample(points, step):
    """Resample a polyline at equal 3D spacing `step` mm; returns points and the fractional position."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(cum[-1] / step) + 1)
    s = np.linspace(0, cum[-1], n)
    out = np.stack([np.interp(s, cum, points[:, k]) for k in range(3)], axis=1)
    return out, s / max(cum[-1], 1e-9), s


def _wiggle(rng, arc, amplitude, wavelength_range, n=3):
    """Smooth random displacement (mm) along arclength ``arc`` (mm): sum of sinusoids."""
    out = np.zeros_like(arc)
    for _ in range(n):
        lam = rng.uniform(*wavelength_range)
        out += amplitude / np.sqrt(n) * np.sin(2 * np.pi * arc / lam + rng.uniform(0, 2 * np.pi))
    return out


def _make_vessel(rng, heart, name, s_path, phi_path, off, d0, d1, start_arc, tortuosity, main=True):
    """A vessel following (s, phi) on the LV surface, `off` mm outside it, with tortuosity.

    Tortuosity is a smooth displacement along the surface, perpendicular to the
    vessel, of about 1.6 mm (wavelengths 12-40 mm) plus 0.3 mm (5-10 mm), scaled by ``tortuosity``.
    """
    pts = _surface(heart, np.asarray(s_path, float), np.asarray(phi_path, float),
                   np.broadcast_to(np.asarray(off, float), np.shape(s_path)))
    pts, _, arc = _resample(pts, 0.5)
    tangent = np.gradient(pts, axis=0)
    tangent = _unit(tangent)
    rel = pts - heart.centre
    outward = _unit(rel - (rel @ heart.e1)[:, None] * heart.e1)
    side = _unit(np.cross(tangent, outward))
    disp = _wiggle(rng, arc, 1.6 * tortuosity, (12, 40)) + _wiggle(rng, arc, 0.3 * tortuosity, (5, 10))
    lift = np.abs(_wiggle(rng, arc, 1.0 * tortuosity, (15, 40)))
    pts = pts + disp[:, None] * side + lift[:, None] * outward
    r_mid = (d0 + d1) / 4.0
    step = min(0.3, r_mid / 3.0)
    pts, frac, arc = _resample(pts, step)
    radius = 0.5 * (d0 + (d1 - d0) * frac)
    return Vessel(name, pts, radius, start_arc + arc, np.full(len(pts), step), main)


def _branch(rng, heart, parent, name, at, ds, dphi, length_s, d0, d1, tortuosity, main=False, n=200):
    """A branch leaving `parent` at fraction `at` and heading towards the apex (ds) and sideways (dphi)."""
    i = int(at * (len(parent.points) - 1))
    p0 = parent.points[i]
    rel = p0 - heart.centre
    s0 = float(rel @ heart.e1 / heart.a)
    phi0 = float(np.arctan2(rel @ heart.e3, rel @ heart.e2))
    t = np.linspace(0, 1, n)
    s_path = s0 + ds * length_s * t
    phi_path = phi0 + dphi * (1 - np.exp(-3 * t)) / (1 - np.exp(-3))
    v = _make_vessel(rng, heart, name, s_path, phi_path, 1.5, d0, d1, parent.arclength[i], tortuosity, main)
    return v


def make_heart(rng) -> Heart:
    centre = np.array([18.0, -8.0, -20.0]) + rng.normal(0, 5, 3)
    e1 = _unit(np.array([0.62, -0.5, -0.6]) + rng.normal(0, 0.06, 3))
    e2 = _unit(np.array([0.0, -1.0, 0.0]) - (np.array([0.0, -1.0, 0.0]) @ e1) * e1)
    e3 = np.cross(e1, e2)
    a = rng.uniform(62, 72)
    b = rng.uniform(42, 50)
    heart = Heart(centre, e1, e2, e3, a, b)
    heart.scale_centre = centre + 0.65 * a * e1

    def ellipsoid(m, axes, semi, mu):
        axes = np.asarray(axes, dtype=float)
        A = sum(np.outer(ax, ax) / s**2 for ax, s in zip(axes, semi))
        return (A, np.asarray(m, dtype=float), mu)

    mu = 1.0  # relative; the renderer scales by heart_mu_per_mm
    heart.quadrics = [
        ellipsoid(centre, [e1, e2, e3], [a, b, b], mu),  # LV (circular cross-section: twist-invariant)
        # Whole-heart envelope (pericardium, epicardial fat, both ventricles): softens the silhouette.
        ellipsoid(centre - 0.15 * a * e1 + 0.15 * b * _unit(e2 - 0.6 * e3), [e1, e2, e3],
                  [1.1 * a, 1.35 * b, 1.25 * b], 0.8 * mu),
        # RV: anterior and to the right of the LV, shorter.
        ellipsoid(centre + 0.35 * b * _unit(e2 - 0.6 * e3) - 0.1 * a * e1, [e1, e2, e3],
                  [0.8 * a, 0.75 * b, 0.95 * b], mu),
        # Atria at the base, posterior and superior.
        ellipsoid(centre - 0.95 * a * e1 + np.array([-10.0, 25.0, 10.0]), [e1, e2, e3],
                  [0.45 * a, 0.9 * b, 1.0 * b], mu),
        # Ascending aorta / great vessels: an elongated ellipsoid going up from the base.
        ellipsoid(centre - 0.9 * a * e1 + np.array([-12.0, -5.0, 60.0]),
                  [_unit([0.15, -0.1, 1.0]), _unit([1, 0, -0.15]), _unit([0, 1.0, 0.1])],
                  [90.0, 16.0, 16.0], 0.9 * mu),
    ]
    return heart


def make_tree(rng, heart: Heart, side: str, diameter_range, tortuosity):
    vessels: list[Vessel] = []
    d_main = rng.uniform(*diameter_range)
    n = 300
    t = np.linspace(0, 1, n)
    if side == "left":
        phi_lad = _phi(heart, [-0.3, -1.0, 0.2])
        phi_top = _phi(heart, [0.2, -0.6, 0.8])
        phi_lat = _phi(heart, [1.0, 0.2, 0.1])
        phi_post = _phi(heart, [0.3, 1.0, -0.3])
        # Left main: from the ostium down to the bifurcation.
        s_bif, phi_bif = -0.8, phi_top
        ost = _surface(heart, np.array([-0.98]), np.array([phi_top - 0.5]), np.array([9.0]))[0]
        bif = _surface(heart, np.array([s_bif]), np.array([phi_bif]), np.array([2.0]))[0]
        lm_pts = ost + (bif - ost) * t[:60, None] / t[59]
        lm_pts, _, arc = _resample(lm_pts, 0.3)
        lm = Vessel("LM", lm_pts, np.full(len(lm_pts), d_main / 2 * 1.05), arc, np.full(len(lm_pts), 0.3))
        vessels.append(lm)
        start = lm.arclength[-1]
        lad = _make_vessel(rng, heart, "LAD", s_bif + (0.97 - s_bif) * t,
                           phi_bif + (phi_lad - phi_bif) * np.minimum(1, t * 4),
                           2.0, 0.95 * d_main, 1.7, start, tortuosity)
        dphi = np.angle(np.exp(1j * (phi_post - phi_bif)))
        dlat = np.angle(np.exp(1j * (phi_lat - phi_bif)))
        lcx = _make_vessel(rng, heart, "LCx", s_bif + 0.15 * t + 0.25 * t**3,
                           phi_bif + (dlat + (dphi - dlat) * t**1.5) * t ** 0.8,
                           2.5, 0.85 * d_main, 1.6, start, tortuosity)
        vessels += [lad, lcx]
        sgn = np.sign(dlat) or 1.0
        for k, at in enumerate(sorted(rng.uniform(0.15, 0.6, 2))):
            vessels.append(_branch(rng, heart, lad, f"D{k + 1}", at, 1.0, sgn * rng.uniform(0.4, 0.8),
                                   rng.uniform(0.5, 0.9), rng.uniform(2.0, 2.6), 1.3, tortuosity, main=True))
        for k, at in enumerate(sorted(rng.uniform(0.2, 0.7, 2))):
            vessels.append(_branch(rng, heart, lcx, f"OM{k + 1}", at, 1.0, sgn * rng.uniform(-0.2, 0.3),
                                   rng.uniform(0.6, 1.1), rng.uniform(2.0, 2.6), 1.3, tortuosity, main=True))
        parents = [lad, lcx, vessels[3], vessels[5]]
    else:
        phi_a = _phi(heart, [-0.6, -1.0, 0.3])
        phi_r = _phi(heart, [-1.0, 0.0, -0.4])
        phi_p = _phi(heart, [0.1, 1.0, -0.5])
        d1 = np.angle(np.exp(1j * (phi_r - phi_a)))
        d2 = np.angle(np.exp(1j * (phi_p - phi_r)))
        phi_path = phi_a + np.where(t < 0.5, d1 * t / 0.5, d1 + d2 * (t - 0.5) / 0.5)
        s_path = -0.85 + 0.25 * t
        ost = _surface(heart, np.array([-0.95]), np.array([phi_a + 0.2 * np.sign(d1)]), np.array([14.0]))[0]
        rca = _make_vessel(rng, heart, "RCA", s_path, phi_path, 14.0 * (1 - t) + 3.0 * t,
                           d_main, 0.7 * d_main, 0.0, tortuosity)
        rca.points = np.concatenate([ost[None] + (rca.points[0] - ost) * np.linspace(0, 1, 30)[:-1, None],
                                     rca.points])
        extra = np.linalg.norm(rca.points[29] - ost)
        rca.radius = np.concatenate([np.full(29, rca.radius[0]), rca.radius])
        rca.arclength = np.concatenate([np.linspace(0, extra, 30)[:-1], rca.arclength + extra])
        rca.step = np.concatenate([np.full(29, extra / 29), rca.step])
        vessels.append(rca)
        pda = _branch(rng, heart, rca, "PDA", 0.97, 1.0, rng.uniform(-0.15, 0.15), rng.uniform(0.9, 1.3),
                      0.55 * d_main, 1.2, tortuosity, main=True)
        am = _branch(rng, heart, rca, "AM", rng.uniform(0.35, 0.55), 1.0, np.sign(d1) * 0.3,
                     rng.uniform(0.6, 0.9), 1.8, 1.0, tortuosity, main=True)
        vessels += [pda, am]
        parents = [rca, pda, am]
    # Small side branches for texture.
    for k in range(int(rng.integers(8, 14))):
        parent = parents[int(rng.integers(len(parents)))]
        vessels.append(_branch(rng, heart, parent, f"twig{k + 1}", rng.uniform(0.15, 0.9), 1.0,
                               rng.uniform(-0.6, 0.6), rng.uniform(0.15, 0.4), rng.uniform(1.0, 1.5), 0.8,
                               tortuosity, main=False, n=80))
    ostium = vessels[0].points[0]
    return vessels, ostium


def make_catheter(rng, heart: Heart, ostium):
    """A 6F guiding catheter: engaged in the ostium, up the ascending aorta and out of the field."""
    root = heart.centre - 0.9 * heart.a * heart.e1 + np.array([-12.0, -5.0, 10.0])
    top = root + np.array([rng.uniform(-10, 25), rng.uniform(10, 30), 220.0])
    mid = root + np.array([rng.uniform(-15, 0), 0.0, 70.0])
    tip_dir = _unit(ostium - root)
    del root, mid, top
    bend = ostium - 10 * tip_dir + np.array([0.0, 0.0, 8.0])
    aorta = ostium + np.array([-rng.uniform(18, 30), rng.uniform(-5, 10), rng.uniform(30, 45)])
    high = aorta + np.array([rng.uniform(-8, 4), rng.uniform(0, 15), 80.0])
    top = high + np.array([rng.uniform(-5, 20), rng.uniform(10, 30), 160.0])
    ctrl = np.array([ostium, bend, aorta, high, top])
    # Smooth the polyline by a Catmull-Rom-like dense interpolation.
    from scipy.interpolate import make_interp_spline

    tt = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
    spl = make_interp_spline(tt, ctrl, k=3)
    dense = spl(np.linspace(0, tt[-1], 1200))
    pts, _, _ = _resample(dense, 0.3)
    return pts


CALCIUM_SHAPES = ("spotty", "tram", "arc")


def _shape_centres(rng, v: Vessel, i: int, shape: str, length: float, width: float) -> np.ndarray:
    """Sphere centres of a tram-track (two lines on opposite walls along the vessel) or an arc
    (part of a ring around the lumen); spaced width/3 so the chain looks continuous."""
    i0, i1 = max(0, i - 3), min(len(v.points) - 1, i + 3)
    tangent = _unit(v.points[i1] - v.points[i0])
    normal = _unit(np.cross(tangent, [0.3, 0.5, 0.8]))
    binormal = np.cross(tangent, normal)
    psi = rng.uniform(0, 2 * np.pi)
    r_wall = max(0.0, float(v.radius[i]) - 0.3 * width)
    if shape == "arc":
        span = rng.uniform(np.pi / 3, np.pi)  # 60-180 degrees of the circumference
        n = max(2, int(np.ceil(span * max(r_wall, 0.5) / (width / 3.0))) + 1)
        ang = psi + np.linspace(0, span, n)
        return v.points[i] + r_wall * (np.cos(ang)[:, None] * normal + np.sin(ang)[:, None] * binormal)
    # Tram-track: both walls follow the vessel's curve over `length` mm.
    arc = v.arclength
    s = np.linspace(arc[i] - length / 2, arc[i] + length / 2, max(2, int(np.ceil(length / (width / 3.0))) + 1))
    s = np.clip(s, arc[0], arc[-1])
    line = np.stack([np.interp(s, arc, v.points[:, k]) for k in range(3)], axis=1)
    wall = np.cos(psi) * normal + np.sin(psi) * binormal
    return np.concatenate([line + r_wall * wall, line - r_wall * wall])


def make_deposits(rng, vessels: list[Vessel], n: int, size_range, mu_per_mm, mu_spread, small_prob=0.2,
                  shape_probs=(1.0, 0.0, 0.0)):
    """Calcified deposits on the walls of the main vessels, mostly proximal and mid segments.

    ``shape_probs`` are the probabilities of the shapes in :data:`CALCIUM_SHAPES`: spotty (a
    capsule on one wall), tram-track (two thin lines on opposite walls) and arc (part of a ring).
    The default (spotty only) draws no shape, so the random stream is as before.
    """
    draw_shape = tuple(shape_probs) != (1.0, 0.0, 0.0)
    probs = np.asarray(shape_probs, float) / max(float(np.sum(shape_probs)), 1e-12)
    mains = [v for v in vessels if v.main]
    weights = np.array([len(v.points) * (2.0 if v.name in ("LM", "LAD", "LCx", "RCA") else 1.0) for v in mains])
    weights = weights / weights.sum()
    deposits: list[Deposit] = []
    used: list[np.ndarray] = []
    tries = 0
    while len(deposits) < n and tries < 200:
        tries += 1
        v = mains[int(rng.choice(len(mains), p=weights))]
        i = int(rng.uniform(0.05, 0.75) * (len(v.points) - 1))
        # Log-uniform length; a fraction `small_prob` of small deposits (below 1.2 mm), the rest 1.2 mm and up.
        split = min(max(1.2, size_range[0]), size_range[1])
        if rng.random() < small_prob:
            length = float(np.exp(rng.uniform(np.log(size_range[0]), np.log(split))))
        else:
            length = float(np.exp(rng.uniform(np.log(split), np.log(size_range[1]))))
        width = float(max(size_range[0], length * rng.uniform(0.45, 1.0)))
        width = min(width, 2.0 * v.radius[i] + 0.5)
        length = max(length, width)
        i0, i1 = max(0, i - 3), min(len(v.points) - 1, i + 3)
        tangent = _unit(v.points[i1] - v.points[i0])
        normal = _unit(np.cross(tangent, [0.3, 0.5, 0.8]))
        binormal = np.cross(tangent, normal)
        psi = rng.uniform(0, 2 * np.pi)
        wall = np.cos(psi) * normal + np.sin(psi) * binormal
        centre = v.points[i] + wall * max(0.0, v.radius[i] - 0.3 * width)
        if any(np.linalg.norm(centre - u) < 8.0 for u in used):
            continue
        used.append(centre)
        k = max(1, int(np.ceil((length - width) / (width / 3.0))) + 1)
        offs = np.linspace(-(length - width) / 2, (length - width) / 2, k)
        centres = centre + offs[:, None] * tangent
        mu = float(mu_per_mm * rng.uniform(*mu_spread))
        if draw_shape:
            shape = CALCIUM_SHAPES[int(rng.choice(len(CALCIUM_SHAPES), p=probs))]
            if shape != "spotty":
                # Thin walls of calcium: tram-tracks and arcs are narrower than a spotty deposit.
                width = float(min(width, rng.uniform(0.4, 0.9)))
                centres = _shape_centres(rng, v, i, shape, max(length, 2.0), width)
        deposits.append(Deposit(len(deposits) + 1, v.name, centres, width / 2.0, length, width, mu,
                                float(v.arclength[i])))
    return deposits


def make_patient(rng, index: int, side: str, n_deposits: int, params) -> Patient:
    heart = make_heart(rng)
    vessels, ostium = make_tree(rng, heart, side, params.vessel_diameter_mm_range, params.tortuosity)
    catheter = make_catheter(rng, heart, ostium)
    deposits = make_deposits(rng, vessels, n_deposits, params.calcium_size_mm_range,
                             params.calcium_mu_per_mm, params.calcium_mu_spread, params.calcium_small_prob,
                             getattr(params, "calcium_shape_probs", (1.0, 0.0, 0.0)))
    tree_len = max(float(v.arclength.max()) for v in vessels)
    return Patient(index, side, heart, vessels, deposits, catheter, ostium, rng.uniform(65, 85), tree_len)
