"""Three simulated annotators and their majority vote.

As in the paper, annotators draw calcium on the non-contrast frames only.  Each
annotator draws the true footprint with

- a personal bias (draws larger or smaller by ``annotator_bias_px_range`` px),
- a smooth random boundary jitter (``annotator_jitter_px``), new for every frame,
- a chance to miss a faint deposit altogether (``annotator_miss_faint_prob`` for
  each deposit whose peak extra attenuation is below ``faint_attenuation``),
- with ``annotator_min_snr`` > 0, only what can be seen: a deposit is drawn
  only if its :func:`detectability` in the rendered non-contrast frames
  reaches the annotator's own threshold (``annotator_min_snr`` times 0.8-1.25).
  Real annotators cannot mark calcium that noise and anatomy hide; labelling
  it anyway teaches a classifier to guess from the vessels instead of the calcium,
- a chance to add one small spurious deposit on a vessel wall over a run of
  frames (``annotator_spurious_prob`` per acquisition).

The majority is the per-pixel vote of at least two of the three.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

N_ANNOTATORS = 3


def _signed_distance(mask):
    """Signed distance in px to the mask boundary: negative inside, positive outside."""
    inside = ndi.distance_transform_edt(mask)
    outside = ndi.distance_transform_edt(~mask)
    return np.where(mask, 0.5 - inside, outside - 0.5)


def detectability(frame, mask, others=None, *, ring=(2, 6)):
    """Rose signal-to-noise ratio of a dark blob in one image.

    The blob's mean darkening below a plane fitted to a ring around it, divided
    by the ring's residual standard deviation (quantum noise and anatomical
    clutter together), times the square root of the blob's area in pixels.
    About 5 is the Rose criterion for seeing a blob for certain.

    Parameters
    ----------
    frame : (rows, cols) array
        MONOCHROME2 image (attenuation is dark).
    mask : (rows, cols) bool
        The blob.
    others : (rows, cols) bool or None
        Pixels left out of the ring (other blobs).
    ring : (int, int)
        Inner and outer ring distance in pixels.

    Returns
    -------
    float
        0 where the ring is too small to measure.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> img = 100 + rng.normal(0, 2, (40, 40))
    >>> m = np.zeros((40, 40), bool); m[18:22, 18:22] = True
    >>> bool(detectability(img, m) < 3)
    True
    >>> bool(detectability(img - 10 * m, m) > 15)
    True
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0.0
    rs, cs = np.nonzero(mask)
    pad = ring[1] + 1
    r0, r1 = max(rs.min() - pad, 0), min(rs.max() + pad + 1, mask.shape[0])
    c0, c1 = max(cs.min() - pad, 0), min(cs.max() + pad + 1, mask.shape[1])
    m = mask[r0:r1, c0:c1]
    img = np.asarray(frame[r0:r1, c0:c1], np.float64)
    band = ndi.binary_dilation(m, iterations=ring[1]) & ~ndi.binary_dilation(m, iterations=ring[0])
    if others is not None:
        band &= ~np.asarray(others[r0:r1, c0:c1], bool)
    if band.sum() < 12:
        return 0.0
    yy, xx = np.nonzero(band)
    # A plane, not a constant: a blob on the heart border is not darker than the lung beside it.
    design = np.column_stack([np.ones(yy.size), yy, xx]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, img[band], rcond=None)
    sigma = float(np.std(img[band] - design @ coef)) + 1e-6
    my, mx = np.nonzero(m)
    darkening = float(np.mean(np.column_stack([np.ones(my.size), my, mx]) @ coef - img[m]))
    return max(0.0, darkening / sigma * float(np.sqrt(m.sum())))


def deposit_detectability(renderer, frames, calcium, onset):
    """Median :func:`detectability` of each deposit over the non-contrast frames it shows in."""
    out = []
    for j in range(len(renderer.pat.deposits)):
        vals = []
        for k, r0, c0, m in renderer.patches[j]:
            if k >= onset:
                continue
            full = np.zeros(calcium.shape[1:], bool)
            full[r0:r0 + m.shape[0], c0:c0 + m.shape[1]] = m
            vals.append(detectability(frames[k], full, calcium[k] & ~full))
        out.append(float(np.median(vals)) if vals else 0.0)
    return out


