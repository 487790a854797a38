"""Out-of-distribution check from the classifier's activation statistics (issue 12, item 5).

A model can only be trusted on images like those it learned from.  The vector
its classifier reads -- Block6's feature map averaged over the patch -- has, on
held-out data of the model's own domain, a per-channel mean and SD.  A frame
whose patches lie far outside them (a large mean squared z-score over the
channels) is unlike anything the model saw, whatever probability it prints.
The model card stores the statistics (``feature_statistics``) with the frame
scores' median and 99th percentile on that data; :func:`ood_warning` speaks
when the median frame of a cine scores above the 99th percentile times
:data:`MARGIN`.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(0, 1, (400 * 5, 16))              # 400 frames x 5 patches, 16 channels
>>> stats = feature_statistics(ref, patches_per_frame=5, data="example")
>>> same = frame_scores(rng.normal(0, 1, (50 * 5, 16)), stats)
>>> far = frame_scores(rng.normal(3, 1, (50 * 5, 16)), stats)
>>> ood_warning(same, stats) is None, ood_warning(far, stats) is not None
(True, True)
"""

from __future__ import annotations

import numpy as np

# A cine is flagged when its median frame scores above MARGIN x the 99th percentile of the
# held-out frames: the percentile alone would flag 1 % of in-domain frames' cines by chance.
MARGIN = 1.5
MAX_CHANNELS = 4096


def _z2(pooled: np.ndarray, stats: dict) -> np.ndarray:
    mean = np.asarray(stats["mean"], np.float64)
    std = np.asarray(stats["std"], np.float64)
    x = np.asarray(pooled, np.float64)
    if x.ndim != 2 or x.shape[1] != mean.size:
        raise ValueError(f"features of shape {x.shape} do not match statistics of {mean.size} channels")
    return np.mean(((x - mean) / std) ** 2, axis=1)


def frame_scores(pooled, stats: dict, patches_per_frame: int = 5) -> np.ndarray:
    """Per frame, the mean over its patches of the mean squared z-score of the pooled features.

    Parameters
    ----------
    pooled : (frames * patches_per_frame, channels) array
        Patch feature vectors, frame by frame.
    stats : dict
        :func:`feature_statistics` output (a model card's ``feature_statistics``).
    patches_per_frame : int

    Returns
    -------
    (frames,) float64
    """
    z2 = _z2(pooled, stats)
    return z2.reshape(-1, patches_per_frame).mean(axis=1)


def feature_statistics(pooled, *, patches_per_frame: int = 5, data: str = "") -> dict:
    """Per-channel mean and SD of held-out patch features, and the frame scores' median and 99th percentile.

    The mean and SD come from the even frames and the score percentiles from
    the odd ones, so the percentiles are those of frames the statistics did
    not see.  SDs are floored at 1e-3 of their median (a dead channel must not
    divide by zero).
    """
    x = np.asarray(pooled, np.float64).reshape(-1, patches_per_frame, np.shape(pooled)[-1])
    if x.shape[0] < 4:
        raise ValueError("feature statistics need at least 4 frames")
    fit, held = x[0::2].reshape(-1, x.shape[2]), x[1::2].reshape(-1, x.shape[2])
    mean = fit.mean(axis=0)
    std = fit.std(axis=0)
    std = np.maximum(std, 1e-3 * max(float(np.median(std)), 1e-12))
    stats = {"layer": "block6 (average-pooled)", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    held_scores = frame_scores(held.reshape(-1, x.shape[2]), stats, patches_per_frame)
    stats.update(frame_score_median=float(np.median(held_scores)),
                 frame_score_q99=float(np.quantile(held_scores, 0.99)),
                 frames=int(x.shape[0]), data=str(data))
    return stats


def ood_warning(scores, stats: dict | None) -> str | None:
    """One warning line when the cine's median frame score is beyond the held-out range, else None."""
    scores = np.asarray(scores, float)
    if not stats or scores.size == 0:
        return None
    median = float(np.median(scores))
    limit = MARGIN * float(stats["frame_score_q99"])
    if median <= limit:
        return None
    return (f"the cine's image features lie outside the model's training data (activation score {median:.3g}, "
            f"held-out frames {float(stats['frame_score_median']):.3g}, 99 % below "
            f"{float(stats['frame_score_q99']):.3g}): do not trust the ROIs or the probability; "
            "train or fine-tune on runs like this one")


def validate_statistics(stats, check_float, bad) -> None:
    """Schema of a model card's ``feature_statistics`` (used by :func:`modelio.validate_metadata`)."""
    if not isinstance(stats, dict):
        raise bad("feature_statistics is not an object")
    mean, std = stats.get("mean"), stats.get("std")
    if (not isinstance(mean, list) or not isinstance(std, list) or not 1 <= len(mean) <= MAX_CHANNELS
            or len(mean) != len(std)):
        raise bad(f"feature_statistics needs lists mean and std of equal length 1..{MAX_CHANNELS}")
    for v in mean:
        check_float(v, -1e6, 1e6, "feature_statistics.mean")
    for v in std:
        check_float(v, 1e-12, 1e6, "feature_statistics.std")
    for key in ("frame_score_median", "frame_score_q99"):
        if key not in stats:
            raise bad(f"feature_statistics has no {key}")
        check_float(stats[key], 0.0, 1e9, f"feature_statistics.{key}")
