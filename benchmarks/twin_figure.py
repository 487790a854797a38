"""A counterfactual twin, drawn: a calcified pool frame, its twin, and the residual channel of each.

    python benchmarks/twin_figure.py docs/images/counterfactual_twin.png [--seed 12 --patient 5]

Top row: the non-contrast frame around its largest deposit, the same frame of the twin (rendered with the
calcium attenuating nothing), and their difference.  Bottom row: the residual channel (frame minus the
cine's static background) of the calcified frame, of the twin with its own background (what
``--counterfactual-twins`` trains on), and of the twin with the calcified cine's background, which keeps
part of a deposit that moves little (what the option did before session 45: a bright spot no calcium-free
cine has).  docs/learning.md, "Counterfactual twins".
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np


def crop_around(mask: np.ndarray, half: int = 64) -> tuple[slice, slice]:
    """Square window of side ``2 * half`` centred on the mask's largest deposit, inside the frame.

    Examples
    --------
    >>> m = np.zeros((512, 512), bool); m[10, 500] = True
    >>> crop_around(m)
    (slice(0, 128, None), slice(384, 512, None))
    >>> m[300:304, 200:204] = True  # the larger deposit wins, not the centroid between the two
    >>> crop_around(m)
    (slice(237, 365, None), slice(137, 265, None))
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    largest = 1 + int(np.argmax(np.bincount(labels.ravel(), minlength=n + 1)[1:]))
    rows, cols = np.nonzero(labels == largest)
    r, c = int(rows.mean()), int(cols.mean())
    r0 = min(max(r - half, 0), mask.shape[0] - 2 * half)
    c0 = min(max(c - half, 0), mask.shape[1] - 2 * half)
    return slice(r0, r0 + 2 * half), slice(c0, c0 + 2 * half)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--patient", type=int, default=5)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CACTrainerLib import phantom_pool

    warnings.simplefilter("ignore")
    fs = phantom_pool.phantom_pool(0, seed=args.seed, patients=[args.patient], twins=True, workers=1)
    twin = np.array([a.endswith(phantom_pool.TWIN_SUFFIX) for a in fs.acquisition])
    if not twin.any():
        raise SystemExit(f"pool patient {args.patient} of seed {args.seed} has no labelled calcium: choose another")
    src_rows = np.flatnonzero(~twin & fs.labels.any(axis=1))
    k = int(np.argmax(fs.calcium[src_rows].sum(axis=(1, 2))))
    c, t = src_rows[k], np.flatnonzero(twin)[k]
    win = crop_around(fs.calcium[c])
    f = lambda a: a.astype(np.float32)[win]  # noqa: E731
    panels = [
        (f(fs.nc[c]), "calcified frame", "gray"), (f(fs.nc[t]), "its twin (no calcium)", "gray"),
        (f(fs.nc[t]) - f(fs.nc[c]), "twin - frame", "magma"),
        (f(fs.nc[c]) - f(fs.background[c]), "residual: frame - background", "RdBu_r"),
        (f(fs.nc[t]) - f(fs.background[t]), "twin - its own background", "RdBu_r"),
        (f(fs.nc[t]) - f(fs.background[c]), "twin - the calcified cine's\nbackground (before session 45)", "RdBu_r"),
    ]
    lim = max(np.abs(p[0]).max() for p in panels[3:])
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
    for ax, (img, title, cmap) in zip(axes.ravel(), panels):
        kw = {"vmin": -lim, "vmax": lim} if cmap == "RdBu_r" else {}
        ax.imshow(img, cmap=cmap, **kw)
        ax.contour(fs.calcium[c][win], levels=[0.5], colors=["#30ff30"], linewidths=0.6)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"pool seed {args.seed}, patient {args.patient}, frame {int(fs.frame_index[c])} "
                 "(green: the labelled calcium; 128 px around it)", fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
