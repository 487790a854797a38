"""Training steps with glibc's default malloc vs ``allocator.keep_freed_memory`` (what ``cac`` does), one run.

Each setting runs in its own process (the setting is process-wide and one-way): the
default recipe's joint step, the paper recipe's stage-1 step and the stage-2 step of the
default ResUNet18, batch 32 (the training batch), 2 threads, bf16 autocast where the CPU
has it and channels_last (as ``cac train --channels-last``), best of 3 timed steps after a
warm-up.  Prints seconds per step, the minor page faults and system CPU seconds per step,
and the ratio of the two settings, and the same for the network's inference pass over 8 frames
(40 patch pairs, no gradients); the settings alternate twice and the best is kept, as
the machine may be shared.

    python benchmarks/bench_allocator.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = (("joint", "joint (default stage 1)"), (1, "paper stage 1"), (2, "stage 2"),
          ("infer", "inference, 8 frames"))


def _inference_time(B) -> float:
    """Seconds for the network on 8 frames' 40 patch pairs (classifier + decoder, no gradients), as identify runs it."""
    import time

    import numpy as np
    import torch
    from CACIdentifierLib.device import autocast
    from CACIdentifierLib.network import ResUNet18

    torch.manual_seed(0)
    model = ResUNet18().to(memory_format=torch.channels_last).eval()
    rng = np.random.default_rng(0)
    nc, c = (torch.from_numpy(rng.random((40, 1, 256, 256), dtype=np.float32)).contiguous(
        memory_format=torch.channels_last) for _ in range(2))
    times = []
    for _ in range(B.REPEATS + 1):
        t0 = time.perf_counter()
        with torch.no_grad(), autocast("cpu", enabled=True):
            model(nc, c)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def child(keep: bool) -> None:
    sys.path.insert(0, str(HERE))
    import bench_training as B
    import torch
    from CACIdentifierLib.allocator import keep_freed_memory
    from CACIdentifierLib.device import cpu_supports_bf16

    applied = keep_freed_memory() if keep else False
    torch.set_num_threads(2)
    B.BATCH = 32
    out = {"applied": applied, "bf16": cpu_supports_bf16()}
    for stage, _ in STAGES:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        step = _inference_time(B) if stage == "infer" else B._step_time(stage, amp=True, channels_last=True)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        n = B.REPEATS + 1
        out[str(stage)] = {"seconds": step, "minflt": (r1.ru_minflt - r0.ru_minflt) / n,
                           "sys": (r1.ru_stime - r0.ru_stime) / n}
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(keep: bool) -> dict:
    env = dict(os.environ)
    env.pop("CAC_SYSTEM_MALLOC", None)
    r = subprocess.run([sys.executable, __file__, "--child", "keep" if keep else "plain"], env=env,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    from script_entry import options

    options(__doc__)
    results = {True: [], False: []}
    for _ in range(2):
        for keep in (False, True):
            results[keep].append(run(keep))
    kept, plain = results[True], results[False]
    print(f"batch 32, 2 threads, bf16 autocast: {plain[0]['bf16']}, channels_last; keep_freed_memory applied: "
          f"{kept[0]['applied']}")
    for stage, name in STAGES:
        k = min((r[str(stage)] for r in kept), key=lambda x: x["seconds"])
        p = min((r[str(stage)] for r in plain), key=lambda x: x["seconds"])
        print(f"{name:24s}: glibc default {p['seconds']:.3f} s/step ({p['minflt']:8.0f} page faults, "
              f"{p['sys']:.2f} s system)   kept {k['seconds']:.3f} s/step ({k['minflt']:7.0f}, {k['sys']:.2f} s)   "
              f"{p['seconds'] / k['seconds']:.2f}x", flush=True)
    print(f"peak RSS: glibc default {max(r['maxrss_mib'] for r in plain):.0f} MiB, "
          f"kept {max(r['maxrss_mib'] for r in kept):.0f} MiB")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2] == "keep")
    else:
        main()
