"""Three simulated annotators and their majority vote.

As in the paper, annotators draw calcium on the non-contrast frames only.  Each
annotator draws the true footprint with

- a personal bias (draws larger or smaller by ``annotator_bias_px_range`` px),
- a smooth random boundary jitter (``annotator_jitter_px``), new for every frame,
- a chance to miss a faint deposit altogether (``annotator_miss_faint_prob`` for
  each deposit whose peak extra attenuation is below ``faint_attenuation``),
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


def annotate(params, renderer, calcium, rng):
    """Return (annotators: list of 3 bool arrays, majority bool array, notes dict)."""
    n, rows, cols = calcium.shape
    onset = int(renderer.tl["onset"])
    deposits = renderer.pat.deposits
    masks = [np.zeros_like(calcium) for _ in range(N_ANNOTATORS)]
    notes = []
    pad = 3
    for a in range(N_ANNOTATORS):
        bias = float(rng.uniform(*params.annotator_bias_px_range))
        missed = []
        for dep in deposits:
            faint = dep.mu_per_mm * dep.width_mm < params.faint_attenuation
            if faint and rng.random() < params.annotator_miss_faint_prob:
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
        notes.append({"annotator": a + 1, "bias_px": bias, "missed": missed, "spurious": spurious})
    majority = majority_vote(masks)
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
