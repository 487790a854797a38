"""Weight averaging of one run's epochs (stochastic weight averaging), against the single epochs.

    python benchmarks/epoch_average.py REF.safetensors CK1 CK2 ... [--single 5,8] [--folds 3000:36,4000:36]

``CK*`` are training checkpoints of one run (``RUN/checkpoint.safetensors`` of successive epochs,
kept by hard links as the trainer replaces the file by a rename); ``REF`` is any model file of the
same architecture.  The averaged model's BatchNorm statistics are recomputed in train mode on
``--bn-patients`` patients of the training pool (phantom_pool seed 0): averaging the running
statistics of several epochs does not give the statistics of the averaged weights.  Prints the
patch AUC on each held-out fold (phantom_pool seeds, as compare_models.py) of the average, the
average without the BatchNorm pass, and the ``--single`` checkpoints (indices into CK*).  ``--save OUT``
writes the average with recomputed BatchNorm as a model file whose card is REF's, with the averaged files
named under ``training.weight_average`` (a stage-1 classifier: its decoder is REF's until refitted).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402


def load_checkpoint_weights(path, ref_model):
    """A copy of ``ref_model`` with the weights of a training checkpoint (its ``model.`` tensors) or of a model
    file (``cac train --keep-epochs`` writes one per epoch), strictly."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = copy.deepcopy(ref_model)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        is_model_file = "cac" in (f.metadata() or {})
    if not is_model_file:
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(tensors, strict=True)
    return model


def average_weights(models):
    """The mean of the models' floating-point tensors (integer buffers, e.g. BatchNorm counters, from the first)."""
    import torch

    out = copy.deepcopy(models[0])
    state = out.state_dict()
    for k, v in state.items():
        if v.dtype.is_floating_point:
            state[k] = torch.stack([m.state_dict()[k].float() for m in models]).mean(0).to(v.dtype)
    out.load_state_dict(state)
    return out


def recompute_batchnorm(model, fs, batches: int = 40, batch_size: int = 32, seed: int = 0):
    """BatchNorm running statistics of ``model`` re-estimated (cumulative mean) on patches of ``fs``."""
    import torch
    from CACIdentifierLib.background import model_inputs
    from CACTrainerLib import dataset

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    ids = np.random.default_rng(seed).permutation(fs.n_patches)[:batches * batch_size]
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            b = dataset.make_batch(fs, ids[s:s + batch_size], inputs=model_inputs(model))
            model.classify_features(model.encode(torch.from_numpy(b["nc"]), torch.from_numpy(b["c"])))
    return model.eval()


def save_average(path, model, ref_meta: dict, checkpoints, bn_patients: int) -> None:
    """``model`` written with REF's card, recording which files were averaged (never over an existing file)."""
    from CACIdentifierLib.modelio import save_model

    meta = copy.deepcopy(ref_meta)
    # REF's measured figures, calibration and activation statistics do not describe the average
    for key in ("format", "version", "architecture", "created", "software_version", "weights_dtype", "sha256",
                "weights_file", "metrics", "calibration", "feature_statistics"):
        meta.pop(key, None)
    training = dict(meta.get("training") or {})
    training["weight_average"] = {"checkpoints": [Path(c).name for c in checkpoints],
                                  "batchnorm_recomputed_on_patients": bn_patients}
    meta["training"] = training
    save_model(path, model, meta)
    log(f"saved {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--single", default="", help="comma-separated indices of CK* also scored alone")
    ap.add_argument("--folds", default="3000:36,4000:36", help="SEED:PATIENTS,...")
    ap.add_argument("--bn-patients", type=int, default=16)
    ap.add_argument("--out", default="epoch_average.json")
    ap.add_argument("--save", default=None, help="write the average (BatchNorm recomputed) as this model file")
    args = ap.parse_args(argv)

    import torch
    from CACIdentifierLib.metrics import roc_auc
    from CACIdentifierLib.modelio import load_model
    from CACTrainerLib import evaluation
    from difficulty import test_fold

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ref, ref_meta = load_model(args.ref)
    folds = {int(s): test_fold(int(n), int(s))[0] for s, n in (f.split(":") for f in args.folds.split(","))}
    bn_fs = test_fold(args.bn_patients, 0)[0]
    log(f"folds {list(folds)} and {args.bn_patients} training patients in {time.perf_counter() - t0:.0f} s")
    models = {}
    for i in (int(i) for i in args.single.split(",") if i):
        models[Path(args.checkpoints[i]).name] = load_checkpoint_weights(args.checkpoints[i], ref)
    loaded = [load_checkpoint_weights(p, ref) for p in args.checkpoints]
    averaged = average_weights(loaded)
    models[f"average of {len(loaded)}, BatchNorm as averaged"] = averaged
    models[f"average of {len(loaded)}, BatchNorm recomputed"] = recompute_batchnorm(copy.deepcopy(averaged), bn_fs)
    if args.save:
        save_average(args.save, models[f"average of {len(loaded)}, BatchNorm recomputed"], ref_meta,
                     args.checkpoints, args.bn_patients)
    results = {}
    for name, model in models.items():
        results[name] = {}
        for seed, fs in folds.items():
            probs = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
            results[name][seed] = roc_auc(fs.patch_labels > 0.5, probs)
        log(f"{name}: " + ", ".join(f"seed {s} {a:.3f}" for s, a in results[name].items()))
    Path(args.out).write_text(json.dumps({"checkpoints": args.checkpoints, "auc": results}, indent=1))
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
