"""The figures of docs/phantom.md: a montage of one phantom case and phantom frames beside real ones.

``python -m CACTrainerLib.phantom_figures docs/images [--data ../shared/data]`` writes
``phantom_montage.png`` and, when the real cines are there, ``phantom_vs_real.png``
(derived thumbnails; the real data are never copied into the repository).
``--visibility`` prints how separable deposits are for a simple blob detector and
``--learnability [MU ...]`` the test AUC of a small CNN on deposit vs. vessel-wall
crop pairs (the figures quoted in docs/phantom.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .phantom import PhantomParams, generate_acquisition
from .phantom_writer import save_montage

MONTAGE_CASE = {"seed": 7, "patient": 1, "acquisition": 0}


def real_frames(data: Path) -> list[tuple[str, np.ndarray]]:
    """(title, frame) pairs from the shared real cines that exist under ``data``."""
    out = []
    rca = data / "xa" / "rubo-rca-ecg-96f.dcm"
    if rca.exists():
        import pydicom

        px = pydicom.dcmread(rca).pixel_array
        out += [("real RCA (Rubo), frame 0", px[0]), ("real RCA (Rubo), frame 30", px[30])]
    lca = data / "frames" / "lca-clinical-37f"
    if lca.exists():
        from PIL import Image

        for i in (1, 30):
            f = lca / f"IM0_{i:02d}.jpg"
            if f.exists():
                out.append((f"real LCA, frame {i}", np.asarray(Image.open(f).convert("L"))))
    return out


def comparison(path, data: Path, overwrite=True, n_frames=120):
    """Real frames (top) and phantom frames (bottom), same display window (0-255, MONOCHROME2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CACIdentifierLib.fileutil import atomic_output

    real = real_frames(data)
    cases = [(7, 1, 0), (3, 2, 1), (12, 0, 0), (5, 4, 1)]
    phantom = []
    for seed, pt, acq_i in cases:
        acq = generate_acquisition(PhantomParams(n_frames=n_frames), seed, pt, acq_i)
        t = acq.truth
        k = min(n_frames - 1, t["onset_frame"] + int(2 * t["fps"]))
        v = t["view"]
        phantom.append((f"phantom {t['side']} {v['primary_deg']:+.0f}/{v['secondary_deg']:+.0f}, frame {k}",
                        acq.frames[k]))
        if len(phantom) == 1:
            phantom.append((f"same phantom, frame {max(0, t['onset_frame'] - 3)} (no contrast)",
                            acq.frames[max(0, t["onset_frame"] - 3)]))
    ncol = max(len(real), len(phantom), 1)
    fig, axes = plt.subplots(2, ncol, figsize=(3.6 * ncol, 7.6), squeeze=False)
    for row, items in enumerate((real, phantom)):
        for ax, (title, im) in zip(axes[row], items):
            ax.imshow(im, cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Top: real cines from shared/data (thumbnails). Bottom: phantom (default parameters).",
                 fontsize=10)
    fig.tight_layout()
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)


def visibility(n_cases: int = 10, params: PhantomParams | None = None, seed0: int = 0) -> dict:
    """How separable deposits are from vessel-wall and background points for a simple detector.

    On every third non-contrast frame of ``n_cases`` calcified 512x512 cases, the
    response of a difference of Gaussians (SD 3 mm minus 0.7 mm: positive on
    dark blobs) is taken at its maximum over a 7x7 window at the centroid of each
    truth footprint (positives) and at random centreline points and random
    points away from calcium (negatives).  Returns ROC AUCs, overall and by peak attenuation band.
    """
    from scipy import ndimage as ndi

    params = params or PhantomParams(n_frames=12, onset_fraction_range=(0.9, 0.95), early_onset_prob=0.0)
    rng = np.random.default_rng(0)
    pos, peak, neg_v, neg_b = [], [], [], []
    for s in range(seed0, seed0 + n_cases):
        a = generate_acquisition(params, s, s, 0, calcium_free=False)
        sp = a.spacing_mm[0]
        rows, cols = a.frames.shape[1:]
        for k in range(0, a.onset_frame, 3):
            f = a.frames[k].astype(np.float32)
            resp = ndi.gaussian_filter(f, 3.0 / sp) - ndi.gaussian_filter(f, 0.7 / sp)
            centres = [(fr["row"], fr["col"], d["peak_attenuation"]) for d in a.truth["calcifications"]
                       if (fr := d["frames"][k])["visible"]]
            lab, n = ndi.label(a.calcium[k])
            for i in range(1, n + 1):
                ys, xs = np.nonzero(lab == i)
                near = min(centres, key=lambda c: (c[0] - ys.mean()) ** 2 + (c[1] - xs.mean()) ** 2)
                r, c = int(round(ys.mean())), int(round(xs.mean()))
                pos.append(resp[max(0, r - 3):r + 4, max(0, c - 3):c + 4].max())  # same window as negatives
                peak.append(near[2])
            for pts, out in ((a.centerlines[k][rng.integers(0, a.centerlines.shape[1], 30)], neg_v),
                             (rng.uniform(20, min(rows, cols) - 20, (30, 2)), neg_b)):
                for r, c in pts:
                    r, c = int(r), int(c)
                    if 5 < r < rows - 5 and 5 < c < cols - 5 and not a.calcium[k, r - 5:r + 5, c - 5:c + 5].any():
                        out.append(resp[r - 3:r + 4, c - 3:c + 4].max())
    pos, peak, neg_v, neg_b = map(np.asarray, (pos, peak, neg_v, neg_b))

    def auc(p, n):
        return float((p[:, None] > n[None, :]).mean() + 0.5 * (p[:, None] == n[None, :]).mean())

    out = {"n_footprints": len(pos), "auc_vs_vessel_wall": auc(pos, neg_v), "auc_vs_background": auc(pos, neg_b),
           "bands": []}
    for lo, hi in ((0, 0.03), (0.03, 0.06), (0.06, 0.1), (0.1, 10)):
        m = (peak >= lo) & (peak < hi)
        if m.any():
            out["bands"].append({"peak_attenuation": [lo, hi], "n": int(m.sum()),
                                 "auc_vs_vessel_wall": auc(pos[m], neg_v)})
    return out


