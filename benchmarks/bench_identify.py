"""Benchmark of CAC identification (issue 6 targets), measured in one run on this machine.

Prints:
- per-frame time of the engine (five patch pairs, both stages, refinement), bf16 autocast and fp32,
  with the shipped model's gating and with the decoder forced on every patch (worst case);
- the ratio to a naive fp32 per-patch loop (batch of one patch pair, decoder always run) over the same model;
- bf16 vs fp32 agreement (frame probabilities, ROI Dice);
- ``cac identify`` end to end on a 200-frame 512x512 DICOM cine: wall time and peak memory (max RSS).

Targets: <= 0.10 s/frame on 2 CPU cores, <= 20 s end to end, <= 2.5 GB, >= 4x faster than naive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from CACIdentifierLib import patches as P
from CACIdentifierLib.inference import identify
from CACIdentifierLib.modelio import default_model_path, load_model
from CACIdentifierLib.refinement import refine
from CACIdentifierLib.sync import synchronize_cine
from CACTrainerLib.phantom import PhantomParams, generate_acquisition

N_FRAMES = 200
NAIVE_FRAMES = 10


def naive_per_frame(model, cine, pairs, refine_params) -> float:
    """fp32, one patch pair at a time, decoder always run: the straightforward loop.

    The first pair is run once untimed (oneDNN builds its kernels then), as the engine is warmed up.
    """
    for warm_up in (True, False):
        t0 = time.perf_counter()
        for f_nc, f_c in pairs[:1] if warm_up else pairs:
            _naive_frame(model, cine, f_nc, f_c, refine_params)
    return (time.perf_counter() - t0) / len(pairs)


def _naive_frame(model, cine, f_nc, f_c, refine_params) -> None:
    nc = P.extract_patches(P.normalize_frame(cine.frames[f_nc]))
    c = P.extract_patches(P.normalize_frame(cine.frames[f_c]))
    maps = []
    with torch.no_grad():
        for i in range(5):
            cls, roi = model(torch.from_numpy(nc[i][None, None]), torch.from_numpy(c[i][None, None]))
            gate = float(torch.sigmoid(cls)[0]) >= 0.5
            maps.append(torch.sigmoid(roi)[0, 0].numpy() * gate)
    refine(P.stitch(np.stack(maps)), **refine_params)


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall time and peak resident memory (GB) of a command.

    The peak is the child's own high-water mark (VmHWM, polled every 20 ms). getrusage's
    RUSAGE_CHILDREN is not used: on Linux it also counts the parent's memory at fork/exec.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_kb(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return wall, peak / 1024**2


def main() -> int:
    torch.set_num_threads(os.cpu_count() or 2)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    model, meta = load_model(default_model_path())
    acq = generate_acquisition(PhantomParams(n_frames=N_FRAMES), seed=11)
    cine = acq.to_cine()
    sync = synchronize_cine(cine)
    n_nc = len(sync.pairs)
    print(f"cine: {cine.n_frames} frames {cine.rows}x{cine.columns}, {n_nc} non-contrast frames analysed")

    runs = {}
    for name, kw in (
        ("bf16 gated", dict(use_autocast=True)),
        ("fp32 gated", dict(use_autocast=False)),
        ("bf16 decoder on every patch", dict(use_autocast=True, classifier_threshold=0.0)),
    ):
        identify(cine, model, meta, sync, **kw)  # warm-up (oneDNN kernels)
        t0 = time.perf_counter()
        res = identify(cine, model, meta, sync, **kw)  # the engine default: one frame per pass on CPU
        dt = (time.perf_counter() - t0) / n_nc
        runs[name] = (res, dt)
        print(f"engine {name:30s}: {dt:.4f} s/frame ({dt / 0.10:.2f} x the 0.10 s target)")

    bf, fp = runs["bf16 gated"][0], runs["fp32 gated"][0]
    dprob = float(np.max(np.abs(bf.probabilities - fp.probabilities)))
    inter = np.logical_and(bf.roi, fp.roi).sum()
    dice = 2 * inter / max(1, bf.roi.sum() + fp.roi.sum())
    print(f"bf16 vs fp32: max |dp| = {dprob:.4f}, ROI Dice = {dice:.4f}, "
          f"same gating on {np.mean((bf.patch_probabilities >= 0.5) == (fp.patch_probabilities >= 0.5)):.4f} of patches")

    naive = naive_per_frame(model, cine, sync.pairs[:NAIVE_FRAMES], meta.get("refinement", {}))
    best = runs["bf16 gated"][1]
    print(f"naive fp32 per-patch loop: {naive:.4f} s/frame; engine is {naive / best:.1f}x faster (target >= 4x)")

    with tempfile.TemporaryDirectory() as tmp:
        from CACTrainerLib.phantom import write_acquisition_dicom

        dcm = Path(tmp) / "cine.dcm"
        write_acquisition_dicom(acq, dcm)
        cmd = [sys.executable, "-m", "CACIdentifierLib.cli", "identify", str(dcm), "--out", str(Path(tmp) / "out")]
        t0 = time.perf_counter()
        wall, peak_gb = run_measured(cmd)
    print(f"cac identify end to end ({N_FRAMES} frames): {wall:.1f} s ({wall / 20:.2f} x the 20 s target), "
          f"peak memory {peak_gb:.2f} GB ({peak_gb / 2.5:.2f} x the 2.5 GB target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
