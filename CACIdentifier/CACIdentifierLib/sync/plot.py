"""The synchronization picture: eq. 1 with beats, onset and contrast arrival, the phase, the pairs."""

from __future__ import annotations

import numpy as np

from ..fileutil import atomic_output
from .result import SyncResult


def plot_sync(result: SyncResult, path, *, overwrite: bool = False, title: str | None = None) -> None:
    """Write a PNG: eq. 1 signal with beats, onset and contrast arrival, the phase, and the pairs.

    Top: the ECG-like signal (paper eq. 1) per frame, the non-contrast part and
    the fully-arrived contrast part shaded, beats (phase 0) as vertical lines
    (ECG R waves dashed when an ECG was used, image-based beats dotted).
    Middle: the phase per frame (image-based, and ECG-based when present).
    Bottom: each pair as a line from its non-contrast frame to its contrast frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.signal)
    k = np.arange(n)
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]})
    ax = axes[0]
    ax.plot(k, result.signal, "k.-", lw=1, ms=3, label="eq. 1 signal (frame 0 reference)")
    ax.axvspan(-0.5, result.onset_frame - 0.5, color="tab:blue", alpha=0.08, label="non-contrast")
    ax.axvspan(result.contrast_start - 0.5, n - 0.5, color="tab:red", alpha=0.08, label="contrast arrived")
    if result.ecg is not None:
        for i, b in enumerate(result.ecg.beat_frames):
            ax.axvline(b, color="tab:green", ls="--", lw=1, label="ECG R wave" if i == 0 else None)
    if result.image is not None:
        for i, b in enumerate(result.image.beat_frames):
            ax.axvline(b, color="tab:purple", ls=":", lw=1.2, label="image beat (phase 0)" if i == 0 else None)
    ax.set_ylabel("dist_norm (eq. 1)")
    ax.legend(loc="lower right", fontsize=7, ncol=3)
    head = title or "cardiac synchronization"
    per = "no period" if result.period_frames is None else f"period {result.period_frames:.2f} frames"
    ax.set_title(f"{head}\n{per}, confidence {result.confidence:.2f}, "
                 f"{'ECG' if result.ecg_used else result.method + ' method'}", fontsize=9)
    ax = axes[1]
    if result.image is not None:
        ax.plot(k, result.image.phase, ".", color="tab:purple", ms=4, label="image phase")
    if result.ecg is not None:
        ax.plot(k, result.ecg.phase, "x", color="tab:green", ms=4, label="ECG phase")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("phase (cycles)")
    ax.legend(loc="upper right", fontsize=7)
    ax = axes[2]
    for a, b in result.pairs:
        ax.plot([a, b], [0, 1], "-", color="tab:gray", lw=0.7)
    if result.pairs:
        pa = np.array(result.pairs)
        ax.plot(pa[:, 0], np.zeros(len(pa)), "o", color="tab:blue", ms=3, label="non-contrast frame")
        ax.plot(pa[:, 1], np.ones(len(pa)), "o", color="tab:red", ms=3, label="paired contrast frame")
        ax.legend(loc="center right", fontsize=7)
    ax.set_yticks([0, 1], ["non-contrast", "contrast"])
    ax.set_xlabel("frame (0-based)")
    ax.set_xlim(-0.5, n - 0.5)
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
