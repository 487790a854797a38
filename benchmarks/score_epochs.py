"""Single epochs of a training run scored on the held-out test folds: patch, frame and cine AUC.

    python benchmarks/score_epochs.py REF.safetensors CK1 CK2 ... [--folds 3000:36,4000:36] [--out F]
    python benchmarks/score_epochs.py REF.safetensors --watch EPOCHS_DIR --epochs 5,10,15 [--threads 1]

``CK*`` are the epoch models of ``cac train --keep-epochs`` (``RUN/epochs/stage1_epochNNN.safetensors``) or
training checkpoints (``RUN/checkpoint.safetensors`` copied as each epoch ends, named ``s1eN.safetensors``);
``REF`` is any model file of the same architecture (its weights are replaced).  The folds are the
new patients of compare_models.py (``difficulty.test_fold``: phantom_pool seeds 3000 and 4000, 36
patients each), generated once per call, so scoring several epochs costs one generation.  With
``--watch`` the script waits for each listed stage-1 epoch N in ``EPOCHS_DIR`` (either name) and scores
it as it appears, so a long run's epochs are scored beside it (``--threads 1`` leaves it a core).
The figures are those of separability.py's ``evidence`` (frame AUC: a frame's most probable patch;
cine AUC: the mean of those over a cine's frames); they are appended to ``--out`` (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_protocol import log  # noqa: E402


def score(model, folds: dict) -> dict:
    """{seed: evidence(...)} of ``model`` on each fold (a FrameSet per phantom_pool seed)."""
    import torch
    from CACTrainerLib import evaluation
    from separability import evidence

    out = {}
    for seed, fs in folds.items():
        probs = evaluation.predict_patches(model, fs, torch.device("cpu"), amp=False).probs
        out[seed] = evidence(probs, fs.patch_labels > 0.5, fs.acquisition)
    return out


def _wait_for(folder: Path, epoch: int, poll: float) -> Path:
    """The stage-1 ``epoch`` of ``folder`` once it exists: a kept epoch model, or a copied checkpoint."""
    names = (f"stage1_epoch{epoch:03d}.safetensors", f"s1e{epoch}.safetensors")
    while True:
        for name in names:
            if (folder / name).exists():
                time.sleep(2.0)  # a copy may still be under way (a kept epoch model is renamed in whole)
                return folder / name
        time.sleep(poll)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ref", help="model file of the checkpoints' architecture")
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--watch", metavar="DIR", help="wait for each of --epochs in DIR (RUN/epochs of --keep-epochs)")
    ap.add_argument("--epochs", default="", help="comma-separated stage-1 epochs to score with --watch")
    ap.add_argument("--folds", default="3000:36,4000:36", help="SEED:PATIENTS,...")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--poll", type=float, default=30.0, help="seconds between looks with --watch")
    ap.add_argument("--out", default="score_epochs.jsonl")
    args = ap.parse_intermixed_args(argv)
    if bool(args.watch) == bool(args.checkpoints):
        ap.error("give checkpoints or --watch DIR --epochs LIST, not both")
    epochs = [int(e) for e in args.epochs.split(",") if e]
    if args.watch and not epochs:
        ap.error("--watch needs --epochs")

    import torch
    from CACIdentifierLib.modelio import load_model
    from difficulty import test_fold
    from epoch_average import load_checkpoint_weights

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ref, _ = load_model(args.ref)
    folds = {int(s): test_fold(int(n), int(s), args.threads)[0]
             for s, n in (f.split(":") for f in args.folds.split(","))}
    log(f"folds {list(folds)} in {time.perf_counter() - t0:.0f} s")
    for path in [Path(p) for p in args.checkpoints] or epochs:
        if args.watch:
            path = _wait_for(Path(args.watch), path, args.poll)
        t1 = time.perf_counter()
        result = score(load_checkpoint_weights(path, ref), folds)
        row = {"checkpoint": str(path), "seconds": round(time.perf_counter() - t1, 1),
               **{f"seed{s}": r for s, r in result.items()}}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"{path.name}: " + "; ".join(
            f"seed {s} patch {r['patch_auc']:.3f} frame {r['frame_auc']:.3f} cine {r['cine_auc']:.3f}"
            for s, r in result.items()))
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
