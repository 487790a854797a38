"""Data loading for training: samples/s with 0, 1, 2 DataLoader workers, and the step time spent waiting.

Batches are those of training (:class:`CACTrainerLib.training.BatchSource`: cut
from 512x512 frames, augmented, with the boundary-loss distance maps of stage
2), on in-memory phantom frames.  For each worker count it prints:

- ``load``: samples/s of the batch source alone (an epoch iterated, nothing else);
- ``train``: samples/s of training steps (stage 2: frozen encoder, decoder, GDL +
  boundary loss, Adam) of a ResUNet18 of width ``--width`` fed by that source, and
  the share of the step time spent waiting for the next batch
  (``next(iterator)``), the rest being the step itself.

0 workers cut every batch in the training loop (its whole cost is waiting);
with workers the cutting overlaps the steps, as long as there are cores for
both.  One run, the first batch of each epoch (worker start-up) left out.
Usage: ``python benchmarks/bench_dataloading.py [--batches 12] [--width 16]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from CACIdentifierLib.network import ResUNet18
from CACTrainerLib import dataset as D
from CACTrainerLib import losses as L
from CACTrainerLib import training as T
from CACTrainerLib.phantom import PhantomParams, generate_acquisition


def frames() -> D.FrameSet:
    params = PhantomParams(n_frames=40, calcium_mu_per_mm=0.3)
    sets = []
    for p in range(2):
        acq = generate_acquisition(params, seed=3, patient=p, acquisition=0)
        sets.append(D.frames_from_acquisition(acq, acquisition=f"P{p}A1", patient=f"P{p}", frames_per_acquisition=4))
    return D.FrameSet.concat(sets)


def source(fs, workers: int, n_batches: int, batch: int, epoch: int) -> T.BatchSource:
    cfg = T.TrainConfig(batch_size=batch, workers=workers, seed=0)
    rng = np.random.default_rng([0, 2, epoch])
    ids = rng.choice(fs.n_patches, size=n_batches * batch)
    return T.BatchSource(fs, [ids[i * batch:(i + 1) * batch] for i in range(n_batches)], cfg, stage=2, epoch=epoch)


def load_rate(fs, workers: int, n_batches: int, batch: int) -> float:
    it = iter(source(fs, workers, n_batches + 1, batch, epoch=workers).iterate("cpu"))
    next(it)  # worker start-up
    t0 = time.perf_counter()
    for _ in it:
        pass
    return n_batches * batch / (time.perf_counter() - t0)


def train_rate(fs, workers: int, n_batches: int, batch: int, width: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = ResUNet18(width=width)
    model.freeze_classifier(True)
    model.train()
    opt = torch.optim.Adam(model.decoder_parameters(), lr=1e-3)
    it = iter(source(fs, workers, n_batches + 1, batch, epoch=10 + workers).iterate("cpu"))
    wait = 0.0
    t0 = None
    for i in range(n_batches + 1):
        t = time.perf_counter()
        b = next(it)
        if i == 0:
            t0 = time.perf_counter()  # start-up and the first batch left out
        else:
            wait += time.perf_counter() - t
        b = {k: torch.as_tensor(np.asarray(v)) for k, v in b.items()}
        with torch.no_grad():
            feats = model.encode(b["nc"], b["c"])
        loss, _ = L.decoder_loss(model.decode(feats), b["roi"], b["dist"], 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    total = time.perf_counter() - t0
    return n_batches * batch / total, wait / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fs = frames()
    print(f"cores {os.cpu_count()}, torch threads {args.threads}, batch {args.batch_size}, "
          f"{args.batches} batches, ResUNet18 width {args.width}, stage-2 batches (with distance maps)")
    print(f"{'workers':>7} {'load samples/s':>15} {'train samples/s':>16} {'waiting for data':>17}")
    base = None
    for w in (0, 1, 2):
        load = load_rate(fs, w, args.batches, args.batch_size)
        rate, share = train_rate(fs, w, args.batches, args.batch_size, args.width)
        base = base or rate
        print(f"{w:>7} {load:>15.1f} {rate:>16.1f} {100 * share:>16.0f}%   (train x{rate / base:.2f} of 0 workers)")


if __name__ == "__main__":
    main()
