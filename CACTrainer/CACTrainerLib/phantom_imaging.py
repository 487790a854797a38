"""Image formation of the phantom: line integrals of attenuation, Beer-Lambert, detector.

Everything here works on the *line integral* ``L`` (dimensionless, sum of
mu * path length along the ray from the source to a detector pixel) relative
to an unobstructed lung field.  :func:`detect` turns it into stored pixels:
``I = exp(-L)``, quantum noise (Gaussian approximation of Poisson counts with
``photons`` quanta per pixel at L = 0), detector blur (Gaussian, in the
intensity domain, so the noise is correlated as on a real detector), a
logarithmic look-up table (as XA systems store images) and quantization.
Convention (as the real XA files, MONOCHROME2): higher attenuation -> lower
pixel value, i.e. bone, heart and contrast-filled vessels are dark and the
lung field is bright.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# ----------------------------------------------------------------------------------------------
# Vessels and catheter: sphere sweeps splatted with np.bincount.


def splat_spheres(shape, rows, cols, rad_px, weight, out=None):
    """Accumulate the projected thickness of spheres into ``out`` (float32, ``shape``).

    Each sample i is a sphere projected at (rows[i], cols[i]) with radius
    ``rad_px[i]`` pixels; it adds ``weight[i] * area_norm * sqrt(1 - d^2/rad^2)``
    around its centre, normalised so that its integral over the image is
    ``weight[i] * 2/3 * pi * rad^2`` even when the sphere is smaller than a
    pixel (no sample is lost between pixel centres).  A chain of spheres of
    radius R (mm) spaced h (mm) with ``weight = 1.5 * h * mu`` gives, across the
    chain, a profile of the same area as the cylinder's chord ``2 sqrt(R^2 - d^2) mu``
    (a parabola instead of a half-ellipse).
    """
    h, w = shape
    if out is None:
        out = np.zeros(shape, np.float32)
    flat = out.reshape(-1)
    rad_px = np.maximum(rad_px, 0.35)
    keep = (rows > -rad_px - 2) & (rows < h + rad_px + 1) & (cols > -rad_px - 2) & (cols < w + rad_px + 1)
    rows, cols, rad_px, weight = rows[keep], cols[keep], rad_px[keep], weight[keep]
    half = np.ceil(rad_px + 0.5).astype(int)
    for k in np.unique(half):
        sel = half == k
        r, c = rows[sel], cols[sel]
        rad = rad_px[sel].astype(np.float32)
        off = np.arange(-k, k + 1)
        r0 = np.floor(r).astype(np.int64)
        c0 = np.floor(c).astype(np.int64)
        # Separable pieces on small (n, 2k+1) arrays, combined by broadcasting.
        dr = ((r0 - r)[:, None] + off).astype(np.float32)
        dc = ((c0 - c)[:, None] + off).astype(np.float32)
        inv = 1.0 / rad**2
        q = 1.0 - (dr * dr * inv[:, None])[:, :, None] - (dc * dc * inv[:, None])[:, None, :]
        np.maximum(q, 0.0, out=q)
        val = np.sqrt(q)
        total = val.sum(axis=(1, 2))
        norm = np.where(total > 0, (2.0 / 3.0 * np.pi * rad**2) / np.maximum(total, 1e-9), 0.0)
        val *= (weight[sel] * norm).astype(np.float32)[:, None, None]
        rr = r0[:, None] + off
        cc = c0[:, None] + off
        inside = ((rr >= 0) & (rr < h))[:, :, None] & ((cc >= 0) & (cc < w))[:, None, :]
        idx = (rr * w)[:, :, None] + cc[:, None, :]
        flat += np.bincount(idx[inside], val[inside], minlength=h * w).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# Heart: chords of quadrics along the diverging rays.


def quadric_chords(rays, source, quadrics, overlap=0.35):
    """Attenuation (mu * chord length in mm) of overlapping quadrics along unit rays (3, h, w) from ``source``.

    The heart's chambers are one body, so their chords are combined as
    ``max + overlap * (sum - max)`` rather than summed (a sum would darken
    wherever two ellipsoids overlap).

    A quadric is ``(A, m, mu)``: the set ``(p - m)^T A (p - m) <= 1``.  The chord
    of the ray ``source + lambda r`` is ``2 sqrt(b^2 - a c) / a`` with
    ``a = r.A.r``, ``b = r.A.(source - m)``, ``c = (source - m).A.(source - m) - 1``.
    """
    total = np.zeros(rays.shape[1:], np.float32)
    top = np.zeros(rays.shape[1:], np.float32)
    for A, m, mu in quadrics:
        s = (source - m).astype(np.float32)
        A = A.astype(np.float32)
        Ar = np.tensordot(A, rays, axes=(1, 0))  # (3, h, w)
        a = np.einsum("ihw,ihw->hw", rays, Ar)
        b = np.tensordot(s, Ar, axes=(0, 0))
        c = float(s @ A @ s - 1.0)
        disc = b * b - a * c
        np.maximum(disc, 0.0, out=disc)
        chord = (mu * 2.0) * np.sqrt(disc) / a
        total += chord
        np.maximum(top, chord, out=top)
    return top + overlap * (total - top)


def linear_upsampler(n_in: int, n_out: int):
    """Indices and weights ``(i0, i1, w1)`` of linear interpolation from ``n_in`` to ``n_out``
    samples with aligned pixel centres (``grid_mode``: input pixel i covers output pixels
    [i*f, (i+1)*f)), edges clamped, as ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")``."""
    f = n_out / n_in
    x = np.clip((np.arange(n_out) + 0.5) / f - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def upsample(img, rows, cols):
    """Separable bilinear upsampling of a coarse grid with :func:`linear_upsampler` tables.

    Gathers and multiply-adds only: single-threaded and cheap (no BLAS, whose
    threads spin badly when the CPU is shared).
    """
    r0, r1, wr = rows
    c0, c1, wc = cols
    a = img[r0] * (1 - wr)[:, None] + img[r1] * wr[:, None]
    return a[:, c0] * (1 - wc) + a[:, c1] * wc


# ----------------------------------------------------------------------------------------------
# Static anatomy canvases (iso-plane mm grid with a margin for respiration and pan).


def smooth_noise(rng, shape, slope, std):
    """Isotropic 1/f^slope noise with standard deviation ``std`` (FFT filtering of white noise)."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    filt = 1.0 / f ** (slope / 2.0)
    filt[0, 0] = 0.0
    out = np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape)
    return (out / (out.std() + 1e-12) * std).astype(np.float32)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def spine_layer(rng, X, Y, spine_x, spine_dxdy, primary_deg, secondary_deg, mu):
    """Vertebrae (bodies with cortical rims, pedicles, discs, trabecular texture) and paraspinal
    soft tissue around a near-vertical axis at ``spine_x + spine_dxdy * Y`` (mm)."""
    a = np.deg2rad(primary_deg)
    b = np.deg2rad(secondary_deg)
    hw0 = 0.5 * np.hypot(44 * np.cos(a), 34 * np.sin(a))
    dx0 = X - (spine_x + spine_dxdy * Y)
    pitch = 31.0 * np.cos(b) + 3.0
    y0 = rng.uniform(0, pitch)
    idx = np.floor((Y - y0) / pitch).astype(int)
    idx -= idx.min()
    nv = int(idx.max()) + 1
    # Per vertebra: width, height and a small lateral offset (scoliosis, rotation).
    w_k = hw0 * rng.uniform(0.9, 1.1, nv)
    h_k = (24.0 * np.cos(b) + 6.0 * abs(np.sin(b))) * rng.uniform(0.9, 1.05, nv)
    x_k = rng.normal(0, 1.5, nv)
    hw = w_k[idx]
    height = h_k[idx]
    dx = dx0 - x_k[idx]
    soft = 1.2 + 5.0 * abs(np.sin(b))  # endplates blur when seen obliquely
    yy = np.mod(Y - y0, pitch) - pitch / 2
    body_y = _sigmoid((height / 2 - np.abs(yy)) / soft)
    across = np.sqrt(np.clip(1 - (dx / hw) ** 2, 0, None))
    rim = np.exp(-(((np.abs(dx) - hw * 0.93) / 2.2) ** 2))
    texture = 1.0 + smooth_noise(rng, X.shape, 2.2, 0.12)
    L = mu * (0.5 * across * texture + 0.12 * rim) * (0.7 + 0.3 * body_y)
    # Pedicles: two faint oval rings in the upper half of each body.
    for side in (-1, 1):
        px = dx - side * 0.62 * hw
        py = yy + 0.2 * height
        rr = np.sqrt((px / 5.5) ** 2 + (py / 7.5) ** 2)
        L += mu * 0.06 * np.exp(-(((rr - 1.0) / 0.35) ** 2))
    L += mu * 0.3 * np.exp(-((dx0 / (2.6 * hw0)) ** 2))  # paraspinal muscles, mediastinum
    return L.astype(np.float32)


def rib_layer(rng, X, Y, n, mu):
    """Ribs: curved cortical tubes (edges more attenuating than the marrow)."""
    L = np.zeros(X.shape, np.float32)
    ymin, ymax = float(Y.min()), float(Y.max())
    xmid = float(X.mean())
    spacing = (ymax - ymin) / n
    for k in range(n):
        y0 = ymin + (k + rng.uniform(0.2, 0.8)) * spacing
        slope = rng.uniform(-0.5, 0.5)
        curv = rng.uniform(-1, 1) / 300.0
        x0 = xmid + rng.uniform(-60, 60)
        f = y0 + slope * (X - x0) + curv * (X - x0) ** 2
        fp = slope + 2 * curv * (X - x0)
        dist = (Y - f) / np.sqrt(1 + fp**2)
        half = rng.uniform(4.0, 6.0)
        outer = np.sqrt(np.clip(half**2 - dist**2, 0, None))
        inner = np.sqrt(np.clip((half - 1.3) ** 2 - dist**2, 0, None))
        # Ribs end somewhere (costal cartilage is not visible).
        extent = _sigmoid((rng.uniform(50, 120) - np.abs(X - x0 - rng.uniform(-40, 40))) / 6.0)
        L += (mu * (outer - 0.75 * inner) * extent).astype(np.float32)
    return L


def lung_markings(rng, shape, spacing_mm, n, mu_per_mm):
    """Pulmonary vessels: thin random smooth curves (0.4-1.2 mm radius, 15-60 mm long) in the lungs."""
    rows, cols, rads, ws = [], [], [], []
    for _ in range(n):
        length = rng.uniform(15, 60) / spacing_mm
        m = max(4, int(length * 2))
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.04, m))
        r = rng.uniform(0, shape[0]) + np.cumsum(0.5 * np.sin(ang))
        c = rng.uniform(0, shape[1]) + np.cumsum(0.5 * np.cos(ang))
        rad_mm = rng.uniform(0.4, 1.2) * np.linspace(1.0, 0.5, m)
        rows.append(r)
        cols.append(c)
        rads.append(rad_mm / spacing_mm)
        ws.append(1.5 * 0.5 * spacing_mm * mu_per_mm * np.ones(m))
    out = np.zeros(shape, np.float32)
    if n:
        splat_spheres(shape, np.concatenate(rows), np.concatenate(cols), np.concatenate(rads),
                      np.concatenate(ws), out=out)
    return out


def diaphragm_layer(rng, X, Y, dome_y, dome_x, mu):
    """Diaphragm and liver: a dome below which attenuation rises over ~15 mm."""
    curv = rng.uniform(1 / 500.0, 1 / 250.0)
    yd = dome_y + curv * (X - dome_x) ** 2
    depth = Y - yd
    return (mu * _sigmoid(depth / 2.5) * (1 - np.exp(-np.clip(depth, 0, None) / 15.0))).astype(np.float32)


def crop_shift(canvas, r0, c0, rows, cols):
    """Bilinear crop of ``canvas`` starting at fractional (r0, c0): a sub-pixel translation."""
    ir, ic = int(np.floor(r0)), int(np.floor(c0))
    fr, fc = r0 - ir, c0 - ic
    ir = min(max(ir, 0), canvas.shape[0] - rows - 1)
    ic = min(max(ic, 0), canvas.shape[1] - cols - 1)
    a = canvas[ir:ir + rows, ic:ic + cols]
    b = canvas[ir:ir + rows, ic + 1:ic + cols + 1]
    c = canvas[ir + 1:ir + rows + 1, ic:ic + cols]
    d = canvas[ir + 1:ir + rows + 1, ic + 1:ic + cols + 1]
    return (1 - fr) * ((1 - fc) * a + fc * b) + fr * ((1 - fc) * c + fc * d)


# ----------------------------------------------------------------------------------------------
# Detector


def detect(L, rng, photons, blur_px, white, gain, max_value, exposure=1.0):
    """Stored pixel values of a line-integral image (see module docstring)."""
    intensity = np.exp(-L) * np.float32(exposure)
    noise = rng.standard_normal(L.shape, dtype=np.float32)
    counts = intensity + np.sqrt(intensity / np.float32(photons)) * noise
    if blur_px > 0:
        counts = ndi.gaussian_filter(counts, blur_px, truncate=3.0)
    np.maximum(counts, np.float32(1e-4), out=counts)
    value = np.float32(white) + np.float32(gain) * np.log(counts)
    np.clip(value, 0, max_value, out=value)
    return np.rint(value)


def xa_unsharp(x, params):
    """XA display processing: harmonization and edge enhancement, two unsharp masks.

    ``y = x + g_L (x - B_L x) + g_S (x - G_S x)``, with ``B_L`` two box filters of the
    variance of a Gaussian of ``sigma_L`` (the large kernel that flattens the background,
    harmonization) and ``G_S`` a Gaussian of ``sigma_S`` (edge enhancement).  Linear, so it
    commutes with a difference of images; not clipped or re-mapped (the callers do: the
    phantom to its stored range, training to the frame's percentiles).

    Parameters
    ----------
    x : (H, W) float array
    params : (sigma_L, gain_L, sigma_S, gain_S)
        Kernel sizes in pixels and gains >= 0; zero gains leave ``x`` unchanged.

    Returns
    -------
    (H, W) float32 array

    Examples
    --------
    A small dark spot gets deeper; a flat image stays flat.

    >>> x = np.full((32, 32), 100.0, np.float32); x[16, 16] = 90.0
    >>> y = xa_unsharp(x, (8.0, 1.0, 1.0, 1.0))
    >>> bool(y[16, 16] < 90.0), float(np.ptp(xa_unsharp(np.full((8, 8), 3.0), (8.0, 1.0, 1.0, 1.0))))
    (True, 0.0)
    """
    sigma_l, gain_l, sigma_s, gain_s = (float(v) for v in params)
    x = np.asarray(x, np.float32)
    y = x.copy()
    if gain_l > 0:
        width = max(int(round(sigma_l * np.sqrt(6.0))), 1)  # two boxes of this width: the Gaussian's variance
        low = ndi.uniform_filter(ndi.uniform_filter(x, width, mode="reflect"), width, mode="reflect")
        y += np.float32(gain_l) * (x - low)
    if gain_s > 0:
        y += np.float32(gain_s) * (x - ndi.gaussian_filter(x, sigma_s, mode="reflect"))
    return y
