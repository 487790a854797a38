"""The figures of docs/phantom.md: a montage of one phantom case and phantom frames beside real ones.

``python -m CACTrainerLib.phantom_figures docs/images [--data ../shared/data]`` writes
``phantom_montage.png`` and, when the real cines are there, ``phantom_vs_real.png``
(derived thumbnails; the real data are never copied into the repository).
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    args = ap.parse_args(argv)
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
