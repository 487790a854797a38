"""Training on a stream of new patients with and without generating the next window ahead.

``PatientStream.prefetch`` generates the next epoch's new patients in lower-priority worker
processes while the current epoch trains (``cac train --phantom-pool N --refresh-patients K``
always does).  This runs the same short stream training (default recipe, stage 1 only, the
shipped network, no validation) twice, ahead and not, in one process, and prints the wall time
of the epochs after the first, the seconds they waited for data (``data_seconds``) and the
ratios.  On a machine whose cores the training steps already fill, overlapping can only use what
the steps leave idle; on a GPU server the CPU cores are idle while the GPU trains.

Usage: ``python benchmarks/bench_stream_prefetch.py [--window 12] [--refresh 6] [--epochs 4]
[--samples 256] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
from CACTrainerLib import training as T
from CACTrainerLib.phantom_pool import PatientStream
from CACTrainerLib.recipes import recipe_config


def run(args, ahead: bool) -> dict:
    rows = []
    stream = PatientStream(range(args.window), args.refresh, next_patient=args.window, seed=1000,
                           frames_per_acquisition=6, background=False, ahead=ahead)
    cfg = recipe_config("default", epochs1=args.epochs, epochs2=0, seed=0, num_threads=args.threads,
                        samples_per_epoch=args.samples, channels_last=True, workers=0,
                        refresh_patients=args.refresh)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as run_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            T.train(None, None, cfg, run_dir, emit=rows.append, stream=stream)
        finally:
            stream.close()
    epochs = [r for r in rows if r.get("event") == "epoch"][1:]  # the first epoch's window is built before it
    return {"seconds": sum(r["seconds"] for r in epochs), "data": sum(r.get("data_seconds") or 0.0 for r in epochs),
            "epochs": len(epochs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--refresh", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    off = run(args, ahead=False)
    on = run(args, ahead=True)
    print(f"stream: window {args.window} patients, {args.refresh} new an epoch, {args.samples} samples an epoch, "
          f"{args.threads} torch threads; epochs 2..{args.epochs}:")
    for name, r in (("generated when needed", off), ("generated ahead", on)):
        print(f"  {name:22s} {r['seconds']:7.1f} s, of which waiting for new patients {r['data']:6.1f} s")
    print(f"  ratio ahead/when needed: wall {on['seconds'] / off['seconds']:.2f}, "
          f"waiting {on['data'] / max(off['data'], 1e-9):.2f}   ({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
