"""A quick synthetic angiography cine with known phase, for the synchronization tests.

Not the project's phantom (CACTrainerLib.phantom): a moving texture that is
cheap enough to build in every test.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def synthetic_cine(
    n_frames: int = 120,
    size: int = 128,
    *,
    fps: float = 15.0,
    bpm: float = 70.0,
    rr_jitter: float = 0.03,
    onset_fraction: float = 0.5,
    washin_s: float = 1.0,
    respiration_px: float = 2.0,
    respiration_hz: float = 0.25,
    gain_drift: float = 0.05,
    noise: float = 0.01,
    seed: int = 0,
):
    """A small synthetic angiography cine with known phase, for tests.

    Not the project's phantom (CACTrainerLib.phantom): a quick moving texture.
    A textured background and a heart-shaped attenuating region carrying a few
    vessels; the heart contracts toward its centre with a fast systole (first
    third of each cycle) and a slow diastole, beat lengths jitter by
    ``rr_jitter`` (relative SD), the heart moves with respiration
    (``respiration_px`` amplitude at ``respiration_hz``), contrast fills the
    vessels from ``onset_fraction`` of the run over ``washin_s`` seconds, the
    exposure gain drifts slowly, and Poisson-like noise is added.  Dark =
    attenuating (XA convention).  Returns ``(frames uint16 (N, size, size), truth)``
    with ``truth`` = {"phase": (N,) cycles, phase 0 at the start of systole,
    "onset_frame", "contrast_start", "beat_frames", "period_frames"}.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    rr0 = 60.0 / bpm
    beats = [-rng.uniform(0, rr0)]
    while beats[-1] < t[-1] + rr0:
        beats.append(beats[-1] + rr0 * max(0.5, 1 + rr_jitter * rng.standard_normal()))
    beats = np.array(beats)
    unwrapped = np.interp(t, beats, np.arange(beats.size))
    phase = unwrapped % 1.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 25) * 0.4 + 0.6 * yy + 0.3
    cy, cx = 0.5 + 0.05 * rng.standard_normal(), 0.5 + 0.05 * rng.standard_normal()
    heart = 0.6 / (1 + np.exp(((((yy - cy) / 0.3) ** 2 + ((xx - cx) / 0.35) ** 2) - 1) * 12))
    vessels = np.zeros((size, size))
    for _ in range(4):  # random smooth curves
        ang = rng.uniform(0, 2 * np.pi)
        p = np.array([cy, cx]) + 0.15 * np.array([np.sin(ang), np.cos(ang)])
        d = rng.uniform(0, 2 * np.pi)
        for _s in range(int(size * 0.6)):
            d += 0.15 * rng.standard_normal()
            p = p + np.array([np.sin(d), np.cos(d)]) / size
            r, c = int(p[0] * size), int(p[1] * size)
            if 0 <= r < size and 0 <= c < size:
                vessels[r, c] = 1.0
    vessels = ndimage.gaussian_filter(vessels, max(0.8, size / 160)) * 6
    layer_static = heart + 0.03 * vessels
    layer_contrast = vessels
    onset_t = onset_fraction * t[-1]
    conc = np.clip((t - onset_t) / max(washin_s, 1e-6), 0, 1)
    onset_frame = int(np.argmax(conc > 0)) if (conc > 0).any() else n_frames
    contrast_start = int(np.argmax(conc >= 1)) if (conc >= 1).any() else n_frames
    resp_phase = rng.uniform(0, 2 * np.pi)
    gain = 1 + gain_drift * np.sin(2 * np.pi * t / max(t[-1], 1e-6) + rng.uniform(0, 2 * np.pi))
    frames = np.empty((n_frames, size, size), np.uint16)
    Y, X = np.mgrid[0:size, 0:size].astype(np.float32)
    for k in range(n_frames):
        ph = phase[k]
        s = (1 - np.cos(np.pi * ph * 3)) / 2 if ph < 1 / 3 else (1 + np.cos(np.pi * (ph - 1 / 3) * 1.5)) / 2
        shrink = 0.12 * s
        twist = 0.06 * s
        dy = respiration_px * np.sin(2 * np.pi * respiration_hz * t[k] + resp_phase)
        ry, rx = Y - cy * size - dy, X - cx * size
        sy = cy * size + ry * (1 + shrink) + twist * rx
        sx = cx * size + rx * (1 + shrink) - twist * ry
        moving = ndimage.map_coordinates(layer_static + conc[k] * layer_contrast, [sy, sx], order=1, mode="nearest")
        att = bg + moving
        img = gain[k] * 3000 * np.exp(-att)
        img = img + noise * np.sqrt(3000 * np.maximum(img, 0)) * rng.standard_normal(img.shape)
        frames[k] = np.clip(img, 0, 4095).astype(np.uint16)
    truth = {
        "phase": phase,
        "onset_frame": onset_frame,
        "contrast_start": contrast_start,
        "beat_frames": (beats * fps).tolist(),
        "period_frames": rr0 * fps,
    }
    return frames, truth