def annotate(params, renderer, calcium, rng, frames=None):
    """Return (annotators: list of 3 bool arrays, majority bool array, notes dict).

    ``frames`` (the rendered cine) is needed when ``params.annotator_min_snr`` > 0.
    """
    n, rows, cols = calcium.shape
    onset = int(renderer.tl["onset"])
    deposits = renderer.pat.deposits
    masks = [np.zeros_like(calcium) for _ in range(N_ANNOTATORS)]
    notes = []
    pad = 3
    min_snr = float(getattr(params, "annotator_min_snr", 0.0) or 0.0)
    seen = None
    if min_snr > 0:
        if frames is None:
            raise ValueError("annotator_min_snr needs the rendered frames")
        seen = deposit_detectability(renderer, frames, calcium, onset)
    for a in range(N_ANNOTATORS):
        bias = float(rng.uniform(*params.annotator_bias_px_range))
        missed = []
        threshold = min_snr * float(rng.uniform(0.8, 1.25)) if seen is not None else 0.0
        for j, dep in enumerate(deposits):
            faint = dep.mu_per_mm * dep.width_mm < params.faint_attenuation
            if faint and rng.random() < params.annotator_miss_faint_prob:
                missed.append(dep.id)
            elif seen is not None and seen[j] < threshold:
                missed.append(dep.id)
        for j, dep in enumerate(deposits):
            if dep.id in missed:
                continue
            for k, r0, c0, m in renderer.patches[j]:
                if k >= onset:
                    continue
                big = np.pad(m, pad)
                sd = _signed_distance(big)
                noise = ndi.gaussian_filter(rng.standard_normal(big.shape), 1.2)
                noise *= params.annotator_jitter_px / (noise.std() + 1e-9)
                drawn = sd <= bias + noise
                if not drawn.any():
                    drawn = big
                R0, C0 = r0 - pad, c0 - pad
                rs0, cs0 = max(R0, 0), max(C0, 0)
                rs1, cs1 = min(R0 + big.shape[0], rows), min(C0 + big.shape[1], cols)
                masks[a][k, rs0:rs1, cs0:cs1] |= drawn[rs0 - R0:rs1 - R0, cs0 - C0:cs1 - C0]
        spurious = None
        if rng.random() < params.annotator_spurious_prob and onset > 2:
            spurious = _spurious(params, renderer, masks[a], onset, rng)
        note = {"annotator": a + 1, "bias_px": bias, "missed": missed, "spurious": spurious}
        if seen is not None:
            note["min_snr"] = threshold
        notes.append(note)
    majority = majority_vote(masks)
    if seen is not None:
        for dep, d in zip(renderer.pat.deposits, seen):
            dep.detectability = round(d, 3)
    return masks, majority, notes


def _spurious(params, renderer, mask, onset, rng):
    """A small blob on a vessel wall, moving with the vessel, over a run of non-contrast frames."""
    main = np.nonzero(renderer.vessel_radius >= 0.8)[0]
    i = int(main[rng.integers(len(main))])
    length = int(max(1, round(onset * rng.uniform(0.3, 1.0))))
    start = int(rng.integers(0, onset - length + 1))
    radius_px = rng.uniform(0.4, 0.9) / renderer.view.spacing_mm
    side = rng.choice([-1.0, 1.0])
    n, rows, cols = mask.shape
    frames = []
    for k in range(start, start + length):
        r, c = renderer.centerlines[k, i]
        j = min(i + 1, len(renderer.vessel_radius) - 1)
        tr, tc = renderer.centerlines[k, j] - renderer.centerlines[k, i]
        norm = np.hypot(tr, tc) or 1.0
        wall = renderer.vessel_radius[i] / renderer.view.spacing_mm
        r, c = r + side * tc / norm * wall, c - side * tr / norm * wall
        R = int(np.ceil(radius_px)) + 1
        r0, c0 = int(round(r)) - R, int(round(c)) - R
        yy, xx = np.mgrid[r0:r0 + 2 * R + 1, c0:c0 + 2 * R + 1]
        disk = (yy - r) ** 2 + (xx - c) ** 2 <= radius_px**2
        ok = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols) & disk
        if ok.any():
            mask[k, yy[ok], xx[ok]] = True
            frames.append(k)
    return {"frames": [frames[0], frames[-1]] if frames else [], "radius_px": float(radius_px)}


def majority_vote(masks):
    """Per-pixel majority (at least half, rounded up) of boolean masks of the same shape."""
    if len(masks) == 3:  # the usual case, with boolean algebra (no integer copies)
        a, b, c = masks
        return (a & b) | (c & (a | b))
    total = np.zeros(masks[0].shape, np.uint8)
    for m in masks:
        total += m
    return total >= (len(masks) // 2 + 1)
