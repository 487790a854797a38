"""Where a model fails: patch AUC by how visible the calcium is, on held-out phantom patients.

    python benchmarks/difficulty.py MODEL.safetensors [MODEL2 ...] [--test 36] [--out difficulty.json]

The test fold is compare_models.py's (phantom_pool seed 3000, 36 new patients, 40 % calcium-free), but
generated here with its truth (``phantom_pool.pool_acquisition``), which a FrameSet does not keep.  The
annotators of the randomised phantom mark only deposits whose Rose detectability (SNR; about 5 is
"seen for certain") reaches their own threshold (5-8), so a patch label is "calcium that can be seen".
Each positive patch (majority label) is given the largest detectability of the deposits whose centroid
lies in it in that frame, and each negative patch is *clean* (no rendered deposit in it) or holds
*unlabelled* calcium (rendered, below the annotators' thresholds); clean negatives are also split by
whether the cine holds metal (sternal wires, clips, stents: dense, not calcium) and whether the patch
itself holds some (the phantom's per-frame metal footprint, ``FrameSet.metal``).  Per model it prints:

* patch AUC against the labels (compare_models.py's number, a cross-check);
* AUC of each detectability bin's positives against the clean negatives: a model limited by the
  data fails on the faint bins only; one limited by learning fails on the bright ones too;
* AUC of the unlabelled-calcium negatives against the clean ones (0.5: the model ignores calcium
  below the annotators' threshold; near 1: it sees it, and the labels call that a false positive).

Writes OUT (JSON), OUT with .png (AUC by bin, one bar group per model) and OUT_montage.png (the last
model's highest-scored clean negative patches and lowest-scored bright positive ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_protocol import log  # noqa: E402
from script_entry import check_models  # noqa: E402

BINS = [(0.0, 8.0), (8.0, 15.0), (15.0, 30.0), (30.0, float("inf"))]


def bin_name(lo: float, hi: float) -> str:
    return f"SNR >= {lo:g}" if hi == float("inf") else f"SNR {lo:g}-{hi:g}"


def patch_strata(acq, fs) -> tuple[np.ndarray, np.ndarray]:
    """Per patch of ``fs`` (one acquisition): the largest detectability of a rendered deposit whose
    centroid lies in it (NaN: none), and whether such a deposit is there at all."""
    from CACIdentifierLib import patches

    rows, cols = acq.frames.shape[1:]
    scale_r, scale_c = rows / patches.FRAME_SIZE, cols / patches.FRAME_SIZE
    origins = patches.patch_origins()
    snr = np.full((len(fs), patches.N_PATCHES), np.nan)
    for dep in acq.truth["calcifications"]:
        d = float(dep.get("detectability", np.nan))
        by_frame = {int(r["frame"]): r for r in dep["frames"] if r.get("visible")}
        for i, k in enumerate(fs.frame_index):
            rec = by_frame.get(int(k))
            if rec is None:
                continue
            # Pixel centres aligned as in patches.prepare_frame (skimage.transform.resize).
            r = (rec["row"] + 0.5) / scale_r - 0.5
            c = (rec["col"] + 0.5) / scale_c - 0.5
            for p, (r0, c0) in enumerate(origins):
                if r0 <= r < r0 + patches.PATCH_SIZE and c0 <= c < c0 + patches.PATCH_SIZE:
                    snr[i, p] = np.fmax(snr[i, p], -1.0 if np.isnan(d) else d)  # -1: not measured
    rendered = ~np.isnan(snr)
    return snr.reshape(-1), rendered.reshape(-1)


def test_fold(n: int, seed: int = 3000, workers: int = 2):
    """(FrameSet, per-patch detectability, rendered-calcium flag, metal-in-the-cine flag) of the test fold."""
    import multiprocessing

    from CACTrainerLib.dataset import FrameSet

    with multiprocessing.get_context("spawn").Pool(max(1, workers)) as pool:
        parts = pool.map(_patient, [(seed, p) for p in range(n)])
    fs = FrameSet.concat([p[0] for p in parts])
    return (fs,) + tuple(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))


def _patient(job):
    import warnings

    from CACTrainerLib import dataset
    from CACTrainerLib.phantom_pool import patient_name, pool_acquisition

    seed, patient = job
    acq = pool_acquisition(seed, patient, n_frames=64, calcium_free_fraction=0.4)
    name = patient_name(seed, patient)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fs = dataset.frames_from_acquisition(acq, acquisition=name, patient=name, frames_per_acquisition=6)
    snr, rendered = patch_strata(acq, fs)
    metal = acq.truth.get("metal") or {}
    has_metal = bool(metal.get("sternal_wires") or metal.get("heart_metal_objects"))
    return fs, snr, rendered, np.full(snr.shape, has_metal)


def negative_strata(labels: np.ndarray, rendered: np.ndarray, metal: np.ndarray,
                    patch_metal: np.ndarray | None = None) -> dict:
    """The negative patches by what may fool the model (boolean masks over the patches).

    ``clean``: negative, no rendered deposit inside; ``unlabelled``: negative
    with a rendered deposit (too faint to label); then the clean ones of cines
    with metal and without; with ``patch_metal``, the clean ones holding
    metal and those of metal cines without metal in the patch.
    """
    neg = labels <= 0.5
    clean = neg & ~rendered
    out = {"negatives": neg, "clean": clean, "unlabelled": neg & rendered,
           "metal_cines": clean & metal, "no_metal": clean & ~metal}
    if patch_metal is not None:
        out["holding_metal"] = clean & patch_metal
        out["metal_cines_patch_free"] = clean & metal & ~patch_metal
    return out


def analyse(probs: np.ndarray, labels: np.ndarray, snr: np.ndarray, rendered: np.ndarray,
            metal: np.ndarray, patch_metal: np.ndarray | None = None) -> dict:
    """AUCs by stratum (see the module docstring)."""
    from CACIdentifierLib.metrics import roc_auc

    pos = labels > 0.5
    strata = negative_strata(labels, rendered, metal, patch_metal)
    clean, unlabelled = strata["clean"], strata["unlabelled"]
    out = {"patch_auc": roc_auc(pos, probs), "positives": int(pos.sum()), "clean_negatives": int(clean.sum()),
           "unlabelled_calcium_negatives": int(unlabelled.sum()), "bins": {}}
    for lo, hi in BINS:
        b = pos & (snr >= lo) & (snr < hi)
        sel = b | clean
        out["bins"][bin_name(lo, hi)] = {"n": int(b.sum()), "auc_vs_clean": roc_auc(b[sel], probs[sel]),
                                         "median_p": float(np.median(probs[b])) if b.any() else None}
    other = pos & ~rendered  # labelled, no rendered deposit centroid inside (a spurious blob or an edge)
    out["positives_without_deposit_centroid"] = int(other.sum())
    sel = unlabelled | clean
    out["unlabelled_vs_clean_auc"] = roc_auc(unlabelled[sel], probs[sel])
    # Which negatives fool it: those of cines with metal (sternal wires, clips, stents) or without.
    groups = [("clean_negatives_metal_cines", strata["metal_cines"]), ("clean_negatives_no_metal", strata["no_metal"])]
    if patch_metal is not None:  # the patch itself holds metal, or its cine has metal elsewhere
        groups += [("clean_negatives_holding_metal", strata["holding_metal"]),
                   ("clean_negatives_metal_cines_patch_free", strata["metal_cines_patch_free"])]
    for name, group in groups:
        sel = pos | group
        out[name] = {"n": int(group.sum()), "auc_all_positives": roc_auc(pos[sel], probs[sel]),
                     "median_p": float(np.median(probs[group])) if group.any() else None}
    out["median_p_clean"] = float(np.median(probs[clean])) if clean.any() else None
    out["median_p_unlabelled"] = float(np.median(probs[unlabelled])) if unlabelled.any() else None
    return out


def figure(results: dict, path: Path, labels: list | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))
    names = [bin_name(lo, hi) for lo, hi in BINS if first["bins"][bin_name(lo, hi)]["n"]] + ["unlabelled\ncalcium"]
    labels = labels or [Path(m).name for m in results]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(results))
    for m, r in enumerate(results.values()):
        vals = [r["bins"][n]["auc_vs_clean"] or np.nan for n in names[:-1]] + [r["unlabelled_vs_clean_auc"] or np.nan]
        x = np.arange(len(names)) + (m - (len(results) - 1) / 2) * width
        ax.bar(x, vals, width, label=f"{labels[m]} (all: {r['patch_auc']:.2f})")
    counts = [first["bins"][n]["n"] for n in names[:-1]] + [first["unlabelled_calcium_negatives"]]
    ax.set_xticks(np.arange(len(names)), [f"{n}\n({c} patches)" for n, c in zip(names, counts)])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylim(0.4, 1.15)
    ax.set_ylabel("patch AUC against clean negatives")
    ax.set_title("Patch AUC by the calcium's detectability (test fold, seed 3000)")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def montage(fs, probs: np.ndarray, labels: np.ndarray, snr: np.ndarray, rendered: np.ndarray, path: Path,
            n: int = 8) -> None:
    """What fools a model: its ``n`` highest-scored clean negatives and lowest-scored bright positives
    (SNR >= 15), as non-contrast patches with their probability and patient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CACIdentifierLib import patches

    origins = patches.patch_origins()
    clean = np.nonzero((labels <= 0.5) & ~rendered)[0]
    bright = np.nonzero((labels > 0.5) & (snr >= 15))[0]
    rows = [("clean negative", clean[np.argsort(-probs[clean])][:n]),
            ("bright positive", bright[np.argsort(probs[bright])][:n])]
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 5.4), squeeze=False)
    for r, (title, ids) in enumerate(rows):
        for j in range(n):
            ax = axes[r][j]
            ax.axis("off")
            if j >= len(ids):
                continue
            k = int(ids[j])
            r0, c0 = origins[k % patches.N_PATCHES]
            img = np.asarray(fs.nc[k // patches.N_PATCHES, r0:r0 + patches.PATCH_SIZE, c0:c0 + patches.PATCH_SIZE],
                             np.float32)
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            extra = "" if np.isnan(snr[k]) else f", SNR {snr[k]:.0f}"
            ax.set_title(f"{title}\np = {probs[k]:.2f}{extra}\n{fs.patient[k // patches.N_PATCHES][-6:]}",
                         fontsize=7)
    fig.suptitle("Highest-scored clean negatives (top) and lowest-scored bright positives (bottom)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fold_parser(out: str, models: str = "+") -> argparse.ArgumentParser:
    """The arguments of the scripts that score models on :func:`test_fold`: MODEL..., --test, --seed, --workers, --out."""
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs=models)
    ap.add_argument("--test", type=int, default=36, help="held-out patients")
    ap.add_argument("--seed", type=int, default=3000, help="phantom_pool seed of the fold (3000, 4000: the usual two)")
    ap.add_argument("--workers", type=int, default=2, help="processes generating the fold")
    ap.add_argument("--out", default=out)
    return ap


def main(argv=None) -> int:
    ap = fold_parser("difficulty.json")
    ap.add_argument("--labels", help="comma-separated names of the models in the figure (default: file names)")
    ap.add_argument("--from-json", action="store_true",
                    help="redraw the figure from OUT without scoring again (--labels may rename)")
    args = ap.parse_args(argv)

    labels = args.labels.split(",") if args.labels else None
    out = Path(args.out)
    if args.from_json:
        figure(json.loads(out.read_text())["models"], out.with_suffix(".png"), labels)
        return 0
    import torch
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation

    check_models(args.models)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    fs, snr, rendered, metal = test_fold(args.test, args.seed, args.workers)
    labels = fs.patch_labels
    log(f"test fold {fs.summary()} in {time.perf_counter() - t0:.0f} s; "
        f"{int((labels > 0.5).sum())} positive patches, {int((rendered & (labels <= 0.5)).sum())} negatives "
        f"with calcium below the annotators' thresholds")
    results = {}
    for path in args.models:
        model, _ = load_model(path)
        probs = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
        results[path] = analyse(probs, labels, snr, rendered, metal, fs.metal.reshape(-1))
        log(f"{path}: {json.dumps(results[path])}")
    out.write_text(json.dumps({"test": fs.summary(), "models": results}, indent=1))
    figure(results, out.with_suffix(".png"), labels)
    montage(fs, probs, labels, snr, rendered, out.with_name(out.stem + "_montage.png"))  # the last model
    print("| stratum (patches) | " + " | ".join(Path(m).name for m in results) + " |")
    print("|---|" + "---|" * len(results))
    first = next(iter(results.values()))
    print(f"| all labels ({first['positives']} pos.) | " + " | ".join(f"{r['patch_auc']:.3f}" for r in results.values()) + " |")
    for lo, hi in BINS:
        n = bin_name(lo, hi)
        print(f"| {n} ({first['bins'][n]['n']}) | "
              + " | ".join("-" if r["bins"][n]["auc_vs_clean"] is None else f"{r['bins'][n]['auc_vs_clean']:.3f}"
                           for r in results.values()) + " |")
    print(f"| unlabelled calcium vs clean ({first['unlabelled_calcium_negatives']}) | "
          + " | ".join("-" if r["unlabelled_vs_clean_auc"] is None else f"{r['unlabelled_vs_clean_auc']:.3f}"
                       for r in results.values()) + " |")
    for key, label in (("clean_negatives_no_metal", "positives vs clean negatives, cines without metal"),
                       ("clean_negatives_metal_cines", "positives vs clean negatives, cines with metal"),
                       ("clean_negatives_holding_metal", "positives vs clean negatives holding metal"),
                       ("clean_negatives_metal_cines_patch_free",
                        "positives vs clean negatives of metal cines, no metal in the patch")):
        print(f"| {label} ({first[key]['n']}) | "
              + " | ".join("-" if r[key]["auc_all_positives"] is None else f"{r[key]['auc_all_positives']:.3f}"
                           for r in results.values()) + " |")
    log(f"done in {time.perf_counter() - t0:.0f} s; {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