def learnability(calcium_mu_per_mm: float | None = None, n_train: int = 24, n_test: int = 8, epochs: int = 25,
                 half: int = 24, seed: int = 0) -> dict:
    """Can a small CNN tell a deposit from a vessel-wall point in a (non-contrast, contrast) crop pair?

    Crops of 2*half px (both frames of a pair: the non-contrast frame and the
    fully-opacified frame of the nearest cardiac phase) centred within 8 px of a
    deposit (positive) or within 2 px of a calcium-free centreline point
    (negative), from every other non-contrast frame of ``n_train`` calcified
    512x512 cases; a 4-layer CNN trained ``epochs`` epochs (Adam 1e-3, batch 64,
    flips) and tested on ``n_test`` other patients.  Returns the test ROC AUC
    overall and by the deposit's peak attenuation.  Takes a few minutes on 2 cores.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    kw = {"n_frames": 40, "onset_fraction_range": (0.5, 0.5), "early_onset_prob": 0.0}
    if calcium_mu_per_mm is not None:
        kw["calcium_mu_per_mm"] = calcium_mu_per_mm
    params = PhantomParams(**kw)
    H = half

    def crops(seeds):
        X, Y, P = [], [], []
        for s in seeds:
            a = generate_acquisition(params, s, s, 0, calcium_free=False)
            ph = np.asarray(a.truth["phase"])
            cand = np.arange(min(a.truth["contrast_full_frame"], len(ph) - 1), len(ph))
            rows, cols = a.frames.shape[1:]
            for k in range(0, a.onset_frame, 2):
                kc = cand[np.argmin(np.abs((ph[cand] - ph[k] + 0.5) % 1 - 0.5))]
                f = a.frames[k].astype(np.float32) / 255
                g = a.frames[kc].astype(np.float32) / 255

                def add(r, c, y, pk=0.0, f=f, g=g, rows=rows, cols=cols):
                    r, c = int(r), int(c)
                    if H <= r < rows - H and H <= c < cols - H:
                        X.append(np.stack([f[r - H:r + H, c - H:c + H], g[r - H:r + H, c - H:c + H]]))
                        Y.append(y)
                        P.append(pk)

                for d in a.truth["calcifications"]:
                    fr = d["frames"][k]
                    if fr["visible"]:
                        add(fr["row"] + rng.integers(-8, 9), fr["col"] + rng.integers(-8, 9), 1, d["peak_attenuation"])
                cl = a.centerlines[k]
                for i in rng.integers(0, len(cl), 6):
                    r, c = cl[i] + rng.normal(0, 2, 2)
                    if not a.calcium[k, max(0, int(r) - H):int(r) + H, max(0, int(c) - H):int(c) + H].any():
                        add(r, c, 0)
        return torch.from_numpy(np.array(X)), torch.from_numpy(np.array(Y, np.float32)), np.array(P)

    xtr, ytr, _ = crops(range(0, n_train))
    xte, yte, pte = crops(range(1000, 1000 + n_test))
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                        nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def norm(x):
        return (x - x.mean(dim=(2, 3), keepdim=True)) * 8

    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            xb = norm(xtr[idx])
            if rng.random() < 0.5:
                xb = xb.flip(3)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb)[:, 0], ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        score = net(norm(xte))[:, 0].numpy()
    y = yte.numpy()
    pos, neg = score[y == 1], score[y == 0]

    def auc(p, n):
        return float((p[:, None] > n[None, :]).mean())

    out = {"calcium_mu_per_mm": params.calcium_mu_per_mm, "train_crops": len(xtr), "test_crops": len(xte),
           "test_auc": auc(pos, neg), "bands": []}
    for lo, hi in ((0, 0.06), (0.06, 0.1), (0.1, 10)):
        m = (pte[y == 1] >= lo) & (pte[y == 1] < hi)
        if m.any():
            out["bands"].append({"peak_attenuation": [lo, hi], "n": int(m.sum()), "auc": auc(pos[m], neg)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    ap.add_argument("--visibility", action="store_true",
                    help="only print the deposit visibility measurement (DoG detector ROC AUC)")
    ap.add_argument("--learnability", type=float, nargs="*", metavar="MU",
                    help="only print the small-CNN deposit test AUC for these calcium contrasts (default: current)")
    args = ap.parse_args(argv)
    if args.visibility:
        import json

        print(json.dumps(visibility(), indent=1))
        return 0
    if args.learnability is not None:
        import json

        for mu in args.learnability or [None]:
            print(json.dumps(learnability(mu)), flush=True)
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acq = generate_acquisition(PhantomParams(), MONTAGE_CASE["seed"], MONTAGE_CASE["patient"],
                               MONTAGE_CASE["acquisition"], calcium_free=False)
    save_montage(acq, out / "phantom_montage.png", overwrite=True)
    print(f"wrote {out / 'phantom_montage.png'}")
    data = Path(args.data)
    if (data / "xa").exists():
        comparison(out / "phantom_vs_real.png", data)
        print(f"wrote {out / 'phantom_vs_real.png'}")
    else:
        print(f"no real data at {data}; comparison skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
