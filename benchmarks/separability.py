"""How separable the phantom's labels are, and whether a cine's frames add evidence.

    python benchmarks/separability.py [MODEL.safetensors ...] [--seed 3000] [--test 36] [--out sep.json]

Two questions behind issue 12's patch-AUC target, on the test fold of compare_models.py and
difficulty.py (phantom_pool ``--seed``, ``--test`` new patients, 40 % calcium-free, 6 frames each):

* **A filter that knows only "small dark blob, not a line".**  :func:`dark_blob_score` (multi-scale
  Hessian, both curvatures positive, over the frame's noise) is scored per patch (its largest value
  8 px or more inside the patch).  If such a filter separated the labels well, the network would be
  failing at something easy; if it does not, the labelled calcium is hidden in structured clutter.
* **How faint is the labelled calcium?**  :func:`deposit_contrast`: how much darker than a ring
  around it, against the ring's own spread.
* **Does a cine's evidence add up?**  Per model: patch AUC, frame AUC (the frame's most probable
  patch against "the frame holds labelled calcium") and cine AUC (the mean of those frame scores
  over the cine against "the cine holds calcium").  Calcium recurs in every frame while random
  false alarms do not, so the cine AUC should exceed the frame AUC; where it does not, the false
  alarms recur as well (anatomy, metal, the catheter), and no voting over frames or beats
  (``--temporal``) can remove them.

Writes OUT (JSON) and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402

SCALES = (1.5, 2.5, 4.0)
MARGIN = 8  # px of each patch edge left out (filter edge effects)


def dark_blob_score(image: np.ndarray, scales=SCALES) -> np.ndarray:
    """Dark-blob strength of each pixel: the smaller Hessian eigenvalue, scale-normalised, over the noise.

    A local intensity minimum (calcium is darker than its surroundings) has
    two positive curvatures; a dark line (catheter, wire, vessel) has one.
    The smaller eigenvalue is therefore large only at blobs.  It is taken at
    each of ``scales`` (Gaussian sigma, px) times sigma squared, the largest
    kept, and divided by a robust noise level (the median absolute deviation
    of the finest Laplacian).

    Parameters
    ----------
    image : (rows, cols) array
        One frame, calcium dark.
    scales : sequence of float
        Gaussian sigmas in pixels.

    Returns
    -------
    (rows, cols) float32 ndarray
        Zero where the image is not a local minimum at any scale.

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = np.ones((64, 64), np.float32)
    >>> img -= 0.3 * np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 8.0)  # a dark blob
    >>> img[:, 44:47] -= 0.3                                            # a dark line
    >>> img += np.random.default_rng(0).normal(0, 0.01, img.shape)
    >>> s = dark_blob_score(img)
    >>> bool(s[20, 20] > 3 * s[10:30, 45].max())
    True
    """
    from scipy import ndimage as ndi
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    img = np.asarray(image, np.float32)
    lap = ndi.laplace(ndi.gaussian_filter(img, 0.7))
    noise = 1.4826 * float(np.median(np.abs(lap - np.median(lap)))) + 1e-6
    best = np.zeros_like(img)
    for s in scales:
        smaller = hessian_matrix_eigvals(hessian_matrix(img, sigma=s, order="rc", use_gaussian_derivatives=True))[1]
        np.maximum(best, np.clip(smaller, 0, None) * s * s, out=best)
    return best / noise


def deposit_contrast(fs, ring=(2, 6)) -> dict:
    """How much darker the labelled calcium is than a ring around it, against the ring's own spread.

    Per frame with calcium: the ring's mean minus the calcium's mean, and the
    ring's standard deviation (anatomy, vessels and noise together), in the
    normalised 0..1 range; the ring lies ``ring`` px (inner, outer) outside
    the mask.  Returns the per-frame arrays and their medians.
    """
    from scipy import ndimage as ndi

    contrast, spread = [], []
    for f in range(len(fs)):
        mask = np.asarray(fs.calcium[f], bool)
        if not mask.any():
            continue
        img = np.asarray(fs.nc[f], np.float32)
        band = ndi.binary_dilation(mask, iterations=ring[1]) & ~ndi.binary_dilation(mask, iterations=ring[0])
        contrast.append(float(img[band].mean() - img[mask].mean()))
        spread.append(float(img[band].std()))
    return {"frames": len(contrast), "contrast": contrast, "ring_std": spread,
            "median_contrast": float(np.median(contrast)) if contrast else None,
            "median_ring_std": float(np.median(spread)) if spread else None}


def blob_patch_scores(fs) -> np.ndarray:
    """(F*5,) the largest :func:`dark_blob_score` of each patch, ``MARGIN`` px inside its edges."""
    from CACIdentifierLib import patches

    size = patches.PATCH_SIZE
    out = []
    for f in range(len(fs)):
        s = dark_blob_score(fs.nc[f])
        out += [s[r + MARGIN:r + size - MARGIN, c + MARGIN:c + size - MARGIN].max() for r, c in patches.patch_origins()]
    return np.asarray(out)


def evidence(patch_probs: np.ndarray, labels: np.ndarray, acquisitions) -> dict:
    """Patch, frame and cine AUCs of one model's patch probabilities.

    Parameters
    ----------
    patch_probs, labels : (F*5,) arrays
        Five patches per frame, frames in ``acquisitions`` order.
    acquisitions : sequence of str, (F,)
        The cine of each frame.

    Returns
    -------
    dict
        ``patch_auc``; ``frame_auc`` (score: the frame's most probable patch;
        truth: any positive patch); ``cine_auc`` (score: the mean frame score
        over the cine; truth: any positive frame); ``cines``, ``calcified_cines``.

    Examples
    --------
    Frame scores that recur across a cine's frames add nothing to a cine-level decision:

    >>> p = np.array([.9, .1, .1, .1, .1] * 2 + [.8, .1, .1, .1, .1] * 2 + [.7, .1, .1, .1, .1] * 2)
    >>> y = np.array([1, 0, 0, 0, 0] * 2 + [0] * 10 + [1, 0, 0, 0, 0] * 2)
    >>> r = evidence(p, y, ["a", "a", "b", "b", "c", "c"])
    >>> round(r["frame_auc"], 2), round(r["cine_auc"], 2), r["calcified_cines"]
    (0.5, 0.5, 2)
    """
    from CACIdentifierLib.metrics import roc_auc

    acq = np.asarray(acquisitions)
    p = np.asarray(patch_probs, np.float64).reshape(len(acq), 5)
    y = np.asarray(labels).reshape(len(acq), 5) > 0.5
    frame_s, frame_y = p.max(axis=1), y.any(axis=1)
    names = list(dict.fromkeys(acq.tolist()))
    cine_s = np.array([frame_s[acq == a].mean() for a in names])
    cine_y = np.array([frame_y[acq == a].any() for a in names])
    return {"patch_auc": roc_auc(y.ravel(), p.ravel()), "frame_auc": roc_auc(frame_y, frame_s),
            "cine_auc": roc_auc(cine_y, cine_s), "cines": len(names), "calcified_cines": int(cine_y.sum())}


def main(argv=None) -> int:
    from difficulty import fold_parser, test_fold

    args = fold_parser("separability.json", models="*").parse_args(argv)

    from CACIdentifierLib.metrics import roc_auc

    t0 = time.perf_counter()
    fs, _snr, rendered, _metal = test_fold(args.test, args.seed, args.workers)
    labels = fs.patch_labels > 0.5
    clean = ~labels & ~rendered
    log(f"test fold {fs.summary()} in {time.perf_counter() - t0:.0f} s")
    blob = blob_patch_scores(fs)
    keep = labels | clean
    results = {"test": fs.summary(), "seed": args.seed,
               "dark_blob_filter": {**evidence(blob, labels, fs.acquisition),
                                    "patch_auc_vs_clean": roc_auc(labels[keep], blob[keep])},
               "models": {}}
    log(f"dark-blob filter: {json.dumps(results['dark_blob_filter'])}")
    dc = deposit_contrast(fs)
    results["deposit_contrast"] = dc
    if dc["frames"]:
        log(f"labelled calcium on {dc['frames']} frames: darker than a 2-6 px ring by a median "
            f"{dc['median_contrast']:.3f} ({np.percentile(dc['contrast'], 10):.3f}-{np.percentile(dc['contrast'], 90):.3f}, "
            f"10th-90th percentile); the ring's spread {dc['median_ring_std']:.3f}")
    if args.models:
        import torch
        from CACIdentifierLib.modelio import load_model
        from CACTrainerLib import evaluation

        torch.set_num_threads(2)
        for path in args.models:
            model, _ = load_model(path)
            probs = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
            results["models"][path] = evidence(probs, labels, fs.acquisition)
            log(f"{path}: {json.dumps(results['models'][path])}")
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"| scorer (seed {args.seed}) | patch AUC | frame AUC | cine AUC |")
    print("|---|---|---|---|")
    for name, r in [("dark-blob filter", results["dark_blob_filter"])] + list(results["models"].items()):
        print(f"| {Path(name).name} | {r['patch_auc']:.3f} | {r['frame_auc']:.3f} | {r['cine_auc']:.3f} |")
    log(f"done in {time.perf_counter() - t0:.0f} s; {args.out}")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
