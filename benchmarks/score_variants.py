"""Ways of scoring a patch with a trained model, without retraining: do any of them separate better?

    python benchmarks/score_variants.py MODEL.safetensors [MODEL ...] [--seed 3000] [--test 36] [--out variants.json]

On the test fold of separability.py and difficulty.py (phantom_pool ``--seed``, ``--test`` new
patients, 40 % calcium-free, 6 frames each), per model, the patch, frame and cine AUCs
(:func:`separability.evidence`) of

* ``classifier``: the classifier head's probability (what inference gates with);
* ``decoder_max``: the largest value of the *ungated* ROI probability map, 8 px inside the patch
  edges -- the decoder is trained densely on ROI_GT by the default recipe's joint step, so it is a
  detector of its own (a decoder refitted on positive patches only is not);
* ``geometric_mean``: ``sqrt(classifier * decoder_max)``;
* ``location_max`` and ``location_top16``: the classifier's fully connected layer applied at each of
  Block6's 8x8 locations (the fc is linear, so the mean of these location logits *is* the classifier
  logit: global average pooling), read out by their maximum or the mean of the 16 largest instead --
  a small deposit lights up few locations, which the average dilutes (multiple-instance pooling);

and, with two or more models, ``ensemble``: the mean of the models' classifier logits.  Writes
OUT (JSON) and prints a table.  (Averaging over the flips and quarter turns of training:
``tta_gain.py``.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402
from script_entry import check_models  # noqa: E402

EDGE = 8  # px of each patch edge left out of the decoder's maximum (padding effects)


def patch_scores(model, fs, batch_size: int = 32) -> dict:
    """Per-patch scores of one model on a FrameSet: ``classifier_logit``, ``decoder_max`` (ungated ROI map)
    and ``location_logits`` (the fc at each Block6 location, (n, locations); their mean is the classifier logit).

    Examples
    --------
    >>> import torch
    >>> from CACIdentifierLib.network import ResUNet18
    >>> from CACTrainerLib.dataset import FrameSet
    >>> z = np.zeros((1, 512, 512), np.float16)
    >>> fs = FrameSet(z, z, z.astype(bool), z.astype(bool), np.zeros((1, 5), np.float32), np.full((1, 2), 0.3),
    ...               np.array([0]), np.array([1]), np.zeros((1, 5), bool), z, ["a"], ["p"])
    >>> s = patch_scores(ResUNet18(width=8, decoder_channels=[8] * 5), fs)
    >>> s["classifier_logit"].shape, bool(((s["decoder_max"] > 0) & (s["decoder_max"] < 1)).all())
    ((5,), True)
    >>> s["location_logits"].shape, bool(np.allclose(s["location_logits"].mean(1), s["classifier_logit"], atol=1e-5))
    ((5, 64), True)
    """
    # Not evaluation.predict_patches: it keeps the ROI maps in float16, which ties the maxima of a
    # saturating decoder (the shipped default's decoder maximum AUC moved by 0.015 on a 2-patient fold).
    import torch
    from CACIdentifierLib.background import model_inputs
    from CACTrainerLib import dataset

    model.eval()
    n = fs.n_patches
    out = {"classifier_logit": np.empty(n, np.float32), "decoder_max": np.empty(n, np.float32)}
    locations = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            b = dataset.make_batch(fs, np.arange(s, min(s + batch_size, n)), inputs=model_inputs(model))
            nc, c = torch.from_numpy(b["nc"]), torch.from_numpy(b["c"])
            feats = model.encode(nc, c)
            out["classifier_logit"][s:s + len(nc)] = model.classify_features(feats).float().numpy()
            locations.append(model.location_logits(feats).float().numpy())
            roi = torch.sigmoid(model.decode(feats).float())[:, 0, EDGE:-EDGE, EDGE:-EDGE]
            out["decoder_max"][s:s + len(nc)] = roi.amax(dim=(1, 2)).numpy()
    out["location_logits"] = np.concatenate(locations)
    return out


def variants(scores: dict) -> dict:
    """The scored variants (probabilities) of one model's :func:`patch_scores`."""
    from scipy.special import expit as sigmoid

    p = sigmoid(scores["classifier_logit"])
    loc = np.sort(scores["location_logits"], axis=1)
    return {"classifier": p, "decoder_max": scores["decoder_max"], "geometric_mean": np.sqrt(p * scores["decoder_max"]),
            "location_max": sigmoid(loc[:, -1]), "location_top16": sigmoid(loc[:, -16:].mean(axis=1))}


def main(argv=None) -> int:
    from difficulty import fold_parser, test_fold

    args = fold_parser("variants.json").parse_args(argv)

    import torch
    from CACIdentifierLib.modelio import load_model
    from scipy.special import expit
    from separability import evidence

    check_models(args.models)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    fs = test_fold(args.test, args.seed, args.workers)[0]
    labels = fs.patch_labels > 0.5
    log(f"test fold {fs.summary()} in {time.perf_counter() - t0:.0f} s")
    results, logits = {"test": fs.summary(), "seed": args.seed, "models": {}}, []
    for path in args.models:
        t1 = time.perf_counter()
        model, _ = load_model(path)
        scores = patch_scores(model, fs)
        logits.append(scores["classifier_logit"])
        results["models"][path] = {k: evidence(v, labels, fs.acquisition) for k, v in variants(scores).items()}
        log(f"{path} in {time.perf_counter() - t1:.0f} s: {json.dumps(results['models'][path])}")
    if len(logits) > 1:
        mean = np.mean(logits, axis=0)
        results["ensemble"] = evidence(expit(mean), labels, fs.acquisition)
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
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
