"""A training run under observation, for the data-parallel tests (Testing/test_distributed.py).

Run by the real launcher (``python -m torch.distributed.run --nproc_per_node 2
Testing/ddp_probe.py ...``) or as one plain process (the reference).  It trains on
a FrameSet saved by the test (``.npz``) with :func:`CACTrainerLib.training.train`
and records, per rank, into ``LOG_DIR/rank{r}.json``:

- ``steps``: the patch ids of every batch this rank trained on (stage, epoch, i, ids);
- ``hashes``: a SHA-256 of the trained parameters after every optimiser step;
- ``writes``: every file created, replaced or renamed and every folder made under
  ``WATCH`` (an audit hook: ``open`` for writing, ``os.replace``, ``os.rename``,
  ``os.mkdir``), which shows who wrote what;

and the final weights into ``LOG_DIR/final_rank{r}.npz``.  ``--frozen-bn`` keeps
every BatchNorm in eval mode while training (statistics from the running averages,
which ``recalibrate_bn`` sets identically on every rank), so that a sample's output
does not depend on which other samples share its batch.  No augmentation (a rank
draws its own for its share) and stage 1 on BCE alone (a per-sample mean; the Dice
terms of the dense and decoder losses are ratios of batch sums, computed per rank's
share): the stage-1 data-parallel step must then equal the one-process step on the
global batch up to summation order.
``--kill-after-epoch E``: rank 0 kills itself (SIGKILL) right after writing the
checkpoint of stage-1 epoch E.
"""

import argparse
import hashlib
import json
import os
import signal
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("frameset")
    ap.add_argument("run_dir")
    ap.add_argument("log_dir")
    ap.add_argument("--watch", required=True)
    ap.add_argument("--epochs1", type=int, default=2)
    ap.add_argument("--epochs2", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--frozen-bn", action="store_true")
    ap.add_argument("--kill-after-epoch", type=int)
    args = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    watch = os.path.realpath(args.watch)
    writes: list = []

    def audit(event, a):
        path = None
        if event == "open" and a[0] is not None and isinstance(a[0], (str, bytes, os.PathLike)):
            mode, flags = a[1], a[2]
            writing = (mode is not None and any(ch in str(mode) for ch in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            path = a[0] if writing else None
        elif event in ("os.replace", "os.rename"):
            path = a[1]
        elif event == "os.mkdir":
            path = a[0]
        if path is not None:
            p = os.path.realpath(os.fsdecode(path))
            if p == watch or p.startswith(watch + os.sep):
                writes.append([event, p])

    sys.addaudithook(audit)

    import torch
    from CACIdentifierLib.network import ResUNet18
    from CACTrainerLib import dataset as D
    from CACTrainerLib import distributed
    from CACTrainerLib import training as T

    distributed.init("cpu", batch_size=args.batch_size)
    z = np.load(args.frameset)
    fs = D.FrameSet(**{k: z[k] for k in D.FrameSet.array_fields()},
                    acquisition=[str(s) for s in z["acquisition"]], patient=[str(s) for s in z["patient"]])
    cfg = T.TrainConfig(epochs1=args.epochs1, epochs2=args.epochs2, batch_size=args.batch_size, lr1=1e-3,
                        lr2=1e-3, seed=0, device="cpu", amp=False, augment=False, samples_per_epoch=args.samples,
                        architecture={"width": 8}, num_threads=1, hard_negative_frac=0.5, lr_schedule="cosine",
                        warmup_frac=0.2)

    steps, hashes = [], []
    get = T.BatchSource.__getitem__

    def record_batch(self, i):
        steps.append({"stage": self.stage, "epoch": self.epoch, "i": int(i),
                      "ids": [int(x) for x in self.batches[i]]})
        return get(self, i)

    T.BatchSource.__getitem__ = record_batch
    step = T.MixedPrecision.step

    def record_step(self, loss, opt):
        out = step(self, loss, opt)
        h = hashlib.sha256()
        for g in opt.param_groups:
            for p in g["params"]:
                h.update(p.detach().cpu().numpy().tobytes())
        hashes.append(h.hexdigest())
        return out

    T.MixedPrecision.step = record_step
    if args.frozen_bn:
        train_mode = ResUNet18.train

        def frozen(self, mode=True):
            train_mode(self, mode)
            for m in self.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.train(False)
            return self

        ResUNet18.train = frozen
    if args.kill_after_epoch is not None and rank == 0:
        save = T.save_checkpoint

        def save_then_die(run_dir, model, best_state, opt, info, extra=None):
            save(run_dir, model, best_state, opt, info, extra)
            if info["stage"] == 1 and info["epochs_done"] == args.kill_after_epoch:
                os.kill(os.getpid(), signal.SIGKILL)

        T.save_checkpoint = save_then_die

    result = T.train(fs, None, cfg, args.run_dir, resume=args.resume)
    os.makedirs(args.log_dir, exist_ok=True)
    np.savez(os.path.join(args.log_dir, f"final_rank{rank}.npz"),
             **{k: v.detach().cpu().numpy() for k, v in result.model.state_dict().items()})
    with open(os.path.join(args.log_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "steps": steps, "hashes": hashes, "writes": writes,
                   "history": result.history}, f)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
