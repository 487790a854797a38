"""How well labelled calcium stands out in the frame and in the residual channel (background.py).

    python benchmarks/residual_contrast.py [--seed 3000] [--test 16] [--out residual_contrast.json] [--png FIG]
                                           [--patch-auc]

On the test fold of separability.py (phantom_pool ``--seed``, ``--test`` new patients, 40 %
calcium-free, 6 frames each), for every frame with labelled calcium: the ring's mean minus the
calcium's mean over the ring's standard deviation (``separability.deposit_contrast``'s ring, 2-6 px
outside the mask), in the normalised frame and in the frame minus each candidate background of its
cine's non-contrast frames (pixel-wise median, 75th and 90th percentile, maximum).  A larger ratio:
the calcium is less hidden in its surroundings.  Prints the medians, writes OUT (JSON) and, with
``--png``, a figure of three deposits (frame, residual, background).

With ``--patch-auc``, the patch-level question as well: the patch AUC of separability.py's
dark-blob filter (no learning) on the frame, on the frame minus the median, and on the frame minus
the median of the non-contrast frames each first shifted onto it by phase correlation (respiration
and table pan compensated); slower (one registration per non-contrast frame per analysed frame).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402

BACKGROUNDS = {
    "median": lambda s: np.median(s, axis=0),
    "p75": lambda s: np.percentile(s, 75, axis=0),
    "p90": lambda s: np.percentile(s, 90, axis=0),
    "max": lambda s: s.max(axis=0),
}


def contrast_ratio(image: np.ndarray, mask: np.ndarray, ring=(2, 6)) -> float:
    """(ring mean - mask mean) / ring std: how far the masked pixels stand below their surroundings.

    Examples
    --------
    >>> img = np.ones((32, 32), np.float32); img[::2] += 0.1   # striped surroundings, std 0.05
    >>> mask = np.zeros((32, 32), bool); mask[14:18, 14:18] = True
    >>> img[mask] = 0.95
    >>> round(contrast_ratio(img, mask), 2)
    2.0
    """
    from scipy import ndimage as ndi

    band = ndi.binary_dilation(mask, iterations=ring[1]) & ~ndi.binary_dilation(mask, iterations=ring[0])
    return float((image[band].mean() - image[mask].mean()) / (image[band].std() + 1e-9))


def blob_patch_maxima(image: np.ndarray) -> np.ndarray:
    """(5,) the largest ``separability.dark_blob_score`` of each patch, ``separability.MARGIN`` px inside."""
    from CACIdentifierLib.patches import PATCH_SIZE, patch_origins
    from separability import MARGIN, dark_blob_score

    s = dark_blob_score(image)
    return np.array([s[r + MARGIN:r + PATCH_SIZE - MARGIN, c + MARGIN:c + PATCH_SIZE - MARGIN].max()
                     for r, c in patch_origins()])


def registered_median(frame: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """Median of ``stack``'s frames, each first shifted onto ``frame`` (phase correlation, smoothed copies)."""
    from scipy import ndimage as ndi
    from skimage.registration import phase_cross_correlation

    ref = ndi.gaussian_filter(frame, 2)
    moved = []
    for g in stack:
        shift, _, _ = phase_cross_correlation(ref, ndi.gaussian_filter(g, 2), upsample_factor=4, normalization=None)
        moved.append(ndi.shift(g, shift, order=1, mode="nearest"))
    return np.median(moved, axis=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--out", default="residual_contrast.json")
    ap.add_argument("--png")
    ap.add_argument("--patch-auc", action="store_true")
    args = ap.parse_args(argv)

    from CACIdentifierLib.patches import normalize_frame, prepare_frame
    from CACTrainerLib import dataset
    from CACTrainerLib.phantom_pool import patient_name, pool_acquisition

    ratios = {"frame": [], **{k: [] for k in BACKGROUNDS}}
    examples = []
    blob = {"frame": [], "median": [], "registered median": []}
    labels = []
    for p in range(args.test):
        acq = pool_acquisition(args.seed, p, n_frames=64, calcium_free_fraction=0.4)
        name = patient_name(args.seed, p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fs = dataset.frames_from_acquisition(acq, acquisition=name, patient=name, frames_per_acquisition=6)
        onset = dataset._truth_onset(acq.truth)
        stack = np.stack([normalize_frame(prepare_frame(acq.frames[k])[0]) for k in range(onset)])
        bgs = {k: f(stack) for k, f in BACKGROUNDS.items()}
        for i in range(len(fs)):
            mask = np.asarray(fs.calcium[i], bool)
            frame = np.asarray(fs.nc[i], np.float32)
            if mask.any():
                ratios["frame"].append(contrast_ratio(frame, mask))
                for k, bg in bgs.items():
                    ratios[k].append(contrast_ratio(frame - bg, mask))
            if args.patch_auc:
                for k, img in (("frame", frame), ("median", frame - bgs["median"]),
                               ("registered median", frame - registered_median(frame, stack))):
                    blob[k] += list(blob_patch_maxima(img))
                labels += list(fs.labels[i] > 0.5)
            if len(examples) < 3 and i == 0 and mask.any():
                examples.append((frame, frame - bgs["median"], bgs["median"], mask))
        log(f"patient {p + 1}/{args.test}: {len(ratios['frame'])} calcified frames so far")
    medians = {k: float(np.median(v)) if v else None for k, v in ratios.items()}
    result = {"seed": args.seed, "test": args.test, "frames": len(ratios["frame"]), "median_ratio": medians,
              "ratios": ratios}
    if args.patch_auc:
        from CACIdentifierLib.metrics import roc_auc

        y = np.asarray(labels)
        result["dark_blob_patch_auc"] = {k: roc_auc(y, np.asarray(v)) for k, v in blob.items()}
        log(f"dark-blob filter patch AUC ({y.size} patches, {int(y.sum())} positive): "
            + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in result["dark_blob_patch_auc"].items()))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"| image (seed {args.seed}, {len(ratios['frame'])} calcified frames) | median (ring mean - calcium mean) / ring std |")
    print("|---|---|")
    for k, v in medians.items():
        print(f"| {'frame' if k == 'frame' else 'frame - ' + k + ' of the non-contrast frames'} | "
              f"{'n/a' if v is None else f'{v:.2f}'} |")
    if args.png and examples:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3 * len(examples)), squeeze=False)
        for row, (frame, res, bg, mask) in zip(axes, examples):
            ys, xs = np.nonzero(mask)
            cy, cx = int(ys.mean()), int(xs.mean())
            win = (slice(max(cy - 48, 0), cy + 48), slice(max(cx - 48, 0), cx + 48))
            for ax, img, title in zip(row, (frame, res, bg), ("frame (calcium outlined)", "frame - median", "median")):
                ax.imshow(img[win], cmap="gray")
                ax.set_title(title, fontsize=9)
                ax.axis("off")
            row[0].contour(mask[win], levels=[0.5], colors="r", linewidths=0.7)
        fig.tight_layout()
        fig.savefig(args.png, dpi=80)
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
