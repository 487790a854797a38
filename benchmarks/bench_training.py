"""Training throughput: samples/s of each recipe's training steps, fp32 vs bf16 autocast vs channels_last, one run.

Prints, for the default ResUNet18 on 256x256 patch pairs with batch 16 and
torch.set_num_threads(2), samples/s of:

- ``paper stage 1``: a classifier step (forward, BCE, backward, Adam);
- ``joint (default stage 1)``: the default recipe's step (classifier and
  decoder together: BCE + the dense ROI_GT loss, backward through everything);
- ``stage 2``: a decoder step (frozen encoder forward, decoder forward,
  GDL + boundary loss, backward, Adam);

each in fp32, under :func:`CACIdentifierLib.device.autocast` (bf16 where the
CPU has it; otherwise autocast is off and the row equals fp32), in fp32 with
channels_last tensors, and with both, with the ratios to fp32 measured in this run.  The
best of ``REPEATS`` timed steps after one warm-up step is used (the machine may
be shared).  Last, the joint step with both settings without Block1's max-pool
(``block1_pool=False``: Block2..Block6 at twice the resolution) and at half the
width (``width=32``, ``cac train --width 32``: a third of the weights), each
against the default network, measured in the same run.

``--compile``: instead, the joint step as the best CPU runs train it (width 32,
batch 32, autocast + channels_last), eager against ``torch.compile`` (inductor)
of the training step's forward module (``training._Forward``), the best and the
median of ``COMPILE_STEPS`` steps after two warm-up steps (the first compiled one
includes the compilation, reported apart).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from CACIdentifierLib.device import autocast, cpu_supports_bf16
from CACIdentifierLib.network import ResUNet18
from CACTrainerLib.losses import classification_loss, decoder_loss, dense_roi_loss, signed_distance_map

BATCH = 16
REPEATS = 3
COMPILE_STEPS = 10


def _step_time(stage, amp: bool, channels_last: bool = False, block1_pool: bool = True, width: int = 64) -> float:
    torch.manual_seed(0)
    model = ResUNet18(block1_pool=block1_pool, width=width)
    rng = np.random.default_rng(0)
    nc = torch.from_numpy(rng.random((BATCH, 1, 256, 256), dtype=np.float32))
    c = torch.from_numpy(rng.random((BATCH, 1, 256, 256), dtype=np.float32))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        nc, c = (t.contiguous(memory_format=torch.channels_last) for t in (nc, c))
    labels = torch.from_numpy((rng.random(BATCH) > 0.5).astype(np.float32))
    roi = np.zeros((BATCH, 1, 256, 256), bool)
    roi[:, :, 100:140, 100:140] = True
    dist = torch.from_numpy(signed_distance_map(roi))
    roi_t = torch.from_numpy(roi.astype(np.float32))
    if stage == 1:
        opt = torch.optim.Adam(model.classifier_parameters(), lr=1e-4)
    elif stage == "joint":
        opt = torch.optim.AdamW(model.classifier_parameters() + model.decoder_parameters(), lr=1e-3)
    else:
        model.freeze_classifier(True)
        opt = torch.optim.Adam(model.decoder_parameters(), lr=1e-3)
    model.train()
    times = []
    for _ in range(REPEATS + 1):
        t0 = time.perf_counter()
        with autocast("cpu", enabled=amp):
            if stage == 1:
                loss = classification_loss(model.classify(nc, c), labels)
            elif stage == "joint":
                feats = model.encode(nc, c)
                loss = classification_loss(model.classify_features(feats), labels) + dense_roi_loss(
                    model.decode(feats), roi_t)
            else:
                with torch.no_grad():
                    feats = model.encode(nc, c)
                loss, _ = decoder_loss(model.decode(feats), roi_t, dist, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def _joint_times(compiled: bool, batch: int = 32, width: int = 32) -> list[float]:
    """Seconds of each of COMPILE_STEPS joint steps (autocast + channels_last), eager or through torch.compile."""
    from CACTrainerLib.training import _Forward

    torch.manual_seed(0)
    model = ResUNet18(width=width).to(memory_format=torch.channels_last)
    forward = _Forward(model, 1, True)
    if compiled:
        forward = torch.compile(forward)
    rng = np.random.default_rng(0)
    nc, c = (torch.from_numpy(rng.random((batch, 1, 256, 256), dtype=np.float32)).contiguous(
        memory_format=torch.channels_last) for _ in range(2))
    labels = torch.from_numpy((rng.random(batch) > 0.5).astype(np.float32))
    roi = torch.zeros((batch, 1, 256, 256))
    roi[:, :, 100:140, 100:140] = 1.0
    opt = torch.optim.AdamW(model.classifier_parameters() + model.decoder_parameters(), lr=1e-3)
    model.train()
    times = []
    for _ in range(COMPILE_STEPS):
        t0 = time.perf_counter()
        with autocast("cpu", enabled=True):
            logit, roi_logit = forward(nc, c)
            loss = classification_loss(logit, labels) + dense_roi_loss(roi_logit, roi)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def compare_compile(batch: int = 32) -> None:
    torch.set_num_threads(2)
    eager, compiled = _joint_times(False, batch), _joint_times(True, batch)
    e, c = np.array(eager[2:]), np.array(compiled[2:])
    print(f"joint step, width 32, batch {batch}, autocast + channels_last, 2 threads (bf16: {cpu_supports_bf16()}): "
          f"eager {batch / e.min():5.1f} samples/s (median {batch / np.median(e):5.1f}), torch.compile "
          f"{batch / c.min():5.1f} (median {batch / np.median(c):5.1f}): {e.min() / c.min():4.2f}x as fast "
          f"(medians {np.median(e) / np.median(c):4.2f}x); first compiled step {compiled[0]:.0f} s", flush=True)


def main() -> None:
    from script_entry import options

    args = options(__doc__, add=lambda ap: ap.add_argument(
        "--compile", action="store_true", help="eager against torch.compile of the joint step instead"))
    if args.compile:
        compare_compile()
        return
    torch.set_num_threads(2)
    print(f"training step, batch {BATCH}, 2 threads, bf16 supported: {cpu_supports_bf16()}")
    for stage, name in ((1, "paper stage 1"), ("joint", "joint (default stage 1)"), (2, "stage 2")):
        t32 = _step_time(stage, amp=False)
        t16 = _step_time(stage, amp=True)
        tcl = _step_time(stage, amp=False, channels_last=True)
        both = _step_time(stage, amp=True, channels_last=True)
        print(f"{name:24s}: fp32 {BATCH / t32:5.1f} samples/s   autocast {BATCH / t16:5.1f} ({t32 / t16:4.2f}x)   "
              f"channels_last {BATCH / tcl:5.1f} ({t32 / tcl:4.2f}x)   both {BATCH / both:5.1f} ({t32 / both:4.2f}x)",
              flush=True)
    pooled = _step_time("joint", amp=True, channels_last=True)
    full = _step_time("joint", amp=True, channels_last=True, block1_pool=False)
    print(f"joint, autocast + channels_last: with Block1's pool {BATCH / pooled:5.1f} samples/s, "
          f"without {BATCH / full:5.1f} ({full / pooled:4.2f}x the time)", flush=True)
    half = _step_time("joint", amp=True, channels_last=True, width=32)
    print(f"joint, autocast + channels_last: width 64 {BATCH / pooled:5.1f} samples/s, "
          f"width 32 {BATCH / half:5.1f} ({pooled / half:4.2f}x as fast)", flush=True)


if __name__ == "__main__":
    main()
