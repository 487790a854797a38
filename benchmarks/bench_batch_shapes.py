"""Resident memory over training epochs whose last batch changes size vs. one batch shape, one run.

An epoch's last batch used to be partial, and its size changed from epoch to epoch (a stream's
window and its positives vary): a stream run's memory crept up by ~170 MB an epoch.  This replays
joint training steps of the default ResUNet-18 (bf16 autocast where the CPU has it, channels_last,
``cac``'s allocator setting, 2 threads) for ``--epochs`` epochs of two batches of ``--batch`` and a
last one of a random size (``vary``, the old batching) or of ``--batch`` (``fixed``, what
``training._epoch_batches`` now does), each setting in its own process, and prints the resident
memory after each epoch and the growth from the first epoch to the last of both settings.

    python benchmarks/bench_batch_shapes.py [--epochs 12] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for sub in ("CACIdentifier", "CACTrainer"):
    sys.path.insert(0, str(HERE.parent / sub))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(mode: str, epochs: int, batch: int) -> list:
    import numpy as np
    import torch
    from CACIdentifierLib.allocator import keep_freed_memory

    keep_freed_memory()  # as `cac` does
    from CACIdentifierLib.device import autocast
    from CACIdentifierLib.network import ResUNet18

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ResUNet18().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    rng = np.random.default_rng(0)
    cpu = torch.device("cpu")
    rss = []
    for _ in range(epochs):
        last = int(rng.integers(2, batch)) if mode == "vary" else batch
        for b in (batch, batch, last):
            nc = torch.rand(b, 1, 256, 256).to(memory_format=torch.channels_last)
            c = torch.rand(b, 1, 256, 256).to(memory_format=torch.channels_last)
            with autocast(cpu, True):
                logits, roi = model(nc, c)
                loss = logits.float().mean() + roi.float().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        rss.append(round(_rss_mib(), 1))
    return rss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mode", choices=("vary", "fixed"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:
        print(json.dumps(_child(args.mode, args.epochs, args.batch)))
        return 0
    res = {}
    for mode in ("vary", "fixed"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--epochs", str(args.epochs),
                              "--batch", str(args.batch)], capture_output=True, text=True, check=True).stdout
        res[mode] = json.loads(out.strip().splitlines()[-1])
    print(f"resident MiB after each of {args.epochs} epochs (batches {args.batch}, {args.batch}, last):")
    for mode, rss in res.items():
        print(f"  {mode:5s} {' '.join(f'{r:.0f}' for r in rss)}   last/first {rss[-1] / rss[0]:.3f}")
    grow = {m: r[-1] - r[0] for m, r in res.items()}
    print(f"growth first -> last epoch: vary {grow['vary']:.0f} MiB, fixed {grow['fixed']:.0f} MiB")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
