"""Ways of scoring a patch with a trained model, without retraining: do any of them separate better?

    python benchmarks/score_variants.py MODEL.safetensors [MODEL ...] [--seed 3000] [--test 36] [--tta]
                                        [--out variants.json]

On the test fold of separability.py and difficulty.py (phantom_pool ``--seed``, ``--test`` new
patients, 40 % calcium-free, 6 frames each), per model, the patch, frame and cine AUCs
(:func:`separability.evidence`) of

* ``classifier``: the classifier head's probability (what inference gates with);
* ``decoder_max``: the largest value of the *ungated* ROI probability map, 8 px inside the patch
  edges -- the decoder is trained densely on ROI_GT by the default recipe's joint step, so it is a
  detector of its own (a decoder refitted on positive patches only is not);
* ``geometric_mean``: ``sqrt(classifier * decoder_max)``;
* with ``--tta``, ``classifier_d4``: the classifier's logit averaged over the eight flips and
  quarter turns the trainer augments with (:func:`d4_logits`), 8x the inference cost;

and, with two or more models, ``ensemble``: the mean of the models' classifier logits.  Writes
OUT (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402

EDGE = 8  # px of each patch edge left out of the decoder's maximum (padding effects)


def dihedral(x, t: int):
    """The ``t``-th (0..7) of the eight flips and quarter turns of (B, C, H, W) tensors.

    ``t % 4`` quarter turns (``torch.rot90`` over the last two axes), then a
    left-right flip when ``t >= 4``; ``t = 0`` is the identity.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> dihedral(x, 0).flatten().tolist(), dihedral(x, 4).flatten().tolist()
    ([0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 3.0, 2.0])
    >>> len({tuple(dihedral(x, t).flatten().tolist()) for t in range(8)})
    8
    """
    import torch

    y = torch.rot90(x, t % 4, (2, 3))
    return (y.flip(3) if t >= 4 else y).contiguous()


def d4_logits(model, nc, c):
    """(8, B) classifier logits of the patch pairs under each :func:`dihedral` transform (both inputs alike)."""
    import torch

    with torch.no_grad():
        return torch.stack([model.classify(dihedral(nc, t), dihedral(c, t)).float() for t in range(8)])


def patch_scores(model, fs, tta: bool = False, batch_size: int = 32) -> dict:
    """Per-patch scores of one model on a FrameSet: ``classifier_logit``, ``decoder_max`` (and ``classifier_d4_logit``)."""
    import torch
    from CACTrainerLib import dataset

    model.eval()
    n = fs.n_patches
    out = {"classifier_logit": np.empty(n, np.float32), "decoder_max": np.empty(n, np.float32)}
    if tta:
        out["classifier_d4_logit"] = np.empty(n, np.float32)
    with torch.no_grad():
        for s in range(0, n, batch_size):
            b = dataset.make_batch(fs, np.arange(s, min(s + batch_size, n)))
            nc, c = torch.from_numpy(b["nc"]), torch.from_numpy(b["c"])
            feats = model.encode(nc, c)
            out["classifier_logit"][s:s + len(nc)] = model.classify_features(feats).float().numpy()
            roi = torch.sigmoid(model.decode(feats).float())[:, 0, EDGE:-EDGE, EDGE:-EDGE]
            out["decoder_max"][s:s + len(nc)] = roi.amax(dim=(1, 2)).numpy()
            if tta:
                out["classifier_d4_logit"][s:s + len(nc)] = d4_logits(model, nc, c).mean(0).numpy()
    return out


def variants(scores: dict) -> dict:
    """The scored variants (probabilities) of one model's :func:`patch_scores`."""
    p = 1.0 / (1.0 + np.exp(-scores["classifier_logit"]))
    out = {"classifier": p, "decoder_max": scores["decoder_max"],
           "geometric_mean": np.sqrt(p * scores["decoder_max"])}
    if "classifier_d4_logit" in scores:
        out["classifier_d4"] = 1.0 / (1.0 + np.exp(-scores["classifier_d4_logit"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--test", type=int, default=36)
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="also the eight-transform average (8x the inference)")
    ap.add_argument("--out", default="variants.json")
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.modelio import load_model
    from difficulty import test_fold
    from separability import evidence

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    fs = test_fold(args.test, args.seed, args.workers)[0]
    labels = fs.patch_labels > 0.5
    log(f"test fold {fs.summary()} in {time.perf_counter() - t0:.0f} s")
    results, logits = {"test": fs.summary(), "seed": args.seed, "models": {}}, []
    for path in args.models:
        t1 = time.perf_counter()
        model, _ = load_model(path)
        scores = patch_scores(model, fs, tta=args.tta)
        logits.append(scores["classifier_logit"])
        results["models"][path] = {k: evidence(v, labels, fs.acquisition) for k, v in variants(scores).items()}
        log(f"{path} in {time.perf_counter() - t1:.0f} s: {json.dumps(results['models'][path])}")
    if len(logits) > 1:
        mean = np.mean(logits, axis=0)
        results["ensemble"] = evidence(1.0 / (1.0 + np.exp(-mean)), labels, fs.acquisition)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"| model (seed {args.seed}) | score | patch AUC | frame AUC | cine AUC |")
    print("|---|---|---|---|---|")
    rows = [(Path(m).name, k, r) for m, v in results["models"].items() for k, r in v.items()]
    if "ensemble" in results:
        rows.append(("all models", "mean logit", results["ensemble"]))
    for name, k, r in rows:
        print(f"| {name} | {k} | {r['patch_auc']:.3f} | {r['frame_auc']:.3f} | {r['cine_auc']:.3f} |")
    log(f"done in {time.perf_counter() - t0:.0f} s; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
